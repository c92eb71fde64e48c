//! Fused attention: `out = softmax(prologue(q @ k^T)) @ v` per batch and head, with the
//! score matrix never leaving the chip.
//!
//! Per (batch, head): K^T `[d, Sk]` and V `[Sk, Dv]` are loaded once (K^T by TensorE
//! transposes of row-major K tiles). Per tile of up to 128 queries: Q^T by transposes;
//! scores `[q, Sk]` accumulate over d-chunks in PSUM (one bank per 512 keys); the eviction
//! applies the prologue (scale, mask) into an fp32 SBUF tile; softmax runs on chip (max,
//! `exp` with `bias = -max` whose accumulator gives the row sums, reciprocal); the
//! unnormalized probabilities are stored in the matmul dtype, turned around on TensorE
//! (P^T, 128 keys at a time) and multiplied with V into a PSUM accumulator; the eviction
//! of that accumulator multiplies each row by `1 / sum` (normalizing after P @ V costs
//! Dv instead of Sk multiplies per row).

mod packed;

use super::chain::{self, ChainTiles, OpTile, selected};
use super::operands::{Broadcaster, ResidentRows, batch_operands, is_row_bcast, load_mat};
use super::softmax;
use super::{LowerCtx, chain_operands, kernel_input, lowering_error};
use crate::backend::alloc::{Buf, BufferReq};
use crate::backend::layout::{Mat, broadcast_view, cols};
use crate::backend::tiling::{AttentionTiling, FlashTiling};
use crate::error::CompileError;
use crate::kernel::{EwOp, Kernel, KernelGraph, KernelOp, View};
use neuron_isa::{ActFunc, AluOp, Ap, ChipConfig, Dtype, Engine, Memory, Op, Operand};

/// Applies what is left of the score prologue (`rest`) while evicting the scores from
/// PSUM (`tiles.src`) into `tiles.out`, and returns the tile the softmax reads: `tiles.out`,
/// or the scores in PSUM themselves when nothing is left to apply.
fn apply_prologue(
    ctx: &mut LowerCtx<'_>,
    rest: &[EwOp],
    tiles: &ChainTiles<'_>,
) -> Result<neuron_isa::Ap, CompileError> {
    if rest.is_empty() {
        return Ok(tiles.src.clone());
    }
    let res = chain::apply(ctx, rest, tiles)?;
    if res != tiles.out {
        let e = ctx.evict_engine();
        ctx.copy_on(e, tiles.out.clone(), res);
    }
    Ok(tiles.out.clone())
}

/// Keys per PSUM bank of scores.
const BANK_COLS: usize = 512;

/// From this many keys on, attention is lowered in the flash form (key blocks with an
/// online softmax) even when whole score rows would fit in SBUF: the rows of 2048 keys
/// already take most of a partition's SBUF and leave no room to double-buffer.
pub const FLASH_MIN_KEYS: usize = 2048;

/// Keys per block in the flash form: one PSUM bank of fp32 scores.
pub const FLASH_K_BLOCK: usize = BANK_COLS;

/// The shape facts of an attention kernel.
#[derive(Debug, Clone)]
pub struct AttnShape {
    /// Batch dimensions (batch, heads).
    pub batch: Vec<usize>,
    /// Queries.
    pub sq: usize,
    /// Keys.
    pub sk: usize,
    /// Query/key dimension.
    pub d: usize,
    /// Value dimension.
    pub dv: usize,
    /// q, k, v and out broadcast to `batch ++ [.., ..]`.
    pub q: View,
    /// Keys.
    pub k: View,
    /// Values.
    pub v: View,
    /// Output.
    pub out: View,
    /// Prologue operands by kernel input index, broadcast to `batch ++ [sq, sk]`.
    pub operands: Vec<(usize, View, bool)>,
    /// The prologue.
    pub prologue: Vec<EwOp>,
    /// Matmul dtype.
    pub mm_dtype: Dtype,
    /// Heads whose rows sit side by side in q, k and v (the innermost batch dimension when
    /// its stride is the head size, as for a `[B, S, H*D]` tensor viewed heads-first): their
    /// rows are loaded together, one DMA for all heads. 1 otherwise.
    pub group: usize,
}

