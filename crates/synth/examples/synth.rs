//! Generates a synthetic family and reports how long it took and what its task
//! vectors look like.
//!
//! `cargo run --release -p reefknot-synth --example synth -- PRESET OUT [--stats] [--keep]`
//! with `PRESET` one of `tiny`, `demo`, `bench`. Without `--keep`, `OUT` is deleted
//! afterwards (it must not exist beforehand).

use std::path::PathBuf;
use std::time::Instant;

use reefknot_synth::{family_stats, generate, FamilySpec};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage = "usage: synth tiny|demo|bench OUT [--stats] [--keep]";
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
    let family = generate(&spec, &out)?;
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
    if args.iter().any(|a| a == "--stats") {
        let started = Instant::now();
        let stats = family_stats(&family.base, &family.tasks)?;
        for (i, t) in stats.tasks.iter().enumerate() {
            println!(
                "task {i}: |delta| {:.4}, energy in top 20%: {:.1}%",
                t.norm,
                100.0 * t.top_energy
            );
        }
        for p in &stats.pairs {
            println!(
                "tasks {}-{}: cosine {:+.3}, top-set overlap {:.1}%, opposite signs on {:.1}% of it",
                p.a,
                p.b,
                p.cosine,
                100.0 * p.overlap,
                100.0 * p.conflict
            );
        }
        println!("stats in {:.3} s", started.elapsed().as_secs_f64());
    }
    if !args.iter().any(|a| a == "--keep") {
        std::fs::remove_dir_all(&out)?;
    }
    Ok(())
}
