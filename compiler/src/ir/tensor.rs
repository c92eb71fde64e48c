//! Dense tensor data: parameter values, executor inputs and outputs.

use half::{bf16, f16};
use ndarray::ArrayD;
use neuron_isa::numerics;

use super::DType;

/// A dense, row-major n-dimensional array with one of the supported element types.
///
/// There is one variant per [`DType`], plus [`Tensor::F64`]: a float value held
/// at double precision, produced only by the reference executor's f64 mode
/// (its [`dtype`](Tensor::dtype) reports [`DType::F32`], the graph type it stands for).
#[derive(Clone, Debug, PartialEq)]
pub enum Tensor {
    /// f32 elements.
    F32(ArrayD<f32>),
    /// f64 elements: a higher-precision stand-in for an f32 value.
    F64(ArrayD<f64>),
    /// bfloat16 elements.
    Bf16(ArrayD<bf16>),
    /// IEEE binary16 elements.
    F16(ArrayD<f16>),
    /// i8 elements.
    I8(ArrayD<i8>),
    /// i32 elements.
    I32(ArrayD<i32>),
    /// i64 elements.
    I64(ArrayD<i64>),
    /// bool elements.
    Bool(ArrayD<bool>),
}

/// Applies the same expression to the array inside any [`Tensor`] variant.
macro_rules! map_tensor {
    ($t:expr, $a:ident => $body:expr) => {
        match $t {
            Tensor::F32($a) => $body,
            Tensor::F64($a) => $body,
            Tensor::Bf16($a) => $body,
            Tensor::F16($a) => $body,
            Tensor::I8($a) => $body,
            Tensor::I32($a) => $body,
            Tensor::I64($a) => $body,
            Tensor::Bool($a) => $body,
        }
    };
}

impl Tensor {
    /// The graph dtype of this tensor (`F64` reports [`DType::F32`]).
    pub fn dtype(&self) -> DType {
        match self {
            Tensor::F32(_) | Tensor::F64(_) => DType::F32,
            Tensor::Bf16(_) => DType::Bf16,
            Tensor::F16(_) => DType::F16,
            Tensor::I8(_) => DType::I8,
            Tensor::I32(_) => DType::I32,
            Tensor::I64(_) => DType::I64,
            Tensor::Bool(_) => DType::Bool,
        }
    }

