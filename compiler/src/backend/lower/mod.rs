//! Lowering: one kernel at a time, from kernel IR to instructions.
//!
//! # The `LowerCtx` API (what a kernel-kind file gets)
//!
//! Each kernel kind lives in its own file with two entry points:
//!
//! - `buffers(&Shape.., &Tiling) -> Vec<BufferReq>`: the SBUF/PSUM buffers the kind needs for
//!   a given tiling (the cost model in [`super::tiling`] calls it to check that a candidate
//!   fits);
//! - `lower(&mut LowerCtx, ..) -> Result<(), CompileError>`: emits the instructions.
//!
//! Inside `lower`, a [`LowerCtx`] gives:
//!
//! - `ctx.kernel`, `ctx.kg`, `ctx.cfg`: the kernel, its graph and the target;
//! - `ctx.buf("name")`: the allocated buffer requested under that name ([`Buf::tile`] gives
//!   a slot's access pattern; slots rotate with a running counter);
//! - `ctx.tensor(view)`: the HBM tensor id and storage dtype behind a view;
//! - `ctx.push(engine, op)`, `ctx.load(dst, src)`, `ctx.store(dst, src)`,
//!   `ctx.gather(dst, table, indices)`: emit an instruction. Synchronization is automatic
//!   (see [`super::builder`]): declare the data flow through access patterns and the
//!   builder adds the semaphore waits;
//! - `ctx.evict_engine()`: ScalarE or VectorE in turn, to spread PSUM evictions and copies;
//! - `ctx.constant(name, values)`: an extra f32 weight tensor (e.g. int8 dequantization
//!   scales) added to the artifact;
//! - `ctx.err(message)`: a [`CompileError::Lowering`] naming the kernel and its nodes.
//!
//! Shared helpers: [`chain`] applies an elementwise chain ([`EwOp`]s) to a tile (PSUM
//! evictions, epilogues, prologues), [`operands`] loads the operand tiles those chains read,
//! [`rows`] builds the row/column space and operands of the row-tiled kinds (elementwise,
//! norm, softmax, gather).

pub mod attention;
pub mod chain;
pub mod conv;
pub mod conv_int8;
pub mod conv_ipack;
pub mod copy;
pub mod elementwise;
pub mod gather;
pub mod matmul;
pub mod norm;
pub mod operands;
pub mod pool;
pub mod reduce;
pub mod rows;
pub mod softmax;

use super::alloc::{Buf, KernelAlloc};
use super::builder::{Builder, InstrRef};
use super::tiling::{KernelPlan, Tiling};
use crate::error::CompileError;
use crate::kernel::{EwOp, KTensorId, Kernel, KernelGraph, KernelOp, View};
use neuron_isa::{Ap, ChipConfig, Dtype, Engine, HbmTensor, Op, TensorId, TensorKind};

/// Extra constant tensors created while lowering (appended after the kernel graph's
/// tensors in the HBM tensor table).
#[derive(Debug, Clone, Default)]
pub struct Constants {
    /// Index of the first constant in the tensor table.
    pub first: u32,
    /// The tensors and their f32 values.
    pub tensors: Vec<(HbmTensor, Vec<f32>)>,
}

/// What a kernel's lowering can use; see the module docs.
pub struct LowerCtx<'a> {
    /// The target.
    pub cfg: &'a ChipConfig,
    /// The kernel graph.
    pub kg: &'a KernelGraph,
    /// The kernel being lowered.
    pub kernel: &'a Kernel,
    /// Its index in the graph.
    pub index: usize,
    /// Its plan.
    pub plan: &'a KernelPlan,
    /// Its buffers.
    pub bufs: &'a KernelAlloc,
    /// The instruction builder.
    pub b: &'a mut Builder,
    /// Constants added so far.
    pub consts: &'a mut Constants,
    /// Rotation counter of [`LowerCtx::evict_engine`].
    pub evict_rr: usize,
}

