//! Vector-Jacobian products: for each op, the gradients of its inputs given the gradient
//! `gy` of its output, built as ordinary graph nodes.
//!
//! The rules follow the op semantics in `docs/model-format.md` (numpy broadcasting, axes
//! counted from the end when negative). Each rule is checked against central finite
//! differences in f64 by the gradient-check tests (`compiler/tests/all/autodiff.rs`).

use crate::ir::shape_infer::slice_plan;
use crate::ir::{GeluApprox, GraphError, Node, Op, ValueId};

use super::{Builder, spatial};

/// The ops [`vjp`] differentiates (every input, unless [`has_rule`] says otherwise).
pub const DIFFERENTIABLE_OPS: &[&str] = &[
    "add",
    "sub",
    "mul",
    "div",
    "max",
    "min",
    "pow",
    "neg",
    "abs",
    "exp",
    "log",
    "sqrt",
    "rsqrt",
    "reciprocal",
    "relu",
    "sigmoid",
    "tanh",
    "erf",
    "silu",
    "gelu",
    "matmul",
    "softmax",
    "layer_norm",
    "rms_norm",
    "reduce_sum",
    "reduce_mean",
    "transpose",
    "reshape",
    "concat",
    "where (inputs 1 and 2)",
    "cast (float to float)",
    "reduce_max",
    "slice",
    "gather (the table; indices never)",
    "conv2d",
    "max_pool2d",
    "avg_pool2d",
    "global_avg_pool",
    "batch_norm",
];

/// Why a rule could not be applied.
pub enum VjpError {
    /// No gradient for this input.
    NoRule {
        /// The input index.
        input: usize,
        /// Explanation appended to the message (starts with `: ` or is empty).
        why: String,
    },
    /// A node could not be built.
    Graph(GraphError),
}

impl From<GraphError> for VjpError {
    fn from(e: GraphError) -> Self {
        VjpError::Graph(e)
    }
}

/// Whether `op` has a gradient with respect to input `i`; the error is the explanation.
pub fn has_rule(op: &Op, i: usize) -> Result<(), String> {
    match op {
        Op::Where if i == 0 => Err(": the condition is boolean".into()),
        Op::Where => Ok(()),
        Op::Gather { .. } if i == 1 => Err(": indices are integers".into()),
        Op::Cast { dtype } if !dtype.is_float() => {
            Err(format!(": the cast to {dtype} is not a float type"))
        }
        _ => Ok(()),
    }
}

fn norm_axis(axis: i64, rank: usize) -> usize {
    if axis < 0 {
        (axis + rank as i64).max(0) as usize
    } else {
        axis as usize
    }
}

