//! The packed form of fused attention: several heads per instruction.
//!
//! For short key rows (up to half a PSUM bank of keys, e.g. BERT's 128) one head's scores
//! are a `[q, Sk]` tile of a few hundred elements per partition, and every VectorE/ScalarE
//! instruction of the per-head form pays its fixed cost (`MIN_II` floor plus the ~60-cycle
//! access overhead, trainium.md §2.3) on a small free size. The packed form lays a *pack*
//! of `g` heads side by side along the free axis (`g = bank / max(Sk, Dv, Q)`, 4 for
//! BERT-base) and runs the head-independent steps once per pack:
//!
//! - K^T and Q^T: TensorE transposes of the heads' columns of the q/k rows. When the head
//!   size is 32 or 64, `128 / d` heads are transposed at once, stacked on partitions (head
//!   `i` of a stack on partitions `i*d ..`, a legal partition start for `d` partitions), so
//!   one eviction of `g / stack * Sk` elements per partition serves the whole pack;
//! - scores: one matmul per head into its columns of one PSUM bank;
//! - the prologue (scale, mask, ..): one chain over `[q, g*Sk]`, the mask broadcast over
//!   the heads by a zero-stride free dimension (heads of a pack share every operand);
//! - softmax: one `tensor_reduce` max over `[q, g, Sk]` giving `[q, g]`; the exponential
//!   stays one ScalarE `activation(exp, bias = -max_h)` per head (the bias is a `[P, 1]`
//!   operand) with the row sum in its accumulator; one reciprocal for the pack;
//! - P^T: one transpose per head and 128 keys, all into one PSUM bank, one eviction;
//! - P @ V: one matmul per head and 128 keys into one accumulator bank; the normalization
//!   by `1 / sum` is one VectorE `tensor_tensor` for the pack (the reciprocals broadcast
//!   over each head's Dv columns by a zero stride).
//!
//! A leading multiply of the prologue by a power of two is folded into the Q^T eviction
//! ([`folded_scale`]). The K^T eviction, the prologue, the row max and the
//! normalization run on VectorE; the Q^T eviction, the exponentials, the reciprocal and the
//! P^T eviction on ScalarE, which balances the two. The packs run as a four-stage software
//! pipeline (see [`lower`]).

use super::super::LowerCtx;
use super::super::chain::{self, ChainTiles, OpTile};
use super::super::operands::{Broadcaster, ResidentRows, batch_operands, is_row_bcast, load_mat};
use super::{AttnShape, GroupRows, apply_prologue};
use crate::backend::alloc::{Buf, BufferReq};
use crate::backend::layout::{Mat, cols};
use crate::backend::tiling::AttentionTiling;
use crate::error::CompileError;
use crate::kernel::{BinaryFn, EwOp};
use neuron_isa::{ActFunc, AluOp, Ap, ChipConfig, Dim, Dtype, Engine, Memory, Op, Operand};
use std::collections::VecDeque;

/// The pack geometry of an attention kernel, `None` when it is lowered head by head.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Pack {
    /// Heads per pack (at most).
    pub heads: usize,
    /// Heads per transpose, stacked on partitions (1, 2 or 4).
    pub stack: usize,
    /// Heads whose q/k/v rows are loaded together (the kernel's group, or `heads`).
    pub unit: usize,
    /// A leading `* c` of the prologue folded into the Q^T eviction (see [`folded_scale`]).
    pub fold: Option<f32>,
    /// Packs whose scores are computed ahead of their row max (2 when PSUM has the banks,
    /// else 1); the software pipeline is described at [`lower`].
    pub ahead: usize,
    /// PSUM slots of the scores and of the transposes.
    pub sc_slots: usize,
    pub tp_slots: usize,
}

