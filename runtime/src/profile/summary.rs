//! `summary.json`: the run's headline figures, computed from the records.
//!
//! Definitions (the same as the Neuron profiler's where it has one):
//! - `latency_ns`: simulated time from the first instruction's start to the last one's
//!   end. `cycles` counts it in the NeuronCore base clock, which the Neuron profiler
//!   takes to be 1.4 GHz on trn1 and 1.2 GHz on trn2, the ScalarE clock of each target.
//! - `flops`: the model's FLOPs from the artifact (2 per multiply-add); `hardware_flops`
//!   is what TensorE executed (padding included).
//! - `mfu_percent = flops / (peak_flops_per_s x latency)`, where the peak is TensorE's
//!   for the dtype that carried most of the run's matmul FLOPs (`peak_dtype`; bf16 when
//!   no matmul ran): fp32 matmuls are measured against the quarter-rate fp32 peak, fp8
//!   and int8 against theirs.
//! - `mbu_percent = (hbm_read_bytes + hbm_write_bytes) / latency / hbm_bandwidth`.
//! - `dma_engine_utilization_percent = dma_engine_ps / (dma_engines x latency)`: the DMA
//!   engines' time at full rate that the transfers took (descriptor-size and transpose
//!   penalties included), separate from HBM: on trn1 the engines (272 B/ns) bind before
//!   HBM (410 B/ns), so a program can be DMA-bound at 66% MBU.
//! - `engine_active_percent`: busy time over latency per engine; for `dma`, the time at
//!   least one DMA queue was busy.
//! - Per kernel: `time_ns` is the union of its instructions' intervals over all engines
//!   (the wall time during which the kernel had work running); `flops` and `bytes` (HBM
//!   read + written) are summed from its instructions' records; `bound` compares the
//!   arithmetic intensity `flops / bytes` with the ridge point `peak / hbm_bandwidth`:
//!   below it the kernel is `memory-bound`, at or above it `compute-bound`.
//!   `hbm_percent` and `dma_engine_percent` are its HBM and DMA-engine utilization over
//!   its `time_ns`, `engine_percent` each compute engine's busy time over it, and
//!   `limited_by` names the most utilized of `hbm`, `dma-engines`, `tensor`, `vector`,
//!   `scalar` and `gpsimd`: the resource that bound the kernel.
//! - `spill_*_bytes`: HBM bytes DMA'd out of (save) and back into (reload) SBUF by
//!   kernels of kind `spill`, to scratch tensors; 0 when the compiler emitted none.

use crate::error::RuntimeError;
use crate::model::Model;
use crate::profile::insights::{Insight, Limiter, kernel_uses};
use crate::profile::{Span, spans, union_length};
use neuron_isa::{ChipConfig, Dtype, Engine, Memory, Op, TensorKind};
use neuron_sim::{RunStats, WarningKind};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// At most this many warning messages are kept (the counts are always exact).
pub const MAX_WARNING_MESSAGES: usize = 100;

/// Whether a kernel is limited by TensorE throughput or by HBM bandwidth.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Bound {
    /// Arithmetic intensity at or above the ridge point.
    #[serde(rename = "compute-bound")]
    Compute,
    /// Arithmetic intensity below the ridge point.
    #[serde(rename = "memory-bound")]
    Memory,
}

impl std::fmt::Display for Bound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Bound::Compute => "compute-bound",
            Bound::Memory => "memory-bound",
        })
    }
}

/// Percent of the latency each engine was busy.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct EngineActive {
    /// TensorE.
    pub tensor: f64,
    /// VectorE.
    pub vector: f64,
    /// ScalarE.
    pub scalar: f64,
    /// GpSimd.
    pub gpsimd: f64,
    /// Any DMA queue.
    pub dma: f64,
}

/// One stream's totals.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StreamSummary {
    /// Engine name (`tensor`, `dma0`, ...).
    pub engine: String,
    /// Instructions executed.
    pub instructions: u64,
    /// Busy time (union of its instruction intervals), ps.
    pub busy_ps: u64,
    /// Busy time in whole ns, rounded to nearest (the sum of its `flame.folded` weights).
    pub busy_ns: u64,
    /// Busy time over latency.
    pub active_percent: f64,
    /// Time with an instruction ready but waiting on semaphores, ns.
    pub wait_ns: f64,
}

