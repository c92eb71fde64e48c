//! The int8 parts of a convolution's lowering (`lower/conv.rs` calls these).
//!
//! An int8 convolution multiplies i8 input bands by i8 weights on TensorE and accumulates
//! in i32 PSUM, like an int8 matmul (docs/compiler.md, "Precision"):
//!
//! - **Weights** are stored i8 in HBM by precision assignment, quantized symmetrically per
//!   output channel (axis 0 of `[O, C/G, KH, KW]`, after batch_norm folding), with the
//!   scales in `quant_scale`, and stored channel-last `[C/G, KH, KW, O]` (the view keeps
//!   the logical shape): DMA cannot transpose 1-byte elements, and channel-last makes
//!   each partition's `[tap, o]` one contiguous run. The resident weights load as they
//!   are; the packed forms (block-diagonal groups, stacked kernel rows) are built from
//!   the i8 values.
//! - **Inputs** stay float in HBM. Each band load lands in a *staging* slot (f32, or the
//!   input's own 16-bit type) with the band's element layout, and one `TensorScalar` (`x / act_scale`, written to the i8
//!   band: the write rounds to nearest even and saturates) quantizes exactly the elements
//!   the load wrote. Padding is zeroed in the i8 band directly (0 quantizes to 0).
//! - **Eviction** multiplies the i32 accumulator by the per-output-channel column
//!   `act_scale * w_scale[o]` on ScalarE (`Activation` with a per-partition scale), adding
//!   a leading per-channel bias (folded batch_norm) in the same instruction; the rest of
//!   the epilogue (residual add, relu) follows as for bf16.

use neuron_isa::{ActFunc, AluOp, Ap, Dtype, Engine, Memory, Op, Operand};

use super::chain::OpTile;
use super::{LowerCtx, lowering_error};
use crate::CompileError;
use crate::kernel::{EwOp, Kernel, KernelGraph, KernelOp};

/// The quantization facts of an int8 convolution.
#[derive(Debug, Clone)]
pub struct ConvInt8 {
    /// Per-tensor scale of the input: `x ~= q * act_scale`.
    pub act_scale: f32,
    /// Per output channel: `act_scale * w_scale[o]`, the eviction's multiplier.
    pub dequant: Vec<f32>,
    /// The staging type: the input's storage type when it is 16-bit (exact, and half the
    /// bytes of f32), else f32.
    pub stage: Dtype,
}

/// The int8 facts of conv kernel `k`: `None` unless its `mm_dtype` is i8; an error when
/// the calibration scale or the weight's per-channel scales are missing or malformed.
pub fn analyze(kg: &KernelGraph, k: &Kernel) -> Result<Option<ConvInt8>, CompileError> {
    if k.mm_dtype != Dtype::I8 {
        return Ok(None);
    }
    let err = |m: String| lowering_error(k, m);
    let KernelOp::Conv2d { x, w, .. } = &k.op else {
        return Err(err("internal: not a conv2d".into()));
    };
    let act_scale = k
        .act_scale
        .filter(|s| *s > 0.0 && s.is_finite())
        .ok_or_else(|| {
            err(format!(
                "int8 convolution needs a positive activation scale (calibration), found {:?}",
                k.act_scale
            ))
        })?;
    let wv = super::kernel_input(k, *w)?;
    let wt = kg
        .tensor(wv.tensor)
        .ok_or_else(|| err(format!("weight tensor {} does not exist", wv.tensor)))?;
    // The weight's view is `[O, C/G, KH, KW]`; its storage is channel-last (precision
    // assignment), the scales on the stored tensor's `quant_axis`.
    let o = wv.shape.first().copied().unwrap_or(0);
    let scales = wt
        .quant_scale
        .as_ref()
        .filter(|s| {
            wt.dtype == Dtype::I8 && wt.shape.get(wt.quant_axis) == Some(&o) && s.len() == o
        })
        .ok_or_else(|| {
            err(format!(
                "int8 convolution needs weight '{}' stored i8 with {o} per-channel scales, found {} with {:?} scales on axis {} of {:?}",
                wt.name,
                wt.dtype,
                wt.quant_scale.as_ref().map(Vec::len),
                wt.quant_axis,
                wt.shape
            ))
        })?;
    let xdt = kg
        .tensor(super::kernel_input(k, *x)?.tensor)
        .map_or(Dtype::F32, |t| t.dtype);
    Ok(Some(ConvInt8 {
        act_scale,
        dequant: scales.iter().map(|w| act_scale * w).collect(),
        stage: if matches!(xdt, Dtype::Bf16 | Dtype::F16) {
            xdt
        } else {
            Dtype::F32
        },
    }))
}

