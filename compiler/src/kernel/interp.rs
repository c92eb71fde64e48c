//! A plain interpreter of a [`KernelGraph`]: the middle end's oracle.
//!
//! Every HBM tensor is a flat `f64` buffer holding values already rounded to the
//! tensor's storage type; kernels read their input views, compute in f64 (rounding where
//! the chip would: matmul operands to `mm_dtype`, each elementwise step to `act_dtype`,
//! the stored result to the output tensor's type), and write their output view. int8
//! matmuls quantize the activation operand with `act_scale` and use the weight's stored
//! int8 values times its per-channel `quant_scale`. Tests compare it with the reference
//! executor (fused graph equals graph) and with itself (fused equals unfused).

use std::collections::BTreeMap;

use half::{bf16, f16};
use ndarray::{Array2, ArrayD, Axis, Ix2, IxDyn, Zip};

use super::{
    BinaryFn, EwOp, KTensor, Kernel, KernelGraph, KernelOp, PoolFn, ReduceFn, UnaryFn, View,
};
use crate::CompileError;
use crate::ir::shape_infer::broadcast_shapes;
use crate::ir::{DType, GeluApprox, Tensor};
use neuron_isa::{Dtype, TensorKind, numerics};

/// Runs `kg` on `inputs` (one tensor per graph input, by name) and returns the graph
/// outputs by tensor name, in their storage types (`u8` tensors come back as bool,
/// fp8 ones as f32).
pub fn interpret(
    kg: &KernelGraph,
    inputs: &BTreeMap<String, Tensor>,
) -> Result<BTreeMap<String, Tensor>, CompileError> {
    let store = interpret_all(kg, inputs)?;
    let mut outs = BTreeMap::new();
    for &o in &kg.outputs {
        let t = tensor_of(kg, o.0 as usize)?;
        let flat = &store[o.0 as usize];
        let a = ArrayD::from_shape_vec(IxDyn(&t.shape), flat.clone())
            .map_err(|e| CompileError::Internal(format!("output '{}': {e}", t.name)))?;
        outs.insert(t.name.clone(), to_tensor(t.dtype, a));
    }
    Ok(outs)
}

/// Like [`interpret`], but returns the storage of every tensor (flat, row-major,
/// indexed by [`KTensorId`](super::KTensorId)), e.g. to calibrate int8 scales.
pub fn interpret_all(
    kg: &KernelGraph,
    inputs: &BTreeMap<String, Tensor>,
) -> Result<Vec<Vec<f64>>, CompileError> {
    let _span = tracing::debug_span!("interpret", model = %kg.name).entered();
    kg.verify()
        .map_err(|e| CompileError::Verify(format!("kernel graph: {e}")))?;
    let mut store: Vec<Vec<f64>> = Vec::with_capacity(kg.tensors.len());
    for t in &kg.tensors {
        store.push(initial_storage(kg, t, inputs)?);
    }
    for (i, k) in kg.kernels.iter().enumerate() {
        let _k = tracing::trace_span!("kernel", index = i, name = %k.name).entered();
        let ins = k
            .inputs
            .iter()
            .map(|v| read_view(&store[v.tensor.0 as usize], v))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|m| kernel_err(k, m))?;
        let result = run_kernel(kg, k, &ins).map_err(|m| kernel_err(k, m))?;
        let t = tensor_of(kg, k.output.tensor.0 as usize)?;
        write_view(
            &mut store[k.output.tensor.0 as usize],
            &k.output,
            &result,
            t.dtype,
        )
        .map_err(|m| kernel_err(k, m))?;
    }
    Ok(store)
}

fn kernel_err(k: &Kernel, m: String) -> CompileError {
    CompileError::Eval(format!("kernel '{}': {m}", k.name))
}

fn tensor_of(kg: &KernelGraph, i: usize) -> Result<&KTensor, CompileError> {
    kg.tensors
        .get(i)
        .ok_or_else(|| CompileError::Internal(format!("tensor T{i} does not exist")))
}

