//! Gradients of the image ops: conv2d, max/avg pooling and (inference) batch norm, built
//! from ordinary graph nodes so that they lower through the existing kernels.
//!
//! - **conv2d, input**: a transposed convolution written as an ordinary `conv2d` (stride 1,
//!   the forward dilation) of the output gradient, stride-dilated with zeros, against the
//!   weights with their spatial taps flipped and their in/out channels swapped per group;
//!   padding `d (k - 1) - pad` (a negative amount is sliced off afterwards). It lowers
//!   through the conv path like any forward conv (weights `[C, O/G, KH, KW]`).
//! - **conv2d, weight**: one matmul per kernel tap, `gy[G, O/G, N*OH*OW] @ x_tap[G, C/G,
//!   N*OH*OW]^T`, where `x_tap` is the strided window of the zero-padded input the tap
//!   reads. Not the "conv of the input with the output gradient": that conv's kernel is the
//!   whole output gradient (`OH x OW` taps), which the weight-stationary conv lowering would
//!   have to keep resident in SBUF; the per-tap matmuls contract over `N*OH*OW` on TensorE
//!   with the tiled GEMM path instead.
//! - **pooling**: per window offset, the output gradient (times the "this element is the
//!   maximum" mask, or divided by the window's count) is scattered back into the padded
//!   input by stride dilation and zero padding, summed over offsets, and the padding
//!   sliced away. Ties of a max share the gradient in full (as for `max`/`reduce_max`;
//!   PyTorch gives it to one of them).
//! - **batch_norm** (the inference op: fixed mean and variance inputs): per channel
//!   `gx = gy * scale / sqrt(var + eps)`, and the sums over batch and space for scale,
//!   bias, mean and var.

use crate::ir::{GraphError, Node, Op, Tensor, ValueId};

use super::Builder;

/// A convolution's window attributes.
pub struct ConvGeometry {
    /// `[h, w]` strides.
    pub strides: [usize; 2],
    /// `[top, left, bottom, right]`.
    pub pads: [usize; 4],
    /// `[h, w]` dilations.
    pub dilations: [usize; 2],
    /// Channel groups.
    pub groups: usize,
}

/// A pooling window.
pub struct PoolWindow {
    /// `[h, w]` window.
    pub kernel: [usize; 2],
    /// `[h, w]` strides.
    pub strides: [usize; 2],
    /// `[top, left, bottom, right]`.
    pub pads: [usize; 4],
}

fn shape4(b: &Builder<'_>, v: ValueId) -> Result<[usize; 4], GraphError> {
    let s = &b.graph.value(v).shape;
    <[usize; 4]>::try_from(s.as_slice()).map_err(|_| {
        GraphError::Invariant(format!(
            "'{}' should be rank 4 (NCHW), found {s:?}",
            b.graph.value(v).name
        ))
    })
}

/// Gradients of `conv2d(x, w, bias?)`.
pub fn conv2d_vjp(
    b: &mut Builder<'_>,
    node: &Node,
    gy: ValueId,
    wanted: &[bool],
    geo: &ConvGeometry,
) -> Result<Vec<Option<ValueId>>, GraphError> {
    let (x, w) = (node.inputs[0], node.inputs[1]);
    let mut out = vec![None; node.inputs.len()];
    if wanted[0] {
        out[0] = Some(conv_input_grad(b, x, w, gy, geo)?);
    }
    if wanted[1] {
        out[1] = Some(conv_weight_grad(b, x, w, gy, geo)?);
    }
    if let Some(&bias) = node.inputs.get(2)
        && wanted.get(2).copied().unwrap_or(false)
    {
        let s = b.reduce_sum(gy, vec![0, 2, 3], false)?;
        let bs = b.graph.value(bias).shape.clone();
        out[2] = Some(b.reshape(s, &bs)?);
    }
    Ok(out)
}

/// Reverses `a` along `axis` (slices of one, concatenated in reverse order).
fn flip_axis(b: &mut Builder<'_>, a: ValueId, axis: usize) -> Result<ValueId, GraphError> {
    let k = b.graph.value(a).shape[axis];
    if k <= 1 {
        return Ok(a);
    }
    let parts = (0..k)
        .rev()
        .map(|i| b.slice_axis(a, axis, i, 1, 1))
        .collect::<Result<Vec<_>, _>>()?;
    b.op(Op::Concat { axis: axis as i64 }, &parts)
}