/// One kernel's roofline figures.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KernelSummary {
    /// Kernel name ([`super::NO_KERNEL_NAME`] for instructions outside any kernel).
    pub name: String,
    /// Kernel kind (`matmul`, `layer_norm`, ...).
    pub kind: String,
    /// Union of its instructions' intervals, ns.
    pub time_ns: f64,
    /// FLOPs executed by its instructions.
    pub flops: u64,
    /// HBM bytes read plus written by its instructions.
    pub bytes: u64,
    /// `flops / bytes` (FLOP per byte; `null` when it moved no HBM bytes).
    pub arithmetic_intensity: Option<f64>,
    /// Roofline verdict.
    pub bound: Bound,
    /// HBM bytes over `hbm_bandwidth x time`, percent.
    #[serde(default)]
    pub hbm_percent: f64,
    /// DMA-engine time (at full rate, penalties included) over `dma_engines x time`,
    /// percent.
    #[serde(default)]
    pub dma_engine_percent: f64,
    /// Busy time of each compute engine over `time`, percent.
    #[serde(default)]
    pub engine_percent: EngineActive,
    /// The most utilized resource: `hbm`, `dma-engines`, `tensor`, `vector`, `scalar` or
    /// `gpsimd`.
    #[serde(default)]
    pub limited_by: String,
    /// What limited it in this run: `hbm`, `dma`, `tensor`, `vector`, `scalar`,
    /// `gpsimd` or `latency` (see [`super::insights::KernelUse::limiter`]).
    #[serde(default = "latency_limiter")]
    pub limiter: Limiter,
    /// The compiler's predicted time of the kernel (its tiling cost model's estimate,
    /// `ArtifactMeta::kernel_estimates_ns`), ns; `null` where it made none.
    #[serde(default)]
    pub predicted_ns: Option<f64>,
}

fn latency_limiter() -> Limiter {
    Limiter::Latency
}

/// Warnings the run raised.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct WarningSummary {
    /// Reads of memory nobody had written.
    pub poisoned_reads: u64,
    /// Unsynchronized accesses found (only looked for with race checking on).
    pub races: u64,
    /// Other warnings.
    pub other: u64,
    /// The first [`MAX_WARNING_MESSAGES`] messages.
    pub messages: Vec<String>,
}

/// The contents of `summary.json` (see the module documentation for definitions).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    /// The tool that wrote it (`neuron-sim`).
    #[serde(default)]
    pub tool: String,
    /// Its version.
    #[serde(default)]
    pub tool_version: String,
    /// Version of this file's layout ([`super::SCHEMA_VERSION`]).
    #[serde(default)]
    pub schema_version: u32,
    /// Model name.
    pub model: String,
    /// Target chip.
    pub target: String,
    /// Batch size of the model.
    pub batch_size: u64,
    /// Simulated latency, ns.
    pub latency_ns: f64,
    /// Latency in cycles of the NeuronCore base clock.
    pub cycles: u64,
    /// The base clock, GHz.
    pub base_clock_ghz: f64,
    /// Inferences per second at `batch_size`.
    pub throughput_per_s: f64,
    /// Model FLOPs of one execution.
    pub flops: u64,
    /// FLOPs TensorE executed.
    pub hardware_flops: u64,
    /// Matmul input dtype the peak is taken for.
    pub peak_dtype: String,
    /// TensorE peak for `peak_dtype`, FLOP/s.
    pub peak_flops_per_s: f64,
    /// Model FLOPs utilization, percent.
    pub mfu_percent: f64,
    /// HBM bytes read.
    pub hbm_read_bytes: u64,
    /// HBM bytes written.
    pub hbm_write_bytes: u64,
    /// HBM bandwidth of the target, bytes per ns.
    pub hbm_bandwidth_bytes_per_ns: f64,
    /// Memory bandwidth utilization, percent.
    pub mbu_percent: f64,
    /// DMA-engine time at full rate over `dma_engines x latency`, percent.
    #[serde(default)]
    pub dma_engine_utilization_percent: f64,
    /// `peak_flops_per_s / hbm bandwidth`, FLOP per byte.
    pub ridge_point_flops_per_byte: f64,
    /// Busy percent per engine kind.
    pub engine_active_percent: EngineActive,
    /// Per-stream totals, in program stream order.
    pub engines: Vec<StreamSummary>,
    /// Instructions executed.
    pub instructions: u64,
    /// Kernels, longest first.
    pub kernels: Vec<KernelSummary>,
    /// Spill save plus reload bytes.
    pub spill_bytes: u64,
    /// Bytes written to HBM by spill kernels.
    pub spill_save_bytes: u64,
    /// Bytes read from HBM by spill kernels.
    pub spill_reload_bytes: u64,
    /// Warnings.
    pub warnings: WarningSummary,
    /// What to fix, largest estimated saving first (see [`super::insights`]).
    #[serde(default)]
    pub insights: Vec<Insight>,
}

fn percent(part: f64, whole: f64) -> f64 {
    if whole > 0.0 {
        100.0 * part / whole
    } else {
        0.0
    }
}

