//! The instruction builder: per-engine streams with automatic semaphore synchronization.
//!
//! Every stream (TensorE, VectorE, ScalarE, GpSimd, each DMA queue) owns one semaphore, and
//! *every* instruction signals its own stream's semaphore when it completes. A stream
//! completes in order, so "instruction `j` of stream `E` is done" is exactly `sem_E >= j+1`.
//!
//! Lowering code never writes a wait by hand. Each instruction declares what it reads and
//! writes through its access patterns ([`Op::reads`], [`Op::writes`]); the builder keeps, per
//! memory region, the instructions that touched it since it was last overwritten, and makes
//! the new instruction wait for every read-after-write, write-after-read and
//! write-after-write hazard against *other* streams (same-stream order is implicit).
//!
//! Two things keep this cheap enough for a sub-second BERT compile and for programs of
//! 10^5 instructions:
//! - regions are bucketed (SBUF by 2 KiB of partition bytes, PSUM by bank, HBM tensors by
//!   row blocks), and a bucket forgets records that a later access covers;
//! - each instruction carries a vector clock (how many instructions of every stream are
//!   known complete when it completes). A wait that another wait already implies is
//!   dropped, so an instruction usually waits on one or two semaphores.
//!
//! HBM regions are boxes in a tensor's natural `[rows, row bytes]` layout (rows = all but
//! the last axis); an access pattern whose rows do not line up with the tensor's rows is
//! widened to the rows it spans (conservative: it can only add waits, never drop one).
//! Tensors that no instruction writes (inputs, weights) are not tracked at all.

use super::resident::{self, Probe, Residency};
use neuron_isa::{
    Ap, ChipConfig, Engine, HbmTensor, Instruction, Memory, Op, SemId, SemWait, Stream, TensorKind,
};

/// Index of a stream in the builder (also the id of its semaphore).
pub type StreamIdx = usize;

/// Where an emitted instruction sits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InstrRef {
    /// The stream.
    pub stream: StreamIdx,
    /// Position in the stream.
    pub index: u32,
}

/// A rectangle of one tracked memory: rows (partitions, or HBM tensor rows) times a byte
/// range within each row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Region {
    space: usize,
    r0: u32,
    r1: u32,
    c0: i64,
    c1: i64,
}

/// One access remembered by a bucket.
#[derive(Debug, Clone, Copy)]
struct Rec {
    stream: u16,
    index: u32,
    write: bool,
    r0: u32,
    r1: u32,
    c0: i64,
    c1: i64,
}

impl Rec {
    fn overlaps(&self, r: &Region) -> bool {
        self.r0 < r.r1 && r.r0 < self.r1 && self.c0 < r.c1 && r.c0 < self.c1
    }

    fn covered_by(&self, r: &Region) -> bool {
        r.r0 <= self.r0 && self.r1 <= r.r1 && r.c0 <= self.c0 && self.c1 <= r.c1
    }
}

/// A tracked memory: SBUF, PSUM, or one HBM tensor.
#[derive(Debug, Clone)]
struct TrackSpace {
    /// Buckets split the row axis (HBM) instead of the byte axis (on chip).
    by_rows: bool,
    /// Bucket width along the split axis.
    width: i64,
    buckets: Vec<Vec<Rec>>,
    /// Never written by the program: nothing to track.
    readonly: bool,
    /// HBM only: bytes per natural row.
    row_bytes: i64,
    /// HBM only: number of natural rows.
    rows: i64,
}

impl TrackSpace {
    fn on_chip(bytes: u64, width: u64) -> TrackSpace {
        let width = width.max(1) as i64;
        let n = (bytes as i64 + width - 1) / width;
        TrackSpace {
            by_rows: false,
            width,
            buckets: vec![Vec::new(); n.max(1) as usize],
            readonly: false,
            row_bytes: 0,
            rows: 0,
        }
    }

    fn hbm(t: &HbmTensor) -> TrackSpace {
        let last = t.shape.last().copied().unwrap_or(1).max(1);
        let row_bytes = (last * t.dtype.size()) as i64;
        let rows = (t.elems() / last).max(1) as i64;
        let readonly = matches!(t.kind, TensorKind::Input | TensorKind::Weight);
        if rows > 1 {
            let width = (rows + 63) / 64;
            TrackSpace {
                by_rows: true,
                width,
                buckets: vec![Vec::new(); ((rows + width - 1) / width) as usize],
                readonly,
                row_bytes,
                rows,
            }
        } else {
            let width = ((row_bytes + 63) / 64).max(64);
            TrackSpace {
                by_rows: false,
                width,
                buckets: vec![Vec::new(); ((row_bytes + width - 1) / width).max(1) as usize],
                readonly,
                row_bytes,
                rows,
            }
        }
    }

