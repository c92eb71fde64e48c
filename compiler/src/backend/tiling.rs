//! Tiling: the cost model that chooses tile and block sizes from the target's
//! [`ChipConfig`], recorded as data ([`Tiling`]) on each kernel's [`KernelPlan`].
//!
//! The model uses the documented first-order figures (trainium.md 2.3 and 3):
//! - a matmul of stationary free size `M` and moving free size `N` costs
//!   `max(min(64, M), N)` TensorE cycles (x4 for fp32, /2 for int8 on trn1);
//! - a DMA costs `dma_fixed_latency_ns` plus its bytes at `min(hbm bandwidth, dma_engines
//!   x dma_engine_bytes_per_ns)`; the fixed cost overlaps across queues, so one transfer
//!   should carry at least `latency x bandwidth / partitions` bytes per partition (and at
//!   least the 2 KiB per partition where the DMA guide says efficiency is near peak);
//! - a kernel's time is `max(compute, DMA)` plus the pipeline fill that blocking cannot
//!   hide (for a matmul: loading and transposing the resident X^T block of each group).
//!
//! Because sizes come from the configuration, a different `--target` gives a different
//! program: e.g. trn2's faster DMA engines make the W chunks of a matmul larger, and a
//! small-SBUF target makes matmul groups smaller (W is then re-read more often: those
//! re-read bytes are reported as spill/re-stream bytes).

use super::alloc::{BufferReq, OnChip};
use super::lower::{
    attention, conv, copy, elementwise, gather, lowering_error, matmul, norm, pool, reduce, softmax,
};
use crate::error::CompileError;
use crate::kernel::{Kernel, KernelGraph, KernelOp};
use neuron_isa::{ChipConfig, Dtype};
use std::fmt;

/// Row tiling of elementwise, norm, softmax, reduce and gather kernels: tiles of `rows`
/// rows (on partitions) by `cols` outer columns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowTiling {
    /// Rows per tile (<= 128).
    pub rows: usize,
    /// Outer columns per tile (the whole row for norm and softmax).
    pub cols: usize,
    /// Slots of each streamed buffer (2 = double-buffered, 3 = triple).
    pub slots: u32,
}

/// Tiling of an HBM -> HBM copy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopyTiling {
    /// Rows per DMA (<= 128).
    pub rows: usize,
    /// Outer columns per DMA.
    pub cols: usize,
}

/// Blocking of `Y[M, N] = X[M, K] @ W[K, N]`.
///
/// X^T (K on partitions) of a group of `m_group` row tiles of 128 is built once (TensorE
/// transposes of row-major X tiles) and stays resident in SBUF while every column tile of
/// `n_tile` columns streams W through a ring of `w_slots` chunks of `w_kchunk` k-tiles; the
/// group's `m_group` accumulators (one PSUM bank each) collect all of K. W is thus read
/// `ceil(M / (128 m_group))` times and X once, unless the ring holds all of W: W is then
/// loaded once and stays resident while the groups' X^T stream past it (W-stationary).
/// With `x_dma_transpose`, X^T arrives by transposing DMAs and TensorE only multiplies.
#[derive(Debug, Clone, PartialEq)]
pub struct MatmulTiling {
    /// Row tiles (of <= 128 rows) per group: the PSUM accumulators in use.
    pub m_group: usize,
    /// Columns per output tile (moving free size, <= 512).
    pub n_tile: usize,
    /// k-tiles (of 128) per W DMA.
    pub w_kchunk: usize,
    /// Slots of the W ring.
    pub w_slots: u32,
    /// Columns of X per staging DMA (a multiple of 128).
    pub x_kchunk: usize,
    /// Accumulator sets (2 = the next column tile accumulates while this one is evicted).
    pub acc_sets: u32,
    /// X^T comes straight from HBM by transposing (and, for fp32 inputs, casting) DMAs,
    /// one per k-tile and group, instead of contiguous loads turned around on TensorE.
    /// Chosen when a group's rows make DMA descriptors of at least 2 KiB per partition.
    pub x_dma_transpose: bool,
    /// `Y^T = W^T X^T` with output columns on partitions, for bias (+ activation)
    /// epilogues (`lower::matmul::lower_out_transposed`).
    pub out_transposed: bool,
    /// Estimated time, ns.
    pub est_ns: f64,
    /// Planned HBM bytes.
    pub hbm_bytes: u64,
    /// Bytes re-read because the operands do not fit on chip at once.
    pub restream_bytes: u64,
}