/// Analyses an attention kernel.
pub fn analyze(_kg: &KernelGraph, k: &Kernel) -> Result<AttnShape, CompileError> {
    let err = |m: String| lowering_error(k, m);
    let KernelOp::Attention {
        q,
        k: kk,
        v,
        prologue,
    } = &k.op
    else {
        return Err(err("internal: not an attention kernel".into()));
    };
    let get = |i: usize| kernel_input(k, i);
    let (qv, kv, vv) = (get(*q)?, get(*kk)?, get(*v)?);
    let out = &k.output;
    let r = out.shape.len();
    if r < 2 || qv.shape.len() < 2 || kv.shape.len() < 2 || vv.shape.len() < 2 {
        return Err(err(format!(
            "expected rank >= 2 q, k, v and output, found {:?}",
            out.shape
        )));
    }
    let last2 = |v: &View| (v.shape[v.shape.len() - 2], v.shape[v.shape.len() - 1]);
    let (sq, d) = last2(qv);
    let (sk, dk) = last2(kv);
    let (skv, dv) = last2(vv);
    if dk != d || skv != sk || last2(out) != (sq, dv) {
        return Err(err(format!(
            "shapes do not agree: q {:?}, k {:?}, v {:?}, out {:?}",
            qv.shape, kv.shape, vv.shape, out.shape
        )));
    }
    let batch = out.shape[..r - 2].to_vec();
    let with = |a: usize, b: usize| {
        let mut s = batch.clone();
        s.extend([a, b]);
        s
    };
    let bc = |v: &View, a: usize, b: usize| {
        broadcast_view(v, &with(a, b)).ok_or_else(|| {
            err(format!(
                "{:?} does not broadcast to {:?}",
                v.shape,
                with(a, b)
            ))
        })
    };
    let mut operands = Vec::new();
    for i in chain_operands(prologue) {
        operands.push((i, bc(get(i)?, sq, sk)?, selected(prologue, i)));
    }
    // Heads side by side: head h's columns are at h * D of each row in q, k and v.
    let group = match batch.last() {
        Some(&h) if h > 1 => {
            let hd = batch.len() - 1;
            let side = |v: &View, cols: usize| {
                let r = v.shape.len();
                v.strides[r - 1] == 1 && v.strides[hd] == cols as isize
            };
            let (qb, kb, vb) = (bc(qv, sq, d)?, bc(kv, sk, d)?, bc(vv, sk, dv)?);
            if side(&qb, d) && side(&kb, d) && side(&vb, dv) {
                h
            } else {
                1
            }
        }
        _ => 1,
    };
    if dv > BANK_COLS {
        return Err(err(format!(
            "value dimension {dv} exceeds one PSUM bank ({BANK_COLS} fp32)"
        )));
    }
    Ok(AttnShape {
        q: bc(qv, sq, d)?,
        k: bc(kv, sk, d)?,
        v: bc(vv, sk, dv)?,
        out: out.clone(),
        batch,
        sq,
        sk,
        d,
        dv,
        operands,
        prologue: prologue.clone(),
        mm_dtype: k.mm_dtype,
        group,
    })
}

/// Buffers of an attention kernel.
pub fn buffers(s: &AttnShape, t: &AttentionTiling, cfg: &ChipConfig) -> Vec<BufferReq> {
    if let Some(fl) = t.flash {
        return flash_buffers(s, t, fl, cfg);
    }
    if let Some(pk) = packed::pack(s, t, cfg) {
        return packed::buffers(s, t, pk, cfg);
    }
    let p = cfg.partitions as usize;
    let mm = s.mm_dtype.size();
    let (dch, skch) = (s.d.div_ceil(p) as u64, s.sk.div_ceil(p) as u64);
    let (sk, qt) = (s.sk as u64, t.q_tile as u64);
    let bank = cfg.psum_bytes_per_partition / u64::from(cfg.psum_banks.max(1));
    let g = s.group as u64;
    let qtiles = s.sq.div_ceil(t.q_tile.max(1)) as u64;
    let mut v = vec![
        BufferReq::sbuf("kt", dch * sk * mm, t.slots),
        BufferReq::sbuf("qt", dch * qt * mm, t.slots),
        // Rows of q, k and v for a whole group of heads (one head when not grouped).
        BufferReq::sbuf("qrows", qtiles * g * s.d as u64 * mm, 2),
        BufferReq::sbuf("krows", skch * g * s.d as u64 * mm, 2),
        BufferReq::sbuf("vrows", skch * g * s.dv as u64 * mm, 2),
        BufferReq::sbuf("s", sk * 4, t.slots),
        BufferReq::sbuf("p", sk * mm, t.slots),
        BufferReq::sbuf("pt", skch * qt * mm, t.slots),
        BufferReq::sbuf("o", s.dv as u64 * 4, t.slots),
        BufferReq::sbuf("stat", 16, t.slots),
        BufferReq::sbuf("work", BANK_COLS as u64 * 4, 2),
        // Scores of two query tiles in flight when the banks allow (tp and acc take 4).
        BufferReq::psum(
            "sc",
            sk * 4,
            if 2 * (sk * 4).div_ceil(bank) + 4 <= u64::from(cfg.psum_banks) {
                2
            } else {
                1
            },
        ),
        BufferReq::psum("tp", bank, 2),
        BufferReq::psum("acc", s.dv as u64 * 4, 2),
    ];
    if chain::has_cast(&s.prologue) {
        v.push(BufferReq::sbuf(
            "cast",
            BANK_COLS as u64 * chain::CAST_BYTES,
            1,
        ));
    }
    let mut broadcast = false;
    for (i, view, full) in &s.operands {
        if is_row_bcast(view, *full) {
            // A mask row shared by every query: broadcast on chip once per distinct row.
            v.push(BufferReq::sbuf(&format!("op{i}"), sk * 4, 1));
            broadcast = true;
        } else {
            v.push(BufferReq::sbuf(&format!("op{i}"), BANK_COLS as u64 * 4, 2));
        }
    }
    if broadcast {
        v.extend(Broadcaster::buffers(s.sk, true));
    }
    v
}

/// Rotation counters.
#[derive(Default)]
struct Slots {
    batch: usize,
    group: usize,
    q: usize,
    tp: usize,
    work: usize,
    op: usize,
}