    /// The buckets a region touches.
    fn bucket_range(&self, r: &Region) -> std::ops::RangeInclusive<usize> {
        let (lo, hi) = if self.by_rows {
            (i64::from(r.r0), i64::from(r.r1))
        } else {
            (r.c0, r.c1)
        };
        let last = self.buckets.len() as i64 - 1;
        let b0 = (lo.max(0) / self.width).min(last);
        let b1 = ((hi - 1).max(0) / self.width).clamp(b0, last);
        b0 as usize..=b1 as usize
    }

    /// `r` clipped to bucket `b` along the split axis.
    fn clip(&self, r: &Region, b: usize) -> Region {
        let lo = b as i64 * self.width;
        let hi = if b + 1 == self.buckets.len() {
            i64::MAX
        } else {
            lo + self.width
        };
        let lo = if b == 0 { i64::MIN } else { lo };
        let mut c = *r;
        if self.by_rows {
            c.r0 = i64::from(c.r0).max(lo).clamp(0, i64::from(u32::MAX)) as u32;
            c.r1 = i64::from(c.r1).min(hi).clamp(0, i64::from(u32::MAX)) as u32;
        } else {
            c.c0 = c.c0.max(lo);
            c.c1 = c.c1.min(hi);
        }
        c
    }
}

/// The box of an HBM pattern that walks whole rows along its free axes and stays inside
/// one column range of a row across its partitions (a transposing store of a `[columns,
/// rows]` tile into a row-major tensor): rows `lo .. hi` by the partitions' columns, not
/// the whole rows, so stores of neighbouring column tiles do not look like they overlap.
fn column_walk(ap: &Ap, lo: i64, hi: i64, ps: i64, l: i64) -> Option<(i64, i64, i64, i64)> {
    let esize = ap.dtype.size() as i64;
    let walks_rows = ap
        .dims
        .iter()
        .all(|d| d.size <= 1 || (d.stride * esize).rem_euclid(l) == 0);
    let span = ps * (i64::from(ap.partitions) - 1);
    let col = lo.rem_euclid(l);
    let (c0, c1) = (col + span.min(0), col + span.max(0) + esize);
    (walks_rows && c0 >= 0 && c1 <= l)
        .then(|| (lo.div_euclid(l), (hi - 1).div_euclid(l) + 1, c0, c1))
}

/// Hazard tracking over all memories.
#[derive(Debug, Clone)]
struct Tracker {
    spaces: Vec<TrackSpace>,
}

const SBUF_SPACE: usize = 0;
const PSUM_SPACE: usize = 1;
const HBM_BASE: usize = 2;

impl Tracker {
    fn region(&self, ap: &Ap) -> Option<Region> {
        let (lo, hi) = ap.row_byte_span()?;
        if ap.partitions == 0 {
            return None;
        }
        match ap.mem {
            Memory::Sbuf | Memory::Psum => Some(Region {
                space: if ap.mem == Memory::Sbuf {
                    SBUF_SPACE
                } else {
                    PSUM_SPACE
                },
                r0: ap.start_partition,
                r1: ap.start_partition.saturating_add(ap.partitions),
                c0: lo,
                c1: hi,
            }),
            Memory::Hbm(t) => {
                let space = HBM_BASE + t.0 as usize;
                let sp = self.spaces.get(space)?;
                if sp.readonly {
                    return None;
                }
                let l = sp.row_bytes.max(1);
                let esize = ap.dtype.size() as i64;
                let ps = ap.partition_stride * esize;
                let parts = i64::from(ap.partitions);
                let row_of = |b: i64| b.div_euclid(l);
                // Rows line up with the tensor's rows: a box of rows x columns.
                let aligned = (ps == 0 || (ps > 0 && ps % l == 0)) && row_of(lo) == row_of(hi - 1);
                let (r0, r1, c0, c1) = if aligned {
                    let step = if ps == 0 { 0 } else { ps / l };
                    let r0 = row_of(lo);
                    (
                        r0,
                        r0 + step * (parts - 1) + 1,
                        lo.rem_euclid(l),
                        (hi - 1).rem_euclid(l) + 1,
                    )
                } else if let Some(b) = column_walk(ap, lo, hi, ps, l) {
                    b
                } else {
                    let span = ps * (parts - 1);
                    let (alo, ahi) = (lo + span.min(0), hi + span.max(0));
                    let (r0, r1) = (row_of(alo), row_of(ahi - 1) + 1);
                    if r1 - r0 == 1 {
                        (r0, r1, alo - r0 * l, ahi - r0 * l)
                    } else {
                        (r0, r1, 0, l)
                    }
                };
                let clamp = |r: i64| r.clamp(0, sp.rows.max(1)) as u32;
                Some(Region {
                    space,
                    r0: clamp(r0),
                    r1: clamp(r1).max(clamp(r0) + 1),
                    c0,
                    c1,
                })
            }
        }
    }