/// The gradients of `node`'s inputs (`None` where not `wanted`) given its output's `gy`.
pub fn vjp(
    b: &mut Builder<'_>,
    node: &Node,
    gy: ValueId,
    wanted: &[bool],
) -> Result<Vec<Option<ValueId>>, VjpError> {
    for (i, &w) in wanted.iter().enumerate() {
        if w {
            has_rule(&node.op, i).map_err(|why| VjpError::NoRule { input: i, why })?;
        }
    }
    let x = &node.inputs;
    let y = node.outputs[0];
    let shape = |b: &Builder<'_>, v: ValueId| b.graph.value(v).shape.clone();
    let mut out: Vec<Option<ValueId>> = vec![None; x.len()];
    match &node.op {
        Op::Add | Op::Sub => {
            if wanted[0] {
                let s = shape(b, x[0]);
                out[0] = Some(b.unbroadcast(gy, &s)?);
            }
            if wanted[1] {
                let g = if node.op == Op::Sub {
                    b.op(Op::Neg, &[gy])?
                } else {
                    gy
                };
                let s = shape(b, x[1]);
                out[1] = Some(b.unbroadcast(g, &s)?);
            }
        }
        Op::Mul => {
            for (i, other) in [(0, x[1]), (1, x[0])] {
                if wanted[i] {
                    let g = b.mul(gy, other)?;
                    let s = shape(b, x[i]);
                    out[i] = Some(b.unbroadcast(g, &s)?);
                }
            }
        }
        Op::Div => {
            if wanted[0] {
                let g = b.div(gy, x[1])?;
                let s = shape(b, x[0]);
                out[0] = Some(b.unbroadcast(g, &s)?);
            }
            if wanted[1] {
                // d(a/b)/db = -(a/b)/b.
                let t = b.mul(gy, y)?;
                let t = b.div(t, x[1])?;
                let g = b.op(Op::Neg, &[t])?;
                let s = shape(b, x[1]);
                out[1] = Some(b.unbroadcast(g, &s)?);
            }
        }
        Op::Max | Op::Min => {
            // The gradient goes to `a` where it wins strictly, to `b` otherwise (ties go
            // to `b`, a valid subgradient).
            let d = if node.op == Op::Max {
                b.sub(x[0], x[1])?
            } else {
                b.sub(x[1], x[0])?
            };
            let ma = b.positive_mask(d)?;
            if wanted[0] {
                let g = b.mul(gy, ma)?;
                let s = shape(b, x[0]);
                out[0] = Some(b.unbroadcast(g, &s)?);
            }
            if wanted[1] {
                let mb = b.rsub(1.0, ma)?;
                let g = b.mul(gy, mb)?;
                let s = shape(b, x[1]);
                out[1] = Some(b.unbroadcast(g, &s)?);
            }
        }
        Op::Pow => {
            if wanted[0] {
                // d(a^e)/da = e * a^(e-1) = e * y / a (written with pow to stay finite at 0
                // for e >= 1).
                let em1 = b.offset(x[1], -1.0)?;
                let p = b.op(Op::Pow, &[x[0], em1])?;
                let t = b.mul(p, x[1])?;
                let g = b.mul(gy, t)?;
                let s = shape(b, x[0]);
                out[0] = Some(b.unbroadcast(g, &s)?);
            }
            if wanted[1] {
                let l = b.op(Op::Log, &[x[0]])?;
                let t = b.mul(y, l)?;
                let g = b.mul(gy, t)?;
                let s = shape(b, x[1]);
                out[1] = Some(b.unbroadcast(g, &s)?);
            }
        }
        Op::Neg => out[0] = Some(b.op(Op::Neg, &[gy])?),
        Op::Abs => {
            // sign(x) = 2 * [x > 0] - 1 (the subgradient at 0 is -1).
            let m = b.positive_mask(x[0])?;
            let m2 = b.scale(m, 2.0)?;
            let sign = b.offset(m2, -1.0)?;
            out[0] = Some(b.mul(gy, sign)?);
        }
        Op::Exp => out[0] = Some(b.mul(gy, y)?),
        Op::Log => out[0] = Some(b.div(gy, x[0])?),
        Op::Sqrt => {
            let t = b.div(gy, y)?;
            out[0] = Some(b.scale(t, 0.5)?);
        }
        Op::Rsqrt => {
            // d(x^-1/2)/dx = -1/2 x^-3/2 = -1/2 y^3.
            let y2 = b.mul(y, y)?;
            let y3 = b.mul(y2, y)?;
            let t = b.mul(gy, y3)?;
            out[0] = Some(b.scale(t, -0.5)?);
        }
        Op::Reciprocal => {
            let y2 = b.mul(y, y)?;
            let t = b.mul(gy, y2)?;
            out[0] = Some(b.op(Op::Neg, &[t])?);
        }
        Op::Relu => {
            let m = b.nonzero_mask(y)?;
            out[0] = Some(b.mul(gy, m)?);
        }
        Op::Sigmoid => {
            let one_minus = b.rsub(1.0, y)?;
            let d = b.mul(y, one_minus)?;
            out[0] = Some(b.mul(gy, d)?);
        }
        Op::Tanh => {
            let y2 = b.mul(y, y)?;
            let d = b.rsub(1.0, y2)?;
            out[0] = Some(b.mul(gy, d)?);
        }
        Op::Erf => {
            // 2/sqrt(pi) * exp(-x^2).
            let x2 = b.mul(x[0], x[0])?;
            let nx2 = b.op(Op::Neg, &[x2])?;
            let e = b.op(Op::Exp, &[nx2])?;
            let d = b.scale(e, std::f32::consts::FRAC_2_SQRT_PI)?;
            out[0] = Some(b.mul(gy, d)?);
        }
        Op::Silu => {
            // s * (1 + x * (1 - s)).
            let s = b.op(Op::Sigmoid, &[x[0]])?;
            let one_minus = b.rsub(1.0, s)?;
            let t = b.mul(x[0], one_minus)?;
            let t = b.offset(t, 1.0)?;
            let d = b.mul(s, t)?;
            out[0] = Some(b.mul(gy, d)?);
        }
        Op::Gelu { approximate } => {
            let d = gelu_derivative(b, x[0], *approximate)?;
            out[0] = Some(b.mul(gy, d)?);
        }
        Op::MatMul { transpose_b } => {
            out = matmul_vjp(b, x[0], x[1], *transpose_b, gy, wanted)?;
        }
        Op::Softmax { axis } => {
            let r = shape(b, y).len();
            let a = norm_axis(*axis, r) as i64;
            let gyy = b.mul(gy, y)?;
            let s = b.reduce_sum(gyy, vec![a], true)?;
            let d = b.sub(gy, s)?;
            out[0] = Some(b.mul(y, d)?);
        }
        Op::LayerNorm { axis, epsilon } => {
            out = norm_vjp(b, node, gy, wanted, *axis, *epsilon, true)?;
        }
        Op::RmsNorm { axis, epsilon } => {
            out = norm_vjp(b, node, gy, wanted, *axis, *epsilon, false)?;
        }
        Op::ReduceSum { axes, keepdims } | Op::ReduceMean { axes, keepdims } => {
            let xs = shape(b, x[0]);
            let r = xs.len();
            let mut keep = xs.clone();
            let mut count = 1usize;
            for &a in axes {
                let a = norm_axis(a, r);
                count *= xs[a];
                keep[a] = 1;
            }
            let g = if *keepdims { gy } else { b.reshape(gy, &keep)? };
            let g = if matches!(node.op, Op::ReduceMean { .. }) {
                b.scale(g, 1.0 / count as f32)?
            } else {
                g
            };
            out[0] = Some(b.broadcast_to(g, &xs)?);
        }
        Op::Transpose { perm } => {
            let mut inv = vec![0; perm.len()];
            for (i, &p) in perm.iter().enumerate() {
                inv[p] = i;
            }
            out[0] = Some(b.op(Op::Transpose { perm: inv }, &[gy])?);
        }
        Op::Reshape { .. } => {
            let s = shape(b, x[0]);
            out[0] = Some(b.reshape(gy, &s)?);
        }
        Op::Concat { axis } => {
            let r = shape(b, y).len();
            let a = norm_axis(*axis, r);
            let mut start = 0i64;
            for (i, &xi) in x.iter().enumerate() {
                let len = shape(b, xi)[a] as i64;
                if wanted[i] {
                    out[i] = Some(b.op(
                        Op::Slice {
                            axes: vec![a as i64],
                            starts: vec![start],
                            ends: vec![start + len],
                            steps: vec![1],
                        },
                        &[gy],
                    )?);
                }
                start += len;
            }
        }
        Op::Where => {
            let z = b.scalar(0.0)?;
            if wanted[1] {
                let g = b.op(Op::Where, &[x[0], gy, z])?;
                let s = shape(b, x[1]);
                out[1] = Some(b.unbroadcast(g, &s)?);
            }
            if wanted[2] {
                let g = b.op(Op::Where, &[x[0], z, gy])?;
                let s = shape(b, x[2]);
                out[2] = Some(b.unbroadcast(g, &s)?);
            }
        }
        Op::Cast { .. } => {
            let dt = b.graph.value(x[0]).dtype;
            out[0] = Some(if dt == b.graph.value(gy).dtype {
                gy
            } else {
                b.op(Op::Cast { dtype: dt }, &[gy])?
            });
        }
        Op::ReduceMax { axes, keepdims } => {
            // The gradient goes to every element equal to the maximum (ties share it in
            // full: a valid subgradient, as for max/min).
            let xs = shape(b, x[0]);
            let mut keep = xs.clone();
            for &a in axes {
                keep[norm_axis(a, xs.len())] = 1;
            }
            let (yk, gk) = if *keepdims {
                (y, gy)
            } else {
                (b.reshape(y, &keep)?, b.reshape(gy, &keep)?)
            };
            let m = b.eq_mask(x[0], yk)?;
            out[0] = Some(b.mul(m, gk)?);
        }
        Op::Slice {
            axes,
            starts,
            ends,
            steps,
        } => {
            // Scatter back into zeros: per sliced axis, stride-dilate and pad.
            let xs = shape(b, x[0]);
            let plan = slice_plan(&xs, axes, starts, ends, steps)
                .map_err(|e| GraphError::Invariant(format!("slice: {e}")))?;
            let mut g = gy;
            for p in plan {
                g = b.unslice_axis(g, p.axis, p.start, p.step, xs[p.axis])?;
            }
            out[0] = Some(g);
        }
        Op::Gather { axis } => {
            let ts = shape(b, x[0]);
            let rows = ts[norm_axis(*axis, ts.len())];
            if rows >= 1 << 24 {
                return Err(VjpError::NoRule {
                    input: 0,
                    why: format!(
                        ": its one-hot gradient needs exact f32 row ids, and the table has \
                         {rows} rows (at most 2^24 - 1)"
                    ),
                });
            }
            out[0] = Some(gather_vjp(b, x[0], x[1], gy, *axis)?);
        }
        Op::Conv2d {
            strides,
            pads,
            dilations,
            groups,
        } => {
            let geo = spatial::ConvGeometry {
                strides: *strides,
                pads: *pads,
                dilations: *dilations,
                groups: *groups,
            };
            out = spatial::conv2d_vjp(b, node, gy, wanted, &geo)?;
        }
        Op::MaxPool2d {
            kernel,
            strides,
            pads,
        } => {
            let win = spatial::PoolWindow {
                kernel: *kernel,
                strides: *strides,
                pads: *pads,
            };
            out[0] = Some(spatial::pool_vjp(b, x[0], y, gy, &win, None)?);
        }
        Op::AvgPool2d {
            kernel,
            strides,
            pads,
            count_include_pad,
        } => {
            let win = spatial::PoolWindow {
                kernel: *kernel,
                strides: *strides,
                pads: *pads,
            };
            out[0] = Some(spatial::pool_vjp(
                b,
                x[0],
                y,
                gy,
                &win,
                Some(*count_include_pad),
            )?);
        }
        Op::GlobalAvgPool => {
            let xs = shape(b, x[0]);
            let count: usize = xs[2..].iter().product();
            let g = b.scale(gy, 1.0 / count as f32)?;
            out[0] = Some(b.broadcast_to(g, &xs)?);
        }
        Op::BatchNorm { epsilon } => {
            out = spatial::batch_norm_vjp(b, node, gy, wanted, *epsilon)?;
        }
    }
    Ok(out)
}

