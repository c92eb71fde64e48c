//! Matmul kernels: `Y = epilogue(X @ W)` with numpy batch broadcasting.
//!
//! The ISA matmul computes `dst[M, N] = stationary[K, M]^T @ moving[K, N]`, contracting
//! over partitions. So:
//! - **stationary = X^T tiles** `[k <= 128, m <= 128]`. Row-major X tiles `[m, k]` are
//!   loaded with contiguous DMAs and turned around on TensorE (`Transpose` into PSUM, then a
//!   copy to SBUF in the matmul dtype), because element-strided DMAs are slow on the real
//!   chip. A column-major X (a transposed view) is loaded directly with `[k, m]` DMAs.
//! - **moving = W tiles** `[k <= 128, n <= 512]`: rows of W go to partitions, so W loads are
//!   contiguous. A W that is stored transposed (`transpose_b` on a row-major tensor) is
//!   turned around on TensorE like X.
//! - K accumulates in one PSUM bank per output tile (`accumulate` from the second k-tile).
//!
//! Blocking (see [`MatmulTiling`]): the X^T of a group of `m_group` row tiles is built once
//! and stays resident; for each column tile W streams through a ring of chunk buffers
//! (the load of chunk i+1 overlaps the matmuls on chunk i, because the dependency tracker
//! only makes a load wait for the matmuls that read its slot's previous contents); every
//! W chunk feeds `m_group` matmuls, one per accumulator. After the last k-tile each
//! accumulator is evicted through the epilogue (ScalarE/VectorE, reading PSUM) into an
//! output tile that is stored while TensorE already works on the next column tile.
//!
//! int8: X is quantized on the fly (the copy of the transposed tile out of PSUM divides
//! by the activation scale and writes i8, which rounds and saturates); W is stored i8;
//! PSUM accumulates i32; the eviction multiplies by `act_scale * w_scale[n]`, a constant
//! row added to the artifact.

use super::chain::{self, ChainTiles, OpTile, selected};
use super::operands::{
    Broadcaster, Class, ResidentRows, batch_operands, is_row_bcast, load_mat, mat_class,
};
use super::{LowerCtx, kernel_input, lowering_error, view_storage};
use crate::backend::alloc::BufferReq;
use crate::backend::layout::{Mat, broadcast_view, cols};
use crate::backend::tiling::MatmulTiling;
use crate::error::CompileError;
use crate::kernel::{BinaryFn, EwOp, Kernel, KernelGraph, KernelOp, View};
use neuron_isa::{AluOp, Ap, ChipConfig, Dim, Dtype, Engine, Memory, Op, Operand};

/// The shape facts of a matmul kernel that tiling and lowering need.
#[derive(Debug, Clone)]
pub struct MmShape {
    /// Batch dimensions (after folding batches of a shared weight into M).
    pub batch: Vec<usize>,
    /// Number of batches.
    pub batches: usize,
    /// Rows of X and Y.
    pub m: usize,
    /// Contraction size.
    pub k: usize,
    /// Columns of W and Y.
    pub n: usize,
    /// Matmul operand dtype on chip.
    pub mm_dtype: Dtype,
    /// Storage dtype of X.
    pub x_dtype: Dtype,
    /// Storage dtype of W.
    pub w_dtype: Dtype,
    /// Storage dtype of Y.
    pub out_dtype: Dtype,
    /// Dtype of epilogue intermediates.
    pub act_dtype: Dtype,
    /// X is row-major: X^T comes from TensorE transposes.
    pub x_transposes: bool,
    /// W is stored transposed: W tiles come from TensorE transposes.
    pub w_transposes: bool,
    /// HBM bytes of the epilogue operands (planned).
    pub operand_bytes: u64,
    /// X broadcast to `batch ++ [m, k]`.
    pub a: View,
    /// W broadcast to `batch ++ [k, n]`.
    pub b: View,
    /// Y as `batch ++ [m, n]`.
    pub out: View,
    /// Epilogue operands by kernel input index, broadcast to `batch ++ [m, n]`, and whether
    /// they must be full tiles.
    pub operands: Vec<(usize, View, bool)>,
    /// The epilogue.
    pub epilogue: Vec<EwOp>,
    /// int8: `(act_scale, per-column weight scales)`.
    pub int8: Option<(f32, Vec<f32>)>,
}

fn mergeable(v: &View, d: usize) -> bool {
    v.shape[d] == 1 || v.strides[d] == v.strides[d + 1] * v.shape[d + 1] as isize
}

fn merge_dim(v: &mut View, d: usize) {
    let s = v.strides[d + 1];
    v.shape[d + 1] *= v.shape[d];
    v.strides[d + 1] = s;
    v.shape.remove(d);
    v.strides.remove(d);
}

