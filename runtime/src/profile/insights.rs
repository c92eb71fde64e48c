//! Insights: what to fix, found in the run's records.
//!
//! Each [`Insight`] names a finding, the evidence for it, an estimated saving in simulated
//! time and the compiler flag or chip change that addresses it. The thresholds are the
//! Neuron profiler's "good" thresholds (trainium.md §5) and the DMA efficiency knee
//! (§3) where those documents give one; the others are ours and say so.
//!
//! Savings are estimates, upper bounds unless said otherwise: the time the named cost
//! took on the path that decided the latency (or on its own resource), not a re-run.
//! `docs/profiling.md` lists every insight with its rule.

use crate::model::Model;
use crate::profile::deps::{Release, critical_path, releases};
use crate::profile::summary::Summary;
use crate::profile::{Span, union_length};
use neuron_isa::{Ap, ChipConfig, Dtype, Engine, Memory, Op, TensorKind};
use serde::{Deserialize, Serialize};
use std::cmp::Reverse;
use std::collections::BTreeMap;

/// An engine at least this busy (percent of the time) is compute-bound (trainium.md §5).
pub const ENGINE_BOUND_PERCENT: f64 = 90.0;
/// HBM (or DMA-engine) use above this (percent) is memory-bound (trainium.md §5, "MBU above
/// 60%"; applied to the DMA engines' bandwidth too).
pub const MEMORY_BOUND_PERCENT: f64 = 60.0;
/// Kernels below this MFU (percent) are flagged (trainium.md §5: model/active FLOPs < 50%).
pub const LOW_MFU_PERCENT: f64 = 50.0;
/// Transposes above this share of TensorE busy time are flagged (trainium.md §5).
pub const TRANSPOSE_PERCENT: f64 = 10.0;
/// Spill reloads above this share of HBM reads are flagged (trainium.md §5).
pub const SPILL_RELOAD_PERCENT: f64 = 25.0;
/// Below this many bytes per partition a DMA is severely overhead-bound (trainium.md §3).
pub const SMALL_DMA_BYTES_PER_PARTITION: u64 = 256;
/// From this many bytes per partition a DMA is near peak bandwidth (trainium.md §3).
pub const DMA_KNEE_BYTES_PER_PARTITION: u64 = 2048;
/// A tensor read from HBM more than this many times over (one load plus more than two
/// reloads) is flagged, as the Neuron profiler flags "tensors reloaded more than twice".
pub const MAX_LOADS: f64 = 3.0;
/// Ours: kernel-level insights only for kernels taking at least this share of the latency
/// (percent), so that a many-kernel model reports what matters.
pub const MIN_KERNEL_PERCENT: f64 = 5.0;
/// Ours: whole-run costs (semaphore waits, evictions on the critical path, small or
/// serialized DMAs) are reported from this share of the latency (percent).
pub const MIN_RUN_PERCENT: f64 = 5.0;

/// What an insight is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InsightKind {
    /// A kernel limited by HBM bandwidth.
    HbmBound,
    /// A kernel limited by the DMA engines or queues (bandwidth or fixed cost), not HBM.
    DmaBound,
    /// A kernel limited by one compute engine.
    EngineBound,
    /// DMAs below the efficiency knee.
    SmallDma,
    /// DMAs in line on one queue while other queues are free.
    SerializedQueue,
    /// A tensor read from HBM more than [`MAX_LOADS`] times over.
    RepeatedReload,
    /// Spill reloads a large share of HBM reads.
    SpillReload,
    /// PSUM evictions on the critical path.
    PsumEvictionCriticalPath,
    /// TensorE idle, waiting on one semaphore.
    TensorIdleOnSemaphore,
    /// Transposes a large share of TensorE time.
    TransposeShare,
    /// A kernel with low MFU.
    LowMfu,
}

impl InsightKind {
    /// The kind's name in `summary.json` (`hbm_bound`, ...).
    pub fn name(self) -> &'static str {
        match self {
            InsightKind::HbmBound => "hbm_bound",
            InsightKind::DmaBound => "dma_bound",
            InsightKind::EngineBound => "engine_bound",
            InsightKind::SmallDma => "small_dma",
            InsightKind::SerializedQueue => "serialized_queue",
            InsightKind::RepeatedReload => "repeated_reload",
            InsightKind::SpillReload => "spill_reload",
            InsightKind::PsumEvictionCriticalPath => "psum_eviction_critical_path",
            InsightKind::TensorIdleOnSemaphore => "tensor_idle_on_semaphore",
            InsightKind::TransposeShare => "transpose_share",
            InsightKind::LowMfu => "low_mfu",
        }
    }
}