/// Tiling of fused attention.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttentionTiling {
    /// Query rows per tile (<= 128).
    pub q_tile: usize,
    /// Slots of streamed buffers.
    pub slots: u32,
    /// Flash (online-softmax) form: keys per block, and query tiles kept resident while
    /// the key blocks stream past. `None`: every key of a query tile at once.
    pub flash: Option<FlashTiling>,
}

/// The key-blocked (flash-attention) form of an attention kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlashTiling {
    /// Keys per block (one PSUM bank of scores).
    pub k_block: usize,
    /// Query tiles resident per pass over the keys (K and V are read once per pass).
    pub q_tiles: usize,
}

/// A kernel's tiling.
#[derive(Debug, Clone, PartialEq)]
pub enum Tiling {
    /// Row tiles.
    Rows(RowTiling),
    /// HBM -> HBM copies.
    Copy(CopyTiling),
    /// Blocked matmul.
    MatMul(MatmulTiling),
    /// Fused attention.
    Attention(AttentionTiling),
    /// Implicit-GEMM convolution.
    Conv(conv::ConvTiling),
    /// Pooling bands.
    Pool(pool::PoolTiling),
}

impl Tiling {
    /// The cost model's predicted time of the kernel, ns, where it makes one (matmuls:
    /// the estimate that chose the blocking).
    pub fn estimate_ns(&self) -> Option<f64> {
        match self {
            Tiling::MatMul(t) => Some(t.est_ns),
            _ => None,
        }
    }

    /// Short name of the variant.
    pub fn kind(&self) -> &'static str {
        match self {
            Tiling::Rows(_) => "rows",
            Tiling::Copy(_) => "copy",
            Tiling::MatMul(_) => "matmul",
            Tiling::Attention(_) => "attention",
            Tiling::Conv(_) => "conv",
            Tiling::Pool(_) => "pool",
        }
    }
}

impl fmt::Display for Tiling {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Tiling::Rows(t) => write!(f, "rows {} x cols {}, {}-buffered", t.rows, t.cols, t.slots),
            Tiling::Copy(t) => write!(f, "hbm->hbm dma, rows {} x cols {}", t.rows, t.cols),
            Tiling::MatMul(t) => write!(
                f,
                "groups of {} row tiles (x^t resident{}), n{} k128, w chunks of {} k-tiles x{} slots, {} psum set(s){}, est {:.1} us",
                t.m_group,
                if t.x_dma_transpose {
                    ", by dma transpose"
                } else {
                    ""
                },
                t.n_tile,
                t.w_kchunk,
                t.w_slots,
                t.acc_sets,
                if t.out_transposed {
                    ", output transposed (y^t = w^t x^t)"
                } else {
                    ""
                },
                t.est_ns / 1000.0
            ),
            Tiling::Attention(AttentionTiling {
                q_tile,
                flash: Some(fl),
                ..
            }) => write!(
                f,
                "flash: q tiles of {q_tile}, {} resident, key blocks of {}",
                fl.q_tiles, fl.k_block
            ),
            Tiling::Attention(t) => write!(f, "q tiles of {}, {}-buffered", t.q_tile, t.slots),
            Tiling::Conv(t) => write!(f, "{t}"),
            Tiling::Pool(t) => write!(f, "{t}"),
        }
    }
}

/// Everything the back end decided for one kernel before allocation.
#[derive(Debug, Clone, PartialEq)]
pub struct KernelPlan {
    /// The tiling.
    pub tiling: Tiling,
    /// Buffers to allocate.
    pub buffers: Vec<BufferReq>,
    /// Bytes re-read from HBM because they do not fit on chip (spill traffic).
    pub restream_bytes: u64,
}

