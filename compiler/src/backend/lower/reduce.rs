//! Reduction kernels: sum, mean or max over some axes, then an epilogue.
//!
//! The view is permuted so that kept axes come first (rows, on partitions) and reduced axes
//! last (columns, along the free axis, at most four after merging); the DMA pattern does the
//! permutation. A row tile is reduced in column chunks with `TensorReduce`; chunk results
//! are combined with `TensorTensor`, so arbitrarily long rows stream through SBUF. Mean
//! multiplies by `1 / count` as the first step of the epilogue.
//!
//! Short rows are packed: when a row is under [`PACK_BYTES`] / 2 and there are many rows,
//! each partition takes `k` consecutive rows of the innermost row dimension (contiguous in
//! HBM for a dense tensor), so one DMA descriptor carries `k` rows instead of one (the DMA
//! model charges a fixed per-descriptor overhead, docs/chip-config.md), and one
//! `TensorReduce` over a `[k, cols]` free pattern yields `k` results per partition. The
//! order of each row's reduction is unchanged (same bits).
//!
//! A single long row (a reduction over every axis) is spread: its outermost column
//! dimension is split over up to 128 partitions, each partition reduces its slice in column
//! chunks as above, then a TensorE transpose brings the per-partition partials to one
//! partition (bit-exact for fp32) and one `TensorReduce` combines them. For a sum this
//! changes the fp32 order from one left-to-right chain to per-slice chains plus a sum of
//! the partials (a pairwise-like order, within the reference tolerance); max is exact.

use super::chain::{self, ChainTiles, selected};
use super::operands::{Class, RcOperand, classify, load_rc};
use super::{LowerCtx, chain_operands, lowering_error, on_chip_dtype};
use crate::backend::alloc::BufferReq;
use crate::backend::layout::{RowCols, Run, broadcast_view, cols, parts, shaped};
use crate::backend::tiling::RowTiling;
use crate::error::CompileError;
use crate::kernel::{EwOp, Kernel, KernelGraph, KernelOp, ReduceFn, View};
use neuron_isa::{AluOp, Ap, Dim, Dtype, Engine, Op, TensorId};

/// The shape facts of a reduce kernel.
#[derive(Debug, Clone)]
pub struct ReduceShape {
    /// Views: 0 = output, 1 = x, then epilogue operands; columns are the reduced axes.
    pub rc: RowCols,
    /// Output tensor and dtype.
    pub out: (TensorId, Dtype),
    /// The input.
    pub x: RcOperand,
    /// Epilogue operands.
    pub operands: Vec<RcOperand>,
    /// The reduction's ALU op.
    pub op: AluOp,
    /// The chain after the reduction (with the mean's scaling first).
    pub chain: Vec<EwOp>,
    /// Bytes per column of the streamed input (for DMA sizing).
    pub col_bytes: u64,
}

