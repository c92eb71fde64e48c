//! Loading the tensor operands of elementwise chains (biases, residuals, masks, gammas).
//!
//! An operand is a view broadcast to the kernel's output shape. What it looks like on a
//! tile of rows decides how it is loaded:
//! - [`Class::Full`]: different values everywhere; one DMA per row run into a full tile;
//! - [`Class::RowBcast`]: the same row for every row (a bias `[N]`); one DMA with partition
//!   stride 0 copies that row into every partition, and when the kernel has a single column
//!   chunk it is loaded once per kernel and stays resident;
//! - [`Class::Column`]: one value per row (`[M, 1]`); loaded as `[P, 1]` and used as a
//!   per-partition scalar operand, never expanded;
//! - [`Class::Scalar`]: one value for everything; `[P, 1]` with partition stride 0.
//!
//! [`RowOperands`] holds a row-tiled kernel's operand tiles (loaded once or per tile);
//! [`ResidentRows`] holds the rows that batched kernels (matmul, attention) broadcast on
//! chip and keep for as long as the row stays the same.

use super::chain::OpTile;
use super::{LowerCtx, on_chip_dtype};
use crate::backend::alloc::Buf;
use crate::backend::alloc::BufferReq;
use crate::backend::layout::{Mat, RowCols, Run, cols, parts};
use crate::backend::tiling::RowTiling;
use crate::error::CompileError;
use crate::kernel::View;
use neuron_isa::{Ap, Dim, Dtype, Engine, Op, TensorId};

/// How an operand varies over a tile.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// Varies along rows and columns.
    Full,
    /// Varies along columns only.
    RowBcast,
    /// Varies along rows only.
    Column,
    /// Constant.
    Scalar,
}

impl Class {
    /// From whether the operand moves along rows and along columns.
    pub fn of(moves_rows: bool, moves_cols: bool) -> Class {
        match (moves_rows, moves_cols) {
            (true, true) => Class::Full,
            (false, true) => Class::RowBcast,
            (true, false) => Class::Column,
            (false, false) => Class::Scalar,
        }
    }

    /// Whether the operand is loaded as a `[P, 1]` column.
    pub fn is_column(self) -> bool {
        matches!(self, Class::Column | Class::Scalar)
    }
}

/// One operand of a row-tiled kernel.
#[derive(Debug, Clone)]
pub struct RcOperand {
    /// Kernel input index.
    pub input: usize,
    /// Index of its view in the [`RowCols`].
    pub view: usize,
    /// How it varies.
    pub class: Class,
    /// HBM tensor and storage dtype.
    pub tensor: TensorId,
    /// Storage dtype.
    pub dtype: Dtype,
}

impl RcOperand {
    /// The on-chip dtype of its tiles.
    pub fn tile_dtype(&self) -> Dtype {
        on_chip_dtype(self.dtype)
    }
}

/// Classifies view `v` of `rc`. Operands of `Select` (`force_full`) are always loaded as
/// full tiles (the select instruction has no broadcast operand form).
pub fn classify(rc: &RowCols, v: usize, force_full: bool) -> Class {
    let s = &rc.views[v].strides;
    let nr = rc.rows.len();
    let rows = s[..nr].iter().any(|&x| x != 0);
    let cols = s[nr..].iter().any(|&x| x != 0);
    if force_full {
        return Class::Full;
    }
    Class::of(rows, cols)
}