/// One finding.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Insight {
    /// What it is about.
    pub kind: InsightKind,
    /// The kernel it is about, if one.
    pub kernel: Option<String>,
    /// The finding, one sentence.
    pub finding: String,
    /// The figures behind it.
    pub evidence: String,
    /// Estimated simulated time saved by acting on it, ns.
    pub saving_ns: f64,
    /// The flag or change that addresses it.
    pub action: String,
}

impl std::fmt::Display for Insight {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "[{}] {} (saves up to {:.3} us)\n      evidence: {}\n      fix: {}",
            self.kind.name(),
            self.finding,
            self.saving_ns / 1000.0,
            self.evidence,
            self.action
        )
    }
}

/// What limits a kernel: the resource whose use is highest relative to its threshold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Limiter {
    /// HBM bandwidth.
    Hbm,
    /// DMA engines' bandwidth or the queues' fixed cost.
    Dma,
    /// A compute engine.
    Tensor,
    /// VectorE.
    Vector,
    /// ScalarE.
    Scalar,
    /// GpSimd.
    Gpsimd,
    /// Nothing is near its limit: dependencies and latencies decide.
    Latency,
}

impl Limiter {
    /// The limiter's name (`hbm`, `dma`, `tensor`, ..., `latency`).
    pub fn name(self) -> &'static str {
        match self {
            Limiter::Hbm => "hbm",
            Limiter::Dma => "dma",
            Limiter::Tensor => "tensor",
            Limiter::Vector => "vector",
            Limiter::Scalar => "scalar",
            Limiter::Gpsimd => "gpsimd",
            Limiter::Latency => "latency",
        }
    }
}

/// How much of each resource one kernel used, ps.
#[derive(Debug, Clone, Default)]
pub struct KernelUse {
    /// Wall time (union of its instructions' intervals).
    pub time_ps: u64,
    /// Union of its DMA instructions' intervals over all queues.
    pub dma_queue_ps: u64,
    /// Time its HBM bytes take at the full HBM bandwidth.
    pub hbm_ps: f64,
    /// Time the most loaded DMA engine needs for its share of the transfers, at the
    /// simulator's size/efficiency curve (`InstrRecord::dma_engine_ps`).
    pub dma_engine_ps: f64,
    /// Busy time per compute engine (tensor, vector, scalar, gpsimd).
    pub engine_ps: [u64; 4],
    /// Matmul FLOPs.
    pub flops: u64,
}

const COMPUTE: [(Engine, Limiter); 4] = [
    (Engine::Tensor, Limiter::Tensor),
    (Engine::Vector, Limiter::Vector),
    (Engine::Scalar, Limiter::Scalar),
    (Engine::GpSimd, Limiter::Gpsimd),
];

impl KernelUse {
    /// The limiter and each resource's use as a fraction of its threshold (>= 1 means at
    /// its limit): HBM and DMA-engine time over [`MEMORY_BOUND_PERCENT`], DMA queue time
    /// and engine busy time over [`ENGINE_BOUND_PERCENT`].
    pub fn limiter(&self) -> Limiter {
        if self.time_ps == 0 {
            return Limiter::Latency;
        }
        let t = self.time_ps as f64;
        let mem = MEMORY_BOUND_PERCENT / 100.0;
        let busy = ENGINE_BOUND_PERCENT / 100.0;
        let mut scores = vec![
            (self.hbm_ps / t / mem, Limiter::Hbm),
            (
                (self.dma_engine_ps / t / mem).max(self.dma_queue_ps as f64 / t / busy),
                Limiter::Dma,
            ),
        ];
        for (i, (_, l)) in COMPUTE.iter().enumerate() {
            scores.push((self.engine_ps[i] as f64 / t / busy, *l));
        }
        // Highest score wins; ties go to the earlier entry.
        let (best, l) = scores
            .iter()
            .copied()
            .fold((f64::MIN, Limiter::Latency), |acc, s| {
                if s.0 > acc.0 { s } else { acc }
            });
        if best >= 1.0 { l } else { Limiter::Latency }
    }

