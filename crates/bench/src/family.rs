//! The benchmark's synthetic family: generated once, reused while it matches.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context as _};
use reefknot_io::{Checkpoint, OutputTensor};
use reefknot_synth::{family_json, generate, Family, FamilySpec};

/// The family at `scale`: [`FamilySpec::bench`] (hidden 2048, 8 layers, intermediate
/// 5632, vocab 32000, bf16, 3 fine-tunes) with `scale` times the layers and the
/// vocabulary, hence `scale` times the parameters (all but the final norm's) and
/// larger embedding tensors: memory must grow neither with model nor with tensor size.
///
/// `small` selects [`FamilySpec::demo`] instead (4 M parameters), to try the benchmark
/// itself in seconds; its figures mean nothing.
pub fn spec(scale: usize, small: bool) -> FamilySpec {
    let b = if small {
        FamilySpec::demo()
    } else {
        FamilySpec::bench()
    };
    FamilySpec {
        layers: b.layers * scale,
        vocab: b.vocab * scale,
        ..b
    }
}

/// A family on disk, ready to merge.
#[derive(Debug)]
pub struct Prepared {
    /// Its folders.
    pub family: Family,
    /// Every safetensors file of the base and the fine-tunes: what a merge reads.
    pub inputs: Vec<PathBuf>,
    /// Their total size.
    pub input_bytes: u64,
    /// The size of the base's safetensors files: a bf16 merge's output size.
    pub output_bytes: u64,
    /// The base's tensors (names, dtypes, shapes), in file order: a merge's output layout.
    pub layout: Vec<OutputTensor>,
    /// Seconds spent generating, when it was generated now.
    pub generated_s: Option<f64>,
}

/// Makes sure the family of `spec` exists in `dir`: reuses it when its `family.json`
/// matches and every model opens, else (re)generates it. Refuses to touch a folder that
/// the generator did not write.
pub fn prepare(spec: &FamilySpec, dir: &Path) -> anyhow::Result<Prepared> {
    let family = Family::at(dir, spec.tasks);
    let expected = family_json(spec);
    let manifest = dir.join("family.json");
    let mut generated_s = None;
    let reusable = match std::fs::read_to_string(&manifest) {
        Ok(text) => {
            let found: serde_json::Value = serde_json::from_str(&text)
                .with_context(|| format!("parsing {}", manifest.display()))?;
            if found.get("generator").and_then(|g| g.as_str()) != Some("reefknot-synth") {
                bail!(
                    "{} was not written by reefknot-synth; give another --dir",
                    manifest.display()
                );
            }
            found == expected && inputs_of(&family).is_ok()
        }
        Err(_) => false,
    };
    if !reusable {
        if dir.exists() && !manifest.exists() && std::fs::read_dir(dir)?.next().is_some() {
            bail!(
                "{} exists, is not empty and holds no family.json: give another --dir",
                dir.display()
            );
        }
        for d in std::iter::once(&family.base).chain(&family.tasks) {
            if d.exists() {
                std::fs::remove_dir_all(d).with_context(|| format!("removing {}", d.display()))?;
            }
        }
        let _ = std::fs::remove_file(&manifest);
        let bytes = spec.bytes_per_model() * (spec.tasks as u64 + 1);
        println!(
            "generating the family ({} layers, vocab {}, {:.2} GB) in {} ...",
            spec.layers,
            spec.vocab,
            bytes as f64 / 1e9,
            dir.display()
        );
        let start = Instant::now();
        generate(spec, dir).context("generating the synthetic family")?;
        generated_s = Some(start.elapsed().as_secs_f64());
    }
    let (inputs, output_bytes, layout) = inputs_of(&family)?;
    let input_bytes = inputs.iter().map(|p| file_len(p)).sum();
    Ok(Prepared {
        family,
        inputs,
        input_bytes,
        output_bytes,
        layout,
        generated_s,
    })
}

/// Opens every model (validating its headers) and lists the weight files; also returns
/// the size of the base's files and its tensors.
fn inputs_of(family: &Family) -> anyhow::Result<(Vec<PathBuf>, u64, Vec<OutputTensor>)> {
    let mut files = Vec::new();
    let mut base_bytes = 0;
    let mut layout = Vec::new();
    for (i, dir) in std::iter::once(&family.base)
        .chain(&family.tasks)
        .enumerate()
    {
        let ck = Checkpoint::open(dir).with_context(|| format!("opening {}", dir.display()))?;
        if i == 0 {
            base_bytes = ck.files().iter().map(|p| file_len(p)).sum();
            layout = ck
                .tensors()
                .iter()
                .map(|t| OutputTensor {
                    name: t.name.clone(),
                    dtype: t.dtype,
                    shape: t.shape.clone(),
                })
                .collect();
        }
        files.extend(ck.files().iter().cloned());
    }
    Ok((files, base_bytes, layout))
}

fn file_len(p: &Path) -> u64 {
    std::fs::metadata(p).map(|m| m.len()).unwrap_or(0)
}

/// Removes a generated family (its model folders and `family.json`).
pub fn remove(prepared: &Prepared) -> anyhow::Result<()> {
    let f = &prepared.family;
    for d in std::iter::once(&f.base).chain(&f.tasks) {
        if d.exists() {
            std::fs::remove_dir_all(d).with_context(|| format!("removing {}", d.display()))?;
        }
    }
    let _ = std::fs::remove_file(f.root.join("family.json"));
    let _ = std::fs::remove_dir(&f.root);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scale_multiplies_the_parameters() {
        // Twice the parameters, but for the one final norm (2048 of 1.08 B).
        let one = spec(1, false).params_per_model();
        let two = spec(2, false).params_per_model();
        assert_eq!(two, 2 * one - 2048);
        assert_eq!(spec(1, false), FamilySpec::bench());
        assert_eq!(spec(1, true), FamilySpec::demo());
    }

    #[test]
    fn prepares_and_reuses_a_family() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("family");
        let s = FamilySpec::tiny();
        let p = prepare(&s, &dir).unwrap();
        assert!(p.generated_s.is_some());
        assert_eq!(p.inputs.len(), 4);
        assert!(p.input_bytes > 4 * s.bytes_per_model());
        let again = prepare(&s, &dir).unwrap();
        assert!(again.generated_s.is_none(), "a matching family is reused");
        let other = FamilySpec { seed: 1, ..s };
        assert!(prepare(&other, &dir).unwrap().generated_s.is_some());
        remove(&again).unwrap();
        assert!(!dir.exists());
    }
}
