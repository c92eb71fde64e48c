//! The ISA legality verifier: checks a [`Program`] against a [`ChipConfig`] before anything
//! runs, so the simulator never sees an instruction the hardware would reject or an
//! access outside its memory.
//!
//! Each check is a [`Rule`]; the first violation is reported as a [`VerifyError`] naming
//! the stream, engine, instruction index, opcode and rule, with expected vs found.
//! Address arithmetic is done in 128-bit integers, so absurd sizes, strides or offsets
//! give an error, never an overflow or a panic.
//!
//! Rules and their sources (`docs/isa.md`; reference sections 2.1-2.2 and 3):
//! - engine placement: [`Op::allowed_on`]; at most one stream per engine; DMA queue
//!   index below `cfg.dma_queues`; semaphore ids below `program.semaphores`; kernel
//!   index valid or [`NO_KERNEL`].
//! - access patterns: 1..=128 partitions (a gather table's row count is unlimited); on
//!   chip, the partition-start rule
//!   (64 < n <= 128: start 0; 32 < n <= 64: start 0 or 64; n <= 32: start 0, 32, 64 or
//!   96) and `partition_stride == 1`; in HBM, start 0; at most 4 free dims; every
//!   size at least 1 and on chip at most 65535 (`uint16`); at most [`MAX_AP_ELEMS`]
//!   elements; every byte inside its memory (SBUF/PSUM partition, HBM tensor).
//! - memories: compute engines never touch HBM; DMA and GpSimd never touch PSUM; matmul
//!   and transpose read SBUF and write PSUM; a TensorE write stays inside one 2 KiB PSUM
//!   bank; not both `tensor_tensor` inputs in PSUM; VectorE/ScalarE free size <= 65536
//!   from SBUF and <= 4096 from PSUM.
//! - dtypes: `i64` only in HBM and never written; matmul inputs fp32 on both sides or
//!   neither, int8 (i8/u8) on both sides or neither, dst f32 (i32 for int8 inputs);
//!   gather indices i32; statistics f32.
//! - shapes: matmul K/M/N limits and `dst = [M, N]`; transpose `P, F <= 128` and
//!   `dst = [F, P]`; same partitions and free element count for copies and elementwise
//!   ops; per-partition operands `[P, 1]`; reductions legal for the op and axes;
//!   `bn_stats` free <= 512 into `[P, 6]`; `bn_aggr` `[P, 3k]` into `[P, 2]`; one iota
//!   step per free dim.
//!
//! Deviation: strides are not limited to the hardware's `int16`, and HBM free sizes are
//! not limited to `uint16` (DMA descriptors are modelled as unbounded).

use crate::ap::{Ap, MAX_FREE_DIMS, Memory};
use crate::config::ChipConfig;
use crate::dtype::Dtype;
use crate::instr::{Engine, NO_KERNEL, Op, Operand};
use crate::program::Program;
use std::fmt;

/// Largest element count of one access pattern (2^28): bounds the simulator's buffers.
pub const MAX_AP_ELEMS: u64 = 1 << 28;

/// Largest free-dimension size on chip: sizes are `uint16` in the hardware's patterns.
pub const MAX_ON_CHIP_DIM: u32 = 65535;

/// Largest free size of a `bn_stats` input (`bn_stats_fmax`).
pub const BN_STATS_FMAX: u64 = 512;

/// Largest VectorE/ScalarE free size read from or written to SBUF.
pub const ENGINE_SBUF_FMAX: u64 = 65536;

/// Largest VectorE/ScalarE free size read from or written to PSUM.
pub const ENGINE_PSUM_FMAX: u64 = 4096;

/// Largest TensorE transpose side (`P` and `F`).
pub const TRANSPOSE_MAX: u64 = 128;

/// One legality rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Rule {
    /// The op may not run on the stream's engine.
    EngineOp,
    /// Two streams name the same engine.
    OneStreamPerEngine,
    /// A DMA queue index is not below `cfg.dma_queues`.
    DmaQueue,
    /// A semaphore id is not below `program.semaphores`.
    Semaphore,
    /// A kernel index is neither valid nor `NO_KERNEL`.
    Kernel,
    /// A partition count is outside 1..=128 or runs past the last partition.
    Partitions,
    /// An on-chip pattern starts at a partition the hardware cannot address for its size
    /// (or an HBM pattern has a non-zero start partition).
    PartitionStart,
    /// An on-chip pattern has a partition stride other than 1.
    PartitionStride,
    /// More than four free dimensions.
    FreeDims,
    /// A free dimension of size 0, or above 65535 on chip.
    DimSize,
    /// More elements than the simulator accepts in one pattern.
    ApSize,
    /// An unknown HBM tensor, or one whose size overflows.
    Tensor,
    /// A byte outside the memory (SBUF/PSUM partition, HBM tensor).
    Bounds,
    /// An operand in a memory its engine or op cannot access.
    OperandMemory,
    /// A dtype the op or memory does not allow.
    Dtype,
    /// Matmul operand shapes (K, M, N) disagree or exceed the array.
    MatmulShape,
    /// A TensorE write crosses a PSUM bank boundary.
    PsumBank,
    /// Transpose shapes disagree or exceed 128.
    TransposeShape,
    /// A VectorE/ScalarE free size beyond 65536 (SBUF) or 4096 (PSUM).
    FreeSize,
    /// Both `tensor_tensor` inputs in PSUM.
    PsumInputs,
    /// Operands disagree in partitions or free element count.
    ElementCount,
    /// A per-partition operand is not `[P, 1]` with the destination's partition count.
    PerPartition,
    /// A reduction op or axis count that `tensor_reduce` cannot do.
    ReduceOp,
    /// `bn_stats` shape rules.
    BnStats,
    /// `bn_aggr` shape rules.
    BnAggr,
    /// `iota` needs one step per free dimension of its destination.
    IotaSteps,
}

impl Rule {
    /// Kebab-case name used in messages and docs.
    pub const fn name(self) -> &'static str {
        match self {
            Rule::EngineOp => "engine-op",
            Rule::OneStreamPerEngine => "one-stream-per-engine",
            Rule::DmaQueue => "dma-queue",
            Rule::Semaphore => "semaphore",
            Rule::Kernel => "kernel",
            Rule::Partitions => "partitions",
            Rule::PartitionStart => "partition-start",
            Rule::PartitionStride => "partition-stride",
            Rule::FreeDims => "free-dims",
            Rule::DimSize => "dim-size",
            Rule::ApSize => "ap-size",
            Rule::Tensor => "tensor",
            Rule::Bounds => "bounds",
            Rule::OperandMemory => "operand-memory",
            Rule::Dtype => "dtype",
            Rule::MatmulShape => "matmul-shape",
            Rule::PsumBank => "psum-bank",
            Rule::TransposeShape => "transpose-shape",
            Rule::FreeSize => "free-size",
            Rule::PsumInputs => "psum-inputs",
            Rule::ElementCount => "element-count",
            Rule::PerPartition => "per-partition",
            Rule::ReduceOp => "reduce-op",
            Rule::BnStats => "bn-stats",
            Rule::BnAggr => "bn-aggr",
            Rule::IotaSteps => "iota-steps",
        }
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A violated rule, located in the program.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct VerifyError {
    /// Index of the stream in [`Program::streams`].
    pub stream: usize,
    /// Instruction index in the stream (`None` for stream-level rules).
    pub index: Option<usize>,
    /// The stream's engine.
    pub engine: Engine,
    /// Opcode of the instruction (`None` for stream-level rules).
    pub opcode: Option<&'static str>,
    /// The rule.
    pub rule: Rule,
    /// What is wrong, with expected vs found.
    pub message: String,
}

impl fmt::Display for VerifyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.index, self.opcode) {
            (Some(i), Some(op)) => write!(
                f,
                "{} instruction {i} (stream {}, {op}): rule {}: {}",
                self.engine, self.stream, self.rule, self.message
            ),
            _ => write!(
                f,
                "{} stream {}: rule {}: {}",
                self.engine, self.stream, self.rule, self.message
            ),
        }
    }
}

/// A rule violation before it is located.
type Violation = (Rule, String);

fn fail<T>(rule: Rule, message: String) -> Result<T, Violation> {
    Err((rule, message))
}