/// The prologue's leading multiply by a constant `c`, when it can be applied to Q instead
/// of to the scores without changing a bit: `c` a positive power of two (scaling by it
/// commutes with every rounding of the dot products, barring under/overflow) and q held in
/// bf16 or fp32 (whose exponent range keeps `c * q` normal for any realistic q; fp16 and
/// fp8 could underflow). Folding removes a VectorE pass over the scores.
pub fn folded_scale(prologue: &[EwOp], mm: Dtype) -> Option<f32> {
    let EwOp::Scalar {
        op: BinaryFn::Mul,
        value,
        ..
    } = prologue.first()?
    else {
        return None;
    };
    let c = *value;
    let pow2 = c.is_normal() && c > 0.0 && c.to_bits() & 0x007f_ffff == 0;
    (pow2 && matches!(mm, Dtype::Bf16 | Dtype::F32)).then_some(c)
}

/// The pack geometry: packed when every query fits one tile, the head size one partition
/// span, and at least two heads' scores, transposes and outputs fit one PSUM bank.
pub fn pack(s: &AttnShape, t: &AttentionTiling, cfg: &ChipConfig) -> Option<Pack> {
    let p = cfg.partitions as usize;
    let bank = cfg.psum_bytes_per_partition / u64::from(cfg.psum_banks.max(1));
    let bank_cols = (bank / 4) as usize;
    let batches: usize = s.batch.iter().product();
    if t.flash.is_some() || s.sq > t.q_tile || s.sq == 0 || s.d > p || s.dv > p || batches < 2 {
        return None;
    }
    let skch = s.sk.div_ceil(p);
    // Scores `[q, g*Sk]`, P^T `[128, g*skch*q]` and outputs `[q, g*Dv]` in one bank each.
    let widest = s.sk.max(s.dv).max(skch * t.q_tile);
    let mut heads = (bank_cols / widest.max(1)).min(batches);
    if s.group > 1 {
        heads = heads.min(s.group);
    }
    // Heads stacked on partitions for the transposes: a stack of `d`-partition heads must
    // start each on a legal partition (0/64 for 64, multiples of 32 for 32).
    let stack = if s.d == 64 || s.d == 32 {
        (p / s.d).min(heads).max(1)
    } else {
        1
    };
    if heads > stack {
        heads -= heads % stack;
    }
    if heads < 2 {
        return None;
    }
    let unit = if s.group > 1 { s.group } else { heads };
    let fold = folded_scale(&s.prologue, s.mm_dtype);
    // With nothing left of the prologue the exponentials read the scores in PSUM, which
    // then live one stage longer.
    let direct = fold.is_some() && s.prologue.len() == 1;
    let banks = cfg.psum_banks as usize;
    let extra = usize::from(direct);
    let ahead = if 2 + 1 + extra + 3 + 2 <= banks { 2 } else { 1 };
    let sc_slots = ahead + 1 + extra;
    let tp_slots = if sc_slots + 3 + 2 <= banks { 3 } else { 2 };
    if sc_slots + tp_slots + 2 > banks {
        return None;
    }
    Some(Pack {
        heads,
        stack,
        unit,
        fold,
        ahead,
        sc_slots,
        tp_slots,
    })
}

/// Slots of the q/k/v rows: a unit is loaded up to `ahead + 2 <= 4` packs before the
/// P @ V of an earlier unit's pack is emitted (one more slot than that for safety).
const ROW_SLOTS: u32 = 6;

