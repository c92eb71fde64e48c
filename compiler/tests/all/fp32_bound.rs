//! A first-order forward-error bound for an FP32 evaluation of a graph: the tolerance of the
//! differential fuzzer's FP32 comparison ([`super::diff_fuzz`]).
//!
//! The compiled program computes every op in FP32 (unit roundoff `u = 2^-24`, round to
//! nearest even; docs/numerics.md). Its result is compared with the reference executor
//! run in f64 — the exact answer for the purpose, its own error being ~1e-16 relative —
//! and may differ from it by the rounding the program commits, amplified by the
//! conditioning of every later op. This module computes, for every element of every
//! value, a bound `E` on `|fp32 result - exact result|` by running error analysis
//! (Higham, *Accuracy and Stability of Numerical Algorithms*, 2nd ed., ch. 3-4): walking
//! the graph in order, each op maps its operands' bounds through its first derivatives
//! (the propagated error) and adds the rounding of its own FP32 evaluation (the local
//! error):
//!
//! - exact ops (neg, abs, relu, max, min, where, gather, transpose, reshape, concat,
//!   slice, reduce_max) only propagate: `|max(a', b') - max(a, b)| <= max(Ea, Eb)`;
//! - `+ - * /`: derivatives plus one rounding, `u |y|`;
//! - unary functions (libm FP32, a few roundings each on the simulator:
//!   `simulator/src/exec/activation.rs`): `|f'(x)| E + 8u (|y| + |x f'(x)|)`, the second
//!   term being the function's own error plus the rounding of its argument; GELU adds
//!   `8u |x|` for the cancellation in `1 + erf(x / sqrt 2)` at negative `x`;
//! - sums of `n` terms in any order: `gamma_n * sum |x|`, `gamma_n = n u / (1 - n u)`
//!   (matmul: `E_x |W| + |X| E_w + gamma_k |X| |W|`);
//! - softmax: `y_j (E'_j + sum_k y_k E'_k) + (gamma_n + 6u) y_j`, with
//!   `E'_j = E_j + u |x_j - max|` (the rounding of the shifted argument: softmax is
//!   ill-conditioned in `|x - max|`);
//! - layer norm, the case that needed this module: with `s = sqrt(var + eps)` and
//!   `x^ = (x - mean) / s`, the propagated error is
//!   `(E_j + mean(E) + |x^_j| mean(|x^| E)) / s` and the kernel's own rounding
//!   (`lower/norm.rs`: `bn_stats` two-pass halves, `bn_aggr`, `rsqrt`, one
//!   `(x - mean) * rstd`) is `((gamma_n + 8u) mean|x| + u |x_j - mean|) / s` from the
//!   mean and the centring plus `|x^_j| ((gamma_n + 8u) / 2 + 4u)` from the variance and
//!   `rstd`. Both scale with the condition number `|x| / s`: rows that are nearly
//!   constant (`|x| ~ 1.5`, spread `1e-4`) amplify an ulp of the operand ~10^4 times;
//! - conv2d: as a matmul, a sum of `n = C/G kh kw` products and the bias per output
//!   (`E_x * |W| + |X| * E_w + (gamma_{n+1} + 4u) (|X| * |W| + |b|)`, `*` the convolution,
//!   computed by the reference executor's own op, [`eval_op_f64`]), the 4u covering a
//!   batch_norm folded into the weights; batch_norm `y = x a + c` per channel:
//!   `|a| E + 8u (|x a| + |mean a| + |bias| + |y|)`; max pooling propagates the window's
//!   largest error; average pooling `avg(E) + (gamma_k + 2u) avg(|x|)`;
//! - RMS norm: `(E_j + |n_j| mean(|n| E)) / r` propagated (`r` the RMS, `n = x / r`) and
//!   `|n_j| ((gamma_n + 4u) / 2 + 4u)` local: well conditioned, no cancellation.
//!
//! The bounds are worst case (errors all of one sign; real FP32 errors are ~sqrt(n)
//! smaller) and first order: terms in `u^2` are dropped, which the comparison covers
//! with a factor of 2 (`FIRST_ORDER_SLACK`). For a well-conditioned graph `E` is ~1e-6
//! of the output, far below what a wrong index, tile or op produces (errors of the order
//! of the output itself); for an ill-conditioned one it says honestly how little FP32 can
//! know. An op without a model here panics, so a generator extension must come with one.

