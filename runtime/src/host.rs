//! Host-side tensors: what callers bind as inputs and get back as outputs.

use crate::codec;
use crate::error::{RuntimeError, fmt_shape};
use ndarray::{ArrayD, IxDyn};
use neuron_isa::{Dtype, HbmTensor};

/// A dense, row-major host array of one of the element types `.npy` files commonly hold.
///
/// Outputs come back as [`HostTensor::F32`] for every float dtype (bf16, fp8, ... widen
/// exactly to f32), [`HostTensor::I32`] for i8, u8 and i32, and [`HostTensor::I64`] for
/// i64.
#[derive(Debug, Clone, PartialEq)]
pub enum HostTensor {
    /// 32-bit floats.
    F32(ArrayD<f32>),
    /// 64-bit floats (narrowed when bound).
    F64(ArrayD<f64>),
    /// 8-bit signed integers.
    I8(ArrayD<i8>),
    /// 8-bit unsigned integers.
    U8(ArrayD<u8>),
    /// 32-bit signed integers.
    I32(ArrayD<i32>),
    /// 64-bit signed integers.
    I64(ArrayD<i64>),
    /// Booleans (stored as 0 or 1).
    Bool(ArrayD<bool>),
}

macro_rules! from_array {
    ($t:ty, $v:ident) => {
        impl From<ArrayD<$t>> for HostTensor {
            fn from(a: ArrayD<$t>) -> Self {
                HostTensor::$v(a)
            }
        }
    };
}
from_array!(f32, F32);
from_array!(f64, F64);
from_array!(i8, I8);
from_array!(u8, U8);
from_array!(i32, I32);
from_array!(i64, I64);
from_array!(bool, Bool);

impl HostTensor {
    /// The shape.
    pub fn shape(&self) -> Vec<u64> {
        let s = match self {
            HostTensor::F32(a) => a.shape(),
            HostTensor::F64(a) => a.shape(),
            HostTensor::I8(a) => a.shape(),
            HostTensor::U8(a) => a.shape(),
            HostTensor::I32(a) => a.shape(),
            HostTensor::I64(a) => a.shape(),
            HostTensor::Bool(a) => a.shape(),
        };
        s.iter().map(|&d| d as u64).collect()
    }

