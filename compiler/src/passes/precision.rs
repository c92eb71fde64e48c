//! Precision assignment (after fusion): which storage type each kernel's matmul operands
//! and elementwise intermediates use on chip, and how weights are stored in HBM.
//!
//! - `--auto-cast none`: everything fp32.
//! - `--auto-cast matmult` (default): matmul and attention operands in the cast type
//!   (`mm_dtype`); elementwise work fp32.
//! - `--auto-cast all`: also elementwise intermediates (`act_dtype`) in the cast type —
//!   except that fp8 and int8 are never used for them (too coarse for a running value
//!   that feeds further arithmetic): bf16 then.
//!
//! Softmax and norm statistics and all accumulations stay fp32 (the kernel op
//! semantics). Graph inputs and outputs keep their declared types. A weight read only as
//! the `b` operand of matmuls with a reduced `mm_dtype` is stored pre-cast in HBM: for
//! bf16/fp16/fp8 its tensor dtype becomes that type while `data` keeps the f32 values —
//! the artifact writer rounds them when it serializes the weights (and the interpreter
//! rounds on load); for int8 it is quantized here, symmetric per output channel, into
//! `data` (i8) and `quant_scale`.
//!
//! int8 needs a per-tensor scale for the activation operand (a matmul's `a`, a
//! convolution's `x`), found by calibration ([`crate::quant`]). A matmul whose `b` is not
//! such a weight (attention, activation times activation, a weight also read elsewhere)
//! has no int8 form here and uses bf16; so does a convolution whose weight is not a
//! constant read only whole by convolutions (quantized per output channel, axis 0).
//! Kernels whose data (not a mask or condition operand) or result is integer or boolean
//! compute in fp32.

use std::collections::BTreeMap;

use crate::CompileError;
use crate::ir::Graph;
use crate::kernel::{KTensorId, KernelGraph, KernelOp};
use crate::options::{AutoCast, CastType, CompileOptions};
use crate::quant::{activation_scales, calibration_inputs, quantize_symmetric_axis};
use neuron_isa::{Dtype, TensorKind};

/// The `act_dtype` for elementwise work under `opts`.
pub fn act_dtype(opts: &CompileOptions) -> Dtype {
    match (opts.auto_cast, opts.auto_cast_type) {
        (AutoCast::All, CastType::Fp16) => Dtype::F16,
        (AutoCast::All, _) => Dtype::Bf16,
        _ => Dtype::F32,
    }
}

/// One read of a tensor by a kernel.
#[derive(Debug, Clone, Copy)]
struct Use {
    /// Index of the reading kernel.
    kernel: usize,
    /// Read as the `b` operand of a matmul.
    is_b: bool,
    /// ... as `[K, N]` exactly: whole tensor, its own shape, no `transpose_b` — so the
    /// tensor's last axis is the matmul's output channel.
    plain_b: bool,
    /// Read as data the kernel multiplies on TensorE (a matmul's `a` or `b`, attention's
    /// `q`, `k` or `v`), which it rounds to its `mm_dtype` on load.
    mm_operand: bool,
    /// Read whole, in its own shape, as a convolution's weight `[O, C/G, KH, KW]` (axis 0
    /// is the output channel).
    plain_conv_w: bool,
}

/// Every read of every tensor.
fn tensor_uses(kg: &KernelGraph) -> BTreeMap<KTensorId, Vec<Use>> {
    let mut uses: BTreeMap<KTensorId, Vec<Use>> = BTreeMap::new();
    for (ki, k) in kg.kernels.iter().enumerate() {
        for (i, v) in k.inputs.iter().enumerate() {
            let (is_b, transpose_b) = match k.op {
                KernelOp::MatMul { b, transpose_b, .. } => (b == i, transpose_b),
                // A conv weight is TensorE's other operand too (stored pre-cast like a
                // matmul `b`); it is not a plain `[K, N]` (see `plain_conv_w` for int8).
                KernelOp::Conv2d { w, .. } => (w == i, true),
                _ => (false, false),
            };
            let mm_operand = match k.op {
                KernelOp::MatMul { a, b, .. } => a == i || b == i,
                KernelOp::Attention { q, k, v, .. } => q == i || k == i || v == i,
                KernelOp::Conv2d { x, w, .. } => x == i || w == i,
                _ => false,
            };
            let plain = kg
                .tensor(v.tensor)
                .is_some_and(|t| v.shape == t.shape && v.is_whole_contiguous(t.numel()));
            let conv_w = matches!(k.op, KernelOp::Conv2d { w, .. } if w == i);
            uses.entry(v.tensor).or_default().push(Use {
                kernel: ki,
                is_b,
                plain_b: is_b && plain && !transpose_b,
                mm_operand,
                plain_conv_w: conv_w && plain,
            });
        }
    }
    uses
}