/// `d gelu(x) / dx` as a graph value.
fn gelu_derivative(
    b: &mut Builder<'_>,
    x: ValueId,
    approximate: GeluApprox,
) -> Result<ValueId, GraphError> {
    match approximate {
        GeluApprox::None => {
            // Phi(x) + x * phi(x) = 0.5 * (1 + erf(x / sqrt 2)) + x * exp(-x^2 / 2) / sqrt(2 pi).
            let xs = b.scale(x, std::f32::consts::FRAC_1_SQRT_2)?;
            let e = b.op(Op::Erf, &[xs])?;
            let e1 = b.offset(e, 1.0)?;
            let cdf = b.scale(e1, 0.5)?;
            let x2 = b.mul(x, x)?;
            let h = b.scale(x2, -0.5)?;
            let ex = b.op(Op::Exp, &[h])?;
            let pdf = b.scale(ex, 0.398_942_3)?;
            let xp = b.mul(x, pdf)?;
            b.add(cdf, xp)
        }
        GeluApprox::Tanh => {
            // y = 0.5 x (1 + t), t = tanh(c (x + k x^3)):
            // dy/dx = 0.5 (1 + t) + 0.5 x (1 - t^2) c (1 + 3 k x^2).
            let c = 0.797_884_6f32;
            let k = 0.044_715f32;
            let x2 = b.mul(x, x)?;
            let x3 = b.mul(x2, x)?;
            let kx3 = b.scale(x3, k)?;
            let inner = b.add(x, kx3)?;
            let u = b.scale(inner, c)?;
            let t = b.op(Op::Tanh, &[u])?;
            let t1 = b.offset(t, 1.0)?;
            let left = b.scale(t1, 0.5)?;
            let t2 = b.mul(t, t)?;
            let sech2 = b.rsub(1.0, t2)?;
            let k3x2 = b.scale(x2, 3.0 * k)?;
            let du = b.offset(k3x2, 1.0)?;
            let du = b.scale(du, 0.5 * c)?;
            let r = b.mul(sech2, du)?;
            let r = b.mul(x, r)?;
            b.add(left, r)
        }
    }
}