    /// The element type's name as numpy spells it (`float32`, `int64`, `bool`, ...).
    pub fn type_name(&self) -> &'static str {
        match self {
            HostTensor::F32(_) => "float32",
            HostTensor::F64(_) => "float64",
            HostTensor::I8(_) => "int8",
            HostTensor::U8(_) => "uint8",
            HostTensor::I32(_) => "int32",
            HostTensor::I64(_) => "int64",
            HostTensor::Bool(_) => "bool",
        }
    }

    /// Whether the elements are floating point.
    pub fn is_float(&self) -> bool {
        matches!(self, HostTensor::F32(_) | HostTensor::F64(_))
    }

    /// The data as f32, if it is f32 (outputs of float dtypes always are).
    pub fn as_f32(&self) -> Option<&ArrayD<f32>> {
        match self {
            HostTensor::F32(a) => Some(a),
            _ => None,
        }
    }

    /// The data as i32, if it is i32.
    pub fn as_i32(&self) -> Option<&ArrayD<i32>> {
        match self {
            HostTensor::I32(a) => Some(a),
            _ => None,
        }
    }

    /// The data as i64, if it is i64.
    pub fn as_i64(&self) -> Option<&ArrayD<i64>> {
        match self {
            HostTensor::I64(a) => Some(a),
            _ => None,
        }
    }

    /// Every element widened to f64, in row-major order.
    pub fn to_f64_vec(&self) -> Vec<f64> {
        match self {
            HostTensor::F32(a) => a.iter().map(|&x| f64::from(x)).collect(),
            HostTensor::F64(a) => a.iter().copied().collect(),
            HostTensor::I8(a) => a.iter().map(|&x| f64::from(x)).collect(),
            HostTensor::U8(a) => a.iter().map(|&x| f64::from(x)).collect(),
            HostTensor::I32(a) => a.iter().map(|&x| f64::from(x)).collect(),
            HostTensor::I64(a) => a.iter().map(|&x| x as f64).collect(),
            HostTensor::Bool(a) => a.iter().map(|&x| f64::from(u8::from(x))).collect(),
        }
    }

    /// Integer elements in row-major order (`None` for float data).
    fn to_i64_vec(&self) -> Option<Vec<i64>> {
        Some(match self {
            HostTensor::F32(_) | HostTensor::F64(_) => return None,
            HostTensor::I8(a) => a.iter().map(|&x| i64::from(x)).collect(),
            HostTensor::U8(a) => a.iter().map(|&x| i64::from(x)).collect(),
            HostTensor::I32(a) => a.iter().map(|&x| i64::from(x)).collect(),
            HostTensor::I64(a) => a.iter().copied().collect(),
            HostTensor::Bool(a) => a.iter().map(|&x| i64::from(x)).collect(),
        })
    }

    /// Encodes the data as the HBM bytes of tensor `t` (named `name` in errors).
    ///
    /// Rules: the shape must equal the declared shape exactly. Float data may fill only
    /// float tensors (rounded to nearest even). Integer and boolean data may fill integer
    /// tensors (each value must fit) and float tensors (converted).
    pub fn encode_for(&self, name: &str, t: &HbmTensor) -> Result<Vec<u8>, RuntimeError> {
        let shape = self.shape();
        if shape != t.shape {
            return Err(RuntimeError::InputShape {
                name: name.to_string(),
                expected: t.shape.clone(),
                found: shape,
            });
        }
        let encoded = if t.dtype.is_float() {
            let values: Vec<f32> = match self {
                HostTensor::F32(a) => a.iter().copied().collect(),
                _ => self.to_f64_vec().into_iter().map(|x| x as f32).collect(),
            };
            codec::encode_floats(&values, t.dtype)
                .map_err(|e| RuntimeError::Program(format!("input '{name}': {e}")))?
        } else {
            let Some(ints) = self.to_i64_vec() else {
                return Err(RuntimeError::InputDtype {
                    name: name.to_string(),
                    expected: t.dtype,
                    found: format!("{} (floats cannot bind an integer input)", self.type_name()),
                });
            };
            let mut out = Vec::with_capacity(t.bytes() as usize);
            for (index, v) in ints.into_iter().enumerate() {
                if !codec::int_fits(v, t.dtype) {
                    return Err(RuntimeError::InputValue {
                        name: name.to_string(),
                        index,
                        value: v.to_string(),
                        dtype: t.dtype,
                    });
                }
                codec::encode_int(v, t.dtype, &mut out);
            }
            out
        };
        Ok(encoded)
    }

    /// Decodes the HBM bytes of tensor `t` (see the type's documentation for which
    /// variant each dtype gives).
    pub fn decode(bytes: &[u8], t: &HbmTensor) -> Result<HostTensor, RuntimeError> {
        if bytes.len() as u64 != t.bytes() {
            return Err(RuntimeError::Program(format!(
                "tensor '{}' {} {}: expected {} bytes, the simulator holds {}",
                t.name,
                t.dtype,
                fmt_shape(&t.shape),
                t.bytes(),
                bytes.len()
            )));
        }
        let shape: Vec<usize> = t.shape.iter().map(|&d| d as usize).collect();
        let size = t.dtype.size() as usize;
        let bad = |e: String| RuntimeError::Program(format!("tensor '{}': {e}", t.name));
        let shaped = |e: ndarray::ShapeError| bad(e.to_string());
        Ok(match t.dtype {
            Dtype::I64 => HostTensor::I64(
                ArrayD::from_shape_vec(
                    IxDyn(&shape),
                    bytes
                        .chunks_exact(size)
                        .map(|c| codec::decode_int(c, t.dtype))
                        .collect(),
                )
                .map_err(shaped)?,
            ),
            Dtype::I8 | Dtype::U8 | Dtype::I32 => HostTensor::I32(
                ArrayD::from_shape_vec(
                    IxDyn(&shape),
                    bytes
                        .chunks_exact(size)
                        .map(|c| codec::decode_int(c, t.dtype) as i32)
                        .collect(),
                )
                .map_err(shaped)?,
            ),
            _ => HostTensor::F32(
                ArrayD::from_shape_vec(
                    IxDyn(&shape),
                    codec::decode_floats(bytes, t.dtype).map_err(bad)?,
                )
                .map_err(shaped)?,
            ),
        })
    }
}
