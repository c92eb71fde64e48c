//! SBUF and PSUM allocation.
//!
//! Each kernel asks for a few named buffers (a [`BufferReq`]: bytes per partition per
//! slot, and a number of slots to rotate through for double or triple buffering). A kernel's
//! buffers are packed contiguously, SBUF slots aligned to 64 bytes and PSUM slots to whole
//! banks (an accumulation group must stay inside one bank).
//!
//! Consecutive kernels are placed at opposite ends of each memory (even kernels from the
//! bottom, odd kernels from the top) whenever both fit together, so the next kernel's first
//! loads can run while the previous kernel drains. When they do not fit together the next
//! kernel starts at the bottom and overlaps; the builder's hazard tracking then orders the
//! reuse, so this is never a correctness question, only one of overlap.

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
}

impl BufferReq {
    /// An SBUF buffer.
    pub fn sbuf(name: &str, bytes: u64, slots: u32) -> BufferReq {
        BufferReq {
            name: name.into(),
            mem: OnChip::Sbuf,
            bytes,
            slots,
        }
    }

    /// A PSUM buffer.
    pub fn psum(name: &str, bytes: u64, slots: u32) -> BufferReq {
        BufferReq {
            name: name.into(),
            mem: OnChip::Psum,
            bytes,
            slots,
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

/// Slot size and footprint of a request list in one memory.
fn footprint(reqs: &[BufferReq], mem: OnChip, granule: u64) -> u64 {
    reqs.iter()
        .filter(|r| r.mem == mem)
        .map(|r| align(r.bytes.max(1), granule) * u64::from(r.slots.max(1)))
        .sum()
}

/// Places every kernel's buffers (one request list per kernel, in kernel order).
pub fn allocate(requests: &[Vec<BufferReq>], cfg: &ChipConfig) -> Result<Allocation, AllocError> {
    let bank = cfg.psum_bytes_per_partition / u64::from(cfg.psum_banks.max(1));
    let mems = [
        (OnChip::Sbuf, cfg.sbuf_bytes_per_partition, SBUF_ALIGN),
        (OnChip::Psum, cfg.psum_bytes_per_partition, bank),
    ];
    let mut out = Allocation::default();
    // Per memory: the previous kernel's footprint and whether it sat at the top.
    let mut prev: [(u64, bool); 2] = [(0, true); 2];
    for (k, reqs) in requests.iter().enumerate() {
        let mut ka = KernelAlloc::default();
        let mut bases = [0u64; 2];
        for (m, &(mem, cap, granule)) in mems.iter().enumerate() {
            let fp = footprint(reqs, mem, granule);
            if fp > cap {
                return Err(AllocError {
                    kernel: k,
                    message: format!(
                        "needs {fp} {} bytes per partition, the target has {cap}",
                        if mem == OnChip::Sbuf { "sbuf" } else { "psum" }
                    ),
                });
            }
            let (pfp, ptop) = prev[m];
            let coexist = fp + pfp <= cap;
            // Take the end the previous kernel did not use.
            let top = coexist && !ptop;
            bases[m] = if top {
                (cap - fp) / granule * granule
            } else {
                0
            };
            let peak = if coexist { fp + pfp } else { fp };
            match mem {
                OnChip::Sbuf => {
                    ka.sbuf_bytes = fp;
                    out.peak_sbuf = out.peak_sbuf.max(peak);
                }
                OnChip::Psum => {
                    ka.psum_bytes = fp;
                    out.peak_psum = out.peak_psum.max(peak);
                }
            }
            prev[m] = (fp, top);
        }
        for r in reqs {
            let m = usize::from(r.mem == OnChip::Psum);
            let granule = mems[m].2;
            let slot_bytes = align(r.bytes.max(1), granule);
            ka.bufs.push(Buf {
                name: r.name.clone(),
                mem: r.mem,
                base: bases[m],
                slot_bytes,
                slots: r.slots.max(1),
            });
            bases[m] += slot_bytes * u64::from(r.slots.max(1));
        }
        out.kernels.push(ka);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consecutive_kernels_take_opposite_ends() {
        let cfg = ChipConfig::trn1();
        let reqs = vec![
            vec![
                BufferReq::sbuf("a", 1000, 2),
                BufferReq::psum("acc", 100, 2),
            ],
            vec![BufferReq::sbuf("b", 4096, 3)],
            vec![BufferReq::sbuf("c", 150 * 1024, 1)],
            vec![BufferReq::sbuf("d", 190 * 1024, 1)],
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
        let b = a.kernels[1].get("b").unwrap();
        assert_eq!(b.base, cfg.sbuf_bytes_per_partition - 3 * 4096);
        // Kernel 2 fits beside kernel 1 (at the bottom); kernel 3 fits beside nothing and
        // starts at the bottom, overlapping kernel 2.
        assert_eq!(a.kernels[2].get("c").unwrap().base, 0);
        assert_eq!(a.kernels[3].get("d").unwrap().base, 0);
        assert_eq!(a.peak_sbuf, 190 * 1024);
    }

    #[test]
    fn oversized_kernel_is_an_error() {
        let cfg = ChipConfig::trn1();
        let err = allocate(&[vec![BufferReq::sbuf("huge", 1 << 20, 1)]], &cfg).unwrap_err();
        assert!(err.message.contains("sbuf"), "{}", err.message);
    }
}