impl KernelPlan {
    /// SBUF bytes per partition the plan needs.
    pub fn sbuf_bytes(&self) -> u64 {
        sbuf_bytes(&self.buffers)
    }
}

/// SBUF bytes per partition of a request list (64-byte aligned slots).
pub fn sbuf_bytes(reqs: &[BufferReq]) -> u64 {
    reqs.iter()
        .filter(|r| r.mem == OnChip::Sbuf)
        .map(|r| r.bytes.div_ceil(64) * 64 * u64::from(r.slots))
        .sum()
}

/// PSUM banks of a request list.
pub fn psum_banks(reqs: &[BufferReq], cfg: &ChipConfig) -> u64 {
    let bank = cfg.psum_bytes_per_partition / u64::from(cfg.psum_banks.max(1));
    reqs.iter()
        .filter(|r| r.mem == OnChip::Psum)
        .map(|r| r.bytes.div_ceil(bank.max(1)) * u64::from(r.slots))
        .sum()
}

/// The documented cost figures of a target.
#[derive(Debug, Clone, Copy)]
pub struct CostModel<'c> {
    cfg: &'c ChipConfig,
}

impl<'c> CostModel<'c> {
    /// The model of `cfg`.
    pub fn new(cfg: &'c ChipConfig) -> Self {
        CostModel { cfg }
    }

    /// Sustained DMA bandwidth, bytes per ns: HBM or the DMA engines, whichever is lower.
    pub fn dma_bandwidth(&self) -> f64 {
        let engines = f64::from(self.cfg.dma_engines) * self.cfg.dma_engine_bytes_per_ns;
        self.cfg.hbm_bandwidth_bytes_per_ns.min(engines).max(1e-3)
    }

    /// Bytes per partition one DMA should move so that its fixed cost is amortised: the
    /// bytes the DMA engines move during one fixed latency, spread over the partitions,
    /// and never below the 2 KiB per partition of the DMA guide.
    pub fn dma_target_bytes_per_partition(&self) -> u64 {
        let during_latency = self.cfg.dma_fixed_latency_ns * self.dma_bandwidth();
        ((during_latency / f64::from(self.cfg.partitions)) as u64).max(2048)
    }

    /// Time of `bytes` in `transfers` DMAs over all queues, ns.
    pub fn dma_ns(&self, bytes: u64, transfers: u64) -> f64 {
        let queues = f64::from(self.cfg.dma_queues.max(1));
        bytes as f64 / self.dma_bandwidth()
            + transfers as f64 * self.cfg.dma_fixed_latency_ns / queues
    }

    /// TensorE cycles of one matmul (stationary free `m`, moving free `n`) in `dtype`.
    pub fn matmul_cycles(&self, m: usize, n: usize, dtype: Dtype) -> f64 {
        let base = (m.min(self.cfg.matmul_stationary_min_cycles as usize)).max(n) as f64;
        match dtype {
            Dtype::F32 => base * f64::from(self.cfg.matmul_fp32_factor),
            Dtype::I8 | Dtype::U8 => base / f64::from(self.cfg.matmul_int8_speedup.max(1)),
            Dtype::Fp8E4m3 | Dtype::Fp8E5m2 => base / f64::from(self.cfg.matmul_fp8_speedup.max(1)),
            _ => base,
        }
    }

    /// TensorE cycles of a `[p, f]` transpose.
    pub fn transpose_cycles(&self, p: usize, f: usize) -> f64 {
        p.max(f.min(self.cfg.matmul_stationary_min_cycles as usize)) as f64
    }

    /// ns of `cycles` TensorE cycles.
    pub fn tensor_ns(&self, cycles: f64) -> f64 {
        cycles / self.cfg.tensor_clock_ghz
    }
}

