//! Softmax kernels: `out = epilogue(softmax(prologue(x)))` over the last axis.
//!
//! Rows go to partitions, the whole softmax axis stays along the free axis of one tile.
//! Per tile: the prologue (scale, mask add) into an fp32 work tile; `TensorReduce(max,
//! negate)` gives `-max` per row; one ScalarE `Activation(exp, bias = -max)` both
//! exponentiates and, through its accumulator, sums each row; a reciprocal of the sums;
//! the normalizing multiply is the first step of the epilogue chain (a per-row scalar
//! operand, so it shares a `TensorScalar` with a following scalar op).

use super::LowerCtx;
use super::chain::{self, ChainTiles, OpTile};
use super::operands::{RcOperand, RowOperands, rc_buffers};
use super::rows::{RowInputs, row_inputs, split_space};
use super::{lowering_error, on_chip_dtype};
use crate::backend::alloc::BufferReq;
use crate::backend::layout::{RowCols, cols, parts};
use crate::backend::tiling::RowTiling;
use crate::error::CompileError;
use crate::kernel::{BinaryFn, EwOp, Kernel, KernelGraph, KernelOp};
use neuron_isa::{ActFunc, AluOp, Ap, Dtype, Engine, Op, Operand, TensorId};

/// The shape facts of a softmax kernel.
#[derive(Debug, Clone)]
pub struct SmShape {
    /// Views: 0 = output, 1 = x, then operands.
    pub rc: RowCols,
    /// Output tensor and dtype.
    pub out: (TensorId, Dtype),
    /// The input.
    pub x: RcOperand,
    /// Operands of prologue and epilogue.
    pub operands: Vec<RcOperand>,
    /// Prologue.
    pub prologue: Vec<EwOp>,
    /// Epilogue.
    pub epilogue: Vec<EwOp>,
}

/// Analyses a softmax kernel.
pub fn analyze(kg: &KernelGraph, k: &Kernel) -> Result<SmShape, CompileError> {
    let KernelOp::Softmax {
        x,
        prologue,
        epilogue,
    } = &k.op
    else {
        return Err(lowering_error(k, "internal: not a softmax kernel"));
    };
    let mut all = prologue.clone();
    all.extend(epilogue.iter().cloned());
    let RowInputs {
        rc,
        out,
        x,
        operands,
    } = row_inputs(kg, k, *x, &all, |inputs| split_space(k, inputs, 1))?;
    Ok(SmShape {
        rc,
        out,
        x,
        operands,
        prologue: prologue.clone(),
        epilogue: epilogue.clone(),
    })
}

/// The unnormalized softmax of each row of `src` (`[p, n]`, fp32): writes `exp(x - max)`
/// into `dst` and returns `1 / sum` per row. `stat` is a `[p, 4]` fp32 scratch tile whose
/// first three columns hold `-max`, the sum and its reciprocal (the returned column).
///
/// One ScalarE `Activation(exp, bias = -max)` both exponentiates and, through its
/// accumulator, sums each row; the caller multiplies by the reciprocal wherever it is
/// cheapest (softmax kernels: the first epilogue step; attention: after P @ V).
pub fn unnormalized(ctx: &mut LowerCtx<'_>, src: Ap, dst: Ap, stat: &Ap) -> Ap {
    let (negmax, sum, recip) = (cols(stat, 0, 1), cols(stat, 1, 1), cols(stat, 2, 1));
    ctx.push(
        Engine::Vector,
        Op::TensorReduce {
            dst: negmax.clone(),
            src: src.clone(),
            op: AluOp::Max,
            axes: 1,
            negate: true,
        },
    );
    ctx.push(
        Engine::Scalar,
        Op::Activation {
            dst,
            src,
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
    recip
}

/// Buffers of a softmax kernel.
pub fn buffers(s: &SmShape, t: &RowTiling) -> Vec<BufferReq> {
    let c = s.rc.num_cols() as u64;
    let mut v = vec![
        BufferReq::sbuf("in", c * s.x.tile_dtype().size(), t.slots),
        BufferReq::sbuf("work", c * 4, 2),
        BufferReq::sbuf("out", c * s.out.1.size(), t.slots),
        BufferReq::sbuf("stat", 16, t.slots),
    ];
    if chain::has_cast(&s.prologue) || chain::has_cast(&s.epilogue) {
        v.push(BufferReq::sbuf("cast", c * chain::CAST_BYTES, 1));
    }
    v.extend(rc_buffers(&s.operands, c, s.rc.cols.len() <= 1, |_| {
        t.slots
    }));
    v
}

/// Lowers a softmax kernel.
pub fn lower(ctx: &mut LowerCtx<'_>, t: &RowTiling) -> Result<(), CompileError> {
    let s = analyze(ctx.kg, ctx.kernel)?;
    let rc = &s.rc;
    let outer = rc.outer_cols();
    let c = rc.num_cols() as u32;
    let recip_idx = ctx.kernel.inputs.len();
    // `buffers` plans no resident operand (each has a slot per tile in flight), so all are
    // loaded per tile; the extra entry is the reciprocal column.
    let mut opnds = RowOperands::new(ctx, rc, &s.operands, recip_idx + 1, t.rows, |_| false)?;
    let (inb, work, outb, stat) = (
        ctx.buf("in")?,
        ctx.buf("work")?,
        ctx.buf("out")?,
        ctx.buf("stat")?,
    );
    let cast = ctx.bufs.get("cast").cloned();
    let mut epilogue = vec![EwOp::Tensor {
        op: BinaryFn::Mul,
        operand: recip_idx,
        reversed: false,
    }];
    epilogue.extend(s.epilogue.iter().cloned());
    for (slot, (r0, p)) in rc.tiles(t.rows).into_iter().enumerate() {
        let pu = p as u32;
        let x = inb.tile(slot, s.x.tile_dtype(), pu, c);
        for run in rc.runs(r0, p) {
            ctx.load(
                parts(&x, run.part, run.len),
                rc.hbm_ap(1, s.x.tensor, s.x.dtype, &run, 0, outer),
            );
        }
        let mut operands = opnds.load(ctx, r0, p, 0, outer, slot)?;
        let w = work.tile(slot, Dtype::F32, pu, c);
        let cur = if s.prologue.is_empty() {
            x
        } else {
            let tiles = ChainTiles {
                src: x,
                work: w.clone(),
                cast: cast.as_ref().map(|b| b.tile(0, Dtype::F32, pu, c)),
                out: w.clone(),
                operands: &operands,
            };
            chain::apply(ctx, &s.prologue, &tiles)?
        };
        let st = stat.tile(slot, Dtype::F32, pu, 4);
        let recip = unnormalized(ctx, cur, w.clone(), &st);
        operands[recip_idx] = Some(OpTile::Column(recip));
        let tiles = ChainTiles {
            src: w.clone(),
            work: w,
            cast: cast.as_ref().map(|b| b.tile(0, Dtype::F32, pu, c)),
            out: outb.tile(slot, on_chip_dtype(s.out.1), pu, c),
            operands: &operands,
        };
        let res = chain::apply(ctx, &epilogue, &tiles)?;
        for run in rc.runs(r0, p) {
            ctx.store(
                rc.hbm_ap(0, s.out.0, s.out.1, &run, 0, outer),
                parts(&res, run.part, run.len),
            );
        }
    }
    Ok(())
}