/// Analyses a matmul kernel.
pub fn analyze(kg: &KernelGraph, k: &Kernel) -> Result<MmShape, CompileError> {
    let err = |m: String| lowering_error(k, m);
    let KernelOp::MatMul {
        a,
        b,
        transpose_b,
        epilogue,
    } = &k.op
    else {
        return Err(err("internal: not a matmul".into()));
    };
    let view = |i: usize| kernel_input(k, i);
    let dtype_of = |v: &View| view_storage(kg, k, v, "view").map(|(_, d)| d);
    let av = view(*a)?.clone();
    let mut bv = view(*b)?.clone();
    if *transpose_b {
        bv = bv.swap_last_two().ok_or_else(|| {
            err(format!(
                "transpose_b needs a rank >= 2 operand, found shape {:?}",
                bv.shape
            ))
        })?;
    }
    let out = k.output.clone();
    let r = out.shape.len();
    if r < 2 || av.shape.len() < 2 || bv.shape.len() < 2 {
        return Err(err(format!(
            "expected rank >= 2 operands and output, found {:?} @ {:?} -> {:?}",
            av.shape, bv.shape, out.shape
        )));
    }
    let (m, n) = (out.shape[r - 2], out.shape[r - 1]);
    let kk = av.shape[av.shape.len() - 1];
    if bv.shape[bv.shape.len() - 2] != kk
        || bv.shape[bv.shape.len() - 1] != n
        || av.shape[av.shape.len() - 2] != m
    {
        return Err(err(format!(
            "shapes do not agree: {:?} @ {:?} -> {:?}",
            av.shape, bv.shape, out.shape
        )));
    }
    let batch: Vec<usize> = out.shape[..r - 2].to_vec();
    let with = |tail: [usize; 2]| {
        let mut s = batch.clone();
        s.extend(tail);
        s
    };
    let bcast = |what: &str, v: &View, tail: [usize; 2]| {
        broadcast_view(v, &with(tail)).ok_or_else(|| {
            err(format!(
                "{what} {:?} does not broadcast to {:?}",
                v.shape,
                with(tail)
            ))
        })
    };
    let mut a_b = bcast("x", &av, [m, kk])?;
    let mut b_b = bcast("w", &bv, [kk, n])?;
    let mut out_b = out.clone();
    let mut operands = Vec::new();
    for i in super::chain_operands(epilogue) {
        let v = view(i)?;
        let bvw = broadcast_view(v, &out.shape).ok_or_else(|| {
            err(format!(
                "epilogue operand {i} {:?} does not broadcast to {:?}",
                v.shape, out.shape
            ))
        })?;
        operands.push((i, bvw, selected(epilogue, i)));
    }
    // Batches that share one W are just more rows of X: fold them into M when every view
    // allows it (larger M tiles, fewer passes over W).
    let mut batch = batch;
    let mut m = m;
    while let Some(&bd) = batch.last() {
        let d = batch.len() - 1;
        let ok = b_b.strides[d] == 0
            && mergeable(&a_b, d)
            && mergeable(&out_b, d)
            && operands.iter().all(|(_, v, _)| mergeable(v, d));
        if !ok {
            break;
        }
        merge_dim(&mut a_b, d);
        merge_dim(&mut out_b, d);
        b_b.shape.remove(d);
        b_b.strides.remove(d);
        for (_, v, _) in &mut operands {
            merge_dim(v, d);
        }
        batch.pop();
        m *= bd;
    }
    let batches = batch.iter().product::<usize>();
    let x_dtype = dtype_of(&av)?;
    let w_dtype = dtype_of(&bv)?;
    let out_dtype = dtype_of(&out)?;
    let rb = b_b.shape.len();
    let (w_rs, w_cs) = (b_b.strides[rb - 2], b_b.strides[rb - 1]);
    let ra = a_b.shape.len();
    let x_cs = a_b.strides[ra - 1];
    let mut operand_bytes = 0u64;
    for (i, v, _) in &operands {
        let d = dtype_of(view(*i)?)?;
        operand_bytes += v
            .shape
            .iter()
            .zip(&v.strides)
            .map(|(&s, &st)| if st == 0 { 1 } else { s as u64 })
            .product::<u64>()
            * d.size();
    }
    let int8 = if k.mm_dtype == Dtype::I8 {
        let s = k.act_scale.ok_or_else(|| {
            err("int8 matmul without an activation scale (calibration missing)".into())
        })?;
        let wt = kg
            .tensor(bv.tensor)
            .ok_or_else(|| err("w names a missing tensor".into()))?;
        let ws = wt.quant_scale.clone().ok_or_else(|| {
            err(format!(
                "int8 matmul needs per-channel scales on its weight '{}', found none",
                wt.name
            ))
        })?;
        if ws.len() != n || wt.dtype != Dtype::I8 {
            return Err(err(format!(
                "int8 weight '{}' must be stored i8 with {n} scales, found {} with {}",
                wt.name,
                wt.dtype,
                ws.len()
            )));
        }
        Some((s, ws))
    } else {
        None
    };
    Ok(MmShape {
        batches,
        batch,
        m,
        k: kk,
        n,
        mm_dtype: k.mm_dtype,
        x_dtype,
        w_dtype,
        out_dtype,
        act_dtype: k.act_dtype,
        x_transposes: x_cs == 1 || kk == 1,
        w_transposes: w_rs == 1 && w_cs != 1 && n > 1 && kk > 1,
        operand_bytes,
        a: a_b,
        b: b_b,
        out: out_b,
        operands,
        epilogue: epilogue.clone(),
        int8,
    })
}

/// The dtype X tiles are staged in before the transpose: the matmul dtype, except for int8
/// where the float values are transposed first and quantized on the way out of PSUM.
fn stage_dtype(s: &MmShape) -> Dtype {
    if s.int8.is_some() {
        Dtype::F32
    } else {
        s.mm_dtype
    }
}

/// Whether the W ring holds the whole of W, each chunk loaded exactly once: one batch and
/// at least as many slots as chunks. W is then laid out packed (chunk after chunk) instead
/// of in fixed-size slots, loaded while the first group of row tiles computes, and reused
/// by every later group (W-stationary: W is read from HBM once however many groups).
pub fn w_resident(s: &MmShape, t: &MatmulTiling, p: usize) -> bool {
    let k_tiles = s.k.div_ceil(p).max(1);
    let chunks = k_tiles.div_ceil(t.w_kchunk.max(1)) * s.n.div_ceil(t.n_tile.max(1));
    s.batches == 1 && t.w_slots as usize >= chunks
}