/// Buffers of the packed form.
pub fn buffers(s: &AttnShape, t: &AttentionTiling, pk: Pack, cfg: &ChipConfig) -> Vec<BufferReq> {
    let p = cfg.partitions as usize;
    let mm = s.mm_dtype.size();
    let (g, u) = (pk.heads as u64, pk.unit as u64);
    let skch = s.sk.div_ceil(p) as u64;
    let (sk, qt, d, dv) = (s.sk as u64, t.q_tile as u64, s.d as u64, s.dv as u64);
    let nstack = g.div_ceil(pk.stack as u64);
    let bank = cfg.psum_bytes_per_partition / u64::from(cfg.psum_banks.max(1));
    let mut v = vec![
        // Rows of the units from the one loading to the one finishing.
        BufferReq::sbuf("qrows", u * d * mm, ROW_SLOTS),
        BufferReq::sbuf("krows", skch * u * d * mm, ROW_SLOTS),
        BufferReq::sbuf("vrows", skch * u * dv * mm, ROW_SLOTS),
        BufferReq::sbuf("kt", nstack * sk * mm, 2),
        BufferReq::sbuf("qt", nstack * qt * mm, 2),
        BufferReq::sbuf("s", g * sk * 4, 2),
        BufferReq::sbuf("p", g * sk * mm, 2),
        BufferReq::sbuf("pt", skch * g * qt * mm, 2),
        BufferReq::sbuf("o", g * dv * 4, 2),
        // Written by the row max, read by P @ V two packs later.
        BufferReq::sbuf("stat", 3 * g * 4, 3),
        BufferReq::sbuf("work", g * sk * 4, 2),
        BufferReq::psum("sc", g * sk * 4, pk.sc_slots as u32),
        BufferReq::psum("tp", bank, pk.tp_slots as u32),
        BufferReq::psum("acc", g * dv * 4, 2),
    ];
    if chain::has_cast(&s.prologue) {
        v.push(BufferReq::sbuf("cast", g * sk * chain::CAST_BYTES, 1));
    }
    let mut broadcast = false;
    for (i, view, full) in &s.operands {
        if is_row_bcast(view, *full) {
            v.push(BufferReq::sbuf(&format!("op{i}"), sk * 4, 1));
            broadcast = true;
        } else {
            v.push(BufferReq::sbuf(&format!("op{i}"), sk * 4, 2));
        }
    }
    if broadcast {
        v.extend(Broadcaster::buffers(s.sk, true));
    }
    v
}

/// Columns `c0 ..` of `nh` consecutive heads (from head `h`) of block `c` of slot `gs`.
fn heads_ap(r: &GroupRows, gs: usize, c: usize, h: usize, nh: usize, nr: usize) -> Ap {
    r.buf.tile_at(
        gs,
        ((c * r.heads + h) * r.width) as u64 * r.dtype.size(),
        r.dtype,
        nr as u32,
        (nh * r.width) as u32,
    )
}

/// Loads rows `r0 .. r0 + nr` of one head's matrix `m` into head position `h` of block
/// `c` of slot `gs`.
#[allow(clippy::too_many_arguments)]
fn load_head(
    ctx: &mut LowerCtx<'_>,
    r: &GroupRows,
    gs: usize,
    c: usize,
    h: usize,
    m: &Mat,
    r0: usize,
    nr: usize,
) {
    let dst = heads_ap(r, gs, c, h, 1, nr);
    ctx.load(dst, m.rows_ap(r0, nr, 0, r.width));
}

/// `ap` (a dense `[P, n]` tile) repeated `g` times along a leading zero-stride dimension.
fn repeated(ap: &Ap, g: usize) -> Ap {
    let n = ap.dims.iter().map(|d| d.size).product::<u32>();
    Ap {
        dims: vec![
            Dim {
                size: g as u32,
                stride: 0,
            },
            Dim { size: n, stride: 1 },
        ],
        ..ap.clone()
    }
}

/// The second half of a pack, emitted after the next pack's scores.
struct PackPending {
    ptile: Ap,
    stat: Ap,
    /// Heads in the pack, and the first one's index within its unit and in the batch.
    g: usize,
    hu: usize,
    bi: usize,
    /// Rows slot of the unit, and the pack's slot.
    gs: usize,
    slot: usize,
}

/// The buffers the packed form uses.
struct PackBufs {
    kt: Buf,
    qt: Buf,
    s: Buf,
    p: Buf,
    pt: Buf,
    o: Buf,
    stat: Buf,
    work: Buf,
    sc: Buf,
    tp: Buf,
    acc: Buf,
    cast: Option<Buf>,
    qrows: GroupRows,
    krows: GroupRows,
    vrows: GroupRows,
}

/// Rotation counters of the packed form.
#[derive(Default)]
struct Rot {
    tp: usize,
    pack: usize,
    op: usize,
}

/// Evicts a PSUM tile to SBUF on ScalarE (an identity activation).
fn evict(ctx: &mut LowerCtx<'_>, dst: Ap, src: Ap) {
    ctx.copy_on(Engine::Scalar, dst, src);
}