fn initial_storage(
    kg: &KernelGraph,
    t: &KTensor,
    inputs: &BTreeMap<String, Tensor>,
) -> Result<Vec<f64>, CompileError> {
    let n = t.numel();
    match t.kind {
        TensorKind::Input => {
            if !kg
                .inputs
                .iter()
                .any(|&i| kg.tensors[i.0 as usize].name == t.name)
            {
                return Ok(vec![f64::NAN; n]);
            }
            let x = inputs.get(&t.name).ok_or_else(|| {
                CompileError::Eval(format!(
                    "missing input '{}' (expected shape {:?})",
                    t.name, t.shape
                ))
            })?;
            if x.shape() != t.shape.as_slice() {
                return Err(CompileError::Eval(format!(
                    "input '{}': expected shape {:?}, found {:?}",
                    t.name,
                    t.shape,
                    x.shape()
                )));
            }
            Ok(x.to_f64().iter().map(|&v| round_to(v, t.dtype)).collect())
        }
        TensorKind::Weight => {
            let data = t
                .data
                .as_ref()
                .ok_or_else(|| CompileError::Eval(format!("weight '{}' has no data", t.name)))?;
            if data.num_elements() != n {
                return Err(CompileError::Eval(format!(
                    "weight '{}': data has {} elements, expected {n}",
                    t.name,
                    data.num_elements()
                )));
            }
            let vals = data.to_f64();
            match &t.quant_scale {
                Some(scales) => {
                    let axis = t.quant_axis;
                    if t.shape.get(axis) != Some(&scales.len()) {
                        return Err(CompileError::Eval(format!(
                            "weight '{}': {} quantization scales for axis {axis} of shape {:?}",
                            t.name,
                            scales.len(),
                            t.shape
                        )));
                    }
                    Ok(vals
                        .iter()
                        .enumerate()
                        .map(|(i, &q)| {
                            let c = t.quant_channel(i).unwrap_or(0);
                            q * f64::from(scales[c])
                        })
                        .collect())
                }
                // Pre-cast weights hold f32 values; the artifact writer rounds them to
                // the storage type, so the interpreter does too.
                None => Ok(vals.iter().map(|&v| round_to(v, t.dtype)).collect()),
            }
        }
        TensorKind::Output | TensorKind::Scratch => Ok(vec![f64::NAN; n]),
    }
}

/// The storage index of every element of `v`, or an error if one falls outside `len`.
fn view_positions(v: &View, len: usize) -> Result<Vec<usize>, String> {
    let n = v.numel();
    let mut out = Vec::with_capacity(n);
    if n == 0 {
        return Ok(out);
    }
    let mut idx = vec![0usize; v.shape.len()];
    for _ in 0..n {
        let pos: isize = v.offset as isize
            + idx
                .iter()
                .zip(&v.strides)
                .map(|(&i, &s)| i as isize * s)
                .sum::<isize>();
        let p = usize::try_from(pos)
            .ok()
            .filter(|&p| p < len)
            .ok_or_else(|| format!("view {v} reaches element {pos} of a tensor of {len}"))?;
        out.push(p);
        for d in (0..idx.len()).rev() {
            idx[d] += 1;
            if idx[d] < v.shape[d] {
                break;
            }
            idx[d] = 0;
        }
    }
    Ok(out)
}

/// The elements of `v` from a tensor's flat storage, as an array of the view's shape.
pub fn read_view(storage: &[f64], v: &View) -> Result<ArrayD<f64>, String> {
    let pos = view_positions(v, storage.len())?;
    let data = pos.iter().map(|&p| storage[p]).collect();
    ArrayD::from_shape_vec(IxDyn(&v.shape), data).map_err(|e| e.to_string())
}

fn write_view(storage: &mut [f64], v: &View, x: &ArrayD<f64>, dtype: Dtype) -> Result<(), String> {
    if x.shape() != v.shape.as_slice() {
        return Err(format!(
            "result has shape {:?} but the output view is {:?}",
            x.shape(),
            v.shape
        ));
    }
    let pos = view_positions(v, storage.len())?;
    for (&p, &val) in pos.iter().zip(x.iter()) {
        storage[p] = round_to(val, dtype);
    }
    Ok(())
}