impl LowerCtx<'_> {
    /// A lowering error naming this kernel.
    pub fn err(&self, message: impl Into<String>) -> CompileError {
        lowering_error(self.kernel, message)
    }

    /// The buffer requested as `name`.
    pub fn buf(&self, name: &str) -> Result<Buf, CompileError> {
        self.bufs
            .get(name)
            .cloned()
            .ok_or_else(|| self.err(format!("internal: no buffer named '{name}' was allocated")))
    }

    /// The HBM tensor behind `view` and its storage dtype.
    pub fn tensor(&self, view: &View) -> Result<(TensorId, Dtype), CompileError> {
        self.tensor_of(view.tensor)
    }

    /// The HBM tensor id and storage dtype of kernel-graph tensor `t`.
    pub fn tensor_of(&self, t: KTensorId) -> Result<(TensorId, Dtype), CompileError> {
        let kt = self
            .kg
            .tensor(t)
            .ok_or_else(|| self.err(format!("view names tensor {t} which does not exist")))?;
        Ok((TensorId(t.0), kt.dtype))
    }

    /// Input `i` of the kernel.
    pub fn input(&self, i: usize) -> Result<&View, CompileError> {
        kernel_input(self.kernel, i)
    }

    /// Emits `op` on `engine`.
    pub fn push(&mut self, engine: Engine, op: Op) -> InstrRef {
        self.b.push(engine, op)
    }

    /// Emits a load (HBM -> SBUF, or HBM -> HBM).
    pub fn load(&mut self, dst: Ap, src: Ap) -> InstrRef {
        self.b.load(dst, src)
    }

    /// Emits a load into a buffer no other instruction of the program touches (see
    /// [`super::builder::DmaClass::Prefetch`]).
    pub fn prefetch(&mut self, dst: Ap, src: Ap) -> InstrRef {
        self.b.dma(super::builder::DmaClass::Prefetch, dst, src)
    }

    /// Emits a load into a pinned buffer (see [`super::builder::DmaClass::Weights`]).
    pub fn weight_load(&mut self, dst: Ap, src: Ap) -> InstrRef {
        self.b.dma(super::builder::DmaClass::Weights, dst, src)
    }

    /// The SBUF region where resident tensor region `hbm` can be read or written in place
    /// of the tile `chip` (see [`Builder::resident_in_place`]); `None`: move it through
    /// `chip` with a DMA.
    pub fn resident_in_place(&self, hbm: &Ap, chip: &Ap) -> Option<Ap> {
        self.b.resident_in_place(hbm, chip)
    }

    /// Loads `src` into the tile `dst`, or, when `src` is resident and maps onto `dst`,
    /// emits nothing: returns where the data can be read (`dst` or the resident region).
    pub fn load_or_in_place(&mut self, dst: Ap, src: Ap) -> Ap {
        match self.resident_in_place(&src, &dst) {
            Some(ap) => ap,
            None => {
                self.load(dst.clone(), src);
                dst
            }
        }
    }

    /// Emits a store (SBUF -> HBM).
    pub fn store(&mut self, dst: Ap, src: Ap) -> InstrRef {
        self.b.store(dst, src)
    }

    /// Emits an indirect load (`dma_gather`): row `indices[p]` of the HBM `table` into
    /// partition `p` of `dst`.
    pub fn gather(&mut self, dst: Ap, table: Ap, indices: Ap) -> InstrRef {
        self.b.gather(dst, table, indices)
    }

    /// ScalarE and VectorE in turn: the engine for the next PSUM eviction or plain copy.
    pub fn evict_engine(&mut self) -> Engine {
        self.evict_rr += 1;
        if self.evict_rr % 2 == 0 {
            Engine::Vector
        } else {
            Engine::Scalar
        }
    }

    /// A copy `dst = src` on `engine` (ScalarE uses an identity activation).
    pub fn copy_on(&mut self, engine: Engine, dst: Ap, src: Ap) -> InstrRef {
        let op = if engine == Engine::Scalar {
            Op::Activation {
                dst,
                src,
                func: neuron_isa::ActFunc::Identity,
                scale: neuron_isa::Operand::Imm(1.0),
                bias: None,
                accum: None,
            }
        } else {
            Op::TensorCopy { dst, src }
        };
        self.b.push(engine, op)
    }

    /// Adds an f32 constant tensor of shape `[values.len()]` to the artifact.
    pub fn constant(&mut self, name: &str, values: Vec<f32>) -> TensorId {
        let id = TensorId(self.consts.first + self.consts.tensors.len() as u32);
        let t = HbmTensor {
            name: format!("{}.{name}", self.kernel.name),
            kind: TensorKind::Weight,
            shape: vec![values.len() as u64],
            dtype: Dtype::F32,
        };
        self.b.add_tensor(&t);
        self.consts.tensors.push((t, values));
        id
    }
}