fn conv_input_grad(
    b: &mut Builder<'_>,
    x: ValueId,
    w: ValueId,
    gy: ValueId,
    geo: &ConvGeometry,
) -> Result<ValueId, GraphError> {
    let [_, c, h, wd] = shape4(b, x)?;
    let [o, cg, kh, kw] = shape4(b, w)?;
    let g = geo.groups;
    let og = o / g;
    let mut gyd = gy;
    for (ax, s) in [(2, geo.strides[0]), (3, geo.strides[1])] {
        gyd = b.dilate_axis(gyd, ax, s)?;
    }
    let [_, _, lh, lw] = shape4(b, gyd)?;
    // [O, C/G, KH, KW] -> [G, O/G, C/G, KH, KW] -> [G, C/G, O/G, KH, KW] -> [C, O/G, KH, KW].
    let w5 = b.reshape(w, &[g, og, cg, kh, kw])?;
    let wt = b.op(
        Op::Transpose {
            perm: vec![0, 2, 1, 3, 4],
        },
        &[w5],
    )?;
    let mut wf = b.reshape(wt, &[c, og, kh, kw])?;
    for ax in [2, 3] {
        wf = flip_axis(b, wf, ax)?;
    }
    let (k, dim, len) = ([kh, kw], [h, wd], [lh, lw]);
    let mut before = [0i64; 2];
    let mut after = [0i64; 2];
    for i in 0..2 {
        // Output row r reads gyd rows r - before + t * d for the flipped taps t.
        before[i] = (geo.dilations[i] * (k[i] - 1)) as i64 - geo.pads[i] as i64;
        after[i] = dim[i] as i64 - len[i] as i64 + geo.pads[i] as i64;
    }
    let pos = |v: i64| v.max(0) as usize;
    let gx = b.op(
        Op::Conv2d {
            strides: [1, 1],
            pads: [pos(before[0]), pos(before[1]), pos(after[0]), pos(after[1])],
            dilations: geo.dilations,
            groups: g,
        },
        &[gyd, wf],
    )?;
    let mut gx = gx;
    for i in 0..2 {
        gx = b.slice_axis(gx, 2 + i, pos(-before[i]), dim[i], 1)?;
    }
    Ok(gx)
}

fn conv_weight_grad(
    b: &mut Builder<'_>,
    x: ValueId,
    w: ValueId,
    gy: ValueId,
    geo: &ConvGeometry,
) -> Result<ValueId, GraphError> {
    let [n, _, _, _] = shape4(b, x)?;
    let [o, cg, kh, kw] = shape4(b, w)?;
    let [_, _, oh, ow] = shape4(b, gy)?;
    let g = geo.groups;
    let og = o / g;
    let [pt, pl, pb, pr] = geo.pads;
    let xp = b.pad_axis(x, 2, pt, pb)?;
    let xp = b.pad_axis(xp, 3, pl, pr)?;
    let [_, _, hp, wp] = shape4(b, xp)?;
    // Channels first, batch folded next to the pixels: [G, C/G, N, HP, WP].
    let x5 = b.reshape(xp, &[n, g, cg, hp, wp])?;
    let xt = b.op(
        Op::Transpose {
            perm: vec![1, 2, 0, 3, 4],
        },
        &[x5],
    )?;
    let gy4 = b.reshape(gy, &[n, g, og, oh * ow])?;
    let gyt = b.op(
        Op::Transpose {
            perm: vec![1, 2, 0, 3],
        },
        &[gy4],
    )?;
    let k = n * oh * ow;
    let gy2 = if g == 1 {
        b.reshape(gyt, &[o, k])?
    } else {
        b.reshape(gyt, &[g, og, k])?
    };
    let mut taps = Vec::with_capacity(kh * kw);
    for i in 0..kh {
        for j in 0..kw {
            let xs = b.slice_axis(xt, 3, i * geo.dilations[0], oh, geo.strides[0])?;
            let xs = b.slice_axis(xs, 4, j * geo.dilations[1], ow, geo.strides[1])?;
            let x2 = if g == 1 {
                b.reshape(xs, &[cg, k])?
            } else {
                b.reshape(xs, &[g, cg, k])?
            };
            let t = b.op(Op::MatMul { transpose_b: true }, &[gy2, x2])?;
            taps.push(b.reshape(t, &[o, cg, 1])?);
        }
    }
    let cat = if taps.len() == 1 {
        taps[0]
    } else {
        b.op(Op::Concat { axis: 2 }, &taps)?
    };
    b.reshape(cat, &[o, cg, kh, kw])
}