/// Gradients of `a @ b` (or `a @ b^T`).
fn matmul_vjp(
    b: &mut Builder<'_>,
    a: ValueId,
    w: ValueId,
    transpose_b: bool,
    gy: ValueId,
    wanted: &[bool],
) -> Result<Vec<Option<ValueId>>, GraphError> {
    let sa = b.graph.value(a).shape.clone();
    let sw = b.graph.value(w).shape.clone();
    let sg = b.graph.value(gy).shape.clone();
    let mut out = vec![None, None];
    if wanted[0] {
        // y = a @ w  -> ga = gy @ w^T;   y = a @ w^T -> ga = gy @ w.
        let g = b.op(
            Op::MatMul {
                transpose_b: !transpose_b,
            },
            &[gy, w],
        )?;
        out[0] = Some(b.unbroadcast(g, &sa)?);
    }
    if wanted[1] {
        // A rank-2 weight against a batched activation: fold the batch into the rows so the
        // weight gradient is one matmul instead of a batch of them summed afterwards.
        let (a2, g2) = if sw.len() == 2 && sa.len() > 2 {
            let k = sa[sa.len() - 1];
            let n = sg[sg.len() - 1];
            let rows = sa[..sa.len() - 1].iter().product::<usize>();
            (b.reshape(a, &[rows, k])?, b.reshape(gy, &[rows, n])?)
        } else {
            (a, gy)
        };
        let g = if transpose_b {
            // y = a @ w^T, w [N, K]: gw = gy^T @ a.
            let gt = b.transpose_last2(g2)?;
            b.op(Op::MatMul { transpose_b: false }, &[gt, a2])?
        } else {
            // y = a @ w, w [K, N]: gw = a^T @ gy.
            let at = b.transpose_last2(a2)?;
            b.op(Op::MatMul { transpose_b: false }, &[at, g2])?
        };
        out[1] = Some(b.unbroadcast(g, &sw)?);
    }
    Ok(out)
}