/// Buffers of a matmul with tiling `t`.
pub fn buffers(s: &MmShape, t: &MatmulTiling, cfg: &ChipConfig) -> Vec<BufferReq> {
    let p = cfg.partitions as usize;
    let mt = s.m.min(p) as u64;
    let k_tiles = s.k.div_ceil(p) as u64;
    let mm = s.mm_dtype.size();
    let nt = t.n_tile as u64;
    let bank = cfg.psum_bytes_per_partition / u64::from(cfg.psum_banks.max(1));
    let mut v = vec![
        BufferReq::sbuf(
            "xt",
            k_tiles * t.m_group as u64 * mt * mm,
            xt_slots(s, t, p),
        ),
        if w_resident(s, t, p) {
            // Every chunk of W packed back to back, loaded once and kept for the whole
            // program when the allocator can afford it (no slot is ever reused, so the
            // loads need not wait for anything and can run kernels ahead).
            BufferReq::sbuf("w", k_tiles * s.n as u64 * mm, 1).pinned()
        } else {
            BufferReq::sbuf("w", t.w_kchunk as u64 * nt * mm, t.w_slots)
        },
        BufferReq::psum("acc", nt * 4, (t.m_group as u32) * t.acc_sets),
        BufferReq::sbuf("work", nt * s.act_dtype.size(), 2),
        // An output tile per accumulator of a group, plus two: the evictions of a column
        // tile never wait for the stores of the same column tile.
        BufferReq::sbuf(
            "out",
            nt * s.out_dtype.size(),
            (t.m_group as u32 + 2).max(3),
        ),
    ];
    let tensor_xt = s.x_transposes && !t.x_dma_transpose;
    if tensor_xt || s.int8.is_some() {
        let cols = if s.x_transposes {
            t.x_kchunk as u64
        } else {
            mt
        };
        v.push(BufferReq::sbuf("xs", cols * stage_dtype(s).size(), 2));
    }
    if tensor_xt || s.w_transposes {
        v.push(BufferReq::psum("tp", bank, 2));
    }
    if s.w_transposes {
        v.push(BufferReq::sbuf("ws", t.w_kchunk as u64 * p as u64 * mm, 2));
    }
    if chain::has_cast(&s.epilogue) {
        v.push(BufferReq::sbuf("cast", nt * chain::CAST_BYTES, 1));
    }
    let mut broadcast = s.int8.is_some();
    for (i, view, full) in &s.operands {
        if is_row_bcast(view, *full) && t.out_transposed {
            // One fp32 column per tile of 128 output columns (see `lower_out_transposed`).
            v.push(BufferReq::sbuf(
                &format!("op{i}"),
                s.n.div_ceil(p) as u64 * 4,
                1,
            ));
        } else if is_row_bcast(view, *full) {
            // Resident for the whole kernel, broadcast on chip once (fp32).
            v.push(BufferReq::sbuf(&format!("op{i}"), s.n as u64 * 4, 1));
            broadcast = true;
        } else {
            // One slot per row tile of a group plus one, twice (double-buffered); operand
            // tiles have at most 4-byte elements.
            v.push(BufferReq::sbuf(
                &format!("op{i}"),
                nt * 4,
                2 * (t.m_group as u32 + 1),
            ));
        }
    }
    if s.int8.is_some() {
        v.push(BufferReq::sbuf("dq", s.n as u64 * 4, 1));
    }
    if broadcast {
        v.extend(Broadcaster::buffers(s.n, true));
    }
    v
}

/// Lowers a matmul kernel.
pub fn lower(ctx: &mut LowerCtx<'_>, t: &MatmulTiling) -> Result<(), CompileError> {
    let s = analyze(ctx.kg, ctx.kernel)?;
    let p = ctx.cfg.partitions as usize;
    let (a_t, a_d) = ctx.tensor(&s.a)?;
    let (b_t, b_d) = ctx.tensor(&s.b)?;
    let (y_t, y_d) = ctx.tensor(&s.out)?;
    let dq = s
        .int8
        .as_ref()
        .map(|(a, ws)| ctx.constant("dequant", ws.iter().map(|w| a * w).collect()));
    let bufs = MmBufs {
        xt: ctx.buf("xt")?,
        w: ctx.buf("w")?,
        acc: ctx.buf("acc")?,
        work: ctx.buf("work")?,
        out: ctx.buf("out")?,
        xs: ctx.bufs.get("xs").cloned(),
        tp: ctx.bufs.get("tp").cloned(),
        ws: ctx.bufs.get("ws").cloned(),
        cast: ctx.bufs.get("cast").cloned(),
    };
    let mut st = MmState {
        w_packed: w_resident(&s, t, p),
        w_pinned: bufs.w.pinned,
        w_by_tile: s.m.div_ceil(p) > t.m_group,
        ..MmState::default()
    };
    if t.out_transposed {
        let x = Mat::of_batch(&s.a, &s.batch, 0, a_t, a_d);
        let w = Mat::of_batch(&s.b, &s.batch, 0, b_t, b_d);
        let y = Mat::of_batch(&s.out, &s.batch, 0, y_t, y_d);
        let ops = batch_operands(ctx, &s.operands, &s.batch, 0)?;
        return lower_out_transposed(ctx, &s, t, &bufs, &mut st, &x, &w, &y, &ops);
    }
    let mt = s.m.min(p) as u32;
    // Row-broadcast operands (and the int8 dequantization row, the synthetic operand after
    // the kernel's inputs) stay resident for the whole kernel.
    let dq_idx = ctx.kernel.inputs.len();
    let mut resident = ResidentRows::new(ctx, "acc", dq_idx + 1, mt, s.n)?;
    for bi in 0..s.batches {
        let x = Mat::of_batch(&s.a, &s.batch, bi, a_t, a_d);
        let w = Mat::of_batch(&s.b, &s.batch, bi, b_t, b_d);
        let y = Mat::of_batch(&s.out, &s.batch, bi, y_t, y_d);
        let ops = batch_operands(ctx, &s.operands, &s.batch, bi)?;
        resident.ensure_row_bcasts(ctx, &ops)?;
        if let Some(tensor) = dq {
            let dq_mat = Mat {
                tensor,
                dtype: Dtype::F32,
                offset: 0,
                rows: s.m,
                cols: s.n,
                rs: 0,
                cs: 1,
            };
            resident.ensure(ctx, dq_idx, &dq_mat, "dq")?;
        }
        let m_tiles = s.m.div_ceil(p);
        let mut g0 = 0;
        while g0 < m_tiles {
            let g = t.m_group.min(m_tiles - g0);
            let rows: Vec<(usize, usize)> = (g0..g0 + g)
                .map(|mi| (mi * p, (s.m - mi * p).min(p)))
                .collect();
            st.w_off = 0;
            build_xt(ctx, &s, t, &bufs, &mut st, &x, &rows)?;
            let mut n0 = 0;
            while n0 < s.n {
                let nn = t.n_tile.min(s.n - n0);
                column_tile(
                    ctx, &s, t, &bufs, &mut st, &w, &y, &ops, &resident, &rows, n0, nn,
                )?;
                n0 += nn;
            }
            // A packed W is on chip from now on: later groups reuse it.
            st.w_done = st.w_packed;
            g0 += g;
        }
    }
    Ok(())
}

