//! Activations kept in SBUF between kernels.
//!
//! A value that crosses a kernel boundary is a scratch tensor in HBM: its producer stores
//! it with DMAs and each consumer loads it back. When the tensor is small and every one of
//! those transfers moves whole rows lane for lane (row `r` of the tensor to and from
//! partition `r % P` of a tile), it can live in SBUF instead: the stores and loads become
//! on-chip copies on VectorE/GpSimd between the kernels' tiles and the tensor's resident
//! region, and no byte of it touches HBM or a DMA engine.
//!
//! The layout of a resident tensor of `R` rows of `C` elements (stored in its HBM dtype):
//! row `r` lives on partition `r % P` at free element `(r / P) * C`, so it takes
//! `ceil(R / P) * C` elements per partition. `C` is chosen per tensor among the suffix
//! products of its shape ([`row_candidates`]): the last dimension for a matmul's rows, the
//! product `N * H * W` for a channel-major `[C, N, H, W]` conv map (its channels on
//! partitions, as every conv loads and stores them), whichever every access maps under.
//!
//! How the compiler decides ([`super::lower_program_resident`]):
//! 1. it lowers the program once with every scratch tensor in HBM, the builder noting each
//!    DMA that touches a scratch tensor, whether it maps lane for lane ([`map`]) and in
//!    which kernel ([`Probe`]);
//! 2. [`plan`]: the tensors whose every access maps get live ranges from the kernel graph
//!    (petgraph: the producing kernel to the last consumer, widened to every access the
//!    probe saw) and addresses first-fit in a region at the top of SBUF, at most
//!    [`budget`] bytes per partition; a tensor that does not fit stays in HBM;
//! 3. the kernels' buffers are allocated again below that region, for each of the
//!    [`budgets`]; [`estimate_ns`] prices each candidate that fits, and keeping every
//!    scratch tensor in HBM, from the first program's work ([`Work`]), and the program is
//!    lowered with the cheapest one's residents. If nothing is cheaper than all-HBM, or an
//!    access of a resident tensor does not map after all, the first program is kept.

use crate::kernel::{KTensorId, KernelGraph};
use neuron_isa::dma::{DmaCosts, DmaPlan};
use neuron_isa::{Ap, ChipConfig, Dtype, HbmTensor, Memory, TensorKind};
use petgraph::Direction;
use petgraph::graph::{DiGraph, NodeIndex};
use std::collections::BTreeMap;

/// Alignment of a resident tensor's bytes in each partition (as the allocator's).
const ALIGN: u64 = 64;

/// The SBUF bytes per partition resident tensors may take, largest first: half of SBUF,
/// then a quarter, then the eighth that tiling leaves every kernel as a reserve
/// (`tiling::sbuf_budget`). The back end keeps, among those under which every kernel's
/// buffers still fit below the region, and keeping every scratch tensor in HBM, the one
/// [`estimate_ns`] finds fastest ([`super::lower_program_resident`]): on ResNet-50 at
/// batch 16 (bf16) a half, which keeps layer 1's maps on chip; on GPT-2 at batch 1 an
/// eighth, which leaves the pinned weights more room.
pub fn budgets(cfg: &ChipConfig) -> [u64; 3] {
    [2, 4, 8].map(|d| cfg.sbuf_bytes_per_partition / d / ALIGN * ALIGN)
}

/// The largest resident budget ([`budgets`]), which cost models that run before tiling
/// (`passes::micro_batch`) assume.
pub fn budget(cfg: &ChipConfig) -> u64 {
    budgets(cfg)[0]
}

/// How much faster (a fraction) [`estimate_ns`] must find a smaller resident region (or
/// none) than a larger one for the back end to take it: differences below that are within
/// the first-order estimate's error (ViT-B/16 at batch 1 on trn1: an eighth estimated 1.3%
/// faster than a half, measured 1.2% slower), and the larger region is the one measured
/// best more often (ResNet-50, ViT-B/16).
pub const SMALLER_REGION_MARGIN: f64 = 0.02;

/// Most row candidates a tensor has ([`row_candidates`]).
pub const MAX_ROWS: usize = 8;

/// One scratch tensor's accesses seen while lowering.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Access {
    /// Bit `i`: every access mapped lane for lane with row candidate `i`.
    pub maps: u8,
    /// First and last kernel that touched it.
    pub first: u32,
    /// Last kernel that touched it.
    pub last: u32,
}