/// Loads operand `op` for rows `r0 .. r0 + p` and outer columns `c0 .. c0 + nc` into slot
/// `slot` of `buf`. `inner` is the number of elements per outer column (the product of the
/// inner column dimensions).
#[allow(clippy::too_many_arguments)]
pub fn load_rc(
    ctx: &mut LowerCtx<'_>,
    rc: &RowCols,
    op: &RcOperand,
    r0: usize,
    p: usize,
    c0: usize,
    nc: usize,
    inner: usize,
    buf: &Buf,
    slot: usize,
    bcast: Option<&mut Broadcaster>,
) -> Result<OpTile, CompileError> {
    let d = op.tile_dtype();
    if let (Class::RowBcast, Some(bc)) = (op.class, bcast) {
        let free = (nc * inner) as u32;
        let dst = buf.tile(slot, Dtype::F32, p as u32, free);
        let run = Run {
            part: 0,
            len: 1,
            row: r0,
        };
        let mut src = rc.hbm_ap(op.view, op.tensor, op.dtype, &run, c0, nc);
        if inner == 1 {
            src.dims.truncate(1);
        }
        // A row that repeats along a packed dimension is broadcast once, compact.
        if let Some(c) = CompactLoad::of(&src.dims) {
            let compact = buf.tile(slot, Dtype::F32, p as u32, c.elems);
            bc.broadcast(ctx, &Ap { dims: c.src, ..src }, &compact);
            return Ok(OpTile::Full(Ap {
                dims: c.read,
                ..compact
            }));
        }
        bc.broadcast(ctx, &src, &dst);
        return Ok(OpTile::Full(dst));
    }
    match op.class {
        Class::Column | Class::Scalar => {
            let dst = buf.tile(slot, d, p as u32, 1);
            for run in rows_for(rc, op.class, r0, p) {
                let mut src = rc.hbm_ap(op.view, op.tensor, op.dtype, &run, c0, 1);
                src.dims = vec![Dim { size: 1, stride: 1 }];
                if op.class == Class::Scalar {
                    src.partitions = p as u32;
                    src.partition_stride = 0;
                }
                ctx.load(parts(&dst, run.part, run.len), src);
            }
            Ok(OpTile::Column(dst))
        }
        Class::Full | Class::RowBcast => {
            let free = (nc * inner) as u32;
            let dst = buf.tile(slot, d, p as u32, free);
            let loads = rows_for(rc, op.class, r0, p).into_iter().map(|run| {
                let mut src = rc.hbm_ap(op.view, op.tensor, op.dtype, &run, c0, nc);
                if inner == 1 {
                    // A caller that wants one element per outer column (reduce epilogues).
                    src.dims.truncate(1);
                }
                if op.class == Class::RowBcast {
                    src.partitions = p as u32;
                    src.partition_stride = 0;
                }
                (run, src)
            });
            let loads: Vec<(Run, Ap)> = loads.collect();
            Ok(OpTile::Full(CompactLoad::load_runs(ctx, &dst, loads)))
        }
    }
}

/// A load whose source repeats values along some free dimensions (stride 0: a `[M, 1]`
/// column broadcast along a packed row, a bias row repeated for each packed row), split
/// into what is fetched and how it is read back.
///
/// Loading such a pattern as is makes every element its own DMA descriptor (docs/isa.md,
/// DMA cost: element-strided patterns), so only the dimensions that move are loaded, into a
/// compact tile, and the on-chip reader steps 0 over the others (on-chip patterns may
/// repeat elements: an SBUF read with a zero stride costs what a unit-stride read costs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompactLoad {
    /// The source without its repeated dimensions (at least one dimension).
    pub src: Vec<Dim>,
    /// Elements per partition of the compact tile.
    pub elems: u32,
    /// The read pattern over the compact tile, dimension for dimension like the source.
    pub read: Vec<Dim>,
}

impl CompactLoad {
    /// The split of source dimensions `dims`, or `None` when no dimension repeats.
    pub fn of(dims: &[Dim]) -> Option<CompactLoad> {
        let repeats = |d: &Dim| d.stride == 0 && d.size > 1;
        if !dims.iter().any(repeats) {
            return None;
        }
        let mut read = dims.to_vec();
        let mut stride = 1i64;
        for d in read.iter_mut().rev() {
            if repeats(d) {
                continue;
            }
            d.stride = stride;
            stride *= i64::from(d.size);
        }
        let mut src: Vec<Dim> = dims.iter().filter(|d| !repeats(d)).copied().collect();
        if src.is_empty() {
            src.push(Dim { size: 1, stride: 1 });
        }
        Some(CompactLoad {
            src,
            elems: u32::try_from(stride).unwrap_or(u32::MAX),
            read,
        })
    }

