//! Gather kernels (embedding lookups): `out[i.., :] = epilogue(table[indices[i..], :])`.
//!
//! The output, the indices and the epilogue operands are flattened jointly into
//! `[rows, cols]` with one row per index ([`RowCols::split_axes`]: the index axes are the
//! rows, the table row's axes the columns). The table joins the same space as a view with
//! stride 0 along the rows, so its columns are cut exactly like the output's. Per tile of up
//! to 128 indices:
//! 1. one DMA brings the tile's indices into a `[P, 1]` I32 column (it converts i64 ids
//!    exactly; an id beyond the i32 range saturates and is then out of range);
//! 2. per column chunk, one `dma_gather` copies row `indices[p]` of the HBM table into
//!    partition `p` (the table pattern's partition count is the table's row count, which
//!    has no 128 limit; the simulator stops with an error naming an index outside it);
//! 3. the epilogue runs on the gathered rows (operands loaded as in elementwise kernels);
//! 4. one DMA per tile stores the result (it casts to the output dtype, so a gather without
//!    epilogue stores the gathered rows directly).
//!
//! The index column of tile `i+1` loads and its rows gather while tile `i` computes, through
//! rotating buffer slots.

use super::chain::{self, ChainTiles};
use super::operands::{RcOperand, RowOperands, loaded_once, rc_buffers};
use super::rows::{broadcast_input, chain_rc_operands};
use super::{LowerCtx, chain_operands, kernel_input, lowering_error, on_chip_dtype, view_storage};
use crate::backend::alloc::BufferReq;
use crate::backend::layout::{RowCols, Run, parts};
use crate::backend::tiling::RowTiling;
use crate::error::CompileError;
use crate::kernel::{EwOp, Kernel, KernelGraph, KernelOp, View};
use neuron_isa::{Ap, Dim, Dtype, MAX_FREE_DIMS, TensorId};

/// Index of the output's view in [`GatherShape::rc`].
const OUT: usize = 0;
/// Index of the table's view (stride 0 along the rows).
const TABLE: usize = 1;
/// Index of the indices' view (stride 0 along the columns).
const INDICES: usize = 2;
/// Index of the first epilogue operand's view.
const FIRST_OPERAND: usize = 3;

/// The shape facts of a gather kernel.
#[derive(Debug, Clone)]
pub struct GatherShape {
    /// Views: output, table, indices, then the epilogue operands.
    pub rc: RowCols,
    /// Output tensor and storage dtype.
    pub out: (TensorId, Dtype),
    /// Table tensor and storage dtype.
    pub table: (TensorId, Dtype),
    /// Rows of the table (the indexed axis): the gather pattern's partition count.
    pub table_rows: u32,
    /// Elements between consecutive table rows.
    pub table_row_stride: i64,
    /// Indices tensor and storage dtype.
    pub indices: (TensorId, Dtype),
    /// Operands of the epilogue.
    pub operands: Vec<RcOperand>,
    /// The epilogue.
    pub ops: Vec<EwOp>,
    /// Intermediate dtype.
    pub act_dtype: Dtype,
    /// Largest tile element size times the elements per outer column (for DMA sizing).
    pub col_bytes: u64,
}

impl GatherShape {
    /// Elements per outer column (the product of the inner column dimensions).
    pub fn inner(&self) -> usize {
        self.rc.inner_cols()
    }

    /// Outer columns per row.
    pub fn outer(&self) -> usize {
        self.rc.outer_cols()
    }

    /// The on-chip dtype of gathered rows.
    fn rows_dtype(&self) -> Dtype {
        on_chip_dtype(self.table.1)
    }
}

/// Analyses a gather kernel.
pub fn analyze(kg: &KernelGraph, k: &Kernel) -> Result<GatherShape, CompileError> {
    let KernelOp::Gather {
        table,
        indices,
        epilogue,
    } = &k.op
    else {
        return Err(lowering_error(k, "internal: not a gather kernel"));
    };
    let (tv, iv) = (kernel_input(k, *table)?, kernel_input(k, *indices)?);
    let shape = &k.output.shape;
    let r = iv.shape.len();
    let Some((&rows, row_shape)) = tv.shape.split_first() else {
        return Err(lowering_error(k, "gather table has rank 0"));
    };
    if shape.len() != r + row_shape.len() {
        return Err(lowering_error(
            k,
            format!(
                "output shape {shape:?} is not indices {:?} followed by table rows {row_shape:?}",
                iv.shape
            ),
        ));
    }
    let table_rows = u32::try_from(rows).map_err(|_| {
        lowering_error(
            k,
            format!("the table has {rows} rows, more than a dma pattern can address"),
        )
    })?;
    // The table and the indices seen from the output's iteration space.
    let table_b = View {
        tensor: tv.tensor,
        offset: tv.offset,
        shape: shape.clone(),
        strides: std::iter::repeat_n(0, r)
            .chain(tv.strides[1..].iter().copied())
            .collect(),
    };
    let idx_b = View {
        tensor: iv.tensor,
        offset: iv.offset,
        shape: shape.clone(),
        strides: iv
            .strides
            .iter()
            .copied()
            .chain(std::iter::repeat_n(0, row_shape.len()))
            .collect(),
    };
    let opnds = chain_operands(epilogue);
    let mut views = vec![k.output.clone(), table_b, idx_b];
    for &i in &opnds {
        views.push(broadcast_input(k, i)?);
    }
    let refs: Vec<&View> = views.iter().collect();
    let rc = RowCols::split_axes(shape, &refs, row_shape.len());
    if rc.cols.len() > MAX_FREE_DIMS {
        return Err(lowering_error(
            k,
            format!(
                "a table row needs {} free dimensions after merging, the hardware has {MAX_FREE_DIMS}",
                rc.cols.len()
            ),
        ));
    }
    let operands = chain_rc_operands(kg, k, &rc, &opnds, FIRST_OPERAND, epilogue)?;
    let out = view_storage(kg, k, &k.output, "output")?;
    let table = view_storage(kg, k, tv, "table")?;
    let inner = rc.inner_cols() as u64;
    let elem = [on_chip_dtype(table.1).size(), out.1.size(), 4]
        .into_iter()
        .max()
        .unwrap_or(4);
    Ok(GatherShape {
        out,
        table,
        table_rows,
        table_row_stride: tv.strides[0] as i64,
        indices: view_storage(kg, k, iv, "indices")?,
        operands,
        ops: epilogue.clone(),
        act_dtype: k.act_dtype,
        col_bytes: elem * inner.max(1),
        rc,
    })
}