fn to_tensor(dtype: Dtype, a: ArrayD<f64>) -> Tensor {
    match dtype {
        Dtype::F32 | Dtype::Fp8E4m3 | Dtype::Fp8E5m2 => Tensor::F32(a.mapv(|x| x as f32)),
        Dtype::Bf16 => Tensor::Bf16(a.mapv(|x| bf16::from_bits(numerics::f64_to_bf16(x)))),
        Dtype::F16 => Tensor::F16(a.mapv(|x| f16::from_bits(numerics::f64_to_f16(x)))),
        Dtype::I8 => Tensor::from_f64(DType::I8, a),
        Dtype::U8 => Tensor::Bool(a.mapv(|x| x != 0.0)),
        Dtype::I32 => Tensor::from_f64(DType::I32, a),
        Dtype::I64 => Tensor::from_f64(DType::I64, a),
    }
}

/// `x` rounded to the storage type `d` as the chip stores it: round to nearest even,
/// fp8 e4m3 saturating at +-448, integers saturating (NaN becomes 0).
pub fn round_to(x: f64, d: Dtype) -> f64 {
    match d {
        Dtype::F32 => f64::from(x as f32),
        Dtype::Bf16 => f64::from(numerics::bf16_to_f32(numerics::f32_to_bf16(x as f32))),
        Dtype::F16 => f64::from(numerics::f16_to_f32(numerics::f32_to_f16(x as f32))),
        Dtype::Fp8E4m3 => round_minifloat(x, 3, -6, 448.0),
        Dtype::Fp8E5m2 => round_minifloat(x, 2, -14, 57344.0),
        Dtype::I8 => round_int(x, -128.0, 127.0),
        Dtype::U8 => round_int(x, 0.0, 255.0),
        Dtype::I32 => round_int(x, f64::from(i32::MIN), f64::from(i32::MAX)),
        Dtype::I64 => round_int(x, i64::MIN as f64, i64::MAX as f64),
    }
}

fn round_int(x: f64, lo: f64, hi: f64) -> f64 {
    if x.is_nan() {
        0.0
    } else {
        x.round_ties_even().clamp(lo, hi)
    }
}

/// Rounds to a float with `mant` fraction bits and minimum normal exponent `emin`,
/// saturating at `max` (subnormals below `2^emin` keep the same absolute spacing).
fn round_minifloat(x: f64, mant: i32, emin: i32, max: f64) -> f64 {
    if x.is_nan() || x == 0.0 {
        return x;
    }
    let a = x.abs();
    let e = (a.log2().floor() as i32).max(emin);
    let quantum = 2f64.powi(e - mant);
    let r = ((a / quantum).round_ties_even() * quantum).min(max);
    r.copysign(x)
}

/// The graph `cast` semantics for a kernel `Cast`: floats round, integers truncate
/// toward zero and saturate (NaN gives 0), booleans (`u8`) are `x != 0`.
fn cast_to(x: f64, d: Dtype) -> f64 {
    match d {
        Dtype::U8 => f64::from(u8::from(x != 0.0)),
        Dtype::I8 | Dtype::I32 | Dtype::I64 => {
            round_to(if x.is_nan() { 0.0 } else { x.trunc() }, d)
        }
        _ => round_to(x, d),
    }
}

