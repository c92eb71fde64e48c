//! The DMA bandwidth model: a fluid model of concurrent transfers sharing DMA engines and
//! HBM bandwidth.
//!
//! A transfer first spends `dma_fixed_latency_ns` (descriptor, sync and semaphore cost,
//! trainium.md section 3) without moving data, then moves its bytes at a rate that is
//! recomputed whenever the set of moving transfers changes. Rates are a max-min fair
//! allocation (progressive filling) over these shared resources:
//!
//! - **DMA engines**: `dma_engines` engines of `dma_engine_bytes_per_ns` each. Engine `e`
//!   serves partitions `e * ppe .. (e + 1) * ppe` (`ppe` = `partitions_per_dma_engine`),
//!   and a transfer's bytes are spread over the engines in proportion to the partitions of
//!   its on-chip side (the destination when both sides are on chip). A transfer over all
//!   128 partitions can thus reach `dma_engines x dma_engine_bytes_per_ns`, one over 8
//!   aligned partitions one engine's bandwidth. When the partitions do not split evenly,
//!   the most loaded engine limits the transfer (the reference formula `bytes / (bw x
//!   engines)` is the even case). An HBM -> HBM transfer has no partitions; we spread it
//!   evenly over all engines (our choice; the reference does not say).
//!   Engines are shared: two queues moving data through the same partitions split those
//!   engines' bandwidth, so the aggregate DMA bandwidth is at most `dma_engines x
//!   dma_engine_bytes_per_ns` (272 B/ns on trn1) however many queues are busy.
//! - **HBM**: `hbm_bandwidth_bytes_per_ns` shared by every transfer's HBM bytes. A transfer
//!   consumes HBM bandwidth in proportion to its HBM bytes per moved byte: 1 for HBM <-> SBUF,
//!   2 for HBM -> HBM (read and write), 0 for SBUF -> SBUF.
//!
//! A transfer's moved bytes are `max(source bytes, destination bytes)` (a casting DMA
//! reads and writes different amounts). Times are integer picoseconds: a completion is
//! scheduled at the first whole picosecond by which the transfer has moved all its bytes,
//! and every transfer takes at least 1 ps.
//!
//! Deviation: the queue is in order, so the fixed latency of the next transfer on a queue is
//! not overlapped with the data phase of the previous one (real queues pipeline
//! descriptors); programs hide it by spreading transfers over several queues.

use neuron_isa::{Ap, ChipConfig, Memory, Op};

/// What one DMA instruction moves, as the bandwidth model sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct DmaPlan {
    /// Bytes the DMA engines move.
    pub bytes: u64,
    /// Bytes read from HBM.
    pub hbm_read: u64,
    /// Bytes written to HBM.
    pub hbm_write: u64,
    /// On-chip partition range `[lo, hi)` whose DMA engines carry the transfer, or `None`
    /// for HBM -> HBM (all engines).
    pub partitions: Option<(u32, u32)>,
}

impl DmaPlan {
    /// The plan of a DMA op, or `None` for a non-DMA op.
    pub fn of(op: &Op) -> Option<DmaPlan> {
        fn span(ap: &Ap) -> (u32, u32) {
            (
                ap.start_partition,
                ap.start_partition.saturating_add(ap.partitions),
            )
        }
        match op {
            Op::Dma { dst, src } => {
                let hbm = |ap: &Ap| matches!(ap.mem, Memory::Hbm(_));
                let partitions = if dst.mem.is_on_chip() {
                    Some(span(dst))
                } else if src.mem.is_on_chip() {
                    Some(span(src))
                } else {
                    None
                };
                Some(DmaPlan {
                    bytes: src.bytes().max(dst.bytes()),
                    hbm_read: if hbm(src) { src.bytes() } else { 0 },
                    hbm_write: if hbm(dst) { dst.bytes() } else { 0 },
                    partitions,
                })
            }
            Op::DmaGather { dst, table, .. } => {
                // One table row per destination partition is read; the row has the
                // table's free pattern.
                let read = u64::from(dst.partitions) * table.bytes_per_partition();
                Some(DmaPlan {
                    bytes: read.max(dst.bytes()),
                    hbm_read: read,
                    hbm_write: 0,
                    partitions: Some(span(dst)),
                })
            }
            _ => None,
        }
    }
}