    /// Loads rows `run` of `src` (an HBM pattern over the full dimensions) into the compact
    /// form of `tile` (a flat `[p, n]` tile); returns the pattern reading the whole tile.
    pub fn load_runs(
        ctx: &mut LowerCtx<'_>,
        tile: &Ap,
        loads: impl IntoIterator<Item = (Run, Ap)>,
    ) -> Ap {
        let mut read: Option<Ap> = None;
        for (run, src) in loads {
            match CompactLoad::of(&src.dims) {
                Some(c) => {
                    let dst = Ap {
                        dims: vec![Dim {
                            size: c.elems,
                            stride: 1,
                        }],
                        ..tile.clone()
                    };
                    ctx.load(parts(&dst, run.part, run.len), Ap { dims: c.src, ..src });
                    read = Some(Ap {
                        dims: c.read,
                        ..tile.clone()
                    });
                }
                None => {
                    ctx.load(parts(tile, run.part, run.len), src);
                }
            }
        }
        read.unwrap_or_else(|| tile.clone())
    }
}

/// The runs to load: broadcast-over-rows operands need one DMA for the whole tile.
fn rows_for(rc: &RowCols, class: Class, r0: usize, p: usize) -> Vec<Run> {
    match class {
        Class::RowBcast | Class::Scalar => vec![Run {
            part: 0,
            len: p as u32,
            row: r0,
        }],
        Class::Full | Class::Column => rc.runs(r0, p),
    }
}

/// Loads the `[mr, nn]` block at `(m0, n0)` of matrix operand `mat` (classified by its
/// strides) into slot `slot` of `buf`.
#[allow(clippy::too_many_arguments)]
pub fn load_mat(
    ctx: &mut LowerCtx<'_>,
    mat: &Mat,
    force_full: bool,
    m0: usize,
    mr: usize,
    n0: usize,
    nn: usize,
    buf: &Buf,
    slot: usize,
) -> OpTile {
    let class = mat_class(mat, force_full);
    let d = on_chip_dtype(mat.dtype);
    if class.is_column() {
        let dst = buf.tile(slot, d, mr as u32, 1);
        ctx.load(dst.clone(), mat.rows_ap(m0, mr, n0, 1));
        OpTile::Column(dst)
    } else {
        let dst = buf.tile(slot, d, mr as u32, nn as u32);
        ctx.load(dst.clone(), mat.rows_ap(m0, mr, n0, nn));
        OpTile::Full(dst)
    }
}

/// The class of a matrix operand.
pub fn mat_class(mat: &Mat, force_full: bool) -> Class {
    if force_full {
        Class::Full
    } else {
        Class::of(mat.rs != 0 && mat.rows > 1, mat.cs != 0 && mat.cols > 1)
    }
}

/// Whether matrix operand `v` (a view shaped `batch ++ [rows, cols]`) is one row for every
/// output row (a bias, a mask shared by every query). Batches only move a matrix's offset,
/// so the answer holds for every batch.
pub fn is_row_bcast(v: &View, force_full: bool) -> bool {
    let m = Mat::of_batch(v, &[], 0, TensorId(0), Dtype::F32);
    mat_class(&m, force_full) == Class::RowBcast
}

/// The matrices of batch `bi` of a batched kernel's operands `(kernel input, view shaped
/// batch ++ [rows, cols], force_full)`, as `(kernel input, matrix, force_full)`.
pub fn batch_operands(
    ctx: &LowerCtx<'_>,
    ops: &[(usize, View, bool)],
    batch: &[usize],
    bi: usize,
) -> Result<Vec<(usize, Mat, bool)>, CompileError> {
    ops.iter()
        .map(|(i, v, full)| {
            let (tensor, dtype) = ctx.tensor(v)?;
            Ok((*i, Mat::of_batch(v, batch, bi, tensor, dtype), *full))
        })
        .collect()
}

/// Row-broadcast operands of a batched kernel (biases, masks, dequantization scales) kept
/// on chip as fp32 `[partitions, cols]` tiles, by operand index, each with the storage
/// offset its row came from: a row is broadcast again only when a batch moves to another.
pub struct ResidentRows {
    rows: Vec<Option<(i64, Ap)>>,
    bc: Option<Broadcaster>,
    partitions: u32,
    cols: usize,
}