/// Checks every stream and instruction of `program` against `cfg`; returns the first
/// violation.
pub fn verify_program(program: &Program, cfg: &ChipConfig) -> Result<(), VerifyError> {
    let v = Verifier { program, cfg };
    for (si, stream) in program.streams.iter().enumerate() {
        let stream_err = |rule, message| VerifyError {
            stream: si,
            index: None,
            engine: stream.engine,
            opcode: None,
            rule,
            message,
        };
        if let Some(first) = program.streams[..si]
            .iter()
            .position(|s| s.engine == stream.engine)
        {
            return Err(stream_err(
                Rule::OneStreamPerEngine,
                format!("engine {} already has stream {first}", stream.engine),
            ));
        }
        if let Engine::Dma(q) = stream.engine {
            if u32::from(q) >= cfg.dma_queues {
                return Err(stream_err(
                    Rule::DmaQueue,
                    format!("expected a dma queue below {}, found {q}", cfg.dma_queues),
                ));
            }
        }
        for (ii, instr) in stream.instrs.iter().enumerate() {
            let located = |(rule, message): Violation| VerifyError {
                stream: si,
                index: Some(ii),
                engine: stream.engine,
                opcode: Some(instr.op.opcode()),
                rule,
                message,
            };
            if !instr.op.allowed_on(stream.engine) {
                return Err(located((
                    Rule::EngineOp,
                    format!("{} cannot run on {}", instr.op.opcode(), stream.engine),
                )));
            }
            for sem in instr
                .wait
                .iter()
                .map(|w| w.sem)
                .chain(instr.signal.iter().copied())
            {
                if sem.0 >= program.semaphores {
                    return Err(located((
                        Rule::Semaphore,
                        format!(
                            "semaphore {sem} out of range: the program has {}",
                            program.semaphores
                        ),
                    )));
                }
            }
            if instr.kernel != NO_KERNEL && instr.kernel as usize >= program.kernels.len() {
                return Err(located((
                    Rule::Kernel,
                    format!(
                        "kernel index {} out of range: the program has {} kernels",
                        instr.kernel,
                        program.kernels.len()
                    ),
                )));
            }
            v.check_op(&instr.op, stream.engine).map_err(located)?;
        }
    }
    Ok(())
}

/// Every access pattern of `op` with its role name and whether it is written.
fn named_aps(op: &Op) -> Vec<(&'static str, &Ap, bool)> {
    fn operand<'a>(v: &mut Vec<(&'static str, &'a Ap, bool)>, name: &'static str, o: &'a Operand) {
        if let Operand::PerPartition(ap) = o {
            v.push((name, ap, false));
        }
    }
    let mut v = Vec::with_capacity(4);
    match op {
        Op::Dma { dst, src } => v.extend([("dst", dst, true), ("src", src, false)]),
        Op::DmaGather {
            dst,
            table,
            indices,
        } => v.extend([
            ("dst", dst, true),
            ("table", table, false),
            ("indices", indices, false),
        ]),
        Op::Matmul {
            dst,
            stationary,
            moving,
            ..
        } => v.extend([
            ("dst", dst, true),
            ("stationary", stationary, false),
            ("moving", moving, false),
        ]),
        Op::Transpose { dst, src }
        | Op::TensorCopy { dst, src }
        | Op::TensorReduce { dst, src, .. }
        | Op::BnStats { dst, src }
        | Op::BnAggr { dst, src } => v.extend([("dst", dst, true), ("src", src, false)]),
        Op::Activation {
            dst,
            src,
            scale,
            bias,
            accum,
            ..
        } => {
            v.extend([("dst", dst, true), ("src", src, false)]);
            operand(&mut v, "scale", scale);
            if let Some(b) = bias {
                operand(&mut v, "bias", b);
            }
            if let Some(a) = accum {
                v.push(("accum", a, true));
            }
        }
        Op::TensorTensor { dst, a, b, .. } => {
            v.extend([("dst", dst, true), ("a", a, false), ("b", b, false)])
        }
        Op::TensorScalar {
            dst,
            src,
            operand0,
            operand1,
            ..
        } => {
            v.extend([("dst", dst, true), ("src", src, false)]);
            operand(&mut v, "operand0", operand0);
            operand(&mut v, "operand1", operand1);
        }
        Op::Memset { dst, .. } | Op::Iota { dst, .. } => v.push(("dst", dst, true)),
        Op::Select {
            dst,
            pred,
            on_true,
            on_false,
        } => v.extend([
            ("dst", dst, true),
            ("pred", pred, false),
            ("on_true", on_true, false),
            ("on_false", on_false, false),
        ]),
    }
    v
}

/// Product of the free sizes, without overflow (sizes are `u32`, at most 4 dims).
fn free_elems(ap: &Ap) -> u128 {
    ap.dims
        .iter()
        .fold(1u128, |acc, d| acc.saturating_mul(u128::from(d.size)))
}

/// Whether partitions `start .. start + n` are addressable as one on-chip tile.
fn partition_start_ok(start: u32, n: u32) -> bool {
    match n {
        65..=128 => start == 0,
        33..=64 => start == 0 || start == 64,
        1..=32 => start % 32 == 0 && start <= 96,
        _ => false,
    }
}

/// Byte span `[lo, hi)` one row touches relative to its base (128-bit, cannot overflow).
fn row_span(ap: &Ap) -> (i128, i128) {
    let esize = i128::from(ap.dtype.size());
    let (mut lo, mut hi) = (0i128, 0i128);
    for d in &ap.dims {
        let reach = (i128::from(d.size) - 1) * i128::from(d.stride) * esize;
        if reach < 0 {
            lo += reach;
        } else {
            hi += reach;
        }
    }
    (lo, hi + esize)
}

struct Verifier<'a> {
    program: &'a Program,
    cfg: &'a ChipConfig,
}