/// Analyses a reduce kernel.
pub fn analyze(kg: &KernelGraph, k: &Kernel) -> Result<ReduceShape, CompileError> {
    let KernelOp::Reduce {
        x,
        op,
        axes,
        epilogue,
    } = &k.op
    else {
        return Err(lowering_error(k, "internal: not a reduce kernel"));
    };
    let xv = k
        .inputs
        .get(*x)
        .ok_or_else(|| lowering_error(k, format!("operand index {x} out of range")))?;
    let r = xv.shape.len();
    if axes.iter().any(|&a| a >= r) || k.output.shape.len() != r {
        return Err(lowering_error(
            k,
            format!(
                "reduced axes {axes:?} do not fit input {:?} -> output {:?}",
                xv.shape, k.output.shape
            ),
        ));
    }
    let kept: Vec<usize> = (0..r).filter(|a| !axes.contains(a)).collect();
    let perm: Vec<usize> = kept.iter().chain(axes.iter()).copied().collect();
    let xp = xv
        .permuted(&perm)
        .ok_or_else(|| lowering_error(k, "internal: bad reduce permutation"))?;
    let shape = xp.shape.clone();
    let bcast = |v: &View| -> Result<View, CompileError> {
        let full = broadcast_view(v, &k.output.shape).ok_or_else(|| {
            lowering_error(
                k,
                format!("{:?} does not broadcast to {:?}", v.shape, k.output.shape),
            )
        })?;
        let p = full
            .permuted(&perm)
            .ok_or_else(|| lowering_error(k, "internal: bad reduce permutation"))?;
        broadcast_view(&p, &shape).ok_or_else(|| lowering_error(k, "internal: reduce broadcast"))
    };
    let opnds = chain_operands(epilogue);
    let mut views = vec![bcast(&k.output)?, xp];
    for &i in &opnds {
        let v = k
            .inputs
            .get(i)
            .ok_or_else(|| lowering_error(k, format!("operand index {i} out of range")))?;
        views.push(bcast(v)?);
    }
    let refs: Vec<&View> = views.iter().collect();
    let rc = RowCols::split_axes(&shape, &refs, axes.len());
    if rc.cols.len() > neuron_isa::MAX_FREE_DIMS {
        return Err(lowering_error(
            k,
            format!(
                "the reduced axes need {} free dimensions after merging, the hardware has {}",
                rc.cols.len(),
                neuron_isa::MAX_FREE_DIMS
            ),
        ));
    }
    let dtype = |t: crate::kernel::KTensorId| {
        kg.tensor(t)
            .map(|t| t.dtype)
            .ok_or_else(|| lowering_error(k, format!("tensor {t} does not exist")))
    };
    let x_d = dtype(xv.tensor)?;
    let x_op = RcOperand {
        input: *x,
        view: 1,
        class: Class::Full,
        tensor: TensorId(xv.tensor.0),
        dtype: x_d,
    };
    let mut operands = Vec::new();
    for (j, &i) in opnds.iter().enumerate() {
        let t = k.inputs[i].tensor;
        operands.push(RcOperand {
            input: i,
            view: 2 + j,
            class: classify(&rc, 2 + j, selected(epilogue, i)),
            tensor: TensorId(t.0),
            dtype: dtype(t)?,
        });
    }
    let count = rc.num_cols();
    let mut chain_ops = Vec::new();
    if *op == ReduceFn::Mean {
        chain_ops.push(EwOp::Scalar {
            op: crate::kernel::BinaryFn::Mul,
            value: 1.0 / count as f32,
            reversed: false,
        });
    }
    chain_ops.extend(epilogue.iter().cloned());
    Ok(ReduceShape {
        out: (TensorId(k.output.tensor.0), dtype(k.output.tensor)?),
        col_bytes: on_chip_dtype(x_d).size(),
        rc,
        x: x_op,
        operands,
        op: match op {
            ReduceFn::Sum | ReduceFn::Mean => AluOp::Add,
            ReduceFn::Max => AluOp::Max,
        },
        chain: chain_ops,
    })
}

/// Target bytes per partition of one packed input transfer (past the DMA efficiency
/// curve's 2 KiB knee, trainium.md section 3).
pub const PACK_BYTES: u64 = 4096;

/// Largest partition count of any chip config (an on-chip access pattern covers 1..=128).
const MAX_PARTITIONS: usize = 128;

/// Smallest all-axis reduction (bytes) worth spreading over partitions: below it the
/// transpose and the second reduce cost more than the single-partition stream.
const SPREAD_MIN_BYTES: u64 = 64 * 1024;

/// Upper bound on the rows packed per partition (the buffers are sized for it; the lowering
/// may use fewer). 1 = no packing.
pub fn pack_factor(s: &ReduceShape) -> usize {
    let row_bytes = s.rc.num_cols() as u64 * s.col_bytes;
    if !s.operands.is_empty()
        || s.rc.rows.is_empty()
        || s.rc.cols.len() >= neuron_isa::MAX_FREE_DIMS
        || row_bytes == 0
        || row_bytes * 2 > PACK_BYTES
    {
        return 1;
    }
    ((PACK_BYTES / row_bytes) as usize)
        .min(s.rc.inner_rows() / MAX_PARTITIONS)
        .max(1)
}