/// SBUF bytes per partition a kernel may plan with: all of it minus a reserve, so that a
/// neighbouring kernel can often be resident at the same time.
fn sbuf_budget(cfg: &ChipConfig) -> u64 {
    cfg.sbuf_bytes_per_partition - cfg.sbuf_bytes_per_partition / 8
}

/// Chooses row tiling: `rows` rows per tile; columns as wide as the DMA target asks
/// (when `chunkable`), narrowed until the buffers fit.
pub fn choose_rows(
    cfg: &ChipConfig,
    num_rows: usize,
    outer_cols: usize,
    col_bytes: u64,
    chunkable: bool,
    buffers: impl Fn(&RowTiling) -> Vec<BufferReq>,
) -> Result<RowTiling, String> {
    let cm = CostModel::new(cfg);
    let rows = num_rows.clamp(1, cfg.partitions as usize);
    let mut cols = if chunkable {
        let want = (cm.dma_target_bytes_per_partition() / col_bytes.max(1)).max(1) as usize;
        want.min(outer_cols).max(1)
    } else {
        outer_cols.max(1)
    };
    let budget = sbuf_budget(cfg);
    loop {
        for slots in [3, 2, 1] {
            let t = RowTiling { rows, cols, slots };
            let reqs = buffers(&t);
            if sbuf_bytes(&reqs) <= budget && psum_banks(&reqs, cfg) <= u64::from(cfg.psum_banks) {
                return Ok(t);
            }
        }
        if !chunkable || cols == 1 {
            let t = RowTiling {
                rows,
                cols,
                slots: 1,
            };
            return Err(format!(
                "a tile of {rows} rows x {cols} columns needs {} sbuf bytes per partition, the target has {budget} to plan with",
                sbuf_bytes(&buffers(&t))
            ));
        }
        cols = cols.div_ceil(2);
    }
}

/// [`choose_rows`], then the buffers of the chosen tiling: a row kernel's plan as
/// `(tiling, buffers, re-streamed bytes)`.
fn plan_rows(
    cfg: &ChipConfig,
    num_rows: usize,
    outer_cols: usize,
    col_bytes: u64,
    chunkable: bool,
    buffers: impl Fn(&RowTiling) -> Vec<BufferReq>,
) -> Result<(Tiling, Vec<BufferReq>, u64), String> {
    let t = choose_rows(cfg, num_rows, outer_cols, col_bytes, chunkable, &buffers)?;
    let b = buffers(&t);
    Ok((Tiling::Rows(t), b, 0))
}

