//! SBUF and PSUM allocation.
//!
//! Each kernel asks for a few named buffers (a [`BufferReq`]: bytes per partition per
//! slot, and a number of slots to rotate through for double or triple buffering). A kernel's
//! buffers are packed contiguously, SBUF slots aligned to 64 bytes and PSUM slots to whole
//! banks (an accumulation group must stay inside one bank).
//!
//! A kernel's buffers avoid those of the previous [`WINDOW`] kernels when they fit (first
//! fit), so the next kernels' first loads (weights above all) can run while earlier kernels
//! still compute. When they do not fit, a kernel overlaps its predecessors' buffers; the
//! builder's hazard tracking then orders the reuse, so this is never a correctness
//! question, only one of overlap.

use neuron_isa::{Ap, ChipConfig, Dtype, Memory};

/// An on-chip memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OnChip {
    /// The state buffer.
    Sbuf,
    /// The partial-sum buffer.
    Psum,
}

impl OnChip {
    /// The ISA memory.
    pub fn memory(self) -> Memory {
        match self {
            OnChip::Sbuf => Memory::Sbuf,
            OnChip::Psum => Memory::Psum,
        }
    }
}

/// A kernel's request for one buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BufferReq {
    /// Name, unique within the kernel (the lowering code looks buffers up by it).
    pub name: String,
    /// Which memory.
    pub mem: OnChip,
    /// Bytes per partition of one slot.
    pub bytes: u64,
    /// Number of slots (2 = double-buffered).
    pub slots: u32,
    /// Written once and only read afterwards (a matmul's whole W): the allocator keeps it
    /// apart from every other buffer of the program when SBUF allows, so its loads need not
    /// wait for any earlier kernel; when not all of them fit, they stream through a ring
    /// at the top of SBUF (see [`allocate`]), apart from every non-pinned buffer.
    pub pinned: bool,
}

impl BufferReq {
    /// An SBUF buffer.
    pub fn sbuf(name: &str, bytes: u64, slots: u32) -> BufferReq {
        BufferReq {
            name: name.into(),
            mem: OnChip::Sbuf,
            bytes,
            slots,
            pinned: false,
        }
    }

    /// The same request, marked [`BufferReq::pinned`].
    pub fn pinned(self) -> BufferReq {
        BufferReq {
            pinned: true,
            ..self
        }
    }

    /// A PSUM buffer.
    pub fn psum(name: &str, bytes: u64, slots: u32) -> BufferReq {
        BufferReq {
            name: name.into(),
            mem: OnChip::Psum,
            bytes,
            slots,
            pinned: false,
        }
    }
}

/// An allocated buffer: `slots` slots of `slot_bytes` per partition starting at `base`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Buf {
    /// Name from the request.
    pub name: String,
    /// Which memory.
    pub mem: OnChip,
    /// Byte offset of slot 0 within each partition.
    pub base: u64,
    /// Distance between slots (the request rounded up to the alignment).
    pub slot_bytes: u64,
    /// Number of slots.
    pub slots: u32,
    /// Placed apart from every other buffer of the program (see [`BufferReq::pinned`]).
    pub pinned: bool,
}

impl Buf {
    /// Byte offset of slot `i` (taken modulo the slot count, so callers can rotate with a
    /// running counter).
    pub fn slot(&self, i: usize) -> u64 {
        self.base + (i % self.slots.max(1) as usize) as u64 * self.slot_bytes
    }

    /// A dense tile `[partitions, free]` of `dtype` at the start of slot `i`.
    pub fn tile(&self, i: usize, dtype: Dtype, partitions: u32, free: u32) -> Ap {
        Ap::on_chip(self.mem.memory(), dtype, 0, partitions, self.slot(i), free)
    }

    /// Like [`Buf::tile`], `byte_off` bytes into the slot.
    pub fn tile_at(&self, i: usize, byte_off: u64, dtype: Dtype, partitions: u32, free: u32) -> Ap {
        Ap::on_chip(
            self.mem.memory(),
            dtype,
            0,
            partitions,
            self.slot(i) + byte_off,
            free,
        )
    }
}

/// The buffers of one kernel.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct KernelAlloc {
    /// Buffers in request order.
    pub bufs: Vec<Buf>,
    /// SBUF bytes per partition this kernel occupies.
    pub sbuf_bytes: u64,
    /// PSUM bytes per partition this kernel occupies.
    pub psum_bytes: u64,
}