/// The kernel's buffers.
struct MmBufs {
    xt: crate::backend::alloc::Buf,
    w: crate::backend::alloc::Buf,
    acc: crate::backend::alloc::Buf,
    work: crate::backend::alloc::Buf,
    out: crate::backend::alloc::Buf,
    xs: Option<crate::backend::alloc::Buf>,
    tp: Option<crate::backend::alloc::Buf>,
    ws: Option<crate::backend::alloc::Buf>,
    cast: Option<crate::backend::alloc::Buf>,
}

/// Rotation counters of the streamed buffers.
#[derive(Default)]
struct MmState {
    /// The X^T slot that `build_xt` fills and the matmuls read (see [`xt_slots`]).
    xt: usize,
    xs: usize,
    tp: usize,
    w: usize,
    ws: usize,
    acc_set: usize,
    work: usize,
    out: usize,
    ops: usize,
    /// W is packed (see [`w_resident`]): `w_off` is the next chunk's byte offset.
    w_packed: bool,
    w_off: u64,
    /// The allocator pinned W: its loads are prefetches.
    w_pinned: bool,
    /// Every chunk of a packed W is loaded (the first group is done): no more W loads.
    w_done: bool,
    /// A packed W serving several groups loads per column tile (see [`load_w`]).
    w_by_tile: bool,
}

/// Byte offset of X^T tile `(kt, mi)` in the resident buffer.
fn xt_off(s: &MmShape, t: &MatmulTiling, p: usize, kt: usize, mi: usize) -> u64 {
    let mt = s.m.min(p);
    ((kt * t.m_group + mi) * mt) as u64 * s.mm_dtype.size()
}

/// Copies `j` transposed tiles (`[kl, mr]` each, side by side in PSUM) into X^T tiles
/// `kt0 .. kt0 + j` of row tile `mi`, quantizing for int8.
#[allow(clippy::too_many_arguments)]
fn flush_tp(
    ctx: &mut LowerCtx<'_>,
    s: &MmShape,
    t: &MatmulTiling,
    b: &MmBufs,
    xt_slot: usize,
    tp: &Ap,
    kt0: usize,
    j: usize,
    kl: usize,
    mi: usize,
    mr: usize,
) {
    let p = ctx.cfg.partitions as usize;
    let mt = s.m.min(p);
    let src = Ap {
        partitions: kl as u32,
        dims: vec![
            Dim {
                size: j as u32,
                stride: mr as i64,
            },
            Dim {
                size: mr as u32,
                stride: 1,
            },
        ],
        ..tp.clone()
    };
    let dst = Ap {
        mem: Memory::Sbuf,
        dtype: s.mm_dtype,
        offset: b.xt.slot(xt_slot) + xt_off(s, t, p, kt0, mi),
        start_partition: 0,
        partitions: kl as u32,
        partition_stride: 1,
        dims: vec![
            Dim {
                size: j as u32,
                stride: (t.m_group * mt) as i64,
            },
            Dim {
                size: mr as u32,
                stride: 1,
            },
        ],
    };
    quantize_or_copy(ctx, s, dst, src);
}

/// `dst = src` in the matmul dtype; for int8 `dst = src / act_scale` (the i8 write rounds
/// and saturates).
fn quantize_or_copy(ctx: &mut LowerCtx<'_>, s: &MmShape, dst: Ap, src: Ap) {
    match &s.int8 {
        Some((scale, _)) => {
            let e = ctx.evict_engine();
            ctx.push(
                e,
                Op::TensorScalar {
                    dst,
                    src,
                    op0: AluOp::Div,
                    operand0: Operand::Imm(*scale),
                    reverse0: false,
                    op1: AluOp::Bypass,
                    operand1: Operand::Imm(0.0),
                    reverse1: false,
                },
            );
        }
        None => {
            let e = ctx.evict_engine();
            ctx.copy_on(e, dst, src);
        }
    }
}