    /// Raises `need[s]` to the count this access must wait for on stream `s`.
    fn hazards(&self, r: &Region, write: bool, stream: StreamIdx, need: &mut [u32]) {
        let sp = &self.spaces[r.space];
        for b in sp.bucket_range(r) {
            let c = sp.clip(r, b);
            for rec in &sp.buckets[b] {
                if rec.stream as usize != stream && (write || rec.write) && rec.overlaps(&c) {
                    let n = &mut need[rec.stream as usize];
                    *n = (*n).max(rec.index + 1);
                }
            }
        }
    }

    fn record(&mut self, r: &Region, write: bool, stream: StreamIdx, index: u32) {
        let sp = &mut self.spaces[r.space];
        for b in sp.bucket_range(r) {
            let c = sp.clip(r, b);
            if c.r0 >= c.r1 || c.c0 >= c.c1 {
                continue;
            }
            // A covered record is implied by the new one: a write was ordered after it
            // (waited for, or same stream), and a newer read of the same stream completes
            // after an older one.
            sp.buckets[b].retain(|rec| {
                !(rec.covered_by(&c) && (write || (rec.stream as usize == stream && !rec.write)))
            });
            sp.buckets[b].push(Rec {
                stream: stream as u16,
                index,
                write,
                r0: c.r0,
                r1: c.r1,
                c0: c.c0,
                c1: c.c1,
            });
        }
    }
}

/// Which DMA queues a transfer may use: loads and stores get separate pools so that a
/// store waiting for its data never holds up the prefetch of the next tile.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DmaClass {
    /// HBM -> SBUF (and HBM -> HBM copies).
    Load,
    /// SBUF -> HBM.
    Store,
    /// A load into a buffer nothing else uses (a matmul's pinned W): it may run far ahead
    /// of the kernel that needs it, so it gets a few queues of its own, where its
    /// transfers neither hold up the other loads in queue order nor outnumber them in the
    /// DMA engines' fair share.
    Prefetch,
    /// A load into a pinned buffer (a matmul's whole W, see
    /// [`super::alloc::BufferReq::pinned`]): always on the prefetch queues, even when it
    /// must wait for an earlier kernel that used the same bytes of the weight ring. Those
    /// waits only hold up later weight loads, which need the ring in the same order.
    Weights,
}

/// Queues reserved for [`DmaClass::Prefetch`] loads.
const PREFETCH_QUEUES: usize = 3;

/// Builds the streams of one program.
#[derive(Debug, Clone)]
pub struct Builder {
    engines: Vec<Engine>,
    streams: Vec<Vec<Instruction>>,
    /// Flat per-stream vector clocks: `clocks[s][i * n .. (i + 1) * n]` is the clock of
    /// instruction `i` of stream `s` (counts of each stream known complete when it is).
    clocks: Vec<Vec<u32>>,
    tracker: Tracker,
    kernel: u32,
    load_queues: Vec<StreamIdx>,
    dep_queues: Vec<StreamIdx>,
    store_queues: Vec<StreamIdx>,
    prefetch_queues: Vec<StreamIdx>,
    queue_bytes: Vec<u64>,
    /// Bytes each queue got from the current kernel (reset by [`Builder::set_kernel`]).
    kernel_queue_bytes: Vec<u64>,
    /// HBM bytes read plus written by the DMAs of each kernel.
    kernel_hbm: Vec<u64>,
    need: Vec<u32>,
    /// Scratch tensors kept in SBUF, or the probe that finds them (see
    /// [`super::resident`]).
    resident: ResidentMode,
    /// Per tensor-table index: the row lengths the tensor may be resident with.
    resident_rows: Vec<Option<Vec<u64>>>,
    /// The row candidates under which the DMA [`Builder::dma`] is about to push maps lane
    /// for lane (probe mode; a bit per candidate).
    dma_maps: u8,
    /// Rotation of the engines that carry resident copies.
    copy_rr: usize,
    partitions: u32,
}

