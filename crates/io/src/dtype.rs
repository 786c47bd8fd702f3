//! Element types of safetensors tensors.

use std::fmt;

/// The element type of a tensor, as the safetensors format names it.
///
/// Every byte-sized (or larger) dtype of the safetensors format is here. The
/// sub-byte microscaling types (`F4`, `F6_E2M3`, `F6_E3M2`) are not: a file using
/// them is reported as an unsupported dtype.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Dtype {
    /// 64-bit IEEE float (`F64`, `torch.float64`).
    F64,
    /// 32-bit IEEE float (`F32`, `torch.float32`).
    F32,
    /// 16-bit IEEE half float (`F16`, `torch.float16`).
    F16,
    /// bfloat16: the upper 16 bits of an f32 (`BF16`, `torch.bfloat16`).
    BF16,
    /// Signed 64-bit integer (`I64`, `torch.int64`).
    I64,
    /// Signed 32-bit integer (`I32`, `torch.int32`).
    I32,
    /// Signed 16-bit integer (`I16`, `torch.int16`).
    I16,
    /// Signed 8-bit integer (`I8`, `torch.int8`).
    I8,
    /// Unsigned 64-bit integer (`U64`, `torch.uint64`).
    U64,
    /// Unsigned 32-bit integer (`U32`, `torch.uint32`).
    U32,
    /// Unsigned 16-bit integer (`U16`, `torch.uint16`).
    U16,
    /// Unsigned 8-bit integer (`U8`, `torch.uint8`).
    U8,
    /// Boolean, one byte per element (`BOOL`, `torch.bool`).
    Bool,
    /// 8-bit float, 4 exponent and 3 mantissa bits (`F8_E4M3`, `torch.float8_e4m3fn`).
    F8E4M3,
    /// 8-bit float, 5 exponent and 2 mantissa bits (`F8_E5M2`, `torch.float8_e5m2`).
    F8E5M2,
    /// 8-bit float E4M3, finite, no negative zero (`F8_E4M3FNUZ`, `torch.float8_e4m3fnuz`).
    F8E4M3Fnuz,
    /// 8-bit float E5M2, finite, no negative zero (`F8_E5M2FNUZ`, `torch.float8_e5m2fnuz`).
    F8E5M2Fnuz,
    /// 8-bit exponent-only scale (`F8_E8M0`, `torch.float8_e8m0fnu`).
    F8E8M0,
    /// Complex number with two f32 parts (`C64`, `torch.complex64`).
    C64,
}