/// What the probing lowering saw, per tensor id.
#[derive(Debug, Clone, Default)]
pub struct Probe {
    /// Accesses by tensor-table index.
    pub seen: BTreeMap<u32, Access>,
}

impl Probe {
    /// Notes one access of tensor `t` by kernel `k` that maps under the row candidates of
    /// the bits of `maps`.
    pub fn note(&mut self, t: u32, k: u32, maps: u8) {
        let e = self.seen.entry(t).or_insert(Access {
            maps: u8::MAX,
            first: k,
            last: k,
        });
        e.maps &= maps;
        e.first = e.first.min(k);
        e.last = e.last.max(k);
    }
}

/// One resident tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resident {
    /// Byte offset of its region in each SBUF partition.
    pub base: u64,
    /// Elements per row (one of the tensor's [`row_candidates`]).
    pub row_elems: u64,
    /// Bytes per partition.
    pub bytes: u64,
}

/// The scratch tensors kept in SBUF and the region they take.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Residency {
    /// Resident tensors by tensor-table index.
    pub tensors: BTreeMap<u32, Resident>,
    /// Bytes per partition of the region (at the top of SBUF).
    pub region: u64,
}

/// The row lengths tensor `t` may be resident with, when it may be resident at all (a
/// scratch tensor of a dtype an on-chip copy moves exactly as a DMA does: same dtype, or
/// float to float): the suffix products of its shape, innermost first, the whole tensor
/// excluded (one row on one partition) unless it has one dimension. `[R, C]` has only
/// `C` (a matmul's rows); a channel-major conv map `[C, N, H, W]` has `W`, `H * W` and
/// `N * H * W`, the last putting channel `c` on partition `c % P`.
pub fn row_candidates(t: &HbmTensor) -> Option<Vec<u64>> {
    if t.kind != TensorKind::Scratch || t.dtype == Dtype::I64 {
        return None;
    }
    let mut rows = Vec::new();
    let mut prod: u64 = 1;
    for (i, &d) in t.shape.iter().enumerate().rev() {
        prod = prod.saturating_mul(d.max(1));
        if i == 0 && !rows.is_empty() {
            break;
        }
        if rows.last() != Some(&prod) {
            rows.push(prod);
        }
        if rows.len() == MAX_ROWS {
            break;
        }
    }
    if rows.is_empty() {
        rows.push(1);
    }
    Some(rows)
}

/// Bit `i` set when `hbm` <-> `chip` maps with row candidate `rows[i]` ([`map`]).
pub fn map_mask(hbm: &Ap, chip: &Ap, rows: &[u64], partitions: u32) -> u8 {
    rows.iter()
        .enumerate()
        .filter(|(_, r)| map(hbm, chip, **r, 0, partitions).is_some())
        .fold(0, |m, (i, _)| m | (1 << i))
}

/// Bytes per partition tensor `t` takes when resident on `partitions` partitions.
fn footprint(t: &HbmTensor, row: u64, partitions: u64) -> u64 {
    let rows = t.elems().max(1).div_ceil(row);
    let bytes = row_block_bytes(rows, row, t.dtype.size(), partitions);
    bytes.div_ceil(ALIGN).saturating_mul(ALIGN)
}

/// Bytes per partition (before alignment) of `rows` rows of `row` elements of `elem`
/// bytes in the resident layout: row `r` on partition `r % partitions`.
pub fn row_block_bytes(rows: u64, row: u64, elem: u64, partitions: u64) -> u64 {
    rows.div_ceil(partitions.max(1))
        .saturating_mul(row)
        .saturating_mul(elem)
}

/// Whether an on-chip copy between dtypes `a` and `b` rounds as the DMA's cast does.
fn copy_casts_like_dma(a: Dtype, b: Dtype) -> bool {
    let plain = |d: Dtype| matches!(d, Dtype::F32 | Dtype::Bf16 | Dtype::F16);
    a == b || (plain(a) && plain(b))
}

