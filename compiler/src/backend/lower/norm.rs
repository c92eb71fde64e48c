//! Layer norm and RMS norm kernels.
//!
//! Rows go to partitions, the normalized elements of a row along the free axis. Layer norm
//! uses the VectorE statistics path of the NKI layernorm tutorial: `BnStats` per chunk of
//! at most 512 elements, `BnAggr` to (mean, variance), `rstd = rsqrt(var + eps)` on
//! ScalarE (the epsilon is the activation's bias), and one `TensorScalar` computing
//! `(x - mean) * rstd` (on ScalarE, which is otherwise idle here). RMS norm sums squares through the accumulator of a ScalarE
//! `Square` activation and folds `1/D` and `eps` into the `rsqrt` activation's scale and
//! bias. Gamma and beta (the same row for every row) are loaded once per kernel with a
//! partition-broadcast DMA and applied, with the epilogue, by the chain.

use super::chain::{self, ChainTiles};
use super::operands::{Class, RcOperand, RowOperands, rc_buffers};
use super::rows::{RowInputs, row_inputs, split_space};
use super::{LowerCtx, lowering_error, on_chip_dtype};
use crate::backend::alloc::BufferReq;
use crate::backend::layout::{RowCols, cols, parts};
use crate::backend::tiling::RowTiling;
use crate::error::CompileError;
use crate::kernel::{BinaryFn, EwOp, Kernel, KernelGraph, KernelOp};
use neuron_isa::{ActFunc, AluOp, Dtype, Engine, Op, Operand, TensorId};

/// Largest free size of one `BnStats` (trainium.md 2.1, `bn_stats_fmax`).
pub const BN_STATS_FMAX: usize = 512;

/// The shape facts of a norm kernel.
#[derive(Debug, Clone)]
pub struct NormShape {
    /// Views: 0 = output, 1 = x, then operands.
    pub rc: RowCols,
    /// Output tensor and dtype.
    pub out: (TensorId, Dtype),
    /// The input.
    pub x: RcOperand,
    /// Gamma, beta and epilogue operands.
    pub operands: Vec<RcOperand>,
    /// The chain after normalization: `* gamma`, `+ beta`, then the epilogue.
    pub chain: Vec<EwOp>,
    /// RMS norm.
    pub rms: bool,
    /// Epsilon.
    pub eps: f32,
    /// Elements normalized together.
    pub size: usize,
    /// Intermediate dtype.
    pub act_dtype: Dtype,
}

/// Analyses a norm kernel.
pub fn analyze(kg: &KernelGraph, k: &Kernel) -> Result<NormShape, CompileError> {
    let KernelOp::Norm {
        x,
        gamma,
        beta,
        epsilon,
        rms,
        norm_size,
        epilogue,
    } = &k.op
    else {
        return Err(lowering_error(k, "internal: not a norm kernel"));
    };
    // The normalized axes are the trailing axes whose sizes multiply to `norm_size`.
    let shape = &k.output.shape;
    let mut ncols = 0;
    let mut prod = 1usize;
    while prod < *norm_size && ncols < shape.len() {
        prod *= shape[shape.len() - 1 - ncols];
        ncols += 1;
    }
    if prod != *norm_size {
        return Err(lowering_error(
            k,
            format!("norm size {norm_size} is not a product of trailing axes of {shape:?}"),
        ));
    }
    let mut chain_ops = Vec::new();
    if let Some(g) = gamma {
        chain_ops.push(EwOp::Tensor {
            op: BinaryFn::Mul,
            operand: *g,
            reversed: false,
        });
    }
    if let Some(b) = beta {
        chain_ops.push(EwOp::Tensor {
            op: BinaryFn::Add,
            operand: *b,
            reversed: false,
        });
    }
    chain_ops.extend(epilogue.iter().cloned());
    let RowInputs {
        rc,
        out,
        x,
        operands,
    } = row_inputs(kg, k, *x, &chain_ops, |inputs| {
        split_space(k, inputs, ncols)
    })?;
    Ok(NormShape {
        rc,
        out,
        x,
        operands,
        chain: chain_ops,
        rms: *rms,
        eps: *epsilon,
        size: *norm_size,
        act_dtype: k.act_dtype,
    })
}

/// Buffers of a norm kernel.
pub fn buffers(s: &NormShape, t: &RowTiling) -> Vec<BufferReq> {
    let c = s.size as u64;
    let chunks = s.size.div_ceil(BN_STATS_FMAX) as u64;
    let mut v = vec![
        BufferReq::sbuf("in", c * s.x.tile_dtype().size(), t.slots),
        BufferReq::sbuf("work", c * 4.max(s.act_dtype.size()), 2),
        BufferReq::sbuf("out", c * s.out.1.size(), t.slots),
        // bn_stats (6 per chunk), then mean/var, rstd.
        BufferReq::sbuf("stat", (6 * chunks + 4) * 4, t.slots),
    ];
    if chain::has_cast(&s.chain) {
        v.push(BufferReq::sbuf("cast", c * chain::CAST_BYTES, 1));
    }
    v.extend(rc_buffers(&s.operands, c, s.rc.cols.len() <= 1, |o| {
        if o.class == Class::RowBcast {
            1
        } else {
            t.slots
        }
    }));
    v
}