impl Verifier<'_> {
    /// Shape, placement and bounds rules of one access pattern. A gather `table` is a
    /// row table, not a tile: its `partitions` is the row count (any number of rows) and
    /// only the rows the indices pick are ever read, so the partition and size limits do
    /// not apply to it (its bounds do).
    fn check_ap(&self, name: &str, ap: &Ap, written: bool, table: bool) -> Result<(), Violation> {
        let parts = if table { u32::MAX } else { self.cfg.partitions };
        if ap.partitions == 0 || ap.partitions > parts {
            return fail(
                Rule::Partitions,
                format!(
                    "{name} {ap}: expected 1..={parts} partitions, found {}",
                    ap.partitions
                ),
            );
        }
        if ap.dims.len() > MAX_FREE_DIMS {
            return fail(
                Rule::FreeDims,
                format!(
                    "{name} {ap}: expected at most {MAX_FREE_DIMS} free dims, found {}",
                    ap.dims.len()
                ),
            );
        }
        for (i, d) in ap.dims.iter().enumerate() {
            if d.size == 0 || (ap.mem.is_on_chip() && d.size > MAX_ON_CHIP_DIM) {
                return fail(
                    Rule::DimSize,
                    format!(
                        "{name} {ap}: dim {i} size must be 1..={}, found {}",
                        if ap.mem.is_on_chip() {
                            MAX_ON_CHIP_DIM
                        } else {
                            u32::MAX
                        },
                        d.size
                    ),
                );
            }
        }
        let rows = if table { 1 } else { ap.partitions };
        let elems = free_elems(ap).saturating_mul(u128::from(rows));
        if elems > u128::from(MAX_AP_ELEMS) {
            return fail(
                Rule::ApSize,
                format!("{name} {ap}: {elems} elements exceed the limit of {MAX_AP_ELEMS}"),
            );
        }
        if ap.dtype == Dtype::I64 && (ap.mem.is_on_chip() || written) {
            return fail(
                Rule::Dtype,
                format!("{name} {ap}: i64 is only allowed in hbm as a source (it is read-only)"),
            );
        }
        let (lo, hi) = row_span(ap);
        let offset = i128::from(ap.offset);
        match ap.mem {
            Memory::Sbuf | Memory::Psum => {
                let end = u64::from(ap.start_partition) + u64::from(ap.partitions);
                if end > u64::from(parts) {
                    return fail(
                        Rule::Partitions,
                        format!(
                            "{name} {ap}: partitions {}..{end} run past the last partition ({parts})",
                            ap.start_partition
                        ),
                    );
                }
                if !partition_start_ok(ap.start_partition, ap.partitions) {
                    return fail(
                        Rule::PartitionStart,
                        format!(
                            "{name} {ap}: {} partitions cannot start at partition {} (n > 64: 0; \
                             n > 32: 0 or 64; else 0, 32, 64 or 96)",
                            ap.partitions, ap.start_partition
                        ),
                    );
                }
                if ap.partition_stride != 1 {
                    return fail(
                        Rule::PartitionStride,
                        format!(
                            "{name} {ap}: on-chip partition_stride must be 1, found {}",
                            ap.partition_stride
                        ),
                    );
                }
                let (mem_name, size) = if ap.mem == Memory::Sbuf {
                    ("sbuf", self.cfg.sbuf_bytes_per_partition)
                } else {
                    ("psum", self.cfg.psum_bytes_per_partition)
                };
                if offset + lo < 0 || offset + hi > i128::from(size) {
                    return fail(
                        Rule::Bounds,
                        format!(
                            "{name} {ap}: touches bytes {}..{} of each partition, {mem_name} partitions \
                             hold 0..{size}",
                            offset + lo,
                            offset + hi
                        ),
                    );
                }
            }
            Memory::Hbm(t) => {
                if ap.start_partition != 0 {
                    return fail(
                        Rule::PartitionStart,
                        format!(
                            "{name} {ap}: hbm patterns start at row 0, found {}",
                            ap.start_partition
                        ),
                    );
                }
                let Some(tensor) = self.program.tensors.get(t.0 as usize) else {
                    return fail(
                        Rule::Tensor,
                        format!(
                            "{name} {ap}: unknown tensor {t}: the program has {}",
                            self.program.tensors.len()
                        ),
                    );
                };
                let size = tensor
                    .shape
                    .iter()
                    .try_fold(tensor.dtype.size(), |acc, &d| acc.checked_mul(d))
                    .ok_or((
                        Rule::Tensor,
                        format!(
                            "{name}: tensor {t} ('{}') size overflows 64 bits",
                            tensor.name
                        ),
                    ))?;
                let row = if ap.partitions == 1 {
                    0
                } else {
                    i128::from(ap.partition_stride) * i128::from(ap.dtype.size())
                };
                let reach = (i128::from(ap.partitions) - 1) * row;
                let first = offset + lo + reach.min(0);
                let last = offset + hi + reach.max(0);
                if first < 0 || last > i128::from(size) {
                    return fail(
                        Rule::Bounds,
                        format!(
                            "{name} {ap}: touches bytes {first}..{last} of tensor {t} ('{}'), which has {size}",
                            tensor.name
                        ),
                    );
                }
            }
        }
        Ok(())
    }

    /// Which memories the engine may touch, then the op's own rules.
    fn check_op(&self, op: &Op, engine: Engine) -> Result<(), Violation> {
        let aps = named_aps(op);
        let gather = matches!(op, Op::DmaGather { .. });
        for &(name, ap, written) in &aps {
            self.check_ap(name, ap, written, gather && name == "table")?;
        }
        for &(name, ap, _) in &aps {
            let ok = match (engine, ap.mem) {
                (Engine::Dma(_), Memory::Psum) => false,
                (Engine::Dma(_), _) => true,
                (_, Memory::Hbm(_)) => false,
                (Engine::GpSimd, Memory::Psum) => false,
                _ => true,
            };
            if !ok {
                let why = match engine {
                    Engine::Dma(_) => "dma never accesses psum (psum goes to hbm through sbuf)",
                    Engine::GpSimd if ap.mem == Memory::Psum => "gpsimd cannot access psum",
                    _ => "compute engines cannot access hbm",
                };
                return fail(Rule::OperandMemory, format!("{name} {ap}: {why}"));
            }
            if matches!(engine, Engine::Vector | Engine::Scalar) {
                let (limit, mem) = match ap.mem {
                    Memory::Psum => (ENGINE_PSUM_FMAX, "psum"),
                    _ => (ENGINE_SBUF_FMAX, "sbuf"),
                };
                let free = free_elems(ap);
                if free > u128::from(limit) {
                    return fail(
                        Rule::FreeSize,
                        format!(
                            "{name} {ap}: {engine} free size from {mem} must be <= {limit}, found {free}"
                        ),
                    );
                }
            }
        }
        match op {
            Op::Dma { dst, src } => same_shape("dst", dst, "src", src),
            Op::DmaGather {
                dst,
                table,
                indices,
            } => {
                need_mem("dst", dst, Memory::Sbuf)?;
                need_mem("indices", indices, Memory::Sbuf)?;
                if !matches!(table.mem, Memory::Hbm(_)) {
                    return fail(Rule::OperandMemory, format!("table {table}: expected hbm"));
                }
                if indices.dtype != Dtype::I32 {
                    return fail(
                        Rule::Dtype,
                        format!("indices {indices}: expected i32, found {}", indices.dtype),
                    );
                }
                per_partition("indices", indices, dst)?;
                if free_elems(table) != free_elems(dst) {
                    return fail(
                        Rule::ElementCount,
                        format!(
                            "table row has {} elements, dst rows have {}",
                            free_elems(table),
                            free_elems(dst)
                        ),
                    );
                }
                Ok(())
            }
            Op::Matmul {
                dst,
                stationary,
                moving,
                ..
            } => self.check_matmul(dst, stationary, moving),
            Op::Transpose { dst, src } => self.check_transpose(dst, src),
            Op::Activation {
                dst,
                src,
                scale,
                bias,
                accum,
                ..
            } => {
                same_shape("dst", dst, "src", src)?;
                operand_shape("scale", scale, dst)?;
                if let Some(b) = bias {
                    operand_shape("bias", b, dst)?;
                }
                if let Some(a) = accum {
                    per_partition("accum", a, dst)?;
                    need_dtype("accum", a, Dtype::F32)?;
                }
                Ok(())
            }
            Op::TensorTensor { dst, a, b, .. } => {
                same_shape("dst", dst, "a", a)?;
                same_shape("dst", dst, "b", b)?;
                if a.mem == Memory::Psum && b.mem == Memory::Psum {
                    return fail(
                        Rule::PsumInputs,
                        "inputs a and b are both in psum; at most one may be".into(),
                    );
                }
                Ok(())
            }
            Op::TensorScalar {
                dst,
                src,
                operand0,
                operand1,
                ..
            } => {
                same_shape("dst", dst, "src", src)?;
                operand_shape("operand0", operand0, dst)?;
                operand_shape("operand1", operand1, dst)
            }
            Op::TensorReduce {
                dst, src, op, axes, ..
            } => {
                if !op.is_reduction() {
                    return fail(
                        Rule::ReduceOp,
                        format!(
                            "{} is not a reduction: expected add, max, min or mul",
                            op.name()
                        ),
                    );
                }
                let n = usize::from(*axes);
                if n == 0 || n > src.dims.len() {
                    return fail(
                        Rule::ReduceOp,
                        format!(
                            "axes must be 1..={} (src free dims), found {axes}",
                            src.dims.len()
                        ),
                    );
                }
                let kept: u128 = src.dims[..src.dims.len() - n]
                    .iter()
                    .map(|d| u128::from(d.size))
                    .product();
                if dst.partitions != src.partitions || free_elems(dst) != kept {
                    return fail(
                        Rule::ElementCount,
                        format!(
                            "dst must be [{}, {kept}] (src without its {n} innermost dims), found [{}, {}]",
                            src.partitions,
                            dst.partitions,
                            free_elems(dst)
                        ),
                    );
                }
                Ok(())
            }
            Op::BnStats { dst, src } => {
                if free_elems(src) > u128::from(BN_STATS_FMAX) {
                    return fail(
                        Rule::BnStats,
                        format!(
                            "src free size must be <= {BN_STATS_FMAX}, found {}",
                            free_elems(src)
                        ),
                    );
                }
                need_dtype("dst", dst, Dtype::F32)?;
                if dst.partitions != src.partitions || free_elems(dst) != 6 {
                    return fail(
                        Rule::BnStats,
                        format!(
                            "dst must be [{}, 6], found [{}, {}]",
                            src.partitions,
                            dst.partitions,
                            free_elems(dst)
                        ),
                    );
                }
                Ok(())
            }
            Op::BnAggr { dst, src } => {
                need_dtype("src", src, Dtype::F32)?;
                need_dtype("dst", dst, Dtype::F32)?;
                let n = free_elems(src);
                if n % 3 != 0 {
                    return fail(
                        Rule::BnAggr,
                        format!("src free size must be a multiple of 3, found {n}"),
                    );
                }
                if dst.partitions != src.partitions || free_elems(dst) != 2 {
                    return fail(
                        Rule::BnAggr,
                        format!(
                            "dst must be [{}, 2], found [{}, {}]",
                            src.partitions,
                            dst.partitions,
                            free_elems(dst)
                        ),
                    );
                }
                Ok(())
            }
            Op::TensorCopy { dst, src } => same_shape("dst", dst, "src", src),
            Op::Memset { .. } => Ok(()),
            Op::Select {
                dst,
                pred,
                on_true,
                on_false,
            } => {
                same_shape("dst", dst, "pred", pred)?;
                same_shape("dst", dst, "on_true", on_true)?;
                same_shape("dst", dst, "on_false", on_false)
            }
            Op::Iota { dst, steps, .. } => {
                need_mem("dst", dst, Memory::Sbuf)?;
                if steps.len() != dst.dims.len() {
                    return fail(
                        Rule::IotaSteps,
                        format!(
                            "expected {} steps (one per dst free dim), found {}",
                            dst.dims.len(),
                            steps.len()
                        ),
                    );
                }
                Ok(())
            }
        }
    }

    fn check_matmul(&self, dst: &Ap, stationary: &Ap, moving: &Ap) -> Result<(), Violation> {
        need_mem("stationary", stationary, Memory::Sbuf)?;
        need_mem("moving", moving, Memory::Sbuf)?;
        need_mem("dst", dst, Memory::Psum)?;
        let (k, m, n) = (
            stationary.partitions,
            free_elems(stationary),
            free_elems(moving),
        );
        if moving.partitions != k {
            return fail(
                Rule::MatmulShape,
                format!(
                    "stationary and moving must share K (partitions): {k} vs {}",
                    moving.partitions
                ),
            );
        }
        if m > u128::from(self.cfg.matmul_stationary_fmax) {
            return fail(
                Rule::MatmulShape,
                format!(
                    "stationary free size M must be <= {}, found {m}",
                    self.cfg.matmul_stationary_fmax
                ),
            );
        }
        if n > u128::from(self.cfg.matmul_moving_fmax) {
            return fail(
                Rule::MatmulShape,
                format!(
                    "moving free size N must be <= {}, found {n}",
                    self.cfg.matmul_moving_fmax
                ),
            );
        }
        if u128::from(dst.partitions) != m || free_elems(dst) != n {
            return fail(
                Rule::MatmulShape,
                format!(
                    "dst must be [M={m}, N={n}], found [{}, {}]",
                    dst.partitions,
                    free_elems(dst)
                ),
            );
        }
        let (s, mv) = (stationary.dtype, moving.dtype);
        let float_ok = |d: Dtype| d.is_float();
        let int_ok = |d: Dtype| matches!(d, Dtype::I8 | Dtype::U8);
        if !(float_ok(s) || int_ok(s)) || !(float_ok(mv) || int_ok(mv)) {
            return fail(
                Rule::Dtype,
                format!("matmul inputs must be float or i8/u8, found {s} and {mv}"),
            );
        }
        if (s == Dtype::F32) != (mv == Dtype::F32) {
            return fail(
                Rule::Dtype,
                format!("inputs must both be f32 or neither, found {s} and {mv}"),
            );
        }
        if int_ok(s) != int_ok(mv) {
            return fail(
                Rule::Dtype,
                format!("inputs must both be int8 or neither, found {s} and {mv}"),
            );
        }
        let want = if int_ok(s) { Dtype::I32 } else { Dtype::F32 };
        need_dtype("dst", dst, want)?;
        self.check_psum_bank("dst", dst)
    }

    fn check_transpose(&self, dst: &Ap, src: &Ap) -> Result<(), Violation> {
        need_mem("src", src, Memory::Sbuf)?;
        need_mem("dst", dst, Memory::Psum)?;
        let (p, f) = (u128::from(src.partitions), free_elems(src));
        if f > u128::from(TRANSPOSE_MAX) {
            return fail(
                Rule::TransposeShape,
                format!("src free size must be <= {TRANSPOSE_MAX}, found {f}"),
            );
        }
        if u128::from(dst.partitions) != f || free_elems(dst) != p {
            return fail(
                Rule::TransposeShape,
                format!(
                    "dst must be [{f}, {p}] (src transposed), found [{}, {}]",
                    dst.partitions,
                    free_elems(dst)
                ),
            );
        }
        if dst.dtype != src.dtype && dst.dtype != Dtype::F32 {
            return fail(
                Rule::Dtype,
                format!(
                    "dst must be {} (bit-exact) or f32, found {}",
                    src.dtype, dst.dtype
                ),
            );
        }
        self.check_psum_bank("dst", dst)
    }

    /// A TensorE write must stay inside one PSUM bank of every partition.
    fn check_psum_bank(&self, name: &str, ap: &Ap) -> Result<(), Violation> {
        let bank = i128::from(self.cfg.psum_bank_bytes().max(1));
        let (lo, hi) = row_span(ap);
        let (first, last) = (i128::from(ap.offset) + lo, i128::from(ap.offset) + hi - 1);
        if first.div_euclid(bank) != last.div_euclid(bank) {
            return fail(
                Rule::PsumBank,
                format!(
                    "{name} {ap}: bytes {first}..={last} cross a {bank}-byte psum bank boundary"
                ),
            );
        }
        Ok(())
    }
}