/// The SBUF pattern that `hbm` (a DMA side on a tensor of `row` elements per row, resident
/// at byte `base`) covers, when the DMA's other side `chip` (an SBUF tile) receives or
/// sends it lane for lane: the pattern's rows are consecutive tensor rows that land on
/// `chip`'s partitions, each within one tensor row, with element counts that match.
/// `None` when it does not map.
pub fn map(hbm: &Ap, chip: &Ap, row: u64, base: u64, partitions: u32) -> Option<Ap> {
    if !matches!(hbm.mem, Memory::Hbm(_))
        || chip.mem != Memory::Sbuf
        || !copy_casts_like_dma(hbm.dtype, chip.dtype)
        || hbm.partitions != chip.partitions
        || hbm.partitions == 0
        || partitions == 0
    {
        return None;
    }
    let el = hbm.dtype.size();
    if el == 0 || hbm.offset % el != 0 {
        return None;
    }
    let first = hbm.offset / el;
    let (r0, c0) = (first / row, first % row);
    if hbm.partitions > 1 && hbm.partition_stride != i64::try_from(row).ok()? {
        return None;
    }
    let p = u64::from(partitions);
    let p0 = r0 % p;
    if p0 != u64::from(chip.start_partition) || p0 + u64::from(hbm.partitions) > p {
        return None;
    }
    let mut span: u64 = 0;
    let mut elems: u64 = 1;
    for d in &hbm.dims {
        elems = elems.checked_mul(u64::from(d.size))?;
        if d.size > 1 {
            let stride = u64::try_from(d.stride).ok()?;
            span = span.checked_add(stride.checked_mul(u64::from(d.size) - 1)?)?;
        }
    }
    let chip_elems: u64 = chip.dims.iter().map(|d| u64::from(d.size)).product();
    if c0 + span >= row || elems != chip_elems {
        return None;
    }
    Some(Ap {
        mem: Memory::Sbuf,
        dtype: hbm.dtype,
        offset: base.checked_add(((r0 / p) * row + c0).checked_mul(el)?)?,
        start_partition: chip.start_partition,
        partitions: hbm.partitions,
        partition_stride: 1,
        dims: hbm.dims.clone(),
    })
}

/// Live ranges `[first, last]` in kernel order of the tensors the kernel graph passes
/// between kernels: the producing kernel to the last kernel that reads it.
pub fn live_ranges(kg: &KernelGraph) -> BTreeMap<u32, (u32, u32)> {
    let mut g: DiGraph<u32, KTensorId> = DiGraph::new();
    let nodes: Vec<NodeIndex> = (0..kg.kernels.len() as u32)
        .map(|i| g.add_node(i))
        .collect();
    let mut producer: BTreeMap<KTensorId, NodeIndex> = BTreeMap::new();
    let mut ranges: BTreeMap<u32, (u32, u32)> = BTreeMap::new();
    for (i, k) in kg.kernels.iter().enumerate() {
        for v in &k.inputs {
            if let Some(&p) = producer.get(&v.tensor) {
                g.update_edge(p, nodes[i], v.tensor);
            }
        }
        let t = k.output.tensor;
        producer.entry(t).or_insert(nodes[i]);
        let r = ranges.entry(t.0).or_insert((i as u32, i as u32));
        r.1 = r.1.max(i as u32);
    }
    for (t, &p) in &producer {
        let last = g
            .edges_directed(p, Direction::Outgoing)
            .filter(|e| e.weight() == t)
            .map(|e| g[petgraph::visit::EdgeRef::target(&e)])
            .max();
        if let (Some(last), Some(r)) = (last, ranges.get_mut(&t.0)) {
            r.1 = r.1.max(last);
        }
    }
    ranges
}