    /// The time of the busiest resource other than `l`, ps: what the kernel would still
    /// need if `l` cost nothing.
    fn other_than(&self, l: Limiter) -> f64 {
        let mut v: Vec<f64> = Vec::new();
        if l != Limiter::Hbm {
            v.push(self.hbm_ps);
        }
        if l != Limiter::Dma {
            v.push(self.dma_engine_ps);
        }
        for (i, (_, e)) in COMPUTE.iter().enumerate() {
            if *e != l {
                v.push(self.engine_ps[i] as f64);
            }
        }
        v.into_iter().fold(0.0, f64::max)
    }
}

/// The on-chip side of a DMA (the destination when both are on chip).
fn on_chip_side<'a>(dst: &'a Ap, src: &'a Ap) -> Option<&'a Ap> {
    if dst.mem.is_on_chip() {
        Some(dst)
    } else if src.mem.is_on_chip() {
        Some(src)
    } else {
        None
    }
}

/// On-chip partition range of a DMA (`None` for HBM -> HBM or a non-DMA op): the
/// partitions whose DMA engines serve it, as in `neuron_sim::dma`.
fn dma_partitions(op: &Op) -> Option<(u32, u32)> {
    let range = |ap: &Ap| {
        (
            ap.start_partition,
            ap.start_partition.saturating_add(ap.partitions),
        )
    };
    match op {
        Op::Dma { dst, src } => on_chip_side(dst, src).map(range),
        Op::DmaGather { dst, .. } => Some(range(dst)),
        _ => None,
    }
}

/// Bytes per partition of a DMA's on-chip side, or `None` for HBM -> HBM.
fn dma_bytes_per_partition(op: &Op) -> Option<u64> {
    match op {
        Op::Dma { dst, src } => on_chip_side(dst, src).map(Ap::bytes_per_partition),
        Op::DmaGather { dst, .. } => Some(dst.bytes_per_partition()),
        _ => None,
    }
}

/// Resource use per kernel name.
pub fn kernel_uses<'a>(all: &[Span<'a>], cfg: &ChipConfig) -> BTreeMap<&'a str, KernelUse> {
    struct Acc {
        all: Vec<(u64, u64)>,
        dma: Vec<(u64, u64)>,
        engines: [Vec<(u64, u64)>; 4],
        hbm_bytes: u64,
        /// Engine time (ps) per DMA engine.
        engine_time: Vec<f64>,
        flops: u64,
    }
    let engines = cfg.dma_engines.max(1) as usize;
    let ppe = cfg.partitions_per_dma_engine().max(1);
    let mut acc: BTreeMap<&'a str, Acc> = BTreeMap::new();
    for s in all {
        let name: &'a str = match s.kernel {
            Some(k) => k.name.as_str(),
            None => super::NO_KERNEL_NAME,
        };
        let a = acc.entry(name).or_insert_with(|| Acc {
            all: Vec::new(),
            dma: Vec::new(),
            engines: Default::default(),
            hbm_bytes: 0,
            engine_time: vec![0.0; engines],
            flops: 0,
        });
        let iv = (s.record.start_ps, s.record.end_ps);
        a.all.push(iv);
        a.flops += s.record.flops;
        a.hbm_bytes += s.record.hbm_read_bytes + s.record.hbm_write_bytes;
        if s.engine.is_dma() {
            a.dma.push(iv);
            {
                // The simulator's own engine time for this transfer (its bytes at the
                // size/efficiency curve, `InstrRecord::dma_engine_ps`), spread over the
                // engines serving the partitions (all for HBM -> HBM).
                let (lo, hi) = match dma_partitions(&s.instr.op) {
                    Some((p0, p1)) if p1 > p0 => ((p0 / ppe) as usize, (p1.div_ceil(ppe)) as usize),
                    _ => (0, engines),
                };
                let hi = hi.min(engines).max(lo + 1).min(engines);
                let lo = lo.min(hi.saturating_sub(1));
                let share = s.record.dma_engine_ps as f64 / (hi - lo) as f64;
                for e in &mut a.engine_time[lo..hi] {
                    *e += share;
                }
            }
        } else if let Some(i) = COMPUTE.iter().position(|(e, _)| *e == s.engine) {
            a.engines[i].push(iv);
        }
    }
    acc.into_iter()
        .map(|(name, a)| {
            let max_engine = a.engine_time.iter().copied().fold(0.0, f64::max);
            let [t, v, sc, g] = a.engines;
            (
                name,
                KernelUse {
                    time_ps: union_length(a.all),
                    dma_queue_ps: union_length(a.dma),
                    hbm_ps: a.hbm_bytes as f64 / cfg.hbm_bandwidth_bytes_per_ns * 1000.0,
                    dma_engine_ps: max_engine,
                    engine_ps: [
                        union_length(t),
                        union_length(v),
                        union_length(sc),
                        union_length(g),
                    ],
                    flops: a.flops,
                },
            )
        })
        .collect()
}