#![allow(clippy::unwrap_used)] // Test code: a panic is a test failure.

use ndarray::{Array1, Array2, ArrayD, Axis, IxDyn, Slice, concatenate};
use neuronc::ir::{DType, GeluApprox, Graph, Op};
use neuronc::reference::eval_op_f64;

/// FP32 unit roundoff (round to nearest): half an ulp of 1.
pub const U: f64 = 1.0 / (1u64 << 24) as f64;

/// The factor on the first-order bound covering the dropped `O(u^2)` terms.
pub const FIRST_ORDER_SLACK: f64 = 2.0;

/// `gamma_n = n u / (1 - n u)`: the relative error bound of an `n`-term sum or product.
fn gamma(n: usize) -> f64 {
    let nu = n as f64 * U;
    nu / (1.0 - nu)
}

/// `a * b` with `0 * inf = 0` (a zero error through an infinite derivative stays zero).
fn mul0(a: f64, b: f64) -> f64 {
    if a == 0.0 || b == 0.0 { 0.0 } else { a * b }
}

/// Broadcasts `a` to `shape` (numpy rules) as an owned array.
fn bcast(a: &ArrayD<f64>, shape: &[usize]) -> ArrayD<f64> {
    a.broadcast(IxDyn(shape))
        .unwrap_or_else(|| panic!("cannot broadcast {:?} to {shape:?}", a.shape()))
        .to_owned()
}

/// `a` viewed as `[outer, inner]` rows, `inner` the product of the axes from `axis` on.
fn rows(a: &ArrayD<f64>, axis: usize) -> Array2<f64> {
    let inner: usize = a.shape()[axis..].iter().product();
    let outer = a.len() / inner.max(1);
    a.as_standard_layout()
        .into_owned()
        .into_shape_with_order((outer, inner))
        .unwrap()
}

fn axis_of(a: i64, rank: usize) -> usize {
    if a < 0 {
        (a + rank as i64) as usize
    } else {
        a as usize
    }
}

/// The derivative of a unary function at `x` (with `y = f(x)`), and the extra absolute
/// local error term's weight on `|x|` (GELU's cancellation).
fn unary_derivative(op: &Op, x: f64, y: f64) -> Option<(f64, f64)> {
    let sig = |x: f64| 1.0 / (1.0 + (-x).exp());
    let d = match op {
        Op::Exp => y,
        Op::Log => 1.0 / x,
        Op::Sqrt => 0.5 / y,
        Op::Rsqrt => 0.5 * (y / x).abs(),
        Op::Reciprocal => y * y,
        Op::Sigmoid => y * (1.0 - y),
        Op::Tanh => 1.0 - y * y,
        Op::Erf => std::f64::consts::FRAC_2_SQRT_PI * (-x * x).exp(),
        Op::Silu => {
            let s = sig(x);
            s + x * s * (1.0 - s)
        }
        Op::Gelu { approximate } => {
            let d = match approximate {
                GeluApprox::None => {
                    let cdf = 0.5 * (1.0 + libm::erf(x * std::f64::consts::FRAC_1_SQRT_2));
                    let pdf = (-0.5 * x * x).exp() / (2.0 * std::f64::consts::PI).sqrt();
                    cdf + x * pdf
                }
                GeluApprox::Tanh => {
                    let c = (2.0 / std::f64::consts::PI).sqrt();
                    let t = (c * (x + 0.044_715 * x * x * x)).tanh();
                    0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * c * (1.0 + 3.0 * 0.044_715 * x * x)
                }
            };
            return Some((d.abs(), 8.0 * U));
        }
        _ => return None,
    };
    Some((d.abs(), 0.0))
}