/// Chooses the resident tensors: those whose every access mapped, by first access, each at
/// the lowest address of the region that no tensor live at the same time holds, while the
/// region stays within `cap` bytes per partition (one of [`budgets`]).
pub fn plan(
    kg: &KernelGraph,
    probe: &Probe,
    tensors: &[HbmTensor],
    cfg: &ChipConfig,
    cap: u64,
) -> Residency {
    let ranges = live_ranges(kg);
    let mut cands: Vec<(u32, u32, u32, u64, u64)> = Vec::new();
    for (&t, a) in &probe.seen {
        let Some(ht) = tensors.get(t as usize) else {
            continue;
        };
        let Some(rows) = row_candidates(ht) else {
            continue;
        };
        // The smallest footprint among the rows every access maps under (the innermost on
        // a tie: a matmul's rows keep their last dimension).
        let Some((bytes, row)) = rows
            .iter()
            .enumerate()
            .filter(|(i, _)| a.maps & (1 << i) != 0)
            .map(|(_, &r)| (footprint(ht, r, u64::from(cfg.partitions)), r))
            .min_by_key(|&(b, _)| b)
        else {
            continue;
        };
        let (mut first, mut last) = (a.first, a.last);
        if let Some(&(f, l)) = ranges.get(&t) {
            first = first.min(f);
            last = last.max(l);
        }
        if bytes <= cap {
            cands.push((first, last, t, row, bytes));
        }
    }
    cands.sort_unstable();
    let mut placed: Vec<(u32, u32, u64, u64)> = Vec::new();
    let mut out = Residency::default();
    for (first, last, t, row, bytes) in cands {
        let mut busy: Vec<(u64, u64)> = placed
            .iter()
            .filter(|p| p.0 <= last && first <= p.1)
            .map(|p| (p.2, p.2 + p.3))
            .collect();
        busy.sort_unstable();
        let mut off = 0;
        for (lo, hi) in busy {
            if off + bytes <= lo {
                break;
            }
            off = off.max(hi);
        }
        if off + bytes > cap {
            continue;
        }
        placed.push((first, last, off, bytes));
        out.region = out.region.max(off + bytes);
        out.tensors.insert(
            t,
            Resident {
                base: off,
                row_elems: row,
                bytes,
            },
        );
    }
    // Offsets so far count from the region's start; the region is the top of SBUF.
    let start = cfg.sbuf_bytes_per_partition - out.region;
    for r in out.tensors.values_mut() {
        r.base += start;
    }
    out
}

/// Time, ns, that a DMA of `bytes` described by `plan` takes all the DMA engines
/// together: the bytes at the engines' cost per byte (`neuron_isa::dma`, the rule the
/// simulator's DMA model uses: descriptors, each a contiguous run within one partition,
/// costing `dma_descriptor_overhead_bytes` more at the engines' rate, and transposing
/// DMAs at their efficiency).
pub fn dma_engine_ns(plan: &DmaPlan, bytes: u64, cfg: &ChipConfig) -> f64 {
    let rate = f64::from(cfg.dma_engines.max(1)) * cfg.dma_engine_bytes_per_ns.max(1e-3);
    bytes as f64 * DmaCosts::of(cfg).per_byte(plan) / rate
}

/// What a lowered program asks of the engines, per kernel: the input of the first-order
/// estimate ([`estimate_ns`]).
#[derive(Debug, Clone, Default)]
pub struct Work {
    /// `(bytes, transfers, engine ns)` by `(kernel, tensor-table index)`: the HBM bytes
    /// each kernel's DMAs move to or from each tensor, how many DMAs do, and how long they
    /// take all the DMA engines together ([`dma_engine_ns`]). An HBM to HBM copy counts on
    /// both tensors; a gather moves one table row per destination partition.
    pub dma: BTreeMap<(u32, u32), (u64, u64, f64)>,
    /// Per kernel, the busy time of TensorE, VectorE, ScalarE and GpSimd, ns, at the
    /// documented first-order rates (trainium.md 2.3): a matmul `max(min(64, M), N)` cycles
    /// (times the dtype's factor), a transpose `max(P, min(64, F))`, any other instruction
    /// the access overhead plus `max(64, N)` cycles for `N` elements per partition written,
    /// twice that with two tensor inputs.
    pub engines: Vec<[f64; 4]>,
}