impl ResidentRows {
    /// Room for operand indices `0 .. count`, broadcast through PSUM buffer `psum` when the
    /// kernel planned a broadcaster (its `bc_ones` buffer exists).
    pub fn new(
        ctx: &LowerCtx<'_>,
        psum: &str,
        count: usize,
        partitions: u32,
        cols: usize,
    ) -> Result<ResidentRows, CompileError> {
        let bc = match ctx.bufs.get("bc_ones") {
            Some(_) => Some(Broadcaster::new(ctx, psum)?),
            None => None,
        };
        Ok(ResidentRows {
            rows: vec![None; count],
            bc,
            partitions,
            cols,
        })
    }

    /// The number of operand indices covered.
    pub fn count(&self) -> usize {
        self.rows.len()
    }

    /// Makes the first row of `mat` resident as operand `i` in buffer `buf`, unless it
    /// already is (the same offset).
    pub fn ensure(
        &mut self,
        ctx: &mut LowerCtx<'_>,
        i: usize,
        mat: &Mat,
        buf: &str,
    ) -> Result<(), CompileError> {
        if self.rows[i]
            .as_ref()
            .is_some_and(|(off, _)| *off == mat.offset)
        {
            return Ok(());
        }
        let Some(b) = self.bc.as_mut() else {
            return Err(ctx.err(format!("internal: no broadcast buffers for '{buf}'")));
        };
        let tile = ctx
            .buf(buf)?
            .tile(0, Dtype::F32, self.partitions, self.cols as u32);
        b.broadcast(ctx, &mat.rows_ap(0, 1, 0, self.cols), &tile);
        self.rows[i] = Some((mat.offset, tile));
        Ok(())
    }

    /// [`ResidentRows::ensure`] for each row-broadcast operand of `ops` (buffer `op{i}`).
    pub fn ensure_row_bcasts(
        &mut self,
        ctx: &mut LowerCtx<'_>,
        ops: &[(usize, Mat, bool)],
    ) -> Result<(), CompileError> {
        for (i, mat, full) in ops {
            if mat_class(mat, *full) == Class::RowBcast {
                self.ensure(ctx, *i, mat, &format!("op{i}"))?;
            }
        }
        Ok(())
    }

    /// Columns `c0 .. c0 + n` of resident operand `i` for a tile of `p` rows.
    pub fn tile(&self, i: usize, p: u32, c0: usize, n: usize) -> Option<OpTile> {
        let (_, tile) = self.rows.get(i)?.as_ref()?;
        Some(OpTile::Full(Ap {
            partitions: p,
            ..cols(tile, c0 as u32, n as u32)
        }))
    }
}

/// Whether operand `o` of a row-tiled kernel is loaded once per kernel: the same row for
/// every tile, and tiles of `t.cols` outer columns take whole rows (one column chunk).
pub fn loaded_once(o: &RcOperand, rc: &RowCols, t: &RowTiling) -> bool {
    o.class == Class::RowBcast && t.cols >= rc.outer_cols()
}

/// The operand tiles of a row-tiled kernel, by kernel input index. The operands picked as
/// resident are loaded once, up front, into slot 0 of their buffers; the others per tile.
pub struct RowOperands<'s> {
    rc: &'s RowCols,
    ops: &'s [RcOperand],
    fixed: Vec<Option<OpTile>>,
    bc: Option<Broadcaster>,
}