/// Partitions an all-axis reduction is spread over (a divisor of the outermost column
/// dimension, at most `max_parts`); 1 = not spread.
pub fn spread_parts(s: &ReduceShape, max_parts: usize) -> usize {
    let outer = s.rc.outer_cols();
    let bytes = s.rc.num_cols() as u64 * s.col_bytes;
    if s.rc.num_rows() != 1 || !s.operands.is_empty() || bytes < SPREAD_MIN_BYTES {
        return 1;
    }
    let d = (1..=max_parts.min(outer))
        .rev()
        .find(|d| outer % d == 0)
        .unwrap_or(1);
    if d * 4 < max_parts { 1 } else { d }
}

/// Buffers of a reduce kernel.
pub fn buffers(s: &ReduceShape, t: &RowTiling) -> Vec<BufferReq> {
    let inner = s.rc.inner_cols() as u64;
    let k = pack_factor(s) as u64;
    let packed = if k > 1 { k * s.rc.num_cols() as u64 } else { 0 };
    let in_elems = (t.cols as u64 * inner).max(packed);
    let mut v = vec![
        BufferReq::sbuf("in", in_elems * s.x.tile_dtype().size(), t.slots),
        // Running result, chunk result, work, spare: `k` columns each.
        BufferReq::sbuf("acc", 16 * k, t.slots),
        BufferReq::sbuf("out", 4 * k, t.slots),
    ];
    if chain::has_cast(&s.chain) {
        v.push(BufferReq::sbuf("cast", chain::CAST_BYTES * k, 1));
    }
    for o in &s.operands {
        v.push(BufferReq::sbuf(&format!("op{}", o.input), 4, t.slots));
    }
    if spread_parts(s, MAX_PARTITIONS) > 1 {
        // The per-partition partials transposed onto one partition.
        v.push(BufferReq::psum("tp", 4 * MAX_PARTITIONS as u64, 1));
    }
    v
}

/// Row tiles `(first row, partitions, rows per partition)`: packed tiles of `k` rows per
/// partition, then the fewer than `k` rows left of each innermost row dimension on one
/// partition (one row per partition when `k` is 1).
fn packed_tiles(rc: &RowCols, max_parts: usize, k: usize) -> Vec<(usize, usize, usize)> {
    let inner = rc.inner_rows().max(1);
    let mut out = Vec::new();
    let mut seg = 0;
    while seg < rc.num_rows() {
        let mut r = 0;
        while r < inner {
            let left = inner - r;
            if k > 1 && left >= k {
                let p = max_parts.min(left / k);
                out.push((seg + r, p, k));
                r += p * k;
            } else if k > 1 && left > 1 {
                // Fewer than `k` rows left: all of them on one partition.
                out.push((seg + r, 1, left));
                r += left;
            } else {
                let p = max_parts.min(left);
                out.push((seg + r, p, 1));
                r += p;
            }
        }
        seg += inner;
    }
    out
}

/// Reduces the chunk `x` along its free axis into the running result `total`: the
/// first chunk writes `total` directly, a later one reduces into `part` and folds it
/// into `total` (the chunks combine left to right).
fn reduce_chunk(ctx: &mut LowerCtx<'_>, op: AluOp, x: Ap, total: &Ap, part: &Ap, first: bool) {
    let dst = if first { total.clone() } else { part.clone() };
    ctx.push(
        Engine::Vector,
        Op::TensorReduce {
            dst,
            src: x,
            op,
            axes: 1,
            negate: false,
        },
    );
    if !first {
        ctx.push(
            Engine::Vector,
            Op::TensorTensor {
                dst: total.clone(),
                a: total.clone(),
                b: part.clone(),
                op,
            },
        );
    }
}