/// The matmul dtype with the most FLOPs in the run (bf16 if none).
fn dominant_dtype(stats: &RunStats) -> Dtype {
    stats
        .flops
        .iter()
        .filter(|&(_, &f)| f > 0)
        .max_by_key(|&(d, &f)| (f, std::cmp::Reverse(*d)))
        .map_or(Dtype::Bf16, |(d, _)| *d)
}

impl Summary {
    /// Computes the summary of one run of `model`.
    pub fn new(model: &Model, stats: &RunStats) -> Result<Summary, RuntimeError> {
        let meta = &model.artifact().meta;
        let cfg = model.target();
        let program = &meta.program;
        let all = spans(program, stats)?;
        let latency_ps = stats.total_ps;
        let latency_ns = latency_ps as f64 / 1000.0;
        let latency_s = latency_ns * 1e-9;
        let peak_dtype = dominant_dtype(stats);
        let peak = cfg.peak_flops(peak_dtype);
        let hbm_bw = cfg.hbm_bandwidth_bytes_per_ns;
        let ridge = peak / (hbm_bw * 1e9);
        let hbm_bytes = stats.bytes.hbm_read + stats.bytes.hbm_write;

        let busy_of = |e: Engine| -> u64 {
            stats
                .engines
                .iter()
                .filter(|s| s.engine == e)
                .map(|s| s.busy_ps)
                .sum()
        };
        let dma_busy = union_length(
            all.iter()
                .filter(|s| s.engine.is_dma())
                .map(|s| (s.record.start_ps, s.record.end_ps))
                .collect(),
        );
        let lat = latency_ps as f64;
        let engine_active_percent = EngineActive {
            tensor: percent(busy_of(Engine::Tensor) as f64, lat),
            vector: percent(busy_of(Engine::Vector) as f64, lat),
            scalar: percent(busy_of(Engine::Scalar) as f64, lat),
            gpsimd: percent(busy_of(Engine::GpSimd) as f64, lat),
            dma: percent(dma_busy as f64, lat),
        };
        let engines = stats
            .engines
            .iter()
            .map(|s| StreamSummary {
                engine: s.engine.name(),
                instructions: s.instructions,
                busy_ps: s.busy_ps,
                busy_ns: super::ps_to_ns(s.busy_ps),
                active_percent: percent(s.busy_ps as f64, lat),
                wait_ns: s.wait_ps as f64 / 1000.0,
            })
            .collect();

        let uses = kernel_uses(&all, cfg);
        let mut kernels = kernel_summaries(&all, ridge, cfg);
        let index: BTreeMap<&str, usize> = program
            .kernels
            .iter()
            .enumerate()
            .map(|(i, k)| (k.name.as_str(), i))
            .collect();
        for k in &mut kernels {
            if let Some(u) = uses.get(k.name.as_str()) {
                k.limiter = u.limiter();
            }
            k.predicted_ns = index
                .get(k.name.as_str())
                .and_then(|&i| meta.kernel_estimates_ns.get(i).copied().flatten());
        }
        let (spill_save_bytes, spill_reload_bytes) = spill_bytes(model, &all);
        let mut warnings = WarningSummary::default();
        for w in &stats.warnings {
            match w.kind {
                WarningKind::PoisonedRead => warnings.poisoned_reads += 1,
                WarningKind::Race => warnings.races += 1,
                WarningKind::Other => warnings.other += 1,
            }
            if warnings.messages.len() < MAX_WARNING_MESSAGES {
                warnings.messages.push(w.message.clone());
            }
        }
        let base_clock_ghz = cfg.scalar_clock_ghz;
        let mut summary = Summary {
            tool: super::TOOL.to_string(),
            tool_version: super::TOOL_VERSION.to_string(),
            schema_version: super::SCHEMA_VERSION,
            model: model.name().to_string(),
            target: cfg.name.clone(),
            batch_size: meta.batch_size,
            latency_ns,
            cycles: (latency_ns * base_clock_ghz).round() as u64,
            base_clock_ghz,
            throughput_per_s: if latency_s > 0.0 {
                meta.batch_size as f64 / latency_s
            } else {
                0.0
            },
            flops: meta.model_flops,
            hardware_flops: stats.total_flops(),
            peak_dtype: peak_dtype.name().to_string(),
            peak_flops_per_s: peak,
            mfu_percent: percent(meta.model_flops as f64, peak * latency_s),
            hbm_read_bytes: stats.bytes.hbm_read,
            hbm_write_bytes: stats.bytes.hbm_write,
            hbm_bandwidth_bytes_per_ns: hbm_bw,
            mbu_percent: percent(hbm_bytes as f64, hbm_bw * latency_ns),
            dma_engine_utilization_percent: 100.0 * stats.dma_engine_utilization(cfg),
            ridge_point_flops_per_byte: ridge,
            engine_active_percent,
            engines,
            instructions: stats.records.len() as u64,
            kernels,
            spill_bytes: spill_save_bytes + spill_reload_bytes,
            spill_save_bytes,
            spill_reload_bytes,
            warnings,
            insights: Vec::new(),
        };
        summary.insights = super::insights::find(model, &all, &summary);
        Ok(summary)
    }
}