/// How the builder treats scratch tensors that could live in SBUF
/// ([`super::resident`]).
#[derive(Debug, Clone, Default)]
pub enum ResidentMode {
    /// Every scratch tensor is in HBM.
    #[default]
    Off,
    /// Every scratch tensor is in HBM; note each DMA on one and whether it maps.
    Probe(Probe),
    /// These tensors are in SBUF: their DMAs become on-chip copies. `broken` says why an
    /// access did not map (the program is then not usable).
    On {
        /// The resident tensors.
        residency: Residency,
        /// The first access of a resident tensor that did not map.
        broken: Option<String>,
    },
}

/// Streams in a fixed order: the four compute engines, then the DMA queues.
fn stream_engines(cfg: &ChipConfig) -> Vec<Engine> {
    let mut e = vec![
        Engine::Tensor,
        Engine::Vector,
        Engine::Scalar,
        Engine::GpSimd,
    ];
    let queues = cfg.dma_queues.clamp(1, 256);
    e.extend((0..queues).map(|q| Engine::Dma(q as u8)));
    e
}

impl Builder {
    /// A builder for `cfg` over the HBM tensor table `tensors`; `prefetch`: reserve queues
    /// for [`DmaClass::Prefetch`] loads (the program has pinned buffers).
    pub fn new(cfg: &ChipConfig, tensors: &[HbmTensor], prefetch: bool) -> Builder {
        let engines = stream_engines(cfg);
        let n = engines.len();
        let dma: Vec<StreamIdx> = (4..n).collect();
        // A quarter of the queues (at least one) carry stores, a quarter loads of data
        // written by earlier kernels, the rest independent loads; with few queues the
        // classes share.
        let quarter = (dma.len() / 4).max(1);
        let (mut load_queues, dep_queues, store_queues) = if dma.len() >= 3 {
            let n = dma.len();
            (
                dma[..n - 2 * quarter].to_vec(),
                dma[n - 2 * quarter..n - quarter].to_vec(),
                dma[n - quarter..].to_vec(),
            )
        } else {
            (dma.clone(), dma.clone(), dma.clone())
        };
        // Prefetches take the first PREFETCH_QUEUES of the independent loads' queues when
        // at least as many remain for those. (Measured with partition-broadcast bias
        // loads: letting them share all eight independent-load queues instead slowed
        // bert_layer from 124.8 to 129.5 us; the weights then outnumber the activation
        // loads in the engines' fair share.)
        let prefetch_queues = if prefetch && load_queues.len() >= 2 * PREFETCH_QUEUES {
            load_queues.drain(..PREFETCH_QUEUES).collect()
        } else {
            load_queues.clone()
        };
        let bank = cfg.psum_bytes_per_partition / u64::from(cfg.psum_banks.max(1));
        let mut spaces = vec![
            TrackSpace::on_chip(cfg.sbuf_bytes_per_partition, 2048),
            TrackSpace::on_chip(cfg.psum_bytes_per_partition, bank),
        ];
        spaces.extend(tensors.iter().map(TrackSpace::hbm));
        Builder {
            engines,
            streams: vec![Vec::new(); n],
            clocks: vec![Vec::new(); n],
            tracker: Tracker { spaces },
            kernel: neuron_isa::NO_KERNEL,
            load_queues,
            dep_queues,
            store_queues,
            prefetch_queues,
            queue_bytes: vec![0; n],
            kernel_queue_bytes: vec![0; n],
            kernel_hbm: Vec::new(),
            need: vec![0; n],
            resident: ResidentMode::Off,
            resident_rows: tensors.iter().map(resident::row_candidates).collect(),
            dma_maps: 0,
            copy_rr: 0,
            partitions: cfg.partitions,
        }
    }

    /// Sets how scratch tensors that could live in SBUF are treated.
    pub fn set_resident(&mut self, mode: ResidentMode) {
        self.resident = mode;
    }

