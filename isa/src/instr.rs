//! Instructions: what each engine of a NeuronCore can be told to do.

use crate::ap::Ap;
use serde::{Deserialize, Serialize};
use std::fmt;

/// An instruction queue of the NeuronCore. Each queue is in-order and has its own clock;
/// queues run in parallel and meet only at semaphores.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Engine {
    /// The 128x128 systolic array (matmul, transpose). Writes only PSUM.
    Tensor,
    /// The vector engine (elementwise, reductions, normalization statistics, copies).
    Vector,
    /// The scalar engine (activation functions with scale, bias and accumulate).
    Scalar,
    /// The general-purpose SIMD engine (iota, fallbacks). Cannot access PSUM.
    GpSimd,
    /// DMA queue `n` (0-based). A transfer on any queue is spread over the DMA engines
    /// that serve the partitions it touches.
    Dma(u8),
}

impl Engine {
    /// Short lower-case name: `tensor`, `vector`, `scalar`, `gpsimd`, `dma3`.
    pub fn name(self) -> String {
        match self {
            Engine::Tensor => "tensor".into(),
            Engine::Vector => "vector".into(),
            Engine::Scalar => "scalar".into(),
            Engine::GpSimd => "gpsimd".into(),
            Engine::Dma(q) => format!("dma{q}"),
        }
    }

    /// Whether this is a DMA queue.
    pub const fn is_dma(self) -> bool {
        matches!(self, Engine::Dma(_))
    }
}

impl fmt::Display for Engine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name())
    }
}

/// A ScalarE activation function (evaluated in FP32).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ActFunc {
    /// `x` (also the PSUM-eviction copy).
    Identity,
    /// `max(x, 0)`.
    Relu,
    /// `x * Phi(x)` with the exact erf form.
    Gelu,
    /// `0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))`.
    GeluTanh,
    /// `1 / (1 + exp(-x))`.
    Sigmoid,
    /// `x * sigmoid(x)`.
    Silu,
    /// `tanh(x)`.
    Tanh,
    /// `exp(x)`.
    Exp,
    /// Natural logarithm.
    Log,
    /// Square root.
    Sqrt,
    /// `1 / sqrt(x)`.
    Rsqrt,
    /// `1 / x`.
    Reciprocal,
    /// `x * x`.
    Square,
    /// The error function.
    Erf,
    /// `|x|`.
    Abs,
    /// `-1`, `0` or `1`.
    Sign,
    /// `ln(1 + exp(x))`.
    Softplus,
}

impl ActFunc {
    /// All activation functions.
    pub const ALL: [ActFunc; 17] = [
        ActFunc::Identity,
        ActFunc::Relu,
        ActFunc::Gelu,
        ActFunc::GeluTanh,
        ActFunc::Sigmoid,
        ActFunc::Silu,
        ActFunc::Tanh,
        ActFunc::Exp,
        ActFunc::Log,
        ActFunc::Sqrt,
        ActFunc::Rsqrt,
        ActFunc::Reciprocal,
        ActFunc::Square,
        ActFunc::Erf,
        ActFunc::Abs,
        ActFunc::Sign,
        ActFunc::Softplus,
    ];

    /// Lower-case name as in the NKI function table.
    pub const fn name(self) -> &'static str {
        match self {
            ActFunc::Identity => "identity",
            ActFunc::Relu => "relu",
            ActFunc::Gelu => "gelu",
            ActFunc::GeluTanh => "gelu_tanh",
            ActFunc::Sigmoid => "sigmoid",
            ActFunc::Silu => "silu",
            ActFunc::Tanh => "tanh",
            ActFunc::Exp => "exp",
            ActFunc::Log => "log",
            ActFunc::Sqrt => "sqrt",
            ActFunc::Rsqrt => "rsqrt",
            ActFunc::Reciprocal => "reciprocal",
            ActFunc::Square => "square",
            ActFunc::Erf => "erf",
            ActFunc::Abs => "abs",
            ActFunc::Sign => "sign",
            ActFunc::Softplus => "softplus",
        }
    }
}

/// A VectorE/GpSimd ALU operation on two FP32 operands (comparisons yield 1.0 or 0.0).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum AluOp {
    /// `a + b`.
    Add,
    /// `a - b`.
    Sub,
    /// `a * b`.
    Mul,
    /// `a / b`.
    Div,
    /// `max(a, b)`.
    Max,
    /// `min(a, b)`.
    Min,
    /// `a ^ b` (runs on GpSimd on the real chip).
    Pow,
    /// `a == b`.
    IsEq,
    /// `a != b`.
    IsNe,
    /// `a > b`.
    IsGt,
    /// `a >= b`.
    IsGe,
    /// `a < b`.
    IsLt,
    /// `a <= b`.
    IsLe,
    /// `a` (ignores `b`): lets a two-op `tensor_scalar` apply only one op.
    Bypass,
}

