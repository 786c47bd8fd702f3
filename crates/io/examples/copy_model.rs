//! Copies a checkpoint through `Checkpoint` and `ModelWriter`, optionally converting its
//! float tensors to another dtype: `cargo run -p reefknot-io --example copy_model --
//! IN_DIR OUT_DIR [SHARD_BYTES] [DTYPE]`. A manual check that the output loads in
//! `transformers` (copy `config.json` over yourself).

use std::path::Path;

use reefknot_io::{from_f32, to_f32, Checkpoint, Dtype, ModelWriter, OutputTensor, WriterOptions};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [input, output, rest @ ..] = args.as_slice() else {
        return Err("usage: copy_model IN OUT [SHARD_BYTES] [DTYPE]".into());
    };
    let mut opts = WriterOptions::default();
    if let Some(size) = rest.first() {
        opts.shard_size = size.parse()?;
    }
    let target = match rest.get(1) {
        Some(s) => Some(Dtype::parse_user(s).ok_or_else(|| format!("unknown dtype {s}"))?),
        None => None,
    };
    let ck = Checkpoint::open(Path::new(input))?;
    let tensors: Vec<OutputTensor> = ck
        .tensors()
        .iter()
        .map(|t| OutputTensor {
            name: t.name.clone(),
            dtype: match target {
                Some(d) if t.dtype.is_computable() => d,
                _ => t.dtype,
            },
            shape: t.shape.clone(),
        })
        .collect();
    std::fs::create_dir_all(output)?;
    let mut writer = ModelWriter::create(Path::new(output), tensors, &opts)?;
    let outs: Vec<Dtype> = writer.tensors().iter().map(|t| t.dtype).collect();
    for ((t, dst), out_dtype) in ck.tensors().iter().zip(writer.data_mut_all()).zip(outs) {
        if out_dtype == t.dtype {
            dst.copy_from_slice(ck.data(t));
        } else {
            let mut values = vec![0.0f32; t.numel()];
            to_f32(t.dtype, ck.data(t), &mut values);
            from_f32(out_dtype, &values, dst);
        }
    }
    for f in writer.finish()? {
        println!("{}", f.display());
    }
    Ok(())
}
