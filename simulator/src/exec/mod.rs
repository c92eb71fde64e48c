//! Functional execution: what each instruction does to the memories, bit for bit.
//!
//! [`execute`] runs one [`Op`] against [`Memories`]; timing is the scheduler's business.
//! Every op reads all its inputs into dense buffers before writing its destination, so
//! in-place ops (destination overlapping a source) behave as if the inputs were
//! snapshotted. Engines compute in FP32 (matmul sums products in FP32; INT8 matmul
//! accumulates in INT32); every write rounds to the destination dtype with the context's
//! [`Rounder`]. Copies between equal dtypes (DMA, `tensor_copy`, transpose) move bits.
//!
//! Errors are [`ExecError`] messages without location; the scheduler wraps them into
//! [`crate::SimError::Exec`] with the stream, instruction index, engine and opcode.
//! `execute` re-checks everything it needs to stay in bounds (shapes, memory ranges), so
//! an unverified program gives an error, never a panic; ISA legality (which engine may
//! touch which memory, dtype rules) is `neuron_isa::verify`'s job.

mod activation;
mod alu;
mod bn;
mod copy;
mod deferred;
mod dma;
mod erff;
mod expf;
mod iota;
mod lanes;
mod matmul;
mod reduce;
mod transpose;

pub use activation::activation_fn;
pub use alu::alu;
pub(crate) use deferred::Deferred;

use crate::memory::Memories;
use crate::numerics::{Rounder, Rounding};
use neuron_isa::{Ap, ChipConfig, Op, Operand};

/// What went wrong executing one instruction (a message naming the operand, with
/// expected vs found). The scheduler adds the location.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ExecError {
    /// The message.
    pub message: String,
}

impl ExecError {
    /// An error with `message`.
    pub fn new(message: impl Into<String>) -> ExecError {
        ExecError {
            message: message.into(),
        }
    }
}

/// What the scheduler needs to know about an executed instruction besides its effects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ExecOutcome {
    /// Some float element read had the poison pattern (all bytes 0xFF): the instruction
    /// read memory nobody wrote.
    pub poisoned_read: bool,
}

/// State shared by all instructions of a run: the chip, the rounding mode with its
/// stochastic-rounding generator, and reusable buffers.
#[derive(Debug, Clone)]
pub struct ExecContext {
    /// The chip configuration.
    pub cfg: ChipConfig,
    /// Rounding of every narrowing write, with its generator state.
    pub rounder: Rounder,
    /// Dense FP32 buffers reused across instructions (large ones would otherwise be
    /// mapped and faulted in by the allocator on every instruction).
    pool: Vec<Vec<f32>>,
    /// A dense byte buffer reused across instructions, for the same reason.
    bytes: Vec<u8>,
    /// A deferred-matmul worker keeps one of the rayon pool's cores busy
    /// (`deferred.rs`): instructions split their work across the pool only if it has a
    /// thread beyond that one and the simulator's own.
    pub(crate) worker_busy: bool,
}

impl ExecContext {
    /// A context for `cfg` rounding with `rounding`, the stochastic-rounding generator
    /// seeded by `seed`.
    pub fn new(cfg: ChipConfig, rounding: Rounding, seed: u64) -> ExecContext {
        ExecContext {
            cfg,
            rounder: Rounder::new(rounding, seed),
            pool: Vec::new(),
            bytes: Vec::new(),
            worker_busy: false,
        }
    }

    /// Whether an instruction may split its work across the rayon pool: the pool has a
    /// thread for it besides the simulator's and, during a run with deferred matmuls,
    /// the worker's. On two cores the worker's GEMMs already use the second one; a split
    /// would only wake pool threads to compete with it for that core (measured on the
    /// BERT-base layer: a third fewer context switches, and activations on the
    /// simulator's thread take less wall time without the split).
    pub(crate) fn may_split(&self) -> bool {
        rayon::current_num_threads() > 1 + usize::from(self.worker_busy)
    }

    /// The byte buffer (contents unspecified; readers resize it); give it back with
    /// [`ExecContext::give_bytes`].
    fn take_bytes(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.bytes)
    }

    /// Returns the byte buffer.
    fn give_bytes(&mut self, bytes: Vec<u8>) {
        self.bytes = bytes;
    }

    /// A buffer from the pool (contents unspecified; readers resize it).
    fn take(&mut self) -> Vec<f32> {
        self.pool.pop().unwrap_or_default()
    }

    /// Returns buffers to the pool.
    fn give<const N: usize>(&mut self, bufs: [Vec<f32>; N]) {
        self.pool.extend(bufs);
    }
}