impl KernelAlloc {
    /// The buffer named `name`.
    pub fn get(&self, name: &str) -> Option<&Buf> {
        self.bufs.iter().find(|b| b.name == name)
    }
}

/// The allocation of every kernel.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Allocation {
    /// One entry per kernel.
    pub kernels: Vec<KernelAlloc>,
    /// Largest SBUF bytes per partition in use at once (a kernel plus the previous one
    /// when they coexist).
    pub peak_sbuf: u64,
    /// Largest PSUM bytes per partition in use at once.
    pub peak_psum: u64,
    /// SBUF bytes per partition of the pinned region (0: nothing pinned).
    pub pinned_sbuf: u64,
    /// The pinned region is a ring the pinned buffers stream through (see [`ring_pins`]):
    /// a pinned buffer's loads may wait for an earlier kernel that used the same bytes.
    pub weight_ring: bool,
    /// Scratch tensors kept in SBUF between kernels, in a region above everything else
    /// (see [`super::resident`]; empty when all of them are in HBM).
    pub resident: super::resident::Residency,
}

/// Why a kernel's buffers cannot be placed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllocError {
    /// Kernel index.
    pub kernel: usize,
    /// What does not fit, expected vs found.
    pub message: String,
}

const SBUF_ALIGN: u64 = 64;

fn align(x: u64, a: u64) -> u64 {
    x.div_ceil(a.max(1)) * a.max(1)
}

/// Bytes per partition of one request (all slots).
fn req_bytes(r: &BufferReq, granule: u64) -> u64 {
    align(r.bytes.max(1), granule) * u64::from(r.slots.max(1))
}

/// Footprint of a request list in one memory, leaving out the requests placed in the
/// pinned region (`pins[i]` is `Some(base)` for those).
fn footprint(reqs: &[BufferReq], pins: &[Option<u64>], mem: OnChip, granule: u64) -> u64 {
    reqs.iter()
        .zip(pins)
        .filter(|(r, p)| r.mem == mem && p.is_none())
        .map(|(r, _)| req_bytes(r, granule))
        .sum()
}

/// Places [`BufferReq::pinned`] SBUF requests at the top of SBUF, each apart from every
/// other buffer of the program, in kernel order, as long as every kernel's other buffers
/// still fit below them. Returns per kernel and request the pinned base, and the bytes
/// per partition the pinned region takes.
fn choose_pins(requests: &[Vec<BufferReq>], cap: u64) -> (Vec<Vec<Option<u64>>>, u64) {
    let mut pins: Vec<Vec<Option<u64>>> =
        requests.iter().map(|reqs| vec![None; reqs.len()]).collect();
    let mut total = 0u64;
    for k in 0..requests.len() {
        for i in 0..requests[k].len() {
            let r = &requests[k][i];
            if !r.pinned || r.mem != OnChip::Sbuf {
                continue;
            }
            let fp = req_bytes(r, SBUF_ALIGN);
            if total + fp > cap {
                continue;
            }
            let base = cap - total - fp;
            pins[k][i] = Some(base);
            let fits = requests
                .iter()
                .zip(&pins)
                .all(|(reqs, p)| footprint(reqs, p, OnChip::Sbuf, SBUF_ALIGN) + total + fp <= cap);
            if fits {
                total += fp;
            } else {
                pins[k][i] = None;
            }
        }
    }
    (pins, total)
}

