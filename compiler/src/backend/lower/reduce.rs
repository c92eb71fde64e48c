//! Reduction kernels: sum, mean or max over some axes, then an epilogue.
//!
//! The view is permuted so that kept axes come first (rows, on partitions) and reduced axes
//! last (columns, along the free axis, at most four after merging); the DMA pattern does the
//! permutation. A row tile is reduced in column chunks with `TensorReduce`; chunk results
//! are combined with `TensorTensor`, so arbitrarily long rows stream through SBUF. Mean
//! multiplies by `1 / count` as the first step of the epilogue.
//!
//! Deviation: reducing everything of a tensor leaves a single row on one partition; we do
//! not yet spread it over partitions and finish with a cross-partition matmul.

use super::chain::{self, ChainTiles, selected};
use super::operands::{Class, RcOperand, classify, load_rc};
use super::{LowerCtx, chain_operands, lowering_error, on_chip_dtype};
use crate::backend::alloc::BufferReq;
use crate::backend::layout::{RowCols, broadcast_view, cols, parts};
use crate::backend::tiling::RowTiling;
use crate::error::CompileError;
use crate::kernel::{EwOp, Kernel, KernelGraph, KernelOp, ReduceFn, View};
use neuron_isa::{AluOp, Dim, Dtype, Engine, Op, TensorId};

/// The shape facts of a reduce kernel.
#[derive(Debug, Clone)]
pub struct ReduceShape {
    /// Views: 0 = output, 1 = x, then epilogue operands; columns are the reduced axes.
    pub rc: RowCols,
    /// Output tensor and dtype.
    pub out: (TensorId, Dtype),
    /// The input.
    pub x: RcOperand,
    /// Epilogue operands.
    pub operands: Vec<RcOperand>,
    /// The reduction's ALU op.
    pub op: AluOp,
    /// The chain after the reduction (with the mean's scaling first).
    pub chain: Vec<EwOp>,
    /// Bytes per column of the streamed input (for DMA sizing).
    pub col_bytes: u64,
}

/// Analyses a reduce kernel.
pub fn analyze(kg: &KernelGraph, k: &Kernel) -> Result<ReduceShape, CompileError> {
    let KernelOp::Reduce {
        x,
        op,
        axes,
        epilogue,
    } = &k.op
    else {
        return Err(lowering_error(k, "internal: not a reduce kernel"));
    };
    let xv = k
        .inputs
        .get(*x)
        .ok_or_else(|| lowering_error(k, format!("operand index {x} out of range")))?;
    let r = xv.shape.len();
    if axes.iter().any(|&a| a >= r) || k.output.shape.len() != r {
        return Err(lowering_error(
            k,
            format!(
                "reduced axes {axes:?} do not fit input {:?} -> output {:?}",
                xv.shape, k.output.shape
            ),
        ));
    }
    let kept: Vec<usize> = (0..r).filter(|a| !axes.contains(a)).collect();
    let perm: Vec<usize> = kept.iter().chain(axes.iter()).copied().collect();
    let xp = xv
        .permuted(&perm)
        .ok_or_else(|| lowering_error(k, "internal: bad reduce permutation"))?;
    let shape = xp.shape.clone();
    let bcast = |v: &View| -> Result<View, CompileError> {
        let full = broadcast_view(v, &k.output.shape).ok_or_else(|| {
            lowering_error(
                k,
                format!("{:?} does not broadcast to {:?}", v.shape, k.output.shape),
            )
        })?;
        let p = full
            .permuted(&perm)
            .ok_or_else(|| lowering_error(k, "internal: bad reduce permutation"))?;
        broadcast_view(&p, &shape).ok_or_else(|| lowering_error(k, "internal: reduce broadcast"))
    };
    let opnds = chain_operands(epilogue);
    let mut views = vec![bcast(&k.output)?, xp];
    for &i in &opnds {
        let v = k
            .inputs
            .get(i)
            .ok_or_else(|| lowering_error(k, format!("operand index {i} out of range")))?;
        views.push(bcast(v)?);
    }
    let refs: Vec<&View> = views.iter().collect();
    let rc = RowCols::split_axes(&shape, &refs, axes.len());
    if rc.cols.len() > neuron_isa::MAX_FREE_DIMS {
        return Err(lowering_error(
            k,
            format!(
                "the reduced axes need {} free dimensions after merging, the hardware has {}",
                rc.cols.len(),
                neuron_isa::MAX_FREE_DIMS
            ),
        ));
    }
    let dtype = |t: crate::kernel::KTensorId| {
        kg.tensor(t)
            .map(|t| t.dtype)
            .ok_or_else(|| lowering_error(k, format!("tensor {t} does not exist")))
    };
    let x_d = dtype(xv.tensor)?;
    let x_op = RcOperand {
        input: *x,
        view: 1,
        class: Class::Full,
        tensor: TensorId(xv.tensor.0),
        dtype: x_d,
    };
    let mut operands = Vec::new();
    for (j, &i) in opnds.iter().enumerate() {
        let t = k.inputs[i].tensor;
        operands.push(RcOperand {
            input: i,
            view: 2 + j,
            class: classify(&rc, 2 + j, selected(epilogue, i)),
            tensor: TensorId(t.0),
            dtype: dtype(t)?,
        });
    }
    let count = rc.num_cols();
    let mut chain_ops = Vec::new();
    if *op == ReduceFn::Mean {
        chain_ops.push(EwOp::Scalar {
            op: crate::kernel::BinaryFn::Mul,
            value: 1.0 / count as f32,
            reversed: false,
        });
    }
    chain_ops.extend(epilogue.iter().cloned());
    Ok(ReduceShape {
        out: (TensorId(k.output.tensor.0), dtype(k.output.tensor)?),
        col_bytes: on_chip_dtype(x_d).size(),
        rc,
        x: x_op,
        operands,
        op: match op {
            ReduceFn::Sum | ReduceFn::Mean => AluOp::Add,
            ReduceFn::Max => AluOp::Max,
        },
        chain: chain_ops,
    })
}