impl<'s> RowOperands<'s> {
    /// The operands `ops` of space `rc`, in tile vectors of `len` entries (the kernel's
    /// inputs and any synthetic operands the caller adds later). Loads the operands
    /// `resident` picks, for tiles of at most `max_rows` rows and whole rows of columns.
    pub fn new(
        ctx: &mut LowerCtx<'_>,
        rc: &'s RowCols,
        ops: &'s [RcOperand],
        len: usize,
        max_rows: usize,
        resident: impl Fn(&RcOperand) -> bool,
    ) -> Result<RowOperands<'s>, CompileError> {
        let mut bc = rc_broadcaster(ctx, ops)?;
        let mut fixed: Vec<Option<OpTile>> = vec![None; len];
        let (outer, inner) = (rc.outer_cols(), rc.inner_cols());
        for o in ops {
            if resident(o) {
                let buf = ctx.buf(&format!("op{}", o.input))?;
                fixed[o.input] = Some(load_rc(
                    ctx,
                    rc,
                    o,
                    0,
                    max_rows.min(rc.num_rows()),
                    0,
                    outer,
                    inner,
                    &buf,
                    0,
                    bc.as_mut(),
                )?);
            }
        }
        Ok(RowOperands { rc, ops, fixed, bc })
    }

    /// The operand tiles of rows `r0 .. r0 + p` and outer columns `c0 .. c0 + nc`: the
    /// resident ones cut to `p` rows, the others loaded into slot `slot`.
    pub fn load(
        &mut self,
        ctx: &mut LowerCtx<'_>,
        r0: usize,
        p: usize,
        c0: usize,
        nc: usize,
        slot: usize,
    ) -> Result<Vec<Option<OpTile>>, CompileError> {
        let mut operands = self.fixed.clone();
        let inner = self.rc.inner_cols();
        for o in self.ops {
            match &self.fixed[o.input] {
                Some(OpTile::Full(ap)) => {
                    operands[o.input] = Some(OpTile::Full(Ap {
                        partitions: p as u32,
                        ..ap.clone()
                    }));
                }
                Some(OpTile::Column(_)) => {}
                None => {
                    let buf = ctx.buf(&format!("op{}", o.input))?;
                    operands[o.input] = Some(load_rc(
                        ctx,
                        self.rc,
                        o,
                        r0,
                        p,
                        c0,
                        nc,
                        inner,
                        &buf,
                        slot,
                        self.bc.as_mut(),
                    )?);
                }
            }
        }
        Ok(operands)
    }
}

/// A `[p, 1]` column tile pattern (helper for statistics tiles).
pub fn column(buf: &Buf, slot: usize, p: u32) -> Ap {
    buf.tile(slot, Dtype::F32, p, 1)
}

/// Columns per TensorE broadcast step (one PSUM bank of fp32).
pub const BCAST_COLS: usize = 512;

/// Broadcasts rows to all partitions on chip instead of with partition-broadcast DMAs.
///
/// A DMA with partition stride 0 reads the same HBM row once per partition (128x the
/// bytes); here the row is read once into partition 0 and TensorE multiplies it by a column
/// of ones (`dst[p, n] = ones[0, p] * row[0, n]`, an fp32 matmul with K = 1, exact), then a
/// copy brings the PSUM result to SBUF. This costs a few TensorE cycles per 512 columns and
/// saves HBM bandwidth, which bounds most small kernels.
pub struct Broadcaster {
    ones: Buf,
    row: Buf,
    psum: Buf,
    ready: bool,
    slot: usize,
}

impl Broadcaster {
    /// The buffers a broadcaster needs for rows of `row_elems` elements; `chunked` rows
    /// (a single contiguous free dimension) are staged 512 columns at a time. The PSUM
    /// buffer is named by the caller (it may share one the kernel uses later).
    pub fn buffers(row_elems: usize, chunked: bool) -> Vec<BufferReq> {
        let staged = if chunked {
            row_elems.min(BCAST_COLS)
        } else {
            row_elems
        };
        vec![
            BufferReq::sbuf("bc_ones", 128 * 4, 1),
            BufferReq::sbuf("bc_row", staged as u64 * 4, 2),
        ]
    }

    /// The broadcaster of the current kernel, using PSUM buffer `psum`.
    pub fn new(ctx: &LowerCtx<'_>, psum: &str) -> Result<Broadcaster, CompileError> {
        Ok(Broadcaster {
            ones: ctx.buf("bc_ones")?,
            row: ctx.buf("bc_row")?,
            psum: ctx.buf(psum)?,
            ready: false,
            slot: 0,
        })
    }