/// Transposes heads `hu .. hu + g` (of block `c` in slot `gs` of `rows`, `nr` rows each)
/// into PSUM, `stack` heads per transpose stacked on partitions, stack `j` at columns
/// `j * width + col0`; returns the PSUM tile slot used.
#[allow(clippy::too_many_arguments)]
fn transpose_heads(
    ctx: &mut LowerCtx<'_>,
    b: &PackBufs,
    rows: &GroupRows,
    pk: Pack,
    tp: usize,
    gs: usize,
    c: usize,
    hu: usize,
    g: usize,
    nr: usize,
    width: usize,
    col0: usize,
) {
    let d = rows.width;
    for j in 0..g.div_ceil(pk.stack) {
        let nh = pk.stack.min(g - j * pk.stack);
        let src = heads_ap(rows, gs, c, hu + j * pk.stack, nh, nr);
        let dst = b.tp.tile_at(
            tp,
            ((j * width + col0) * 4) as u64,
            Dtype::F32,
            (nh * d) as u32,
            nr as u32,
        );
        ctx.push(Engine::Tensor, Op::Transpose { dst, src });
    }
}

/// Lowers an attention kernel in the packed form.
pub fn lower(ctx: &mut LowerCtx<'_>, s: &AttnShape, pk: Pack) -> Result<(), CompileError> {
    let mm = s.mm_dtype;
    let rows = |buf: Buf, width: usize| GroupRows {
        buf,
        heads: pk.unit,
        width,
        dtype: mm,
    };
    let b = PackBufs {
        kt: ctx.buf("kt")?,
        qt: ctx.buf("qt")?,
        s: ctx.buf("s")?,
        p: ctx.buf("p")?,
        pt: ctx.buf("pt")?,
        o: ctx.buf("o")?,
        stat: ctx.buf("stat")?,
        work: ctx.buf("work")?,
        sc: ctx.buf("sc")?,
        tp: ctx.buf("tp")?,
        acc: ctx.buf("acc")?,
        cast: ctx.bufs.get("cast").cloned(),
        qrows: rows(ctx.buf("qrows")?, s.d),
        krows: rows(ctx.buf("krows")?, s.d),
        vrows: rows(ctx.buf("vrows")?, s.dv),
    };
    let (qt_id, qd) = ctx.tensor(&s.q)?;
    let (kt_id, kd) = ctx.tensor(&s.k)?;
    let (vt_id, vd) = ctx.tensor(&s.v)?;
    let batches: usize = s.batch.iter().product();
    let n_in = ctx.kernel.inputs.len();
    let mut resident = ResidentRows::new(ctx, "tp", n_in, s.sq as u32, s.sk)?;
    let mut rot = Rot::default();
    // The packs: heads of one unit sharing every prologue operand, up to `pk.heads`.
    let mut packs = Vec::new();
    let mut u0 = 0;
    while u0 < batches {
        let un = pk.unit.min(batches - u0);
        let mut hu = 0;
        while hu < un {
            let ops = batch_operands(ctx, &s.operands, &s.batch, u0 + hu)?;
            let key =
                |o: &[(usize, Mat, bool)]| o.iter().map(|(_, m, _)| m.offset).collect::<Vec<_>>();
            let k0 = key(&ops);
            let mut g = 1;
            while g < pk.heads.min(un - hu) {
                let o = batch_operands(ctx, &s.operands, &s.batch, u0 + hu + g)?;
                if key(&o) != k0 {
                    break;
                }
                g += 1;
            }
            if g > pk.stack {
                g -= g % pk.stack;
            }
            packs.push(PackPlan {
                u0,
                un,
                unit: u0 / pk.unit,
                hu,
                g,
                ops,
            });
            hu += g;
        }
        u0 += un;
    }
    // A software pipeline over the packs: the scores of pack i + 1 (TensorE, with their
    // K^T/Q^T evictions on ScalarE) are emitted before the softmax of pack i, and the
    // second half of pack i - 1 after it, so no engine waits for the one it feeds.
    // A software pipeline over the packs, stage k of pack j emitted in iteration j + d_k:
    // scores (A, d = 0), prologue and row max (Bv, d = ahead), exponentials (Bs, +1),
    // P^T, P @ V and the stores (C, +2). Each engine's queue then holds work of different
    // packs in an order where no VectorE step waits on a ScalarE step that itself waits on
    // the VectorE step before it: TensorE scores pack j + ahead while VectorE takes the max
    // of pack j, ScalarE exponentiates pack j - 1 and TensorE/ScalarE finish pack j - 2.
    let (d_bv, d_bs, d_c) = (pk.ahead, pk.ahead + 1, pk.ahead + 2);
    let n = packs.len();
    let mut scored: VecDeque<Scored> = VecDeque::new();
    let mut maxed: VecDeque<Maxed> = VecDeque::new();
    let mut pending: VecDeque<PackPending> = VecDeque::new();
    for t in 0..n + d_c {
        if let Some(pl) = packs.get(t) {
            if pl.hu == 0 {
                load_unit(ctx, s, &b, pl, (qt_id, qd), (kt_id, kd), (vt_id, vd));
            }
            scored.push_back(scores(ctx, s, pk, &b, &mut rot, pl));
        }
        if let Some(pl) = t.checked_sub(d_bv).and_then(|j| packs.get(j)) {
            let sc = scored
                .pop_front()
                .ok_or_else(|| ctx.err("internal: attention pipeline out of step"))?;
            resident.ensure_row_bcasts(ctx, &pl.ops)?;
            maxed.push_back(row_max(ctx, s, pk, &b, &mut rot, &mut resident, pl, &sc)?);
        }
        if let Some(pl) = t.checked_sub(d_bs).and_then(|j| packs.get(j)) {
            let mx = maxed
                .pop_front()
                .ok_or_else(|| ctx.err("internal: attention pipeline out of step"))?;
            pending.push_back(exponentials(ctx, s, pk, &b, pl, &mx));
        }
        if t.checked_sub(d_c).is_some_and(|j| j < n) {
            let pd = pending
                .pop_front()
                .ok_or_else(|| ctx.err("internal: attention pipeline out of step"))?;
            second_half(ctx, s, pk, &b, &mut rot, &pd)?;
        }
    }
    Ok(())
}