fn need_mem(name: &str, ap: &Ap, mem: Memory) -> Result<(), Violation> {
    if ap.mem != mem {
        let want = if mem == Memory::Sbuf { "sbuf" } else { "psum" };
        return fail(Rule::OperandMemory, format!("{name} {ap}: expected {want}"));
    }
    Ok(())
}

fn need_dtype(name: &str, ap: &Ap, dtype: Dtype) -> Result<(), Violation> {
    if ap.dtype != dtype {
        return fail(
            Rule::Dtype,
            format!("{name} {ap}: expected {dtype}, found {}", ap.dtype),
        );
    }
    Ok(())
}

/// Same partitions and same free element count.
fn same_shape(an: &str, a: &Ap, bn: &str, b: &Ap) -> Result<(), Violation> {
    if a.partitions != b.partitions || free_elems(a) != free_elems(b) {
        return fail(
            Rule::ElementCount,
            format!(
                "{an} is [{}, {}] but {bn} is [{}, {}]: expected the same partitions and free elements",
                a.partitions,
                free_elems(a),
                b.partitions,
                free_elems(b)
            ),
        );
    }
    Ok(())
}

/// A `[P, 1]` pattern with the destination's partition count.
fn per_partition(name: &str, ap: &Ap, dst: &Ap) -> Result<(), Violation> {
    if ap.partitions != dst.partitions || free_elems(ap) != 1 {
        return fail(
            Rule::PerPartition,
            format!(
                "{name} must be [{}, 1] (one value per dst partition), found [{}, {}]",
                dst.partitions,
                ap.partitions,
                free_elems(ap)
            ),
        );
    }
    Ok(())
}