/// The operands a kernel computes on (its data, not its epilogue operands).
fn main_operands(op: &KernelOp) -> Vec<usize> {
    match op {
        KernelOp::MatMul { a, b, .. } => vec![*a, *b],
        KernelOp::Attention { q, k, v, .. } => vec![*q, *k, *v],
        KernelOp::Conv2d { x, w, .. } => vec![*x, *w],
        KernelOp::Pool { x, .. } => vec![*x],
        // The indices only select rows, like a mask or a condition.
        KernelOp::Gather { table, .. } => vec![*table],
        KernelOp::Norm { x, .. }
        | KernelOp::Softmax { x, .. }
        | KernelOp::Elementwise { x, .. }
        | KernelOp::Reduce { x, .. }
        | KernelOp::Copy { x } => vec![*x],
    }
}

/// Sets `mm_dtype`, `act_dtype` and `act_scale` of every kernel and the storage of
/// matmul weights, as described in the module docs.
pub fn assign(g: &Graph, kg: &mut KernelGraph, opts: &CompileOptions) -> Result<(), CompileError> {
    let _span = tracing::debug_span!(
        "precision",
        auto_cast = opts.auto_cast.name(),
        cast_type = opts.auto_cast_type.name()
    )
    .entered();
    let mm = opts.matmul_dtype();
    let act = act_dtype(opts);
    let uses = tensor_uses(kg);
    // A weight that only ever feeds matmuls as a plain `[K, N]` `b` can be quantized per
    // output channel (the last axis).
    let int8_weight = |t: KTensorId| {
        kg.tensor(t).is_some_and(|x| {
            x.kind == TensorKind::Weight && x.dtype == Dtype::F32 && x.data.is_some()
        }) && uses.get(&t).is_some_and(|u| u.iter().all(|u| u.plain_b))
    };
    // Likewise a weight read only whole as convolution weights, quantized per output
    // channel (axis 0) after batch_norm folding (which ran before kernelization).
    let int8_conv_weight = |t: KTensorId| {
        kg.tensor(t).is_some_and(|x| {
            x.kind == TensorKind::Weight && x.dtype == Dtype::F32 && x.data.is_some()
        }) && uses
            .get(&t)
            .is_some_and(|u| u.iter().all(|u| u.plain_conv_w))
    };
    let mut plan = Vec::with_capacity(kg.kernels.len());
    for k in &kg.kernels {
        // The data the kernel computes on (not masks and conditions) must be float for
        // a reduced type to make sense.
        let float =
            |v: &crate::kernel::View| kg.tensor(v.tensor).is_some_and(|t| t.dtype.is_float());
        let all_float = float(&k.output)
            && main_operands(&k.op)
                .iter()
                .all(|&i| k.inputs.get(i).is_some_and(float));
        let (kmm, kact) = match &k.op {
            _ if !all_float => (Dtype::F32, Dtype::F32),
            KernelOp::Copy { .. } => (Dtype::F32, Dtype::F32),
            KernelOp::Attention { .. } if mm == Dtype::I8 => (Dtype::Bf16, act),
            KernelOp::MatMul { b, .. } if mm == Dtype::I8 => {
                let w = k.inputs[*b].tensor;
                if int8_weight(w) {
                    (Dtype::I8, act)
                } else {
                    tracing::info!(
                        kernel = %k.name,
                        "no int8 form (b is not a weight read only as a plain [K, N] matmul operand): bf16"
                    );
                    (Dtype::Bf16, act)
                }
            }
            KernelOp::Conv2d { w, .. } if mm == Dtype::I8 => {
                if int8_conv_weight(k.inputs[*w].tensor) {
                    (Dtype::I8, act)
                } else {
                    tracing::info!(
                        kernel = %k.name,
                        "no int8 form (the weight is not a constant read only whole by convolutions): bf16"
                    );
                    (Dtype::Bf16, act)
                }
            }
            KernelOp::MatMul { .. } | KernelOp::Attention { .. } | KernelOp::Conv2d { .. } => {
                (mm, act)
            }
            _ => (Dtype::F32, act),
        };
        plan.push((kmm, kact));
    }
    for (k, &(kmm, kact)) in kg.kernels.iter_mut().zip(&plan) {
        k.mm_dtype = kmm;
        k.act_dtype = kact;
        k.act_scale = None;
    }
    precast_weights(kg, &uses);
    precast_scratch(kg, &uses);
    precast_max_pool_inputs(kg, &uses);
    if mm == Dtype::I8 {
        let int8: Vec<usize> = (0..kg.kernels.len())
            .filter(|&i| kg.kernels[i].mm_dtype == Dtype::I8)
            .collect();
        let inputs = calibration_inputs(g, opts);
        let scales = activation_scales(g, kg, &int8, &inputs)?;
        for (i, s) in scales {
            kg.kernels[i].act_scale = Some(s);
        }
    }
    Ok(())
}