/// Buffers of a gather kernel.
pub fn buffers(s: &GatherShape, t: &RowTiling) -> Vec<BufferReq> {
    let c = (t.cols * s.inner()) as u64;
    let mut v = vec![
        BufferReq::sbuf("idx", 4, t.slots),
        BufferReq::sbuf("rows", c * s.rows_dtype().size(), t.slots),
    ];
    if !s.ops.is_empty() {
        v.push(BufferReq::sbuf("work", c * s.act_dtype.size(), 2));
        v.push(BufferReq::sbuf(
            "out",
            c * on_chip_dtype(s.out.1).size(),
            t.slots,
        ));
    }
    if chain::has_cast(&s.ops) {
        v.push(BufferReq::sbuf("cast", c * chain::CAST_BYTES, 1));
    }
    v.extend(rc_buffers(&s.operands, c, s.rc.cols.len() <= 1, |o| {
        if loaded_once(o, &s.rc, t) { 1 } else { t.slots }
    }));
    v
}

/// The HBM pattern of the indices of `run`: one element per partition.
fn indices_ap(s: &GatherShape, run: &Run) -> Ap {
    let (tensor, dtype) = s.indices;
    let mut ap = s.rc.hbm_ap(INDICES, tensor, dtype, run, 0, 1);
    ap.dims = vec![Dim { size: 1, stride: 1 }];
    ap
}

/// The HBM pattern of the whole table for outer columns `c0 .. c0 + nc`: every table row
/// is a partition (the gather picks one per destination partition).
fn table_ap(s: &GatherShape, c0: usize, nc: usize) -> Ap {
    let (tensor, dtype) = s.table;
    let first = Run {
        part: 0,
        len: 1,
        row: 0,
    };
    let mut ap = s.rc.hbm_ap(TABLE, tensor, dtype, &first, c0, nc);
    ap.partitions = s.table_rows;
    ap.partition_stride = s.table_row_stride;
    ap
}

/// Lowers a gather kernel.
pub fn lower(ctx: &mut LowerCtx<'_>, t: &RowTiling) -> Result<(), CompileError> {
    let s = analyze(ctx.kg, ctx.kernel)?;
    let rc = &s.rc;
    let (outer, inner) = (s.outer(), s.inner());
    let (idxb, rowsb) = (ctx.buf("idx")?, ctx.buf("rows")?);
    let (work, outb) = if s.ops.is_empty() {
        (None, None)
    } else {
        (Some(ctx.buf("work")?), Some(ctx.buf("out")?))
    };
    let cast = ctx.bufs.get("cast").cloned();
    let n_in = ctx.kernel.inputs.len();
    let mut opnds = RowOperands::new(ctx, rc, &s.operands, n_in, t.rows, |o| {
        loaded_once(o, rc, t)
    })?;
    let mut slot = 0usize;
    for (tile, (r0, p)) in rc.tiles(t.rows).into_iter().enumerate() {
        let idx = idxb.tile(tile, Dtype::I32, p as u32, 1);
        for run in rc.runs(r0, p) {
            ctx.load(parts(&idx, run.part, run.len), indices_ap(&s, &run));
        }
        let mut c0 = 0;
        while c0 < outer {
            let nc = t.cols.min(outer - c0);
            let free = (nc * inner) as u32;
            let gathered = rowsb.tile(slot, s.rows_dtype(), p as u32, free);
            ctx.gather(gathered.clone(), table_ap(&s, c0, nc), idx.clone());
            let res = match (&work, &outb) {
                (Some(work), Some(outb)) => {
                    let operands = opnds.load(ctx, r0, p, c0, nc, slot)?;
                    let tiles = ChainTiles {
                        src: gathered,
                        work: work.tile(slot, s.act_dtype, p as u32, free),
                        cast: cast.as_ref().map(|c| c.tile(0, Dtype::F32, p as u32, free)),
                        out: outb.tile(slot, on_chip_dtype(s.out.1), p as u32, free),
                        operands: &operands,
                    };
                    chain::apply(ctx, &s.ops, &tiles)?
                }
                _ => gathered,
            };
            for run in rc.runs(r0, p) {
                let dst = rc.hbm_ap(OUT, s.out.0, s.out.1, &run, c0, nc);
                ctx.store(dst, parts(&res, run.part, run.len));
            }
            slot += 1;
            c0 += nc;
        }
    }
    Ok(())
}