impl Work {
    /// The work of `program` under `cfg`'s rates.
    pub fn of(program: &neuron_isa::Program, cfg: &ChipConfig) -> Work {
        use neuron_isa::{Engine, Op};
        let cm = super::tiling::CostModel::new(cfg);
        let mut w = Work {
            dma: BTreeMap::new(),
            engines: vec![[0.0; 4]; program.kernels.len()],
        };
        let mut add = |k: u32, ap: &Ap, bytes: u64, ns: f64| {
            if let Memory::Hbm(t) = ap.mem {
                let e = w.dma.entry((k, t.0)).or_default();
                e.0 += bytes;
                e.1 += 1;
                e.2 += ns;
            }
        };
        for s in &program.streams {
            let (slot, ghz) = match s.engine {
                Engine::Tensor => (0, cfg.tensor_clock_ghz),
                Engine::Vector => (1, cfg.vector_clock_ghz),
                Engine::Scalar => (2, cfg.scalar_clock_ghz),
                Engine::GpSimd => (3, cfg.gpsimd_clock_ghz),
                Engine::Dma(_) => (4, 1.0),
            };
            for i in &s.instrs {
                let cycles = match &i.op {
                    Op::Dma { dst, src } => {
                        if let Some(plan) = DmaPlan::of(&i.op) {
                            let ns = dma_engine_ns(&plan, plan.bytes, cfg);
                            add(i.kernel, dst, dst.bytes(), ns);
                            add(i.kernel, src, src.bytes(), ns);
                        }
                        continue;
                    }
                    Op::DmaGather { table, .. } => {
                        if let Some(plan) = DmaPlan::of(&i.op) {
                            let b = plan.hbm_read;
                            add(i.kernel, table, b, dma_engine_ns(&plan, b, cfg));
                        }
                        continue;
                    }
                    Op::Matmul {
                        stationary, moving, ..
                    } => cm.matmul_cycles(
                        stationary.free_elems() as usize,
                        moving.free_elems() as usize,
                        moving.dtype,
                    ),
                    Op::Transpose { src, .. } => {
                        cm.transpose_cycles(src.partitions as usize, src.free_elems() as usize)
                    }
                    op => {
                        let n = op
                            .writes()
                            .iter()
                            .map(|a| a.free_elems())
                            .max()
                            .unwrap_or(0);
                        let inputs = op
                            .reads()
                            .iter()
                            .filter(|a| a.free_elems() > 1)
                            .count()
                            .clamp(1, 2) as u64;
                        (cfg.access_overhead_cycles + (n * inputs).max(64)) as f64
                    }
                };
                if let Some(e) = w.engines.get_mut(i.kernel as usize) {
                    if slot < 4 {
                        e[slot] += cycles / ghz.max(1e-9);
                    }
                }
            }
        }
        w
    }
}