/// Writes the transpose of the SBUF tile `st` (`[nr, ncols]`, rows on partitions) into
/// `dst`, laid out as chunks of 128 columns of `width` elements: element `(r, c)` goes to
/// chunk `c / 128`, partition `c % 128`, column `col0 + r`.
#[allow(clippy::too_many_arguments)]
fn transpose_from(
    ctx: &mut LowerCtx<'_>,
    st: &Ap,
    ncols: usize,
    dst_base: u64,
    width: usize,
    col0: usize,
    tp: &Buf,
    sl: &mut Slots,
    scale: f32,
) {
    let p = ctx.cfg.partitions as usize;
    let dtype = st.dtype;
    let nr = st.partitions;
    for c in 0..ncols.div_ceil(p) {
        let cl = (ncols - c * p).min(p);
        let t = tp.tile(sl.tp, Dtype::F32, cl as u32, nr);
        sl.tp += 1;
        ctx.push(
            Engine::Tensor,
            Op::Transpose {
                dst: t.clone(),
                src: cols(st, (c * p) as u32, cl as u32),
            },
        );
        let dst = Ap::on_chip(
            Memory::Sbuf,
            dtype,
            0,
            cl as u32,
            dst_base + ((c * width + col0) as u64) * dtype.size(),
            nr,
        );
        if scale == 1.0 {
            let e = ctx.evict_engine();
            ctx.copy_on(e, dst, t);
        } else {
            // A folded prologue scale (see `packed::folded_scale`), applied on eviction.
            ctx.push(
                Engine::Scalar,
                Op::Activation {
                    dst,
                    src: t,
                    func: ActFunc::Identity,
                    scale: Operand::Imm(scale),
                    bias: None,
                    accum: None,
                },
            );
        }
    }
}

/// A buffer of rows of q, k or v for a group of `heads` heads whose rows sit side by side:
/// per slot, blocks of up to 128 rows (on partitions) of `heads * width` elements, head
/// `h`'s columns at `h * width` of each row.
#[derive(Clone)]
struct GroupRows {
    buf: Buf,
    heads: usize,
    width: usize,
    dtype: Dtype,
}

impl GroupRows {
    /// Loads rows `r0 .. r0 + nr` of all heads of `m` (head 0's matrix; the other heads
    /// follow along each row) into block `c` of slot `gs`, casting to the buffer's dtype:
    /// one DMA for all heads.
    fn load(&self, ctx: &mut LowerCtx<'_>, gs: usize, c: usize, m: &Mat, r0: usize, nr: usize) {
        let ncols = self.heads * self.width;
        let dst = self.buf.tile_at(
            gs,
            (c * ncols) as u64 * self.dtype.size(),
            self.dtype,
            nr as u32,
            ncols as u32,
        );
        let src = Ap {
            dims: vec![neuron_isa::Dim {
                size: ncols as u32,
                stride: m.cs,
            }],
            ..m.rows_ap(r0, nr, 0, 1)
        };
        ctx.load(dst, src);
    }

    /// Head `h`'s `[nr, width]` columns of block `c` of slot `gs`.
    fn head(&self, gs: usize, c: usize, h: usize, nr: usize) -> Ap {
        self.buf.tile_at(
            gs,
            ((c * self.heads + h) * self.width) as u64 * self.dtype.size(),
            self.dtype,
            nr as u32,
            self.width as u32,
        )
    }
}

/// The second half of a query tile's work, emitted one tile later so that TensorE computes
/// the next tile's scores while VectorE/ScalarE run this tile's softmax.
struct Pending {
    /// Unnormalized probabilities `[q, Sk]` in the matmul dtype.
    ptile: Ap,
    /// `1 / row sum`, `[q, 1]`.
    recip: Ap,
    /// Slot of the per-tile buffers.
    qs: usize,
    /// First query row and count.
    q0: usize,
    qn: usize,
    /// Output matrix of this head.
    o: Mat,
    /// V of this head: group slot and head index in the group.
    gs: usize,
    h: usize,
}

