//! Softmax kernels: `out = epilogue(softmax(prologue(x)))` over the last axis.
//!
//! Rows go to partitions, the whole softmax axis stays along the free axis of one tile.
//! Per tile: the prologue (scale, mask add) into an fp32 work tile; `TensorReduce(max,
//! negate)` gives `-max` per row; one ScalarE `Activation(exp, bias = -max)` both
//! exponentiates and, through its accumulator, sums each row; a reciprocal of the sums;
//! the normalizing multiply is the first step of the epilogue chain (a per-row scalar
//! operand, so it shares a `TensorScalar` with a following scalar op).

use super::chain::{self, ChainTiles, OpTile};
use super::elementwise::{rc_operand, selected};
use super::operands::{RcOperand, load_rc, rc_broadcaster, rc_buffers};
use super::{LowerCtx, chain_operands, lowering_error, on_chip_dtype};
use crate::backend::alloc::BufferReq;
use crate::backend::layout::{RowCols, broadcast_view, cols, parts};
use crate::backend::tiling::RowTiling;
use crate::error::CompileError;
use crate::kernel::{BinaryFn, EwOp, Kernel, KernelGraph, KernelOp, View};
use neuron_isa::{ActFunc, AluOp, Dtype, Engine, Op, Operand, TensorId};

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

/// The row/column space of a kernel whose last `ncols` output axes are columns, over the
/// output, then `inputs` broadcast to the output shape.
pub fn split_space(k: &Kernel, inputs: &[usize], ncols: usize) -> Result<RowCols, CompileError> {
    let shape = &k.output.shape;
    let mut views: Vec<View> = vec![k.output.clone()];
    for &i in inputs {
        let v = k.inputs.get(i).ok_or_else(|| {
            lowering_error(
                k,
                format!(
                    "operand index {i} out of range: the kernel has {} inputs",
                    k.inputs.len()
                ),
            )
        })?;
        views.push(broadcast_view(v, shape).ok_or_else(|| {
            lowering_error(
                k,
                format!(
                    "input {i} of shape {:?} does not broadcast to {:?}",
                    v.shape, shape
                ),
            )
        })?);
    }
    let refs: Vec<&View> = views.iter().collect();
    let rc = RowCols::split_axes(shape, &refs, ncols);
    if rc.cols.len() > neuron_isa::MAX_FREE_DIMS {
        return Err(lowering_error(
            k,
            format!(
                "the last {ncols} axes need {} free dimensions after merging, the hardware has {}",
                rc.cols.len(),
                neuron_isa::MAX_FREE_DIMS
            ),
        ));
    }
    Ok(rc)
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
    let opnds = chain_operands(&all);
    let mut inputs = vec![*x];
    inputs.extend(&opnds);
    let rc = split_space(k, &inputs, 1)?;
    let xo = rc_operand(kg, k, &rc, *x, 1, true)?;
    let mut operands = Vec::new();
    for (j, &i) in opnds.iter().enumerate() {
        operands.push(rc_operand(kg, k, &rc, i, 2 + j, selected(&all, i))?);
    }
    let out_d = kg
        .tensor(k.output.tensor)
        .map(|t| t.dtype)
        .ok_or_else(|| lowering_error(k, "output names a missing tensor"))?;
    Ok(SmShape {
        rc,
        out: (TensorId(k.output.tensor.0), out_d),
        x: xo,
        operands,
        prologue: prologue.clone(),
        epilogue: epilogue.clone(),
    })
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
    let outer = rc.cols.first().copied().unwrap_or(1);
    let inner = rc.cols.iter().skip(1).product::<usize>();
    let c = rc.num_cols() as u32;
    let mut bc = rc_broadcaster(ctx, &s.operands)?;
    let (inb, work, outb, stat) = (
        ctx.buf("in")?,
        ctx.buf("work")?,
        ctx.buf("out")?,
        ctx.buf("stat")?,
    );
    let cast = ctx.bufs.get("cast").cloned();
    let recip_idx = ctx.kernel.inputs.len();
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
        let mut operands: Vec<Option<OpTile>> = vec![None; recip_idx + 1];
        for o in &s.operands {
            let buf = ctx.buf(&format!("op{}", o.input))?;
            operands[o.input] = Some(load_rc(
                ctx,
                rc,
                o,
                r0,
                p,
                0,
                outer,
                inner,
                &buf,
                slot,
                bc.as_mut(),
            )?);
        }
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
        let (negmax, sum, recip) = (cols(&st, 0, 1), cols(&st, 1, 1), cols(&st, 2, 1));
        ctx.push(
            Engine::Vector,
            Op::TensorReduce {
                dst: negmax.clone(),
                src: cur.clone(),
                op: AluOp::Max,
                axes: 1,
                negate: true,
            },
        );
        ctx.push(
            Engine::Scalar,
            Op::Activation {
                dst: w.clone(),
                src: cur,
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