/// Gradients of layer norm (`centered`) or RMS norm over axes `axis..rank`, with optional
/// gamma (input 1) and, for layer norm, beta (input 2).
fn norm_vjp(
    b: &mut Builder<'_>,
    node: &Node,
    gy: ValueId,
    wanted: &[bool],
    axis: i64,
    epsilon: f32,
    centered: bool,
) -> Result<Vec<Option<ValueId>>, GraphError> {
    let x = node.inputs[0];
    let xs = b.graph.value(x).shape.clone();
    let r = xs.len();
    let a = norm_axis(axis, r);
    let axes: Vec<i64> = (a as i64..r as i64).collect();
    let mut out = vec![None; node.inputs.len()];
    // Recompute the normalized input: xhat = (x - mean) * rstd (RMS: x * rstd).
    let xc = if centered {
        let m = b.op(
            Op::ReduceMean {
                axes: axes.clone(),
                keepdims: true,
            },
            &[x],
        )?;
        b.sub(x, m)?
    } else {
        x
    };
    let sq = b.mul(xc, xc)?;
    let var = b.op(
        Op::ReduceMean {
            axes: axes.clone(),
            keepdims: true,
        },
        &[sq],
    )?;
    let ve = b.offset(var, epsilon)?;
    let rstd = b.op(Op::Rsqrt, &[ve])?;
    let xhat = b.mul(xc, rstd)?;
    let gamma = node.inputs.get(1).copied();
    let gx_hat = match gamma {
        Some(g) => b.mul(gy, g)?,
        None => gy,
    };
    if wanted[0] {
        // gx = rstd * (g - mean(g) - xhat * mean(g * xhat)) (RMS: without mean(g)).
        let gxh = b.mul(gx_hat, xhat)?;
        let m2 = b.op(
            Op::ReduceMean {
                axes: axes.clone(),
                keepdims: true,
            },
            &[gxh],
        )?;
        let t = b.mul(xhat, m2)?;
        let mut d = b.sub(gx_hat, t)?;
        if centered {
            let m1 = b.op(
                Op::ReduceMean {
                    axes: axes.clone(),
                    keepdims: true,
                },
                &[gx_hat],
            )?;
            d = b.sub(d, m1)?;
        }
        out[0] = Some(b.mul(d, rstd)?);
    }
    if let Some(g) = gamma
        && wanted.get(1).copied().unwrap_or(false)
    {
        let t = b.mul(gy, xhat)?;
        let s = b.graph.value(g).shape.clone();
        out[1] = Some(b.unbroadcast(t, &s)?);
    }
    if let Some(&beta) = node.inputs.get(2)
        && wanted.get(2).copied().unwrap_or(false)
    {
        let s = b.graph.value(beta).shape.clone();
        out[2] = Some(b.unbroadcast(gy, &s)?);
    }
    Ok(out)
}