/// Lowers an attention kernel.
pub fn lower(ctx: &mut LowerCtx<'_>, t: &AttentionTiling) -> Result<(), CompileError> {
    let s = analyze(ctx.kg, ctx.kernel)?;
    if let Some(fl) = t.flash {
        return lower_flash(ctx, &s, t, fl);
    }
    if let Some(pk) = packed::pack(&s, t, ctx.cfg) {
        return packed::lower(ctx, &s, pk);
    }
    let p = ctx.cfg.partitions as usize;
    let mm = s.mm_dtype;
    let b = |n: &str| ctx.buf(n);
    let (ktb, qrows, krows, vrows, qtb, sb, pb, ptb, ob, stat, work) = (
        b("kt")?,
        b("qrows")?,
        b("krows")?,
        b("vrows")?,
        b("qt")?,
        b("s")?,
        b("p")?,
        b("pt")?,
        b("o")?,
        b("stat")?,
        b("work")?,
    );
    let (scb, tpb, accb) = (b("sc")?, b("tp")?, b("acc")?);
    let group_rows = |buf: Buf, width: usize| GroupRows {
        buf,
        heads: s.group,
        width,
        dtype: mm,
    };
    let (qrows, krows, vrows) = (
        group_rows(qrows, s.d),
        group_rows(krows, s.d),
        group_rows(vrows, s.dv),
    );
    let cast = ctx.bufs.get("cast").cloned();
    let (qt_id, qd) = ctx.tensor(&s.q)?;
    let (kt_id, kd) = ctx.tensor(&s.k)?;
    let (vt_id, vd) = ctx.tensor(&s.v)?;
    let (ot_id, od) = ctx.tensor(&s.out)?;
    let batches: usize = s.batch.iter().product();
    let (dch, skch) = (s.d.div_ceil(p), s.sk.div_ceil(p));
    let mut sl = Slots::default();
    let n_in = ctx.kernel.inputs.len();
    // Row-broadcast operands (a mask row shared by every query) stay resident.
    let mut resident = ResidentRows::new(ctx, "tp", n_in, t.q_tile as u32, s.sk)?;
    let bufs_b = FinishBufs {
        pt: ptb.clone(),
        tp: tpb.clone(),
        acc: accb.clone(),
        o: ob.clone(),
        vrows: vrows.clone(),
    };
    let mut pending: Option<Pending> = None;
    for bi in 0..batches {
        let q = Mat::of_batch(&s.q, &s.batch, bi, qt_id, qd);
        let kmat = Mat::of_batch(&s.k, &s.batch, bi, kt_id, kd);
        let vmat = Mat::of_batch(&s.v, &s.batch, bi, vt_id, vd);
        let o = Mat::of_batch(&s.out, &s.batch, bi, ot_id, od);
        let ops = batch_operands(ctx, &s.operands, &s.batch, bi)?;
        resident.ensure_row_bcasts(ctx, &ops)?;
        let bslot = sl.batch;
        sl.batch += 1;
        let h = bi % s.group;
        if h == 0 {
            // Rows of q, k and v for the whole group of heads, one DMA each per 128 rows.
            let gs = sl.group;
            sl.group += 1;
            for c in 0..skch {
                let (r0, nr) = (c * p, (s.sk - c * p).min(p));
                krows.load(ctx, gs, c, &kmat, r0, nr);
                vrows.load(ctx, gs, c, &vmat, r0, nr);
            }
            for j in 0..s.sq.div_ceil(t.q_tile) {
                let (q0, qn) = (j * t.q_tile, (s.sq - j * t.q_tile).min(t.q_tile));
                qrows.load(ctx, gs, j, &q, q0, qn);
            }
        }
        let gs = sl.group.saturating_sub(1);
        // K^T [d, Sk] for this head, from its columns of the group's rows.
        let kt_base = ktb.slot(bslot);
        for c in 0..skch {
            let st = krows.head(gs, c, h, (s.sk - c * p).min(p));
            transpose_from(ctx, &st, s.d, kt_base, s.sk, c * p, &tpb, &mut sl, 1.0);
        }
        let mut q0 = 0;
        while q0 < s.sq {
            let qn = t.q_tile.min(s.sq - q0);
            let qu = qn as u32;
            let qs = sl.q;
            sl.q += 1;
            let qt_base = qtb.slot(qs);
            let j = q0 / t.q_tile;
            let st = qrows.head(gs, j, h, qn);
            transpose_from(ctx, &st, s.d, qt_base, t.q_tile, 0, &tpb, &mut sl, 1.0);
            // Scores, one PSUM bank per 512 keys, accumulated over d-chunks.
            let sc = scb.tile(qs, Dtype::F32, qu, s.sk as u32);
            let stile = sb.tile(qs, Dtype::F32, qu, s.sk as u32);
            let mut k0 = 0;
            while k0 < s.sk {
                let kn = BANK_COLS.min(s.sk - k0);
                for c in 0..dch {
                    let dl = (s.d - c * p).min(p) as u32;
                    let stationary = Ap::on_chip(
                        Memory::Sbuf,
                        mm,
                        0,
                        dl,
                        qt_base + ((c * t.q_tile) as u64) * mm.size(),
                        qu,
                    );
                    let moving = Ap::on_chip(
                        Memory::Sbuf,
                        mm,
                        0,
                        dl,
                        kt_base + ((c * s.sk + k0) as u64) * mm.size(),
                        kn as u32,
                    );
                    ctx.push(
                        Engine::Tensor,
                        Op::Matmul {
                            dst: cols(&sc, k0 as u32, kn as u32),
                            stationary,
                            moving,
                            accumulate: c > 0,
                        },
                    );
                }
                // Evict this bank through the prologue into the fp32 score tile.
                let mut operands: Vec<Option<OpTile>> = vec![None; n_in];
                for (i, mat, full) in &ops {
                    if let Some(tile) = resident.tile(*i, qu, k0, kn) {
                        operands[*i] = Some(tile);
                        continue;
                    }
                    let buf = ctx.buf(&format!("op{i}"))?;
                    operands[*i] = Some(load_mat(ctx, mat, *full, q0, qn, k0, kn, &buf, sl.op));
                }
                sl.op += 1;
                let tiles = ChainTiles {
                    src: cols(&sc, k0 as u32, kn as u32),
                    work: work.tile(sl.work, Dtype::F32, qu, kn as u32),
                    cast: cast.as_ref().map(|c| c.tile(0, Dtype::F32, qu, kn as u32)),
                    out: cols(&stile, k0 as u32, kn as u32),
                    operands: &operands,
                };
                sl.work += 1;
                let res = chain::apply(ctx, &s.prologue, &tiles)?;
                if res != tiles.out {
                    let e = ctx.evict_engine();
                    ctx.copy_on(e, tiles.out.clone(), res);
                }
                k0 += kn;
            }
            // Softmax numerator and row sums.
            let st = stat.tile(qs, Dtype::F32, qu, 4);
            let ptile = pb.tile(qs, mm, qu, s.sk as u32);
            let recip = softmax::unnormalized(ctx, stile, ptile.clone(), &st);
            let next = Pending {
                ptile,
                recip,
                qs,
                q0,
                qn,
                o,
                gs,
                h,
            };
            if let Some(prev) = pending.replace(next) {
                finish_tile(ctx, &s, t, &bufs_b, &prev, &mut sl);
            }
            q0 += qn;
        }
    }
    if let Some(prev) = pending.take() {
        finish_tile(ctx, &s, t, &bufs_b, &prev, &mut sl);
    }
    Ok(())
}