/// Gradient of max pooling (`avg: None`) or average pooling (`avg: Some(count_include_pad)`)
/// with respect to its input `x`, given the output `y` and its gradient `gy`.
pub fn pool_vjp(
    b: &mut Builder<'_>,
    x: ValueId,
    y: ValueId,
    gy: ValueId,
    win: &PoolWindow,
    avg: Option<bool>,
) -> Result<ValueId, GraphError> {
    let [_, _, h, w] = shape4(b, x)?;
    let [_, _, oh, ow] = shape4(b, y)?;
    let [kh, kw] = win.kernel;
    let [sh, sw] = win.strides;
    let [pt, pl, pb, pr] = win.pads;
    let (hp, wp) = (h + pt + pb, w + pl + pr);
    // Average: every offset receives gy divided by its window's divisor.
    let scaled = match avg {
        None => None,
        Some(true) => Some(b.scale(gy, 1.0 / (kh * kw) as f32)?),
        Some(false) => {
            // Real (non-padding) elements per window: rows times columns.
            let real = |o: usize, s: usize, k: usize, p: usize, dim: usize| {
                (0..k)
                    .filter(|&t| {
                        let r = (o * s + t) as i64 - p as i64;
                        r >= 0 && r < dim as i64
                    })
                    .count()
            };
            let inv = ndarray::ArrayD::from_shape_fn(ndarray::IxDyn(&[oh, ow]), |ix| {
                let cnt = real(ix[0], sh, kh, pt, h) * real(ix[1], sw, kw, pl, w);
                1.0 / cnt.max(1) as f32
            });
            let inv = b.constant("pool_divisor", Tensor::F32(inv))?;
            Some(b.mul(gy, inv)?)
        }
    };
    let xp = if avg.is_none() {
        let xp = b.pad_axis(x, 2, pt, pb)?;
        Some(b.pad_axis(xp, 3, pl, pr)?)
    } else {
        None
    };
    let mut acc: Option<ValueId> = None;
    for i in 0..kh {
        for j in 0..kw {
            let contrib = match (scaled, xp) {
                (Some(s), _) => s,
                (None, xp) => {
                    let xp = xp.unwrap_or(x);
                    let xs = b.slice_axis(xp, 2, i, oh, sh)?;
                    let xs = b.slice_axis(xs, 3, j, ow, sw)?;
                    let m = b.eq_mask(xs, y)?;
                    b.mul(gy, m)?
                }
            };
            let s = b.unslice_axis(contrib, 2, i, sh, hp)?;
            let s = b.unslice_axis(s, 3, j, sw, wp)?;
            acc = Some(match acc {
                Some(a) => b.add(a, s)?,
                None => s,
            });
        }
    }
    let acc = acc.ok_or_else(|| GraphError::Invariant("pooling window is empty".into()))?;
    let gx = b.slice_axis(acc, 2, pt, h, 1)?;
    b.slice_axis(gx, 3, pl, w, 1)
}

/// Gradients of inference batch norm `(x - mean) * scale / sqrt(var + eps) + bias` (channel
/// axis 1) with respect to `[x, scale, bias, mean, var]`.
pub fn batch_norm_vjp(
    b: &mut Builder<'_>,
    node: &Node,
    gy: ValueId,
    wanted: &[bool],
    epsilon: f32,
) -> Result<Vec<Option<ValueId>>, GraphError> {
    let ins = &node.inputs;
    let (x, scale, mean, var) = (ins[0], ins[1], ins[3], ins[4]);
    let xs = b.graph.value(x).shape.clone();
    let r = xs.len();
    let c = xs[1];
    let mut cshape = vec![c];
    cshape.extend(std::iter::repeat_n(1, r.saturating_sub(2)));
    let axes: Vec<i64> = std::iter::once(0).chain(2..r as i64).collect();
    let to_c = |b: &mut Builder<'_>, v: ValueId| b.reshape(v, &[c]);
    let scale_c = to_c(b, scale)?;
    let var_c = to_c(b, var)?;
    let ve = b.offset(var_c, epsilon)?;
    let rstd = b.op(Op::Rsqrt, &[ve])?;
    let k = b.mul(scale_c, rstd)?;
    let mut out = vec![None; ins.len()];
    let param_shape = |b: &Builder<'_>, i: usize| b.graph.value(ins[i]).shape.clone();
    if wanted[0] {
        let kv = b.reshape(k, &cshape)?;
        out[0] = Some(b.mul(gy, kv)?);
    }
    let sum_gy = if wanted[2] || wanted[3] {
        Some(b.reduce_sum(gy, axes.clone(), false)?)
    } else {
        None
    };
    let sum_gyxc = if wanted[1] || wanted[4] {
        let mean_c = to_c(b, mean)?;
        let mv = b.reshape(mean_c, &cshape)?;
        let xc = b.sub(x, mv)?;
        let t = b.mul(gy, xc)?;
        Some(b.reduce_sum(t, axes.clone(), false)?)
    } else {
        None
    };
    if let (true, Some(s)) = (wanted[1], sum_gyxc) {
        let g = b.mul(s, rstd)?;
        let ps = param_shape(b, 1);
        out[1] = Some(b.reshape(g, &ps)?);
    }
    if let (true, Some(s)) = (wanted[2], sum_gy) {
        let ps = param_shape(b, 2);
        out[2] = Some(b.reshape(s, &ps)?);
    }
    if let (true, Some(s)) = (wanted[3], sum_gy) {
        let t = b.mul(s, k)?;
        let g = b.op(Op::Neg, &[t])?;
        let ps = param_shape(b, 3);
        out[3] = Some(b.reshape(g, &ps)?);
    }
    if let (true, Some(s)) = (wanted[4], sum_gyxc) {
        // d/dvar of (x - mean) * scale * (var + eps)^-1/2 = -1/2 (x - mean) scale rstd^3.
        let r2 = b.mul(rstd, rstd)?;
        let r3 = b.mul(r2, k)?;
        let t = b.mul(s, r3)?;
        let g = b.scale(t, -0.5)?;
        let ps = param_shape(b, 4);
        out[4] = Some(b.reshape(g, &ps)?);
    }
    Ok(out)
}
