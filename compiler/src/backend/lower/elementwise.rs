//! Elementwise kernels: `out = chain(x)` over row tiles.
//!
//! The output and every operand are broadcast to the output shape and flattened jointly
//! into `[rows, cols]` ([`RowCols`]); rows go to partitions (128 per tile), columns along the
//! free axis in chunks sized for efficient DMAs. Per tile: load `x` (in its storage dtype,
//! the fewest bytes), load the operand tiles, run the chain (the last instruction writes
//! the output tile in the output dtype), store. Buffers rotate through several slots, so
//! the loads of tile i+1 run while tile i computes and tile i-1 is stored.

use super::chain::{self, ChainTiles, OpTile};
use super::operands::{Class, RcOperand, classify, load_rc, rc_broadcaster, rc_buffers};
use super::{LowerCtx, chain_operands, lowering_error, on_chip_dtype};
use crate::backend::alloc::BufferReq;
use crate::backend::layout::{RowCols, Space, broadcast_view, parts};
use crate::backend::tiling::RowTiling;
use crate::error::CompileError;
use crate::kernel::{EwOp, Kernel, KernelGraph, KernelOp, View};
use neuron_isa::{ChipConfig, Dtype, TensorId};

/// The shape facts of an elementwise kernel.
#[derive(Debug, Clone)]
pub struct EwShape {
    /// Views: 0 = output, 1 = x, then the operands.
    pub rc: RowCols,
    /// Output tensor and dtype.
    pub out: (TensorId, Dtype),
    /// The input `x`.
    pub x: RcOperand,
    /// Operands of the chain.
    pub operands: Vec<RcOperand>,
    /// The chain.
    pub ops: Vec<EwOp>,
    /// Intermediate dtype.
    pub act_dtype: Dtype,
    /// Largest element size of the streamed tiles (for DMA sizing).
    pub col_bytes: u64,
}

/// Builds the joint row/column space of `out` and `inputs` (broadcast to `out`'s shape),
/// spreading short rows over partitions when `spread` is set.
pub fn joint_space(k: &Kernel, inputs: &[usize], spread: bool) -> Result<RowCols, CompileError> {
    let shape = &k.output.shape;
    let mut views: Vec<View> = vec![k.output.clone()];
    for &i in inputs {
        let v = k.inputs.get(i).ok_or_else(|| {
            lowering_error(
                k,
                format!(
                    "operand index {i} out of range: the kernel has {} inputs",
                    k.inputs.len()
                ),
            )
        })?;
        views.push(broadcast_view(v, shape).ok_or_else(|| {
            lowering_error(
                k,
                format!(
                    "input {i} of shape {:?} does not broadcast to {:?}",
                    v.shape, shape
                ),
            )
        })?);
    }
    let refs: Vec<&View> = views.iter().collect();
    let mut space = Space::new(shape, &refs);
    if spread {
        space.spread_rows(128, 16);
    }
    Ok(RowCols::new(space, 1))
}

/// An operand descriptor for kernel input `input` at view index `view` of `rc`.
pub fn rc_operand(
    kg: &KernelGraph,
    k: &Kernel,
    rc: &RowCols,
    input: usize,
    view: usize,
    force_full: bool,
) -> Result<RcOperand, CompileError> {
    let v = &k.inputs[input];
    let t = kg.tensor(v.tensor).ok_or_else(|| {
        lowering_error(
            k,
            format!(
                "input {input} names tensor {} which does not exist",
                v.tensor
            ),
        )
    })?;
    Ok(RcOperand {
        input,
        view,
        class: classify(rc, view, force_full),
        tensor: TensorId(v.tensor.0),
        dtype: t.dtype,
    })
}

/// Whether input `i` is read by a `Select` of `ops` (and so must be a full tile).
pub fn selected(ops: &[EwOp], i: usize) -> bool {
    ops.iter()
        .any(|o| matches!(o, EwOp::Select { cond, other, .. } if *cond == i || *other == i))
}

/// Analyses an elementwise kernel.
pub fn analyze(kg: &KernelGraph, k: &Kernel, _cfg: &ChipConfig) -> Result<EwShape, CompileError> {
    let KernelOp::Elementwise { x, ops } = &k.op else {
        return Err(lowering_error(k, "internal: not an elementwise kernel"));
    };
    let opnds = chain_operands(ops);
    let mut inputs = vec![*x];
    inputs.extend(&opnds);
    let rc = joint_space(k, &inputs, true)?;
    let xo = rc_operand(kg, k, &rc, *x, 1, true)?;
    let mut operands = Vec::new();
    for (j, &i) in opnds.iter().enumerate() {
        operands.push(rc_operand(kg, k, &rc, i, 2 + j, selected(ops, i))?);
    }
    let out_t = kg
        .tensor(k.output.tensor)
        .ok_or_else(|| lowering_error(k, "output names a missing tensor"))?;
    let col_bytes = [on_chip_dtype(xo.dtype).size(), out_t.dtype.size(), 4]
        .into_iter()
        .max()
        .unwrap_or(4);
    Ok(EwShape {
        rc,
        out: (TensorId(k.output.tensor.0), out_t.dtype),
        x: xo,
        operands,
        ops: ops.clone(),
        act_dtype: k.act_dtype,
        col_bytes,
    })
}