fn run_kernel(kg: &KernelGraph, k: &Kernel, ins: &[ArrayD<f64>]) -> Result<ArrayD<f64>, String> {
    let get = |i: usize| {
        ins.get(i)
            .ok_or_else(|| format!("operand {i} out of range"))
    };
    let act = k.act_dtype;
    match &k.op {
        KernelOp::MatMul {
            a,
            b,
            transpose_b,
            epilogue,
        } => {
            let a_view = &k.inputs[*a];
            let b_view = &k.inputs[*b];
            let av = mm_operand(kg, k, get(*a)?, a_view, true)?;
            let mut bv = mm_operand(kg, k, get(*b)?, b_view, false)?;
            if *transpose_b {
                let r = bv.ndim();
                if r < 2 {
                    return Err(format!("matmul operand b has rank {r}, expected >= 2"));
                }
                bv.swap_axes(r - 2, r - 1);
            }
            let acc = bmm(&av, &bv)?;
            apply_ops(acc, epilogue, ins, act)
        }
        KernelOp::Norm {
            x,
            gamma,
            beta,
            epsilon,
            rms,
            norm_size,
            epilogue,
        } => {
            let xv = get(*x)?;
            let flat_param = |i: Option<usize>| -> Result<Option<Vec<f64>>, String> {
                match i {
                    None => Ok(None),
                    Some(i) => {
                        let p = get(i)?;
                        if p.len() != *norm_size {
                            return Err(format!(
                                "norm parameter has {} elements, expected {norm_size}",
                                p.len()
                            ));
                        }
                        Ok(Some(p.iter().copied().collect()))
                    }
                }
            };
            let (gm, bt) = (flat_param(*gamma)?, flat_param(*beta)?);
            let n = (*norm_size).max(1);
            if xv.len() % n != 0 {
                return Err(format!(
                    "{} elements do not split into rows of {n}",
                    xv.len()
                ));
            }
            let mut out: Vec<f64> = xv.iter().copied().collect();
            for row in out.chunks_mut(n) {
                let mean = if *rms {
                    0.0
                } else {
                    row.iter().sum::<f64>() / n as f64
                };
                let var = row.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / n as f64;
                let inv = 1.0 / (var + f64::from(*epsilon)).sqrt();
                for (j, v) in row.iter_mut().enumerate() {
                    let mut y = round_to((*v - mean) * inv, act);
                    if let Some(gm) = &gm {
                        y *= gm[j];
                    }
                    if let Some(bt) = &bt {
                        y += bt[j];
                    }
                    *v = round_to(y, act);
                }
            }
            let acc = ArrayD::from_shape_vec(xv.raw_dim(), out).map_err(|e| e.to_string())?;
            apply_ops(acc, epilogue, ins, act)
        }
        KernelOp::Softmax {
            x,
            prologue,
            epilogue,
        } => {
            let acc = apply_ops(get(*x)?.clone(), prologue, ins, act)?;
            let acc = softmax_last(acc, act);
            apply_ops(acc, epilogue, ins, act)
        }
        KernelOp::Attention {
            q,
            k: kk,
            v,
            prologue,
        } => {
            let mm = k.mm_dtype;
            if mm == Dtype::I8 {
                return Err("attention has no int8 form (precision assignment uses bf16)".into());
            }
            let round = |a: &ArrayD<f64>| a.mapv(|x| round_to(x, mm));
            let mut kt = round(get(*kk)?);
            let r = kt.ndim();
            if r < 2 {
                return Err("attention keys must have rank >= 2".into());
            }
            kt.swap_axes(r - 2, r - 1);
            let scores = bmm(&round(get(*q)?), &kt)?;
            let scores = apply_ops(scores, prologue, ins, act)?;
            let probs = softmax_last(scores, act);
            bmm(&round(&probs), &round(get(*v)?))
        }
        KernelOp::Elementwise { x, ops } => apply_ops(get(*x)?.clone(), ops, ins, act),
        KernelOp::Reduce {
            x,
            op,
            axes,
            epilogue,
        } => {
            let mut acc = get(*x)?.clone();
            for &ax in axes.iter().rev() {
                if ax >= acc.ndim() {
                    return Err(format!(
                        "reduce axis {ax} out of range for rank {}",
                        acc.ndim()
                    ));
                }
                let n = acc.shape()[ax] as f64;
                let red = match op {
                    ReduceFn::Sum => acc.sum_axis(Axis(ax)),
                    ReduceFn::Mean => acc.sum_axis(Axis(ax)).mapv(|s| s / n),
                    ReduceFn::Max => acc.fold_axis(Axis(ax), f64::NEG_INFINITY, |m, &v| m.max(v)),
                };
                acc = red.insert_axis(Axis(ax));
            }
            apply_ops(acc.mapv(|v| round_to(v, act)), epilogue, ins, act)
        }
        KernelOp::Gather {
            table,
            indices,
            epilogue,
        } => {
            let acc = gather_rows(get(*table)?, get(*indices)?)?;
            apply_ops(acc, epilogue, ins, act)
        }
        KernelOp::Conv2d {
            x,
            w,
            groups,
            window,
            epilogue,
        } => {
            let (xv, wv) = (get(*x)?, get(*w)?);
            if xv.ndim() != 4 || wv.ndim() != 4 {
                return Err(format!(
                    "conv2d operands must be rank 4, found {:?} and {:?}",
                    xv.shape(),
                    wv.shape()
                ));
            }
            // int8: the input quantized with `act_scale`, the weight as stored (already
            // `q * scale[o]`), exactly like a matmul's operands.
            let xq = mm_operand(kg, k, xv, &k.inputs[*x], true)?;
            let wq = mm_operand(kg, k, wv, &k.inputs[*w], false)?;
            let params = crate::reference::ops::conv::ConvParams {
                strides: window.strides,
                pads: window.pads,
                dilations: window.dilations,
                groups: *groups,
            };
            let acc = crate::reference::ops::conv::conv2d(&xq, &wq, None, params, &k.output.shape)?;
            apply_ops(acc, epilogue, ins, act)
        }
        KernelOp::Pool {
            x,
            op,
            window,
            epilogue,
        } => {
            let xv = get(*x)?;
            if xv.ndim() != 4 {
                return Err(format!(
                    "pooling input must be rank 4, found {:?}",
                    xv.shape()
                ));
            }
            let params = crate::reference::ops::pool::PoolParams {
                kernel: window.kernel,
                strides: window.strides,
                pads: window.pads,
                avg_count_include_pad: match op {
                    PoolFn::Max => None,
                    PoolFn::Avg { count_include_pad } => Some(*count_include_pad),
                },
            };
            let acc = crate::reference::ops::pool::pool2d(xv, params, &k.output.shape)?;
            apply_ops(acc.mapv(|v| round_to(v, act)), epilogue, ins, act)
        }
        KernelOp::Copy { x } => Ok(get(*x)?.clone()),
    }
}