/// Builds the resident X^T of one group of row tiles.
fn build_xt(
    ctx: &mut LowerCtx<'_>,
    s: &MmShape,
    t: &MatmulTiling,
    b: &MmBufs,
    st: &mut MmState,
    x: &Mat,
    rows: &[(usize, usize)],
) -> Result<(), CompileError> {
    let p = ctx.cfg.partitions as usize;
    let k_tiles = s.k.div_ceil(p);
    if t.x_dma_transpose {
        // One transposing (and casting) DMA per k-tile: X rows of the group go to the free
        // axis, its columns to partitions. Row tiles are side by side in X^T, so the full
        // ones make one contiguous run per partition (the descriptor); a short last row
        // tile goes in a DMA of its own. The bits are those of the TensorE path (a
        // transpose is exact; the cast rounds once, as the staging load's does).
        let full = rows.iter().take_while(|r| r.1 == s.m.min(p)).count();
        for kt in 0..k_tiles {
            let kl = (s.k - kt * p).min(p);
            let mut pieces = Vec::new();
            if full > 0 {
                pieces.push((0, rows[0].0, full * s.m.min(p)));
            }
            for (mi, &(m0, mr)) in rows.iter().enumerate().skip(full) {
                pieces.push((mi, m0, mr));
            }
            for (mi, m0, nrows) in pieces {
                let dst = Ap::on_chip(
                    Memory::Sbuf,
                    s.mm_dtype,
                    0,
                    kl as u32,
                    b.xt.slot(st.xt) + xt_off(s, t, p, kt, mi),
                    nrows as u32,
                );
                ctx.load(dst, x.cols_ap(m0, nrows, kt * p, kl));
            }
        }
        return Ok(());
    }
    for (mi, &(m0, mr)) in rows.iter().enumerate() {
        if !s.x_transposes {
            // Column-major X: DMA [k, m] blocks straight in (casting), or through the
            // staging buffer when they must be quantized.
            for kt in 0..k_tiles {
                let kl = (s.k - kt * p).min(p);
                let src = x.cols_ap(m0, mr, kt * p, kl);
                let dst = Ap::on_chip(
                    Memory::Sbuf,
                    s.mm_dtype,
                    0,
                    kl as u32,
                    b.xt.slot(st.xt) + xt_off(s, t, p, kt, mi),
                    mr as u32,
                );
                match (&s.int8, &b.xs) {
                    (Some(_), Some(xs)) => {
                        let stage = xs.tile(st.xs, Dtype::F32, kl as u32, mr as u32);
                        st.xs += 1;
                        ctx.load(stage.clone(), src);
                        quantize_or_copy(ctx, s, dst, stage);
                    }
                    _ => {
                        ctx.load(dst, src);
                    }
                }
            }
            continue;
        }
        let (Some(xs), Some(tpb)) = (&b.xs, &b.tp) else {
            return Err(ctx.err("internal: transposing matmul without staging buffers"));
        };
        let bank_cols = (tpb.slot_bytes / 4) as usize;
        let per_bank = (bank_cols / mr).max(1);
        let mut kc = 0;
        while kc < s.k {
            let klen = t.x_kchunk.min(s.k - kc);
            let stage = xs.tile(st.xs, stage_dtype(s), mr as u32, klen as u32);
            st.xs += 1;
            ctx.load(stage.clone(), x.rows_ap(m0, mr, kc, klen));
            // Transpose the chunk's k-tiles, several side by side per PSUM bank, then copy
            // each bank's worth into X^T at once.
            let first_kt = kc / p;
            let nkt = klen.div_ceil(p);
            let mut j0 = 0;
            while j0 < nkt {
                let kl = (klen - j0 * p).min(p);
                // Tiles of equal height share one copy: a short last k-tile goes alone.
                let mut j = 0;
                let tp = tpb.tile(st.tp, Dtype::F32, kl as u32, (per_bank * mr) as u32);
                st.tp += 1;
                while j < per_bank && j0 + j < nkt && (klen - (j0 + j) * p).min(p) == kl {
                    let src = cols(&stage, ((j0 + j) * p) as u32, kl as u32);
                    let dst = Ap {
                        partitions: kl as u32,
                        ..cols(&tp, (j * mr) as u32, mr as u32)
                    };
                    ctx.push(Engine::Tensor, Op::Transpose { dst, src });
                    j += 1;
                }
                flush_tp(ctx, s, t, b, st.xt, &tp, first_kt + j0, j, kl, mi, mr);
                j0 += j;
            }
            kc += klen;
        }
    }
    Ok(())
}

/// Loads W rows `k0 .. k0 + nkt * 128` (clipped to K) by columns `n0 .. n0 + nn` into a W
/// slot laid out `[k, kt, n]`; returns the slot's base offset and the element stride from
/// one k-tile to the next in it.
///
/// A packed W (the whole of W on chip, see [`w_resident`]) is laid out `[k, kt, N]` instead:
/// each chunk of k-tiles is loaded once, over every column, when the first column tile asks
/// for it. Its DMA descriptors are then whole rows of W (`N` elements per partition and
/// k-tile, e.g. 1.5 KiB for a 768-column bf16 W, 6 KiB for 3072 columns) instead of
/// `n_tile`-column pieces (1 KiB), which moves them up the DMA efficiency curve
/// (trainium.md section 3: overhead-bound below 256 B per partition, near peak from 2 KiB).
#[allow(clippy::too_many_arguments)]
fn load_w(
    ctx: &mut LowerCtx<'_>,
    s: &MmShape,
    b: &MmBufs,
    st: &mut MmState,
    w: &Mat,
    kt0: usize,
    nkt: usize,
    n0: usize,
    nn: usize,
) -> Result<(u64, usize), CompileError> {
    let p = ctx.cfg.partitions as usize;
    let mm = s.mm_dtype.size();
    if st.w_packed && !s.w_transposes {
        let base = b.w.base + (kt0 * s.n + n0) as u64 * mm;
        if st.w_by_tile && !st.w_done {
            // Several groups share W: the first one loads it column tile by column tile,
            // in the order it consumes it, so TensorE starts on the first chunk instead
            // of waiting for whole rows of W.
            emit_w_rows(ctx, s, st, w, base, s.n, kt0, nkt, n0, nn);
        } else if n0 == 0 && !st.w_done {
            let chunk = b.w.base + (kt0 * s.n) as u64 * mm;
            emit_w_rows(ctx, s, st, w, chunk, s.n, kt0, nkt, 0, s.n);
        }
        return Ok((base, s.n));
    }
    let base = if st.w_packed {
        let off = b.w.base + st.w_off;
        st.w_off += (nkt * nn) as u64 * mm;
        off
    } else {
        b.w.slot(st.w)
    };
    if st.w_done {
        // Loaded (and transposed) by the first group, in the same order.
        return Ok((base, nn));
    }
    st.w += 1;
    if s.w_transposes {
        // W^T is row-major [N, K]: load [n, k] blocks and turn them around.
        let (Some(ws), Some(tpb)) = (&b.ws, &b.tp) else {
            return Err(ctx.err("internal: transposing w without staging buffers"));
        };
        let wt = w.t();
        let k0 = kt0 * p;
        let klen = (nkt * p).min(s.k - k0);
        let mut ns = 0;
        while ns < nn {
            let nsub = (nn - ns).min(p);
            let stage = ws.tile(st.ws, s.mm_dtype, nsub as u32, klen as u32);
            st.ws += 1;
            ctx.load(stage.clone(), wt.rows_ap(n0 + ns, nsub, k0, klen));
            for j in 0..nkt {
                let kl = (klen - j * p).min(p);
                let tp = tpb.tile(st.tp, Dtype::F32, kl as u32, nsub as u32);
                st.tp += 1;
                ctx.push(
                    Engine::Tensor,
                    Op::Transpose {
                        dst: tp.clone(),
                        src: cols(&stage, (j * p) as u32, kl as u32),
                    },
                );
                let dst = Ap::on_chip(
                    Memory::Sbuf,
                    s.mm_dtype,
                    0,
                    kl as u32,
                    base + ((j * nn + ns) as u64) * mm,
                    nsub as u32,
                );
                let e = ctx.evict_engine();
                ctx.copy_on(e, dst, tp);
            }
            ns += nsub;
        }
        return Ok((base, nn));
    }
    emit_w_rows(ctx, s, st, w, base, nn, kt0, nkt, n0, nn);
    Ok((base, nn))
}