/// Whether operand `o` is loaded once per kernel (the same row for every tile and a single
/// column chunk).
fn resident(s: &EwShape, t: &RowTiling, o: &RcOperand) -> bool {
    o.class == Class::RowBcast && t.cols >= s.rc.cols.first().copied().unwrap_or(1)
}

/// Buffers of an elementwise kernel.
pub fn buffers(s: &EwShape, t: &RowTiling) -> Vec<BufferReq> {
    let c = t.cols as u64;
    let mut v = vec![
        BufferReq::sbuf("in", c * s.x.tile_dtype().size(), t.slots),
        BufferReq::sbuf("work", c * s.act_dtype.size(), 2),
        BufferReq::sbuf("out", c * s.out.1.size(), t.slots),
    ];
    if chain::has_cast(&s.ops) {
        v.push(BufferReq::sbuf("cast", c * chain::CAST_BYTES, 1));
    }
    v.extend(rc_buffers(&s.operands, c, s.rc.cols.len() <= 1, |o| {
        if resident(s, t, o) { 1 } else { t.slots }
    }));
    v
}

/// Lowers an elementwise kernel.
pub fn lower(ctx: &mut LowerCtx<'_>, t: &RowTiling) -> Result<(), CompileError> {
    let s = analyze(ctx.kg, ctx.kernel, ctx.cfg)?;
    let rc = &s.rc;
    let rows = rc.num_rows();
    let outer = rc.cols.first().copied().unwrap_or(1);
    let inner = rc.cols.iter().skip(1).product::<usize>();
    let (inb, work, outb) = (ctx.buf("in")?, ctx.buf("work")?, ctx.buf("out")?);
    let cast = ctx.bufs.get("cast").cloned();
    let max_in = ctx.kernel.inputs.len();
    let mut bc = rc_broadcaster(ctx, &s.operands)?;
    let mut fixed: Vec<Option<OpTile>> = vec![None; max_in];
    for o in &s.operands {
        if resident(&s, t, o) {
            let buf = ctx.buf(&format!("op{}", o.input))?;
            fixed[o.input] = Some(load_rc(
                ctx,
                rc,
                o,
                0,
                t.rows.min(rows),
                0,
                outer,
                inner,
                &buf,
                0,
                bc.as_mut(),
            )?);
        }
    }
    let mut slot = 0usize;
    for (r0, p) in rc.tiles(t.rows) {
        let mut c0 = 0;
        while c0 < outer {
            let nc = t.cols.min(outer - c0);
            let free = (nc * inner) as u32;
            let x = inb.tile(slot, s.x.tile_dtype(), p as u32, free);
            for run in rc.runs(r0, p) {
                let src = rc.hbm_ap(1, s.x.tensor, s.x.dtype, &run, c0, nc);
                ctx.load(parts(&x, run.part, run.len), src);
            }
            let mut operands = fixed.clone();
            for o in &s.operands {
                match &fixed[o.input] {
                    Some(OpTile::Full(ap)) => {
                        operands[o.input] = Some(OpTile::Full(neuron_isa::Ap {
                            partitions: p as u32,
                            ..ap.clone()
                        }));
                    }
                    Some(OpTile::Column(_)) => {}
                    None => {
                        let buf = ctx.buf(&format!("op{}", o.input))?;
                        operands[o.input] = Some(load_rc(
                            ctx,
                            rc,
                            o,
                            r0,
                            p,
                            c0,
                            nc,
                            inner,
                            &buf,
                            slot,
                            bc.as_mut(),
                        )?);
                    }
                }
            }
            let tiles = ChainTiles {
                src: x,
                work: work.tile(slot, s.act_dtype, p as u32, free),
                cast: cast.as_ref().map(|c| c.tile(0, Dtype::F32, p as u32, free)),
                out: outb.tile(slot, on_chip_dtype(s.out.1), p as u32, free),
                operands: &operands,
            };
            let res = chain::apply(ctx, &s.ops, &tiles)?;
            for run in rc.runs(r0, p) {
                let dst = rc.hbm_ap(0, s.out.0, s.out.1, &run, c0, nc);
                ctx.store(dst, parts(&res, run.part, run.len));
            }
            slot += 1;
            c0 += nc;
        }
    }
    Ok(())
}