/// Buffers the second half of a query tile uses.
struct FinishBufs {
    pt: Buf,
    tp: Buf,
    acc: Buf,
    o: Buf,
    vrows: GroupRows,
}

/// P^T (128 keys at a time), P @ V accumulated over key chunks in PSUM, the eviction that
/// normalizes each row by `1 / sum`, and the store.
fn finish_tile(
    ctx: &mut LowerCtx<'_>,
    s: &AttnShape,
    t: &AttentionTiling,
    b: &FinishBufs,
    pd: &Pending,
    sl: &mut Slots,
) {
    let p = ctx.cfg.partitions as usize;
    let mm = s.mm_dtype;
    let skch = s.sk.div_ceil(p);
    let qu = pd.qn as u32;
    let (h, gs, qs) = (pd.h, pd.gs, pd.qs);
    let (ptb, tpb, accb, ob, vrows) = (&b.pt, &b.tp, &b.acc, &b.o, &b.vrows);
    let recip = pd.recip.clone();
    let od = pd.o.dtype;
    // P^T, 128 keys at a time, then P @ V accumulated over key chunks.
    let pt_base = ptb.slot(qs);
    transpose_from(ctx, &pd.ptile, s.sk, pt_base, t.q_tile, 0, tpb, sl, 1.0);
    let acc = accb.tile(qs, Dtype::F32, qu, s.dv as u32);
    for c in 0..skch {
        let kl = (s.sk - c * p).min(p) as u32;
        ctx.push(
            Engine::Tensor,
            Op::Matmul {
                dst: acc.clone(),
                stationary: Ap::on_chip(
                    Memory::Sbuf,
                    mm,
                    0,
                    kl,
                    pt_base + ((c * t.q_tile) as u64) * mm.size(),
                    qu,
                ),
                moving: vrows.head(gs, c, h, kl as usize),
                accumulate: c > 0,
            },
        );
    }
    let otile = ob.tile(qs, od, qu, s.dv as u32);
    ctx.push(
        Engine::Scalar,
        Op::Activation {
            dst: otile.clone(),
            src: acc,
            func: ActFunc::Identity,
            scale: Operand::PerPartition(recip),
            bias: None,
            accum: None,
        },
    );
    ctx.store(pd.o.rows_ap(pd.q0, pd.qn, 0, s.dv), otile);
}

// ---------------------------------------------------------------------------------------
// Flash form: key blocks with an online softmax.
// ---------------------------------------------------------------------------------------
//
// Per (batch, head) and per pass of `q_tiles` resident query tiles: Q^T of every tile of
// the pass (TensorE transposes), then for each block of up to 512 keys: K and V rows of
// the block are loaded once for the whole pass and K^T made by transposes; for each query
// tile the block's scores go to one PSUM bank, their eviction applies the prologue, and
// the running statistics are updated (Dao et al. 2022, "FlashAttention", algorithm 1):
//
//   m' = max(m, rowmax(s))      alpha = exp(m - m')      p = exp(s - m')
//   l' = l * alpha + rowsum(p)  O' = O * alpha + p @ V
//
// with `rowsum(p)` from the exponential's accumulator. After the last block O / l is
// stored. SBUF holds O (fp32) and the statistics of each resident tile, so the score
// matrix of any length never exists whole; K and V are read `sq / (128 q_tiles)` times.

/// Columns of the per-tile statistics: running max, -new max, alpha, running sum, block
/// sum, -block max, 1 / sum.
const ST_M: u32 = 0;
const ST_NEG_NEW: u32 = 1;
const ST_ALPHA: u32 = 2;
const ST_L: u32 = 3;
const ST_BLOCK_SUM: u32 = 4;
const ST_NEG_BLOCK_MAX: u32 = 5;
const ST_RECIP: u32 = 6;
const ST_COLS: u32 = 8;

/// Buffers of the flash form.
fn flash_buffers(
    s: &AttnShape,
    t: &AttentionTiling,
    fl: FlashTiling,
    cfg: &ChipConfig,
) -> Vec<BufferReq> {
    let p = cfg.partitions as u64;
    let mm = s.mm_dtype.size();
    let (dch, kb) = (s.d.div_ceil(p as usize) as u64, fl.k_block as u64);
    let kch = kb.div_ceil(p);
    let (qt, nq) = (t.q_tile as u64, fl.q_tiles as u64);
    let bank = cfg.psum_bytes_per_partition / u64::from(cfg.psum_banks.max(1));
    let mut v = vec![
        BufferReq::sbuf("qrows", s.d as u64 * mm, 2),
        BufferReq::sbuf("qt", dch * nq * qt * mm, 1),
        BufferReq::sbuf("krows", kch * s.d as u64 * mm, 2),
        BufferReq::sbuf("vrows", kch * s.dv as u64 * mm, 2),
        BufferReq::sbuf("kt", dch * kb * mm, 2),
        BufferReq::sbuf("s", kb * 4, 2),
        BufferReq::sbuf("p", kb * mm, 3),
        BufferReq::sbuf("pt", kch * qt * mm, 2),
        BufferReq::sbuf("o", nq * s.dv as u64 * 4, 1),
        BufferReq::sbuf("stat", nq * u64::from(ST_COLS) * 4, 1),
        BufferReq::sbuf("out", s.dv as u64 * 4, 2),
        BufferReq::sbuf("work", kb * 4, 2),
        BufferReq::psum("sc", kb * 4, 2),
        BufferReq::psum("tp", bank, 2),
        BufferReq::psum("acc", s.dv as u64 * 4, 2),
    ];
    if chain::has_cast(&s.prologue) {
        v.push(BufferReq::sbuf("cast", kb * chain::CAST_BYTES, 1));
    }
    for (i, _, _) in &s.operands {
        v.push(BufferReq::sbuf(&format!("op{i}"), kb * 4, 2));
    }
    v
}

