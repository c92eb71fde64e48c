//! What a run produces besides the final memories: plain data for the profiler.
//!
//! Times are integer picoseconds so that the same program gives the same numbers on every
//! run and platform; helpers convert to nanoseconds for display.

use neuron_isa::{ChipConfig, Dtype, Engine};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// One executed instruction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstrRecord {
    /// Index of the stream in [`neuron_isa::Program::streams`].
    pub stream: u16,
    /// Index of the instruction in its stream.
    pub index: u32,
    /// When it started (its engine was free and its semaphores satisfied), ps.
    pub start_ps: u64,
    /// When it completed, ps.
    pub end_ps: u64,
    /// Kernel index ([`neuron_isa::NO_KERNEL`] if none).
    pub kernel: u32,
    /// HBM bytes read by this instruction.
    pub hbm_read_bytes: u64,
    /// HBM bytes written by this instruction.
    pub hbm_write_bytes: u64,
    /// FLOPs performed (2 per multiply-add for matmul; 0 for data movement). The simulator
    /// counts TensorE matmul FLOPs only (`2 * K * M * N`); every other instruction records 0.
    pub flops: u64,
    /// DMA only: DMA-engine time this transfer occupies, ps summed over engines, at the
    /// engines' full rate (its bytes, times the descriptor-size and transpose penalties,
    /// over one engine's bandwidth). Divided by `dma_engines x` a span it gives DMA-engine
    /// utilization, which can bind below full HBM utilization.
    #[serde(default)]
    pub dma_engine_ps: u64,
}

impl InstrRecord {
    /// Duration in ps.
    pub fn duration_ps(&self) -> u64 {
        self.end_ps - self.start_ps
    }
}

/// Totals for one stream (engine or DMA queue).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EngineStats {
    /// The engine.
    pub engine: Engine,
    /// Instructions executed.
    pub instructions: u64,
    /// Time the engine spent executing instructions (union of their intervals), ps.
    pub busy_ps: u64,
    /// Busy time in cycles of the engine's own clock.
    pub busy_cycles: u64,
    /// Time spent with an instruction ready but waiting on semaphores, ps.
    pub wait_ps: u64,
}

/// Bytes moved per memory level.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ByteCounters {
    /// Bytes read from HBM.
    pub hbm_read: u64,
    /// Bytes written to HBM.
    pub hbm_write: u64,
    /// Bytes read from SBUF.
    pub sbuf_read: u64,
    /// Bytes written to SBUF.
    pub sbuf_write: u64,
    /// Bytes read from PSUM.
    pub psum_read: u64,
    /// Bytes written to PSUM.
    pub psum_write: u64,
}

/// Kinds of warnings a run can raise.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum WarningKind {
    /// An instruction read memory nobody had written (it holds the NaN poison pattern).
    PoisonedRead,
    /// Two engines touched overlapping SBUF/PSUM bytes with no semaphore ordering them.
    Race,
    /// Anything else worth a user's attention.
    Other,
}

/// A warning, with a message naming the instruction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Warning {
    /// Kind.
    pub kind: WarningKind,
    /// Message naming stream, instruction index and engine.
    pub message: String,
}

/// Everything measured in one run.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct RunStats {
    /// Simulated time from the first start to the last completion, ps.
    pub total_ps: u64,
    /// One entry per stream, in the program's stream order.
    pub engines: Vec<EngineStats>,
    /// One record per executed instruction, sorted by (start, stream, index).
    pub records: Vec<InstrRecord>,
    /// Bytes moved per memory level.
    pub bytes: ByteCounters,
    /// Matmul FLOPs by input dtype.
    pub flops: BTreeMap<Dtype, u64>,
    /// Warnings raised (poisoned reads, races).
    pub warnings: Vec<Warning>,
    /// Sum of [`InstrRecord::dma_engine_ps`] over the run.
    #[serde(default)]
    pub dma_engine_ps: u64,
}

impl RunStats {
    /// Total simulated time in ns.
    pub fn total_ns(&self) -> f64 {
        self.total_ps as f64 / 1000.0
    }

    /// Sum of matmul FLOPs over all dtypes.
    pub fn total_flops(&self) -> u64 {
        self.flops.values().sum()
    }

    /// Fraction of `cfg`'s HBM bandwidth the run used: HBM bytes over
    /// `hbm_bandwidth x total time` (0 for an empty run).
    pub fn hbm_utilization(&self, cfg: &ChipConfig) -> f64 {
        hbm_utilization(
            self.bytes.hbm_read + self.bytes.hbm_write,
            self.total_ps,
            cfg,
        )
    }

    /// Fraction of `cfg`'s DMA-engine time the run used: [`RunStats::dma_engine_ps`] over
    /// `dma_engines x total time` (0 for an empty run).
    pub fn dma_engine_utilization(&self, cfg: &ChipConfig) -> f64 {
        dma_engine_utilization(self.dma_engine_ps, self.total_ps, cfg)
    }
}

/// HBM utilization of `hbm_bytes` moved in `span_ps` on `cfg`.
pub fn hbm_utilization(hbm_bytes: u64, span_ps: u64, cfg: &ChipConfig) -> f64 {
    if span_ps == 0 {
        return 0.0;
    }
    hbm_bytes as f64 / (cfg.hbm_bandwidth_bytes_per_ns * span_ps as f64 / 1000.0)
}

/// DMA-engine utilization of `engine_ps` (summed over engines) in `span_ps` on `cfg`.
pub fn dma_engine_utilization(engine_ps: u64, span_ps: u64, cfg: &ChipConfig) -> f64 {
    if span_ps == 0 {
        return 0.0;
    }
    engine_ps as f64 / (f64::from(cfg.dma_engines.max(1)) * span_ps as f64)
}