    /// The resident mode, with what a probe noted.
    pub fn take_resident(&mut self) -> ResidentMode {
        std::mem::take(&mut self.resident)
    }

    /// For a DMA between an SBUF tile and a resident tensor: the on-chip copy that replaces
    /// it (VectorE and GpSimd in turn). In probe mode notes whether the DMA would map.
    fn resident_copy(&mut self, dst: &Ap, src: &Ap) -> Option<(Engine, Op)> {
        if matches!(self.resident, ResidentMode::Off) {
            return None;
        }
        let (hbm, chip, store) = match (dst.mem, src.mem) {
            (Memory::Hbm(_), _) => (dst, src, true),
            (_, Memory::Hbm(_)) => (src, dst, false),
            _ => return None,
        };
        let Memory::Hbm(t) = hbm.mem else {
            return None;
        };
        let rows = self.resident_rows.get(t.0 as usize)?.as_ref()?;
        let parts = self.partitions;
        match &mut self.resident {
            ResidentMode::Off => None,
            ResidentMode::Probe(_) => {
                self.dma_maps = resident::map_mask(hbm, chip, rows, parts);
                None
            }
            ResidentMode::On { residency, broken } => {
                let r = residency.tensors.get(&t.0)?;
                let Some(ap) = resident::map(hbm, chip, r.row_elems, r.base, parts) else {
                    broken.get_or_insert_with(|| {
                        format!("resident tensor {t}: access {hbm} <-> {chip} does not map")
                    });
                    return None;
                };
                let (d, s) = if store {
                    (ap, chip.clone())
                } else {
                    (chip.clone(), ap)
                };
                self.copy_rr += 1;
                let engine = if self.copy_rr % 2 == 0 {
                    Engine::GpSimd
                } else {
                    Engine::Vector
                };
                Some((engine, Op::TensorCopy { dst: d, src: s }))
            }
        }
    }

    /// Where a resident tensor's region `hbm` lives in SBUF, as the tile `chip` that a DMA
    /// would move it to or from lane for lane (same dtype, no cast): a kernel then reads or
    /// writes it there in place instead of copying through `chip`. `None` unless the
    /// tensor is resident ([`ResidentMode::On`]) and the access maps; the caller then
    /// emits the DMA as usual (which the probe notes, or which becomes a copy).
    pub fn resident_in_place(&self, hbm: &Ap, chip: &Ap) -> Option<Ap> {
        let ResidentMode::On { residency, .. } = &self.resident else {
            return None;
        };
        let Memory::Hbm(t) = hbm.mem else {
            return None;
        };
        if hbm.dtype != chip.dtype {
            return None;
        }
        let r = residency.tensors.get(&t.0)?;
        resident::map(hbm, chip, r.row_elems, r.base, self.partitions)
    }

    /// Notes the scratch tensors DMA `op` touches (probe mode), or that it touches a
    /// resident one (which breaks the program).
    fn note_scratch(&mut self, op: &Op) {
        if matches!(self.resident, ResidentMode::Off)
            || !matches!(op, Op::Dma { .. } | Op::DmaGather { .. })
        {
            return;
        }
        let maps = std::mem::take(&mut self.dma_maps);
        for ap in op.reads().into_iter().chain(op.writes()) {
            let Memory::Hbm(t) = ap.mem else {
                continue;
            };
            if self
                .resident_rows
                .get(t.0 as usize)
                .is_none_or(|r| r.is_none())
            {
                continue;
            }
            match &mut self.resident {
                ResidentMode::Off => {}
                ResidentMode::Probe(p) => p.note(t.0, self.kernel, maps),
                ResidentMode::On { residency, broken } => {
                    if residency.tensors.contains_key(&t.0) {
                        broken.get_or_insert_with(|| {
                            format!("resident tensor {t}: a DMA still touches it: {ap}")
                        });
                    }
                }
            }
        }
    }

    /// Registers a tensor appended to the table after construction.
    pub fn add_tensor(&mut self, t: &HbmTensor) {
        self.tracker.spaces.push(TrackSpace::hbm(t));
        self.resident_rows.push(None);
    }