/// Per-kernel figures, longest first (ties by name).
fn kernel_summaries(all: &[Span<'_>], ridge: f64, cfg: &ChipConfig) -> Vec<KernelSummary> {
    struct Acc<'a> {
        kind: &'a str,
        intervals: Vec<(u64, u64)>,
        flops: u64,
        bytes: u64,
        dma_engine_ps: u64,
        /// Busy ps of TensorE, VectorE, ScalarE, GpSimd.
        busy: [u64; 4],
    }
    let mut acc: BTreeMap<&str, Acc<'_>> = BTreeMap::new();
    for s in all {
        let a = acc.entry(s.kernel_name()).or_insert_with(|| Acc {
            kind: s.kernel.map_or("", |k| k.kind.as_str()),
            intervals: Vec::new(),
            flops: 0,
            bytes: 0,
            dma_engine_ps: 0,
            busy: [0; 4],
        });
        a.intervals.push((s.record.start_ps, s.record.end_ps));
        a.flops += s.record.flops;
        a.bytes += s.record.hbm_read_bytes + s.record.hbm_write_bytes;
        a.dma_engine_ps = a.dma_engine_ps.saturating_add(s.record.dma_engine_ps);
        let slot = match s.engine {
            Engine::Tensor => Some(0),
            Engine::Vector => Some(1),
            Engine::Scalar => Some(2),
            Engine::GpSimd => Some(3),
            Engine::Dma(_) => None,
        };
        if let Some(i) = slot {
            a.busy[i] = a.busy[i].saturating_add(s.record.duration_ps());
        }
    }
    let mut out: Vec<KernelSummary> = acc
        .into_iter()
        .map(|(name, a)| {
            let intensity = (a.bytes > 0).then(|| a.flops as f64 / a.bytes as f64);
            let bound = match intensity {
                Some(i) if i < ridge => Bound::Memory,
                _ => Bound::Compute,
            };
            let span_ps = union_length(a.intervals);
            let hbm_percent = 100.0 * neuron_sim::stats::hbm_utilization(a.bytes, span_ps, cfg);
            let dma_engine_percent =
                100.0 * neuron_sim::stats::dma_engine_utilization(a.dma_engine_ps, span_ps, cfg);
            let span = span_ps as f64;
            let engine_percent = EngineActive {
                tensor: percent(a.busy[0] as f64, span),
                vector: percent(a.busy[1] as f64, span),
                scalar: percent(a.busy[2] as f64, span),
                gpsimd: percent(a.busy[3] as f64, span),
                dma: dma_engine_percent,
            };
            let limited_by = [
                ("hbm", hbm_percent),
                ("dma-engines", dma_engine_percent),
                ("tensor", engine_percent.tensor),
                ("vector", engine_percent.vector),
                ("scalar", engine_percent.scalar),
                ("gpsimd", engine_percent.gpsimd),
            ]
            .into_iter()
            .fold(("", -1.0), |best, c| if c.1 > best.1 { c } else { best })
            .0
            .to_string();
            KernelSummary {
                name: name.to_string(),
                kind: a.kind.to_string(),
                time_ns: span / 1000.0,
                flops: a.flops,
                bytes: a.bytes,
                arithmetic_intensity: intensity,
                bound,
                hbm_percent,
                dma_engine_percent,
                engine_percent,
                limited_by,
                limiter: Limiter::Latency,
                predicted_ns: None,
            }
        })
        .collect();
    out.sort_by(|a, b| {
        b.time_ns
            .total_cmp(&a.time_ns)
            .then_with(|| a.name.cmp(&b.name))
    });
    out
}

/// (save, reload) bytes of spill kernels' DMAs to and from scratch tensors.
fn spill_bytes(model: &Model, all: &[Span<'_>]) -> (u64, u64) {
    let tensors = &model.artifact().meta.program.tensors;
    let is_scratch = |m: Memory| match m {
        Memory::Hbm(t) => tensors
            .get(t.0 as usize)
            .is_some_and(|t| t.kind == TensorKind::Scratch),
        Memory::Sbuf | Memory::Psum => false,
    };
    let mut save = 0;
    let mut reload = 0;
    for s in all {
        if s.kernel.is_none_or(|k| k.kind != "spill") {
            continue;
        }
        if let Op::Dma { dst, src } = &s.instr.op {
            if is_scratch(dst.mem) {
                save += s.record.hbm_write_bytes;
            }
            if is_scratch(src.mem) {
                reload += s.record.hbm_read_bytes;
            }
        }
    }
    (save, reload)
}