/// Lowers a norm kernel.
pub fn lower(ctx: &mut LowerCtx<'_>, t: &RowTiling) -> Result<(), CompileError> {
    let s = analyze(ctx.kg, ctx.kernel)?;
    let rc = &s.rc;
    let outer = rc.outer_cols();
    let c = s.size as u32;
    let chunks = s.size.div_ceil(BN_STATS_FMAX);
    let (inb, work, outb, stat) = (
        ctx.buf("in")?,
        ctx.buf("work")?,
        ctx.buf("out")?,
        ctx.buf("stat")?,
    );
    let cast = ctx.bufs.get("cast").cloned();
    // Gamma, beta and other same-for-every-row operands stay resident (a tile always
    // takes whole rows).
    let n_in = ctx.kernel.inputs.len();
    let mut opnds = RowOperands::new(ctx, rc, &s.operands, n_in, t.rows, |o| {
        o.class == Class::RowBcast
    })?;
    for (slot, (r0, p)) in rc.tiles(t.rows).into_iter().enumerate() {
        let pu = p as u32;
        let x = inb.tile(slot, s.x.tile_dtype(), pu, c);
        for run in rc.runs(r0, p) {
            ctx.load(
                parts(&x, run.part, run.len),
                rc.hbm_ap(1, s.x.tensor, s.x.dtype, &run, 0, outer),
            );
        }
        let operands = opnds.load(ctx, r0, p, 0, outer, slot)?;
        let st = stat.tile(slot, Dtype::F32, pu, (6 * chunks + 4) as u32);
        let mv = cols(&st, (6 * chunks) as u32, 2);
        let (mean, var) = (cols(&mv, 0, 1), cols(&mv, 1, 1));
        let rstd = cols(&st, (6 * chunks + 2) as u32, 1);
        let w = work.tile(slot, Dtype::F32, pu, c);
        // The statistics differ; both norms then compute `rstd = rsqrt(stat * scale + eps)`
        // and normalize with one `TensorScalar`, centring on the mean for layer norm only.
        let (stat_col, scale, mean) = if s.rms {
            let sumsq = cols(&st, 0, 1);
            ctx.push(
                Engine::Scalar,
                Op::Activation {
                    dst: w.clone(),
                    src: x.clone(),
                    func: ActFunc::Square,
                    scale: Operand::Imm(1.0),
                    bias: None,
                    accum: Some(sumsq.clone()),
                },
            );
            // The mean of squares is `sumsq / D`.
            (sumsq, 1.0 / s.size as f32, None)
        } else {
            for ch in 0..chunks {
                let c0 = ch * BN_STATS_FMAX;
                let len = BN_STATS_FMAX.min(s.size - c0);
                ctx.push(
                    Engine::Vector,
                    Op::BnStats {
                        dst: cols(&st, (6 * ch) as u32, 6),
                        src: cols(&x, c0 as u32, len as u32),
                    },
                );
            }
            ctx.push(
                Engine::Vector,
                Op::BnAggr {
                    dst: mv.clone(),
                    src: cols(&st, 0, (6 * chunks) as u32),
                },
            );
            (var, 1.0, Some(mean))
        };
        ctx.push(
            Engine::Scalar,
            Op::Activation {
                dst: rstd.clone(),
                src: stat_col,
                func: ActFunc::Rsqrt,
                scale: Operand::Imm(scale),
                bias: Some(Operand::Imm(s.eps)),
                accum: None,
            },
        );
        // Layer norm's VectorE already computes the statistics and (in the chain) gamma
        // and beta, while ScalarE only takes the rsqrt: the normalizing `TensorScalar`
        // (allowed on both, same arithmetic) goes to ScalarE, so the two engines overlap
        // across row tiles. RMS norm keeps it on VectorE (its ScalarE squares the row).
        let norm_engine = if mean.is_some() {
            Engine::Scalar
        } else {
            Engine::Vector
        };
        let (op0, operand0, op1, operand1) = match mean {
            Some(mean) => (
                AluOp::Sub,
                Operand::PerPartition(mean),
                AluOp::Mul,
                Operand::PerPartition(rstd),
            ),
            None => (
                AluOp::Mul,
                Operand::PerPartition(rstd),
                AluOp::Bypass,
                Operand::Imm(0.0),
            ),
        };
        ctx.push(
            norm_engine,
            Op::TensorScalar {
                dst: w.clone(),
                src: x,
                op0,
                operand0,
                reverse0: false,
                op1,
                operand1,
                reverse1: false,
            },
        );
        let tiles = ChainTiles {
            src: w.clone(),
            work: work.tile(slot, s.act_dtype, pu, c),
            cast: cast.as_ref().map(|b| b.tile(0, Dtype::F32, pu, c)),
            out: outb.tile(slot, on_chip_dtype(s.out.1), pu, c),
            operands: &operands,
        };
        let res = chain::apply(ctx, &s.chain, &tiles)?;
        for run in rc.runs(r0, p) {
            ctx.store(
                rc.hbm_ap(0, s.out.0, s.out.1, &run, 0, outer),
                parts(&res, run.part, run.len),
            );
        }
    }
    Ok(())
}