/// One pack: `g` heads from head `hu` of the unit starting at batch index `u0`.
struct PackPlan {
    u0: usize,
    un: usize,
    /// Index of the unit (its rows slot).
    unit: usize,
    hu: usize,
    g: usize,
    ops: Vec<(usize, Mat, bool)>,
}

/// A pack whose scores are in PSUM.
struct Scored {
    sc: Ap,
    slot: usize,
}

/// Loads the q, k and v rows of a pack's unit: one DMA per 128 rows for a group of heads
/// side by side, else one per head.
#[allow(clippy::too_many_arguments)]
fn load_unit(
    ctx: &mut LowerCtx<'_>,
    s: &AttnShape,
    b: &PackBufs,
    pl: &PackPlan,
    (qt_id, qd): (neuron_isa::TensorId, Dtype),
    (kt_id, kd): (neuron_isa::TensorId, Dtype),
    (vt_id, vd): (neuron_isa::TensorId, Dtype),
) {
    let p = ctx.cfg.partitions as usize;
    let gs = pl.unit;
    for c in 0..s.sk.div_ceil(p) {
        let (r0, nr) = (c * p, (s.sk - c * p).min(p));
        for j in 0..pl.un {
            let bi = pl.u0 + j;
            let kmat = Mat::of_batch(&s.k, &s.batch, bi, kt_id, kd);
            let vmat = Mat::of_batch(&s.v, &s.batch, bi, vt_id, vd);
            if s.group > 1 {
                if j == 0 {
                    b.krows.load(ctx, gs, c, &kmat, r0, nr);
                    b.vrows.load(ctx, gs, c, &vmat, r0, nr);
                }
            } else {
                load_head(ctx, &b.krows, gs, c, j, &kmat, r0, nr);
                load_head(ctx, &b.vrows, gs, c, j, &vmat, r0, nr);
            }
        }
    }
    for j in 0..pl.un {
        let q = Mat::of_batch(&s.q, &s.batch, pl.u0 + j, qt_id, qd);
        if s.group > 1 {
            if j == 0 {
                b.qrows.load(ctx, gs, 0, &q, 0, s.sq);
            }
        } else {
            load_head(ctx, &b.qrows, gs, 0, j, &q, 0, s.sq);
        }
    }
}

