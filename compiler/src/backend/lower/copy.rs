//! Copy kernels: `out = x` through strided views (transposes, slices, concat pieces,
//! casts).
//!
//! A copy never touches SBUF: it is a set of HBM -> HBM DMAs whose source and destination
//! patterns walk the two views in the same element order (the DMA casts when the dtypes
//! differ). The joint row/column space of the two views gives up to 128 rows per DMA, cut
//! into runs where a row dimension wraps; columns are chunked so each DMA carries a
//! few hundred KiB and the chunks spread over the DMA queues.
//!
//! Deviation: a transposing copy is an element-strided DMA. On the real chip such DMAs run
//! well below peak bandwidth (trn2 has a dedicated DMA-transpose mode at up to 90%); our
//! simulator charges DMA by bytes, so this choice is optimistic for large transposes.

use super::rows::{joint_space, output_storage};
use super::{LowerCtx, lowering_error};
use crate::backend::tiling::{CopyTiling, CostModel};
use crate::error::CompileError;
use crate::kernel::{Kernel, KernelGraph, KernelOp};
use neuron_isa::ChipConfig;

/// Chooses rows and column chunks for a copy kernel.
pub fn choose(kg: &KernelGraph, k: &Kernel, cfg: &ChipConfig) -> Result<CopyTiling, CompileError> {
    let KernelOp::Copy { x } = &k.op else {
        return Err(lowering_error(k, "internal: not a copy kernel"));
    };
    let rc = joint_space(k, &[*x], true)?;
    let esize = output_storage(kg, k)?.1.size();
    let rows = rc.num_rows().clamp(1, cfg.partitions as usize);
    let outer = rc.outer_cols();
    let cm = CostModel::new(cfg);
    // Enough bytes per DMA to amortise its fixed cost over the partitions it spans.
    let want = (cm.dma_target_bytes_per_partition() * u64::from(cfg.partitions))
        / (rows as u64 * esize).max(1);
    Ok(CopyTiling {
        rows,
        cols: (want as usize).clamp(1, outer.max(1)),
    })
}

/// Lowers a copy kernel.
pub fn lower(ctx: &mut LowerCtx<'_>, t: &CopyTiling) -> Result<(), CompileError> {
    let KernelOp::Copy { x } = &ctx.kernel.op else {
        return Err(ctx.err("internal: not a copy kernel"));
    };
    let rc = joint_space(ctx.kernel, &[*x], true)?;
    let (xt, xd) = ctx.tensor(ctx.input(*x)?)?;
    let (ot, od) = ctx.tensor(&ctx.kernel.output)?;
    let rows = rc.num_rows();
    let outer = rc.outer_cols();
    let mut r0 = 0;
    while r0 < rows {
        let p = t.rows.min(rows - r0);
        let mut c0 = 0;
        while c0 < outer {
            let nc = t.cols.min(outer - c0);
            for run in rc.runs(r0, p) {
                let src = rc.hbm_ap(1, xt, xd, &run, c0, nc);
                let dst = rc.hbm_ap(0, ot, od, &run, c0, nc);
                ctx.load(dst, src);
            }
            c0 += nc;
        }
        r0 += p;
    }
    Ok(())
}