    /// Tags the following instructions with kernel `k`.
    pub fn set_kernel(&mut self, k: u32) {
        if k != self.kernel {
            self.kernel_queue_bytes.iter_mut().for_each(|b| *b = 0);
        }
        self.kernel = k;
        if self.kernel_hbm.len() <= k as usize {
            self.kernel_hbm.resize(k as usize + 1, 0);
        }
    }

    fn stream_of(&self, engine: Engine) -> StreamIdx {
        match engine {
            Engine::Tensor => 0,
            Engine::Vector => 1,
            Engine::Scalar => 2,
            Engine::GpSimd => 3,
            Engine::Dma(q) => (4 + q as usize).min(self.engines.len() - 1),
        }
    }

    /// Appends `op` to `engine`'s stream with the waits its hazards require.
    pub fn push(&mut self, engine: Engine, op: Op) -> InstrRef {
        self.note_scratch(&op);
        let s = self.stream_of(engine);
        let n = self.engines.len();
        let index = self.streams[s].len() as u32;
        let reads: Vec<Region> = op
            .reads()
            .into_iter()
            .filter_map(|a| self.tracker.region(a))
            .collect();
        let writes: Vec<Region> = op
            .writes()
            .into_iter()
            .filter_map(|a| self.tracker.region(a))
            .collect();
        let mut need = std::mem::take(&mut self.need);
        need.iter_mut().for_each(|x| *x = 0);
        for r in &reads {
            self.tracker.hazards(r, false, s, &mut need);
        }
        for r in &writes {
            self.tracker.hazards(r, true, s, &mut need);
        }
        // What this stream already knows is complete.
        let mut clock: Vec<u32> = match index {
            0 => vec![0; n],
            i => self.clocks[s][(i as usize - 1) * n..i as usize * n].to_vec(),
        };
        let candidates: Vec<(usize, u32)> = need
            .iter()
            .enumerate()
            .filter(|&(e, &c)| e != s && c > clock[e])
            .map(|(e, &c)| (e, c))
            .collect();
        let mut waits = Vec::new();
        for &(e, c) in &candidates {
            // Dropped if another candidate's completion already implies it.
            let implied = candidates
                .iter()
                .any(|&(e2, c2)| e2 != e && self.clocks[e2][(c2 as usize - 1) * n + e] >= c);
            if !implied {
                waits.push((e, c));
            }
        }
        for &(e, c) in &waits {
            let base = (c as usize - 1) * n;
            for (k, v) in clock.iter_mut().enumerate() {
                *v = (*v).max(self.clocks[e][base + k]);
            }
        }
        clock[s] = index + 1;
        self.need = need;
        for r in &reads {
            self.tracker.record(r, false, s, index);
        }
        for r in &writes {
            self.tracker.record(r, true, s, index);
        }
        if let Some(k) = self.kernel_hbm.get_mut(self.kernel as usize) {
            match &op {
                Op::Dma { dst, src } => {
                    for ap in [dst, src] {
                        if matches!(ap.mem, Memory::Hbm(_)) {
                            *k += ap.bytes();
                        }
                    }
                }
                // One table row per destination partition (the table pattern spans all).
                Op::DmaGather { dst, table, .. } => {
                    *k += u64::from(dst.partitions) * table.bytes_per_partition();
                }
                _ => {}
            }
        }
        self.clocks[s].extend_from_slice(&clock);
        self.streams[s].push(Instruction {
            op,
            wait: waits
                .into_iter()
                .map(|(e, c)| SemWait {
                    sem: SemId(e as u32),
                    count: c,
                })
                .collect(),
            signal: vec![SemId(s as u32)],
            kernel: self.kernel,
        });
        InstrRef { stream: s, index }
    }

    /// Whether `op` must wait for an instruction of another stream (any hazard on what it
    /// reads or writes).
    fn has_hazards(&self, op: &Op) -> bool {
        let mut need = vec![0u32; self.engines.len()];
        for ap in op.reads() {
            if let Some(r) = self.tracker.region(ap) {
                self.tracker.hazards(&r, false, usize::MAX, &mut need);
            }
        }
        for ap in op.writes() {
            if let Some(r) = self.tracker.region(ap) {
                self.tracker.hazards(&r, true, usize::MAX, &mut need);
            }
        }
        need.iter().any(|&c| c > 0)
    }

