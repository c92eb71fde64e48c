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

use super::chain::{self, ChainTiles, OpTile};
use super::elementwise::selected;
use super::operands::load_mat;
use super::{LowerCtx, chain_operands, lowering_error};
use crate::backend::alloc::{Buf, BufferReq};
use crate::backend::layout::{Mat, broadcast_view, cols};
use crate::backend::tiling::AttentionTiling;
use crate::error::CompileError;
use crate::kernel::{EwOp, Kernel, KernelGraph, KernelOp, View};
use neuron_isa::{ActFunc, AluOp, Ap, ChipConfig, Dtype, Engine, Memory, Op, Operand, TensorId};

/// Keys per PSUM bank of scores.
const BANK_COLS: usize = 512;

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
    let get = |i: usize| {
        k.inputs.get(i).ok_or_else(|| {
            err(format!(
                "operand index {i} out of range: the kernel has {} inputs",
                k.inputs.len()
            ))
        })
    };
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
    })
}

/// Buffers of an attention kernel.
pub fn buffers(s: &AttnShape, t: &AttentionTiling, cfg: &ChipConfig) -> Vec<BufferReq> {
    let p = cfg.partitions as usize;
    let mm = s.mm_dtype.size();
    let (dch, skch) = (s.d.div_ceil(p) as u64, s.sk.div_ceil(p) as u64);
    let (sk, qt) = (s.sk as u64, t.q_tile as u64);
    let bank = cfg.psum_bytes_per_partition / u64::from(cfg.psum_banks.max(1));
    let mut v = vec![
        BufferReq::sbuf("kt", dch * sk * mm, t.slots),
        BufferReq::sbuf("v", skch * s.dv as u64 * mm, t.slots),
        BufferReq::sbuf("qt", dch * qt * mm, t.slots),
        BufferReq::sbuf("stage", s.d.max(s.dv) as u64 * 4, 2),
        BufferReq::sbuf("s", sk * 4, t.slots),
        BufferReq::sbuf("p", sk * mm, t.slots),
        BufferReq::sbuf("pt", skch * qt * mm, t.slots),
        BufferReq::sbuf("o", s.dv as u64 * 4, t.slots),
        BufferReq::sbuf("stat", 16, t.slots),
        BufferReq::sbuf("work", BANK_COLS as u64 * 4, 2),
        BufferReq::psum("sc", sk * 4, 1),
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
    for (i, _, _) in &s.operands {
        v.push(BufferReq::sbuf(&format!("op{i}"), BANK_COLS as u64 * 4, 2));
    }
    v
}

fn mat_of(v: &View, batch: &[usize], bi: usize, tensor: TensorId, dtype: Dtype) -> Mat {
    let r = v.shape.len();
    let mut off = v.offset as i64;
    let mut rem = bi;
    for d in (0..batch.len()).rev() {
        off += (rem % batch[d]) as i64 * v.strides[d] as i64;
        rem /= batch[d];
    }
    Mat {
        tensor,
        dtype,
        offset: off,
        rows: v.shape[r - 2],
        cols: v.shape[r - 1],
        rs: v.strides[r - 2] as i64,
        cs: v.strides[r - 1] as i64,
    }
}

/// Rotation counters.
#[derive(Default)]
struct Slots {
    batch: usize,
    q: usize,
    stage: usize,
    tp: usize,
    work: usize,
    op: usize,
}

/// Writes `m^T` rows `r0 .. r0 + nr` (<= 128) into `dst` laid out as d-chunks of `width`
/// columns: element `(c, r)` goes to chunk `c / 128`, partition `c % 128`, column
/// `col0 + r`.
#[allow(clippy::too_many_arguments)]
fn transpose_in(
    ctx: &mut LowerCtx<'_>,
    m: &Mat,
    r0: usize,
    nr: usize,
    dst_base: u64,
    width: usize,
    col0: usize,
    dtype: Dtype,
    stage: &Buf,
    tp: &Buf,
    sl: &mut Slots,
) {
    let p = ctx.cfg.partitions as usize;
    let esz = dtype.size();
    let chunks = m.cols.div_ceil(p);
    if m.cs != 1 {
        // Already column-major (or strided): DMA [c, r] blocks directly.
        for c in 0..chunks {
            let cl = (m.cols - c * p).min(p);
            let dst = Ap::on_chip(
                Memory::Sbuf,
                dtype,
                0,
                cl as u32,
                dst_base + ((c * width + col0) as u64) * esz,
                nr as u32,
            );
            ctx.load(dst, m.cols_ap(r0, nr, c * p, cl));
        }
        return;
    }
    let st = stage.tile(sl.stage, dtype, nr as u32, m.cols as u32);
    sl.stage += 1;
    ctx.load(st.clone(), m.rows_ap(r0, nr, 0, m.cols));
    for c in 0..chunks {
        let cl = (m.cols - c * p).min(p);
        let t = tp.tile(sl.tp, Dtype::F32, cl as u32, nr as u32);
        sl.tp += 1;
        ctx.push(
            Engine::Tensor,
            Op::Transpose {
                dst: t.clone(),
                src: cols(&st, (c * p) as u32, cl as u32),
            },
        );
        let dst = Ap::on_chip(
            Memory::Sbuf,
            dtype,
            0,
            cl as u32,
            dst_base + ((c * width + col0) as u64) * esz,
            nr as u32,
        );
        let e = ctx.evict_engine();
        ctx.copy_on(e, dst, t);
    }
}

/// Lowers an attention kernel.
pub fn lower(ctx: &mut LowerCtx<'_>, t: &AttentionTiling) -> Result<(), CompileError> {
    let s = analyze(ctx.kg, ctx.kernel)?;
    let p = ctx.cfg.partitions as usize;
    let mm = s.mm_dtype;
    let b = |n: &str| ctx.buf(n);
    let (ktb, vb, qtb, stage, sb, pb, ptb, ob, stat, work) = (
        b("kt")?,
        b("v")?,
        b("qt")?,
        b("stage")?,
        b("s")?,
        b("p")?,
        b("pt")?,
        b("o")?,
        b("stat")?,
        b("work")?,
    );
    let (scb, tpb, accb) = (b("sc")?, b("tp")?, b("acc")?);
    let cast = ctx.bufs.get("cast").cloned();
    let (qt_id, qd) = ctx.tensor(&s.q)?;
    let (kt_id, kd) = ctx.tensor(&s.k)?;
    let (vt_id, vd) = ctx.tensor(&s.v)?;
    let (ot_id, od) = ctx.tensor(&s.out)?;
    let mut op_t = Vec::new();
    for (i, v, full) in &s.operands {
        let (tid, d) = ctx.tensor(v)?;
        op_t.push((*i, v.clone(), tid, d, *full));
    }
    let batches: usize = s.batch.iter().product();
    let (dch, skch) = (s.d.div_ceil(p), s.sk.div_ceil(p));
    let mut sl = Slots::default();
    let n_in = ctx.kernel.inputs.len();
    for bi in 0..batches {
        let q = mat_of(&s.q, &s.batch, bi, qt_id, qd);
        let kmat = mat_of(&s.k, &s.batch, bi, kt_id, kd);
        let vmat = mat_of(&s.v, &s.batch, bi, vt_id, vd);
        let o = mat_of(&s.out, &s.batch, bi, ot_id, od);
        let ops: Vec<(usize, Mat, bool)> = op_t
            .iter()
            .map(|(i, v, tid, d, full)| (*i, mat_of(v, &s.batch, bi, *tid, *d), *full))
            .collect();
        let bslot = sl.batch;
        sl.batch += 1;
        // K^T [d, Sk] and V [Sk, Dv] for this head.
        let kt_base = ktb.slot(bslot);
        let mut r0 = 0;
        while r0 < s.sk {
            let nr = (s.sk - r0).min(p);
            transpose_in(
                ctx, &kmat, r0, nr, kt_base, s.sk, r0, mm, &stage, &tpb, &mut sl,
            );
            let vdst = Ap::on_chip(
                Memory::Sbuf,
                mm,
                0,
                nr as u32,
                vb.slot(bslot) + ((r0 / p) * s.dv) as u64 * mm.size(),
                s.dv as u32,
            );
            ctx.load(vdst, vmat.rows_ap(r0, nr, 0, s.dv));
            r0 += nr;
        }
        let mut q0 = 0;
        while q0 < s.sq {
            let qn = t.q_tile.min(s.sq - q0);
            let qu = qn as u32;
            let qs = sl.q;
            sl.q += 1;
            let qt_base = qtb.slot(qs);
            transpose_in(
                ctx, &q, q0, qn, qt_base, t.q_tile, 0, mm, &stage, &tpb, &mut sl,
            );
            // Scores, one PSUM bank per 512 keys, accumulated over d-chunks.
            let sc = scb.tile(0, Dtype::F32, qu, s.sk as u32);
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
            let (negmax, sum, recip) = (cols(&st, 0, 1), cols(&st, 1, 1), cols(&st, 2, 1));
            ctx.push(
                Engine::Vector,
                Op::TensorReduce {
                    dst: negmax.clone(),
                    src: stile.clone(),
                    op: AluOp::Max,
                    axes: 1,
                    negate: true,
                },
            );
            let ptile = pb.tile(qs, mm, qu, s.sk as u32);
            ctx.push(
                Engine::Scalar,
                Op::Activation {
                    dst: ptile.clone(),
                    src: stile,
                    func: ActFunc::Exp,
                    scale: Operand::Imm(1.0),
                    bias: Some(Operand::PerPartition(negmax)),
                    accum: Some(sum.clone()),
                },
            );
            ctx.push(
                Engine::Scalar,
                Op::Activation {
                    dst: recip.clone(),
                    src: sum,
                    func: ActFunc::Reciprocal,
                    scale: Operand::Imm(1.0),
                    bias: None,
                    accum: None,
                },
            );
            // P^T, 128 keys at a time, then P @ V accumulated over key chunks.
            let pt_base = ptb.slot(qs);
            for c in 0..skch {
                let kl = (s.sk - c * p).min(p) as u32;
                let tp = tpb.tile(sl.tp, Dtype::F32, kl, qu);
                sl.tp += 1;
                ctx.push(
                    Engine::Tensor,
                    Op::Transpose {
                        dst: tp.clone(),
                        src: cols(&ptile, (c * p) as u32, kl),
                    },
                );
                let dst = Ap::on_chip(
                    Memory::Sbuf,
                    mm,
                    0,
                    kl,
                    pt_base + ((c * t.q_tile) as u64) * mm.size(),
                    qu,
                );
                let e = ctx.evict_engine();
                ctx.copy_on(e, dst, tp);
            }
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
                        moving: Ap::on_chip(
                            Memory::Sbuf,
                            mm,
                            0,
                            kl,
                            vb.slot(bslot) + ((c * s.dv) as u64) * mm.size(),
                            s.dv as u32,
                        ),
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
            ctx.store(o.rows_ap(q0, qn, 0, s.dv), otile);
            q0 += qn;
        }
    }
    Ok(())
}