/// Error bounds of every value of `g` (indexed by value id) given the values of an f64
/// reference run (`vals`, same indexing). Inputs and params are exact (FP32 data).
pub fn error_bounds(g: &Graph, vals: &[ArrayD<f64>]) -> Vec<ArrayD<f64>> {
    let mut err: Vec<ArrayD<f64>> = vals.iter().map(|v| ArrayD::zeros(v.shape())).collect();
    for nid in g.node_ids() {
        let node = g.node(nid);
        let ins: Vec<usize> = node.inputs.iter().map(|i| i.index()).collect();
        let out = node.outputs[0].index();
        let y = &vals[out];
        let shape = y.shape().to_vec();
        let x = |k: usize| &vals[ins[k]];
        let e = |k: usize| &err[ins[k]];
        let xb = |k: usize| bcast(&vals[ins[k]], &shape);
        let eb = |k: usize| bcast(&err[ins[k]], &shape);
        let local = |c: f64| y.mapv(|v| c * v.abs());
        let bound: ArrayD<f64> = match &node.op {
            Op::Neg | Op::Abs | Op::Relu => e(0).clone(),
            Op::Max | Op::Min => {
                let (ea, eb_) = (eb(0), eb(1));
                ndarray::Zip::from(&ea)
                    .and(&eb_)
                    .map_collect(|a, b| a.max(*b))
            }
            Op::Add | Op::Sub => eb(0) + eb(1) + local(U),
            Op::Mul => eb(0) * xb(1).mapv(f64::abs) + eb(1) * xb(0).mapv(f64::abs) + local(U),
            Op::Div => {
                let (a, b) = (xb(0), xb(1));
                let ea_term = ndarray::Zip::from(&eb(0))
                    .and(&b)
                    .map_collect(|e, b| mul0(*e, 1.0 / b.abs()));
                let eb_term = ndarray::Zip::from(&eb(1))
                    .and(&a)
                    .and(&b)
                    .map_collect(|e, a, b| mul0(*e, (a / (b * b)).abs()));
                ea_term + eb_term + local(U)
            }
            Op::Where => {
                let (c, ea, eb_) = (xb(0), eb(1), eb(2));
                ndarray::Zip::from(&c)
                    .and(&ea)
                    .and(&eb_)
                    .map_collect(|c, a, b| if *c != 0.0 { *a } else { *b })
            }
            Op::Cast { dtype: DType::F32 } => e(0) + local(U),
            Op::Transpose { perm } => e(0)
                .clone()
                .permuted_axes(IxDyn(perm))
                .as_standard_layout()
                .into_owned(),
            Op::Reshape { .. } => e(0)
                .as_standard_layout()
                .into_owned()
                .into_shape_with_order(IxDyn(&shape))
                .unwrap(),
            Op::Concat { axis } => {
                let ax = Axis(axis_of(*axis, shape.len()));
                let parts: Vec<_> = ins.iter().map(|&i| err[i].view()).collect();
                concatenate(ax, &parts).unwrap()
            }
            Op::Slice {
                axes,
                starts,
                ends,
                steps,
            } => {
                let mut a = e(0).clone();
                let rank = a.ndim();
                for (i, &st) in starts.iter().enumerate() {
                    let ax = axes.get(i).map_or(i, |&a| axis_of(a, rank));
                    let len = a.shape()[ax] as i64;
                    let clamp = |v: i64| if v < 0 { (v + len).max(0) } else { v.min(len) };
                    let (s, en) = (clamp(st), clamp(ends[i]));
                    let step = steps.get(i).copied().unwrap_or(1) as isize;
                    a = a
                        .slice_axis(
                            Axis(ax),
                            Slice::new(s as isize, Some(en.max(s) as isize), step),
                        )
                        .to_owned();
                }
                a
            }
            Op::Gather { axis } => {
                let data = e(0);
                let ax = axis_of(*axis, data.ndim());
                let len = data.shape()[ax] as i64;
                let idx: Vec<usize> = x(1)
                    .iter()
                    .map(|&i| {
                        let i = i as i64;
                        (if i < 0 { i + len } else { i }) as usize
                    })
                    .collect();
                data.select(Axis(ax), &idx)
                    .as_standard_layout()
                    .into_owned()
                    .into_shape_with_order(IxDyn(&shape))
                    .unwrap()
            }
            Op::MatMul { transpose_b } => {
                assert!(
                    x(0).ndim() == 2 && x(1).ndim() == 2,
                    "fp32_bound: matmul error model is 2-D only"
                );
                let a = x(0).view().into_dimensionality::<ndarray::Ix2>().unwrap();
                let ea = e(0).view().into_dimensionality::<ndarray::Ix2>().unwrap();
                let mut b = x(1).view().into_dimensionality::<ndarray::Ix2>().unwrap();
                let mut ebm = e(1).view().into_dimensionality::<ndarray::Ix2>().unwrap();
                if *transpose_b {
                    b = b.reversed_axes();
                    ebm = ebm.reversed_axes();
                }
                let (aa, ba) = (a.mapv(f64::abs), b.mapv(f64::abs));
                let k = a.shape()[1];
                let r = ea.dot(&ba) + aa.dot(&ebm) + aa.dot(&ba) * gamma(k);
                r.into_dyn()
            }
            Op::Conv2d { .. } => {
                // A dot product of `n = C/G * kh * kw` terms plus the bias, accumulated in
                // FP32 PSUM in any order (gamma_{n+1}), evicted with one more rounding; 4u
                // more for a batch_norm folded into the weights and bias at compile time
                // (each folded weight and bias rounded once to FP32, relative error u,
                // scaled later by the batch_norm's propagation).
                let abs = |a: &ArrayD<f64>| a.mapv(f64::abs);
                let conv = |a: ArrayD<f64>, b: ArrayD<f64>, bias: Option<ArrayD<f64>>| {
                    let mut args = vec![a, b];
                    args.extend(bias);
                    eval_op_f64(&node.op, &args, &shape).unwrap()
                };
                let w = x(1).shape();
                let n = w[1] * w[2] * w[3];
                let mag = conv(abs(x(0)), abs(x(1)), (ins.len() > 2).then(|| abs(x(2))));
                let prop =
                    conv(e(0).clone(), abs(x(1)), None) + conv(abs(x(0)), e(1).clone(), None);
                let bias_e = match ins.get(2) {
                    Some(&b) => {
                        let per_channel =
                            err[b]
                                .clone()
                                .into_shape_with_order(IxDyn(&[1, err[b].len(), 1, 1]));
                        bcast(&per_channel.unwrap(), &shape)
                    }
                    None => ArrayD::zeros(IxDyn(&shape)),
                };
                prop + bias_e + mag * (gamma(n + 1) + 4.0 * U) + local(U)
            }
            Op::BatchNorm { epsilon } => {
                // Inference: `y = x a + c`, `a = scale / sqrt(var + eps)`, `c = bias - mean a`
                // per channel (axis 1), folded into the convolution before it or lowered as
                // one multiply-add: the operand's error times |a|, and a few roundings of
                // `a`, `c` and the multiply-add.
                let ch = |k: usize| {
                    let v = x(k);
                    let mut sh = vec![1; shape.len()];
                    sh[1] = v.len();
                    bcast(
                        &v.clone().into_shape_with_order(IxDyn(&sh)).unwrap(),
                        &shape,
                    )
                };
                let eps = f64::from(*epsilon);
                let (sc, bi, mean, var) = (ch(1), ch(2), ch(3), ch(4));
                let a = ndarray::Zip::from(&sc)
                    .and(&var)
                    .map_collect(|s, v| s / (v + eps).sqrt());
                let xa = (x(0) * &a).mapv(f64::abs);
                let ca = (&mean * &a).mapv(f64::abs) + bi.mapv(f64::abs);
                e(0) * &a.mapv(f64::abs) + (xa + ca + y.mapv(f64::abs)) * (8.0 * U)
            }
            Op::MaxPool2d { .. } => {
                // Exact: the window's largest error bounds the largest value's.
                eval_op_f64(&node.op, &[e(0).clone()], &shape).unwrap()
            }
            Op::AvgPool2d { kernel, .. } => {
                // A sum of at most kh * kw terms and one scaling by the reciprocal count.
                let n = kernel[0] * kernel[1];
                let avg = |a: ArrayD<f64>| eval_op_f64(&node.op, &[a], &shape).unwrap();
                avg(e(0).clone()) + avg(x(0).mapv(f64::abs)) * (gamma(n) + 2.0 * U)
            }
            Op::GlobalAvgPool => {
                let n: usize = x(0).shape()[2..].iter().product();
                let avg = |a: ArrayD<f64>| eval_op_f64(&node.op, &[a], &shape).unwrap();
                avg(e(0).clone()) + avg(x(0).mapv(f64::abs)) * (gamma(n) + 2.0 * U)
            }
            Op::Softmax { axis } => {
                let ax = Axis(axis_of(*axis, shape.len()));
                let n = shape[ax.0];
                let mut out = ArrayD::zeros(IxDyn(&shape));
                for ((xl, el), (yl, mut ol)) in x(0)
                    .lanes(ax)
                    .into_iter()
                    .zip(e(0).lanes(ax))
                    .zip(y.lanes(ax).into_iter().zip(out.lanes_mut(ax)))
                {
                    let m = xl.fold(f64::NEG_INFINITY, |m, &v| m.max(v));
                    let ep: Vec<f64> = xl
                        .iter()
                        .zip(el)
                        .map(|(v, e)| e + U * (v - m).abs())
                        .collect();
                    let mix: f64 = yl.iter().zip(&ep).map(|(y, e)| y * e).sum();
                    for ((o, y), e) in ol.iter_mut().zip(yl).zip(&ep) {
                        *o = y * (e + mix) + (gamma(n) + 6.0 * U) * y;
                    }
                }
                out
            }
            Op::LayerNorm { axis, epsilon } | Op::RmsNorm { axis, epsilon } => {
                let rms = matches!(node.op, Op::RmsNorm { .. });
                let ax = axis_of(*axis, shape.len());
                let (xr, er) = (rows(x(0), ax), rows(e(0), ax));
                let n = xr.ncols();
                let flat = |k: usize| -> Option<(Array1<f64>, Array1<f64>)> {
                    ins.get(k).map(|&i| {
                        let f = |a: &ArrayD<f64>| a.iter().copied().collect::<Array1<f64>>();
                        (f(&vals[i]), f(&err[i]))
                    })
                };
                let (gm, bt) = (flat(1), if rms { None } else { flat(2) });
                let eps = f64::from(*epsilon);
                let mut out = Array2::<f64>::zeros(xr.raw_dim());
                for ((xl, el), mut ol) in xr.rows().into_iter().zip(er.rows()).zip(out.rows_mut()) {
                    let nf = n as f64;
                    let mean = if rms { 0.0 } else { xl.sum() / nf };
                    let var = xl.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / nf;
                    let s = (var + eps).sqrt();
                    let xh: Vec<f64> = xl.iter().map(|v| (v - mean) / s).collect();
                    let mean_e = if rms { 0.0 } else { el.sum() / nf };
                    let mix = xh.iter().zip(el).map(|(h, e)| h.abs() * e).sum::<f64>() / nf;
                    let mean_abs = xl.iter().map(|v| v.abs()).sum::<f64>() / nf;
                    for j in 0..n {
                        let h = xh[j].abs();
                        let prop = (el[j] + mean_e + h * mix) / s;
                        let local = if rms {
                            h * ((gamma(n) + 4.0 * U) / 2.0 + 4.0 * U)
                        } else {
                            ((gamma(n) + 8.0 * U) * mean_abs + U * (xl[j] - mean).abs()) / s
                                + h * ((gamma(n) + 8.0 * U) / 2.0 + 4.0 * U)
                        };
                        let dn = prop + local;
                        let mut v = xh[j];
                        let mut dv = dn;
                        if let Some((g, eg)) = &gm {
                            dv = dv * g[j].abs() + h * eg[j] + U * (v * g[j]).abs();
                            v *= g[j];
                        }
                        if let Some((b, eb_)) = &bt {
                            v += b[j];
                            dv += eb_[j] + U * v.abs();
                        }
                        ol[j] = dv;
                    }
                }
                out.into_dyn().into_shape_with_order(IxDyn(&shape)).unwrap()
            }
            Op::ReduceSum { axes, .. }
            | Op::ReduceMean { axes, .. }
            | Op::ReduceMax { axes, .. } => {
                assert_eq!(axes.len(), 1, "fp32_bound: reductions over one axis only");
                let ax = Axis(axis_of(axes[0], x(0).ndim()));
                let n = x(0).shape()[ax.0];
                let r = match &node.op {
                    Op::ReduceMax { .. } => {
                        e(0).fold_axis(ax, 0.0f64, |m: &f64, v: &f64| m.max(*v))
                    }
                    _ => {
                        let s = e(0).sum_axis(ax) + x(0).mapv(f64::abs).sum_axis(ax) * gamma(n);
                        if matches!(node.op, Op::ReduceMean { .. }) {
                            s / n as f64
                        } else {
                            s
                        }
                    }
                };
                let r = r.into_shape_with_order(IxDyn(&shape)).unwrap();
                if matches!(node.op, Op::ReduceMean { .. }) {
                    r + local(2.0 * U)
                } else {
                    r
                }
            }
            op => {
                let Some(_) = unary_derivative(op, 0.5, 0.5) else {
                    panic!("fp32_bound: no error model for {op:?}; add one with the generator")
                };
                let (xs, es) = (x(0), e(0));
                ndarray::Zip::from(xs)
                    .and(es)
                    .and(y)
                    .map_collect(|&xv, &ev, &yv| {
                        let (d, gelu) = unary_derivative(op, xv, yv).unwrap();
                        mul0(ev, d) + 8.0 * U * (yv.abs() + mul0(xv.abs(), d)) + gelu * xv.abs()
                    })
            }
        };
        assert_eq!(bound.shape(), &shape[..], "fp32_bound: {} shape", node.name);
        err[out] = bound;
    }
    err
}

