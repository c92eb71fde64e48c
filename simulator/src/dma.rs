//! The DMA model: 16 engines per core, each serving every queue; descriptors; a fluid
//! model of concurrent transfers sharing the engines and HBM (trainium.md section 3,
//! `docs/isa.md#dma`, every constant a [`ChipConfig`] field).
//!
//! **Queues and transfers.** A DMA queue (stream `dmaN`) issues its instructions in order
//! and keeps up to `dma_queue_depth` of them in flight. An issued transfer first spends
//! `dma_fixed_latency_ns` (descriptor, sync and semaphore cost) without moving data; its
//! data phase then starts once its latency is over *and* every earlier transfer of the same
//! queue has moved all its bytes (queues are in order). So the latency of the next transfer
//! overlaps the data phase of the current one, and a queue that keeps enough transfers in
//! flight moves data back to back. Transfers complete in issue order per queue.
//!
//! **Engines.** `dma_engines` engines of `dma_engine_bytes_per_ns` each. Engine `e` serves
//! partitions `e * ppe .. (e + 1) * ppe` (`ppe` = `partitions_per_dma_engine`); each queue
//! has a ring on every engine, and a transfer's bytes are spread over the engines in
//! proportion to the partitions of its on-chip side (the destination when both sides are
//! on chip). An HBM -> HBM transfer has no partitions and is spread evenly (our choice).
//! An engine serves the rings of the queues with work on it round-robin; the fluid model
//! approximates round-robin by a max-min fair share of the engine's bandwidth.
//!
//! **Descriptors and the efficiency curve.** An engine moves a transfer as descriptors:
//! contiguous runs of at most one partition's bytes, the shorter of the source's and the
//! destination's runs. Each descriptor pays a setup cost before its bytes move, worth
//! `dma_descriptor_overhead_bytes` (256) of transfer time at the engine's rate. A transfer
//! of `d`-byte descriptors therefore takes `(d + 256) / d` engine-bytes of capacity per
//! byte: 50% of peak at 256 B per partition, 89% at 2 KiB, 94% at 4 KiB.
//!
//! **Transposes and casts.** A DMA between 2- or 4-byte types whose one side is contiguous
//! and whose other side's innermost run is a single element transposes on the DMA engines:
//! its descriptors are the contiguous side's runs and it runs at
//! `dma_transpose_hbm_efficiency` (HBM -> SBUF) or `dma_transpose_sbuf_efficiency`
//! (SBUF -> SBUF) of the engines' throughput. A 1- or 8-byte element-strided DMA has
//! one-element descriptors. A casting DMA moves `max(source bytes, destination bytes)`;
//! the reference gives no separate cast rate.
//!
//! **HBM.** `hbm_bandwidth_bytes_per_ns` shared by every transfer's HBM bytes: 1 HBM byte
//! per moved byte for HBM <-> SBUF, 2 for HBM -> HBM, 0 for SBUF -> SBUF.
//!
//! Rates are a max-min fair allocation (progressive filling) over the engines and HBM,
//! recomputed whenever the set of moving transfers changes. Times are integer picoseconds:
//! a completion is scheduled at the first whole picosecond by which the transfer has moved
//! all its bytes, and every transfer takes at least 1 ps.

use neuron_isa::ChipConfig;
use neuron_isa::dma::DmaCosts;
pub use neuron_isa::dma::{DmaPlan, contiguous_run_bytes};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Paying the fixed latency until `data_start_ps`.
    Latency,
    /// Latency paid; waiting for an earlier transfer of its queue to finish moving.
    Queued,
    /// Moving bytes.
    Moving,
}

/// One transfer in flight.
#[derive(Debug, Clone)]
struct Transfer {
    /// The stream (DMA queue) that issued it.
    stream: usize,
    /// When it was issued (for the 1 ps minimum).
    start_ps: u64,
    /// When its fixed latency ends.
    data_start_ps: u64,
    phase: Phase,
    /// Bytes still to move.
    remaining: f64,
    /// Engines `first..=last` carry it; engine capacity (bytes) used per moved byte on the
    /// first, the middle and the last engine.
    first: usize,
    last: usize,
    w_first: f64,
    w_mid: f64,
    w_last: f64,
    /// HBM bytes consumed per moved byte.
    hbm_per_byte: f64,
    /// Current rate, bytes per ps.
    rate: f64,
    /// Completion time at the current rate (valid while moving).
    finish_ps: u64,
}

