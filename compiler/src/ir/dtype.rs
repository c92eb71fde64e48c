//! Element types of graph values.

use std::fmt;
use std::str::FromStr;

/// The element type of a graph value, as written in model.json.
///
/// Graph tensors are normally `f32`; the precision the chip computes in is the
/// compiler's choice, not the model's.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug, Default)]
pub enum DType {
    /// IEEE 754 binary32.
    #[default]
    F32,
    /// bfloat16 (8 exponent bits, 7 mantissa bits).
    Bf16,
    /// IEEE 754 binary16.
    F16,
    /// Signed 8-bit integer.
    I8,
    /// Signed 32-bit integer.
    I32,
    /// Signed 64-bit integer.
    I64,
    /// Boolean (one byte per element).
    Bool,
}

impl DType {
    /// Every dtype, in the order of the model.json documentation.
    pub const ALL: [DType; 7] = [
        DType::F32,
        DType::Bf16,
        DType::F16,
        DType::I8,
        DType::I32,
        DType::I64,
        DType::Bool,
    ];

    /// The model.json spelling: `f32 bf16 f16 i8 i32 i64 bool`.
    pub fn name(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::Bf16 => "bf16",
            DType::F16 => "f16",
            DType::I8 => "i8",
            DType::I32 => "i32",
            DType::I64 => "i64",
            DType::Bool => "bool",
        }
    }

    /// Bytes per element.
    pub fn size_bytes(self) -> usize {
        match self {
            DType::F32 | DType::I32 => 4,
            DType::Bf16 | DType::F16 => 2,
            DType::I8 | DType::Bool => 1,
            DType::I64 => 8,
        }
    }

    /// `f32`, `bf16` or `f16`.
    pub fn is_float(self) -> bool {
        matches!(self, DType::F32 | DType::Bf16 | DType::F16)
    }

    /// `i8`, `i32` or `i64`.
    pub fn is_int(self) -> bool {
        matches!(self, DType::I8 | DType::I32 | DType::I64)
    }

    /// Float or integer (anything but `bool`).
    pub fn is_numeric(self) -> bool {
        self != DType::Bool
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A dtype name that is not one of `f32 bf16 f16 i8 i32 i64 bool`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown dtype '{0}' (expected one of f32, bf16, f16, i8, i32, i64, bool)")]
pub struct UnknownDType(pub String);

impl FromStr for DType {
    type Err = UnknownDType;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        DType::ALL
            .into_iter()
            .find(|d| d.name() == s)
            .ok_or_else(|| UnknownDType(s.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for d in DType::ALL {
            assert_eq!(d.name().parse::<DType>().unwrap(), d);
        }
        assert!("float32".parse::<DType>().is_err());
        assert_eq!(DType::default(), DType::F32);
    }
}