/// Chooses the blocking of a matmul by estimating every feasible group size.
pub fn choose_matmul(s: &matmul::MmShape, cfg: &ChipConfig) -> Result<MatmulTiling, String> {
    let cm = CostModel::new(cfg);
    let p = cfg.partitions as usize;
    let k_tiles = s.k.div_ceil(p).max(1);
    let m_tiles = s.m.div_ceil(p).max(1);
    let mt = s.m.min(p);
    let target = cm.dma_target_bytes_per_partition();
    let banks = cfg.psum_banks as usize;
    let budget = sbuf_budget(cfg);
    let fmax = (cfg.matmul_moving_fmax as usize).max(1);
    // Column tiles: a full PSUM bank, then narrower ones for small SBUFs.
    let mut n_cands = vec![s.n.min(fmax).max(1)];
    for w in [256, 128] {
        if w < n_cands[0] {
            n_cands.push(w);
        }
    }
    let x_full =
        (((target / s.x_dtype.size().max(1)) as usize).div_ceil(p) * p).clamp(p, k_tiles * p);
    let halvings = |start: usize, stop: usize| {
        let mut v = vec![start.max(stop)];
        while let Some(&l) = v.last() {
            if l <= stop {
                break;
            }
            v.push((l / 2).max(stop));
        }
        v
    };
    let mut best: Option<MatmulTiling> = None;
    let mut smallest = u64::MAX;
    for m_group in 1..=m_tiles.min(banks) {
        // X^T by transposing DMAs (docs/isa.md, DMA transposes) when a group's rows give
        // descriptors near the efficiency curve's peak (2 KiB per partition, trainium.md
        // section 3): TensorE then does matmuls only, and no PSUM bank holds X transposes.
        // int8 keeps the TensorE path: X is quantized on the way out of PSUM.
        let x_dma = s.x_transposes
            && s.int8.is_none()
            && matches!(s.x_dtype.size(), 2 | 4)
            && matches!(s.mm_dtype.size(), 2 | 4)
            && (m_group * mt) as u64 * s.mm_dtype.size() >= 2048;
        let tp_banks = if (s.x_transposes && !x_dma) || s.w_transposes {
            2
        } else {
            0
        };
        let acc_banks = banks.saturating_sub(tp_banks).max(1);
        if m_group > acc_banks {
            continue;
        }
        let acc_sets = if 2 * m_group <= acc_banks && m_group < 3 {
            2
        } else {
            1
        };
        for &n_tile in &n_cands {
            let w_full = (target.div_ceil((n_tile as u64 * s.w_dtype.size()).max(1)) as usize)
                .clamp(1, k_tiles);
            // The largest W chunks, ring and X staging that fit, in that order of preference.
            let mut fit = None;
            'search: for w_kchunk in halvings(w_full, 1) {
                // Chunks of equal size: as many transfers, and no slot sized for k-tiles
                // that the last chunk does not have (6 k-tiles in chunks of 5 would take
                // the SBUF of 10 and could keep the whole of W from fitting).
                let w_kchunk = k_tiles.div_ceil(k_tiles.div_ceil(w_kchunk));
                // The whole of W (every chunk of every column tile of one batch) when it
                // takes at most a third of SBUF: it then loads as early as its space is
                // free, typically while the previous kernels still compute.
                let chunks = (k_tiles.div_ceil(w_kchunk) * s.n.div_ceil(n_tile)) as u32;
                // Past a third of SBUF too when several groups would otherwise re-read W
                // (W stays resident across the groups: loaded once, X^T streams past it);
                // the fit check below decides whether it really fits.
                let w_on_chip = u64::from(chunks) * (w_kchunk * n_tile) as u64 * s.mm_dtype.size();
                let whole = (w_on_chip <= budget / 3 || (s.batches == 1 && m_tiles > m_group))
                    .then_some(chunks)
                    .filter(|&c| c > 6);
                for w_slots in whole.into_iter().chain([6u32, 4, 3, 2]) {
                    for x_kchunk in halvings(x_full, p) {
                        let t = MatmulTiling {
                            m_group,
                            n_tile,
                            w_kchunk,
                            w_slots,
                            x_kchunk: x_kchunk.div_ceil(p) * p,
                            acc_sets,
                            x_dma_transpose: x_dma,
                            out_transposed: false,
                            est_ns: 0.0,
                            hbm_bytes: 0,
                            restream_bytes: 0,
                        };
                        let reqs = matmul::buffers(s, &t, cfg);
                        let bytes = sbuf_bytes(&reqs);
                        smallest = smallest.min(bytes);
                        if bytes <= budget && psum_banks(&reqs, cfg) <= banks as u64 {
                            fit = Some(t);
                            break 'search;
                        }
                    }
                }
            }
            let Some(t) = fit else {
                continue;
            };
            let n_tiles = s.n.div_ceil(n_tile) as u64;
            let groups = m_tiles.div_ceil(m_group) as u64;
            let b = s.batches as u64;
            let w_bytes = (s.k * s.n) as u64 * s.w_dtype.size();
            let x_bytes = (s.m * s.k) as u64 * s.x_dtype.size();
            let y_bytes = (s.m * s.n) as u64 * s.out_dtype.size();
            // A W resident across groups is read once; otherwise once per group.
            let w_passes = if matmul::w_resident(s, &t, p) {
                1
            } else {
                groups
            };
            let hbm = b * (x_bytes + w_passes * w_bytes + y_bytes + s.operand_bytes);
            let x_transfers = if t.x_dma_transpose {
                groups * k_tiles as u64
            } else {
                m_tiles as u64 * s.k.div_ceil(t.x_kchunk) as u64
            };
            let transfers = b
                * (w_passes * n_tiles * k_tiles.div_ceil(t.w_kchunk) as u64
                    + x_transfers
                    + m_tiles as u64 * n_tiles * 2);
            let mm = b as f64
                * (m_tiles as u64 * n_tiles * k_tiles as u64) as f64
                * cm.matmul_cycles(mt, n_tile, s.mm_dtype);
            let tp = if s.x_transposes && !t.x_dma_transpose {
                b as f64 * (m_tiles * k_tiles) as f64 * cm.transpose_cycles(mt, p)
            } else {
                0.0
            };
            let compute = cm.tensor_ns(mm + tp);
            let dma = cm.dma_ns(hbm, transfers);
            let group_x = x_bytes / m_tiles as u64 * m_group as u64;
            let fill = if t.x_dma_transpose {
                // The first k-tile of the first group starts TensorE; each later k-tile
                // (and each later group's, whose loads only wait for the matmuls that
                // read the same bytes) lands while TensorE works on the earlier ones.
                b as f64 * cm.dma_ns(group_x / k_tiles as u64, 1)
            } else {
                // Filling a group's X^T is not hidden behind that group's matmuls.
                b as f64 * groups as f64 * cm.dma_ns(group_x, 1)
            };
            let est = compute.max(dma) + fill;
            let cand = MatmulTiling {
                est_ns: est,
                hbm_bytes: hbm,
                restream_bytes: b * (w_passes - 1) * w_bytes,
                ..t
            };
            // Faster wins; within 0.5% the one moving fewer HBM bytes wins.
            let better = match &best {
                None => true,
                Some(o) => est < o.est_ns * 0.995 || (est <= o.est_ns * 1.005 && hbm < o.hbm_bytes),
            };
            if better {
                best = Some(cand);
            }
        }
    }
    let mut best = best.ok_or_else(|| {
        format!(
            "no blocking fits: the smallest needs {smallest} sbuf bytes per partition (K = {}, N = {}), the target has {budget} to plan with",
            s.k, s.n
        )
    })?;
    if matmul::out_transposed_eligible(s, &best, p) {
        let t = MatmulTiling {
            out_transposed: true,
            est_ns: out_transposed_estimate(&cm, s, &best),
            ..best.clone()
        };
        // Its X^T may take two slots: it must still fit.
        let reqs = matmul::buffers(s, &t, cfg);
        if t.est_ns < best.est_ns
            && sbuf_bytes(&reqs) <= budget
            && psum_banks(&reqs, cfg) <= banks as u64
        {
            best = t;
        }
    }
    Ok(best)
}