impl AluOp {
    /// Lower-case name.
    pub const fn name(self) -> &'static str {
        match self {
            AluOp::Add => "add",
            AluOp::Sub => "sub",
            AluOp::Mul => "mul",
            AluOp::Div => "div",
            AluOp::Max => "max",
            AluOp::Min => "min",
            AluOp::Pow => "pow",
            AluOp::IsEq => "is_eq",
            AluOp::IsNe => "is_ne",
            AluOp::IsGt => "is_gt",
            AluOp::IsGe => "is_ge",
            AluOp::IsLt => "is_lt",
            AluOp::IsLe => "is_le",
            AluOp::Bypass => "bypass",
        }
    }

    /// Whether this op may be used by `tensor_reduce`.
    pub const fn is_reduction(self) -> bool {
        matches!(self, AluOp::Add | AluOp::Max | AluOp::Min | AluOp::Mul)
    }
}

/// A scalar operand: an immediate, or one FP32 value per partition read from an on-chip
/// `[P, 1]` access pattern and broadcast along the free axes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Operand {
    /// The same value for every element.
    Imm(f32),
    /// One value per partition.
    PerPartition(Ap),
}

/// What an instruction does. Which engine runs it is given by the stream it sits in;
/// [`Op::allowed_on`] says which engines may.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Op {
    /// Copies `src` to `dst` element by element (same element count and partition count),
    /// casting through FP32 when dtypes differ. HBM<->SBUF, SBUF<->SBUF or HBM<->HBM;
    /// never PSUM. DMA queues only.
    Dma {
        /// Destination.
        dst: Ap,
        /// Source.
        src: Ap,
    },
    /// Indirect DMA (embedding lookup): for each partition `p` of `dst`, reads row
    /// `indices[p]` of the HBM `table` (row `r` starts at `table.offset + r *
    /// table.partition_stride` elements) into `dst[p, :]`. `indices` is an on-chip `[P, 1]`
    /// I32 pattern; `table.partitions` is the number of rows, used for bounds checks. A
    /// negative index in `-rows..0` reads row `index + rows` (numpy `take`, the semantics of
    /// model.json's gather; a deviation from the hardware's indirect DMA, which the real
    /// compiler would serve with an extra index fix-up); any other index outside `0..rows`
    /// stops the run with an error.
    DmaGather {
        /// Destination rows (SBUF).
        dst: Ap,
        /// The table in HBM.
        table: Ap,
        /// One I32 row index per destination partition (SBUF).
        indices: Ap,
    },
    /// `dst[M, N] (+)= stationary[K, M]^T @ moving[K, N]` on TensorE. K is the partition
    /// count of both inputs (<= 128); M <= 128 is the stationary free size; N <= 512 the
    /// moving free size; `dst` is PSUM FP32 (I32 for I8 inputs) with M partitions.
    /// `accumulate` adds to what is in `dst` instead of overwriting it.
    Matmul {
        /// PSUM destination `[M, N]`.
        dst: Ap,
        /// SBUF `[K, M]`.
        stationary: Ap,
        /// SBUF `[K, N]`.
        moving: Ap,
        /// Accumulate into `dst` instead of overwriting.
        accumulate: bool,
    },
    /// `dst[F, P] = src[P, F]` through the systolic array (SBUF -> PSUM), P, F <= 128.
    Transpose {
        /// PSUM destination `[F, P]`.
        dst: Ap,
        /// SBUF source `[P, F]`.
        src: Ap,
    },
    /// `dst = func(src * scale + bias)` on ScalarE, in FP32. If `accum` is given, the sum
    /// over the free axes of each partition's results (before the cast to `dst`) is
    /// written to `accum[p, 0]` as FP32.
    Activation {
        /// Destination.
        dst: Ap,
        /// Source.
        src: Ap,
        /// The function.
        func: ActFunc,
        /// Multiplier applied before the function.
        scale: Operand,
        /// Added after scaling, before the function (`None` = 0).
        bias: Option<Operand>,
        /// Optional per-partition free-axis sum of the results, `[P, 1]`.
        accum: Option<Ap>,
    },
    /// `dst = a op b`, elementwise (same shape).
    TensorTensor {
        /// Destination.
        dst: Ap,
        /// First input.
        a: Ap,
        /// Second input.
        b: Ap,
        /// The operation.
        op: AluOp,
    },
    /// `dst = (src op0 operand0) op1 operand1` (with `reverse*` the operands swap sides,
    /// e.g. `operand0 - src`). Two ops cost the same as one.
    TensorScalar {
        /// Destination.
        dst: Ap,
        /// Source.
        src: Ap,
        /// First op.
        op0: AluOp,
        /// First operand.
        operand0: Operand,
        /// Swap the sides of op0.
        reverse0: bool,
        /// Second op (`Bypass` to skip).
        op1: AluOp,
        /// Second operand.
        operand1: Operand,
        /// Swap the sides of op1.
        reverse1: bool,
    },
    /// Reduces the innermost `axes` free dimensions of `src` with `op` (add, max, min, mul),
    /// writing the remaining outer dimensions to `dst` (`[P, 1]` when all are reduced).
    /// `negate` negates the result.
    TensorReduce {
        /// Destination.
        dst: Ap,
        /// Source.
        src: Ap,
        /// Reduction operator.
        op: AluOp,
        /// Number of innermost free dimensions reduced (>= 1).
        axes: u8,
        /// Negate the result.
        negate: bool,
    },
    /// Per-partition batch-norm statistics of `src` (free size <= 512): writes 6 FP32 values
    /// per partition to `dst`: (count, mean, count*var) of the even-indexed elements, then
    /// the same of the odd-indexed elements.
    BnStats {
        /// `[P, 6]` FP32 destination.
        dst: Ap,
        /// Source, free size <= 512.
        src: Ap,
    },
    /// Aggregates a series of `bn_stats` triples (`src` is `[P, 3k]`) into `dst[P, 2]` =
    /// (mean, population variance).
    BnAggr {
        /// `[P, 2]` FP32 destination.
        dst: Ap,
        /// `[P, 3k]` FP32 statistics.
        src: Ap,
    },
    /// `dst = src` with a cast (the way out of PSUM).
    TensorCopy {
        /// Destination.
        dst: Ap,
        /// Source.
        src: Ap,
    },
    /// Fills `dst` with `value` (cast to the dtype).
    Memset {
        /// Destination.
        dst: Ap,
        /// Value.
        value: f32,
    },
    /// `dst = pred != 0 ? on_true : on_false`, elementwise.
    Select {
        /// Destination.
        dst: Ap,
        /// Predicate.
        pred: Ap,
        /// Taken where the predicate is non-zero.
        on_true: Ap,
        /// Taken where the predicate is zero.
        on_false: Ap,
    },
    /// `dst[p, i0..] = offset + p * channel_multiplier + sum_k steps[k] * i_k`, computed in
    /// int32 and cast to `dst`'s dtype. GpSimd only. `steps` has one entry per free dim of
    /// `dst`.
    Iota {
        /// Destination (SBUF).
        dst: Ap,
        /// Base value.
        offset: i32,
        /// Multiplier of the partition index (relative to `dst.start_partition`).
        channel_multiplier: i32,
        /// Step per free dimension.
        steps: Vec<i32>,
    },
}