impl Transfer {
    /// Whether it uses any engine in `first..=last` for which `sat_prefix` (prefix counts of
    /// saturated engines, `sat_prefix[e + 1] - sat_prefix[e]` = engine `e` saturated) says
    /// so.
    fn uses_saturated_engine(&self, sat_prefix: &[u32]) -> bool {
        sat_prefix[self.last + 1] > sat_prefix[self.first]
    }
}

/// The set of transfers in flight and their bandwidth shares.
#[derive(Debug, Clone)]
pub struct DmaModel {
    engine_cap: f64,
    hbm_cap: f64,
    engines: usize,
    partitions_per_engine: u32,
    latency_ps: u64,
    costs: DmaCosts,
    /// In issue order (so the first transfer of a stream is the head of its queue).
    active: Vec<Transfer>,
    /// Time up to which `remaining` is accounted.
    last_ps: u64,
    // Scratch buffers for the rate computation, kept to avoid allocating per event.
    load: Vec<f64>,
    diff: Vec<f64>,
    cap_left: Vec<f64>,
    saturated: Vec<bool>,
    sat_prefix: Vec<u32>,
    frozen: Vec<bool>,
    head_seen: Vec<bool>,
}

impl DmaModel {
    /// An idle model of `cfg`'s DMA engines and HBM.
    pub fn new(cfg: &ChipConfig) -> DmaModel {
        let engines = cfg.dma_engines.max(1) as usize;
        DmaModel {
            engine_cap: cfg.dma_engine_bytes_per_ns / 1000.0,
            hbm_cap: cfg.hbm_bandwidth_bytes_per_ns / 1000.0,
            engines,
            partitions_per_engine: cfg.partitions_per_dma_engine().max(1),
            latency_ps: (cfg.dma_fixed_latency_ns * 1000.0).round() as u64,
            costs: DmaCosts::of(cfg),
            active: Vec::new(),
            last_ps: 0,
            load: Vec::new(),
            diff: Vec::new(),
            cap_left: Vec::new(),
            saturated: Vec::new(),
            sat_prefix: Vec::new(),
            frozen: Vec::new(),
            head_seen: Vec::new(),
        }
    }

    /// Whether no transfer is in flight.
    pub fn is_idle(&self) -> bool {
        self.active.is_empty()
    }

    /// Engine capacity (bytes) a transfer of `plan` uses per byte it moves
    /// ([`DmaCosts::per_byte`]).
    pub fn cost_per_byte(&self, plan: &DmaPlan) -> f64 {
        self.costs.per_byte(plan)
    }

    /// Engine time, in ps summed over engines, that `plan` occupies at full engine rate
    /// (its bytes times [`DmaModel::cost_per_byte`] over one engine's bandwidth): the
    /// numerator of DMA-engine utilization.
    pub fn engine_ps(&self, plan: &DmaPlan) -> u64 {
        let ps = plan.bytes as f64 * self.cost_per_byte(plan) / self.engine_cap;
        if ps >= u64::MAX as f64 {
            u64::MAX
        } else {
            ps.round() as u64
        }
    }

    /// Issues a transfer for `stream` at `now` (no earlier than the last event).
    pub fn start(&mut self, now: u64, stream: usize, plan: &DmaPlan) {
        self.account(now);
        let cost = self.cost_per_byte(plan);
        let (first, last, fr_first, fr_mid, fr_last) = self.engine_fractions(plan.partitions);
        let bytes = plan.bytes as f64;
        let hbm = (plan.hbm_read + plan.hbm_write) as f64;
        // Saturating: an absurd (but finite) configured latency must not wrap.
        let data_start_ps = now.saturating_add(self.latency_ps);
        self.active.push(Transfer {
            stream,
            start_ps: now,
            data_start_ps,
            phase: Phase::Latency,
            remaining: bytes,
            first,
            last,
            w_first: fr_first * cost,
            w_mid: fr_mid * cost,
            w_last: fr_last * cost,
            hbm_per_byte: if plan.bytes == 0 { 0.0 } else { hbm / bytes },
            rate: 0.0,
            finish_ps: u64::MAX,
        });
        // With zero latency, `next_event` is `now` and the next `advance` starts its data.
    }