/// Lowers a reduce kernel.
pub fn lower(ctx: &mut LowerCtx<'_>, t: &RowTiling) -> Result<(), CompileError> {
    let s = analyze(ctx.kg, ctx.kernel)?;
    let d = spread_parts(&s, (ctx.cfg.partitions as usize).min(MAX_PARTITIONS));
    if d > 1 {
        return lower_spread(ctx, t, &s, d);
    }
    let rc = &s.rc;
    let (outer, inner) = (rc.outer_cols(), rc.inner_cols());
    let (inb, accb, outb) = (ctx.buf("in")?, ctx.buf("acc")?, ctx.buf("out")?);
    let cast = ctx.bufs.get("cast").cloned();
    // Rows per partition: at most the packing bound, balanced so that the tiles of an
    // innermost row dimension are equally full (4096 rows: 2 x 128 x 16, not 128 x 20 +
    // 76 x 20 + 16 x 1).
    let rows = t.rows.max(1);
    let kmax = pack_factor(&s).min(rc.inner_rows() / rows);
    let k = if outer <= t.cols && kmax > 1 {
        let n_tiles = rc.inner_rows().div_ceil(rows * kmax);
        rc.inner_rows().div_ceil(n_tiles * rows).min(kmax)
    } else {
        1
    };
    let mut in_slot = 0usize;
    for (slot, (r0, p, k)) in packed_tiles(rc, t.rows, k).into_iter().enumerate() {
        if k > 1 {
            lower_packed(ctx, &s, (slot, in_slot, r0, p, k), cast.as_ref())?;
            in_slot += 1;
            continue;
        }
        let pu = p as u32;
        let acc = accb.tile(slot, Dtype::F32, pu, 4);
        let (total, part, work) = (cols(&acc, 0, 1), cols(&acc, 1, 1), cols(&acc, 2, 1));
        let mut c0 = 0;
        while c0 < outer {
            let nc = t.cols.min(outer - c0);
            let x = inb.tile(in_slot, s.x.tile_dtype(), pu, (nc * inner) as u32);
            in_slot += 1;
            for run in rc.runs(r0, p) {
                ctx.load(
                    parts(&x, run.part, run.len),
                    rc.hbm_ap(1, s.x.tensor, s.x.dtype, &run, c0, nc),
                );
            }
            reduce_chunk(ctx, s.op, x, &total, &part, c0 == 0);
            c0 += nc;
        }
        let mut operands = vec![None; ctx.kernel.inputs.len()];
        for o in &s.operands {
            let buf = ctx.buf(&format!("op{}", o.input))?;
            operands[o.input] = Some(load_rc(ctx, rc, o, r0, p, 0, 1, 1, &buf, slot, None)?);
        }
        let tiles = ChainTiles {
            src: total,
            work,
            cast: cast.as_ref().map(|b| b.tile(slot, Dtype::F32, pu, 1)),
            out: outb.tile(slot, on_chip_dtype(s.out.1), pu, 1),
            operands: &operands,
        };
        let res = chain::apply(ctx, &s.chain, &tiles)?;
        for run in rc.runs(r0, p) {
            let mut dst = rc.hbm_ap(0, s.out.0, s.out.1, &run, 0, 1);
            dst.dims = vec![Dim { size: 1, stride: 1 }];
            ctx.store(dst, parts(&res, run.part, run.len));
        }
    }
    Ok(())
}

/// One packed tile: `p` partitions of `k` consecutive rows (within one innermost row
/// dimension) from row `r0`; one DMA in, one `TensorReduce` over `[k, cols]`, the chain
/// over `[p, k]`, one DMA out.
fn lower_packed(
    ctx: &mut LowerCtx<'_>,
    s: &ReduceShape,
    (slot, in_slot, r0, p, k): (usize, usize, usize, usize, usize),
    cast: Option<&crate::backend::alloc::Buf>,
) -> Result<(), CompileError> {
    let rc = &s.rc;
    let (inb, accb, outb) = (ctx.buf("in")?, ctx.buf("acc")?, ctx.buf("out")?);
    let (pu, ku, n) = (p as u32, k as u32, rc.num_cols());
    let run = Run {
        part: 0,
        len: pu,
        row: r0,
    };
    let x = inb.tile(in_slot, s.x.tile_dtype(), pu, (k * n) as u32);
    let mut src = rc.hbm_ap(1, s.x.tensor, s.x.dtype, &run, 0, rc.outer_cols());
    let rs = rc.row_stride(1);
    src.partition_stride = rs * k as i64;
    src.dims.insert(
        0,
        Dim {
            size: ku,
            stride: rs,
        },
    );
    ctx.load(x.clone(), src);
    let acc = accb.tile(slot, Dtype::F32, pu, 4 * ku);
    let (total, work) = (cols(&acc, 0, ku), cols(&acc, 2 * ku, ku));
    ctx.push(
        Engine::Vector,
        Op::TensorReduce {
            dst: total.clone(),
            src: shaped(&x, &[k, n]),
            op: s.op,
            axes: 1,
            negate: false,
        },
    );
    let operands = vec![None; ctx.kernel.inputs.len()];
    let tiles = ChainTiles {
        src: total,
        work,
        cast: cast.map(|b| b.tile(slot, Dtype::F32, pu, ku)),
        out: outb.tile(slot, on_chip_dtype(s.out.1), pu, ku),
        operands: &operands,
    };
    let res = chain::apply(ctx, &s.chain, &tiles)?;
    let mut dst = rc.hbm_ap(0, s.out.0, s.out.1, &run, 0, 1);
    let ors = rc.row_stride(0);
    dst.partition_stride = ors * k as i64;
    dst.dims = vec![Dim {
        size: ku,
        stride: ors,
    }];
    ctx.store(dst, res);
    Ok(())
}