impl Op {
    /// The opcode name used in disassembly, traces and profiles.
    pub const fn opcode(&self) -> &'static str {
        match self {
            Op::Dma { .. } => "dma",
            Op::DmaGather { .. } => "dma_gather",
            Op::Matmul { .. } => "matmul",
            Op::Transpose { .. } => "transpose",
            Op::Activation { .. } => "activation",
            Op::TensorTensor { .. } => "tensor_tensor",
            Op::TensorScalar { .. } => "tensor_scalar",
            Op::TensorReduce { .. } => "tensor_reduce",
            Op::BnStats { .. } => "bn_stats",
            Op::BnAggr { .. } => "bn_aggr",
            Op::TensorCopy { .. } => "tensor_copy",
            Op::Memset { .. } => "memset",
            Op::Select { .. } => "select",
            Op::Iota { .. } => "iota",
        }
    }

    /// Whether `engine` may run this op.
    pub fn allowed_on(&self, engine: Engine) -> bool {
        use Engine::*;
        match self {
            Op::Dma { .. } | Op::DmaGather { .. } => engine.is_dma(),
            Op::Matmul { .. } | Op::Transpose { .. } => engine == Tensor,
            Op::Activation { .. } => engine == Scalar,
            Op::TensorTensor { .. } | Op::TensorCopy { .. } | Op::Select { .. } => {
                matches!(engine, Vector | GpSimd)
            }
            Op::TensorScalar { .. } => matches!(engine, Vector | Scalar | GpSimd),
            Op::TensorReduce { .. } | Op::BnStats { .. } | Op::BnAggr { .. } => engine == Vector,
            Op::Memset { .. } => matches!(engine, Vector | GpSimd),
            Op::Iota { .. } => engine == GpSimd,
        }
    }

    /// The access pattern the op writes (its main destination).
    pub fn dst(&self) -> &Ap {
        match self {
            Op::Dma { dst, .. }
            | Op::DmaGather { dst, .. }
            | Op::Matmul { dst, .. }
            | Op::Transpose { dst, .. }
            | Op::Activation { dst, .. }
            | Op::TensorTensor { dst, .. }
            | Op::TensorScalar { dst, .. }
            | Op::TensorReduce { dst, .. }
            | Op::BnStats { dst, .. }
            | Op::BnAggr { dst, .. }
            | Op::TensorCopy { dst, .. }
            | Op::Memset { dst, .. }
            | Op::Select { dst, .. }
            | Op::Iota { dst, .. } => dst,
        }
    }

    /// Every access pattern the op reads, in a fixed order.
    pub fn reads(&self) -> Vec<&Ap> {
        fn operand(o: &Operand) -> Option<&Ap> {
            match o {
                Operand::Imm(_) => None,
                Operand::PerPartition(ap) => Some(ap),
            }
        }
        match self {
            Op::Dma { src, .. } => vec![src],
            Op::DmaGather { table, indices, .. } => vec![indices, table],
            Op::Matmul {
                dst,
                stationary,
                moving,
                accumulate,
            } => {
                let mut v = vec![stationary, moving];
                if *accumulate {
                    v.push(dst);
                }
                v
            }
            Op::Transpose { src, .. }
            | Op::TensorCopy { src, .. }
            | Op::TensorReduce { src, .. }
            | Op::BnStats { src, .. }
            | Op::BnAggr { src, .. } => vec![src],
            Op::Activation {
                src, scale, bias, ..
            } => {
                let mut v = vec![src];
                v.extend(operand(scale));
                v.extend(bias.as_ref().and_then(operand));
                v
            }
            Op::TensorTensor { a, b, .. } => vec![a, b],
            Op::TensorScalar {
                src,
                operand0,
                operand1,
                ..
            } => {
                let mut v = vec![src];
                v.extend(operand(operand0));
                v.extend(operand(operand1));
                v
            }
            Op::Memset { .. } | Op::Iota { .. } => vec![],
            Op::Select {
                pred,
                on_true,
                on_false,
                ..
            } => vec![pred, on_true, on_false],
        }
    }

    /// Every access pattern the op writes (the destination, plus `accum` for activation).
    pub fn writes(&self) -> Vec<&Ap> {
        match self {
            Op::Activation {
                dst,
                accum: Some(acc),
                ..
            } => vec![dst, acc],
            _ => vec![self.dst()],
        }
    }
}