    /// The time of the next event (a transfer ending its latency or completing).
    pub fn next_event(&self) -> Option<u64> {
        let mut next: Option<u64> = None;
        for t in &self.active {
            let at = match t.phase {
                Phase::Moving => t.finish_ps,
                Phase::Latency => t.data_start_ps,
                Phase::Queued => continue,
            };
            next = Some(next.map_or(at, |n: u64| n.min(at)));
        }
        next
    }

    /// Advances to `now` (no later than [`DmaModel::next_event`]); pushes the streams whose
    /// transfers complete at `now` onto `completed` (one entry per completed transfer).
    pub fn advance(&mut self, now: u64, completed: &mut Vec<usize>) {
        self.account(now);
        let before = completed.len();
        self.promote_and_complete(now, completed);
        completed[before..].sort_unstable();
    }

    /// Removes transfers that finished by `now`, starts the data phase of queue heads whose
    /// latency is over, and recomputes rates if the moving set changed; repeats while
    /// zero-byte transfers complete instantly.
    fn promote_and_complete(&mut self, now: u64, completed: &mut Vec<usize>) {
        loop {
            let mut changed = false;
            self.active.retain(|t| {
                if t.phase == Phase::Moving && t.finish_ps <= now {
                    completed.push(t.stream);
                    changed = true;
                    false
                } else {
                    true
                }
            });
            // Queue heads: the first transfer of each stream in issue order.
            self.head_seen.fill(false);
            for t in &mut self.active {
                if t.stream >= self.head_seen.len() {
                    self.head_seen.resize(t.stream + 1, false);
                }
                let head = !self.head_seen[t.stream];
                self.head_seen[t.stream] = true;
                if t.phase == Phase::Latency && t.data_start_ps <= now {
                    t.phase = Phase::Queued;
                }
                if head && t.phase == Phase::Queued {
                    t.phase = Phase::Moving;
                    changed = true;
                }
            }
            if !changed {
                return;
            }
            self.reallocate(now);
            // A zero-byte transfer completes the moment its data phase begins; loop to
            // remove it and promote its successor.
            if !self
                .active
                .iter()
                .any(|t| t.phase == Phase::Moving && t.finish_ps <= now)
            {
                return;
            }
        }
    }

    /// Moves every moving transfer's bytes forward to `now` at its current rate.
    fn account(&mut self, now: u64) {
        let dt = now.saturating_sub(self.last_ps) as f64;
        if dt > 0.0 {
            for t in self.active.iter_mut().filter(|t| t.phase == Phase::Moving) {
                t.remaining = (t.remaining - t.rate * dt).max(0.0);
            }
        }
        self.last_ps = self.last_ps.max(now);
    }

    /// Which engines carry a transfer over `partitions`, and what fraction of its bytes the
    /// first, each middle and the last engine carry.
    fn engine_fractions(&self, partitions: Option<(u32, u32)>) -> (usize, usize, f64, f64, f64) {
        let even = 1.0 / self.engines as f64;
        let all = (0, self.engines - 1, even, even, even);
        let Some((lo, hi)) = partitions else {
            return all;
        };
        if hi <= lo {
            return all;
        }
        let ppe = self.partitions_per_engine;
        let max_e = self.engines - 1;
        let first = (lo / ppe) as usize;
        if first > max_e {
            // Partitions beyond the configured engines (rejected by the verifier) would
            // leave no engine carrying the bytes; fall back to an even spread.
            return all;
        }
        let last = (((hi - 1) / ppe) as usize).clamp(first, max_e);
        let total = f64::from(hi - lo);
        let share = |e: usize| {
            let e_lo = (e as u32) * ppe;
            let e_hi = e_lo + ppe;
            f64::from(hi.min(e_hi).saturating_sub(lo.max(e_lo))) / total
        };
        (
            first,
            last,
            share(first),
            f64::from(ppe) / total,
            share(last),
        )
    }