/// `table[indices]` along the first axis, as the chip's indirect DMA does it: every index
/// must be in `0..rows` (no wrap-around of negative indices).
fn gather_rows(table: &ArrayD<f64>, indices: &ArrayD<f64>) -> Result<ArrayD<f64>, String> {
    let Some((&rows, row_shape)) = table.shape().split_first() else {
        return Err("gather table has rank 0".into());
    };
    let row_len: usize = row_shape.iter().product();
    // Logical order regardless of the view's memory layout.
    let flat: Vec<f64> = table.iter().copied().collect();
    let mut out = Vec::with_capacity(indices.len() * row_len);
    for &i in indices {
        // Negative indices count from the end, as on the chip (numpy `take`).
        let i = if i < 0.0 && i >= -(rows as f64) {
            i + rows as f64
        } else {
            i
        };
        if !(i >= 0.0 && i < rows as f64) {
            return Err(format!(
                "gather index {i} out of range: the table has {rows} rows"
            ));
        }
        let r = i as usize * row_len;
        out.extend_from_slice(&flat[r..r + row_len]);
    }
    let mut shape = indices.shape().to_vec();
    shape.extend_from_slice(row_shape);
    ArrayD::from_shape_vec(IxDyn(&shape), out).map_err(|e| e.to_string())
}

/// A matmul operand as the PE array sees it: rounded to `mm_dtype`; under int8 the
/// activation (`a`) is quantized with the kernel's per-tensor `act_scale` and the
/// weight (`b`) must be stored quantized (its storage already holds `q * scale`).
fn mm_operand(
    kg: &KernelGraph,
    k: &Kernel,
    x: &ArrayD<f64>,
    view: &View,
    is_a: bool,
) -> Result<ArrayD<f64>, String> {
    if k.mm_dtype != Dtype::I8 {
        return Ok(x.mapv(|v| round_to(v, k.mm_dtype)));
    }
    if is_a {
        let s = f64::from(
            k.act_scale
                .ok_or("int8 kernel without an activation scale (act_scale)")?,
        );
        if s <= 0.0 || !s.is_finite() {
            return Err(format!("int8 activation scale {s} is not positive"));
        }
        // The chip divides in fp32 (`TensorScalar` on VectorE/ScalarE) and the i8 write
        // rounds to nearest even and saturates: the same quotient bits here.
        let s32 = s as f32;
        return Ok(x.mapv(|v| round_to(f64::from(v as f32 / s32), Dtype::I8) * s));
    }
    let t = &kg.tensors[view.tensor.0 as usize];
    if t.quant_scale.is_none() || t.dtype != Dtype::I8 {
        return Err(format!(
            "int8 operand '{}' is not an int8 weight with per-channel scales",
            t.name
        ));
    }
    Ok(x.clone())
}