/// The staging pattern (type `stage`) of band pattern `band` (i8): the same partitions
/// and element layout, in the staging buffer (`band` at `band_base` bytes, staging at
/// `stage_base`).
pub fn staged(band: &Ap, band_base: u64, stage_base: u64, stage: Dtype) -> Ap {
    let elem = band.offset.saturating_sub(band_base) / band.dtype.size().max(1);
    Ap {
        dtype: stage,
        offset: stage_base + elem * stage.size(),
        ..band.clone()
    }
}

/// `band = stage / act_scale` into i8 (the write rounds to nearest even and saturates).
/// Both are SBUF, so GpSimd (otherwise idle but for memsets) takes every third one, and
/// ScalarE and VectorE, which also evict PSUM, the others in turn.
pub fn quantize(ctx: &mut LowerCtx<'_>, q: &ConvInt8, band: Ap, stage: Ap) {
    ctx.evict_rr += 1;
    let e = match ctx.evict_rr % 3 {
        0 => Engine::GpSimd,
        1 => Engine::Scalar,
        _ => Engine::Vector,
    };
    ctx.push(
        e,
        Op::TensorScalar {
            dst: band,
            src: stage,
            op0: AluOp::Div,
            operand0: Operand::Imm(q.act_scale),
            reverse0: false,
            op1: AluOp::Bypass,
            operand1: Operand::Imm(0.0),
            reverse1: false,
        },
    );
}

/// Loads the HBM pattern `src` into band pattern `band` through the staging buffer and
/// quantizes it.
pub fn load_band(
    ctx: &mut LowerCtx<'_>,
    q: &ConvInt8,
    band: Ap,
    src: Ap,
    (band_base, stage_base): (u64, u64),
) {
    let stage = staged(&band, band_base, stage_base, q.stage);
    ctx.load(stage.clone(), src);
    quantize(ctx, q, band, stage);
}

/// The dequantization column of output channels `o0..o0 + no` in HBM (a constant of
/// `dequant`, added once per kernel as `cid`).
pub fn dequant_src(cid: neuron_isa::TensorId, o0: usize, no: usize) -> Ap {
    Ap {
        mem: Memory::Hbm(cid),
        dtype: Dtype::F32,
        offset: (o0 * 4) as u64,
        start_partition: 0,
        partitions: no as u32,
        partition_stride: 1,
        dims: super::conv::dense(1),
    }
}

/// Evicts the i32 accumulator `acc` into `dst` as `acc * dequant[o] (+ bias[o])` on
/// ScalarE, folding a leading per-channel bias add of `epilogue` into the same
/// instruction; returns the rest of the epilogue.
pub fn evict<'e>(
    ctx: &mut LowerCtx<'_>,
    dst: Ap,
    acc: Ap,
    dequant: Ap,
    epilogue: &'e [EwOp],
    ops: &[Option<OpTile>],
) -> &'e [EwOp] {
    let (bias, rest) = match epilogue.split_first() {
        Some((
            EwOp::Tensor {
                op: crate::kernel::BinaryFn::Add,
                operand,
                ..
            },
            rest,
        )) => match ops.get(*operand) {
            Some(Some(OpTile::Column(col))) => (Some(Operand::PerPartition(col.clone())), rest),
            _ => (None, epilogue),
        },
        _ => (None, epilogue),
    };
    ctx.push(
        Engine::Scalar,
        Op::Activation {
            dst,
            src: acc,
            func: ActFunc::Identity,
            scale: Operand::PerPartition(dequant),
            bias,
            accum: None,
        },
    );
    rest
}