    /// The element type's name: a dtype name, or `f64`.
    pub fn elem_name(&self) -> &'static str {
        match self {
            Tensor::F64(_) => "f64",
            t => t.dtype().name(),
        }
    }

    /// The shape.
    pub fn shape(&self) -> &[usize] {
        map_tensor!(self, a => a.shape())
    }

    /// The number of elements.
    pub fn num_elements(&self) -> usize {
        map_tensor!(self, a => a.len())
    }

    /// A tensor of zeros (`false` for bool).
    pub fn zeros(dtype: DType, shape: &[usize]) -> Tensor {
        Tensor::from_f64(dtype, ArrayD::zeros(shape))
    }

    /// Converts f64 values to `dtype` with [`Tensor::cast`] semantics.
    pub fn from_f64(dtype: DType, a: ArrayD<f64>) -> Tensor {
        match dtype {
            DType::F32 => Tensor::F32(a.mapv(|x| x as f32)),
            DType::Bf16 => Tensor::Bf16(a.mapv(|x| bf16::from_bits(numerics::f64_to_bf16(x)))),
            DType::F16 => Tensor::F16(a.mapv(|x| f16::from_bits(numerics::f64_to_f16(x)))),
            DType::I8 => Tensor::I8(a.mapv(|x| x as i8)),
            DType::I32 => Tensor::I32(a.mapv(|x| x as i32)),
            DType::I64 => Tensor::I64(a.mapv(|x| x as i64)),
            DType::Bool => Tensor::Bool(a.mapv(|x| x != 0.0)),
        }
    }

    /// The values as f64 (bool as 0 or 1; i64 beyond 2^53 rounds).
    pub fn to_f64(&self) -> ArrayD<f64> {
        match self {
            Tensor::F32(a) => a.mapv(f64::from),
            Tensor::F64(a) => a.clone(),
            Tensor::Bf16(a) => a.mapv(f64::from),
            Tensor::F16(a) => a.mapv(f64::from),
            Tensor::I8(a) => a.mapv(f64::from),
            Tensor::I32(a) => a.mapv(f64::from),
            Tensor::I64(a) => a.mapv(|x| x as f64),
            Tensor::Bool(a) => a.mapv(|x| if x { 1.0 } else { 0.0 }),
        }
    }

    /// The values as f32 (rounded to nearest).
    pub fn to_f32(&self) -> ArrayD<f32> {
        match self {
            Tensor::F32(a) => a.clone(),
            t => t.to_f64().mapv(|x| x as f32),
        }
    }

    /// Integer values as i64 (floats truncate toward zero, saturating; NaN gives 0).
    pub fn to_i64(&self) -> ArrayD<i64> {
        match self {
            Tensor::I8(a) => a.mapv(i64::from),
            Tensor::I32(a) => a.mapv(i64::from),
            Tensor::I64(a) => a.clone(),
            Tensor::Bool(a) => a.mapv(i64::from),
            t => t.to_f64().mapv(|x| x as i64),
        }
    }

    /// Converts to `dtype`.
    ///
    /// Floats round to nearest even; float to integer truncates toward zero and
    /// saturates (NaN gives 0); integer to narrower integer wraps (two's
    /// complement); anything to bool is `x != 0`; bool to a number is 0 or 1.
    pub fn cast(&self, dtype: DType) -> Tensor {
        let ints = matches!(self, Tensor::I8(_) | Tensor::I32(_) | Tensor::I64(_));
        match dtype {
            DType::I8 if ints => Tensor::I8(self.to_i64().mapv(|x| x as i8)),
            DType::I32 if ints => Tensor::I32(self.to_i64().mapv(|x| x as i32)),
            DType::I64 if ints => Tensor::I64(self.to_i64()),
            DType::Bool if ints => Tensor::Bool(self.to_i64().mapv(|x| x != 0)),
            DType::F32 => Tensor::F32(self.to_f32()),
            _ => Tensor::from_f64(dtype, self.to_f64()),
        }
    }

    /// Largest absolute difference between two tensors of the same shape, in f64.
    ///
    /// Returns `None` if the shapes differ. NaN anywhere gives NaN.
    pub fn max_abs_diff(&self, other: &Tensor) -> Option<f64> {
        if self.shape() != other.shape() {
            return None;
        }
        let (a, b) = (self.to_f64(), other.to_f64());
        Some(
            a.iter()
                .zip(b.iter())
                .map(|(x, y)| (x - y).abs())
                .fold(0.0, |m: f64, d| {
                    if d.is_nan() || m.is_nan() {
                        f64::NAN
                    } else {
                        m.max(d)
                    }
                }),
        )
    }

    /// Largest absolute value, in f64 (0 for an empty tensor).
    pub fn max_abs(&self) -> f64 {
        self.to_f64().iter().fold(0.0, |m: f64, x| m.max(x.abs()))
    }
}

impl From<ArrayD<f32>> for Tensor {
    fn from(a: ArrayD<f32>) -> Self {
        Tensor::F32(a)
    }
}

impl From<ArrayD<i64>> for Tensor {
    fn from(a: ArrayD<i64>) -> Self {
        Tensor::I64(a)
    }
}

impl From<ArrayD<bool>> for Tensor {
    fn from(a: ArrayD<bool>) -> Self {
        Tensor::Bool(a)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::arr1;

    #[test]
    fn cast_rules() {
        let t = Tensor::F32(arr1(&[-1.7f32, 0.0, 2.5, f32::NAN]).into_dyn());
        assert_eq!(
            t.cast(DType::I32),
            Tensor::I32(arr1(&[-1, 0, 2, 0]).into_dyn())
        );
        assert_eq!(
            t.cast(DType::Bool),
            Tensor::Bool(arr1(&[true, false, true, true]).into_dyn())
        );
        let i = Tensor::I64(arr1(&[300i64, -129]).into_dyn());
        assert_eq!(i.cast(DType::I8), Tensor::I8(arr1(&[44i8, 127]).into_dyn()));
        assert_eq!(Tensor::zeros(DType::Bool, &[2]).shape(), &[2]);
        assert_eq!(Tensor::F64(arr1(&[1.0]).into_dyn()).dtype(), DType::F32);
    }

    #[test]
    fn diffs() {
        let a = Tensor::F32(arr1(&[1.0f32, -3.0]).into_dyn());
        let b = Tensor::F64(arr1(&[1.5f64, -3.0]).into_dyn());
        assert_eq!(a.max_abs_diff(&b), Some(0.5));
        assert_eq!(a.max_abs(), 3.0);
    }
}