/// An all-axis reduction spread over `d` partitions: partition `i` reduces outer columns
/// `i * q .. (i + 1) * q` (all inner ones) in chunks, then the `d` partials are transposed
/// onto partition 0 and reduced there.
fn lower_spread(
    ctx: &mut LowerCtx<'_>,
    t: &RowTiling,
    s: &ReduceShape,
    d: usize,
) -> Result<(), CompileError> {
    let rc = &s.rc;
    let (outer, inner) = (rc.outer_cols(), rc.inner_cols());
    let q = outer / d;
    let (inb, accb, outb, tpb) = (
        ctx.buf("in")?,
        ctx.buf("acc")?,
        ctx.buf("out")?,
        ctx.buf("tp")?,
    );
    let du = d as u32;
    let acc = accb.tile(0, Dtype::F32, du, 4);
    let (total, part, work, fin) = (
        cols(&acc, 0, 1),
        cols(&acc, 1, 1),
        cols(&acc, 2, 1),
        cols(&acc, 3, 1),
    );
    let run = Run {
        part: 0,
        len: du,
        row: 0,
    };
    let slice_stride = q as i64 * rc.col_stride(1, 0);
    let (mut c0, mut in_slot) = (0, 0usize);
    while c0 < q {
        let nc = t.cols.min(q - c0);
        let x = inb.tile(in_slot, s.x.tile_dtype(), du, (nc * inner) as u32);
        in_slot += 1;
        let mut src = rc.hbm_ap(1, s.x.tensor, s.x.dtype, &run, c0, nc);
        src.partition_stride = slice_stride;
        ctx.load(x.clone(), src);
        reduce_chunk(ctx, s.op, x, &total, &part, c0 == 0);
        c0 += nc;
    }
    let tp = tpb.tile(0, Dtype::F32, 1, du);
    ctx.push(
        Engine::Tensor,
        Op::Transpose {
            dst: tp.clone(),
            src: total,
        },
    );
    let fin = parts(&fin, 0, 1);
    ctx.push(
        Engine::Vector,
        Op::TensorReduce {
            dst: fin.clone(),
            src: tp,
            op: s.op,
            axes: 1,
            negate: false,
        },
    );
    let cast = ctx.bufs.get("cast").cloned();
    let operands = vec![None; ctx.kernel.inputs.len()];
    let tiles = ChainTiles {
        src: fin,
        work: parts(&work, 0, 1),
        cast: cast.map(|b| b.tile(0, Dtype::F32, 1, 1)),
        out: outb.tile(0, on_chip_dtype(s.out.1), 1, 1),
        operands: &operands,
    };
    let res = chain::apply(ctx, &s.chain, &tiles)?;
    let one = Run {
        part: 0,
        len: 1,
        row: 0,
    };
    let mut dst = rc.hbm_ap(0, s.out.0, s.out.1, &one, 0, 1);
    dst.dims = vec![Dim { size: 1, stride: 1 }];
    ctx.store(dst, res);
    Ok(())
}