/// K^T, Q^T and the scores of one pack.
fn scores(
    ctx: &mut LowerCtx<'_>,
    s: &AttnShape,
    pk: Pack,
    b: &PackBufs,
    rot: &mut Rot,
    pl: &PackPlan,
) -> Scored {
    let (gs, hu, g) = (pl.unit, pl.hu, pl.g);
    let p = ctx.cfg.partitions as usize;
    let mm = s.mm_dtype;
    let (sq, sk, d) = (s.sq, s.sk, s.d);
    let qu = sq as u32;
    let skch = sk.div_ceil(p);
    let slot = rot.pack;
    rot.pack += 1;
    let nstack = g.div_ceil(pk.stack);
    let sp = (pk.stack.min(g) * d) as u32;
    // K^T of the pack: stack j at columns j * Sk, one eviction.
    let tp = rot.tp;
    rot.tp += 1;
    for c in 0..skch {
        let nr = (sk - c * p).min(p);
        transpose_heads(ctx, b, &b.krows, pk, tp, gs, c, hu, g, nr, sk, c * p);
    }
    let kt = b.kt.tile(slot, mm, sp, (nstack * sk) as u32);
    ctx.copy_on(
        Engine::Vector,
        kt.clone(),
        b.tp.tile(tp, Dtype::F32, sp, (nstack * sk) as u32),
    );
    // Q^T of the pack: stack j at columns j * q.
    let tq = rot.tp;
    rot.tp += 1;
    transpose_heads(ctx, b, &b.qrows, pk, tq, gs, 0, hu, g, sq, sq, 0);
    let qt = b.qt.tile(slot, mm, sp, (nstack * sq) as u32);
    // The eviction applies a folded scale: Q^T * c, exact (a power of two).
    ctx.push(
        Engine::Scalar,
        Op::Activation {
            dst: qt.clone(),
            src: b.tp.tile(tq, Dtype::F32, sp, (nstack * sq) as u32),
            func: ActFunc::Identity,
            scale: Operand::Imm(pk.fold.unwrap_or(1.0)),
            bias: None,
            accum: None,
        },
    );
    // Scores: head l into columns l * Sk of one bank.
    let sc = b.sc.tile(slot, Dtype::F32, qu, (g * sk) as u32);
    for l in 0..g {
        let (j, p0) = (l / pk.stack, ((l % pk.stack) * d) as u32);
        ctx.push(
            Engine::Tensor,
            Op::Matmul {
                dst: cols(&sc, (l * sk) as u32, sk as u32),
                stationary: Ap::on_chip(
                    Memory::Sbuf,
                    mm,
                    p0,
                    d as u32,
                    qt.offset + ((j * sq) as u64) * mm.size(),
                    qu,
                ),
                moving: Ap::on_chip(
                    Memory::Sbuf,
                    mm,
                    p0,
                    d as u32,
                    kt.offset + ((j * sk) as u64) * mm.size(),
                    sk as u32,
                ),
                accumulate: false,
            },
        );
    }
    Scored { sc, slot }
}

