//! Element types the chip stores and computes in.

use serde::{Deserialize, Serialize};
use std::fmt;

/// An element type of a tensor in HBM, SBUF or PSUM.
///
/// Compute engines always do their math in FP32 (INT32 for integer matmul accumulation);
/// the dtype of an access pattern only says how elements are stored, and a write rounds
/// to it (round-to-nearest-even or stochastic, see the simulator's rounding mode).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Dtype {
    /// IEEE binary32.
    F32,
    /// bfloat16: the top 16 bits of an f32.
    Bf16,
    /// IEEE binary16.
    F16,
    /// 8-bit float, 4 exponent bits, 3 mantissa bits, finite-only (OCP `e4m3fn`, max 448).
    Fp8E4m3,
    /// 8-bit float, 5 exponent bits, 2 mantissa bits, IEEE-like with infinities (max 57344).
    Fp8E5m2,
    /// Signed 8-bit integer; writes saturate to [-128, 127].
    I8,
    /// Unsigned 8-bit integer; also used for booleans (0 or 1). Writes saturate to [0, 255].
    U8,
    /// Signed 32-bit integer; writes saturate.
    I32,
    /// Signed 64-bit integer; only in HBM, as a DMA source (e.g. int64 token ids).
    I64,
}

impl Dtype {
    /// All dtypes, in declaration order.
    pub const ALL: [Dtype; 9] = [
        Dtype::F32,
        Dtype::Bf16,
        Dtype::F16,
        Dtype::Fp8E4m3,
        Dtype::Fp8E5m2,
        Dtype::I8,
        Dtype::U8,
        Dtype::I32,
        Dtype::I64,
    ];

    /// Size of one element in bytes.
    pub const fn size(self) -> u64 {
        match self {
            Dtype::F32 | Dtype::I32 => 4,
            Dtype::Bf16 | Dtype::F16 => 2,
            Dtype::Fp8E4m3 | Dtype::Fp8E5m2 | Dtype::I8 | Dtype::U8 => 1,
            Dtype::I64 => 8,
        }
    }

    /// Whether this is a floating-point type.
    pub const fn is_float(self) -> bool {
        matches!(
            self,
            Dtype::F32 | Dtype::Bf16 | Dtype::F16 | Dtype::Fp8E4m3 | Dtype::Fp8E5m2
        )
    }

    /// Whether this is an 8-bit float type.
    pub const fn is_fp8(self) -> bool {
        matches!(self, Dtype::Fp8E4m3 | Dtype::Fp8E5m2)
    }

    /// The short name used in disassembly and config files (`f32`, `bf16`, `fp8_e4m3`, ...).
    pub const fn name(self) -> &'static str {
        match self {
            Dtype::F32 => "f32",
            Dtype::Bf16 => "bf16",
            Dtype::F16 => "f16",
            Dtype::Fp8E4m3 => "fp8_e4m3",
            Dtype::Fp8E5m2 => "fp8_e5m2",
            Dtype::I8 => "i8",
            Dtype::U8 => "u8",
            Dtype::I32 => "i32",
            Dtype::I64 => "i64",
        }
    }

    /// Parses a name produced by [`Dtype::name`].
    pub fn from_name(s: &str) -> Option<Dtype> {
        Dtype::ALL.into_iter().find(|d| d.name() == s)
    }
}

impl fmt::Display for Dtype {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}
