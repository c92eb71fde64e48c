//! Activations kept in SBUF between kernels.
//!
//! A value that crosses a kernel boundary is a scratch tensor in HBM: its producer stores
//! it with DMAs and each consumer loads it back. When the tensor is small and every one of
//! those transfers moves whole rows lane for lane (row `r` of the tensor to and from
//! partition `r % P` of a tile), it can live in SBUF instead: the stores and loads become
//! on-chip copies on VectorE/GpSimd between the kernels' tiles and the tensor's resident
//! region, and no byte of it touches HBM or a DMA engine.
//!
//! The layout of a resident tensor of `R` rows of `C` elements (`C` its last dimension,
//! stored in its HBM dtype): row `r` lives on partition `r % P` at free element
//! `(r / P) * C`, so it takes `ceil(R / P) * C` elements per partition.
//!
//! How the compiler decides ([`super::lower_program_resident`]):
//! 1. it lowers the program once with every scratch tensor in HBM, the builder noting each
//!    DMA that touches a scratch tensor, whether it maps lane for lane ([`map`]) and in
//!    which kernel ([`Probe`]);
//! 2. [`plan`]: the tensors whose every access maps get live ranges from the kernel graph
//!    (petgraph: the producing kernel to the last consumer, widened to every access the
//!    probe saw) and addresses first-fit in a region at the top of SBUF, at most
//!    [`budget`] bytes per partition; a tensor that does not fit stays in HBM;
//! 3. the kernels' buffers are allocated again below that region and the program is
//!    lowered with the residents. If the allocation does not fit, or an access of a
//!    resident tensor does not map after all, the first (all-HBM) program is kept.

use crate::kernel::{KTensorId, KernelGraph};
use neuron_isa::{Ap, ChipConfig, Dtype, HbmTensor, Memory, TensorKind};
use petgraph::Direction;
use petgraph::graph::{DiGraph, NodeIndex};
use std::collections::BTreeMap;

/// Alignment of a resident tensor's bytes in each partition (as the allocator's).
const ALIGN: u64 = 64;

/// SBUF bytes per partition resident tensors may take: the eighth of SBUF that tiling
/// leaves every kernel as a reserve (`tiling::sbuf_budget`).
pub fn budget(cfg: &ChipConfig) -> u64 {
    cfg.sbuf_bytes_per_partition / 8 / ALIGN * ALIGN
}

/// One scratch tensor's accesses seen while lowering.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Access {
    /// Every access mapped lane for lane.
    pub maps: bool,
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
    /// Notes one access of tensor `t` by kernel `k`.
    pub fn note(&mut self, t: u32, k: u32, maps: bool) {
        let e = self.seen.entry(t).or_insert(Access {
            maps: true,
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
    /// Elements per row (the tensor's last dimension).
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

/// Elements per row of tensor `t` when it may be resident at all: a scratch tensor of a
/// dtype an on-chip copy moves exactly as a DMA does (same dtype, or float to float).
pub fn row_elems(t: &HbmTensor) -> Option<u64> {
    if t.kind != TensorKind::Scratch || t.dtype == Dtype::I64 {
        return None;
    }
    Some(t.shape.last().copied().unwrap_or(1).max(1))
}

/// Bytes per partition tensor `t` takes when resident on `partitions` partitions.
fn footprint(t: &HbmTensor, row: u64, partitions: u64) -> u64 {
    let rows = t.elems().max(1).div_ceil(row);
    let bytes = rows
        .div_ceil(partitions.max(1))
        .saturating_mul(row)
        .saturating_mul(t.dtype.size());
    bytes.div_ceil(ALIGN).saturating_mul(ALIGN)
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
/// region stays within [`budget`].
pub fn plan(kg: &KernelGraph, probe: &Probe, tensors: &[HbmTensor], cfg: &ChipConfig) -> Residency {
    let ranges = live_ranges(kg);
    let cap = budget(cfg);
    let mut cands: Vec<(u32, u32, u32, u64, u64)> = Vec::new();
    for (&t, a) in &probe.seen {
        let Some(ht) = tensors.get(t as usize) else {
            continue;
        };
        let Some(row) = row_elems(ht) else {
            continue;
        };
        if !a.maps {
            continue;
        }
        let (mut first, mut last) = (a.first, a.last);
        if let Some(&(f, l)) = ranges.get(&t) {
            first = first.min(f);
            last = last.max(l);
        }
        let bytes = footprint(ht, row, u64::from(cfg.partitions));
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
        let kg = KernelGraph {
            name: "t".into(),
            seed: 0,
            tensors: Vec::new(),
            kernels: Vec::new(),
            inputs: Vec::new(),
            outputs: Vec::new(),
        };
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
            probe.note(t, k0, true);
            probe.note(t, k1, true);
        }
        probe.note(4, 0, true);
        probe.note(4, 1, false);
        let r = plan(&kg, &probe, &tensors, &cfg);
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