/// numpy matmul of `[.., M, K]` by `[.., K, N]` with broadcast batch axes.
fn bmm(a: &ArrayD<f64>, b: &ArrayD<f64>) -> Result<ArrayD<f64>, String> {
    let (ra, rb) = (a.ndim(), b.ndim());
    if ra < 2 || rb < 2 {
        return Err(format!(
            "matmul operands of rank {ra} and {rb}, expected >= 2"
        ));
    }
    let (m, ka) = (a.shape()[ra - 2], a.shape()[ra - 1]);
    let (kb, n) = (b.shape()[rb - 2], b.shape()[rb - 1]);
    if ka != kb {
        return Err(format!("matmul inner dimensions differ: {ka} vs {kb}"));
    }
    let batch = broadcast_shapes(&a.shape()[..ra - 2], &b.shape()[..rb - 2])
        .ok_or("matmul batch axes do not broadcast")?;
    let bt: usize = batch.iter().product();
    let full = |x: &ArrayD<f64>, r: usize, c: usize| -> Result<ArrayD<f64>, String> {
        let mut s = batch.clone();
        s.extend([r, c]);
        let v = x
            .broadcast(IxDyn(&s))
            .ok_or("matmul operand does not broadcast")?;
        // Logical order regardless of the view's memory layout (transposed, broadcast).
        ArrayD::from_shape_vec(IxDyn(&[bt, r, c]), v.iter().copied().collect())
            .map_err(|e| e.to_string())
    };
    let (a3, b3) = (full(a, m, ka)?, full(b, kb, n)?);
    let mut out = Vec::with_capacity(bt * m * n);
    for t in 0..bt {
        let am = a3
            .index_axis(Axis(0), t)
            .into_dimensionality::<Ix2>()
            .map_err(|e| e.to_string())?;
        let bm = b3
            .index_axis(Axis(0), t)
            .into_dimensionality::<Ix2>()
            .map_err(|e| e.to_string())?;
        let c: Array2<f64> = am.dot(&bm);
        out.extend(c.iter().copied());
    }
    let mut shape = batch;
    shape.extend([m, n]);
    ArrayD::from_shape_vec(IxDyn(&shape), out).map_err(|e| e.to_string())
}

/// Softmax over the last axis (max-subtracted, statistics in f64), rounded to `act`.
fn softmax_last(mut x: ArrayD<f64>, act: Dtype) -> ArrayD<f64> {
    let last = Axis(x.ndim().saturating_sub(1));
    if x.ndim() == 0 {
        return x.mapv(|_| 1.0);
    }
    for mut lane in x.lanes_mut(last) {
        let m = lane.iter().fold(f64::NEG_INFINITY, |m, &v| m.max(v));
        lane.mapv_inplace(|v| (v - m).exp());
        let s: f64 = lane.sum();
        lane.mapv_inplace(|v| round_to(v / s, act));
    }
    x
}

fn unary(f: UnaryFn, x: f64) -> f64 {
    match f {
        UnaryFn::Neg => -x,
        UnaryFn::Abs => x.abs(),
        UnaryFn::Exp => x.exp(),
        UnaryFn::Log => x.ln(),
        UnaryFn::Sqrt => x.sqrt(),
        UnaryFn::Rsqrt => 1.0 / x.sqrt(),
        UnaryFn::Reciprocal => 1.0 / x,
        UnaryFn::Relu => x.max(0.0),
        UnaryFn::Sigmoid => 1.0 / (1.0 + (-x).exp()),
        UnaryFn::Tanh => x.tanh(),
        UnaryFn::Erf => libm::erf(x),
        UnaryFn::Silu => x / (1.0 + (-x).exp()),
        UnaryFn::Gelu(GeluApprox::None) => {
            0.5 * x * (1.0 + libm::erf(x / std::f64::consts::SQRT_2))
        }
        UnaryFn::Gelu(GeluApprox::Tanh) => {
            let c = (2.0 / std::f64::consts::PI).sqrt();
            0.5 * x * (1.0 + (c * (x + 0.044715 * x * x * x)).tanh())
        }
        UnaryFn::Square => x * x,
    }
}

fn binary(f: BinaryFn, a: f64, b: f64) -> f64 {
    match f {
        BinaryFn::Add => a + b,
        BinaryFn::Sub => a - b,
        BinaryFn::Mul => a * b,
        BinaryFn::Div => a / b,
        BinaryFn::Max => a.max(b),
        BinaryFn::Min => a.min(b),
        BinaryFn::Pow => a.powf(b),
    }
}