fn operand_shape(name: &str, o: &Operand, dst: &Ap) -> Result<(), Violation> {
    match o {
        Operand::Imm(_) => Ok(()),
        Operand::PerPartition(ap) => per_partition(name, ap, dst),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ap::{Dim, TensorId};
    use crate::instr::{ActFunc, AluOp, Instruction, SemId, SemWait};
    use crate::program::{HbmTensor, KernelInfo, Stream, TensorKind};

    fn sb(dtype: Dtype, start: u32, parts: u32, offset: u64, free: u32) -> Ap {
        Ap::on_chip(Memory::Sbuf, dtype, start, parts, offset, free)
    }

    fn ps(dtype: Dtype, start: u32, parts: u32, offset: u64, free: u32) -> Ap {
        Ap::on_chip(Memory::Psum, dtype, start, parts, offset, free)
    }

    fn hbm(t: u32, dtype: Dtype, rows: u32, cols: u32) -> Ap {
        Ap::hbm_rows(TensorId(t), dtype, 0, rows, i64::from(cols), cols)
    }

    /// A program with two HBM tensors (`x`: 128x512 f32, `ids`: 128 i64) and one stream.
    fn prog(engine: Engine, ops: Vec<Op>) -> Program {
        Program {
            streams: vec![Stream {
                engine,
                instrs: ops.into_iter().map(Instruction::new).collect(),
            }],
            semaphores: 2,
            tensors: vec![
                HbmTensor {
                    name: "x".into(),
                    kind: TensorKind::Input,
                    shape: vec![128, 512],
                    dtype: Dtype::F32,
                },
                HbmTensor {
                    name: "ids".into(),
                    kind: TensorKind::Input,
                    shape: vec![128],
                    dtype: Dtype::I64,
                },
            ],
            kernels: vec![KernelInfo::default()],
        }
    }

    fn check(p: &Program) -> Result<(), VerifyError> {
        verify_program(p, &ChipConfig::trn1())
    }

    /// Asserts the program fails `rule` at instruction `index` of stream 0.
    fn expect(p: &Program, index: usize, rule: Rule) -> VerifyError {
        let e = check(p).expect_err("program should be rejected");
        assert_eq!((e.rule, e.index), (rule, Some(index)), "{e}");
        assert!(
            e.to_string().contains(&format!("instruction {index}")),
            "{e}"
        );
        assert!(
            e.to_string().contains(&format!("rule {}", rule.name())),
            "{e}"
        );
        e
    }

    fn matmul(dst: Ap, stationary: Ap, moving: Ap) -> Op {
        Op::Matmul {
            dst,
            stationary,
            moving,
            accumulate: false,
        }
    }

    fn good_matmul() -> Op {
        matmul(
            ps(Dtype::F32, 0, 128, 0, 512),
            sb(Dtype::Bf16, 0, 128, 0, 128),
            sb(Dtype::Bf16, 0, 128, 256, 512),
        )
    }

    fn copy(dst: Ap, src: Ap) -> Op {
        Op::TensorCopy { dst, src }
    }

    #[test]
    fn a_legal_program_passes() {
        let mut p = prog(Engine::Tensor, vec![good_matmul()]);
        p.streams.push(Stream {
            engine: Engine::Dma(0),
            instrs: vec![Instruction::new(Op::Dma {
                dst: sb(Dtype::Bf16, 0, 128, 0, 512),
                src: hbm(0, Dtype::F32, 128, 512),
            })],
        });
        p.streams.push(Stream {
            engine: Engine::Vector,
            instrs: vec![Instruction::new(copy(
                sb(Dtype::Bf16, 0, 128, 0, 512),
                ps(Dtype::F32, 0, 128, 0, 512),
            ))],
        });
        check(&p).unwrap();
    }

    #[test]
    fn display_names_engine_index_opcode_and_rule() {
        let p = prog(
            Engine::Vector,
            vec![
                Op::Memset {
                    dst: sb(Dtype::F32, 0, 1, 0, 1),
                    value: 0.0,
                },
                good_matmul(),
            ],
        );
        let e = expect(&p, 1, Rule::EngineOp);
        assert_eq!(
            e.to_string(),
            "vector instruction 1 (stream 0, matmul): rule engine-op: matmul cannot run on vector"
        );
    }

    #[test]
    fn one_stream_per_engine() {
        let mut p = prog(Engine::Vector, vec![]);
        p.streams.push(Stream {
            engine: Engine::Scalar,
            instrs: vec![],
        });
        p.streams.push(Stream {
            engine: Engine::Vector,
            instrs: vec![],
        });
        let e = check(&p).unwrap_err();
        assert_eq!(
            e.to_string(),
            "vector stream 2: rule one-stream-per-engine: engine vector already has stream 0"
        );
    }

    #[test]
    fn dma_queue_in_range() {
        let p = prog(Engine::Dma(16), vec![]);
        let e = check(&p).unwrap_err();
        assert_eq!((e.rule, e.index), (Rule::DmaQueue, None));
        assert_eq!(
            e.to_string(),
            "dma16 stream 0: rule dma-queue: expected a dma queue below 16, found 16"
        );
        check(&prog(Engine::Dma(15), vec![])).unwrap();
    }

    #[test]
    fn semaphores_in_range() {
        let mut p = prog(Engine::Tensor, vec![good_matmul(), good_matmul()]);
        p.streams[0].instrs[1].wait.push(SemWait {
            sem: SemId(2),
            count: 1,
        });
        expect(&p, 1, Rule::Semaphore);
        p.streams[0].instrs[1].wait.clear();
        p.streams[0].instrs[1].signal.push(SemId(7));
        expect(&p, 1, Rule::Semaphore);
        p.streams[0].instrs[1].signal = vec![SemId(1)];
        check(&p).unwrap();
    }

    #[test]
    fn kernel_index_valid_or_none() {
        let mut p = prog(Engine::Tensor, vec![good_matmul()]);
        p.streams[0].instrs[0].kernel = 0;
        check(&p).unwrap();
        p.streams[0].instrs[0].kernel = 1;
        expect(&p, 0, Rule::Kernel);
    }

    #[test]
    fn partition_counts() {
        let p = prog(
            Engine::Vector,
            vec![Op::Memset {
                dst: sb(Dtype::F32, 0, 0, 0, 4),
                value: 1.0,
            }],
        );
        expect(&p, 0, Rule::Partitions);
        let p = prog(
            Engine::Vector,
            vec![Op::Memset {
                dst: sb(Dtype::F32, 0, 129, 0, 4),
                value: 1.0,
            }],
        );
        expect(&p, 0, Rule::Partitions);
        let p = prog(
            Engine::Vector,
            vec![Op::Memset {
                dst: sb(Dtype::F32, 96, 64, 0, 4),
                value: 1.0,
            }],
        );
        expect(&p, 0, Rule::Partitions);
    }

    #[test]
    fn partition_start_rule() {
        let ok = [
            (0, 128),
            (0, 65),
            (64, 64),
            (0, 33),
            (64, 40),
            (96, 32),
            (32, 1),
            (64, 17),
        ];
        let bad = [(32, 96), (1, 64), (32, 64), (16, 32), (100, 4), (64, 65)];
        for (start, n) in ok {
            let p = prog(
                Engine::Vector,
                vec![Op::Memset {
                    dst: sb(Dtype::F32, start, n, 0, 4),
                    value: 1.0,
                }],
            );
            check(&p).unwrap_or_else(|e| panic!("start {start} n {n}: {e}"));
        }
        for (start, n) in bad {
            let p = prog(
                Engine::Vector,
                vec![Op::Memset {
                    dst: sb(Dtype::F32, start, n, 0, 4),
                    value: 1.0,
                }],
            );
            let e = check(&p).unwrap_err();
            assert!(
                matches!(e.rule, Rule::PartitionStart | Rule::Partitions),
                "start {start} n {n}: {e}"
            );
        }
        let p = prog(
            Engine::Vector,
            vec![Op::Memset {
                dst: sb(Dtype::F32, 16, 32, 0, 4),
                value: 1.0,
            }],
        );
        expect(&p, 0, Rule::PartitionStart);
        // In HBM the start must be 0.
        let mut src = hbm(0, Dtype::F32, 4, 4);
        src.start_partition = 4;
        let p = prog(
            Engine::Dma(0),
            vec![Op::Dma {
                dst: sb(Dtype::F32, 0, 4, 0, 4),
                src,
            }],
        );
        expect(&p, 0, Rule::PartitionStart);
    }

    #[test]
    fn on_chip_partition_stride_is_one() {
        let mut dst = sb(Dtype::F32, 0, 4, 0, 4);
        dst.partition_stride = 2;
        let p = prog(Engine::Vector, vec![Op::Memset { dst, value: 1.0 }]);
        expect(&p, 0, Rule::PartitionStride);
    }

    #[test]
    fn at_most_four_free_dims_and_sizes() {
        let mut dst = sb(Dtype::F32, 0, 4, 0, 4);
        dst.dims = vec![Dim { size: 1, stride: 1 }; 5];
        expect(
            &prog(
                Engine::Vector,
                vec![Op::Memset {
                    dst: dst.clone(),
                    value: 0.0,
                }],
            ),
            0,
            Rule::FreeDims,
        );
        dst.dims = vec![Dim { size: 2, stride: 1 }, Dim { size: 0, stride: 1 }];
        expect(
            &prog(
                Engine::Vector,
                vec![Op::Memset {
                    dst: dst.clone(),
                    value: 0.0,
                }],
            ),
            0,
            Rule::DimSize,
        );
        dst.dims = vec![Dim {
            size: 65536,
            stride: 0,
        }];
        expect(
            &prog(
                Engine::Vector,
                vec![Op::Memset {
                    dst: dst.clone(),
                    value: 0.0,
                }],
            ),
            0,
            Rule::DimSize,
        );
        // A broadcast (stride 0) pattern of absurd element count is refused.
        dst.dims = vec![
            Dim {
                size: 65535,
                stride: 0
            };
            4
        ];
        expect(
            &prog(Engine::GpSimd, vec![Op::Memset { dst, value: 0.0 }]),
            0,
            Rule::ApSize,
        );
        // HBM sizes are unbounded per dim, but counts must not overflow: 128 x (2^32-1)^4.
        let mut src = hbm(0, Dtype::F32, 128, 1);
        src.dims = vec![
            Dim {
                size: u32::MAX,
                stride: 0
            };
            4
        ];
        let p = prog(
            Engine::Dma(0),
            vec![Op::Dma {
                dst: sb(Dtype::F32, 0, 128, 0, 4),
                src,
            }],
        );
        expect(&p, 0, Rule::ApSize);
    }

    #[test]
    fn bounds_on_chip_and_hbm_with_negative_and_absurd_strides() {
        // Last f32 of an SBUF partition is fine, one byte further is not.
        let last = 192 * 1024 - 4;
        check(&prog(
            Engine::Vector,
            vec![Op::Memset {
                dst: sb(Dtype::F32, 0, 1, last, 1),
                value: 0.0,
            }],
        ))
        .unwrap();
        let e = expect(
            &prog(
                Engine::Vector,
                vec![Op::Memset {
                    dst: sb(Dtype::F32, 0, 1, last + 1, 1),
                    value: 0.0,
                }],
            ),
            0,
            Rule::Bounds,
        );
        assert!(e.message.contains("touches bytes 196605..196609"), "{e}");
        // Negative stride reaching below byte 0.
        let mut dst = sb(Dtype::F32, 0, 1, 8, 4);
        dst.dims[0].stride = -1;
        expect(
            &prog(
                Engine::Vector,
                vec![Op::Memset {
                    dst: dst.clone(),
                    value: 0.0,
                }],
            ),
            0,
            Rule::Bounds,
        );
        dst.offset = 12;
        check(&prog(Engine::Vector, vec![Op::Memset { dst, value: 0.0 }])).unwrap();
        // PSUM is 16 KiB per partition.
        expect(
            &prog(
                Engine::Vector,
                vec![Op::Memset {
                    dst: ps(Dtype::F32, 0, 1, 16 * 1024, 1),
                    value: 0.0,
                }],
            ),
            0,
            Rule::Bounds,
        );
        // HBM: rows past the end, negative row stride, absurd strides and offsets.
        let dst = sb(Dtype::F32, 0, 128, 0, 512);
        let mut src = hbm(0, Dtype::F32, 128, 512);
        check(&prog(
            Engine::Dma(0),
            vec![Op::Dma {
                dst: dst.clone(),
                src: src.clone(),
            }],
        ))
        .unwrap();
        src.offset = 4;
        expect(
            &prog(
                Engine::Dma(0),
                vec![Op::Dma {
                    dst: dst.clone(),
                    src: src.clone(),
                }],
            ),
            0,
            Rule::Bounds,
        );
        src.offset = 0;
        src.partition_stride = -512;
        expect(
            &prog(
                Engine::Dma(0),
                vec![Op::Dma {
                    dst: dst.clone(),
                    src: src.clone(),
                }],
            ),
            0,
            Rule::Bounds,
        );
        src.offset = 127 * 512 * 4;
        check(&prog(
            Engine::Dma(0),
            vec![Op::Dma {
                dst: dst.clone(),
                src: src.clone(),
            }],
        ))
        .unwrap();
        for (stride, offset) in [(i64::MAX, 0), (i64::MIN, 0), (0, u64::MAX)] {
            src.partition_stride = stride;
            src.offset = offset;
            expect(
                &prog(
                    Engine::Dma(0),
                    vec![Op::Dma {
                        dst: dst.clone(),
                        src: src.clone(),
                    }],
                ),
                0,
                Rule::Bounds,
            );
        }
        let mut src = hbm(0, Dtype::F32, 128, 512);
        src.dims = vec![
            Dim {
                size: 4,
                stride: i64::MAX,
            },
            Dim {
                size: 128,
                stride: i64::MIN,
            },
        ];
        let e = check(&prog(Engine::Dma(0), vec![Op::Dma { dst, src }])).unwrap_err();
        assert_eq!(e.rule, Rule::Bounds, "{e}");
    }

    #[test]
    fn unknown_or_overflowing_tensor() {
        let dst = sb(Dtype::F32, 0, 1, 0, 4);
        expect(
            &prog(
                Engine::Dma(0),
                vec![Op::Dma {
                    dst: dst.clone(),
                    src: hbm(5, Dtype::F32, 1, 4),
                }],
            ),
            0,
            Rule::Tensor,
        );
        let mut p = prog(
            Engine::Dma(0),
            vec![Op::Dma {
                dst,
                src: hbm(0, Dtype::F32, 1, 4),
            }],
        );
        p.tensors[0].shape = vec![u64::MAX, 3];
        expect(&p, 0, Rule::Tensor);
    }

    #[test]
    fn operand_memories_per_engine() {
        // DMA never touches PSUM.
        let p = prog(
            Engine::Dma(0),
            vec![Op::Dma {
                dst: hbm(0, Dtype::F32, 128, 512),
                src: ps(Dtype::F32, 0, 128, 0, 512),
            }],
        );
        let e = expect(&p, 0, Rule::OperandMemory);
        assert!(e.message.contains("dma never accesses psum"), "{e}");
        let p = prog(
            Engine::Dma(0),
            vec![Op::Dma {
                dst: ps(Dtype::F32, 0, 1, 0, 4),
                src: sb(Dtype::F32, 0, 1, 0, 4),
            }],
        );
        expect(&p, 0, Rule::OperandMemory);
        // Compute engines never touch HBM.
        let p = prog(
            Engine::Vector,
            vec![copy(sb(Dtype::F32, 0, 1, 0, 4), hbm(0, Dtype::F32, 1, 4))],
        );
        expect(&p, 0, Rule::OperandMemory);
        // GpSimd never touches PSUM.
        let p = prog(
            Engine::GpSimd,
            vec![copy(sb(Dtype::F32, 0, 1, 0, 4), ps(Dtype::F32, 0, 1, 0, 4))],
        );
        let e = expect(&p, 0, Rule::OperandMemory);
        assert!(e.message.contains("gpsimd cannot access psum"), "{e}");
        // Matmul: inputs in SBUF, dst in PSUM.
        let p = prog(
            Engine::Tensor,
            vec![matmul(
                sb(Dtype::F32, 0, 128, 0, 512),
                sb(Dtype::Bf16, 0, 128, 0, 128),
                sb(Dtype::Bf16, 0, 128, 256, 512),
            )],
        );
        expect(&p, 0, Rule::OperandMemory);
        let p = prog(
            Engine::Tensor,
            vec![matmul(
                ps(Dtype::F32, 0, 128, 0, 512),
                ps(Dtype::Bf16, 0, 128, 0, 128),
                sb(Dtype::Bf16, 0, 128, 256, 512),
            )],
        );
        expect(&p, 0, Rule::OperandMemory);
        // Iota writes SBUF.
        let p = prog(
            Engine::GpSimd,
            vec![Op::Iota {
                dst: ps(Dtype::I32, 0, 1, 0, 4),
                offset: 0,
                channel_multiplier: 0,
                steps: vec![1],
            }],
        );
        expect(&p, 0, Rule::OperandMemory);
    }

    #[test]
    fn matmul_shapes_and_dtypes() {
        let (d, s, m) = (
            ps(Dtype::F32, 0, 128, 0, 512),
            sb(Dtype::Bf16, 0, 128, 0, 128),
            sb(Dtype::Bf16, 0, 128, 256, 512),
        );
        // K mismatch.
        expect(
            &prog(
                Engine::Tensor,
                vec![matmul(
                    d.clone(),
                    s.clone(),
                    sb(Dtype::Bf16, 0, 64, 256, 512),
                )],
            ),
            0,
            Rule::MatmulShape,
        );
        // N > 512 (dst of 513 f32 crosses a bank too, but the shape is checked first).
        expect(
            &prog(
                Engine::Tensor,
                vec![matmul(
                    ps(Dtype::F32, 0, 128, 0, 513),
                    s.clone(),
                    sb(Dtype::Bf16, 0, 128, 256, 513),
                )],
            ),
            0,
            Rule::MatmulShape,
        );
        // M > 128 needs more than 128 dst partitions; use a 129-wide stationary.
        expect(
            &prog(
                Engine::Tensor,
                vec![matmul(
                    d.clone(),
                    sb(Dtype::Bf16, 0, 128, 0, 129),
                    m.clone(),
                )],
            ),
            0,
            Rule::MatmulShape,
        );
        // dst partitions must be M.
        expect(
            &prog(
                Engine::Tensor,
                vec![matmul(ps(Dtype::F32, 0, 64, 0, 512), s.clone(), m.clone())],
            ),
            0,
            Rule::MatmulShape,
        );
        // fp32 on one side only.
        expect(
            &prog(
                Engine::Tensor,
                vec![matmul(d.clone(), sb(Dtype::F32, 0, 128, 0, 128), m.clone())],
            ),
            0,
            Rule::Dtype,
        );
        // int8 inputs need an i32 dst; float inputs an f32 dst.
        let (si, mi) = (
            sb(Dtype::I8, 0, 128, 0, 128),
            sb(Dtype::I8, 0, 128, 256, 512),
        );
        expect(
            &prog(
                Engine::Tensor,
                vec![matmul(d.clone(), si.clone(), mi.clone())],
            ),
            0,
            Rule::Dtype,
        );
        check(&prog(
            Engine::Tensor,
            vec![matmul(
                ps(Dtype::I32, 0, 128, 0, 512),
                si.clone(),
                mi.clone(),
            )],
        ))
        .unwrap();
        expect(
            &prog(
                Engine::Tensor,
                vec![matmul(ps(Dtype::I32, 0, 128, 0, 512), s.clone(), m.clone())],
            ),
            0,
            Rule::Dtype,
        );
        // Mixed int8 / float inputs, and i32 inputs.
        expect(
            &prog(Engine::Tensor, vec![matmul(d.clone(), si, m.clone())]),
            0,
            Rule::Dtype,
        );
        expect(
            &prog(
                Engine::Tensor,
                vec![matmul(
                    ps(Dtype::I32, 0, 128, 0, 512),
                    sb(Dtype::I32, 0, 128, 0, 128),
                    sb(Dtype::I32, 0, 128, 1024, 512),
                )],
            ),
            0,
            Rule::Dtype,
        );
    }

    #[test]
    fn matmul_dst_stays_in_one_psum_bank() {
        let (s, m) = (
            sb(Dtype::Bf16, 0, 128, 0, 128),
            sb(Dtype::Bf16, 0, 128, 256, 256),
        );
        check(&prog(
            Engine::Tensor,
            vec![matmul(
                ps(Dtype::F32, 0, 128, 1024, 256),
                s.clone(),
                m.clone(),
            )],
        ))
        .unwrap();
        let e = expect(
            &prog(
                Engine::Tensor,
                vec![matmul(ps(Dtype::F32, 0, 128, 1028, 256), s, m)],
            ),
            0,
            Rule::PsumBank,
        );
        assert!(
            e.message
                .contains("bytes 1028..=2051 cross a 2048-byte psum bank"),
            "{e}"
        );
    }

    #[test]
    fn transpose_rules() {
        let src = sb(Dtype::Bf16, 0, 64, 0, 32);
        check(&prog(
            Engine::Tensor,
            vec![Op::Transpose {
                dst: ps(Dtype::Bf16, 0, 32, 0, 64),
                src: src.clone(),
            }],
        ))
        .unwrap();
        check(&prog(
            Engine::Tensor,
            vec![Op::Transpose {
                dst: ps(Dtype::F32, 0, 32, 0, 64),
                src: src.clone(),
            }],
        ))
        .unwrap();
        expect(
            &prog(
                Engine::Tensor,
                vec![Op::Transpose {
                    dst: ps(Dtype::Bf16, 0, 64, 0, 32),
                    src: src.clone(),
                }],
            ),
            0,
            Rule::TransposeShape,
        );
        expect(
            &prog(
                Engine::Tensor,
                vec![Op::Transpose {
                    dst: ps(Dtype::Bf16, 0, 128, 0, 64),
                    src: sb(Dtype::Bf16, 0, 64, 0, 129),
                }],
            ),
            0,
            Rule::TransposeShape,
        );
        expect(
            &prog(
                Engine::Tensor,
                vec![Op::Transpose {
                    dst: ps(Dtype::F16, 0, 32, 0, 64),
                    src: src.clone(),
                }],
            ),
            0,
            Rule::Dtype,
        );
        expect(
            &prog(
                Engine::Tensor,
                vec![Op::Transpose {
                    dst: sb(Dtype::Bf16, 0, 32, 0, 64),
                    src,
                }],
            ),
            0,
            Rule::OperandMemory,
        );
    }

    #[test]
    fn vector_and_scalar_free_size_limits() {
        let big = |mem: Memory, n: u32| {
            let mut ap = Ap::on_chip(mem, Dtype::Bf16, 0, 1, 0, 1);
            ap.dims = vec![Dim { size: 2, stride: 0 }, Dim { size: n, stride: 0 }];
            ap
        };
        check(&prog(
            Engine::Vector,
            vec![copy(big(Memory::Sbuf, 32768), big(Memory::Sbuf, 32768))],
        ))
        .unwrap();
        expect(
            &prog(
                Engine::Vector,
                vec![copy(big(Memory::Sbuf, 32769), big(Memory::Sbuf, 32769))],
            ),
            0,
            Rule::FreeSize,
        );
        check(&prog(
            Engine::Vector,
            vec![copy(big(Memory::Sbuf, 2048), big(Memory::Psum, 2048))],
        ))
        .unwrap();
        expect(
            &prog(
                Engine::Vector,
                vec![copy(big(Memory::Sbuf, 2049), big(Memory::Psum, 2049))],
            ),
            0,
            Rule::FreeSize,
        );
        let act = Op::Activation {
            dst: big(Memory::Psum, 2049),
            src: big(Memory::Sbuf, 2049),
            func: ActFunc::Exp,
            scale: Operand::Imm(1.0),
            bias: None,
            accum: None,
        };
        expect(&prog(Engine::Scalar, vec![act]), 0, Rule::FreeSize);
    }

    #[test]
    fn tensor_tensor_inputs_not_both_in_psum() {
        let op = Op::TensorTensor {
            dst: sb(Dtype::F32, 0, 4, 0, 8),
            a: ps(Dtype::F32, 0, 4, 0, 8),
            b: ps(Dtype::F32, 0, 4, 64, 8),
            op: AluOp::Add,
        };
        expect(&prog(Engine::Vector, vec![op]), 0, Rule::PsumInputs);
        let op = Op::TensorTensor {
            dst: sb(Dtype::F32, 0, 4, 0, 8),
            a: ps(Dtype::F32, 0, 4, 0, 8),
            b: sb(Dtype::F32, 0, 4, 64, 8),
            op: AluOp::Add,
        };
        check(&prog(Engine::Vector, vec![op])).unwrap();
    }

    #[test]
    fn element_counts_must_agree() {
        expect(
            &prog(
                Engine::Vector,
                vec![copy(
                    sb(Dtype::F32, 0, 4, 0, 8),
                    sb(Dtype::F32, 0, 4, 64, 7),
                )],
            ),
            0,
            Rule::ElementCount,
        );
        expect(
            &prog(
                Engine::Vector,
                vec![copy(
                    sb(Dtype::F32, 0, 4, 0, 8),
                    sb(Dtype::F32, 0, 2, 64, 16),
                )],
            ),
            0,
            Rule::ElementCount,
        );
        let p = prog(
            Engine::Dma(0),
            vec![Op::Dma {
                dst: sb(Dtype::Bf16, 0, 128, 0, 256),
                src: hbm(0, Dtype::F32, 128, 512),
            }],
        );
        expect(&p, 0, Rule::ElementCount);
        let sel = Op::Select {
            dst: sb(Dtype::F32, 0, 4, 0, 8),
            pred: sb(Dtype::U8, 0, 4, 64, 8),
            on_true: sb(Dtype::F32, 0, 4, 128, 8),
            on_false: sb(Dtype::F32, 0, 4, 256, 4),
        };
        expect(&prog(Engine::Vector, vec![sel]), 0, Rule::ElementCount);
        let tt = Op::TensorTensor {
            dst: sb(Dtype::F32, 0, 4, 0, 8),
            a: sb(Dtype::F32, 0, 4, 64, 8),
            b: sb(Dtype::F32, 0, 4, 128, 9),
            op: AluOp::Mul,
        };
        expect(&prog(Engine::Vector, vec![tt]), 0, Rule::ElementCount);
    }

    #[test]
    fn per_partition_operands_are_p_by_1() {
        let ts = |operand1: Operand| Op::TensorScalar {
            dst: sb(Dtype::F32, 0, 4, 0, 8),
            src: sb(Dtype::F32, 0, 4, 64, 8),
            op0: AluOp::Mul,
            operand0: Operand::Imm(2.0),
            reverse0: false,
            op1: AluOp::Add,
            operand1,
            reverse1: false,
        };
        check(&prog(
            Engine::Vector,
            vec![ts(Operand::PerPartition(sb(Dtype::F32, 0, 4, 128, 1)))],
        ))
        .unwrap();
        expect(
            &prog(
                Engine::Vector,
                vec![ts(Operand::PerPartition(sb(Dtype::F32, 0, 4, 128, 2)))],
            ),
            0,
            Rule::PerPartition,
        );
        expect(
            &prog(
                Engine::Vector,
                vec![ts(Operand::PerPartition(sb(Dtype::F32, 0, 8, 128, 1)))],
            ),
            0,
            Rule::PerPartition,
        );
        let act = |accum: Ap| Op::Activation {
            dst: sb(Dtype::Bf16, 0, 4, 0, 8),
            src: sb(Dtype::F32, 0, 4, 64, 8),
            func: ActFunc::Exp,
            scale: Operand::PerPartition(sb(Dtype::F32, 0, 4, 128, 1)),
            bias: Some(Operand::PerPartition(sb(Dtype::F32, 0, 4, 132, 1))),
            accum: Some(accum),
        };
        check(&prog(
            Engine::Scalar,
            vec![act(sb(Dtype::F32, 0, 4, 136, 1))],
        ))
        .unwrap();
        expect(
            &prog(Engine::Scalar, vec![act(sb(Dtype::F32, 0, 2, 136, 1))]),
            0,
            Rule::PerPartition,
        );
        expect(
            &prog(Engine::Scalar, vec![act(sb(Dtype::Bf16, 0, 4, 136, 1))]),
            0,
            Rule::Dtype,
        );
        // Gather indices: [P, 1] i32 in SBUF.
        let g = |indices: Ap| Op::DmaGather {
            dst: sb(Dtype::F32, 0, 4, 0, 512),
            table: hbm(0, Dtype::F32, 128, 512),
            indices,
        };
        check(&prog(
            Engine::Dma(1),
            vec![g(sb(Dtype::I32, 0, 4, 4096, 1))],
        ))
        .unwrap();
        expect(
            &prog(Engine::Dma(1), vec![g(sb(Dtype::I32, 0, 3, 4096, 1))]),
            0,
            Rule::PerPartition,
        );
        expect(
            &prog(Engine::Dma(1), vec![g(sb(Dtype::F32, 0, 4, 4096, 1))]),
            0,
            Rule::Dtype,
        );
    }

    /// A gather table's `partitions` is its row count: a 30522-row embedding is legal,
    /// and only its bounds are checked.
    #[test]
    fn gather_table_may_have_many_rows() {
        let mut p = prog(
            Engine::Dma(0),
            vec![Op::DmaGather {
                dst: sb(Dtype::F32, 0, 128, 0, 64),
                table: hbm(2, Dtype::F32, 30522, 64),
                indices: sb(Dtype::I32, 0, 128, 4096, 1),
            }],
        );
        p.tensors.push(HbmTensor {
            name: "emb".into(),
            kind: TensorKind::Weight,
            shape: vec![30522, 64],
            dtype: Dtype::F32,
        });
        check(&p).unwrap();
        p.tensors[2].shape = vec![30521, 64];
        expect(&p, 0, Rule::Bounds);
        // A plain DMA still has at most 128 rows.
        let p = prog(
            Engine::Dma(0),
            vec![Op::Dma {
                dst: hbm(0, Dtype::F32, 129, 4),
                src: hbm(0, Dtype::F32, 129, 4),
            }],
        );
        expect(&p, 0, Rule::Partitions);
    }

    #[test]
    fn i64_only_in_hbm_and_read_only() {
        let ids = hbm(1, Dtype::I64, 128, 1);
        check(&prog(
            Engine::Dma(0),
            vec![Op::Dma {
                dst: sb(Dtype::I32, 0, 128, 0, 1),
                src: ids.clone(),
            }],
        ))
        .unwrap();
        expect(
            &prog(
                Engine::Dma(0),
                vec![Op::Dma {
                    dst: sb(Dtype::I64, 0, 128, 0, 1),
                    src: ids.clone(),
                }],
            ),
            0,
            Rule::Dtype,
        );
        expect(
            &prog(
                Engine::Dma(0),
                vec![Op::Dma {
                    dst: ids,
                    src: sb(Dtype::I32, 0, 128, 0, 1),
                }],
            ),
            0,
            Rule::Dtype,
        );
    }

    #[test]
    fn reduce_op_and_axes() {
        let mut src = sb(Dtype::F32, 0, 4, 0, 8);
        src.dims = vec![Dim { size: 2, stride: 4 }, Dim { size: 4, stride: 1 }];
        let red = |op, axes, dst: Ap| Op::TensorReduce {
            dst,
            src: src.clone(),
            op,
            axes,
            negate: false,
        };
        check(&prog(
            Engine::Vector,
            vec![red(AluOp::Max, 1, sb(Dtype::F32, 0, 4, 64, 2))],
        ))
        .unwrap();
        check(&prog(
            Engine::Vector,
            vec![red(AluOp::Add, 2, sb(Dtype::F32, 0, 4, 64, 1))],
        ))
        .unwrap();
        expect(
            &prog(
                Engine::Vector,
                vec![red(AluOp::Sub, 1, sb(Dtype::F32, 0, 4, 64, 2))],
            ),
            0,
            Rule::ReduceOp,
        );
        expect(
            &prog(
                Engine::Vector,
                vec![red(AluOp::Add, 0, sb(Dtype::F32, 0, 4, 64, 8))],
            ),
            0,
            Rule::ReduceOp,
        );
        expect(
            &prog(
                Engine::Vector,
                vec![red(AluOp::Add, 3, sb(Dtype::F32, 0, 4, 64, 1))],
            ),
            0,
            Rule::ReduceOp,
        );
        expect(
            &prog(
                Engine::Vector,
                vec![red(AluOp::Add, 1, sb(Dtype::F32, 0, 4, 64, 1))],
            ),
            0,
            Rule::ElementCount,
        );
    }

    #[test]
    fn bn_stats_and_bn_aggr_shapes() {
        let st = |src: Ap, dst: Ap| Op::BnStats { dst, src };
        check(&prog(
            Engine::Vector,
            vec![st(
                sb(Dtype::Bf16, 0, 128, 0, 512),
                sb(Dtype::F32, 0, 128, 2048, 6),
            )],
        ))
        .unwrap();
        expect(
            &prog(
                Engine::Vector,
                vec![st(
                    sb(Dtype::Bf16, 0, 128, 0, 513),
                    sb(Dtype::F32, 0, 128, 2048, 6),
                )],
            ),
            0,
            Rule::BnStats,
        );
        expect(
            &prog(
                Engine::Vector,
                vec![st(
                    sb(Dtype::Bf16, 0, 128, 0, 512),
                    sb(Dtype::F32, 0, 128, 2048, 5),
                )],
            ),
            0,
            Rule::BnStats,
        );
        expect(
            &prog(
                Engine::Vector,
                vec![st(
                    sb(Dtype::Bf16, 0, 128, 0, 512),
                    sb(Dtype::Bf16, 0, 128, 2048, 6),
                )],
            ),
            0,
            Rule::Dtype,
        );
        let ag = |src: Ap, dst: Ap| Op::BnAggr { dst, src };
        check(&prog(
            Engine::Vector,
            vec![ag(
                sb(Dtype::F32, 0, 128, 0, 12),
                sb(Dtype::F32, 0, 128, 64, 2),
            )],
        ))
        .unwrap();
        expect(
            &prog(
                Engine::Vector,
                vec![ag(
                    sb(Dtype::F32, 0, 128, 0, 10),
                    sb(Dtype::F32, 0, 128, 64, 2),
                )],
            ),
            0,
            Rule::BnAggr,
        );
        expect(
            &prog(
                Engine::Vector,
                vec![ag(
                    sb(Dtype::F32, 0, 128, 0, 12),
                    sb(Dtype::F32, 0, 128, 64, 3),
                )],
            ),
            0,
            Rule::BnAggr,
        );
    }

    #[test]
    fn iota_needs_one_step_per_dim() {
        let op = |steps: Vec<i32>| Op::Iota {
            dst: sb(Dtype::I32, 0, 128, 0, 8),
            offset: 0,
            channel_multiplier: 8,
            steps,
        };
        check(&prog(Engine::GpSimd, vec![op(vec![1])])).unwrap();
        expect(
            &prog(Engine::GpSimd, vec![op(vec![1, 2])]),
            0,
            Rule::IotaSteps,
        );
    }
}