/// Buffers of a reduce kernel.
pub fn buffers(s: &ReduceShape, t: &RowTiling) -> Vec<BufferReq> {
    let inner = s.rc.inner_cols() as u64;
    let mut v = vec![
        BufferReq::sbuf(
            "in",
            t.cols as u64 * inner * s.x.tile_dtype().size(),
            t.slots,
        ),
        // Running result, chunk result, work, output: one column each.
        BufferReq::sbuf("acc", 16, t.slots),
        BufferReq::sbuf("out", 4, t.slots),
    ];
    if chain::has_cast(&s.chain) {
        v.push(BufferReq::sbuf("cast", chain::CAST_BYTES, 1));
    }
    for o in &s.operands {
        v.push(BufferReq::sbuf(&format!("op{}", o.input), 4, t.slots));
    }
    v
}

/// Lowers a reduce kernel.
pub fn lower(ctx: &mut LowerCtx<'_>, t: &RowTiling) -> Result<(), CompileError> {
    let s = analyze(ctx.kg, ctx.kernel)?;
    let rc = &s.rc;
    let (outer, inner) = (rc.outer_cols(), rc.inner_cols());
    let (inb, accb, outb) = (ctx.buf("in")?, ctx.buf("acc")?, ctx.buf("out")?);
    let cast = ctx.bufs.get("cast").cloned();
    let mut in_slot = 0usize;
    for (slot, (r0, p)) in rc.tiles(t.rows).into_iter().enumerate() {
        let pu = p as u32;
        let acc = accb.tile(slot, Dtype::F32, pu, 4);
        let (total, part, work) = (cols(&acc, 0, 1), cols(&acc, 1, 1), cols(&acc, 2, 1));
        let mut c0 = 0;
        while c0 < outer {
            let nc = t.cols.min(outer - c0);
            let x = inb.tile(in_slot, s.x.tile_dtype(), pu, (nc * inner) as u32);
            in_slot += 1;
            for run in rc.runs(r0, p) {
                ctx.load(
                    parts(&x, run.part, run.len),
                    rc.hbm_ap(1, s.x.tensor, s.x.dtype, &run, c0, nc),
                );
            }
            let dst = if c0 == 0 { total.clone() } else { part.clone() };
            ctx.push(
                Engine::Vector,
                Op::TensorReduce {
                    dst,
                    src: x,
                    op: s.op,
                    axes: 1,
                    negate: false,
                },
            );
            if c0 > 0 {
                ctx.push(
                    Engine::Vector,
                    Op::TensorTensor {
                        dst: total.clone(),
                        a: total.clone(),
                        b: part.clone(),
                        op: s.op,
                    },
                );
            }
            c0 += nc;
        }
        let mut operands = vec![None; ctx.kernel.inputs.len()];
        for o in &s.operands {
            let buf = ctx.buf(&format!("op{}", o.input))?;
            operands[o.input] = Some(load_rc(ctx, rc, o, r0, p, 0, 1, 1, &buf, slot, None)?);
        }
        let tiles = ChainTiles {
            src: total,
            work,
            cast: cast.as_ref().map(|b| b.tile(slot, Dtype::F32, pu, 1)),
            out: outb.tile(slot, on_chip_dtype(s.out.1), pu, 1),
            operands: &operands,
        };
        let res = chain::apply(ctx, &s.chain, &tiles)?;
        for run in rc.runs(r0, p) {
            let mut dst = rc.hbm_ap(0, s.out.0, s.out.1, &run, 0, 1);
            dst.dims = vec![Dim { size: 1, stride: 1 }];
            ctx.store(dst, parts(&res, run.part, run.len));
        }
    }
    Ok(())
}