    /// Fills `dst` (an SBUF tile `[p, n]`, single free dimension) with the row `src` (an
    /// HBM pattern whose first row is taken, `n` elements per row) on every partition.
    pub fn broadcast(&mut self, ctx: &mut LowerCtx<'_>, src: &Ap, dst: &Ap) {
        let p = dst.partitions;
        if !self.ready {
            let ones = self.ones.tile(0, Dtype::F32, 1, 128);
            ctx.push(
                Engine::Vector,
                Op::Memset {
                    dst: ones,
                    value: 1.0,
                },
            );
            self.ready = true;
        }
        let ones = self.ones.tile(0, Dtype::F32, 1, p);
        let n = src.free_elems() as usize;
        let row1 = Ap {
            partitions: 1,
            partition_stride: 0,
            ..src.clone()
        };
        let chunked = src.dims.len() == 1;
        let staged_whole = if chunked {
            None
        } else {
            let t = self.row.tile(self.slot, Dtype::F32, 1, n as u32);
            self.slot += 1;
            ctx.load(t.clone(), row1.clone());
            Some(t)
        };
        let bank_cols = (self.psum.slot_bytes / 4).max(1) as usize;
        let step = BCAST_COLS.min(bank_cols);
        let mut c0 = 0;
        while c0 < n {
            let len = step.min(n - c0);
            let moving = match &staged_whole {
                Some(t) => cols(t, c0 as u32, len as u32),
                None => {
                    let t = self.row.tile(self.slot, Dtype::F32, 1, len as u32);
                    self.slot += 1;
                    let d = &src.dims[0];
                    let part = Ap {
                        offset: row1.offset
                            + (c0 as i64 * d.stride).max(0) as u64 * src.dtype.size(),
                        dims: vec![Dim {
                            size: len as u32,
                            stride: d.stride,
                        }],
                        ..row1.clone()
                    };
                    ctx.load(t.clone(), part);
                    t
                }
            };
            let ps = self.psum.tile(self.slot, Dtype::F32, p, len as u32);
            ctx.push(
                Engine::Tensor,
                Op::Matmul {
                    dst: ps.clone(),
                    stationary: ones.clone(),
                    moving,
                    accumulate: false,
                },
            );
            let e = ctx.evict_engine();
            let out = Ap {
                offset: dst.offset + c0 as u64 * dst.dtype.size(),
                dims: vec![Dim {
                    size: len as u32,
                    stride: 1,
                }],
                ..dst.clone()
            };
            ctx.copy_on(e, out, ps);
            c0 += len;
        }
    }
}

/// Buffers for the operands of a row-tiled kernel whose tiles hold `elems` elements per
/// row: `op{i}` for each operand (`slots_of` slots; row broadcasts are fp32 tiles the
/// [`Broadcaster`] fills), plus the broadcaster's buffers and its PSUM bank (`bc`) when an
/// operand is a row broadcast. `chunked`: the operand rows have one free dimension.
pub fn rc_buffers(
    ops: &[RcOperand],
    elems: u64,
    chunked: bool,
    slots_of: impl Fn(&RcOperand) -> u32,
) -> Vec<BufferReq> {
    let mut v = Vec::new();
    for o in ops {
        let bytes = match o.class {
            Class::Column | Class::Scalar => 4,
            Class::RowBcast => elems * 4,
            Class::Full => elems * o.tile_dtype().size(),
        };
        v.push(BufferReq::sbuf(
            &format!("op{}", o.input),
            bytes,
            slots_of(o),
        ));
    }
    if ops.iter().any(|o| o.class == Class::RowBcast) {
        v.extend(Broadcaster::buffers(elems as usize, chunked));
        v.push(BufferReq::psum("bc", BCAST_COLS as u64 * 4, 2));
    }
    v
}

/// The broadcaster of a row-tiled kernel (PSUM buffer `bc`), if an operand needs it.
pub fn rc_broadcaster(
    ctx: &LowerCtx<'_>,
    ops: &[RcOperand],
) -> Result<Option<Broadcaster>, CompileError> {
    if ops.iter().any(|o| o.class == Class::RowBcast) {
        Broadcaster::new(ctx, "bc").map(Some)
    } else {
        Ok(None)
    }
}
