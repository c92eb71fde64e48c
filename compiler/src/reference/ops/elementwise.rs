//! Elementwise unary and binary ops with numpy broadcasting, and `where`.

use ndarray::{ArrayD, Zip};

use super::broadcast_to;
use crate::ir::{GeluApprox, Op};
use crate::reference::Real;

/// `f(a, b)` over the broadcast of `a` and `b` to `shape`.
pub(crate) fn binary_map<A: Clone, B: Clone, C>(
    a: &ArrayD<A>,
    b: &ArrayD<B>,
    shape: &[usize],
    f: impl Fn(A, B) -> C,
) -> Result<ArrayD<C>, String> {
    let (av, bv) = (broadcast_to(a, shape)?, broadcast_to(b, shape)?);
    Ok(Zip::from(&av)
        .and(&bv)
        .map_collect(|x, y| f(x.clone(), y.clone())))
}

/// `cond ? a : b` over the broadcast of all three to `shape`.
pub(crate) fn select<T: Clone>(
    cond: &ArrayD<bool>,
    a: &ArrayD<T>,
    b: &ArrayD<T>,
    shape: &[usize],
) -> Result<ArrayD<T>, String> {
    let (cv, av, bv) = (
        broadcast_to(cond, shape)?,
        broadcast_to(a, shape)?,
        broadcast_to(b, shape)?,
    );
    Ok(Zip::from(&cv)
        .and(&av)
        .and(&bv)
        .map_collect(|&c, x, y| if c { x.clone() } else { y.clone() }))
}

/// The scalar function of a binary float op.
pub(crate) fn float_binary<F: Real>(op: &Op) -> Option<fn(F, F) -> F> {
    Some(match op {
        Op::Add => |a, b| a + b,
        Op::Sub => |a, b| a - b,
        Op::Mul => |a, b| a * b,
        Op::Div => |a, b| a / b,
        Op::Max => F::max_nan,
        Op::Min => F::min_nan,
        Op::Pow => F::powf,
        _ => return None,
    })
}

/// The scalar function of a binary integer op (wrapping arithmetic).
pub(crate) fn int_binary(op: &Op) -> Option<fn(i64, i64) -> i64> {
    Some(match op {
        Op::Add => i64::wrapping_add,
        Op::Sub => i64::wrapping_sub,
        Op::Mul => i64::wrapping_mul,
        Op::Max => std::cmp::max,
        Op::Min => std::cmp::min,
        _ => return None,
    })
}

/// `1 / (1 + e^-x)`.
pub(crate) fn sigmoid<F: Real>(x: F) -> F {
    F::ONE / (F::ONE + (-x).exp())
}

/// GELU in erf form: `0.5 x (1 + erf(x / sqrt 2))`.
pub(crate) fn gelu_erf<F: Real>(x: F) -> F {
    let half = F::from_f64(0.5);
    half * x * (F::ONE + (x * F::from_f64(std::f64::consts::FRAC_1_SQRT_2)).erf())
}

/// GELU in tanh form: `0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))`.
pub(crate) fn gelu_tanh<F: Real>(x: F) -> F {
    let half = F::from_f64(0.5);
    let c = F::from_f64((2.0 / std::f64::consts::PI).sqrt());
    let inner = c * (x + F::from_f64(0.044715) * x * x * x);
    half * x * (F::ONE + inner.tanh())
}

/// The scalar function of a unary float op.
pub(crate) fn float_unary<F: Real>(op: &Op) -> Option<fn(F) -> F> {
    Some(match op {
        Op::Neg => |x: F| -x,
        Op::Abs => F::abs,
        Op::Exp => F::exp,
        Op::Log => F::ln,
        Op::Sqrt => F::sqrt,
        Op::Rsqrt => |x: F| F::ONE / x.sqrt(),
        Op::Reciprocal => |x: F| F::ONE / x,
        Op::Relu => |x: F| x.max_nan(F::ZERO),
        Op::Sigmoid => sigmoid,
        Op::Tanh => F::tanh,
        Op::Erf => F::erf,
        Op::Silu => |x: F| x * sigmoid(x),
        Op::Gelu {
            approximate: GeluApprox::None,
        } => gelu_erf,
        Op::Gelu {
            approximate: GeluApprox::Tanh,
        } => gelu_tanh,
        _ => return None,
    })
}

/// The scalar function of a unary integer op (wrapping).
pub(crate) fn int_unary(op: &Op) -> Option<fn(i64) -> i64> {
    Some(match op {
        Op::Neg => i64::wrapping_neg,
        Op::Abs => i64::wrapping_abs,
        Op::Relu => |x: i64| x.max(0),
        _ => return None,
    })
}