/// The estimate of the transposed-output form of a matmul whose normal form `t` was
/// estimated at `t.est_ns` (see `lower::matmul::lower_out_transposed`). Same matmul cycles;
/// what changes is the epilogue:
/// - the normal form broadcasts the bias row on TensorE (one K=1 fp32 matmul per 512
///   columns) and evicts through a VectorE add reading PSUM (`N` cycles); with one
///   accumulator set the next column tile's first matmuls wait for those evictions, about
///   `m_group × (evict - matmul)` per column tile when an eviction is slower than a matmul;
/// - the transposed form loads the bias as per-partition columns (one DMA) and evicts with
///   one ScalarE activation per accumulator, rotating over every PSUM slot: TensorE waits
///   only where an eviction outlasts a whole accumulation (all k-tiles).
fn out_transposed_estimate(cm: &CostModel<'_>, s: &matmul::MmShape, t: &MatmulTiling) -> f64 {
    let cfg = cm.cfg;
    let p = cfg.partitions as usize;
    let mt = s.m.min(p);
    let k_tiles = s.k.div_ceil(p).max(1);
    let m_tiles = s.m.div_ceil(p).max(1);
    let groups = m_tiles.div_ceil(t.m_group);
    let n_tiles = s.n.div_ceil(t.n_tile);
    let mm1 = cm.tensor_ns(cm.matmul_cycles(mt, t.n_tile, s.mm_dtype));
    let evict = t.n_tile as f64 / cfg.vector_clock_ghz.max(1e-3);
    let stall = if t.acc_sets == 1 {
        (groups * n_tiles) as f64 * t.m_group as f64 * (evict - mm1).max(0.0)
    } else {
        0.0
    };
    let bcast = s.n.div_ceil(cfg.matmul_moving_fmax.max(1) as usize) as f64
        * cm.tensor_ns(cm.matmul_cycles(mt, 512, Dtype::F32));
    let chunk = (t.n_tile / mt).max(1) * mt;
    let accs = (groups * s.n.div_ceil(p) * (t.m_group * mt).div_ceil(chunk)) as f64;
    let evict_t = chunk as f64 / cfg.scalar_clock_ghz.max(1e-3);
    let acc_t = k_tiles as f64 * cm.tensor_ns(cm.matmul_cycles(p, chunk, s.mm_dtype));
    let stall_t = accs * (evict_t - acc_t).max(0.0);
    t.est_ns - stall - bcast + stall_t + cm.dma_ns(s.n as u64 * 4, 1)
}