/// When not every pinned request fits for the whole program, the pinned requests stream
/// through a ring at the top of SBUF instead: each takes the next `fp` bytes of the ring
/// (wrapping to its start when the rest does not fit), so the weights of the next kernels
/// load while earlier kernels compute, and a load waits only for the kernel that last used
/// its bytes (the builder's hazard tracking orders that reuse). The ring takes all that the
/// largest kernel's other buffers leave (measured on BERT-base batch 1: 1.433 ms, against
/// 1.460 ms when it leaves room for two kernels' other buffers, which then stay clear of
/// each other but prefetch weights less far ahead); requests larger than half the ring
/// stay out of it (a ring holding one buffer at a time prefetches nothing).
/// Returns the pins and the ring's bytes per partition, or `None` when no ring holds two
/// of the smallest pinned requests or the requests left out do not fit below it.
fn ring_pins(requests: &[Vec<BufferReq>], cap: u64) -> Option<(Vec<Vec<Option<u64>>>, u64)> {
    let is_pin = |r: &BufferReq| r.pinned && r.mem == OnChip::Sbuf;
    // Footprint of a kernel's buffers that stay out of the ring.
    let rest_of = |reqs: &[BufferReq], in_ring: &dyn Fn(&BufferReq) -> bool| -> u64 {
        reqs.iter()
            .filter(|r| r.mem == OnChip::Sbuf && !in_ring(r))
            .map(|r| req_bytes(r, SBUF_ALIGN))
            .sum()
    };
    let rest = requests
        .iter()
        .map(|reqs| rest_of(reqs, &is_pin))
        .max()
        .unwrap_or(0);
    let smallest = requests
        .iter()
        .flatten()
        .filter(|r| is_pin(r))
        .map(|r| req_bytes(r, SBUF_ALIGN))
        .min()?;
    // A ring that holds fewer than two buffers at a time prefetches nothing.
    let ring = cap.saturating_sub(rest);
    if ring < 2 * smallest {
        return None;
    }
    let ring = ring / SBUF_ALIGN * SBUF_ALIGN;
    let in_ring = |r: &BufferReq| is_pin(r) && 2 * req_bytes(r, SBUF_ALIGN) <= ring;
    if requests
        .iter()
        .any(|reqs| rest_of(reqs, &in_ring) > cap - ring)
    {
        return None;
    }
    let base = cap - ring;
    let mut pins: Vec<Vec<Option<u64>>> =
        requests.iter().map(|reqs| vec![None; reqs.len()]).collect();
    let mut off = 0u64;
    for (k, reqs) in requests.iter().enumerate() {
        for (i, r) in reqs.iter().enumerate() {
            if !in_ring(r) {
                continue;
            }
            let fp = req_bytes(r, SBUF_ALIGN);
            if off + fp > ring {
                off = 0;
            }
            pins[k][i] = Some(base + off);
            off += fp;
        }
    }
    Some((pins, ring))
}

/// How many preceding kernels a kernel tries to stay clear of.
pub const WINDOW: usize = 3;

/// The lowest offset (a multiple of `granule`) where `fp` bytes fit below `cap` without
/// overlapping any of `busy`.
fn first_fit(busy: &[(u64, u64)], fp: u64, cap: u64, granule: u64) -> Option<u64> {
    let mut cands: Vec<u64> = vec![0];
    cands.extend(busy.iter().map(|&(_, hi)| align(hi, granule)));
    cands.sort_unstable();
    cands
        .into_iter()
        .find(|&c| c + fp <= cap && busy.iter().all(|&(lo, hi)| c + fp <= lo || hi <= c))
}

/// Total length of the union of byte ranges.
fn union_len(ranges: &[(u64, u64)]) -> u64 {
    let mut r: Vec<(u64, u64)> = ranges.iter().copied().filter(|r| r.1 > r.0).collect();
    r.sort_unstable();
    let (mut total, mut end) = (0, 0);
    for (lo, hi) in r {
        let lo = lo.max(end);
        if hi > lo {
            total += hi - lo;
            end = hi;
        }
    }
    total
}