/// The first-order estimate of a whole program's time, ns, when `residency` stays on chip
/// and the kernels' buffers are placed as `alloc` says, from the `work` of the program
/// lowered with every scratch tensor in HBM: what [`super::lower_program_resident`]
/// compares its candidate budgets (and keeping every scratch tensor in HBM) by. Two
/// effects pull in opposite directions: a larger region keeps more scratch tensors on chip
/// (their DMA bytes and transfers go away), but leaves the kernels' buffers, and the
/// pinned weights (the weight ring) among them, less room below it, so weights load less
/// far ahead of the kernels that need them.
///
/// Kernels run one after another. Kernel `k` takes the longest of its engines' busy times
/// ([`Work::engines`]) and its own DMA time: the DMA engines' time of its transfers
/// ([`dma_engine_ns`]: descriptors and transposes as the DMA model prices them) or HBM's,
/// whichever is longer, plus each transfer's fixed latency spread over the queues (as
/// `tiling::CostModel::dma_ns`; trainium.md 2.3 and 3), for its traffic less the accesses
/// of its resident tensors and less the weights it loads ahead. The
/// DMAs of a resident tensor become copies on VectorE and GpSimd in turn (the access
/// overhead plus one element per cycle), except in a convolution, which reads and writes
/// resident maps in place. The weights a kernel's weight buffer (`w`) holds load ahead, on
/// one stream in kernel order, once the last earlier kernel with a buffer on those bytes
/// has finished (the weight ring's reuse, or the allocator's window of kernels kept
/// apart), in the DMA time the kernels' own traffic leaves; a kernel ends no earlier than
/// its weights have arrived. Deterministic; linear in the DMA entries, quadratic in the
/// kernels at worst.
pub fn estimate_ns(
    kg: &KernelGraph,
    plans: &[super::tiling::KernelPlan],
    work: &Work,
    residency: &Residency,
    alloc: &super::alloc::Allocation,
    cfg: &ChipConfig,
) -> f64 {
    // DMA time: the engines' time or HBM's, whichever is longer, plus each transfer's
    // fixed latency spread over the queues (as `tiling::CostModel::dma_ns`).
    let hbm_bw = cfg.hbm_bandwidth_bytes_per_ns.max(1e-3);
    let per = cfg.dma_fixed_latency_ns / f64::from(cfg.dma_queues.max(1));
    let dma_ns =
        |bytes: f64, transfers: f64, engines: f64| engines.max(bytes / hbm_bw) + transfers * per;
    let p = f64::from(cfg.partitions.max(1));
    let vec_ghz = cfg.vector_clock_ghz.max(1e-9);
    let n = kg.kernels.len();
    // Per kernel: DMA bytes and transfers that stay, weight bytes and transfers, and the
    // elements per partition copied on chip instead.
    let mut dma = vec![(0u64, 0u64, 0f64); n];
    let mut wts = vec![(0u64, 0u64, 0f64); n];
    let mut copy_elems = vec![0f64; n];
    let mut copy_count = vec![0u64; n];
    for (&(k, t), &(b, c, e)) in &work.dma {
        let k = k as usize;
        if k >= n {
            continue;
        }
        let tensor = kg.tensors.get(t as usize);
        if residency.tensors.contains_key(&t) {
            let el = tensor.map_or(4, |x| x.dtype.size()).max(1);
            copy_elems[k] += (b / el) as f64 / p;
            copy_count[k] += c;
            continue;
        }
        if tensor.is_some_and(|x| x.kind == TensorKind::Weight) {
            wts[k].0 += b;
            wts[k].1 += c;
            wts[k].2 += e;
        } else {
            dma[k].0 += b;
            dma[k].1 += c;
            dma[k].2 += e;
        }
    }
    // Per kernel: the SBUF byte ranges of all its buffers, and of its weight buffer `w`.
    let span = |b: &super::alloc::Buf| (b.base, b.base + b.slot_bytes * u64::from(b.slots));
    let sbuf = |b: &&super::alloc::Buf| b.mem == super::alloc::OnChip::Sbuf;
    let all: Vec<Vec<(u64, u64)>> = alloc
        .kernels
        .iter()
        .map(|ka| ka.bufs.iter().filter(sbuf).map(span).collect())
        .collect();
    let wbuf: Vec<Vec<(u64, u64)>> = alloc
        .kernels
        .iter()
        .map(|ka| {
            ka.bufs
                .iter()
                .filter(sbuf)
                .filter(|b| b.name == "w")
                .map(span)
                .collect()
        })
        .collect();
    // The kernels' own DMA time, as busy intervals of the DMA engines.
    let mut busy: Vec<(f64, f64)> = Vec::with_capacity(n);
    let mut ends = vec![0f64; n];
    let (mut end, mut wpipe) = (0f64, 0f64);
    for k in 0..n {
        let mine = wbuf.get(k).map_or(&[][..], |r| &r[..]);
        // The weights its weight buffer holds load ahead (all of them when it is pinned or
        // holds the whole tensor, else its slots' worth); the rest streams with the kernel.
        let room: u64 = mine.iter().map(|r| r.1 - r.0).sum::<u64>() * u64::from(cfg.partitions);
        let (wb, wc, we) = wts[k];
        let pre = wb.min(room);
        let frac = if wb > 0 { pre as f64 / wb as f64 } else { 0.0 };
        let pre_ns = dma_ns(pre as f64, wc as f64 * frac, we * frac);
        let own_dma = dma_ns(
            (dma[k].0 + (wb - pre)) as f64,
            dma[k].1 as f64 + wc as f64 * (1.0 - frac),
            dma[k].2 + we * (1.0 - frac),
        );
        // The resident tensors' DMAs become copies on VectorE and GpSimd in turn.
        // (A convolution reads and writes them in place: no copies.)
        let mut eng = work.engines.get(k).copied().unwrap_or([0.0; 4]);
        if matches!(
            plans.get(k).map(|p| &p.tiling),
            Some(super::tiling::Tiling::Conv(_))
        ) {
            copy_elems[k] = 0.0;
            copy_count[k] = 0;
        }
        let copies = (copy_elems[k] + (copy_count[k] * cfg.access_overhead_cycles) as f64) / 2.0;
        eng[1] += copies / vec_ghz;
        eng[3] += copies / cfg.gpsimd_clock_ghz.max(1e-9);
        let compute = eng.iter().fold(0f64, |a, &b| a.max(b));
        let start = end;
        busy.push((start, start + own_dma));
        let mut fin = start + compute.max(own_dma);
        if pre > 0 {
            // Waits for the last kernel with a buffer on the bytes of this one's weights.
            let release = (0..k)
                .rev()
                .find(|&j| {
                    all.get(j).is_some_and(|r| {
                        r.iter()
                            .any(|a| mine.iter().any(|b| a.0 < b.1 && b.0 < a.1))
                    })
                })
                .map_or(0.0, |j| ends[j]);
            let mut t = wpipe.max(release);
            let mut left = pre_ns;
            for &(lo, hi) in &busy {
                if hi <= t {
                    continue;
                }
                if lo > t {
                    if lo - t >= left {
                        break;
                    }
                    left -= lo - t;
                }
                t = t.max(hi);
            }
            t += left;
            wpipe = t;
            fin = fin.max(t);
        }
        ends[k] = fin;
        end = fin;
    }
    end
}