/// A query tile's block whose second half (P^T, P @ V, the O update) is emitted one tile
/// later, so TensorE computes the next tile's scores while ScalarE exponentiates.
struct FlashPending {
    /// `exp(s - m')` in the matmul dtype, `[q, kn]`.
    ptile: Ap,
    /// Keys in the block.
    kn: usize,
    /// Query rows.
    qn: usize,
    /// Resident tile index within the pass.
    ti: usize,
    /// Slot of the block's K/V rows.
    kv: usize,
}

fn flash_finish(
    ctx: &mut LowerCtx<'_>,
    s: &AttnShape,
    t: &AttentionTiling,
    b: &FlashBufs,
    pd: &FlashPending,
    sl: &mut Slots,
) {
    let p = ctx.cfg.partitions as usize;
    let mm = s.mm_dtype;
    let qu = pd.qn as u32;
    let pt_base = b.pt.slot(sl.q);
    let kch = pd.kn.div_ceil(p);
    let bank_cols =
        (ctx.cfg.psum_bytes_per_partition / u64::from(ctx.cfg.psum_banks.max(1)) / 4) as usize;
    if pd.kn % p == 0 && pd.qn == t.q_tile && kch * t.q_tile <= bank_cols {
        // The block's P^T chunks side by side in one PSUM bank, one ScalarE eviction for
        // all of them (instead of one small eviction per 128 keys).
        let tp = b.tp.tile(sl.tp, Dtype::F32, p as u32, (kch * pd.qn) as u32);
        sl.tp += 1;
        for c in 0..kch {
            ctx.push(
                Engine::Tensor,
                Op::Transpose {
                    dst: cols(&tp, (c * pd.qn) as u32, pd.qn as u32),
                    src: cols(&pd.ptile, (c * p) as u32, p as u32),
                },
            );
        }
        let dst = Ap::on_chip(Memory::Sbuf, mm, 0, p as u32, pt_base, (kch * pd.qn) as u32);
        ctx.copy_on(Engine::Scalar, dst, tp);
    } else {
        transpose_from(ctx, &pd.ptile, pd.kn, pt_base, t.q_tile, 0, &b.tp, sl, 1.0);
    }
    let acc = b.acc.tile(sl.q, Dtype::F32, qu, s.dv as u32);
    sl.q += 1;
    for c in 0..pd.kn.div_ceil(p) {
        let kl = (pd.kn - c * p).min(p) as u32;
        ctx.push(
            Engine::Tensor,
            Op::Matmul {
                dst: acc.clone(),
                stationary: Ap::on_chip(
                    Memory::Sbuf,
                    mm,
                    0,
                    kl,
                    pt_base + ((c * t.q_tile) as u64) * mm.size(),
                    qu,
                ),
                moving: b.vrows.head(pd.kv, c, 0, kl as usize),
                accumulate: c > 0,
            },
        );
    }
    // O = O * alpha + P @ V.
    let o =
        b.o.tile_at(0, (pd.ti * s.dv * 4) as u64, Dtype::F32, qu, s.dv as u32);
    let st = b.stat.tile_at(
        0,
        (pd.ti as u64) * u64::from(ST_COLS) * 4,
        Dtype::F32,
        qu,
        ST_COLS,
    );
    ctx.push(
        Engine::Vector,
        Op::TensorScalar {
            dst: o.clone(),
            src: o.clone(),
            op0: AluOp::Mul,
            operand0: Operand::PerPartition(cols(&st, ST_ALPHA, 1)),
            reverse0: false,
            op1: AluOp::Bypass,
            operand1: Operand::Imm(0.0),
            reverse1: false,
        },
    );
    ctx.push(
        Engine::Vector,
        Op::TensorTensor {
            dst: o.clone(),
            a: o,
            b: acc,
            op: AluOp::Add,
        },
    );
}

/// Buffers of the flash form, looked up once.
struct FlashBufs {
    pt: Buf,
    tp: Buf,
    acc: Buf,
    o: Buf,
    stat: Buf,
    vrows: GroupRows,
}