/// The DMAs of W rows `kt0 * 128 ..` (`nkt` k-tiles, clipped to K), columns `n0 .. n0 +
/// nn`, into `[k, kt, stride]` at `base`: one DMA for the full k-tiles, one for a partial
/// last one. Pinned W goes out as prefetches.
#[allow(clippy::too_many_arguments)]
fn emit_w_rows(
    ctx: &mut LowerCtx<'_>,
    s: &MmShape,
    st: &MmState,
    w: &Mat,
    base: u64,
    stride: usize,
    kt0: usize,
    nkt: usize,
    n0: usize,
    nn: usize,
) {
    let p = ctx.cfg.partitions as usize;
    let mm = s.mm_dtype.size();
    let full = (0..nkt).take_while(|&j| (kt0 + j + 1) * p <= s.k).count();
    let emit = |ctx: &mut LowerCtx<'_>, dst: Ap, src: Ap| {
        if st.w_pinned {
            ctx.weight_load(dst, src);
        } else {
            ctx.load(dst, src);
        }
    };
    if full > 0 {
        let src = Ap {
            dims: vec![
                Dim {
                    size: full as u32,
                    stride: p as i64 * w.rs,
                },
                Dim {
                    size: nn as u32,
                    stride: w.cs,
                },
            ],
            ..w.rows_ap(kt0 * p, p, n0, nn)
        };
        let mut dst = Ap::on_chip(Memory::Sbuf, s.mm_dtype, 0, p as u32, base, nn as u32);
        if stride != nn {
            dst.dims = vec![
                Dim {
                    size: full as u32,
                    stride: stride as i64,
                },
                Dim {
                    size: nn as u32,
                    stride: 1,
                },
            ];
        } else {
            dst.dims = vec![Dim {
                size: (full * nn) as u32,
                stride: 1,
            }];
        }
        emit(ctx, dst, src);
    }
    if full < nkt {
        let k0 = (kt0 + full) * p;
        let kl = s.k - k0;
        let dst = Ap::on_chip(
            Memory::Sbuf,
            s.mm_dtype,
            0,
            kl as u32,
            base + (full * stride) as u64 * mm,
            nn as u32,
        );
        let src = w.rows_ap(k0, kl, n0, nn);
        emit(ctx, dst, src);
    }
}

/// One column tile of a group: stream W, accumulate, evict, store.
#[allow(clippy::too_many_arguments)]
fn column_tile(
    ctx: &mut LowerCtx<'_>,
    s: &MmShape,
    t: &MatmulTiling,
    b: &MmBufs,
    st: &mut MmState,
    w: &Mat,
    y: &Mat,
    ops: &[(usize, Mat, bool)],
    resident: &ResidentRows,
    rows: &[(usize, usize)],
    n0: usize,
    nn: usize,
) -> Result<(), CompileError> {
    let p = ctx.cfg.partitions as usize;
    let k_tiles = s.k.div_ceil(p);
    let acc_dtype = if s.int8.is_some() {
        Dtype::I32
    } else {
        Dtype::F32
    };
    let set = st.acc_set % t.acc_sets.max(1) as usize;
    st.acc_set += 1;
    let acc = |mi: usize, mr: usize| {
        b.acc
            .tile(set * t.m_group + mi, acc_dtype, mr as u32, nn as u32)
    };
    let mut kt0 = 0;
    while kt0 < k_tiles {
        let nkt = t.w_kchunk.min(k_tiles - kt0);
        let (base, w_stride) = load_w(ctx, s, b, st, w, kt0, nkt, n0, nn)?;
        for j in 0..nkt {
            let kt = kt0 + j;
            let kl = (s.k - kt * p).min(p);
            let moving = Ap::on_chip(
                Memory::Sbuf,
                s.mm_dtype,
                0,
                kl as u32,
                base + (j * w_stride) as u64 * s.mm_dtype.size(),
                nn as u32,
            );
            for (mi, &(_, mr)) in rows.iter().enumerate() {
                let stationary = Ap::on_chip(
                    Memory::Sbuf,
                    s.mm_dtype,
                    0,
                    kl as u32,
                    b.xt.slot(st.xt) + xt_off(s, t, p, kt, mi),
                    mr as u32,
                );
                ctx.push(
                    Engine::Tensor,
                    Op::Matmul {
                        dst: acc(mi, mr),
                        stationary,
                        moving: moving.clone(),
                        accumulate: kt > 0,
                    },
                );
            }
        }
        kt0 += nkt;
    }
    // The int8 dequantization row is the synthetic operand after the kernel's inputs.
    let dq_idx = resident.count() - 1;
    let mut epilogue = Vec::with_capacity(s.epilogue.len() + 1);
    if s.int8.is_some() {
        epilogue.push(EwOp::Tensor {
            op: BinaryFn::Mul,
            operand: dq_idx,
            reversed: false,
        });
    }
    epilogue.extend(s.epilogue.iter().cloned());
    let max_op = ops
        .iter()
        .map(|o| o.0 + 1)
        .max()
        .unwrap_or(0)
        .max(resident.count());
    for (mi, &(m0, mr)) in rows.iter().enumerate() {
        let mut operands: Vec<Option<OpTile>> = vec![None; max_op];
        // Resident rows (biases, dequantization scales): this tile's columns and rows.
        for (i, operand) in operands.iter_mut().enumerate().take(resident.count()) {
            if let Some(tile) = resident.tile(i, mr as u32, n0, nn) {
                *operand = Some(tile);
            }
        }
        for (i, mat, full) in ops {
            if mat_class(mat, *full) == Class::RowBcast {
                continue;
            }
            let buf = ctx.buf(&format!("op{i}"))?;
            operands[*i] = Some(load_mat(ctx, mat, *full, m0, mr, n0, nn, &buf, st.ops + mi));
        }
        let tiles = ChainTiles {
            src: acc(mi, mr),
            work: b.work.tile(st.work, s.act_dtype, mr as u32, nn as u32),
            cast: b
                .cast
                .as_ref()
                .map(|c| c.tile(0, Dtype::F32, mr as u32, nn as u32)),
            out: b.out.tile(st.out, s.out_dtype, mr as u32, nn as u32),
            operands: &operands,
        };
        st.work += 1;
        st.out += 1;
        let res = chain::apply(ctx, &epilogue, &tiles)?;
        ctx.store(y.rows_ap(m0, mr, n0, nn), res);
    }
    st.ops += rows.len();
    Ok(())
}