#[cfg(test)]
mod tests {
    use super::*;
    use neuron_isa::TensorId;

    #[test]
    fn whole_rows_map_lane_for_lane_and_columns_do_not() {
        // A [128, 768] f32 tensor, stored rows 0..128, loaded as a bf16 tile.
        let rows = Ap::hbm_rows(TensorId(3), Dtype::F32, 0, 128, 768, 768);
        let tile = Ap::on_chip(Memory::Sbuf, Dtype::Bf16, 0, 128, 1024, 768);
        let m = map(&rows, &tile, 768, 4096, 128).unwrap();
        assert_eq!((m.offset, m.partitions, m.start_partition), (4096, 128, 0));
        assert_eq!(m.dtype, Dtype::F32);
        // Columns 64..128 of every row: offset 64 elements into each partition's row.
        let cols = Ap::hbm_rows(TensorId(3), Dtype::F32, 64 * 4, 128, 768, 64);
        let t64 = Ap::on_chip(Memory::Sbuf, Dtype::F32, 0, 128, 0, 64);
        assert_eq!(map(&cols, &t64, 768, 0, 128).unwrap().offset, 256);
        // A row that runs past the tensor's row does not map.
        let past = Ap::hbm_rows(TensorId(3), Dtype::F32, 720 * 4, 128, 768, 64);
        assert!(map(&past, &t64, 768, 0, 128).is_none());
        // Rows every other tensor row (a strided view) do not map.
        let strided = Ap::hbm_rows(TensorId(3), Dtype::F32, 0, 64, 1536, 64);
        let t = Ap::on_chip(Memory::Sbuf, Dtype::F32, 0, 64, 0, 64);
        assert!(map(&strided, &t, 768, 0, 128).is_none());
        // Rows 128..256 land on partitions 0..128 of the second row block.
        let second = Ap::hbm_rows(TensorId(3), Dtype::F32, 128 * 768 * 4, 128, 768, 768);
        assert_eq!(map(&second, &tile, 768, 0, 128).unwrap().offset, 768 * 4);
        // Integer to float is a cast the DMA and a copy do differently: no.
        let ints = Ap::hbm_rows(TensorId(3), Dtype::I32, 0, 128, 768, 768);
        assert!(map(&ints, &tile, 768, 0, 128).is_none());
    }