/// One transfer in flight.
#[derive(Debug, Clone)]
struct Transfer {
    /// The stream (DMA queue) that issued it.
    stream: usize,
    /// When it started (for the 1 ps minimum).
    start_ps: u64,
    /// When its fixed latency ends and data starts moving.
    data_start_ps: u64,
    /// Whether the data phase has begun.
    moving: bool,
    /// Bytes still to move.
    remaining: f64,
    /// Fraction of the bytes each engine carries: `(first engine, fractions)`.
    first_engine: usize,
    fractions: Vec<f64>,
    /// HBM bytes consumed per moved byte.
    hbm_per_byte: f64,
    /// Current rate, bytes per ps.
    rate: f64,
    /// Completion time at the current rate (valid while moving).
    finish_ps: u64,
}

/// The set of transfers in flight and their bandwidth shares.
#[derive(Debug, Clone)]
pub struct DmaModel {
    engine_cap: f64,
    hbm_cap: f64,
    engines: usize,
    partitions_per_engine: u32,
    latency_ps: u64,
    active: Vec<Transfer>,
    /// Time up to which `remaining` is accounted.
    last_ps: u64,
    // Scratch buffers for the rate computation, kept to avoid allocating per event.
    load: Vec<f64>,
    cap_left: Vec<f64>,
    saturated: Vec<bool>,
    frozen: Vec<bool>,
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
            active: Vec::new(),
            last_ps: 0,
            load: Vec::new(),
            cap_left: Vec::new(),
            saturated: Vec::new(),
            frozen: Vec::new(),
        }
    }

    /// Whether no transfer is in flight.
    pub fn is_idle(&self) -> bool {
        self.active.is_empty()
    }

    /// Starts a transfer for `stream` at `now` (no earlier than the last event).
    pub fn start(&mut self, now: u64, stream: usize, plan: &DmaPlan) {
        self.account(now);
        let (first_engine, fractions) = self.engine_fractions(plan.partitions);
        let bytes = plan.bytes as f64;
        let hbm = (plan.hbm_read + plan.hbm_write) as f64;
        // Saturating: an absurd (but finite) configured latency must not wrap.
        let data_start_ps = now.saturating_add(self.latency_ps);
        self.active.push(Transfer {
            stream,
            start_ps: now,
            data_start_ps,
            moving: false,
            remaining: bytes,
            first_engine,
            fractions,
            hbm_per_byte: if plan.bytes == 0 { 0.0 } else { hbm / bytes },
            rate: 0.0,
            finish_ps: u64::MAX,
        });
        if self.latency_ps == 0 {
            if let Some(t) = self.active.last_mut() {
                t.moving = true;
            }
            self.reallocate(now);
        }
    }

    /// The time of the next event (a transfer entering its data phase or completing).
    pub fn next_event(&self) -> Option<u64> {
        self.active
            .iter()
            .map(|t| {
                if t.moving {
                    t.finish_ps
                } else {
                    t.data_start_ps
                }
            })
            .min()
    }

    /// Advances to `now` (no later than [`DmaModel::next_event`]); pushes the streams whose
    /// transfers complete at `now` onto `completed`.
    pub fn advance(&mut self, now: u64, completed: &mut Vec<usize>) {
        self.account(now);
        let mut changed = false;
        let before = completed.len();
        self.active.retain(|t| {
            if t.moving && t.finish_ps <= now {
                completed.push(t.stream);
                changed = true;
                false
            } else {
                true
            }
        });
        for t in &mut self.active {
            if !t.moving && t.data_start_ps <= now {
                t.moving = true;
                changed = true;
            }
        }
        if changed {
            self.reallocate(now);
            // A zero-byte transfer can complete the moment its data phase begins.
            self.active.retain(|t| {
                if t.moving && t.finish_ps <= now {
                    completed.push(t.stream);
                    false
                } else {
                    true
                }
            });
        }
        completed[before..].sort_unstable();
    }

    /// Moves every moving transfer's bytes forward to `now` at its current rate.
    fn account(&mut self, now: u64) {
        let dt = now.saturating_sub(self.last_ps) as f64;
        if dt > 0.0 {
            for t in self.active.iter_mut().filter(|t| t.moving) {
                t.remaining = (t.remaining - t.rate * dt).max(0.0);
            }
        }
        self.last_ps = self.last_ps.max(now);
    }

    /// Which engines carry a transfer over `partitions`, and what fraction of its bytes each.
    fn engine_fractions(&self, partitions: Option<(u32, u32)>) -> (usize, Vec<f64>) {
        match partitions {
            Some((lo, hi)) if hi > lo => {
                let ppe = self.partitions_per_engine;
                let max_e = self.engines - 1;
                let first = ((lo / ppe) as usize).min(max_e);
                let last = (((hi - 1) / ppe) as usize).clamp(first, max_e);
                let total = f64::from(hi - lo);
                let fractions: Vec<f64> = (first..=last)
                    .map(|e| {
                        let e_lo = (e as u32) * ppe;
                        let e_hi = e_lo + ppe;
                        f64::from(hi.min(e_hi).saturating_sub(lo.max(e_lo))) / total
                    })
                    .collect();
                // Partitions beyond the configured engines (rejected by the verifier) would
                // leave no engine carrying the bytes; fall back to an even spread.
                if fractions.iter().any(|f| *f > 0.0) {
                    (first, fractions)
                } else {
                    (0, vec![1.0 / self.engines as f64; self.engines])
                }
            }
            _ => (0, vec![1.0 / self.engines as f64; self.engines]),
        }
    }

    /// Recomputes the rates of moving transfers (max-min fair, progressive filling) and
    /// their completion times.
    fn reallocate(&mut self, now: u64) {
        let n_res = self.engines + 1; // engines, then HBM
        let hbm = self.engines;
        self.cap_left.clear();
        self.cap_left.resize(self.engines, self.engine_cap);
        self.cap_left.push(self.hbm_cap);
        self.saturated.clear();
        self.saturated.resize(n_res, false);
        self.frozen.clear();
        self.frozen
            .extend(self.active.iter().map(|t| !t.moving || t.remaining <= 0.0));
        for t in &mut self.active {
            t.rate = 0.0;
        }
        loop {
            self.load.clear();
            self.load.resize(n_res, 0.0);
            let mut any = false;
            for (t, frozen) in self.active.iter().zip(&self.frozen) {
                if *frozen {
                    continue;
                }
                any = true;
                for (i, f) in t.fractions.iter().enumerate() {
                    self.load[t.first_engine + i] += f;
                }
                self.load[hbm] += t.hbm_per_byte;
            }
            if !any {
                break;
            }
            // The largest equal increment every unfrozen transfer can take.
            let mut inc = f64::INFINITY;
            let mut arg = 0;
            for r in 0..n_res {
                if self.load[r] > 0.0 {
                    let x = self.cap_left[r] / self.load[r];
                    if x < inc {
                        inc = x;
                        arg = r;
                    }
                }
            }
            for (t, frozen) in self.active.iter_mut().zip(&self.frozen) {
                if !*frozen {
                    t.rate += inc;
                }
            }
            for r in 0..n_res {
                self.cap_left[r] -= inc * self.load[r];
                let cap = if r == hbm {
                    self.hbm_cap
                } else {
                    self.engine_cap
                };
                if self.load[r] > 0.0 && self.cap_left[r] <= cap * 1e-12 {
                    self.saturated[r] = true;
                }
            }
            self.saturated[arg] = true;
            // Freeze every transfer that uses a saturated resource.
            for (t, frozen) in self.active.iter().zip(self.frozen.iter_mut()) {
                if *frozen {
                    continue;
                }
                let uses_saturated = t
                    .fractions
                    .iter()
                    .enumerate()
                    .any(|(i, f)| *f > 0.0 && self.saturated[t.first_engine + i])
                    || (t.hbm_per_byte > 0.0 && self.saturated[hbm]);
                if uses_saturated {
                    *frozen = true;
                }
            }
        }
        for t in self.active.iter_mut().filter(|t| t.moving) {
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