/// Slots of the resident X^T: two in the transposed-output form with several groups
/// (every output tile reads all of a group's X^T, so the next group's X^T must go to the
/// other slot to load while this group multiplies), else one.
pub fn xt_slots(s: &MmShape, t: &MatmulTiling, p: usize) -> u32 {
    if t.out_transposed && s.m.div_ceil(p) > t.m_group {
        2
    } else {
        1
    }
}

/// Whether a matmul can run in the transposed-output form of [`lower_out_transposed`]:
/// one batch, bf16/fp16 operands, X^T by transposing DMAs, the whole of W resident, and
/// an epilogue that is a bias row (`+ b[n]`) optionally followed by one activation
/// function, into a 2- or 4-byte output (stored by a transposing DMA).
pub fn out_transposed_eligible(s: &MmShape, t: &MatmulTiling, p: usize) -> bool {
    let bias_only = |op: &EwOp| match op {
        EwOp::Tensor {
            op: BinaryFn::Add,
            operand,
            ..
        } => s
            .operands
            .iter()
            .any(|(i, v, full)| i == operand && is_row_bcast(v, *full)),
        _ => false,
    };
    let epilogue_ok = match s.epilogue.as_slice() {
        [b] => bias_only(b),
        [b, EwOp::Unary(f)] => bias_only(b) && chain::act_func(*f).is_some(),
        _ => false,
    };
    epilogue_ok
        && s.batches == 1
        && s.int8.is_none()
        && !s.w_transposes
        && t.x_dma_transpose
        && matches!(s.mm_dtype, Dtype::Bf16 | Dtype::F16)
        && matches!(s.out_dtype.size(), 2 | 4)
        && w_resident(s, t, p)
}