/// Plans one kernel.
pub fn plan_kernel(
    kg: &KernelGraph,
    k: &Kernel,
    cfg: &ChipConfig,
) -> Result<KernelPlan, CompileError> {
    let err = |m: String| lowering_error(k, m);
    let (tiling, buffers, restream_bytes) = match &k.op {
        KernelOp::MatMul { .. } => {
            let s = matmul::analyze(kg, k)?;
            let t = choose_matmul(&s, cfg).map_err(err)?;
            let b = matmul::buffers(&s, &t, cfg);
            let r = t.restream_bytes;
            (Tiling::MatMul(t), b, r)
        }
        // Chunked row kinds stream column chunks sized for the DMAs; norm and softmax
        // tiles take whole rows (one outer column).
        KernelOp::Elementwise { .. } => {
            let s = elementwise::analyze(kg, k, cfg)?;
            plan_rows(
                cfg,
                s.rc.num_rows(),
                s.rc.outer_cols(),
                s.col_bytes,
                true,
                |t| elementwise::buffers(&s, t),
            )
            .map_err(err)?
        }
        KernelOp::Norm { .. } => {
            let s = norm::analyze(kg, k)?;
            plan_rows(cfg, s.rc.num_rows(), 1, 4, false, |t| norm::buffers(&s, t)).map_err(err)?
        }
        KernelOp::Softmax { .. } => {
            let s = softmax::analyze(kg, k)?;
            plan_rows(cfg, s.rc.num_rows(), 1, 4, false, |t| {
                softmax::buffers(&s, t)
            })
            .map_err(err)?
        }
        KernelOp::Reduce { .. } => {
            let s = reduce::analyze(kg, k)?;
            plan_rows(
                cfg,
                s.rc.num_rows(),
                s.rc.outer_cols(),
                s.col_bytes,
                true,
                |t| reduce::buffers(&s, t),
            )
            .map_err(err)?
        }
        KernelOp::Gather { .. } => {
            let s = gather::analyze(kg, k)?;
            plan_rows(cfg, s.rc.num_rows(), s.outer(), s.col_bytes, true, |t| {
                gather::buffers(&s, t)
            })
            .map_err(err)?
        }
        KernelOp::Conv2d { .. } => {
            let s = conv::analyze(kg, k)?;
            let t = conv::choose(&s, cfg);
            let b = conv::buffers(&s, &t, cfg);
            check_fits(k, &b, cfg, "conv2d")?;
            (Tiling::Conv(t), b, 0)
        }
        KernelOp::Pool { .. } => {
            let s = pool::analyze(kg, k)?;
            let t = pool::choose(&s, cfg);
            let b = pool::buffers(&s, &t);
            check_fits(k, &b, cfg, "pooling")?;
            (Tiling::Pool(t), b, 0)
        }
        KernelOp::Copy { .. } => {
            let t = copy::choose(kg, k, cfg)?;
            (Tiling::Copy(t), Vec::new(), 0)
        }
        KernelOp::Attention { .. } => {
            let s = attention::analyze(kg, k)?;
            let q_tile = s.sq.min(cfg.partitions as usize);
            let whole = AttentionTiling {
                q_tile,
                slots: 2,
                flash: None,
            };
            let b = attention::buffers(&s, &whole, cfg);
            let fits = |b: &[BufferReq]| {
                sbuf_bytes(b) <= sbuf_budget(cfg) && psum_banks(b, cfg) <= u64::from(cfg.psum_banks)
            };
            // Whole score rows when they fit and are short; past that, key blocks with an
            // online softmax (flash attention), keeping as many query tiles resident per
            // pass over K and V as SBUF allows.
            let (t, b) = if s.sk < attention::FLASH_MIN_KEYS && fits(&b) {
                (whole, b)
            } else {
                let qtiles = s.sq.div_ceil(q_tile.max(1));
                let mut best = None;
                let mut n = qtiles;
                while n >= 1 {
                    let t = AttentionTiling {
                        q_tile,
                        slots: 2,
                        flash: Some(FlashTiling {
                            k_block: attention::FLASH_K_BLOCK,
                            q_tiles: n,
                        }),
                    };
                    let b = attention::buffers(&s, &t, cfg);
                    if fits(&b) {
                        best = Some((t, b));
                        break;
                    }
                    n /= 2;
                }
                best.ok_or_else(|| {
                    err(format!(
                        "attention with {} keys of dimension {} (values {}) does not fit even one query tile per key block: needs {} sbuf bytes per partition, the target has {}",
                        s.sk,
                        s.d,
                        s.dv,
                        sbuf_bytes(&b),
                        sbuf_budget(cfg)
                    ))
                })?
            };
            (Tiling::Attention(t), b, 0)
        }
    };
    Ok(KernelPlan {
        tiling,
        buffers,
        restream_bytes,
    })
}