/// Stores each weight read only as a matmul `b` operand in the reduced type of the
/// kernels reading it, if they all agree on one; int8 weights are quantized per output
/// channel.
fn precast_weights(kg: &mut KernelGraph, uses: &BTreeMap<KTensorId, Vec<Use>>) {
    for (&t, u) in uses {
        let Some(tensor) = kg.tensor(t) else { continue };
        if tensor.kind != TensorKind::Weight
            || tensor.dtype != Dtype::F32
            || !u.iter().all(|u| u.is_b)
        {
            continue;
        }
        let target = kg.kernels[u[0].kernel].mm_dtype;
        if target == Dtype::F32 || u.iter().any(|u| kg.kernels[u.kernel].mm_dtype != target) {
            continue;
        }
        let data = tensor.data.clone();
        let tensor = &mut kg.tensors[t.0 as usize];
        if target == Dtype::I8 {
            // Only kernels whose weight has data and plain uses were given int8. A conv
            // weight's output channel is axis 0, a matmul weight's the last.
            let Some(data) = data else { continue };
            let axis = if u.iter().all(|u| u.plain_conv_w) {
                0
            } else {
                tensor.shape.len().saturating_sub(1)
            };
            let q = quantize_symmetric_axis(&data, axis, true);
            tensor.data = Some(q.data.into());
            tensor.quant_scale = Some(q.scales);
            tensor.quant_axis = axis;
            tensor.dtype = target;
            if axis == 0 {
                conv_weight_channel_last(kg, t);
            }
            continue;
        }
        tensor.dtype = target;
    }
}

/// Stores an int8 convolution weight `[O, C/G, KH, KW]` as `[C/G, KH, KW, O]` (scales on
/// the last axis), its readers' views keeping the logical shape with permuted strides:
/// the kernel loads `[c, tap, o]` with `c` on partitions, and DMA cannot transpose 1-byte
/// elements (`neuron_sim::dma`), so in OIHW order every weight byte would be its own
/// descriptor; channel-last makes each partition's taps and output channels one run.
fn conv_weight_channel_last(kg: &mut KernelGraph, t: KTensorId) {
    use crate::ir::Tensor;
    let Some(tensor) = kg.tensors.get_mut(t.0 as usize) else {
        return;
    };
    let [o, cg, kh, kw] = tensor.shape[..] else {
        return;
    };
    let Some(Tensor::I8(q)) = tensor.data.as_deref() else {
        return;
    };
    let Ok(q4) = q.view().into_dimensionality::<ndarray::Ix4>() else {
        return;
    };
    let permuted = q4.permuted_axes([1, 2, 3, 0]);
    let data: Vec<i8> = permuted.iter().copied().collect();
    let Ok(arr) = ndarray::ArrayD::from_shape_vec(vec![cg, kh, kw, o], data) else {
        return;
    };
    tensor.data = Some(Tensor::I8(arr).into());
    tensor.shape = vec![cg, kh, kw, o];
    tensor.quant_axis = 3;
    let strides = vec![1, (kh * kw * o) as isize, (kw * o) as isize, o as isize];
    for k in &mut kg.kernels {
        for v in k.inputs.iter_mut().filter(|v| v.tensor == t) {
            v.offset = 0;
            v.shape = vec![o, cg, kh, kw];
            v.strides = strides.clone();
        }
    }
}

/// Stores a scratch tensor in the reduced matmul type when every read of it is a TensorE
/// operand (matmul `a`/`b`, attention `q`/`k`/`v`) of kernels that all round it to that one
/// type (bf16 or fp16) on load: rounding once when the producer writes it gives the same
/// values as rounding at every load, and halves the tensor's HBM traffic. Only kernels
/// that write their output through an on-chip tile in the output type (matmul,
/// attention, conv, pooling, elementwise, norm, softmax) produce such a tensor.
fn precast_scratch(kg: &mut KernelGraph, uses: &BTreeMap<KTensorId, Vec<Use>>) {
    let mut producers: BTreeMap<KTensorId, &KernelOp> = BTreeMap::new();
    let mut written_twice = Vec::new();
    for k in &kg.kernels {
        if producers.insert(k.output.tensor, &k.op).is_some() {
            written_twice.push(k.output.tensor);
        }
    }
    let mut cast = Vec::new();
    for (&t, u) in uses {
        let Some(tensor) = kg.tensor(t) else { continue };
        if tensor.kind != TensorKind::Scratch
            || tensor.dtype != Dtype::F32
            || written_twice.contains(&t)
            || u.is_empty()
        {
            continue;
        }
        // Under `--auto-cast all`, a convolution's or pooling's activation map (read by
        // the next conv and by a residual epilogue, whose arithmetic is in that type
        // anyway) is stored in the elementwise type: half the HBM traffic of a CNN.
        if let Some(act) = conv_activation_type(kg, t, u, &producers) {
            cast.push((t, act));
            continue;
        }
        if !u.iter().all(|u| u.mm_operand) {
            continue;
        }
        let produced_on_chip = producers.get(&t).is_some_and(|op| {
            matches!(
                op,
                KernelOp::MatMul { .. }
                    | KernelOp::Attention { .. }
                    | KernelOp::Conv2d { .. }
                    | KernelOp::Pool { .. }
                    | KernelOp::Elementwise { .. }
                    | KernelOp::Norm { .. }
                    | KernelOp::Softmax { .. }
            )
        });
        let target = kg.kernels[u[0].kernel].mm_dtype;
        if !produced_on_chip
            || !matches!(target, Dtype::Bf16 | Dtype::F16)
            || u.iter().any(|u| kg.kernels[u.kernel].mm_dtype != target)
        {
            continue;
        }
        cast.push((t, target));
    }
    for (t, target) in cast {
        if let Some(tensor) = kg.tensors.get_mut(t.0 as usize) {
            tensor.dtype = target;
        }
    }
}