/// A [`CompileError::Lowering`] for kernel `k`.
pub fn lowering_error(k: &Kernel, message: impl Into<String>) -> CompileError {
    CompileError::Lowering {
        kernel: k.name.clone(),
        kind: k.op.kind().to_string(),
        nodes: k.nodes.join(","),
        message: message.into(),
    }
}

/// Input `i` of kernel `k` (for the `analyze` functions, which run before a [`LowerCtx`]
/// exists).
pub fn kernel_input(k: &Kernel, i: usize) -> Result<&View, CompileError> {
    k.inputs.get(i).ok_or_else(|| {
        lowering_error(
            k,
            format!(
                "operand index {i} out of range: the kernel has {} inputs",
                k.inputs.len()
            ),
        )
    })
}

/// The HBM tensor id and storage dtype behind view `v` of kernel `k`; `what` names the view
/// in the error ("input 2", "table").
pub fn view_storage(
    kg: &KernelGraph,
    k: &Kernel,
    v: &View,
    what: &str,
) -> Result<(TensorId, Dtype), CompileError> {
    let t = kg.tensor(v.tensor).ok_or_else(|| {
        lowering_error(
            k,
            format!("{what} names tensor {} which does not exist", v.tensor),
        )
    })?;
    Ok((TensorId(v.tensor.0), t.dtype))
}

/// The dtype a tensor of storage type `d` has on chip: 64-bit integers are only an HBM
/// format (the DMA casts them through f32), everything else is kept.
pub fn on_chip_dtype(d: Dtype) -> Dtype {
    match d {
        Dtype::I64 => Dtype::F32,
        d => d,
    }
}

/// Kernel-input indices that `ops` reads as tensor operands.
pub fn chain_operands(ops: &[EwOp]) -> Vec<usize> {
    let mut v = Vec::new();
    for o in ops {
        match o {
            EwOp::Tensor { operand, .. } => v.push(*operand),
            EwOp::Select { cond, other, .. } => v.extend([*cond, *other]),
            EwOp::Unary(_) | EwOp::Scalar { .. } | EwOp::Cast(_) => {}
        }
    }
    v.sort_unstable();
    v.dedup();
    v
}

/// Lowers kernel `ctx.kernel` according to its plan.
pub fn lower_kernel(ctx: &mut LowerCtx<'_>) -> Result<(), CompileError> {
    let _span = tracing::debug_span!("lower_kernel", kernel = %ctx.kernel.name).entered();
    match (&ctx.kernel.op, &ctx.plan.tiling) {
        (KernelOp::MatMul { .. }, Tiling::MatMul(t)) => matmul::lower(ctx, &t.clone()),
        (KernelOp::Elementwise { .. }, Tiling::Rows(t)) => elementwise::lower(ctx, &t.clone()),
        (KernelOp::Copy { .. }, Tiling::Copy(t)) => copy::lower(ctx, &t.clone()),
        (KernelOp::Norm { .. }, Tiling::Rows(t)) => norm::lower(ctx, &t.clone()),
        (KernelOp::Softmax { .. }, Tiling::Rows(t)) => softmax::lower(ctx, &t.clone()),
        (KernelOp::Reduce { .. }, Tiling::Rows(t)) => reduce::lower(ctx, &t.clone()),
        (KernelOp::Attention { .. }, Tiling::Attention(t)) => attention::lower(ctx, &t.clone()),
        (KernelOp::Gather { .. }, Tiling::Rows(t)) => gather::lower(ctx, &t.clone()),
        (KernelOp::Conv2d { .. }, Tiling::Conv(t)) => conv::lower(ctx, &t.clone()),
        (KernelOp::Pool { .. }, Tiling::Pool(t)) => pool::lower(ctx, &t.clone()),
        (op, t) => Err(ctx.err(format!(
            "internal: a {} kernel got a {} tiling",
            op.kind(),
            t.kind()
        ))),
    }
}