fn ns(ps: f64) -> f64 {
    ps / 1000.0
}

fn pct(part: f64, whole: f64) -> f64 {
    if whole > 0.0 {
        100.0 * part / whole
    } else {
        0.0
    }
}

/// The insights of one run, largest estimated saving first.
pub fn find(model: &Model, all: &[Span<'_>], summary: &Summary) -> Vec<Insight> {
    let cfg = model.target();
    let latency = summary.latency_ns * 1000.0;
    let mut out = Vec::new();
    if all.is_empty() || latency <= 0.0 {
        return out;
    }
    let rel = releases(all);
    let uses = kernel_uses(all, cfg);
    kernel_insights(&uses, summary, latency, &mut out);
    small_dmas(all, cfg, latency, &mut out);
    serialized_queues(all, cfg, latency, &mut out);
    repeated_reloads(model, all, cfg, &mut out);
    spill_reload(summary, cfg, &mut out);
    psum_evictions(all, &rel, latency, &mut out);
    tensor_idle(all, &rel, latency, &mut out);
    transposes(all, &mut out);
    out.sort_by(|a, b| {
        b.saving_ns
            .total_cmp(&a.saving_ns)
            .then_with(|| a.kind.cmp(&b.kind))
            .then_with(|| a.kernel.cmp(&b.kernel))
    });
    out
}

/// HBM-, DMA- and engine-bound kernels, and low-MFU kernels.
fn kernel_insights(
    uses: &BTreeMap<&str, KernelUse>,
    summary: &Summary,
    latency: f64,
    out: &mut Vec<Insight>,
) {
    let fp32 = summary.peak_dtype == Dtype::F32.name();
    for (&name, u) in uses {
        let t = u.time_ps as f64;
        if pct(t, latency) < MIN_KERNEL_PERCENT {
            continue;
        }
        let limiter = u.limiter();
        let saving = (t - u.other_than(limiter)).max(0.0);
        let share = format!(
            "{:.3} us ({:.1}% of the latency)",
            ns(t) / 1000.0,
            pct(t, latency)
        );
        let kernel = Some(name.to_string());
        match limiter {
            Limiter::Hbm => out.push(Insight {
                kind: InsightKind::HbmBound,
                kernel,
                finding: format!("kernel `{name}` is HBM-bound"),
                evidence: format!(
                    "{share}; its HBM bytes need {:.3} us at {:.0} GB/s ({:.0}% of its time); \
                     busiest engine {:.3} us",
                    ns(u.hbm_ps) / 1000.0,
                    summary.hbm_bandwidth_bytes_per_ns,
                    pct(u.hbm_ps, t),
                    ns(u.other_than(Limiter::Hbm)) / 1000.0
                ),
                saving_ns: ns(saving),
                action: "move fewer HBM bytes: --auto-cast matmult (bf16 operands halve fp32 \
                         traffic), fusion (drop --no-fuse), or a chip with more bandwidth \
                         (--set hbm_bandwidth_bytes_per_ns=...)"
                    .into(),
            }),
            Limiter::Dma => out.push(Insight {
                kind: InsightKind::DmaBound,
                kernel,
                finding: format!("kernel `{name}` is DMA-bound (DMA engines or queues, not HBM)"),
                evidence: format!(
                    "{share}; DMA queues busy {:.0}% of it, the busiest DMA engine needs {:.0}% \
                     of it at full rate, HBM only {:.0}%",
                    pct(u.dma_queue_ps as f64, t),
                    pct(u.dma_engine_ps, t),
                    pct(u.hbm_ps, t)
                ),
                saving_ns: ns(saving),
                action: "spread transfers over all 128 partitions (all 16 DMA engines) and over \
                         more queues, with at least 2 KiB per partition each; or model faster \
                         DMA with --set dma_engine_bytes_per_ns=..."
                    .into(),
            }),
            Limiter::Tensor | Limiter::Vector | Limiter::Scalar | Limiter::Gpsimd => {
                let engine = limiter.name();
                let action = match limiter {
                    Limiter::Tensor if fp32 => {
                        "--auto-cast matmult --auto-cast-type bf16: fp32 matmuls run at a \
                         quarter of the bf16 rate"
                    }
                    Limiter::Tensor => {
                        "--auto-cast-type fp8_e4m3 (or int8) where accuracy allows: a higher \
                         TensorE rate on targets that double it"
                    }
                    _ => {
                        "balance the elementwise work between VectorE and ScalarE, or fuse it \
                         into fewer passes (drop --no-fuse)"
                    }
                };
                out.push(Insight {
                    kind: InsightKind::EngineBound,
                    kernel,
                    finding: format!("kernel `{name}` is bound by {engine}"),
                    evidence: format!(
                        "{share}; {engine} busy {:.0}% of it (threshold {ENGINE_BOUND_PERCENT}%)",
                        pct(
                            u.engine_ps
                                [COMPUTE.iter().position(|(_, l)| *l == limiter).unwrap_or(0)]
                                as f64,
                            t
                        )
                    ),
                    saving_ns: ns(saving),
                    action: action.into(),
                });
            }
            Limiter::Latency => {}
        }
        // Kernels carrying a real share of the matmul work, whose limiter is not already
        // reported above (or is TensorE itself, where the dtype decides the peak).
        let matmul_share = pct(u.flops as f64, summary.hardware_flops as f64);
        if matmul_share >= MIN_KERNEL_PERCENT
            && matches!(limiter, Limiter::Latency | Limiter::Tensor)
            && summary.peak_flops_per_s > 0.0
        {
            let at_peak = u.flops as f64 / summary.peak_flops_per_s * 1e12;
            let mfu = pct(at_peak, t);
            if mfu < LOW_MFU_PERCENT {
                out.push(Insight {
                    kind: InsightKind::LowMfu,
                    kernel: Some(name.to_string()),
                    finding: format!("kernel `{name}` reaches {mfu:.1}% MFU"),
                    evidence: format!(
                        "{share}; {} FLOPs take {:.3} us at the {} peak; below {LOW_MFU_PERCENT}%; \
                         limited by {}",
                        u.flops,
                        ns(at_peak) / 1000.0,
                        summary.peak_dtype,
                        limiter.name()
                    ),
                    // TensorE at peak, the memory side unchanged.
                    saving_ns: ns((t - at_peak.max(u.hbm_ps).max(u.dma_engine_ps)).max(0.0)),
                    action: if fp32 {
                        "--auto-cast matmult: bf16 matmuls have 4x the fp32 peak".into()
                    } else {
                        "keep TensorE fed: larger matmul tiles (K = 128 rows, N = 512 moving \
                         columns) and loads issued ahead of use; see this kernel's limiter"
                            .into()
                    },
                });
            }
        }
    }
}

/// DMAs below the efficiency knee.
fn small_dmas(all: &[Span<'_>], cfg: &ChipConfig, latency: f64, out: &mut Vec<Insight>) {
    let dmas: Vec<(&Span<'_>, u64)> = all
        .iter()
        .filter(|s| s.engine.is_dma())
        .filter_map(|s| dma_bytes_per_partition(&s.instr.op).map(|b| (s, b)))
        .collect();
    let small: Vec<&(&Span<'_>, u64)> = dmas
        .iter()
        .filter(|(_, b)| *b < SMALL_DMA_BYTES_PER_PARTITION)
        .collect();
    if small.len() < 2 {
        return;
    }
    let time: u64 = small.iter().map(|(s, _)| s.record.duration_ps()).sum();
    let queues: std::collections::BTreeSet<u16> =
        small.iter().map(|(s, _)| s.record.stream).collect();
    // Per queue, the small DMAs lie end to end; the queues run side by side.
    let wall = time as f64 / queues.len().max(1) as f64;
    if pct(wall, latency) < MIN_RUN_PERCENT {
        return;
    }
    let bytes_pp: u64 = small.iter().map(|(_, b)| *b).sum();
    let mean = bytes_pp as f64 / small.len() as f64;
    // Merged into transfers of the knee size per partition.
    let merged = bytes_pp.div_ceil(DMA_KNEE_BYTES_PER_PARTITION).max(1) as f64;
    let n = small.len() as f64;
    let fixed = cfg.dma_fixed_latency_ns * 1000.0;
    // A queue keeps `dma_queue_depth` transfers in flight, so their fixed costs overlap.
    let in_flight = (queues.len().max(1) as f64) * f64::from(cfg.dma_queue_depth.max(1));
    let saving = ((n - merged) * fixed / in_flight).clamp(0.0, wall.min(latency));
    out.push(Insight {
        kind: InsightKind::SmallDma,
        kernel: None,
        finding: format!(
            "{} of {} DMAs move less than {SMALL_DMA_BYTES_PER_PARTITION} B per partition",
            small.len(),
            dmas.len()
        ),
        evidence: format!(
            "mean {mean:.0} B per partition; {:.3} us of queue time on {} queue(s), each paying \
             the {:.0} ns fixed cost; near peak from {DMA_KNEE_BYTES_PER_PARTITION} B per partition",
            ns(time as f64) / 1000.0,
            queues.len(),
            cfg.dma_fixed_latency_ns
        ),
        saving_ns: ns(saving),
        action: "larger tiles: at least 2 KiB per partition per transfer (a free size of 512 \
                 fp32, 1024 bf16), merging adjacent loads into one access pattern"
            .into(),
    });
}

/// DMAs in line on one queue while other queues are free.
fn serialized_queues(all: &[Span<'_>], cfg: &ChipConfig, latency: f64, out: &mut Vec<Insight>) {
    let mut by_queue: BTreeMap<u16, Vec<&Span<'_>>> = BTreeMap::new();
    for s in all.iter().filter(|s| s.engine.is_dma()) {
        by_queue.entry(s.record.stream).or_default().push(s);
    }
    let union = union_length(
        all.iter()
            .filter(|s| s.engine.is_dma())
            .map(|s| (s.record.start_ps, s.record.end_ps))
            .collect(),
    ) as f64;
    for spans in by_queue.values() {
        let n = spans.len();
        let busy = union_length(
            spans
                .iter()
                .map(|s| (s.record.start_ps, s.record.end_ps))
                .collect(),
        ) as f64;
        // One queue carries at least 80% of the time DMA was active at all, with a line of
        // transfers, for a noticeable share of the run (ours).
        if n < 4 || pct(busy, union) < 80.0 || pct(busy, latency) < 4.0 * MIN_RUN_PERCENT {
            continue;
        }
        let used = by_queue.len() as u32;
        let free = cfg.dma_queues.saturating_sub(used);
        if free == 0 {
            continue;
        }
        let k = f64::from(free + 1).min(n as f64);
        // Spread over k queues, their fixed costs overlap; bandwidth is unchanged.
        let fixed = cfg.dma_fixed_latency_ns * 1000.0;
        let saving = (n as f64 * fixed * (1.0 - 1.0 / k)).clamp(0.0, busy);
        let q = spans[0].engine.name();
        out.push(Insight {
            kind: InsightKind::SerializedQueue,
            kernel: None,
            finding: format!("{n} DMAs wait in line on queue {q}"),
            evidence: format!(
                "{q} is busy {:.3} us ({:.0}% of the latency, {:.0}% of all DMA activity) \
                 while {free} of {} queues are unused",
                ns(busy) / 1000.0,
                pct(busy, latency),
                pct(busy, union),
                cfg.dma_queues
            ),
            saving_ns: ns(saving),
            action: "spread independent transfers over more DMA queues so their fixed costs \
                     overlap (the compiler's builder assigns one queue per stream of loads)"
                .into(),
        });
    }
}

/// Tensors read from HBM more than [`MAX_LOADS`] times over.
fn repeated_reloads(model: &Model, all: &[Span<'_>], cfg: &ChipConfig, out: &mut Vec<Insight>) {
    let tensors = &model.artifact().meta.program.tensors;
    let mut read: BTreeMap<u32, u64> = BTreeMap::new();
    for s in all {
        if let Op::Dma { src, .. } = &s.instr.op
            && let Memory::Hbm(t) = src.mem
        {
            *read.entry(t.0).or_default() += src.bytes();
        }
    }
    for (t, bytes) in read {
        let Some(desc) = tensors.get(t as usize) else {
            continue;
        };
        let size = desc
            .shape
            .iter()
            .product::<u64>()
            .saturating_mul(desc.dtype.size());
        if size == 0 {
            continue;
        }
        let loads = bytes as f64 / size as f64;
        if loads <= MAX_LOADS {
            continue;
        }
        let extra = (bytes - size) as f64;
        let per_partition = size.div_ceil(u64::from(cfg.partitions.max(1)));
        let kind = match desc.kind {
            TensorKind::Input => "input",
            TensorKind::Output => "output",
            TensorKind::Weight => "weight",
            TensorKind::Scratch => "scratch tensor",
        };
        out.push(Insight {
            kind: InsightKind::RepeatedReload,
            kernel: None,
            finding: format!(
                "{kind} `{}` is read from HBM {loads:.1} times over",
                desc.name
            ),
            evidence: format!(
                "{bytes} bytes read of a {size}-byte tensor: {:.0} bytes more than one load, \
                 {:.3} us of HBM bandwidth",
                extra,
                extra / cfg.hbm_bandwidth_bytes_per_ns / 1000.0
            ),
            saving_ns: extra / cfg.hbm_bandwidth_bytes_per_ns,
            action: format!(
                "keep it resident in SBUF ({per_partition} B per partition): a tiling that \
                 loads it once, or more SBUF (--set sbuf_bytes_per_partition=...)"
            ),
        });
    }
}

/// Spill reloads above [`SPILL_RELOAD_PERCENT`] of HBM reads.
fn spill_reload(summary: &Summary, cfg: &ChipConfig, out: &mut Vec<Insight>) {
    let share = pct(
        summary.spill_reload_bytes as f64,
        summary.hbm_read_bytes as f64,
    );
    if summary.spill_reload_bytes == 0 || share <= SPILL_RELOAD_PERCENT {
        return;
    }
    out.push(Insight {
        kind: InsightKind::SpillReload,
        kernel: None,
        finding: format!("spill reloads are {share:.0}% of HBM reads"),
        evidence: format!(
            "{} bytes saved and {} reloaded of {} read (threshold {SPILL_RELOAD_PERCENT}%)",
            summary.spill_save_bytes, summary.spill_reload_bytes, summary.hbm_read_bytes
        ),
        saving_ns: summary.spill_bytes as f64 / cfg.hbm_bandwidth_bytes_per_ns,
        action: format!(
            "fit the working set in SBUF: --auto-cast matmult (bf16 halves it) or more SBUF \
             (--set sbuf_bytes_per_partition={})",
            cfg.sbuf_bytes_per_partition.saturating_mul(2)
        ),
    });
}

/// Whether a span is a PSUM eviction: a VectorE/ScalarE/GpSimd instruction reading PSUM.
fn is_eviction(s: &Span<'_>) -> bool {
    !s.engine.is_dma()
        && s.engine != Engine::Tensor
        && s.instr.op.reads().iter().any(|a| a.mem == Memory::Psum)
}

/// PSUM evictions on the critical path.
fn psum_evictions(all: &[Span<'_>], rel: &[Release], latency: f64, out: &mut Vec<Insight>) {
    let path = critical_path(all, rel);
    let evictions: Vec<usize> = path
        .iter()
        .copied()
        .filter(|&i| is_eviction(&all[i]))
        .collect();
    let time: u64 = evictions.iter().map(|&i| all[i].record.duration_ps()).sum();
    if evictions.is_empty() || pct(time as f64, latency) < MIN_RUN_PERCENT {
        return;
    }
    let mut engines: BTreeMap<String, usize> = BTreeMap::new();
    for &i in &evictions {
        *engines.entry(all[i].engine.name()).or_default() += 1;
    }
    let on: Vec<String> = engines.iter().map(|(e, n)| format!("{n} on {e}")).collect();
    out.push(Insight {
        kind: InsightKind::PsumEvictionCriticalPath,
        kernel: None,
        finding: format!(
            "{} PSUM evictions are on the critical path",
            evictions.len()
        ),
        evidence: format!(
            "{:.3} us ({:.1}% of the latency) of the critical path is PSUM -> SBUF copies ({})",
            ns(time as f64) / 1000.0,
            pct(time as f64, latency),
            on.join(", ")
        ),
        saving_ns: ns(time as f64),
        action: "double-buffer PSUM (two banks per accumulation) so TensorE fills one while \
                 VectorE/ScalarE evict the other, and alternate evictions between the two engines"
            .into(),
    });
}

/// TensorE idle, waiting on one semaphore.
fn tensor_idle(all: &[Span<'_>], rel: &[Release], latency: f64, out: &mut Vec<Insight>) {
    let mut released_by: Vec<Vec<&Release>> = vec![Vec::new(); all.len()];
    for r in rel {
        released_by[r.waiter].push(r);
    }
    let mut tensor: Vec<usize> = (0..all.len())
        .filter(|&i| all[i].engine == Engine::Tensor)
        .collect();
    if tensor.is_empty() {
        return;
    }
    tensor.sort_by_key(|&i| (all[i].record.stream, all[i].record.index));
    // Per semaphore: (idle ps, producers' engine and kernel -> count).
    type Producers = BTreeMap<(String, String), usize>;
    let mut idle: BTreeMap<u32, (u64, Producers)> = BTreeMap::new();
    let mut prev_end: BTreeMap<u16, u64> = BTreeMap::new();
    for &i in &tensor {
        let r = all[i].record;
        let free_at = prev_end.get(&r.stream).copied().unwrap_or(0);
        prev_end.insert(r.stream, r.end_ps);
        if r.start_ps <= free_at {
            continue;
        }
        // The binding wait: the release that came last.
        let Some(b) = released_by[i]
            .iter()
            .max_by_key(|x| all[x.signaller].record.end_ps)
        else {
            continue;
        };
        let e = idle.entry(b.sem).or_default();
        e.0 += r.start_ps - free_at;
        let p = &all[b.signaller];
        *e.1.entry((p.engine.name(), p.kernel_name().to_string()))
            .or_default() += 1;
    }
    let Some((&sem, (ps, producers))) = idle.iter().max_by_key(|(s, (ps, _))| (*ps, Reverse(**s)))
    else {
        return;
    };
    if pct(*ps as f64, latency) < MIN_RUN_PERCENT {
        return;
    }
    let ((engine, kernel), _) = producers
        .iter()
        .max_by_key(|(k, n)| (**n, Reverse((*k).clone())))
        .map_or((("?".into(), "?".into()), 0), |(k, n)| (k.clone(), *n));
    let action = if engine.starts_with("dma") {
        "prefetch: issue those loads earlier and double-buffer their SBUF tiles so the next \
         tile arrives while TensorE works on this one; spread them over more DMA queues"
    } else {
        "double-buffer the producer's output so TensorE does not wait for it"
    };
    out.push(Insight {
        kind: InsightKind::TensorIdleOnSemaphore,
        kernel: None,
        finding: format!("TensorE sits idle waiting on semaphore s{sem}"),
        evidence: format!(
            "{:.3} us ({:.1}% of the latency) of TensorE idle time waiting for s{sem}, \
             signalled mostly by {engine} in kernel `{kernel}`",
            ns(*ps as f64) / 1000.0,
            pct(*ps as f64, latency)
        ),
        saving_ns: ns(*ps as f64),
        action: action.into(),
    });
}

/// Transposes above [`TRANSPOSE_PERCENT`] of TensorE busy time.
fn transposes(all: &[Span<'_>], out: &mut Vec<Insight>) {
    let tensor: Vec<&Span<'_>> = all.iter().filter(|s| s.engine == Engine::Tensor).collect();
    let busy = union_length(
        tensor
            .iter()
            .map(|s| (s.record.start_ps, s.record.end_ps))
            .collect(),
    ) as f64;
    let tr: Vec<&&Span<'_>> = tensor
        .iter()
        .filter(|s| matches!(s.instr.op, Op::Transpose { .. }))
        .collect();
    let time: u64 = tr.iter().map(|s| s.record.duration_ps()).sum();
    let share = pct(time as f64, busy);
    if tr.is_empty() || share <= TRANSPOSE_PERCENT {
        return;
    }
    out.push(Insight {
        kind: InsightKind::TransposeShare,
        kernel: None,
        finding: format!("transposes take {share:.0}% of TensorE time"),
        evidence: format!(
            "{} transposes, {:.3} us of {:.3} us TensorE busy (threshold {TRANSPOSE_PERCENT}%)",
            tr.len(),
            ns(time as f64) / 1000.0,
            ns(busy) / 1000.0
        ),
        saving_ns: ns(time as f64),
        action: "load operands in the layout the matmul wants (a strided DMA access pattern, \
                 or weights transposed at compile time) instead of transposing on TensorE"
            .into(),
    });
}