    /// Emits a DMA on the least-loaded queue of `class` (ties: the lowest queue). Loads
    /// that must wait for another instruction (data an earlier kernel writes, a buffer slot
    /// still being read) go to their own queues, so that while they wait, loads that can
    /// start at once (weights, inputs, fresh slots) are not held up behind them (a queue
    /// runs in order).
    pub fn dma(&mut self, class: DmaClass, dst: Ap, src: Ap) -> InstrRef {
        if let Some((engine, op)) = self.resident_copy(&dst, &src) {
            return self.push(engine, op);
        }
        let bytes = src.bytes().max(dst.bytes());
        self.push_dma(class, Op::Dma { dst, src }, bytes)
    }

    /// Emits an indirect DMA (`dma_gather`) as a load: row `indices[p]` of the HBM
    /// `table` into partition `p` of `dst`.
    pub fn gather(&mut self, dst: Ap, table: Ap, indices: Ap) -> InstrRef {
        let bytes = u64::from(dst.partitions) * table.bytes_per_partition().max(1);
        let op = Op::DmaGather {
            dst,
            table,
            indices,
        };
        self.push_dma(DmaClass::Load, op, bytes)
    }

    /// Puts DMA `op` moving `bytes` on the least-loaded queue of `class`'s pool.
    fn push_dma(&mut self, class: DmaClass, op: Op, bytes: u64) -> InstrRef {
        let pool = match class {
            DmaClass::Load | DmaClass::Prefetch if self.has_hazards(&op) => &self.dep_queues,
            DmaClass::Load => &self.load_queues,
            DmaClass::Store => &self.store_queues,
            DmaClass::Prefetch | DmaClass::Weights => &self.prefetch_queues,
        };
        // Least loaded by this kernel's bytes first (so a kernel's transfers, e.g. a layer
        // norm's row tile and its gamma and beta rows, do not stack on one queue in order),
        // then by the whole program's.
        let load = |q: StreamIdx| (self.kernel_queue_bytes[q], self.queue_bytes[q]);
        let mut best = pool[0];
        for &q in pool {
            if load(q) < load(best) {
                best = q;
            }
        }
        // Count at least a descriptor's worth so that tiny transfers still rotate queues.
        self.queue_bytes[best] += bytes.max(4096);
        self.kernel_queue_bytes[best] += bytes.max(4096);
        let engine = self.engines[best];
        self.push(engine, op)
    }

    /// A load from HBM (or an HBM -> HBM copy).
    pub fn load(&mut self, dst: Ap, src: Ap) -> InstrRef {
        self.dma(DmaClass::Load, dst, src)
    }

    /// A store to HBM.
    pub fn store(&mut self, dst: Ap, src: Ap) -> InstrRef {
        self.dma(DmaClass::Store, dst, src)
    }

    /// HBM bytes moved by the DMAs of kernel `k` so far.
    pub fn kernel_hbm_bytes(&self, k: u32) -> u64 {
        self.kernel_hbm.get(k as usize).copied().unwrap_or(0)
    }

    /// Instructions emitted so far.
    pub fn instruction_count(&self) -> usize {
        self.streams.iter().map(Vec::len).sum()
    }