/// A semaphore index in [`crate::Program::semaphores`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct SemId(pub u32);

impl fmt::Display for SemId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "s{}", self.0)
    }
}

/// Wait until semaphore `sem` has been signalled at least `count` times.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SemWait {
    /// The semaphore.
    pub sem: SemId,
    /// The count to reach.
    pub count: u32,
}

/// Marks an instruction as belonging to no kernel.
pub const NO_KERNEL: u32 = u32::MAX;

/// One instruction in an engine's stream.
///
/// Semantics of synchronization: semaphores are monotonic counters starting at 0. The
/// instruction starts only when its engine has finished the previous instruction of the
/// stream and every `wait` is satisfied; when it completes, each semaphore in `signal` is
/// incremented by one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Instruction {
    /// What it does.
    pub op: Op,
    /// Semaphore counts to wait for before starting.
    pub wait: Vec<SemWait>,
    /// Semaphores to increment on completion.
    pub signal: Vec<SemId>,
    /// Index into [`crate::Program::kernels`], or [`NO_KERNEL`].
    pub kernel: u32,
}

impl Instruction {
    /// An instruction with no synchronization and no kernel.
    pub fn new(op: Op) -> Instruction {
        Instruction {
            op,
            wait: Vec::new(),
            signal: Vec::new(),
            kernel: NO_KERNEL,
        }
    }
}
