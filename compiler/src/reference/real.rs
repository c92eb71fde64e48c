//! The float type the reference executor computes in: f32 or f64.

use std::fmt::Debug;
use std::ops::{Add, AddAssign, Div, Mul, Neg, Sub};

use ndarray::ArrayD;

use crate::ir::Tensor;

/// A float the reference executor computes in. Transcendental functions
/// come from the portable `libm` crate so results are the same everywhere.
pub trait Real:
    Copy
    + PartialOrd
    + Debug
    + Default
    + Add<Output = Self>
    + Sub<Output = Self>
    + Mul<Output = Self>
    + Div<Output = Self>
    + Neg<Output = Self>
    + AddAssign
    + Send
    + Sync
    + 'static
{
    /// 0.
    const ZERO: Self;
    /// 1.
    const ONE: Self;
    /// Nearest value to `x`.
    fn from_f64(x: f64) -> Self;
    /// Exact widening.
    fn to_f64(self) -> f64;
    /// `e^x`.
    fn exp(self) -> Self;
    /// Natural log.
    fn ln(self) -> Self;
    /// Square root.
    fn sqrt(self) -> Self;
    /// Hyperbolic tangent.
    fn tanh(self) -> Self;
    /// Error function.
    fn erf(self) -> Self;
    /// `self ^ e`.
    fn powf(self, e: Self) -> Self;
    /// Absolute value.
    fn abs(self) -> Self;
    /// Whether NaN.
    fn is_nan(self) -> bool;
    /// Wraps an array of this type as a [`Tensor`].
    fn into_tensor(a: ArrayD<Self>) -> Tensor;

    /// Maximum that propagates NaN (numpy `maximum`).
    fn max_nan(self, o: Self) -> Self {
        if self.is_nan() || o.is_nan() {
            Self::from_f64(f64::NAN)
        } else if o > self {
            o
        } else {
            self
        }
    }

    /// Minimum that propagates NaN (numpy `minimum`).
    fn min_nan(self, o: Self) -> Self {
        if self.is_nan() || o.is_nan() {
            Self::from_f64(f64::NAN)
        } else if o < self {
            o
        } else {
            self
        }
    }
}

impl Real for f32 {
    const ZERO: Self = 0.0;
    const ONE: Self = 1.0;
    fn from_f64(x: f64) -> Self {
        x as f32
    }
    fn to_f64(self) -> f64 {
        f64::from(self)
    }
    fn exp(self) -> Self {
        libm::expf(self)
    }
    fn ln(self) -> Self {
        libm::logf(self)
    }
    fn sqrt(self) -> Self {
        libm::sqrtf(self)
    }
    fn tanh(self) -> Self {
        libm::tanhf(self)
    }
    fn erf(self) -> Self {
        libm::erff(self)
    }
    fn powf(self, e: Self) -> Self {
        libm::powf(self, e)
    }
    fn abs(self) -> Self {
        libm::fabsf(self)
    }
    fn is_nan(self) -> bool {
        f32::is_nan(self)
    }
    fn into_tensor(a: ArrayD<Self>) -> Tensor {
        Tensor::F32(a)
    }
}

impl Real for f64 {
    const ZERO: Self = 0.0;
    const ONE: Self = 1.0;
    fn from_f64(x: f64) -> Self {
        x
    }
    fn to_f64(self) -> f64 {
        self
    }
    fn exp(self) -> Self {
        libm::exp(self)
    }
    fn ln(self) -> Self {
        libm::log(self)
    }
    fn sqrt(self) -> Self {
        libm::sqrt(self)
    }
    fn tanh(self) -> Self {
        libm::tanh(self)
    }
    fn erf(self) -> Self {
        libm::erf(self)
    }
    fn powf(self, e: Self) -> Self {
        libm::pow(self, e)
    }
    fn abs(self) -> Self {
        libm::fabs(self)
    }
    fn is_nan(self) -> bool {
        f64::is_nan(self)
    }
    fn into_tensor(a: ArrayD<Self>) -> Tensor {
        Tensor::F64(a)
    }
}