/// The prologue and the row maxima of one pack.
#[allow(clippy::too_many_arguments)]
fn row_max(
    ctx: &mut LowerCtx<'_>,
    s: &AttnShape,
    pk: Pack,
    b: &PackBufs,
    rot: &mut Rot,
    resident: &mut ResidentRows,
    pl: &PackPlan,
    scored: &Scored,
) -> Result<Maxed, CompileError> {
    let (sq, sk, g, slot) = (s.sq, s.sk, pl.g, scored.slot);
    let qu = sq as u32;
    let sc = scored.sc.clone();
    let ops = &pl.ops;
    // The prologue over the whole pack, operands broadcast over its heads.
    let mut operands: Vec<Option<OpTile>> = vec![None; ctx.kernel.inputs.len()];
    for (i, mat, full) in ops {
        let tile = match resident.tile(*i, qu, 0, sk) {
            Some(t) => t,
            None => {
                let buf = ctx.buf(&format!("op{i}"))?;
                load_mat(ctx, mat, *full, 0, sq, 0, sk, &buf, rot.op)
            }
        };
        operands[*i] = Some(match tile {
            OpTile::Full(ap) => OpTile::Full(repeated(&ap, g)),
            col => col,
        });
    }
    rot.op += 1;
    let n = (g * sk) as u32;
    let stile = b.s.tile(slot, Dtype::F32, qu, n);
    let tiles = ChainTiles {
        src: sc,
        work: b.work.tile(slot, Dtype::F32, qu, n),
        cast: b.cast.as_ref().map(|c| c.tile(0, Dtype::F32, qu, n)),
        out: stile.clone(),
        operands: &operands,
    };
    let rest = &s.prologue[usize::from(pk.fold.is_some())..];
    // Nothing left to apply: the softmax reads the scores in PSUM.
    let stile = apply_prologue(ctx, rest, &tiles)?;
    // One row max for the pack; later one exp per head (its `-max` is a [P, 1] bias)
    // with the row sum in the accumulator, and one reciprocal for the pack.
    let gmax = pk.heads as u32;
    let stat = b.stat.tile(slot, Dtype::F32, qu, 3 * gmax);
    let heads_sk = Ap {
        dims: vec![
            Dim {
                size: g as u32,
                stride: sk as i64,
            },
            Dim {
                size: sk as u32,
                stride: 1,
            },
        ],
        ..stile.clone()
    };
    ctx.push(
        Engine::Vector,
        Op::TensorReduce {
            dst: cols(&stat, 0, g as u32),
            src: heads_sk,
            op: AluOp::Max,
            axes: 1,
            negate: true,
        },
    );
    Ok(Maxed { stile, stat, slot })
}

/// The exponentials (one per head) and the reciprocal of one pack's row sums.
fn exponentials(
    ctx: &mut LowerCtx<'_>,
    s: &AttnShape,
    pk: Pack,
    b: &PackBufs,
    pl: &PackPlan,
    mx: &Maxed,
) -> PackPending {
    let (sq, sk, g, slot) = (s.sq, s.sk, pl.g, mx.slot);
    let (qu, n) = (sq as u32, (g * sk) as u32);
    let gmax = pk.heads as u32;
    let (stile, stat) = (mx.stile.clone(), mx.stat.clone());
    let ptile = b.p.tile(slot, s.mm_dtype, qu, n);
    for l in 0..g {
        let c = (l * sk) as u32;
        ctx.push(
            Engine::Scalar,
            Op::Activation {
                dst: cols(&ptile, c, sk as u32),
                src: cols(&stile, c, sk as u32),
                func: ActFunc::Exp,
                scale: Operand::Imm(1.0),
                bias: Some(Operand::PerPartition(cols(&stat, l as u32, 1))),
                accum: Some(cols(&stat, gmax + l as u32, 1)),
            },
        );
    }
    ctx.push(
        Engine::Scalar,
        Op::Activation {
            dst: cols(&stat, 2 * gmax, g as u32),
            src: cols(&stat, gmax, g as u32),
            func: ActFunc::Reciprocal,
            scale: Operand::Imm(1.0),
            bias: None,
            accum: None,
        },
    );
    PackPending {
        ptile,
        stat,
        g,
        hu: pl.hu,
        bi: pl.u0 + pl.hu,
        gs: pl.unit,
        slot,
    }
}

/// A pack whose row maxima are computed.
struct Maxed {
    /// The scores after the prologue (SBUF, or the PSUM scores when nothing is left).
    stile: Ap,
    /// Statistics: `-max` per head, then the sums and their reciprocals.
    stat: Ap,
    slot: usize,
}