/// Applies an elementwise chain to `acc`, rounding each step to `act`.
fn apply_ops(
    mut acc: ArrayD<f64>,
    ops: &[EwOp],
    ins: &[ArrayD<f64>],
    act: Dtype,
) -> Result<ArrayD<f64>, String> {
    let operand = |i: usize, shape: &[usize]| -> Result<ndarray::ArrayViewD<'_, f64>, String> {
        let x = ins
            .get(i)
            .ok_or_else(|| format!("operand {i} out of range"))?;
        x.broadcast(IxDyn(shape)).ok_or_else(|| {
            format!(
                "operand {i} of shape {:?} does not broadcast to {:?}",
                x.shape(),
                shape
            )
        })
    };
    for op in ops {
        let shape = acc.shape().to_vec();
        match *op {
            EwOp::Unary(f) => acc.mapv_inplace(|x| round_to(unary(f, x), act)),
            EwOp::Scalar {
                op,
                value,
                reversed,
            } => {
                let c = f64::from(value);
                acc.mapv_inplace(|x| {
                    let y = if reversed {
                        binary(op, c, x)
                    } else {
                        binary(op, x, c)
                    };
                    round_to(y, act)
                });
            }
            EwOp::Tensor {
                op,
                operand: i,
                reversed,
            } => {
                let o = operand(i, &shape)?;
                Zip::from(&mut acc).and(&o).for_each(|x, &y| {
                    let r = if reversed {
                        binary(op, y, *x)
                    } else {
                        binary(op, *x, y)
                    };
                    *x = round_to(r, act);
                });
            }
            EwOp::Select {
                cond,
                other,
                reversed,
            } => {
                let c = operand(cond, &shape)?;
                let o = operand(other, &shape)?;
                Zip::from(&mut acc).and(&c).and(&o).for_each(|x, &c, &o| {
                    let keep = (c != 0.0) != reversed;
                    *x = round_to(if keep { *x } else { o }, act);
                });
            }
            EwOp::Cast(d) => acc.mapv_inplace(|x| cast_to(x, d)),
        }
    }
    Ok(acc)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounding() {
        assert_eq!(round_to(1.0 + 1e-9, Dtype::F32), 1.0);
        assert_eq!(round_to(1000.0, Dtype::Fp8E4m3), 448.0);
        assert_eq!(round_to(-1000.0, Dtype::Fp8E4m3), -448.0);
        // e4m3: 3 fraction bits, so 1.0625 (1 + 1/16) is a tie between 1.0 and 1.125.
        assert_eq!(round_to(1.0625, Dtype::Fp8E4m3), 1.0);
        assert_eq!(round_to(1.1875, Dtype::Fp8E4m3), 1.25);
        // Smallest subnormal 2^-9.
        assert_eq!(round_to(2f64.powi(-9), Dtype::Fp8E4m3), 2f64.powi(-9));
        assert_eq!(round_to(2f64.powi(-11), Dtype::Fp8E4m3), 0.0);
        assert_eq!(round_to(2.5, Dtype::I8), 2.0);
        assert_eq!(round_to(300.0, Dtype::I8), 127.0);
        assert_eq!(round_to(f64::NAN, Dtype::I32), 0.0);
        assert_eq!(round_to(1.0 + 1.0 / 256.0, Dtype::Bf16), 1.0);
        assert_eq!(cast_to(-1.7, Dtype::I32), -1.0);
        assert_eq!(cast_to(0.3, Dtype::U8), 1.0);
    }

    #[test]
    fn views_and_bmm() {
        let storage: Vec<f64> = (0..6).map(f64::from).collect();
        let v = View::contiguous(super::super::KTensorId(0), &[2, 3]);
        let t = v.permuted(&[1, 0]).unwrap();
        let a = read_view(&storage, &t).unwrap();
        assert_eq!(
            a.iter().copied().collect::<Vec<_>>(),
            vec![0., 3., 1., 4., 2., 5.]
        );
        let bad = View {
            offset: 4,
            ..v.clone()
        };
        assert!(read_view(&storage, &bad).is_err());
        let x = read_view(&storage, &v).unwrap();
        let y = bmm(&x, &a).unwrap();
        // [[0,1,2],[3,4,5]] @ [[0,3],[1,4],[2,5]]
        assert_eq!(
            y.iter().copied().collect::<Vec<_>>(),
            vec![5., 14., 14., 50.]
        );
    }
}