impl Dtype {
    /// Every supported dtype, widest floats first.
    pub const ALL: [Dtype; 19] = [
        Dtype::F64,
        Dtype::F32,
        Dtype::F16,
        Dtype::BF16,
        Dtype::I64,
        Dtype::I32,
        Dtype::I16,
        Dtype::I8,
        Dtype::U64,
        Dtype::U32,
        Dtype::U16,
        Dtype::U8,
        Dtype::Bool,
        Dtype::F8E4M3,
        Dtype::F8E5M2,
        Dtype::F8E4M3Fnuz,
        Dtype::F8E5M2Fnuz,
        Dtype::F8E8M0,
        Dtype::C64,
    ];

    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            Dtype::F64 | Dtype::I64 | Dtype::U64 | Dtype::C64 => 8,
            Dtype::F32 | Dtype::I32 | Dtype::U32 => 4,
            Dtype::F16 | Dtype::BF16 | Dtype::I16 | Dtype::U16 => 2,
            Dtype::I8
            | Dtype::U8
            | Dtype::Bool
            | Dtype::F8E4M3
            | Dtype::F8E5M2
            | Dtype::F8E4M3Fnuz
            | Dtype::F8E5M2Fnuz
            | Dtype::F8E8M0 => 1,
        }
    }

    /// Whether tensors of this dtype are merged (in f32): `F32`, `F16`, `BF16` and
    /// `F64`. `F64` values are rounded to the nearest `f32` when read (values beyond
    /// its range become infinities, which the merge then refuses) and written back
    /// exactly, so an `F64` tensor is merged at `f32` precision.
    ///
    /// Tensors of any other dtype (integers, booleans, 8-bit floats, complex) are
    /// copied from the base model unchanged.
    pub fn is_computable(self) -> bool {
        matches!(self, Dtype::F32 | Dtype::F16 | Dtype::BF16 | Dtype::F64)
    }

    /// The name used in safetensors headers, e.g. `"BF16"`.
    pub fn safetensors_name(self) -> &'static str {
        match self {
            Dtype::F64 => "F64",
            Dtype::F32 => "F32",
            Dtype::F16 => "F16",
            Dtype::BF16 => "BF16",
            Dtype::I64 => "I64",
            Dtype::I32 => "I32",
            Dtype::I16 => "I16",
            Dtype::I8 => "I8",
            Dtype::U64 => "U64",
            Dtype::U32 => "U32",
            Dtype::U16 => "U16",
            Dtype::U8 => "U8",
            Dtype::Bool => "BOOL",
            Dtype::F8E4M3 => "F8_E4M3",
            Dtype::F8E5M2 => "F8_E5M2",
            Dtype::F8E4M3Fnuz => "F8_E4M3FNUZ",
            Dtype::F8E5M2Fnuz => "F8_E5M2FNUZ",
            Dtype::F8E8M0 => "F8_E8M0",
            Dtype::C64 => "C64",
        }
    }

    /// The PyTorch name without the `torch.` prefix, as `config.json`'s `torch_dtype`
    /// spells it, e.g. `"bfloat16"`.
    pub fn torch_name(self) -> &'static str {
        match self {
            Dtype::F64 => "float64",
            Dtype::F32 => "float32",
            Dtype::F16 => "float16",
            Dtype::BF16 => "bfloat16",
            Dtype::I64 => "int64",
            Dtype::I32 => "int32",
            Dtype::I16 => "int16",
            Dtype::I8 => "int8",
            Dtype::U64 => "uint64",
            Dtype::U32 => "uint32",
            Dtype::U16 => "uint16",
            Dtype::U8 => "uint8",
            Dtype::Bool => "bool",
            Dtype::F8E4M3 => "float8_e4m3fn",
            Dtype::F8E5M2 => "float8_e5m2",
            Dtype::F8E4M3Fnuz => "float8_e4m3fnuz",
            Dtype::F8E5M2Fnuz => "float8_e5m2fnuz",
            Dtype::F8E8M0 => "float8_e8m0fnu",
            Dtype::C64 => "complex64",
        }
    }

    /// Parses a dtype as written in a safetensors header (exact, case-sensitive).
    pub fn from_safetensors_name(s: &str) -> Option<Dtype> {
        Dtype::ALL.into_iter().find(|d| d.safetensors_name() == s)
    }

    /// Parses a dtype as a user writes it on the command line or in a recipe.
    ///
    /// Case-insensitive; accepts the PyTorch names (with or without `torch.`), the
    /// safetensors names and the usual short forms: `bfloat16`/`bf16`,
    /// `float16`/`fp16`/`f16`/`half`, `float32`/`fp32`/`f32`/`float`,
    /// `float64`/`fp64`/`f64`/`double`, `int8`/`i8`, `uint8`/`u8`, `bool`, ...
    pub fn parse_user(s: &str) -> Option<Dtype> {
        let lower = s.trim().to_ascii_lowercase();
        let name = lower.strip_prefix("torch.").unwrap_or(&lower);
        let dtype = match name {
            "bfloat16" | "bf16" => Dtype::BF16,
            "float16" | "fp16" | "f16" | "half" => Dtype::F16,
            "float32" | "fp32" | "f32" | "float" => Dtype::F32,
            "float64" | "fp64" | "f64" | "double" => Dtype::F64,
            "int64" | "i64" | "long" => Dtype::I64,
            "int32" | "i32" | "int" => Dtype::I32,
            "int16" | "i16" | "short" => Dtype::I16,
            "int8" | "i8" => Dtype::I8,
            "uint64" | "u64" => Dtype::U64,
            "uint32" | "u32" => Dtype::U32,
            "uint16" | "u16" => Dtype::U16,
            "uint8" | "u8" => Dtype::U8,
            "bool" => Dtype::Bool,
            "float8_e4m3fn" | "f8_e4m3" | "fp8_e4m3" | "e4m3" => Dtype::F8E4M3,
            "float8_e5m2" | "f8_e5m2" | "fp8_e5m2" | "e5m2" => Dtype::F8E5M2,
            "float8_e4m3fnuz" | "f8_e4m3fnuz" => Dtype::F8E4M3Fnuz,
            "float8_e5m2fnuz" | "f8_e5m2fnuz" => Dtype::F8E5M2Fnuz,
            "float8_e8m0fnu" | "f8_e8m0" => Dtype::F8E8M0,
            "complex64" | "c64" | "cfloat" => Dtype::C64,
            _ => return None,
        };
        Some(dtype)
    }

    /// The safetensors names of every supported dtype, comma-separated (for messages).
    pub fn supported_list() -> String {
        let names: Vec<&str> = Dtype::ALL.iter().map(|d| d.safetensors_name()).collect();
        names.join(", ")
    }
}

impl fmt::Display for Dtype {
    /// Writes the safetensors name, e.g. `BF16`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.safetensors_name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for d in Dtype::ALL {
            assert_eq!(Dtype::from_safetensors_name(d.safetensors_name()), Some(d));
            assert_eq!(Dtype::parse_user(d.torch_name()), Some(d), "{d}");
            assert_eq!(Dtype::parse_user(d.safetensors_name()), Some(d), "{d}");
            let torch = format!("torch.{}", d.torch_name());
            assert_eq!(Dtype::parse_user(&torch), Some(d));
        }
    }

    #[test]
    fn user_spellings() {
        for (s, d) in [
            ("bfloat16", Dtype::BF16),
            ("BF16", Dtype::BF16),
            ("Half", Dtype::F16),
            ("fp16", Dtype::F16),
            ("f16", Dtype::F16),
            ("float16", Dtype::F16),
            ("FLOAT", Dtype::F32),
            ("fp32", Dtype::F32),
            ("f32", Dtype::F32),
            ("float32", Dtype::F32),
            (" double ", Dtype::F64),
        ] {
            assert_eq!(Dtype::parse_user(s), Some(d), "{s}");
        }
        assert_eq!(Dtype::parse_user("bfloat17"), None);
        assert_eq!(Dtype::from_safetensors_name("bf16"), None);
        assert_eq!(Dtype::from_safetensors_name("F4"), None);
    }

    #[test]
    fn sizes_and_computable() {
        assert_eq!(Dtype::BF16.size(), 2);
        assert_eq!(Dtype::C64.size(), 8);
        assert_eq!(Dtype::Bool.size(), 1);
        let computable: Vec<Dtype> = Dtype::ALL
            .into_iter()
            .filter(|d| d.is_computable())
            .collect();
        assert_eq!(
            computable,
            [Dtype::F64, Dtype::F32, Dtype::F16, Dtype::BF16]
        );
    }
}