/// Gradient of `gather(table, indices, axis)` with respect to the table: a scatter-add of
/// the output gradient's rows into a zero table, written as a one-hot matmul
/// `onehot[V, n] @ gy[n, rest]` so that it runs on TensorE (rows gathered twice add up in
/// the PSUM accumulation). The one-hot is `1 - (arange(V)[:, None] != idx[None, :])` on
/// the indices cast to f32, exact for tables of fewer than 2^24 rows; negative indices are
/// first moved into `0..V` (`idx + V * (idx < 0)`).
fn gather_vjp(
    b: &mut Builder<'_>,
    table: ValueId,
    indices: ValueId,
    gy: ValueId,
    axis: i64,
) -> Result<ValueId, GraphError> {
    let ts = b.graph.value(table).shape.clone();
    let is = b.graph.value(indices).shape.clone();
    let a = norm_axis(axis, ts.len());
    let v = ts[a];
    let n: usize = is.iter().product();
    let pre = &ts[..a];
    let post = &ts[a + 1..];
    // gy is pre + is + post: move the index axes to the front, flatten to [n, rest].
    let (np, ni, nq) = (pre.len(), is.len(), post.len());
    let g = if np > 0 {
        let mut perm: Vec<usize> = (np..np + ni).collect();
        perm.extend(0..np);
        perm.extend(np + ni..np + ni + nq);
        b.op(Op::Transpose { perm }, &[gy])?
    } else {
        gy
    };
    let rest: usize = pre.iter().product::<usize>() * post.iter().product::<usize>();
    let g2 = b.reshape(g, &[n, rest])?;
    // Row ids as f32, in 0..V.
    let idx = b.op(
        Op::Cast {
            dtype: crate::ir::DType::F32,
        },
        &[indices],
    )?;
    let idx = b.reshape(idx, &[1, n])?;
    let neg = b.op(Op::Neg, &[idx])?;
    let is_neg = b.positive_mask(neg)?;
    let wrap = b.scale(is_neg, v as f32)?;
    let idx = b.add(idx, wrap)?;
    let rows = crate::ir::Tensor::F32(ndarray::ArrayD::from_shape_fn(
        ndarray::IxDyn(&[v, 1]),
        |i| i[0] as f32,
    ));
    let rows = b.constant("row_ids", rows)?;
    // `idx - rows`, not `rows - idx`: the chain starts from the id row (the same
    // contiguous row for every partition), and the row ids are a per-partition column
    // operand; starting from the column made one 4-byte descriptor per element.
    let onehot = b.eq_mask(idx, rows)?;
    let gt = b.op(Op::MatMul { transpose_b: false }, &[onehot, g2])?;
    // [V, pre.., post..] -> the table's axis order.
    let mut s: Vec<usize> = vec![v];
    s.extend_from_slice(pre);
    s.extend_from_slice(post);
    let gt = b.reshape(gt, &s)?;
    if np == 0 {
        return Ok(gt);
    }
    let mut perm: Vec<usize> = (1..=np).collect();
    perm.push(0);
    perm.extend(np + 1..np + 1 + nq);
    b.op(Op::Transpose { perm }, &[gt])
}