/// The transposed-output form: `Y^T = W^T X^T`, 128 output columns on partitions.
///
/// The stationary operand is a `[k, 128]` block of the resident W, the moving one up to 512
/// rows of the resident X^T (the group's row tiles side by side), so PSUM holds `Y^T`
/// tiles `[128 columns, <= 512 rows]`. The bias row is then one fp32 value per partition:
/// the eviction is a single ScalarE `Activation` reading PSUM, `f(acc + b)` with the
/// activation's per-partition bias (trainium.md 2.2, `activation`), instead of a VectorE
/// bias add (from a row broadcast on TensorE by K=1 matmuls) followed by the activation.
/// A bias-only epilogue alternates ScalarE (`Identity` with the bias) and VectorE
/// (`TensorScalar` add), the same fp32 add. The `Y^T` tile is stored with a transposing
/// DMA, so Y keeps its row-major layout for the consumers. Accumulators rotate over every
/// PSUM slot of the kernel, so TensorE never waits for the eviction of the bank it needs
/// next. TensorE cycles are those of the normal form: `max(min(64, 128), 512)` per matmul
/// either way.
#[allow(clippy::too_many_arguments)]
fn lower_out_transposed(
    ctx: &mut LowerCtx<'_>,
    s: &MmShape,
    t: &MatmulTiling,
    b: &MmBufs,
    st: &mut MmState,
    x: &Mat,
    w: &Mat,
    y: &Mat,
    ops: &[(usize, Mat, bool)],
) -> Result<(), CompileError> {
    let p = ctx.cfg.partitions as usize;
    let mm = s.mm_dtype.size();
    let k_tiles = s.k.div_ceil(p);
    let n_ft = s.n.div_ceil(p);
    let fmax = (ctx.cfg.matmul_moving_fmax as usize).max(1);
    // The bias columns: element (q, j) of the fp32 buffer is b[j * 128 + q] (a transposing,
    // casting DMA for the full tiles, one more for a short last tile).
    let mut max_op = 0;
    let mut bias: Option<(usize, crate::backend::alloc::Buf)> = None;
    for (i, mat, full) in ops {
        max_op = max_op.max(i + 1);
        if mat_class(mat, *full) != Class::RowBcast {
            return Err(ctx.err("internal: transposed matmul with a non-row operand"));
        }
        let buf = ctx.buf(&format!("op{i}"))?;
        let bt = mat.t();
        let full_tiles = s.n / p;
        if full_tiles > 0 {
            let mut src = bt.rows_ap(0, p, 0, 1);
            src.dims = vec![Dim {
                size: full_tiles as u32,
                stride: p as i64 * bt.rs,
            }];
            let dst = Ap::on_chip(
                Memory::Sbuf,
                Dtype::F32,
                0,
                p as u32,
                buf.slot(0),
                full_tiles as u32,
            );
            ctx.load(dst, src);
        }
        if full_tiles < n_ft {
            let rem = s.n - full_tiles * p;
            let dst = Ap::on_chip(
                Memory::Sbuf,
                Dtype::F32,
                0,
                rem as u32,
                buf.slot(0) + full_tiles as u64 * 4,
                1,
            );
            ctx.load(dst, bt.rows_ap(full_tiles * p, rem, 0, 1));
        }
        bias = Some((*i, buf));
    }
    let Some((bias_idx, bias_buf)) = bias else {
        return Err(ctx.err("internal: transposed matmul without a bias row"));
    };
    let bias_only = s.epilogue.len() == 1;
    let acc_slots = (t.m_group as u32 * t.acc_sets) as usize;
    let m_tiles = s.m.div_ceil(p);
    let mt = s.m.min(p);
    // Row tiles per moving chunk (at most 512 rows, whole row tiles).
    let chunk_tiles = (t.n_tile.min(fmax) / mt).max(1);
    let mut acc_i = 0usize;
    let mut ev = 0usize;
    let mut g0 = 0;
    while g0 < m_tiles {
        let g = t.m_group.min(m_tiles - g0);
        let rows: Vec<(usize, usize)> = (g0..g0 + g)
            .map(|mi| (mi * p, (s.m - mi * p).min(p)))
            .collect();
        if g0 == 0 {
            // W once, whole rows per chunk of k-tiles into the packed `[k, kt, N]` layout
            // (descriptors of N elements per partition and k-tile), ahead of X^T: each DMA
            // fills bytes no matmul of this kernel has read, so pinned W prefetches.
            let mut kt0 = 0;
            while kt0 < k_tiles {
                let nkt = t.w_kchunk.min(k_tiles - kt0);
                let base = b.w.base + (kt0 * s.n) as u64 * mm;
                emit_w_rows(ctx, s, st, w, base, s.n, kt0, nkt, 0, s.n);
                kt0 += nkt;
            }
        }
        let slots = xt_slots(s, t, p) as usize;
        let cur = (g0 / t.m_group) % slots;
        if g0 == 0 || slots == 1 {
            st.xt = cur;
            build_xt(ctx, s, t, b, st, x, &rows)?;
        }
        if slots > 1 && g0 + g < m_tiles {
            // The next group's X^T goes into the other slot now: it loads while this
            // group multiplies.
            let next: Vec<(usize, usize)> = (g0 + g..(g0 + g + t.m_group).min(m_tiles))
                .map(|mi| (mi * p, (s.m - mi * p).min(p)))
                .collect();
            st.xt = (cur + 1) % slots;
            build_xt(ctx, s, t, b, st, x, &next)?;
        }
        st.xt = cur;
        for ft in 0..n_ft {
            let f0 = ft * p;
            let nf = (s.n - f0).min(p);
            let mut c0 = 0;
            while c0 < g {
                let ct = chunk_tiles.min(g - c0);
                let tok0 = rows[c0].0;
                let ntok: usize = rows[c0..c0 + ct].iter().map(|r| r.1).sum();
                let acc = b
                    .acc
                    .tile(acc_i % acc_slots, Dtype::F32, nf as u32, ntok as u32);
                acc_i += 1;
                for kt in 0..k_tiles {
                    let kl = (s.k - kt * p).min(p);
                    let stationary = Ap::on_chip(
                        Memory::Sbuf,
                        s.mm_dtype,
                        0,
                        kl as u32,
                        b.w.base + (kt * s.n + f0) as u64 * mm,
                        nf as u32,
                    );
                    let moving = Ap::on_chip(
                        Memory::Sbuf,
                        s.mm_dtype,
                        0,
                        kl as u32,
                        b.xt.slot(st.xt) + xt_off(s, t, p, kt, c0),
                        ntok as u32,
                    );
                    ctx.push(
                        Engine::Tensor,
                        Op::Matmul {
                            dst: acc.clone(),
                            stationary,
                            moving,
                            accumulate: kt > 0,
                        },
                    );
                }
                let col = Ap::on_chip(
                    Memory::Sbuf,
                    Dtype::F32,
                    0,
                    nf as u32,
                    bias_buf.slot(0) + ft as u64 * 4,
                    1,
                );
                let out = b.out.tile(st.out, s.out_dtype, nf as u32, ntok as u32);
                st.out += 1;
                if bias_only && ev % 2 == 1 {
                    ctx.push(
                        Engine::Vector,
                        Op::TensorScalar {
                            dst: out.clone(),
                            src: acc,
                            op0: AluOp::Add,
                            operand0: Operand::PerPartition(col),
                            reverse0: false,
                            op1: AluOp::Bypass,
                            operand1: Operand::Imm(0.0),
                            reverse1: false,
                        },
                    );
                } else if bias_only {
                    ctx.push(
                        Engine::Scalar,
                        Op::Activation {
                            dst: out.clone(),
                            src: acc,
                            func: neuron_isa::ActFunc::Identity,
                            scale: Operand::Imm(1.0),
                            bias: Some(Operand::PerPartition(col)),
                            accum: None,
                        },
                    );
                } else {
                    let mut operands: Vec<Option<OpTile>> = vec![None; max_op];
                    operands[bias_idx] = Some(OpTile::Column(col));
                    let tiles = ChainTiles {
                        src: acc,
                        work: b.work.tile(st.work, s.act_dtype, nf as u32, ntok as u32),
                        cast: None,
                        out: out.clone(),
                        operands: &operands,
                    };
                    st.work += 1;
                    chain::apply(ctx, &s.epilogue, &tiles)?;
                }
                ev += 1;
                ctx.store(y.cols_ap(tok0, ntok, f0, nf), out);
                c0 += ct;
            }
        }
        g0 += g;
    }
    Ok(())
}
