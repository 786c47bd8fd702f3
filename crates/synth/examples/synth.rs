//! Generates a synthetic family and reports how long it took (`reefknot analyze` on a
//! recipe over it measures its task vectors).
//!
//! `cargo run --release -p reefknot-synth --example synth -- PRESET OUT [--keep]`
//! with `PRESET` one of `tiny`, `demo`, `bench`. Without `--keep`, `OUT` is deleted
//! afterwards (it must not exist beforehand).

use std::path::PathBuf;
use std::time::Instant;

use reefknot_synth::{generate, FamilySpec};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage = "usage: synth tiny|demo|bench OUT [--keep]";
    let (preset, out) = match (args.first(), args.get(1)) {
        (Some(p), Some(o)) => (p.as_str(), PathBuf::from(o)),
        _ => return Err(usage.into()),
    };
    let spec = match preset {
        "tiny" => FamilySpec::tiny(),
        "demo" => FamilySpec::demo(),
        "bench" => FamilySpec::bench(),
        _ => return Err(usage.into()),
    };
    if out.exists() {
        return Err(format!("{} exists; give a new folder", out.display()).into());
    }
    let bytes = spec.bytes_per_model() * (spec.tasks as u64 + 1);
    let started = Instant::now();
    generate(&spec, &out)?;
    let secs = started.elapsed().as_secs_f64();
    println!(
        "{preset}: {} models x {} params ({}), {:.2} GB in {secs:.3} s ({:.2} GB/s) on {} threads",
        spec.tasks + 1,
        spec.params_per_model(),
        spec.dtype,
        bytes as f64 / 1e9,
        bytes as f64 / 1e9 / secs,
        rayon::current_num_threads()
    );
    if !args.iter().any(|a| a == "--keep") {
        std::fs::remove_dir_all(&out)?;
    }
    Ok(())
}