/// Stores a conv result in the 16-bit type of the max pools that alone read it, when
/// they store their own result in that type with no epilogue: rounding is monotonic, so
/// `round(max(x)) == max(round(x))` and the pool's output is the same bits, while the
/// conv's store and the pool's load move half the bytes (a ResNet stem's feature map).
fn precast_max_pool_inputs(kg: &mut KernelGraph, uses: &BTreeMap<KTensorId, Vec<Use>>) {
    use crate::kernel::PoolFn;
    let mut cast = Vec::new();
    // Per tensor, whether its writers are exactly one conv (indexed once: a scan of
    // every kernel per tensor would make this quadratic in the kernel count).
    let mut writers: BTreeMap<KTensorId, Vec<bool>> = BTreeMap::new();
    for k in &kg.kernels {
        writers
            .entry(k.output.tensor)
            .or_default()
            .push(matches!(k.op, KernelOp::Conv2d { .. }));
    }
    for (&t, u) in uses {
        let Some(tensor) = kg.tensor(t) else { continue };
        let conv_written = writers.get(&t).is_some_and(|w| w.as_slice() == [true]);
        if tensor.kind != TensorKind::Scratch || tensor.dtype != Dtype::F32 || !conv_written {
            continue;
        }
        let targets: Vec<Option<Dtype>> = u
            .iter()
            .map(|u| {
                let k = &kg.kernels[u.kernel];
                match &k.op {
                    KernelOp::Pool {
                        x,
                        op: PoolFn::Max,
                        epilogue,
                        ..
                    } if epilogue.is_empty() && k.inputs.get(*x).is_some_and(|v| v.tensor == t) => {
                        kg.tensor(k.output.tensor)
                            .map(|o| o.dtype)
                            .filter(|d| matches!(d, Dtype::Bf16 | Dtype::F16))
                    }
                    _ => None,
                }
            })
            .collect();
        if let Some(Some(d)) = targets.first()
            && targets.iter().all(|x| *x == Some(*d))
        {
            cast.push((t, *d));
        }
    }
    for (t, target) in cast {
        if let Some(tensor) = kg.tensors.get_mut(t.0 as usize) {
            tensor.dtype = target;
        }
    }
}

/// The reduced type a conv or pooling result `t` may be stored in: when it is produced by
/// such a kernel with a bf16/fp16 `act_dtype` and every reader computes in that type
/// (its `act_dtype`, and its `mm_dtype` if it is a conv, or int8: it quantizes the
/// stored values on load). `None` otherwise.
fn conv_activation_type(
    kg: &KernelGraph,
    t: KTensorId,
    uses: &[Use],
    producers: &BTreeMap<KTensorId, &KernelOp>,
) -> Option<Dtype> {
    // The cheap test first: searching the kernels for every scratch tensor is quadratic.
    if !matches!(
        producers.get(&t),
        Some(KernelOp::Conv2d { .. } | KernelOp::Pool { .. })
    ) {
        return None;
    }
    let producer = kg.kernels.iter().find(|k| k.output.tensor == t)?;
    let act = producer.act_dtype;
    if !matches!(act, Dtype::Bf16 | Dtype::F16) {
        return None;
    }
    uses.iter()
        .all(|u| {
            let k = &kg.kernels[u.kernel];
            // An int8 conv quantizes what it loads: a 16-bit map is as good an input.
            k.act_dtype == act
                && (!matches!(k.op, KernelOp::Conv2d { .. })
                    || k.mm_dtype == act
                    || k.mm_dtype == Dtype::I8)
        })
        .then_some(act)
}