    #[test]
    fn a_channel_major_conv_band_maps_with_channels_on_partitions_and_a_shifted_one_does_not() {
        // A channel-major [C, N, H, W] = [192, 4, 8, 8] bf16 conv map: candidates W, H W
        // and N H W (the whole tensor is not one).
        let t = scratch(&[192, 4, 8, 8], Dtype::Bf16);
        let rows = row_candidates(&t).unwrap();
        assert_eq!(rows, vec![8, 64, 256]);
        assert_eq!(
            row_candidates(&scratch(&[128, 768], Dtype::F32)).unwrap(),
            vec![768]
        );
        // A conv band: channels 0..128 on partitions 0..128 (partition stride N H W),
        // image 1's input rows 2..7 (one contiguous run of 40 elements).
        let band = Ap::hbm_rows(TensorId(1), Dtype::Bf16, (64 + 16) * 2, 128, 256, 40);
        let tile = Ap::on_chip(Memory::Sbuf, Dtype::Bf16, 0, 128, 0, 40);
        assert_eq!(map_mask(&band, &tile, &rows, 128), 0b100);
        let m = map(&band, &tile, 256, 1024, 128).unwrap();
        assert_eq!((m.offset, m.partition_stride), (1024 + 80 * 2, 1));
        // Channels 128..192 sit on partitions 0..64 of the second row block.
        let high = Ap::hbm_rows(TensorId(1), Dtype::Bf16, 128 * 256 * 2, 64, 256, 256);
        let t64 = Ap::on_chip(Memory::Sbuf, Dtype::Bf16, 0, 64, 0, 256);
        assert_eq!(map(&high, &t64, 256, 0, 128).unwrap().offset, 256 * 2);
        // The same band shifted down to partition 64 (a stacked kernel-row block, or an
        // image-packed slot) is not lane for lane under any candidate.
        let band64 = Ap::hbm_rows(TensorId(1), Dtype::Bf16, (64 + 16) * 2, 64, 256, 40);
        let shifted = Ap::on_chip(Memory::Sbuf, Dtype::Bf16, 64, 64, 0, 40);
        assert_eq!(map_mask(&band64, &shifted, &rows, 128), 0);
        // Kernel rows on partitions (partition stride W, the (channel, kernel row) stack)
        // do not map with channels on partitions.
        let stack = Ap::hbm_rows(TensorId(1), Dtype::Bf16, 16 * 2, 7, 8, 8);
        let t7 = Ap::on_chip(Memory::Sbuf, Dtype::Bf16, 0, 7, 0, 8);
        assert_eq!(map_mask(&stack, &t7, &rows, 128) & 0b100, 0);
        // A plan takes the candidate every access mapped under: N H W, one row block and a
        // half of 256 bf16 elements = 2 * 512 bytes per partition.
        let cfg = ChipConfig::trn1();
        let kg = no_kernels();
        let mut probe = Probe::default();
        probe.note(0, 0, 0b100);
        probe.note(0, 1, 0b110);
        let r = plan(&kg, &probe, std::slice::from_ref(&t), &cfg, budget(&cfg));
        assert_eq!(r.tensors[&0].row_elems, 256);
        assert_eq!(r.tensors[&0].bytes, 1024);
        // One access that maps under no candidate keeps it in HBM.
        probe.note(0, 2, 0);
        assert!(
            plan(&kg, &probe, &[t], &cfg, budget(&cfg))
                .tensors
                .is_empty()
        );
    }

    /// A kernel graph without kernels (the plans' live ranges then come from the probe).
    fn no_kernels() -> KernelGraph {
        KernelGraph {
            name: "t".into(),
            seed: 0,
            tensors: Vec::new(),
            kernels: Vec::new(),
            inputs: Vec::new(),
            outputs: Vec::new(),
        }
    }

    fn scratch(shape: &[u64], dtype: Dtype) -> HbmTensor {
        HbmTensor {
            name: "s".into(),
            kind: TensorKind::Scratch,
            shape: shape.to_vec(),
            dtype,
        }
    }

    #[test]
    fn tensors_live_at_different_times_share_bytes_and_the_budget_is_kept() {
        let cfg = ChipConfig::trn1();
        let kg = no_kernels();
        // [128, 768] f32: 3 KiB per partition each. T0 lives in kernels 0..1, T1 in 1..2
        // (overlaps T0), T2 in 2..3 (after T0: reuses its bytes). T3 is too large for the
        // budget, T4 had an access that did not map, T5 is a weight.
        let mut tensors = vec![scratch(&[128, 768], Dtype::F32); 4];
        tensors[3] = scratch(&[128, 768 * 64], Dtype::F32);
        tensors.push(scratch(&[128, 768], Dtype::F32));
        let mut w = scratch(&[128, 768], Dtype::F32);
        w.kind = TensorKind::Weight;
        tensors.push(w);
        let mut probe = Probe::default();
        for (t, k0, k1) in [(0, 0, 1), (1, 1, 2), (2, 2, 3), (3, 0, 3), (5, 0, 3)] {
            probe.note(t, k0, 1);
            probe.note(t, k1, 1);
        }
        probe.note(4, 0, 1);
        probe.note(4, 1, 0);
        let r = plan(&kg, &probe, &tensors, &cfg, budget(&cfg));
        let ids: Vec<u32> = r.tensors.keys().copied().collect();
        assert_eq!(ids, vec![0, 1, 2]);
        assert_eq!(r.region, 2 * 3072);
        let top = cfg.sbuf_bytes_per_partition;
        assert_eq!(r.tensors[&0].base, top - 2 * 3072);
        assert_eq!(r.tensors[&1].base, top - 3072);
        assert_eq!(r.tensors[&2].base, r.tensors[&0].base);
        assert!(r.region <= budget(&cfg));
    }
}