    /// Recomputes the rates of moving transfers (max-min fair, progressive filling) and
    /// their completion times.
    fn reallocate(&mut self, now: u64) {
        let ne = self.engines;
        let hbm = ne;
        self.cap_left.clear();
        self.cap_left.resize(ne, self.engine_cap);
        self.cap_left.push(self.hbm_cap);
        self.saturated.clear();
        self.saturated.resize(ne + 1, false);
        self.frozen.clear();
        self.frozen.extend(
            self.active
                .iter()
                .map(|t| t.phase != Phase::Moving || t.remaining <= 0.0),
        );
        for t in &mut self.active {
            t.rate = 0.0;
        }
        loop {
            // Per-resource load of the unfrozen transfers: a difference array for the
            // middle engines keeps this O(transfers + engines).
            self.load.clear();
            self.load.resize(ne + 1, 0.0);
            self.diff.clear();
            self.diff.resize(ne + 1, 0.0);
            let mut any = false;
            for (t, frozen) in self.active.iter().zip(&self.frozen) {
                if *frozen {
                    continue;
                }
                any = true;
                self.load[t.first] += t.w_first;
                if t.last > t.first {
                    self.load[t.last] += t.w_last;
                    if t.last > t.first + 1 {
                        self.diff[t.first + 1] += t.w_mid;
                        self.diff[t.last] -= t.w_mid;
                    }
                }
                self.load[hbm] += t.hbm_per_byte;
            }
            if !any {
                break;
            }
            let mut run = 0.0;
            for e in 0..ne {
                run += self.diff[e];
                self.load[e] += run;
            }
            // The largest equal increment every unfrozen transfer can take.
            let mut inc = f64::INFINITY;
            let mut arg = 0;
            for r in 0..=ne {
                // A saturated resource carries no unfrozen transfer (any load left is
                // rounding residue of the difference array): skip it, so every round
                // saturates a new resource and the loop ends within `ne + 1` rounds.
                if !self.saturated[r] && self.load[r] > 1e-15 {
                    let x = self.cap_left[r] / self.load[r];
                    if x < inc {
                        inc = x;
                        arg = r;
                    }
                }
            }
            if !inc.is_finite() || self.saturated[arg] {
                // Only zero-cost transfers are left (nothing to move): no bound.
                break;
            }
            for (t, frozen) in self.active.iter_mut().zip(&self.frozen) {
                if !*frozen {
                    t.rate += inc;
                }
            }
            for r in 0..=ne {
                self.cap_left[r] -= inc * self.load[r];
                let cap = if r == hbm {
                    self.hbm_cap
                } else {
                    self.engine_cap
                };
                if self.load[r] > 1e-15 && self.cap_left[r] <= cap * 1e-12 {
                    self.saturated[r] = true;
                }
            }
            self.saturated[arg] = true;
            self.sat_prefix.clear();
            self.sat_prefix.push(0);
            let mut count = 0;
            for e in 0..ne {
                count += u32::from(self.saturated[e]);
                self.sat_prefix.push(count);
            }
            // Freeze every transfer that uses a saturated resource.
            for (t, frozen) in self.active.iter().zip(self.frozen.iter_mut()) {
                if *frozen {
                    continue;
                }
                if t.uses_saturated_engine(&self.sat_prefix)
                    || (t.hbm_per_byte > 0.0 && self.saturated[hbm])
                {
                    *frozen = true;
                }
            }
        }
        for t in self.active.iter_mut().filter(|t| t.phase == Phase::Moving) {
            let min_end = t.start_ps.saturating_add(1);
            t.finish_ps = if t.remaining <= 0.0 {
                now.max(min_end)
            } else if t.rate > 0.0 {
                let dt = (t.remaining / t.rate).ceil();
                // Saturate absurd durations rather than wrap.
                now.saturating_add(if dt >= u64::MAX as f64 {
                    u64::MAX
                } else {
                    dt as u64
                })
                .max(min_end)
            } else {
                u64::MAX
            };
        }
    }
}