    /// The non-empty streams and the number of semaphores (one per possible stream).
    pub fn finish(self) -> (Vec<Stream>, u32) {
        let sems = self.engines.len() as u32;
        let streams = self
            .engines
            .into_iter()
            .zip(self.streams)
            .filter(|(_, instrs)| !instrs.is_empty())
            .map(|(engine, instrs)| Stream { engine, instrs })
            .collect();
        (streams, sems)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use neuron_isa::{ActFunc, Dtype, Operand, TensorId};

    fn tensors() -> Vec<HbmTensor> {
        vec![
            HbmTensor {
                name: "x".into(),
                kind: TensorKind::Input,
                shape: vec![128, 64],
                dtype: Dtype::F32,
            },
            HbmTensor {
                name: "y".into(),
                kind: TensorKind::Output,
                shape: vec![256, 64],
                dtype: Dtype::F32,
            },
        ]
    }

    fn sb(off: u64) -> Ap {
        Ap::on_chip(Memory::Sbuf, Dtype::F32, 0, 128, off, 64)
    }

    fn act(dst: Ap, src: Ap) -> Op {
        Op::Activation {
            dst,
            src,
            func: ActFunc::Exp,
            scale: Operand::Imm(1.0),
            bias: None,
            accum: None,
        }
    }

    #[test]
    fn raw_war_and_waw_get_waits_and_implied_ones_are_dropped() {
        let cfg = ChipConfig::trn1();
        let mut b = Builder::new(&cfg, &tensors(), false);
        let x = Ap::hbm_rows(TensorId(0), Dtype::F32, 0, 128, 64, 64);
        let l = b.load(sb(0), x.clone());
        assert!(
            b.streams[l.stream][0].wait.is_empty(),
            "inputs are never written"
        );
        let a = b.push(Engine::Scalar, act(sb(1024), sb(0)));
        assert_eq!(
            b.streams[a.stream][0].wait,
            vec![SemWait {
                sem: SemId(l.stream as u32),
                count: 1
            }],
            "read after the load's write"
        );
        // Overwriting the load buffer must wait for the activation's read (WAR); the load
        // itself is implied by the activation.
        let l2 = b.load(sb(0), x);
        assert_eq!(
            b.streams[l2.stream].last().unwrap().wait,
            vec![SemWait {
                sem: SemId(a.stream as u32),
                count: 1
            }]
        );
        // A store of the activation result waits for it; a store to disjoint rows of the
        // same output from another queue does not wait for the first store.
        let y0 = Ap::hbm_rows(TensorId(1), Dtype::F32, 0, 128, 64, 64);
        let y1 = Ap::hbm_rows(TensorId(1), Dtype::F32, 128 * 64 * 4, 128, 64, 64);
        let s0 = b.store(y0, sb(1024));
        let s1 = b.store(y1.clone(), sb(1024));
        assert_eq!(b.streams[s0.stream].last().unwrap().wait.len(), 1);
        let w1 = &b.streams[s1.stream].last().unwrap().wait;
        assert!(w1.iter().all(|w| w.sem.0 as usize != s0.stream), "{w1:?}");
        // Reading the output back (HBM RAW) waits for the store that wrote those rows.
        let r = b.load(sb(4096), y1);
        let w = &b.streams[r.stream].last().unwrap().wait;
        assert!(w.iter().any(|w| w.sem.0 as usize == s1.stream), "{w:?}");
        let (streams, sems) = b.finish();
        assert_eq!(sems, 4 + cfg.dma_queues);
        assert!(streams.iter().all(|s| !s.instrs.is_empty()));
    }

    #[test]
    fn transposed_stores_of_neighbouring_column_tiles_do_not_conflict() {
        // `[32 columns, 256 rows]` tiles stored transposed into y[256, 64]: partitions walk
        // the columns (stride 1 element), the free axis walks the rows (stride 64).
        let cfg = ChipConfig::trn1();
        let mut b = Builder::new(&cfg, &tensors(), false);
        let col_tile = |c0: u64| Ap {
            mem: Memory::Hbm(TensorId(1)),
            dtype: Dtype::F32,
            offset: c0 * 4,
            start_partition: 0,
            partitions: 32,
            partition_stride: 1,
            dims: vec![neuron_isa::Dim {
                size: 256,
                stride: 64,
            }],
        };
        let src = Ap::on_chip(Memory::Sbuf, Dtype::F32, 0, 32, 0, 256);
        let s0 = b.store(col_tile(0), src.clone());
        let s1 = b.store(col_tile(32), src.clone());
        let w1 = &b.streams[s1.stream].last().unwrap().wait;
        assert!(w1.iter().all(|w| w.sem.0 as usize != s0.stream), "{w1:?}");
        // The same columns again: a real WAW, which must wait.
        let s2 = b.store(col_tile(16), src);
        let w2 = &b.streams[s2.stream].last().unwrap().wait;
        assert!(
            w2.iter()
                .any(|w| [s0.stream, s1.stream].contains(&(w.sem.0 as usize))),
            "{w2:?}"
        );
    }

    #[test]
    fn disjoint_partitions_do_not_conflict() {
        let cfg = ChipConfig::trn1();
        let mut b = Builder::new(&cfg, &tensors(), false);
        let lo = Ap::on_chip(Memory::Sbuf, Dtype::F32, 0, 64, 0, 64);
        let hi = Ap::on_chip(Memory::Sbuf, Dtype::F32, 64, 64, 0, 64);
        b.push(
            Engine::Vector,
            Op::Memset {
                dst: lo,
                value: 0.0,
            },
        );
        let r = b.push(Engine::Scalar, act(sb(2048), hi));
        assert!(b.streams[r.stream][0].wait.is_empty());
    }
}