/// Executes `op` on `mem`. See the module documentation for the rules every op follows;
/// each op's semantics is documented on [`Op`].
pub fn execute(
    mem: &mut Memories,
    op: &Op,
    ctx: &mut ExecContext,
) -> Result<ExecOutcome, ExecError> {
    let poisoned_read = match op {
        Op::Dma { dst, src } => dma::dma(mem, dst, src, ctx)?,
        Op::DmaGather {
            dst,
            table,
            indices,
        } => dma::gather(mem, dst, table, indices, ctx)?,
        Op::Matmul {
            dst,
            stationary,
            moving,
            accumulate,
        } => matmul::matmul(mem, dst, stationary, moving, *accumulate, ctx)?,
        Op::Transpose { dst, src } => transpose::transpose(mem, dst, src, ctx)?,
        Op::Activation {
            dst,
            src,
            func,
            scale,
            bias,
            accum,
        } => activation::activation(
            mem,
            dst,
            src,
            *func,
            scale,
            bias.as_ref(),
            accum.as_ref(),
            ctx,
        )?,
        Op::TensorTensor { dst, a, b, op } => alu::tensor_tensor(mem, dst, a, b, *op, ctx)?,
        Op::TensorScalar {
            dst,
            src,
            op0,
            operand0,
            reverse0,
            op1,
            operand1,
            reverse1,
        } => alu::tensor_scalar(
            mem,
            dst,
            src,
            (*op0, operand0, *reverse0),
            (*op1, operand1, *reverse1),
            ctx,
        )?,
        Op::TensorReduce {
            dst,
            src,
            op,
            axes,
            negate,
        } => reduce::tensor_reduce(mem, dst, src, *op, *axes, *negate, ctx)?,
        Op::BnStats { dst, src } => bn::bn_stats(mem, dst, src, ctx)?,
        Op::BnAggr { dst, src } => bn::bn_aggr(mem, dst, src, ctx)?,
        Op::TensorCopy { dst, src } => copy::tensor_copy(mem, dst, src, ctx)?,
        Op::Memset { dst, value } => copy::memset(mem, dst, *value, ctx)?,
        Op::Select {
            dst,
            pred,
            on_true,
            on_false,
        } => copy::select(mem, dst, pred, on_true, on_false, ctx)?,
        Op::Iota {
            dst,
            offset,
            channel_multiplier,
            steps,
        } => iota::iota(mem, dst, *offset, *channel_multiplier, steps, ctx)?,
    };
    Ok(ExecOutcome { poisoned_read })
}

/// `(partitions, free elements)` of `ap`, saturating (absurd sizes are refused when the
/// pattern is resolved against memory).
fn shape(ap: &Ap) -> (usize, usize) {
    let free = ap
        .dims
        .iter()
        .fold(1usize, |acc, d| acc.saturating_mul(d.size as usize));
    (ap.partitions as usize, free)
}

/// Errors unless `a` and `b` have the same partitions and free element count.
fn same_shape(a_name: &str, a: &Ap, b_name: &str, b: &Ap) -> Result<(), ExecError> {
    let (sa, sb) = (shape(a), shape(b));
    if sa != sb {
        return Err(ExecError::new(format!(
            "{a_name} {a} is [{}, {}] but {b_name} {b} is [{}, {}]",
            sa.0, sa.1, sb.0, sb.1
        )));
    }
    Ok(())
}

/// A scalar operand resolved to values: an immediate, or one value per partition.
enum Scalars {
    Imm(f32),
    PerPartition(Vec<f32>),
}

impl Scalars {
    /// Reads `operand` for a destination of `partitions` partitions; `poisoned` collects
    /// poison reads.
    fn read(
        mem: &Memories,
        name: &str,
        operand: &Operand,
        partitions: usize,
        poisoned: &mut bool,
    ) -> Result<Scalars, ExecError> {
        match operand {
            Operand::Imm(v) => Ok(Scalars::Imm(*v)),
            Operand::PerPartition(ap) => {
                if shape(ap) != (partitions, 1) {
                    return Err(ExecError::new(format!(
                        "{name} {ap}: expected [{partitions}, 1] (one value per partition), found [{}, {}]",
                        shape(ap).0,
                        shape(ap).1
                    )));
                }
                let mut v = Vec::new();
                *poisoned |= mem.read_f32(ap, &mut v)?;
                Ok(Scalars::PerPartition(v))
            }
        }
    }

    /// The value for partition `p`.
    #[inline]
    fn at(&self, p: usize) -> f32 {
        match self {
            Scalars::Imm(v) => *v,
            Scalars::PerPartition(v) => v[p],
        }
    }
}