/// Lowers an attention kernel in the flash form.
fn lower_flash(
    ctx: &mut LowerCtx<'_>,
    s: &AttnShape,
    t: &AttentionTiling,
    fl: FlashTiling,
) -> Result<(), CompileError> {
    let p = ctx.cfg.partitions as usize;
    let mm = s.mm_dtype;
    let b = |n: &str| ctx.buf(n);
    let (qrows, qtb, krows, vrows, ktb, sb, pb, outb, work) = (
        b("qrows")?,
        b("qt")?,
        b("krows")?,
        b("vrows")?,
        b("kt")?,
        b("s")?,
        b("p")?,
        b("out")?,
        b("work")?,
    );
    let fb = FlashBufs {
        pt: b("pt")?,
        tp: b("tp")?,
        acc: b("acc")?,
        o: b("o")?,
        stat: b("stat")?,
        vrows: GroupRows {
            buf: vrows,
            heads: 1,
            width: s.dv,
            dtype: mm,
        },
    };
    let scb = b("sc")?;
    let krows = GroupRows {
        buf: krows,
        heads: 1,
        width: s.d,
        dtype: mm,
    };
    let qrows = GroupRows {
        buf: qrows,
        heads: 1,
        width: s.d,
        dtype: mm,
    };
    let cast = ctx.bufs.get("cast").cloned();
    let (qt_id, qd) = ctx.tensor(&s.q)?;
    let (kt_id, kd) = ctx.tensor(&s.k)?;
    let (vt_id, vd) = ctx.tensor(&s.v)?;
    let (ot_id, od) = ctx.tensor(&s.out)?;
    let batches: usize = s.batch.iter().product();
    let dch = s.d.div_ceil(p);
    let n_in = ctx.kernel.inputs.len();
    let qtiles = s.sq.div_ceil(t.q_tile);
    let mut sl = Slots::default();
    let mut kv_slot = 0usize;
    // A leading power-of-two scale of the prologue is applied to Q^T instead (exact).
    let fold = packed::folded_scale(&s.prologue, mm);
    for bi in 0..batches {
        let q = Mat::of_batch(&s.q, &s.batch, bi, qt_id, qd);
        let kmat = Mat::of_batch(&s.k, &s.batch, bi, kt_id, kd);
        let vmat = Mat::of_batch(&s.v, &s.batch, bi, vt_id, vd);
        let omat = Mat::of_batch(&s.out, &s.batch, bi, ot_id, od);
        let ops = batch_operands(ctx, &s.operands, &s.batch, bi)?;
        let mut pass0 = 0;
        while pass0 < qtiles {
            let npass = fl.q_tiles.min(qtiles - pass0);
            let tile = |ti: usize| {
                let q0 = (pass0 + ti) * t.q_tile;
                (q0, t.q_tile.min(s.sq - q0))
            };
            // Q^T of every tile of the pass; fresh statistics and accumulators.
            let qt_base = qtb.slot(0);
            for ti in 0..npass {
                let (q0, qn) = tile(ti);
                let qs = sl.group;
                sl.group += 1;
                qrows.load(ctx, qs, 0, &q, q0, qn);
                let st = qrows.head(qs, 0, 0, qn);
                transpose_from(
                    ctx,
                    &st,
                    s.d,
                    qt_base,
                    npass * t.q_tile,
                    ti * t.q_tile,
                    &fb.tp,
                    &mut sl,
                    fold.unwrap_or(1.0),
                );
                let stt = fb.stat.tile_at(
                    0,
                    (ti as u64) * u64::from(ST_COLS) * 4,
                    Dtype::F32,
                    qn as u32,
                    ST_COLS,
                );
                ctx.push(
                    Engine::Vector,
                    Op::Memset {
                        dst: cols(&stt, ST_M, 1),
                        value: -3.0e38,
                    },
                );
                ctx.push(
                    Engine::Vector,
                    Op::Memset {
                        dst: cols(&stt, ST_L, 1),
                        value: 0.0,
                    },
                );
                let o = fb.o.tile_at(
                    0,
                    (ti * s.dv * 4) as u64,
                    Dtype::F32,
                    qn as u32,
                    s.dv as u32,
                );
                ctx.push(Engine::Vector, Op::Memset { dst: o, value: 0.0 });
            }
            let mut pending: Option<FlashPending> = None;
            let mut k0 = 0;
            while k0 < s.sk {
                let kn = fl.k_block.min(s.sk - k0);
                let kch = kn.div_ceil(p);
                let kv = kv_slot;
                kv_slot += 1;
                for c in 0..kch {
                    let (r0, nr) = (k0 + c * p, (kn - c * p).min(p));
                    krows.load(ctx, kv, c, &kmat, r0, nr);
                    fb.vrows.load(ctx, kv, c, &vmat, r0, nr);
                }
                let kt_base = ktb.slot(kv);
                for c in 0..kch {
                    let st = krows.head(kv, c, 0, (kn - c * p).min(p));
                    transpose_from(
                        ctx,
                        &st,
                        s.d,
                        kt_base,
                        fl.k_block,
                        c * p,
                        &fb.tp,
                        &mut sl,
                        1.0,
                    );
                }
                for ti in 0..npass {
                    let (q0, qn) = tile(ti);
                    let qu = qn as u32;
                    let bs = sl.batch;
                    sl.batch += 1;
                    let sc = scb.tile(bs, Dtype::F32, qu, kn as u32);
                    for c in 0..dch {
                        let dl = (s.d - c * p).min(p) as u32;
                        let stationary = Ap::on_chip(
                            Memory::Sbuf,
                            mm,
                            0,
                            dl,
                            qt_base + ((c * npass * t.q_tile + ti * t.q_tile) as u64) * mm.size(),
                            qu,
                        );
                        let moving = Ap::on_chip(
                            Memory::Sbuf,
                            mm,
                            0,
                            dl,
                            kt_base + ((c * fl.k_block) as u64) * mm.size(),
                            kn as u32,
                        );
                        ctx.push(
                            Engine::Tensor,
                            Op::Matmul {
                                dst: sc.clone(),
                                stationary,
                                moving,
                                accumulate: c > 0,
                            },
                        );
                    }
                    // Evict through the prologue into the fp32 score tile.
                    let mut operands: Vec<Option<OpTile>> = vec![None; n_in];
                    for (i, mat, full) in &ops {
                        let buf = ctx.buf(&format!("op{i}"))?;
                        operands[*i] = Some(load_mat(ctx, mat, *full, q0, qn, k0, kn, &buf, sl.op));
                    }
                    sl.op += 1;
                    let stile = sb.tile(bs, Dtype::F32, qu, kn as u32);
                    let tiles = ChainTiles {
                        src: sc.clone(),
                        work: work.tile(sl.work, Dtype::F32, qu, kn as u32),
                        cast: cast.as_ref().map(|c| c.tile(0, Dtype::F32, qu, kn as u32)),
                        out: stile.clone(),
                        operands: &operands,
                    };
                    sl.work += 1;
                    let rest = &s.prologue[usize::from(fold.is_some())..];
                    // With the scale folded into Q^T and nothing else left, the
                    // statistics read the scores in PSUM.
                    let stile = apply_prologue(ctx, rest, &tiles)?;
                    // Online softmax statistics.
                    let st = fb.stat.tile_at(
                        0,
                        (ti as u64) * u64::from(ST_COLS) * 4,
                        Dtype::F32,
                        qu,
                        ST_COLS,
                    );
                    let c = |k: u32| cols(&st, k, 1);
                    ctx.push(
                        Engine::Vector,
                        Op::TensorReduce {
                            dst: c(ST_NEG_BLOCK_MAX),
                            src: stile.clone(),
                            op: AluOp::Max,
                            axes: 1,
                            negate: true,
                        },
                    );
                    // -m' = min(-m, -blockmax).
                    ctx.push(
                        Engine::Vector,
                        Op::TensorScalar {
                            dst: c(ST_NEG_NEW),
                            src: c(ST_M),
                            op0: AluOp::Mul,
                            operand0: Operand::Imm(-1.0),
                            reverse0: false,
                            op1: AluOp::Min,
                            operand1: Operand::PerPartition(c(ST_NEG_BLOCK_MAX)),
                            reverse1: false,
                        },
                    );
                    // alpha = exp(m - m').
                    ctx.push(
                        Engine::Scalar,
                        Op::Activation {
                            dst: c(ST_ALPHA),
                            src: c(ST_M),
                            func: ActFunc::Exp,
                            scale: Operand::Imm(1.0),
                            bias: Some(Operand::PerPartition(c(ST_NEG_NEW))),
                            accum: None,
                        },
                    );
                    // p = exp(s - m'), with the block's row sums.
                    let ptile = pb.tile(bs, mm, qu, kn as u32);
                    ctx.push(
                        Engine::Scalar,
                        Op::Activation {
                            dst: ptile.clone(),
                            src: stile,
                            func: ActFunc::Exp,
                            scale: Operand::Imm(1.0),
                            bias: Some(Operand::PerPartition(c(ST_NEG_NEW))),
                            accum: Some(c(ST_BLOCK_SUM)),
                        },
                    );
                    // m = m'; l = l * alpha + block sum.
                    ctx.push(
                        Engine::Vector,
                        Op::TensorScalar {
                            dst: c(ST_M),
                            src: c(ST_NEG_NEW),
                            op0: AluOp::Mul,
                            operand0: Operand::Imm(-1.0),
                            reverse0: false,
                            op1: AluOp::Bypass,
                            operand1: Operand::Imm(0.0),
                            reverse1: false,
                        },
                    );
                    ctx.push(
                        Engine::Vector,
                        Op::TensorScalar {
                            dst: c(ST_L),
                            src: c(ST_L),
                            op0: AluOp::Mul,
                            operand0: Operand::PerPartition(c(ST_ALPHA)),
                            reverse0: false,
                            op1: AluOp::Add,
                            operand1: Operand::PerPartition(c(ST_BLOCK_SUM)),
                            reverse1: false,
                        },
                    );
                    let next = FlashPending {
                        ptile,
                        kn,
                        qn,
                        ti,
                        kv,
                    };
                    if let Some(prev) = pending.replace(next) {
                        flash_finish(ctx, s, t, &fb, &prev, &mut sl);
                    }
                }
                k0 += kn;
            }
            if let Some(prev) = pending.take() {
                flash_finish(ctx, s, t, &fb, &prev, &mut sl);
            }
            // out = O / l.
            for ti in 0..npass {
                let (q0, qn) = tile(ti);
                let qu = qn as u32;
                let st = fb.stat.tile_at(
                    0,
                    (ti as u64) * u64::from(ST_COLS) * 4,
                    Dtype::F32,
                    qu,
                    ST_COLS,
                );
                ctx.push(
                    Engine::Scalar,
                    Op::Activation {
                        dst: cols(&st, ST_RECIP, 1),
                        src: cols(&st, ST_L, 1),
                        func: ActFunc::Reciprocal,
                        scale: Operand::Imm(1.0),
                        bias: None,
                        accum: None,
                    },
                );
                let o =
                    fb.o.tile_at(0, (ti * s.dv * 4) as u64, Dtype::F32, qu, s.dv as u32);
                let otile = outb.tile(sl.tp, od, qu, s.dv as u32);
                sl.tp += 1;
                ctx.push(
                    Engine::Scalar,
                    Op::Activation {
                        dst: otile.clone(),
                        src: o,
                        func: ActFunc::Identity,
                        scale: Operand::PerPartition(cols(&st, ST_RECIP, 1)),
                        bias: None,
                        accum: None,
                    },
                );
                ctx.store(omat.rows_ap(q0, qn, 0, s.dv), otile);
            }
            pass0 += npass;
        }
    }
    Ok(())
}