#[cfg(test)]
mod tests {
    use super::*;
    use neuronc::ir::Tensor;
    use neuronc::reference::{RefOptions, run_reference_all};
    use std::collections::BTreeMap;

    /// The bound of the output of a `[4, 256]` layer norm whose rows are `offset + spread *
    /// r` (`r` a fixed pseudo-random row in [-1, 1]), relative to the output's scale.
    fn layer_norm_bound(offset: f32, spread: f32) -> f64 {
        let text = r#"{"name": "ln", "inputs": [{"name": "x", "shape": [4, 256]}],
            "params": [{"name": "g", "shape": [256], "init": "ones"},
                       {"name": "b", "shape": [256], "init": "zeros"}],
            "nodes": [{"name": "n", "op": "layer_norm", "inputs": ["x", "g", "b"],
                       "outputs": ["y"]}], "outputs": ["y"]}"#;
        let g = neuronc::frontend::parse_model(text, std::path::Path::new(".")).unwrap();
        let x = ndarray::Array2::from_shape_fn((4, 256), |(i, j)| {
            let r = ((i * 256 + j) * 2_654_435_761 % 1000) as f32 / 500.0 - 1.0;
            offset + spread * r
        })
        .into_dyn();
        let inputs = BTreeMap::from([("x".to_string(), Tensor::F32(x))]);
        let vals: Vec<_> = run_reference_all(&g, &inputs, RefOptions { f64: true })
            .unwrap()
            .iter()
            .map(|t| t.to_f64())
            .collect();
        let b = error_bounds(&g, &vals);
        let y = g.outputs[0].index();
        let scale = vals[y].iter().fold(0.0f64, |m, v| m.max(v.abs()));
        b[y].iter().fold(0.0f64, |m, v| m.max(*v)) / scale
    }

    #[test]
    fn a_well_conditioned_layer_norm_gets_a_tight_bound() {
        // Centred rows: the bound is a few hundred ulps of the output (gamma_256 worst
        // case), far below what a wrong index or op gives.
        let r = layer_norm_bound(0.0, 1.0);
        assert!(r > 0.0 && r < 1e-4, "relative bound {r:e}");
    }

    #[test]
    fn the_layer_norm_bound_grows_with_the_condition_number() {
        // Rows 1.5 +- 1e-4 (the fuzzer's flagged graphs): |x| / std ~ 2.6e4.
        let well = layer_norm_bound(0.0, 1.0);
        let ill = layer_norm_bound(1.5, 1e-4);
        assert!(ill > 1e-3, "relative bound {ill:e}");
        assert!(ill > 1000.0 * well, "{ill:e} vs {well:e}");
    }
}