/// Refuses a kernel whose buffers exceed the target's SBUF or PSUM, naming the sizes.
fn check_fits(
    k: &Kernel,
    b: &[BufferReq],
    cfg: &ChipConfig,
    what: &str,
) -> Result<(), CompileError> {
    if sbuf_bytes(b) > sbuf_budget(cfg) || psum_banks(b, cfg) > u64::from(cfg.psum_banks) {
        return Err(lowering_error(
            k,
            format!(
                "{what} needs {} sbuf bytes per partition and {} psum banks; the target has {} and {}",
                sbuf_bytes(b),
                psum_banks(b, cfg),
                sbuf_budget(cfg),
                cfg.psum_banks
            ),
        ));
    }
    Ok(())
}

/// Plans every kernel of `kg`.
pub fn plan(kg: &KernelGraph, cfg: &ChipConfig) -> Result<Vec<KernelPlan>, CompileError> {
    let _span = tracing::info_span!("tiling", kernels = kg.kernels.len()).entered();
    kg.kernels.iter().map(|k| plan_kernel(kg, k, cfg)).collect()
}

/// The stable text form of the plans (the `tiling` dump).
pub fn display(kg: &KernelGraph, plans: &[KernelPlan]) -> String {
    let mut s = String::new();
    for (i, (k, p)) in kg.kernels.iter().zip(plans).enumerate() {
        s.push_str(&format!(
            "k{i} {} [{}]: {}\n",
            k.name,
            k.op.kind(),
            p.tiling
        ));
        for b in &p.buffers {
            s.push_str(&format!(
                "    {} {:?} {} B x{}\n",
                b.name, b.mem, b.bytes, b.slots
            ));
        }
        if p.restream_bytes > 0 {
            s.push_str(&format!("    re-streamed {} B\n", p.restream_bytes));
        }
    }
    s
}