/// Places every kernel's buffers (one request list per kernel, in kernel order).
///
/// Each kernel goes to the lowest addresses that overlap none of the previous
/// [`WINDOW`] kernels' buffers, or of fewer of them if that does not fit (down to none):
/// the later a kernel's buffers are reused, the more its successors can prefetch (weights
/// of the next matmul load while this kernel computes). [`BufferReq::pinned`] requests go
/// to the top of SBUF: each apart from all others while they all fit, else through a ring
/// ([`ring_pins`]).
pub fn allocate(requests: &[Vec<BufferReq>], cfg: &ChipConfig) -> Result<Allocation, AllocError> {
    let bank = cfg.psum_bytes_per_partition / u64::from(cfg.psum_banks.max(1));
    let mems = [
        (OnChip::Sbuf, cfg.sbuf_bytes_per_partition, SBUF_ALIGN),
        (OnChip::Psum, cfg.psum_bytes_per_partition, bank),
    ];
    let mut out = Allocation::default();
    let (mut pins, mut pinned_total) = choose_pins(requests, cfg.sbuf_bytes_per_partition);
    let all_pinned = requests.iter().zip(&pins).all(|(reqs, p)| {
        reqs.iter()
            .zip(p)
            .all(|(r, p)| !r.pinned || r.mem != OnChip::Sbuf || p.is_some())
    });
    if !all_pinned {
        let count = |p: &[Vec<Option<u64>>]| p.iter().flatten().filter(|x| x.is_some()).count();
        // The ring when it keeps more of them on their way than pinning for good does.
        if let Some((ring, bytes)) = ring_pins(requests, cfg.sbuf_bytes_per_partition) {
            if count(&ring) > count(&pins) {
                pins = ring;
                pinned_total = bytes;
                out.weight_ring = true;
            }
        }
    }
    out.pinned_sbuf = pinned_total;
    // Per memory: the ranges of the kernels placed so far, and how many predecessors each
    // coexists with.
    let mut placed: [Vec<(u64, u64)>; 2] = [Vec::new(), Vec::new()];
    for (k, reqs) in requests.iter().enumerate() {
        let mut ka = KernelAlloc::default();
        let mut bases = [0u64; 2];
        let kpins = &pins[k];
        for (m, &(mem, cap, granule)) in mems.iter().enumerate() {
            let fp = footprint(reqs, kpins, mem, granule);
            // The pinned region sits at the top of SBUF.
            let cap = if mem == OnChip::Sbuf {
                cap - pinned_total
            } else {
                cap
            };
            if fp > cap {
                return Err(AllocError {
                    kernel: k,
                    message: format!(
                        "needs {fp} {} bytes per partition, the target has {cap}",
                        if mem == OnChip::Sbuf { "sbuf" } else { "psum" }
                    ),
                });
            }
            let mut base = 0;
            let mut window = 0;
            for w in (0..=WINDOW.min(k)).rev() {
                let busy: Vec<(u64, u64)> = placed[m][k - w..]
                    .iter()
                    .copied()
                    .filter(|r| r.1 > r.0)
                    .collect();
                if let Some(b) = first_fit(&busy, fp, cap, granule) {
                    base = b;
                    window = w;
                    break;
                }
            }
            placed[m].push((base, base + fp));
            // In use together: this kernel and the predecessors it stays clear of (those may
            // overlap each other, so measure the union of their ranges).
            let peak = union_len(&placed[m][k - window..]);
            bases[m] = base;
            match mem {
                OnChip::Sbuf => {
                    ka.sbuf_bytes = fp;
                    out.peak_sbuf = out.peak_sbuf.max(peak + pinned_total);
                }
                OnChip::Psum => {
                    ka.psum_bytes = fp;
                    out.peak_psum = out.peak_psum.max(peak);
                }
            }
        }
        for (r, pin) in reqs.iter().zip(kpins) {
            let m = usize::from(r.mem == OnChip::Psum);
            let granule = mems[m].2;
            let slot_bytes = align(r.bytes.max(1), granule);
            let base = match pin {
                Some(b) => *b,
                None => {
                    let b = bases[m];
                    bases[m] += slot_bytes * u64::from(r.slots.max(1));
                    b
                }
            };
            if pin.is_some() {
                ka.sbuf_bytes += slot_bytes * u64::from(r.slots.max(1));
            }
            ka.bufs.push(Buf {
                name: r.name.clone(),
                mem: r.mem,
                base,
                slot_bytes,
                slots: r.slots.max(1),
                pinned: pin.is_some(),
            });
        }
        out.kernels.push(ka);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernels_avoid_their_predecessors_while_they_fit() {
        let cfg = ChipConfig::trn1();
        let reqs = vec![
            vec![
                BufferReq::sbuf("a", 1000, 2),
                BufferReq::psum("acc", 100, 2),
            ],
            vec![BufferReq::sbuf("b", 4096, 3)],
            vec![BufferReq::sbuf("c", 150 * 1024, 1)],
            vec![BufferReq::sbuf("d", 190 * 1024, 1)],
            vec![BufferReq::sbuf("e", 1024, 1)],
        ];
        let a = allocate(&reqs, &cfg).unwrap();
        let k0 = &a.kernels[0];
        assert_eq!(k0.get("a").unwrap().base, 0);
        assert_eq!(k0.get("a").unwrap().slot_bytes, 1024);
        assert_eq!(
            k0.get("acc").unwrap().slot_bytes,
            2048,
            "psum slots are whole banks"
        );
        assert_eq!(k0.get("acc").unwrap().slot(3), 2048);
        assert_eq!(a.kernels[1].get("b").unwrap().base, 2048);
        assert_eq!(a.kernels[2].get("c").unwrap().base, 2048 + 3 * 4096);
        // Kernel 3 fits beside nobody: it starts at the bottom and overlaps.
        assert_eq!(a.kernels[3].get("d").unwrap().base, 0);
        // Kernel 4 stays clear of kernel 3.
        assert_eq!(a.kernels[4].get("e").unwrap().base, 190 * 1024);
        assert_eq!(a.peak_sbuf, 190 * 1024 + 1024);
    }

    #[test]
    fn pinned_buffers_sit_apart_at_the_top_while_the_rest_fits() {
        let cfg = ChipConfig::trn1();
        let cap = cfg.sbuf_bytes_per_partition;
        let reqs = vec![
            vec![
                BufferReq::sbuf("w", 1000, 1).pinned(),
                BufferReq::sbuf("x", 4096, 2),
            ],
            vec![
                BufferReq::sbuf("w", 2048, 1).pinned(),
                BufferReq::sbuf("y", 8192, 1),
            ],
            // Pinning this one would leave too little room for kernel 3: not pinned.
            vec![BufferReq::sbuf("w", cap - 18 * 1024, 1).pinned()],
            vec![BufferReq::sbuf("z", 16 * 1024, 1)],
        ];
        let a = allocate(&reqs, &cfg).unwrap();
        let w0 = a.kernels[0].get("w").unwrap();
        let w1 = a.kernels[1].get("w").unwrap();
        assert!(w0.pinned && w1.pinned);
        assert_eq!(w0.base, cap - 1024);
        assert_eq!(w1.base, cap - 1024 - 2048);
        assert_eq!(a.pinned_sbuf, 3072);
        assert!(!a.kernels[2].get("w").unwrap().pinned);
        // Everything else stays below the pinned region.
        for k in &a.kernels {
            for b in k.bufs.iter().filter(|b| !b.pinned) {
                assert!(
                    b.base + b.slot_bytes * u64::from(b.slots) <= cap - 3072,
                    "{b:?}"
                );
            }
        }
        assert_eq!(a.kernels[0].sbuf_bytes, 2 * 4096 + 1024);
    }

    #[test]
    fn pinned_buffers_that_do_not_all_fit_stream_through_a_ring() {
        let cfg = ChipConfig::trn1();
        let cap = cfg.sbuf_bytes_per_partition;
        // Five 40 KiB weights (200 KiB in all: more than SBUF) and 16 KiB of other buffers
        // per kernel: the ring takes cap - 16 KiB, room for four weights at a time.
        let reqs: Vec<Vec<BufferReq>> = (0..5)
            .map(|_| {
                vec![
                    BufferReq::sbuf("w", 40 * 1024, 1).pinned(),
                    BufferReq::sbuf("x", 16 * 1024, 1),
                ]
            })
            .collect();
        let a = allocate(&reqs, &cfg).unwrap();
        assert!(a.weight_ring);
        let ring = cap - 16 * 1024;
        assert_eq!(a.pinned_sbuf, ring);
        let w: Vec<u64> = a.kernels.iter().map(|k| k.get("w").unwrap().base).collect();
        let base = cap - ring;
        let kib = 40 * 1024;
        assert_eq!(
            w,
            vec![base, base + kib, base + 2 * kib, base + 3 * kib, base]
        );
        for k in &a.kernels {
            assert!(k.get("w").unwrap().pinned);
            let x = k.get("x").unwrap();
            assert!(!x.pinned && x.base + x.slot_bytes <= base, "{x:?}");
        }
        // When they all fit, nothing streams: every weight keeps its own bytes.
        let a = allocate(&reqs[..2], &cfg).unwrap();
        assert!(!a.weight_ring);
        assert_ne!(
            a.kernels[0].get("w").unwrap().base,
            a.kernels[1].get("w").unwrap().base
        );
    }

    #[test]
    fn oversized_kernel_is_an_error() {
        let cfg = ChipConfig::trn1();
        let err = allocate(&[vec![BufferReq::sbuf("huge", 1 << 20, 1)]], &cfg).unwrap_err();
        assert!(err.message.contains("sbuf"), "{}", err.message);
    }
}