/// P^T, P @ V, the normalization and the stores of one pack.
#[allow(clippy::too_many_arguments)]
fn second_half(
    ctx: &mut LowerCtx<'_>,
    s: &AttnShape,
    pk: Pack,
    b: &PackBufs,
    rot: &mut Rot,
    pd: &PackPending,
) -> Result<(), CompileError> {
    let p = ctx.cfg.partitions as usize;
    let mm = s.mm_dtype;
    let (sq, sk, dv, g) = (s.sq, s.sk, s.dv, pd.g);
    let qu = sq as u32;
    let skch = sk.div_ceil(p);
    // P^T: chunk c of head l at columns (c * g + l) * q of one bank.
    let tp = rot.tp;
    rot.tp += 1;
    for c in 0..skch {
        let kl = (sk - c * p).min(p);
        for l in 0..g {
            ctx.push(
                Engine::Tensor,
                Op::Transpose {
                    dst: b.tp.tile_at(
                        tp,
                        (((c * g + l) * sq) * 4) as u64,
                        Dtype::F32,
                        kl as u32,
                        qu,
                    ),
                    src: cols(&pd.ptile, (l * sk + c * p) as u32, kl as u32),
                },
            );
        }
    }
    let pt = b.pt.tile(pd.slot, mm, p as u32, (skch * g * sq) as u32);
    if sk % p == 0 {
        evict(
            ctx,
            pt.clone(),
            b.tp.tile(tp, Dtype::F32, p as u32, (skch * g * sq) as u32),
        );
    } else {
        for c in 0..skch {
            let kl = (sk - c * p).min(p) as u32;
            let w = (g * sq) as u32;
            let at = (c * g * sq) as u32;
            evict(
                ctx,
                Ap {
                    partitions: kl,
                    ..cols(&pt, at, w)
                },
                Ap {
                    partitions: kl,
                    ..b.tp.tile_at(tp, u64::from(at) * 4, Dtype::F32, kl, w)
                },
            );
        }
    }
    // P @ V: head l into columns l * Dv of the accumulator.
    let acc = b.acc.tile(pd.slot, Dtype::F32, qu, (g * dv) as u32);
    for l in 0..g {
        for c in 0..skch {
            let kl = (sk - c * p).min(p);
            ctx.push(
                Engine::Tensor,
                Op::Matmul {
                    dst: cols(&acc, (l * dv) as u32, dv as u32),
                    stationary: Ap {
                        partitions: kl as u32,
                        ..cols(&pt, ((c * g + l) * sq) as u32, qu)
                    },
                    moving: b.vrows.head(pd.gs, c, pd.hu + l, kl),
                    accumulate: c > 0,
                },
            );
        }
    }
    // out = acc / sum for the whole pack in one VectorE instruction: the reciprocals
    // `[q, g]` broadcast along each head's Dv columns by a zero stride.
    let (ot_id, od) = ctx.tensor(&s.out)?;
    let otile = b.o.tile(pd.slot, od, qu, (g * dv) as u32);
    let gmax = pk.heads as u32;
    let recip = Ap {
        dims: vec![
            Dim {
                size: g as u32,
                stride: 1,
            },
            Dim {
                size: dv as u32,
                stride: 0,
            },
        ],
        ..cols(&pd.stat, 2 * gmax, 1)
    };
    ctx.push(
        Engine::Vector,
        Op::TensorTensor {
            dst: otile.clone(),
            a: acc,
            b: recip,
            op: AluOp::Mul,
        },
    );
    // Stores: one DMA for the pack when the heads' output rows sit side by side.
    let r = s.out.shape.len();
    let side = s.group > 1 && s.out.strides[r - 1] == 1 && s.out.strides[r - 3] == dv as isize;
    if side {
        let o = Mat::of_batch(&s.out, &s.batch, pd.bi, ot_id, od);
        let dst = Ap {
            dims: vec![Dim {
                size: (g * dv) as u32,
                stride: o.cs,
            }],
            ..o.rows_ap(0, sq, 0, 1)
        };
        ctx.store(dst, otile);
    } else {
        for l in 0..g {
            let o = Mat::of_batch(&s.out, &s.batch, pd.bi + l, ot_id, od);
            ctx.store(
                o.rows_ap(0, sq, 0, dv),
                cols(&otile, (l * dv) as u32, dv as u32),
            );
        }
    }
    Ok(())
}
