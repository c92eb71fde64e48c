//! Elementwise kernels: `out = chain(x)` over row tiles.
//!
//! The output and every operand are broadcast to the output shape and flattened jointly
//! into `[rows, cols]` ([`RowCols`]); rows go to partitions (128 per tile), columns along the
//! free axis in chunks sized for efficient DMAs. Per tile: load `x` (in its storage dtype,
//! the fewest bytes), load the operand tiles, run the chain (the last instruction writes
//! the output tile in the output dtype), store. Buffers rotate through several slots, so
//! the loads of tile i+1 run while tile i computes and tile i-1 is stored.

use super::chain::{self, ChainTiles};
use super::operands::{CompactLoad, RcOperand, RowOperands, loaded_once, rc_buffers};
use super::rows::{RowInputs, packed_space, row_inputs};
use super::{LowerCtx, lowering_error, on_chip_dtype};
use crate::backend::alloc::BufferReq;
use crate::backend::layout::{RowCols, parts};
use crate::backend::tiling::RowTiling;
use crate::error::CompileError;
use crate::kernel::{EwOp, Kernel, KernelGraph, KernelOp};
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
    /// Bytes of one outer column at the largest element size of the streamed tiles (for
    /// DMA sizing).
    pub col_bytes: u64,
}

/// Analyses an elementwise kernel.
pub fn analyze(kg: &KernelGraph, k: &Kernel, _cfg: &ChipConfig) -> Result<EwShape, CompileError> {
    let KernelOp::Elementwise { x, ops } = &k.op else {
        return Err(lowering_error(k, "internal: not an elementwise kernel"));
    };
    let RowInputs {
        rc,
        out,
        x,
        operands,
    } = row_inputs(kg, k, *x, ops, |inputs| packed_space(k, inputs))?;
    // Per outer column: packed short rows make each outer column a whole row.
    let col_bytes = [on_chip_dtype(x.dtype).size(), out.1.size(), 4]
        .into_iter()
        .max()
        .unwrap_or(4)
        * rc.inner_cols() as u64;
    Ok(EwShape {
        rc,
        out,
        x,
        operands,
        ops: ops.clone(),
        act_dtype: k.act_dtype,
        col_bytes,
    })
}

/// Buffers of an elementwise kernel.
pub fn buffers(s: &EwShape, t: &RowTiling) -> Vec<BufferReq> {
    // Elements per partition of a tile: `t.cols` outer columns of `inner_cols` each.
    let c = (t.cols * s.rc.inner_cols()) as u64;
    let mut v = vec![
        BufferReq::sbuf("in", c * s.x.tile_dtype().size(), t.slots),
        BufferReq::sbuf("work", c * s.act_dtype.size(), 2),
        BufferReq::sbuf("out", c * s.out.1.size(), t.slots),
    ];
    if chain::has_cast(&s.ops) {
        v.push(BufferReq::sbuf("cast", c * chain::CAST_BYTES, 1));
    }
    v.extend(rc_buffers(&s.operands, c, s.rc.cols.len() <= 1, |o| {
        if loaded_once(o, &s.rc, t) { 1 } else { t.slots }
    }));
    v
}

/// Lowers an elementwise kernel.
pub fn lower(ctx: &mut LowerCtx<'_>, t: &RowTiling) -> Result<(), CompileError> {
    let s = analyze(ctx.kg, ctx.kernel, ctx.cfg)?;
    let rc = &s.rc;
    let (outer, inner) = (rc.outer_cols(), rc.inner_cols());
    let (inb, work, outb) = (ctx.buf("in")?, ctx.buf("work")?, ctx.buf("out")?);
    let cast = ctx.bufs.get("cast").cloned();
    let max_in = ctx.kernel.inputs.len();
    let mut opnds = RowOperands::new(ctx, rc, &s.operands, max_in, t.rows, |o| {
        loaded_once(o, rc, t)
    })?;
    let mut slot = 0usize;
    for (r0, p) in rc.tiles(t.rows) {
        let mut c0 = 0;
        while c0 < outer {
            let nc = t.cols.min(outer - c0);
            let free = (nc * inner) as u32;
            let x_tile = inb.tile(slot, s.x.tile_dtype(), p as u32, free);
            let loads: Vec<_> = rc
                .runs(r0, p)
                .into_iter()
                .map(|run| (run, rc.hbm_ap(1, s.x.tensor, s.x.dtype, &run, c0, nc)))
                .collect();
            // `x` repeating along a column dimension is loaded compact and read with stride 0.
            let x = CompactLoad::load_runs(ctx, &x_tile, loads);
            let operands = opnds.load(ctx, r0, p, c0, nc, slot)?;
            let out = outb.tile(slot, on_chip_dtype(s.out.1), p as u32, free);
            let tiles = ChainTiles {
                src: x,
                work: work.tile(slot, s.act_dtype, p as u32, free),
                cast: cast.as_ref().map(|c| c.tile(0, Dtype::F32, p as u32, free)),
                out: out.clone(),
                operands: &operands,
            };
            let mut res = chain::apply(ctx, &s.ops, &tiles)?;
            if res.dims.iter().any(|d| d.stride == 0 && d.size > 1) {
                // An empty chain over a compact `x`: expand it before the store.
                let e = ctx.evict_engine();
                ctx.copy_on(e, out.clone(), res);
                res = out;
            }
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
