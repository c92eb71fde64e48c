//! What one DMA instruction moves and what it costs the DMA engines per byte: the one
//! description the simulator's bandwidth model (`neuron_sim::dma`) and the compiler's
//! estimates share (docs/isa.md, DMA; trainium.md 3).
//!
//! An engine moves a transfer as descriptors, contiguous runs within one partition (the
//! shorter of the source's and the destination's runs). Each descriptor pays a setup cost
//! worth `dma_descriptor_overhead_bytes` of transfer time at the engine's rate, so a
//! transfer of `d`-byte descriptors takes `(d + overhead) / d` engine-bytes per byte. A
//! transfer between 2- or 4-byte elements whose one side's innermost run is a single
//! element (and whose other side's runs are longer) transposes on the engines: its
//! descriptors are the contiguous side's runs and it runs at
//! `dma_transpose_hbm_efficiency` (touching HBM) or `dma_transpose_sbuf_efficiency`.

use crate::{Ap, ChipConfig, Memory, Op};

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
    /// Bytes of one descriptor (a contiguous run within one partition), at least 1.
    pub descriptor_bytes: u64,
    /// Whether the engines transpose (one side element-strided, 2- or 4-byte elements).
    pub transpose: bool,
}

/// Bytes of the innermost contiguous run of `ap` within one partition (row): the product of
/// the innermost dimensions that follow each other in memory, times the element size.
pub fn contiguous_run_bytes(ap: &Ap) -> u64 {
    let mut run: u64 = 1;
    for d in ap.dims.iter().rev() {
        if d.size <= 1 {
            continue;
        }
        if d.stride == i64::try_from(run).unwrap_or(i64::MAX) {
            run = run.saturating_mul(u64::from(d.size));
        } else {
            break;
        }
    }
    run.saturating_mul(ap.dtype.size()).max(1)
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
                let (rs, rd) = (contiguous_run_bytes(src), contiguous_run_bytes(dst));
                // Element-strided: the innermost non-trivial dimension steps over elements
                // (a broadcast, stride 0, is not a transpose).
                let one = |ap: &Ap, run: u64| {
                    run == ap.dtype.size()
                        && ap
                            .dims
                            .iter()
                            .rev()
                            .find(|d| d.size > 1)
                            .is_some_and(|d| d.stride.unsigned_abs() > 1)
                };
                let transposable = |ap: &Ap| matches!(ap.dtype.size(), 2 | 4);
                let multi = |ap: &Ap, run: u64| run > ap.dtype.size();
                let transpose = transposable(src)
                    && transposable(dst)
                    && ((one(src, rs) && multi(dst, rd) && src.free_elems() > 1)
                        || (one(dst, rd) && multi(src, rs) && dst.free_elems() > 1));
                let descriptor_bytes = if transpose { rs.max(rd) } else { rs.min(rd) };
                Some(DmaPlan {
                    bytes: src.bytes().max(dst.bytes()),
                    hbm_read: if hbm(src) { src.bytes() } else { 0 },
                    hbm_write: if hbm(dst) { dst.bytes() } else { 0 },
                    partitions,
                    descriptor_bytes,
                    transpose,
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
                    descriptor_bytes: contiguous_run_bytes(table).min(contiguous_run_bytes(dst)),
                    transpose: false,
                })
            }
            _ => None,
        }
    }
}

/// What a transfer costs the DMA engines per byte it moves, from a chip's configuration.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DmaCosts {
    descriptor_overhead: f64,
    transpose_hbm_eff: f64,
    transpose_sbuf_eff: f64,
}

impl DmaCosts {
    /// The costs of `cfg`'s DMA engines.
    pub fn of(cfg: &ChipConfig) -> DmaCosts {
        DmaCosts {
            descriptor_overhead: cfg.dma_descriptor_overhead_bytes as f64,
            transpose_hbm_eff: cfg.dma_transpose_hbm_efficiency,
            transpose_sbuf_eff: cfg.dma_transpose_sbuf_efficiency,
        }
    }

    /// Engine capacity (bytes) a transfer of `plan` uses per byte it moves: the
    /// descriptor overhead `(d + overhead) / d` divided by the transpose efficiency.
    pub fn per_byte(&self, plan: &DmaPlan) -> f64 {
        let d = plan.descriptor_bytes.max(1) as f64;
        let desc = (d + self.descriptor_overhead) / d;
        let eff = if !plan.transpose {
            1.0
        } else if plan.hbm_read + plan.hbm_write > 0 {
            self.transpose_hbm_eff
        } else {
            self.transpose_sbuf_eff
        };
        desc / eff
    }
}
