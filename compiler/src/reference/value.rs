//! Runtime values inside the reference executor.

use half::{bf16, f16};
use ndarray::ArrayD;
use neuron_isa::numerics;

use super::Real;
use crate::ir::{DType, Tensor};

/// A value during evaluation: floats (of any float dtype) are held in the
/// compute type `F`, already rounded to their dtype; other dtypes as is.
#[derive(Clone, Debug)]
pub(crate) enum RVal<F> {
    /// A float value (dtype f32, bf16 or f16).
    F(ArrayD<F>),
    I8(ArrayD<i8>),
    I32(ArrayD<i32>),
    I64(ArrayD<i64>),
    Bool(ArrayD<bool>),
}

/// Rounds a compute-type float to `dtype`'s precision (f32 values in f64
/// mode are kept at f64).
pub(crate) fn round_to<F: Real>(x: F, dtype: DType) -> F {
    match dtype {
        DType::Bf16 => F::from_f64(f64::from(numerics::bf16_to_f32(numerics::f64_to_bf16(
            x.to_f64(),
        )))),
        DType::F16 => F::from_f64(f64::from(numerics::f16_to_f32(numerics::f64_to_f16(
            x.to_f64(),
        )))),
        _ => x,
    }
}

impl<F: Real> RVal<F> {
    /// Converts tensor data (already checked to have dtype `dtype`).
    pub(crate) fn from_tensor(t: &Tensor) -> RVal<F> {
        match t {
            Tensor::I8(a) => RVal::I8(a.clone()),
            Tensor::I32(a) => RVal::I32(a.clone()),
            Tensor::I64(a) => RVal::I64(a.clone()),
            Tensor::Bool(a) => RVal::Bool(a.clone()),
            t => RVal::F(t.to_f64().mapv(F::from_f64)),
        }
    }

    /// Converts to a tensor of `dtype` (f32 values as `F::into_tensor`).
    pub(crate) fn to_tensor(&self, dtype: DType) -> Tensor {
        match self {
            RVal::F(a) => match dtype {
                DType::Bf16 => {
                    Tensor::Bf16(a.mapv(|x| bf16::from_bits(numerics::f64_to_bf16(x.to_f64()))))
                }
                DType::F16 => {
                    Tensor::F16(a.mapv(|x| f16::from_bits(numerics::f64_to_f16(x.to_f64()))))
                }
                _ => F::into_tensor(a.clone()),
            },
            RVal::I8(a) => Tensor::I8(a.clone()),
            RVal::I32(a) => Tensor::I32(a.clone()),
            RVal::I64(a) => Tensor::I64(a.clone()),
            RVal::Bool(a) => Tensor::Bool(a.clone()),
        }
    }

    /// Integer values widened to i64, or `None` for floats and bools.
    pub(crate) fn ints(&self) -> Option<ArrayD<i64>> {
        match self {
            RVal::I8(a) => Some(a.mapv(i64::from)),
            RVal::I32(a) => Some(a.mapv(i64::from)),
            RVal::I64(a) => Some(a.clone()),
            _ => None,
        }
    }

    /// The shape.
    pub(crate) fn shape(&self) -> &[usize] {
        match self {
            RVal::F(a) => a.shape(),
            RVal::I8(a) => a.shape(),
            RVal::I32(a) => a.shape(),
            RVal::I64(a) => a.shape(),
            RVal::Bool(a) => a.shape(),
        }
    }
}

/// Applies a generic array function to whatever element type `v` holds.
macro_rules! map_rval {
    ($v:expr, $a:ident => $body:expr) => {
        match $v {
            RVal::F($a) => RVal::F($body),
            RVal::I8($a) => RVal::I8($body),
            RVal::I32($a) => RVal::I32($body),
            RVal::I64($a) => RVal::I64($body),
            RVal::Bool($a) => RVal::Bool($body),
        }
    };
}
pub(crate) use map_rval;
