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

use super::chain::OpTile;
use super::{LowerCtx, on_chip_dtype};
use crate::backend::alloc::Buf;
use crate::backend::layout::{Mat, RowCols, Run, parts};
use crate::error::CompileError;
use neuron_isa::{Ap, Dim, Dtype, TensorId};

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
) -> Result<OpTile, CompileError> {
    let d = op.tile_dtype();
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
            for run in rows_for(rc, op.class, r0, p) {
                let mut src = rc.hbm_ap(op.view, op.tensor, op.dtype, &run, c0, nc);
                if inner == 1 {
                    // A caller that wants one element per outer column (reduce epilogues).
                    src.dims.truncate(1);
                }
                if op.class == Class::RowBcast {
                    src.partitions = p as u32;
                    src.partition_stride = 0;
                }
                ctx.load(parts(&dst, run.part, run.len), src);
            }
            Ok(OpTile::Full(dst))
        }
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

/// A `[p, 1]` column tile pattern (helper for statistics tiles).
pub fn column(buf: &Buf, slot: usize, p: u32) -> Ap {
    buf.tile(slot, Dtype::F32, p, 1)
}
