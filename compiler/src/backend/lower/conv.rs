//! Convolution kernels: `Y = epilogue(conv2d(X, W))` over NCHW, as an implicit GEMM.
//!
//! The ISA matmul contracts over partitions: `dst[M, N] = stationary[K, M]^T @
//! moving[K, N]`. A convolution is a sum over kernel taps `(kh, kw)` of such products:
//!
//! - **K = input channels** (a tile of <= 128 of one group) on partitions;
//! - **stationary = the tap's weights** `[c, o]` (<= 128 output channels): all weights of
//!   the kernel are loaded once, laid out `[c, tap, o]`, and stay resident;
//! - **moving = the input band**, read through a strided access pattern: output pixel
//!   `(i, j)` of tap `(kh, kw)` is band element `(i * sh + kh * dh, j * sw + kw * dw)`, so
//!   the pattern is `[rows: sh * band_width, cols: sw]` at offset `kh * dh * band_width +
//!   kw * dw`. No im2col copy is made: the taps are different views of one band;
//! - **PSUM accumulates** every tap of every channel tile (`accumulate` from the second
//!   matmul), and the eviction applies the epilogue (bias / folded batch_norm as a
//!   per-partition column, residual as a full tile, relu) on ScalarE/VectorE.
//!
//! The output tile is `[o, pixels]`: output channels on partitions, exactly NCHW's channel
//! planes, so the stores (and residual loads) are contiguous rows. The input band of each
//! output tile (its rows plus the kernel's halo, zero outside the image: padding is a
//! memset, then one DMA of the valid region) is double-buffered so the next band loads
//! while TensorE works. Small images are packed: when a whole output image has fewer than
//! 512 pixels, several images share one moving pattern (one more free dimension).
//!
//! Groups: when a group's channels are few (depthwise: one), `gpack` groups share one
//! matmul through a block-diagonal stationary (zeros off the diagonal blocks), so a
//! depthwise layer uses up to 128 partitions instead of one.
//!
//! Cost: the model (trainium.md 2.3) charges `max(min(64, M), N)` cycles per matmul,
//! independent of K, so the array is used in proportion to `K/128 * M/128`: layers with 64
//! channels use a quarter of it (see docs/compiler.md on tap packing).

use super::chain::{self, ChainTiles, OpTile, selected};
use super::{LowerCtx, kernel_input, lowering_error, on_chip_dtype, view_storage};
use crate::backend::alloc::BufferReq;
use crate::backend::layout::broadcast_view;
use crate::error::CompileError;
use crate::kernel::{EwOp, Kernel, KernelGraph, KernelOp, View, Window};
use neuron_isa::{Ap, ChipConfig, Dim, Dtype, Engine, Memory, Op, TensorId};
use std::fmt;

/// Blocking of a convolution kernel.
#[derive(Debug, Clone, PartialEq)]
pub struct ConvTiling {
    /// Images per output tile (packed along the moving free axis).
    pub images: usize,
    /// Output rows per tile.
    pub rows: usize,
    /// Output columns per tile.
    pub cols: usize,
    /// PSUM tiles (of `rows` rows) per DMA: the band, the residual and the output of
    /// `sub * rows` rows move in one transfer each, so that transfers are large enough
    /// to hide the DMA fixed cost.
    pub sub: usize,
    /// Groups sharing one block-diagonal matmul.
    pub gpack: usize,
    /// Kernel rows stacked on partitions per matmul (tap packing; 1 = none): partition
    /// block `j` (at partition `j * block`) holds the input band shifted down by `j`
    /// kernel rows, so one matmul covers `pack` taps.
    pub pack: usize,
    /// Partitions per stacked block (32 or 64: where the ISA lets a DMA start writing).
    pub block: usize,
    /// Full-width bands: the band holds whole input rows (no column halo), so its loads
    /// are contiguous runs of whole rows; column padding is done by restricting each
    /// tap's matmul to the output columns whose input column is inside the image.
    pub full_w: bool,
    /// Bands without halo rows either: the band holds only the input rows inside the
    /// image, and each tap's matmul is restricted to the output rows (and columns) it
    /// reaches, so whole images are one contiguous run in SBUF (no memset, one long
    /// descriptor per partition when the activation's images are adjacent in HBM).
    pub full_h: bool,
    /// Images per transfer (a multiple of `images`): small images are loaded and stored
    /// several PSUM tiles at a time so that each descriptor is large.
    pub timg: usize,
    /// Kernel rows stacked on partitions one per partition (the stem: few channels, tall
    /// kernel): channel `c` owns the 32-partition block at `32 c`, whose partition `p`
    /// holds the input rows of kernel row `p` (block 0 in reverse order) for every output
    /// row, loaded by one DMA whose partition stride is one input row (im2col by access
    /// pattern), so one matmul per kernel column covers every (channel, kernel row).
    pub pstack: bool,
    /// Images whose channels share one stacked partition block, their output channels
    /// sharing each matmul's columns (1 = none; see `conv_ipack`).
    pub ipack: usize,
    /// Estimated TensorE time, ns.
    pub est_ns: f64,
}

impl fmt::Display for ConvTiling {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "implicit gemm, tiles of {} image(s) x {} rows x {} cols{}, {} group(s) per matmul, {} kernel row(s) per matmul, est {:.1} us",
            self.images,
            self.rows,
            self.cols,
            if self.full_w {
                " (full-width bands)"
            } else {
                ""
            },
            self.gpack,
            self.pack,
            self.est_ns / 1000.0
        )?;
        if self.ipack > 1 {
            write!(
                f,
                ", {} images per partition block ({} partitions each)",
                self.ipack, self.block
            )?;
        }
        Ok(())
    }
}

/// The shape facts of a convolution kernel.
#[derive(Debug, Clone)]
pub struct ConvShape {
    /// Batch, input channels, input height and width.
    pub n: usize,
    /// Input channels.
    pub c: usize,
    /// Input height.
    pub h: usize,
    /// Input width.
    pub w: usize,
    /// Output channels.
    pub o: usize,
    /// Output height.
    pub oh: usize,
    /// Output width.
    pub ow: usize,
    /// Groups.
    pub groups: usize,
    /// Window.
    pub win: Window,
    /// Operand dtype on chip.
    pub mm_dtype: Dtype,
    /// Epilogue intermediate dtype.
    pub act_dtype: Dtype,
    /// Input view `[N, C, H, W]`.
    pub x: View,
    /// Weight view `[O, C/G, KH, KW]`.
    pub wv: View,
    /// Epilogue operands: kernel input index, view broadcast to the output shape, and
    /// whether it is one value per output channel (a per-partition column).
    pub operands: Vec<(usize, View, bool)>,
    /// The epilogue.
    pub epilogue: Vec<EwOp>,
    /// The weight values, when they are compile-time constants read whole (needed to
    /// build block-diagonal weights for packed groups).
    pub w_data: Option<Vec<f32>>,
    /// Bytes per element of the input and the output in HBM.
    pub io_bytes: (u64, u64),
    /// The input and the output maps when they are scratch tensors (maps kernels pass
    /// between them), in elements.
    pub maps: (Option<u64>, Option<u64>),
    /// int8 quantization (`lower/conv_int8.rs`), when `mm_dtype` is i8.
    pub int8: Option<super::conv_int8::ConvInt8>,
}

impl ConvShape {
    /// Input channels per group.
    pub fn cg(&self) -> usize {
        self.c / self.groups
    }
    /// Output channels per group.
    pub fn og(&self) -> usize {
        self.o / self.groups
    }
    /// Kernel taps.
    pub fn taps(&self) -> usize {
        self.win.kernel[0] * self.win.kernel[1]
    }
    /// Input band height for `rows` output rows.
    pub fn band_h(&self, rows: usize) -> usize {
        (rows - 1) * self.win.strides[0] + (self.win.kernel[0] - 1) * self.win.dilations[0] + 1
    }
    /// The output rows `[lo, hi)` of `r0..r0 + nr` (relative to `r0`) whose input row
    /// under kernel row `p` is inside the image.
    pub fn valid_rows(&self, p: usize, r0: usize, nr: usize) -> (usize, usize) {
        valid_range(
            self.h,
            self.win.strides[0],
            self.win.dilations[0],
            self.win.pads[0],
            p,
            r0,
            nr,
        )
    }
    /// Input band width for `cols` output columns.
    pub fn band_w(&self, cols: usize) -> usize {
        (cols - 1) * self.win.strides[1] + (self.win.kernel[1] - 1) * self.win.dilations[1] + 1
    }
    /// The output columns `[lo, hi)` of `c0..c0 + nc` (relative to `c0`) whose input column
    /// under kernel column `q` is inside the image (the others read padding: zero).
    pub fn valid_cols(&self, q: usize, c0: usize, nc: usize) -> (usize, usize) {
        valid_range(
            self.w,
            self.win.strides[1],
            self.win.dilations[1],
            self.win.pads[1],
            q,
            c0,
            nc,
        )
    }
}

/// The outputs `[lo, hi)` of `o0..o0 + n` (relative to `o0`) whose input coordinate
/// `o * stride + tap * dilation - pad` is inside `0..size`.
fn valid_range(
    size: usize,
    stride: usize,
    dilation: usize,
    pad: usize,
    tap: usize,
    o0: usize,
    n: usize,
) -> (usize, usize) {
    let (st, shift) = (stride.max(1) as i64, (tap * dilation) as i64 - pad as i64);
    let need = (-shift).max(0);
    let lo = need / st + i64::from(need % st != 0);
    let hi = if size as i64 - 1 - shift < 0 {
        0
    } else {
        (size as i64 - 1 - shift) / st + 1
    };
    let lo = (lo - o0 as i64).clamp(0, n as i64) as usize;
    let hi = (hi - o0 as i64).clamp(0, n as i64) as usize;
    (lo, hi.max(lo))
}

/// Analyses a convolution kernel.
pub fn analyze(kg: &KernelGraph, k: &Kernel) -> Result<ConvShape, CompileError> {
    let err = |m: String| lowering_error(k, m);
    let KernelOp::Conv2d {
        x,
        w,
        groups,
        window,
        epilogue,
    } = &k.op
    else {
        return Err(err("internal: not a conv2d".into()));
    };
    let xv = kernel_input(k, *x)?.clone();
    let wv = kernel_input(k, *w)?.clone();
    let out = &k.output;
    let [n, c, h, wd] = xv.shape[..] else {
        return Err(err(format!(
            "input must be [N, C, H, W], found {:?}",
            xv.shape
        )));
    };
    let [o, cg, kh, kw] = wv.shape[..] else {
        return Err(err(format!(
            "weight must be [O, C/G, KH, KW], found {:?}",
            wv.shape
        )));
    };
    let [on, oo, oh, ow] = out.shape[..] else {
        return Err(err(format!("output must be rank 4, found {:?}", out.shape)));
    };
    let g = *groups;
    if g == 0 || c % g != 0 || o % g != 0 || cg != c / g || on != n || oo != o {
        return Err(err(format!(
            "shapes do not agree: x {:?}, w {:?}, groups {g}, out {:?}",
            xv.shape, wv.shape, out.shape
        )));
    }
    if [kh, kw] != window.kernel
        || window.strides.contains(&0)
        || window.dilations.contains(&0)
        || oh == 0
        || ow == 0
    {
        return Err(err(format!(
            "bad window {window:?} for weight {:?}",
            wv.shape
        )));
    }
    let mut operands = Vec::new();
    for i in super::chain_operands(epilogue) {
        let v = kernel_input(k, i)?;
        let b = broadcast_view(v, &out.shape).ok_or_else(|| {
            err(format!(
                "epilogue operand {i} {:?} does not broadcast to {:?}",
                v.shape, out.shape
            ))
        })?;
        let per_channel = (b.strides[0] == 0 || n == 1)
            && (b.strides[2] == 0 || oh == 1)
            && (b.strides[3] == 0 || ow == 1)
            && !selected(epilogue, i);
        operands.push((i, b, per_channel));
    }
    let w_data = kg.tensor(wv.tensor).and_then(|t| {
        let whole = wv.shape == t.shape && wv.is_whole_contiguous(t.numel());
        let data = t.data.as_ref()?;
        if whole {
            return Some(data.to_f32().iter().copied().collect());
        }
        // An int8 weight: its i8 values (the packed forms hold them as f32), stored
        // channel-last and read in `[O, C/G, KH, KW]` order through the view.
        let flat: Vec<f64> = data.to_f64().iter().copied().collect();
        let v = crate::kernel::interp::read_view(&flat, &wv).ok()?;
        (t.quant_scale.is_some() && wv.numel() == t.numel())
            .then(|| v.iter().map(|&x| x as f32).collect())
    });
    let scratch = |t: crate::kernel::KTensorId| {
        kg.tensor(t)
            .filter(|t| t.kind == neuron_isa::TensorKind::Scratch)
            .map(|t| t.numel() as u64)
    };
    let maps = (scratch(xv.tensor), scratch(out.tensor));
    let io_bytes = (
        kg.tensor(xv.tensor).map_or(4, |t| t.dtype.size()),
        kg.tensor(out.tensor).map_or(4, |t| t.dtype.size()),
    );
    Ok(ConvShape {
        n,
        c,
        h,
        w: wd,
        o,
        oh,
        ow,
        groups: g,
        win: *window,
        mm_dtype: on_chip_dtype(k.mm_dtype),
        act_dtype: k.act_dtype,
        x: xv,
        wv,
        operands,
        epilogue: epilogue.clone(),
        w_data,
        io_bytes,
        maps,
        int8: super::conv_int8::analyze(kg, k)?,
    })
}

/// Groups per block-diagonal matmul: the largest divisor of `groups` whose channels fit
/// the array on both sides.
fn group_pack(s: &ConvShape, parts: usize) -> usize {
    let (cg, og) = (s.cg(), s.og());
    if s.groups == 1 || cg * 2 > parts || og * 2 > parts || s.w_data.is_none() {
        return 1;
    }
    let max = (parts / cg).min(parts / og).min(s.groups);
    (1..=max).rev().find(|d| s.groups % d == 0).unwrap_or(1)
}

/// Chooses the blocking: output tiles as large as one PSUM bank's moving free size
/// allows (whole rows, then whole images packed), groups packed block-diagonally.
pub fn choose(s: &ConvShape, cfg: &ChipConfig) -> ConvTiling {
    let nmax = (cfg.matmul_moving_fmax as usize).max(1);
    let parts = cfg.partitions as usize;
    let cols = s.ow.min(nmax);
    let rows = s.oh.min((nmax / cols).max(1));
    let images = if rows == s.oh && cols == s.ow {
        s.n.min((nmax / (rows * cols)).max(1))
    } else {
        1
    };
    // ~2048 output pixels per transfer (4 KiB per partition in bf16, past the 2 KiB
    // where the DMA guide puts efficiency near peak) when whole-row tiles are small.
    let sub = if images == 1 && cols == s.ow {
        (2048 / (rows * cols)).clamp(1, s.oh.div_ceil(rows))
    } else {
        1
    };
    let gpack = group_pack(s, parts);
    // Maps small enough for the resident region (`backend/resident.rs`, channels on
    // partitions) are read and written in place by plain bands. Tap packing moves the
    // input's bands onto other partitions, and image packing both the input's and the
    // output's second image (partitions 64..128), which only a DMA can do: such a map goes
    // to HBM and back. ResNet-50 batch 16 under `all` (trn1, layer 1 through layer 3's
    // first block in pairs of images): 3792 us with layer 1's 64-channel convs packed,
    // 3418 us unpacked (twice the matmuls, each band read where the previous conv wrote
    // it).
    let fits = |elems: Option<u64>, ch: usize, elem: u64| {
        elems.is_some_and(|e| {
            let row = e / ch.max(1) as u64;
            crate::backend::resident::row_block_bytes(ch as u64, row, elem, parts as u64)
                <= crate::backend::resident::budget(cfg)
        })
    };
    let keep_in_place = fits(s.maps.0, s.c, s.io_bytes.0);
    let keep_images = keep_in_place || fits(s.maps.1, s.o, s.io_bytes.1);
    // Tap packing: a narrow layer (<= 64 channels, one group) stacks shifted copies of
    // its band on partitions to fill K; each stacked copy costs one more band DMA per tile
    // and the matmul count drops by the same factor (the matmul cost does not depend on K).
    let (pack, block) = if s.groups == 1
        && s.c <= parts / 2
        && s.win.kernel[0] > 1
        && s.w_data.is_some()
        && !keep_in_place
    {
        let block = if s.c <= parts / 4 {
            parts / 4
        } else {
            parts / 2
        };
        ((parts / block).min(s.win.kernel[0]), block)
    } else {
        (1, 0)
    };
    // Full-width bands when a tile spans whole output rows and some kernel column reads
    // inside the image for every output column (its matmul comes first and initializes
    // the whole PSUM tile; the others accumulate into the columns they reach).
    let full_w =
        cols == s.ow && (0..s.win.kernel[1]).any(|q| s.valid_cols(q, 0, s.ow) == (0, s.ow));
    // Partition-stacked rows (see `pstack`) when they cover more taps per matmul than the
    // block stacking: needs dense NCHW input (invalid edge rows read a neighbouring
    // channel, then are zeroed) and no output row whose window leaves the image at both
    // ends.
    let (kh, dh, pt) = (s.win.kernel[0], s.win.dilations[0], s.win.pads[0]);
    let xs = &s.x.strides;
    let pstack = full_w
        && s.groups == 1
        && s.w_data.is_some()
        && (2..=parts / 32).contains(&s.c)
        && kh > pack.max(1)
        && kh <= 32
        && xs[3] == 1
        && xs[2] == s.w as isize
        && xs[1] == (s.h * s.w) as isize
        && (0..s.oh).all(|i| {
            let top = (i * s.win.strides[0]) as i64 - pt as i64;
            top >= 0 || top + (((kh - 1) * dh) as i64) < s.h as i64
        });
    let pstack = pstack && {
        // The cost model picks the faster of the two stackings, each bound by TensorE or by
        // the busiest DMA engine (8 partitions each: a block's band loads and its share of
        // the output stores), with the per-descriptor overhead (trainium.md 2.3, 3).
        let ghz = cfg.tensor_clock_ghz.max(1e-9);
        let eng = cfg.dma_engine_bytes_per_ns.max(1e-9);
        let ppe = (cfg.partitions_per_dma_engine() as usize).max(1);
        let ovh = cfg.dma_descriptor_overhead_bytes as f64;
        let (xe, oe) = (s.io_bytes.0 as f64, s.io_bytes.1 as f64);
        let nr = (rows * sub).min(s.oh);
        let transfers = (s.n * s.oh.div_ceil(nr)) as f64;
        let mm_tiles = (s.n * s.oh.div_ceil(rows)) as f64;
        let fp32 = if s.mm_dtype == Dtype::F32 { 4.0 } else { 1.0 };
        let per_mm = fp32 * ((rows * cols) as f64).max(64.0) / ghz;
        let out = (ppe.min(s.o) * nr * s.ow) as f64 * oe;
        let engine = |parts: usize, run: f64, runs: f64| {
            transfers * ((parts.min(ppe) as f64) * run * runs * (1.0 + ovh / run) + out) / eng
        };
        let w = s.w as f64;
        let stacked =
            (mm_tiles * (s.win.kernel[1] as f64) * per_mm).max(engine(kh, w * xe, nr as f64));
        let blocked = (mm_tiles * (s.win.kernel[1] * kh.div_ceil(pack)) as f64 * per_mm)
            .max(engine(s.c, s.band_h(nr) as f64 * w * xe, 1.0));
        // Measured on the simulator, the stacked stem's DMA took 35% longer than this
        // estimate (ResNet-50 stem, trn1: 1.40 ms vs 1.04 ms; the busiest engine also
        // serves queue turns and fixed latencies the estimate leaves out), so stacking
        // must win by that margin.
        stacked * 1.35 < blocked
    };
    let (pack, block) = if pstack { (1, 32) } else { (pack, block) };
    let full_h = full_w
        && !pstack
        && pack == 1
        && (0..s.win.kernel[0]).any(|p| s.valid_rows(p, 0, s.oh) == (0, s.oh));
    // Whole-image tiles: ~2048 output pixels per transfer, as `sub` does for rows.
    let timg = if rows == s.oh && cols == s.ow {
        (images * (2048 / (images * rows * cols)).max(1)).min(s.n.next_multiple_of(images))
    } else {
        images
    };
    let taps = if pstack {
        s.win.kernel[1]
    } else {
        s.win.kernel[1] * s.win.kernel[0].div_ceil(pack)
    };
    // First-order TensorE time: one matmul per (tile, group block, channel tile, o tile,
    // tap), each `max(min(64, M), N)` cycles.
    let (cs, os) = (s.cg() * gpack, s.og() * gpack);
    let tiles = s.n.div_ceil(images) * s.oh.div_ceil(rows) * s.ow.div_ceil(cols);
    let n = (images * rows * cols) as f64;
    let m = os.min(parts) as f64;
    let per = m.min(64.0).max(n);
    let mut cyc =
        per * (tiles * (s.groups / gpack) * cs.div_ceil(parts) * os.div_ceil(parts) * taps) as f64;
    if s.mm_dtype == Dtype::F32 {
        cyc *= 4.0;
    } else if s.mm_dtype == Dtype::I8 {
        cyc /= f64::from(cfg.matmul_int8_speedup.max(1));
    }
    let est_ns = cyc / cfg.tensor_clock_ghz.max(1e-9);
    // Image packing (`conv_ipack`) when it needs fewer matmuls than the stacking above.
    let ip = super::conv_ipack::candidate(s, cfg, images, full_w)
        .map(|ip| (super::conv_ipack::est_ns(s, cfg, &ip, rows), ip))
        .filter(|(ns, _)| *ns < est_ns && !keep_images);
    let mut t = ConvTiling {
        images,
        rows,
        cols,
        sub,
        gpack,
        pack,
        block,
        full_w,
        full_h,
        timg,
        pstack,
        ipack: 1,
        est_ns,
    };
    if let Some((ns, ip)) = ip {
        t.pack = ip.pack;
        t.block = ip.block;
        t.ipack = ip.images;
        t.full_h = false;
        t.pstack = false;
        t.timg = 1;
        t.est_ns = ns;
        return t;
    }
    // Batching images per transfer must not make a kernel that fits without it fail: it
    // stays within 3/4 of SBUF (the tiler's budget is 7/8).
    fit(s, &mut t, cfg, cfg.sbuf_bytes_per_partition * 3 / 4);
    t
}

/// Shrinks the images per transfer until the buffers fit in `budget` bytes per partition.
pub fn fit(s: &ConvShape, t: &mut ConvTiling, cfg: &ChipConfig, budget: u64) {
    while t.timg > t.images {
        let bytes: u64 = buffers(s, t, cfg)
            .iter()
            .filter(|b| b.mem == crate::backend::alloc::OnChip::Sbuf)
            .map(|b| b.bytes * u64::from(b.slots))
            .sum();
        if bytes <= budget {
            return;
        }
        t.timg -= t.images;
    }
}

/// Width (row pitch) of the input band of a tile of `cols` output columns.
fn band_width(s: &ConvShape, t: &ConvTiling, cols: usize) -> usize {
    if t.full_w { s.w } else { s.band_w(cols) }
}

/// One accumulator tile's eviction operands, cut from the full output tile: columns
/// `pix0 .. pix0 + npix` on the first `no` partitions of each full-tile epilogue operand
/// (`sops`) and of the output (`out_all`), and the kernel's f32 cast slot if it has one.
pub(crate) fn tile_operands(
    ctx: &LowerCtx<'_>,
    sops: &[Option<OpTile>],
    out_all: &Ap,
    (pix0, npix, no): (u32, u32, u32),
) -> (Vec<Option<OpTile>>, Option<Ap>, Ap) {
    // A tile, or a resident region read or written in place (several free dims).
    let sub_of = |ap: &Ap| {
        let mut a = crate::backend::layout::free_range(ap, pix0.into(), npix.into())
            .unwrap_or_else(|| crate::backend::layout::cols(ap, pix0, npix));
        a.partitions = no;
        a
    };
    let ops = sops
        .iter()
        .map(|o| match o {
            Some(OpTile::Full(a)) => Some(OpTile::Full(sub_of(a))),
            other => other.clone(),
        })
        .collect();
    let cast = ctx
        .bufs
        .get("cast")
        .map(|c| c.tile(0, Dtype::F32, no, npix));
    (ops, cast, sub_of(out_all))
}

/// Evicts accumulator `acc` through the convolution's epilogue into `out` (`work` and
/// `cast` its scratch tiles; `ops` the epilogue operands cut to this tile): an int8
/// dequantization (`dequant`, the per-channel scale column) or a leading bias add as one
/// ScalarE activation reading PSUM, then the rest of the chain. Under a bias followed by
/// an fp32 residual, ScalarE's `identity(x + b)` is the same fp32 addition, and VectorE,
/// which pays two cycles per element for the fp32 residual add, does only that.
pub(crate) fn evict(
    ctx: &mut LowerCtx<'_>,
    s: &ConvShape,
    (acc, work, cast, out): (Ap, Ap, Option<Ap>, Ap),
    ops: &[Option<OpTile>],
    dequant: Option<Ap>,
) -> Result<(), CompileError> {
    // `acc + b + r` then a unary function: VectorE adds the residual as it evicts the
    // accumulator (one PSUM input: one cycle per element) into the work tile, and the bias
    // and the function fold into one ScalarE activation: two instructions, not three.
    let first = if dequant.is_none() && acc.mem == Memory::Psum {
        residual_first(&s.epilogue, ops)
    } else {
        None
    };
    // Where the chain starts, what is left of it, and where its last step writes.
    let (src, epilogue, last): (Ap, std::borrow::Cow<'_, [EwOp]>, Ap) = match (dequant, first) {
        (_, Some((res, rest))) => {
            ctx.push(
                Engine::Vector,
                Op::TensorTensor {
                    dst: work.clone(),
                    a: acc,
                    b: res,
                    op: neuron_isa::AluOp::Add,
                },
            );
            // The result rounds to the elementwise type even when stored wider (as it
            // would after the unfused chain's last step).
            let last = if out.dtype == work.dtype {
                out.clone()
            } else {
                work.clone()
            };
            (work.clone(), rest.into(), last)
        }
        (Some(dq), None) => {
            let rest = super::conv_int8::evict(ctx, work.clone(), acc, dq, &s.epilogue, ops);
            (work.clone(), rest.into(), out.clone())
        }
        (None, None) => match split_bias(&s.epilogue, ops) {
            Some((col, rest)) => {
                ctx.push(
                    Engine::Scalar,
                    Op::Activation {
                        dst: work.clone(),
                        src: acc,
                        func: neuron_isa::ActFunc::Identity,
                        scale: neuron_isa::Operand::Imm(1.0),
                        bias: Some(neuron_isa::Operand::PerPartition(col)),
                        accum: None,
                    },
                );
                (work.clone(), rest.into(), out.clone())
            }
            None => (acc, s.epilogue[..].into(), out.clone()),
        },
    };
    let tiles = ChainTiles {
        src,
        work,
        cast,
        out: last,
        operands: ops,
    };
    let res = chain::apply(ctx, &epilogue, &tiles)?;
    if res != out {
        let e = ctx.evict_engine();
        ctx.copy_on(e, out, res);
    }
    Ok(())
}

/// An epilogue `+ bias column, + full tile (a residual), unary functions...`: the residual
/// tile and the epilogue without its add (`+ bias, unary...`), which folds into one
/// activation. Reassociates `(acc + b) + r` as `(acc + r) + b`, both in fp32.
fn residual_first(epilogue: &[EwOp], ops: &[Option<OpTile>]) -> Option<(Ap, Vec<EwOp>)> {
    let [
        bias @ EwOp::Tensor {
            op: crate::kernel::BinaryFn::Add,
            operand: b,
            ..
        },
        EwOp::Tensor {
            op: crate::kernel::BinaryFn::Add,
            operand: r,
            ..
        },
        rest @ ..,
    ] = epilogue
    else {
        return None;
    };
    let (Some(Some(OpTile::Column(_))), Some(Some(OpTile::Full(res)))) = (ops.get(*b), ops.get(*r))
    else {
        return None;
    };
    if !matches!(rest, [] | [EwOp::Unary(_)]) {
        return None;
    }
    let mut chain = vec![bias.clone()];
    chain.extend_from_slice(rest);
    Some((res.clone(), chain))
}

/// An epilogue that starts with a per-channel bias add and later adds an fp32 full tile
/// (a residual): the bias column and the rest of the epilogue.
fn split_bias<'e>(epilogue: &'e [EwOp], ops: &[Option<OpTile>]) -> Option<(Ap, &'e [EwOp])> {
    let (
        EwOp::Tensor {
            op: crate::kernel::BinaryFn::Add,
            operand,
            ..
        },
        rest,
    ) = epilogue.split_first()?
    else {
        return None;
    };
    let Some(Some(OpTile::Column(col))) = ops.get(*operand) else {
        return None;
    };
    let fp32_full = rest.iter().any(|o| {
        matches!(o, EwOp::Tensor { operand: j, .. }
            if matches!(ops.get(*j), Some(Some(OpTile::Full(t))) if t.dtype == Dtype::F32))
    });
    fp32_full.then(|| (col.clone(), rest))
}

/// Bytes per partition of the resident weights.
fn weight_bytes(s: &ConvShape, t: &ConvTiling, parts: usize) -> u64 {
    if t.ipack > 1 {
        return super::conv_ipack::weight_bytes(s, t, parts);
    }
    let (cs, os) = (s.cg() * t.gpack, s.og() * t.gpack);
    if t.pack > 1 {
        return (tap_groups(s, t) * os) as u64 * s.mm_dtype.size();
    }
    if t.pstack {
        return (s.win.kernel[1] * os) as u64 * s.mm_dtype.size();
    }
    let blocks = (s.groups / t.gpack) * cs.div_ceil(parts);
    (blocks * s.taps() * os) as u64 * s.mm_dtype.size()
}

/// Matmuls per output tile and channel tile under tap packing: kernel columns times
/// groups of `pack` kernel rows.
fn tap_groups(s: &ConvShape, t: &ConvTiling) -> usize {
    s.win.kernel[1] * s.win.kernel[0].div_ceil(t.pack)
}

/// Bytes per partition of one input band slot (every channel tile of one group block).
fn band_bytes(s: &ConvShape, t: &ConvTiling, parts: usize) -> u64 {
    let cs = s.cg() * t.gpack;
    (cs.div_ceil(parts) * t.timg * band_rows(s, t, t.rows * t.sub) * band_width(s, t, t.cols))
        as u64
        * s.mm_dtype.size()
}

/// Rows of the input band of `rows` output rows (one per output row when stacked on
/// partitions: each partition holds only the rows of its kernel row).
fn band_rows(s: &ConvShape, t: &ConvTiling, rows: usize) -> usize {
    if t.pstack { rows } else { s.band_h(rows) }
}

/// Partition of kernel row `j` of channel `c` under `pstack` (block 0 reversed, so that at
/// every image edge the partitions that must read padding form a prefix or are loaded
/// from a neighbouring channel and then zeroed as a prefix).
fn pstack_partition(c: usize, j: usize, kh: usize) -> usize {
    c * 32 + if c == 0 { kh - 1 - j } else { j }
}

/// The buffers a tiling needs.
pub fn buffers(s: &ConvShape, t: &ConvTiling, cfg: &ChipConfig) -> Vec<BufferReq> {
    if t.ipack > 1 {
        return super::conv_ipack::buffers(s, t, cfg);
    }
    let parts = cfg.partitions as usize;
    let npix = (t.images * t.rows * t.cols) as u64;
    let spix = (t.timg * t.rows * t.cols * t.sub) as u64;
    let ncols = s.operands.iter().filter(|o| o.2).count();
    let otiles = s.o.div_ceil(parts).max(s.groups / t.gpack);
    let d = depth(s, t, cfg);
    let mut b = vec![
        BufferReq::sbuf("w", weight_bytes(s, t, parts), 1),
        BufferReq::sbuf("band", band_bytes(s, t, parts), d.band),
        BufferReq::psum("acc", npix * 4, d.acc), // f32, or i32 for int8
        BufferReq::sbuf("work", npix * s.act_dtype.size(), d.acc),
        BufferReq::sbuf("out", spix * 4, d.out),
    ];
    // int8: the dequantization column, and an f32 staging slot per band slot.
    let ncols = ncols + usize::from(s.int8.is_some());
    if ncols > 0 {
        b.push(BufferReq::sbuf("cols", (ncols * otiles) as u64 * 4, 1));
    }
    if let Some(q) = &s.int8 {
        // One staging slot per band slot (the lowering indexes both by the band's slot).
        b.push(BufferReq::sbuf(
            "stage",
            band_bytes(s, t, parts) * q.stage.size(),
            d.band,
        ));
    }
    if chain::has_cast(&s.epilogue) {
        b.push(BufferReq::sbuf("cast", npix * chain::CAST_BYTES, 1));
    }
    for (i, _, per_channel) in &s.operands {
        if !per_channel {
            b.push(BufferReq::sbuf(&format!("op{i}"), spix * 4, d.out));
        }
    }
    b
}

/// Slots of the rotating buffers.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Depth {
    pub(crate) band: u32,
    pub(crate) acc: u32,
    pub(crate) out: u32,
}

/// Buffer depth: double buffering, or deeper when the deep buffers take at most half of
/// SBUF. With two output (and residual) slots and two output-channel tiles per band, the
/// residual load of the next band waits for the store of this one; four slots let the
/// queues run a band ahead (ResNet-50 b16 on trn1 under `all`: 5506 -> 5287 us; three
/// band slots and four PSUM slots measured best of the depths tried, see
/// docs/compiler.md).
pub(crate) fn depth(s: &ConvShape, t: &ConvTiling, cfg: &ChipConfig) -> Depth {
    let parts = cfg.partitions as usize;
    let npix = (t.images * t.rows * t.cols) as u64;
    let spix = (t.timg * t.rows * t.cols * t.sub) as u64;
    let full_ops = s.operands.iter().filter(|o| !o.2).count() as u64;
    let deep = Depth {
        band: 3,
        acc: 4,
        out: 4,
    };
    // int8 bands also take an f32 (or 16-bit) staging slot each.
    let stage = s.int8.as_ref().map_or(0, |q| q.stage.size());
    let bytes = weight_bytes(s, t, parts)
        + band_bytes(s, t, parts) * (1 + stage) * u64::from(deep.band)
        + npix * s.act_dtype.size() * u64::from(deep.acc)
        + spix * 4 * (1 + full_ops) * u64::from(deep.out);
    if bytes <= cfg.sbuf_bytes_per_partition / 2 {
        deep
    } else {
        Depth {
            band: 2,
            acc: 2,
            out: 2,
        }
    }
}

/// HBM access pattern of `[N, O, OH, OW]`-shaped view `v` over images `n0..n0+nb`,
/// channels `o0..o0+no` (partitions), rows `r0..r0+nr`, columns `c0..c0+nc`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn nchw_ap(
    v: &View,
    tensor: TensorId,
    dtype: Dtype,
    (n0, nb): (usize, usize),
    (o0, no): (usize, usize),
    (r0, nr): (usize, usize),
    (c0, nc): (usize, usize),
) -> Ap {
    let s = &v.strides;
    let off = v.offset as i64
        + n0 as i64 * s[0] as i64
        + o0 as i64 * s[1] as i64
        + r0 as i64 * s[2] as i64
        + c0 as i64 * s[3] as i64;
    Ap {
        mem: Memory::Hbm(tensor),
        dtype,
        offset: off.max(0) as u64 * dtype.size(),
        start_partition: 0,
        partitions: no as u32,
        partition_stride: s[1] as i64,
        dims: vec![
            Dim {
                size: nb as u32,
                stride: s[0] as i64,
            },
            Dim {
                size: nr as u32,
                stride: s[2] as i64,
            },
            Dim {
                size: nc as u32,
                stride: s[3] as i64,
            },
        ],
    }
}

/// An on-chip pattern at `offset` bytes over partitions `p0..p0+np` with `dims`.
pub(crate) fn sbuf(
    mem: Memory,
    dtype: Dtype,
    p0: usize,
    np: usize,
    offset: u64,
    dims: Vec<Dim>,
) -> Ap {
    Ap {
        mem,
        dtype,
        offset,
        start_partition: p0 as u32,
        partitions: np as u32,
        partition_stride: 1,
        dims,
    }
}

pub(crate) fn dense(size: usize) -> Vec<Dim> {
    vec![Dim {
        size: size as u32,
        stride: 1,
    }]
}

/// Stores `packed` (stationaries of `[prows, os]` f32, back to back) as constant `name`
/// and prefetches stationary `i` into the weight buffer at `base + i * os` elements of
/// `mm`, one DMA each.
pub(crate) fn prefetch_stationaries(
    ctx: &mut LowerCtx<'_>,
    name: &str,
    packed: Vec<f32>,
    prows: usize,
    os: usize,
    mm: Dtype,
    base: u64,
) {
    let n = packed.len() / (prows * os).max(1);
    let cid = ctx.constant(name, packed);
    for i in 0..n {
        let src = Ap {
            mem: Memory::Hbm(cid),
            dtype: Dtype::F32,
            offset: (i * prows * os * 4) as u64,
            start_partition: 0,
            partitions: prows as u32,
            partition_stride: os as i64,
            dims: dense(os),
        };
        let dst = sbuf(
            Memory::Sbuf,
            mm,
            0,
            prows,
            base + (i * os) as u64 * mm.size(),
            dense(os),
        );
        ctx.prefetch(dst, src);
    }
}

/// Lowers a convolution kernel.
pub fn lower(ctx: &mut LowerCtx<'_>, t: &ConvTiling) -> Result<(), CompileError> {
    let s = analyze(ctx.kg, ctx.kernel)?;
    if t.ipack > 1 {
        return super::conv_ipack::lower(ctx, &s, t);
    }
    let parts = ctx.cfg.partitions as usize;
    let (xt, xdt) = view_storage(ctx.kg, ctx.kernel, &s.x, "x")?;
    let (wt, wdt) = view_storage(ctx.kg, ctx.kernel, &s.wv, "w")?;
    let out_view = ctx.kernel.output.clone();
    let (ot_id, odt) = ctx.tensor(&out_view)?;
    let odt = on_chip_dtype(odt);
    let mm = s.mm_dtype;
    let esz = mm.size();
    let (kh, kw) = (s.win.kernel[0], s.win.kernel[1]);
    let taps = s.taps();
    let (sh, sw) = (s.win.strides[0], s.win.strides[1]);
    let (dh, dw) = (s.win.dilations[0], s.win.dilations[1]);
    let (pt, pl) = (s.win.pads[0], s.win.pads[1]);
    let gp = t.gpack;
    let (cg, og) = (s.cg(), s.og());
    let (cs, os) = (cg * gp, og * gp);
    let blocks = s.groups / gp;
    let n_ct = cs.div_ceil(parts);
    let n_ot = os.div_ceil(parts);
    let wbuf = ctx.buf("w")?;
    let band = ctx.buf("band")?;
    let acc = ctx.buf("acc")?;
    let work = ctx.buf("work")?;
    let outb = ctx.buf("out")?;
    let wv = &s.wv;
    let ws = &wv.strides;

    // Packed groups: block-diagonal weights `[block][c][tap][o]` (zeros between the
    // groups), built at compile time and loaded with one DMA per block (the partition
    // start rules forbid writing a group's few channels at an arbitrary partition).
    if gp > 1 {
        let data = s
            .w_data
            .as_ref()
            .ok_or_else(|| ctx.err("internal: packed groups without constant weights"))?;
        let mut bd = vec![0f32; blocks * cs * taps * os];
        for grp in 0..s.groups {
            let (blk, j) = (grp / gp, grp % gp);
            for ol in 0..og {
                for cl in 0..cg {
                    for tap in 0..taps {
                        let src = ((grp * og + ol) * cg + cl) * taps + tap;
                        let dst = ((blk * cs + j * cg + cl) * taps + tap) * os + j * og + ol;
                        bd[dst] = data.get(src).copied().unwrap_or(0.0);
                    }
                }
            }
        }
        let cid = ctx.constant("block_diag_w", bd);
        for blk in 0..blocks {
            let src = Ap {
                mem: Memory::Hbm(cid),
                dtype: Dtype::F32,
                offset: (blk * cs * taps * os * 4) as u64,
                start_partition: 0,
                partitions: cs as u32,
                partition_stride: (taps * os) as i64,
                dims: dense(taps * os),
            };
            let dst = sbuf(
                Memory::Sbuf,
                mm,
                0,
                cs,
                wbuf.slot(0) + (blk * taps * os) as u64 * esz,
                dense(taps * os),
            );
            ctx.prefetch(dst, src);
        }
    }
    // Tap packing: per tap group (kernel column q, kernel rows `g*pack..`) a stationary
    // `[j * block + c, o] = w[o, c, g*pack + j, q]` (zero rows between the blocks), built
    // at compile time, one DMA per tap group.
    let ngr = kh.div_ceil(t.pack);
    // Partition-stacked rows: K spans every channel block up to the last kernel row.
    let prows = if t.pstack {
        (cs - 1) * t.block + kh
    } else {
        t.pack * t.block
    };
    if t.pstack {
        // Per kernel column q a stationary `[pstack_partition(c, j), o] = w[o, c, j, q]`
        // (zero rows between the blocks), one DMA each.
        let data = s
            .w_data
            .as_ref()
            .ok_or_else(|| ctx.err("internal: stacked rows without constant weights"))?;
        let mut packed = vec![0f32; kw * prows * os];
        for q in 0..kw {
            for c in 0..cs {
                for j in 0..kh {
                    let pp = pstack_partition(c, j, kh);
                    for o in 0..os {
                        let src = ((o * cs + c) * kh + j) * kw + q;
                        packed[(q * prows + pp) * os + o] = data.get(src).copied().unwrap_or(0.0);
                    }
                }
            }
        }
        prefetch_stationaries(ctx, "row_stacked_w", packed, prows, os, mm, wbuf.slot(0));
    }
    if t.pack > 1 {
        let data = s
            .w_data
            .as_ref()
            .ok_or_else(|| ctx.err("internal: tap packing without constant weights"))?;
        let ntg = kw * ngr;
        let mut packed = vec![0f32; ntg * prows * os];
        for q in 0..kw {
            for g in 0..ngr {
                let tg = q * ngr + g;
                for j in 0..t.pack.min(kh - g * t.pack) {
                    let p = g * t.pack + j;
                    for c in 0..cs {
                        for o in 0..os {
                            let src = ((o * cs + c) * kh + p) * kw + q;
                            let dst = (tg * prows + j * t.block + c) * os + o;
                            packed[dst] = data.get(src).copied().unwrap_or(0.0);
                        }
                    }
                }
            }
        }
        prefetch_stationaries(ctx, "tap_packed_w", packed, prows, os, mm, wbuf.slot(0));
    }
    // Resident weights `[c, tap, o]` per (group block, channel tile).
    for blk in (0..blocks).filter(|_| gp == 1 && t.pack == 1 && !t.pstack) {
        for ct in 0..n_ct {
            let c0 = ct * parts;
            let cp = (cs - c0).min(parts);
            let base = wbuf.slot(0) + ((blk * n_ct + ct) * taps * os) as u64 * esz;
            {
                let grp = blk;
                let (p0, np, cl0) = (0, cp, c0);
                let src = Ap {
                    mem: Memory::Hbm(wt),
                    dtype: wdt,
                    offset: (wv.offset as i64
                        + (grp * og) as i64 * ws[0] as i64
                        + cl0 as i64 * ws[1] as i64)
                        .max(0) as u64
                        * wdt.size(),
                    start_partition: 0,
                    partitions: np as u32,
                    partition_stride: ws[1] as i64,
                    dims: vec![
                        Dim {
                            size: kh as u32,
                            stride: ws[2] as i64,
                        },
                        Dim {
                            size: kw as u32,
                            stride: ws[3] as i64,
                        },
                        Dim {
                            size: og as u32,
                            stride: ws[0] as i64,
                        },
                    ],
                };
                let dst = sbuf(
                    Memory::Sbuf,
                    mm,
                    p0,
                    np,
                    base,
                    vec![
                        Dim {
                            size: taps as u32,
                            stride: os as i64,
                        },
                        Dim {
                            size: og as u32,
                            stride: 1,
                        },
                    ],
                );
                ctx.prefetch(dst, src);
            }
        }
    }

    // Per-channel epilogue columns, loaded once: column `ci * otiles + tile`.
    let otiles = blocks * n_ot;
    let cols_buf = if s.operands.iter().any(|o| o.2) || s.int8.is_some() {
        Some(ctx.buf("cols")?)
    } else {
        None
    };
    let mut col_index = Vec::new();
    for (i, v, per_channel) in &s.operands {
        if !per_channel {
            continue;
        }
        let ci = col_index.len();
        col_index.push(*i);
        let (tid, dt) = ctx.tensor(v)?;
        let Some(cb) = &cols_buf else { continue };
        for blk in 0..blocks {
            for oi in 0..n_ot {
                let o0 = blk * os + oi * parts;
                let no = (os - oi * parts).min(parts);
                let src = nchw_ap(v, tid, dt, (0, 1), (o0, no), (0, 1), (0, 1));
                let dst = sbuf(
                    Memory::Sbuf,
                    Dtype::F32,
                    0,
                    no,
                    cb.slot(0) + ((ci * otiles + blk * n_ot + oi) * 4) as u64,
                    dense(1),
                );
                ctx.load(dst, src);
            }
        }
    }

    // int8: the dequantization column `act_scale * w_scale[o]` after the operands' columns,
    // and the f32 staging buffer of the bands (`lower/conv_int8.rs`).
    let dq_ci = col_index.len();
    let stage = match (&s.int8, &cols_buf) {
        (Some(q), Some(cb)) => {
            let cid = ctx.constant("dequant", q.dequant.clone());
            for blk in 0..blocks {
                for oi in 0..n_ot {
                    let o0 = blk * os + oi * parts;
                    let no = (os - oi * parts).min(parts);
                    let dst = sbuf(
                        Memory::Sbuf,
                        Dtype::F32,
                        0,
                        no,
                        cb.slot(0) + ((dq_ci * otiles + blk * n_ot + oi) * 4) as u64,
                        dense(1),
                    );
                    ctx.load(dst, super::conv_int8::dequant_src(cid, o0, no));
                }
            }
            Some((q.clone(), ctx.buf("stage")?))
        }
        _ => None,
    };
    let (hb, wb) = (band_rows(&s, t, t.rows * t.sub), band_width(&s, t, t.cols));
    let img = hb * wb;
    if t.pack > 1 || t.pstack {
        // Partitions between the stacked blocks and rows no tile loads meet zero weights;
        // they must still hold finite numbers (0 * NaN is NaN).
        for i in 0..band.slots as usize {
            ctx.push(
                Engine::GpSimd,
                Op::Memset {
                    dst: sbuf(
                        Memory::Sbuf,
                        mm,
                        0,
                        prows,
                        band.slot(i),
                        dense(t.timg * img),
                    ),
                    value: 0.0,
                },
            );
            if let Some((q, st)) = &stage {
                let dst = sbuf(
                    Memory::Sbuf,
                    q.stage,
                    0,
                    prows,
                    st.slot(i),
                    dense(t.timg * img),
                );
                ctx.push(Engine::GpSimd, Op::Memset { dst, value: 0.0 });
            }
        }
    }
    let mut slot = 0usize;
    let mut oslot = 0usize;
    let mut aslot = 0usize;
    for n0 in (0..s.n).step_by(t.timg) {
        let nb = t.timg.min(s.n - n0);
        for r0 in (0..s.oh).step_by(t.rows * t.sub) {
            // `nr` rows in this transfer, computed in PSUM tiles of `t.rows` rows.
            let nr = (t.rows * t.sub).min(s.oh - r0);
            for c0 in (0..s.ow).step_by(t.cols) {
                let nc = t.cols.min(s.ow - c0);
                let spix = nb * nr * nc;
                // Input window of this tile, in input coordinates (may overhang).
                let ir0 = (r0 * sh) as i64 - pt as i64;
                let ic0 = if t.full_w {
                    0
                } else {
                    (c0 * sw) as i64 - pl as i64
                };
                let (hbr, wbr) = (s.band_h(nr), band_width(&s, t, nc));
                let vr0 = ir0.max(0);
                let vr1 = (ir0 + hbr as i64).min(s.h as i64);
                let vc0 = ic0.max(0);
                let vc1 = (ic0 + wbr as i64).min(s.w as i64);
                let padded = !t.full_h
                    && !t.pstack
                    && (vr0 != ir0
                        || vc0 != ic0
                        || vr1 != ir0 + hbr as i64
                        || vc1 != ic0 + wbr as i64);
                // Band row 0 is input row `br0` (`+ j * dh` in stacked block `j`); images
                // are `img_t` apart.
                let (br0, img_t) = if t.full_h {
                    (vr0, (vr1 - vr0).max(0) as usize * wb)
                } else {
                    (ir0, img)
                };
                for blk in 0..blocks {
                    let bslot = band.slot(slot);
                    slot += 1;
                    // Per channel tile: the resident band read in place instead of the
                    // band tile (one plain band, no padding, stacking or staging).
                    let mut band_in_place: Vec<Option<Ap>> = vec![None; n_ct];
                    for ct in 0..n_ct {
                        let c0c = ct * parts;
                        let cp = (cs - c0c).min(parts);
                        let tbase = bslot + (ct * t.timg * img) as u64 * esz;
                        if padded {
                            let np = if t.pack > 1 { prows } else { cp };
                            ctx.push(
                                Engine::GpSimd,
                                Op::Memset {
                                    dst: sbuf(Memory::Sbuf, mm, 0, np, tbase, dense(nb * img)),
                                    value: 0.0,
                                },
                            );
                        }
                        if t.pstack {
                            match &stage {
                                None => {
                                    pstack_band(ctx, &s, (xt, xdt), tbase, (n0, nb), (r0, nr), img)?
                                }
                                Some((q, st)) => {
                                    // Stacked rows go to the (zeroed) staging slot, then the
                                    // whole stacked band is quantized.
                                    let mut sf = s.clone();
                                    sf.mm_dtype = q.stage;
                                    let sbase = st.slot(slot - 1)
                                        + (ct * t.timg * img) as u64 * q.stage.size();
                                    pstack_band(
                                        ctx,
                                        &sf,
                                        (xt, xdt),
                                        sbase,
                                        (n0, nb),
                                        (r0, nr),
                                        img,
                                    )?;
                                    let bnd =
                                        sbuf(Memory::Sbuf, mm, 0, prows, tbase, dense(nb * img));
                                    let stg = super::conv_int8::staged(&bnd, tbase, sbase, q.stage);
                                    super::conv_int8::quantize(ctx, q, bnd, stg);
                                }
                            }
                        }
                        // Stacked block `j` holds the band shifted down by `j` kernel rows.
                        for j in (0..t.pack).filter(|_| !t.pstack) {
                            let irj = ir0 + (j * dh) as i64;
                            let vr0 = irj.max(0);
                            let vr1 = (irj + hbr as i64).min(s.h as i64);
                            if vr1 <= vr0 || vc1 <= vc0 {
                                continue;
                            }
                            let xs = &s.x.strides;
                            let ch0 = blk * cs + c0c;
                            let off = s.x.offset as i64
                                + n0 as i64 * xs[0] as i64
                                + ch0 as i64 * xs[1] as i64
                                + vr0 * xs[2] as i64
                                + vc0 * xs[3] as i64;
                            let src = Ap {
                                mem: Memory::Hbm(xt),
                                dtype: xdt,
                                offset: off.max(0) as u64 * xdt.size(),
                                start_partition: 0,
                                partitions: cp as u32,
                                partition_stride: xs[1] as i64,
                                dims: vec![
                                    Dim {
                                        size: nb as u32,
                                        stride: xs[0] as i64,
                                    },
                                    Dim {
                                        size: (vr1 - vr0) as u32,
                                        stride: xs[2] as i64,
                                    },
                                    Dim {
                                        size: (vc1 - vc0) as u32,
                                        stride: xs[3] as i64,
                                    },
                                ],
                            };
                            let inner = ((vr0 - (br0 + (j * dh) as i64)) as usize * wb
                                + (vc0 - ic0) as usize)
                                as u64;
                            let dst = sbuf(
                                Memory::Sbuf,
                                mm,
                                j * t.block,
                                cp,
                                tbase + inner * esz,
                                vec![
                                    Dim {
                                        size: nb as u32,
                                        stride: img_t as i64,
                                    },
                                    Dim {
                                        size: (vr1 - vr0) as u32,
                                        stride: wb as i64,
                                    },
                                    Dim {
                                        size: (vc1 - vc0) as u32,
                                        stride: 1,
                                    },
                                ],
                            );
                            match &stage {
                                None if t.pack == 1 && !padded && inner == 0 => {
                                    match ctx.resident_in_place(&src, &dst) {
                                        Some(r) if r.dims.len() == 3 => {
                                            if let Some(b) = band_in_place.get_mut(ct) {
                                                *b = Some(r);
                                            }
                                        }
                                        _ => {
                                            ctx.load(dst, src);
                                        }
                                    }
                                }
                                None => {
                                    ctx.load(dst, src);
                                }
                                Some((q, st)) => {
                                    let bases = (bslot, st.slot(slot - 1));
                                    super::conv_int8::load_band(ctx, q, dst, src, bases);
                                }
                            }
                        }
                    }
                    for oi in 0..n_ot {
                        let ol0 = oi * parts;
                        let no = (os - ol0).min(parts);
                        let o_glob = blk * os + ol0;
                        // Epilogue operands of the whole transfer.
                        let mut sops: Vec<Option<OpTile>> =
                            vec![None; ctx.kernel.inputs.len().max(1)];
                        for (i, v, per_channel) in &s.operands {
                            if *per_channel {
                                let ci = col_index.iter().position(|c| c == i).unwrap_or(0);
                                if let Some(cb) = &cols_buf {
                                    sops[*i] = Some(OpTile::Column(sbuf(
                                        Memory::Sbuf,
                                        Dtype::F32,
                                        0,
                                        no,
                                        cb.slot(0) + ((ci * otiles + blk * n_ot + oi) * 4) as u64,
                                        dense(1),
                                    )));
                                }
                                continue;
                            }
                            let (tid, dt) = ctx.tensor(v)?;
                            let ob = ctx.buf(&format!("op{i}"))?;
                            // A residual stored in the (16-bit) elementwise type is kept in
                            // it on chip (exact), so its add runs at one element per cycle.
                            let tdt = if dt == s.act_dtype && matches!(dt, Dtype::Bf16 | Dtype::F16)
                            {
                                dt
                            } else {
                                Dtype::F32
                            };
                            let tile = ob.tile(oslot, tdt, no as u32, spix as u32);
                            let src =
                                nchw_ap(v, tid, dt, (n0, nb), (o_glob, no), (r0, nr), (c0, nc));
                            let tile = ctx.load_or_in_place(tile, src);
                            sops[*i] = Some(OpTile::Full(tile));
                        }
                        let out_tile = outb.tile(oslot, odt, no as u32, spix as u32);
                        let dst = nchw_ap(
                            &out_view,
                            ot_id,
                            odt,
                            (n0, nb),
                            (o_glob, no),
                            (r0, nr),
                            (c0, nc),
                        );
                        // A resident output is written in place by the evictions.
                        let in_place = ctx.resident_in_place(&dst, &out_tile);
                        let out_all = in_place.clone().unwrap_or(out_tile);
                        // PSUM tiles: `t.images` images (whole images then) or `t.rows`
                        // rows of one image at a time.
                        let ptiles: Vec<(usize, usize)> = (0..nb)
                            .step_by(t.images)
                            .flat_map(|i0| (0..nr).step_by(t.rows).map(move |k0| (i0, k0)))
                            .collect();
                        for (i0, k0) in ptiles {
                            let nbi = t.images.min(nb - i0);
                            let nrk = t.rows.min(nr - k0);
                            let npix = nbi * nrk * nc;
                            let pix0 = ((i0 * nr + k0) * nc) as u32;
                            let acc_dt = if stage.is_some() {
                                Dtype::I32
                            } else {
                                Dtype::F32
                            };
                            let acc_t = acc.tile(aslot, acc_dt, no as u32, npix as u32);
                            let mut first = true;
                            for ct in 0..n_ct {
                                let c0c = ct * parts;
                                let cp = (cs - c0c).min(parts);
                                let tbase = bslot + (ct * t.timg * img) as u64 * esz;
                                let wbase =
                                    wbuf.slot(0) + ((blk * n_ct + ct) * taps * os) as u64 * esz;
                                // (weight column, band offset, K) of each matmul.
                                let mut mms = Vec::new();
                                if t.pack > 1 {
                                    for q in 0..kw {
                                        for g in 0..ngr {
                                            let nj = t.pack.min(kh - g * t.pack);
                                            mms.push((
                                                (q * ngr + g) * os,
                                                g * t.pack * dh,
                                                (nj - 1) * t.block + cp,
                                                q,
                                                None,
                                            ));
                                        }
                                    }
                                } else if t.pstack {
                                    for q in 0..kw {
                                        mms.push((q * os, 0, prows, q, None));
                                    }
                                } else {
                                    for p in 0..kh {
                                        for q in 0..kw {
                                            mms.push(((p * kw + q) * os, p * dh, cp, q, Some(p)));
                                        }
                                    }
                                }
                                // Each matmul's output rows `[il, ih)` and columns `[jl, jh)`
                                // and the band element of its first output; with full-width
                                // (full-height) bands a tap reading padding for some columns
                                // (rows) skips them, and one covering the whole tile goes
                                // first (it initializes the PSUM tile).
                                let mut mms: Vec<_> = mms
                                    .into_iter()
                                    .filter_map(|(wcol, prow, kk, q, p)| {
                                        let (jl, jh) = if t.full_w {
                                            s.valid_cols(q, c0, nc)
                                        } else {
                                            (0, nc)
                                        };
                                        let (il, ih) = match p {
                                            Some(p) if t.full_h => s.valid_rows(p, r0 + k0, nrk),
                                            _ => (0, nrk),
                                        };
                                        let col = if t.full_w {
                                            ((c0 + jl) * sw + q * dw) as i64 - pl as i64
                                        } else {
                                            (q * dw) as i64
                                        };
                                        let row = if t.pstack {
                                            (k0 + il) as i64
                                        } else {
                                            ((k0 + il) * sh + prow) as i64 + (ir0 - br0)
                                        };
                                        let boff = row * wb as i64 + col;
                                        (jh > jl && ih > il && boff >= 0).then_some((
                                            wcol,
                                            boff as usize,
                                            kk,
                                            (il, ih),
                                            (jl, jh),
                                            (row, col),
                                        ))
                                    })
                                    .collect();
                                mms.sort_by_key(|m| (m.3, m.4) != ((0, nrk), (0, nc)));
                                {
                                    for (wcol, boff, kk, (il, ih), (jl, jh), (row, col)) in mms {
                                        let stationary = sbuf(
                                            Memory::Sbuf,
                                            mm,
                                            0,
                                            kk,
                                            wbase + (wcol + ol0) as u64 * esz,
                                            dense(no),
                                        );
                                        let moving = match band_in_place
                                            .get(ct)
                                            .and_then(Option::as_ref)
                                        {
                                            // Band element (image, row, col) of the
                                            // resident map, by its pattern's strides.
                                            Some(r) => {
                                                let st = |d: usize| r.dims[d].stride;
                                                let el =
                                                    i0 as i64 * st(0) + row * st(1) + col * st(2);
                                                Ap {
                                                    offset: (r.offset as i64 + el * esz as i64)
                                                        .max(0)
                                                        as u64,
                                                    partitions: kk as u32,
                                                    dims: vec![
                                                        Dim {
                                                            size: nbi as u32,
                                                            stride: st(0),
                                                        },
                                                        Dim {
                                                            size: (ih - il) as u32,
                                                            stride: st(1) * sh as i64,
                                                        },
                                                        Dim {
                                                            size: (jh - jl) as u32,
                                                            stride: st(2) * sw as i64,
                                                        },
                                                    ],
                                                    ..r.clone()
                                                }
                                            }
                                            None => sbuf(
                                                Memory::Sbuf,
                                                mm,
                                                0,
                                                kk,
                                                tbase + (i0 * img_t + boff) as u64 * esz,
                                                vec![
                                                    Dim {
                                                        size: nbi as u32,
                                                        stride: img_t as i64,
                                                    },
                                                    Dim {
                                                        size: (ih - il) as u32,
                                                        stride: if t.pstack { wb } else { sh * wb }
                                                            as i64,
                                                    },
                                                    Dim {
                                                        size: (jh - jl) as u32,
                                                        stride: sw as i64,
                                                    },
                                                ],
                                            ),
                                        };
                                        let dst = if (il, ih, jl, jh) == (0, nrk, 0, nc) {
                                            acc_t.clone()
                                        } else {
                                            let mut d = acc_t.clone();
                                            d.offset += (il * nc + jl) as u64 * 4;
                                            d.dims = vec![
                                                Dim {
                                                    size: nbi as u32,
                                                    stride: (nrk * nc) as i64,
                                                },
                                                Dim {
                                                    size: (ih - il) as u32,
                                                    stride: nc as i64,
                                                },
                                                Dim {
                                                    size: (jh - jl) as u32,
                                                    stride: 1,
                                                },
                                            ];
                                            d
                                        };
                                        ctx.push(
                                            Engine::Tensor,
                                            Op::Matmul {
                                                dst,
                                                stationary,
                                                moving,
                                                accumulate: !first,
                                            },
                                        );
                                        first = false;
                                    }
                                }
                            }
                            let (ops, cast, out_k) =
                                tile_operands(ctx, &sops, &out_all, (pix0, npix as u32, no as u32));
                            let work_t = work.tile(aslot, s.act_dtype, no as u32, npix as u32);
                            // int8: the per-channel dequantization column of this tile.
                            let int8_col =
                                cols_buf.as_ref().filter(|_| stage.is_some()).map(|cb| {
                                    sbuf(
                                        Memory::Sbuf,
                                        Dtype::F32,
                                        0,
                                        no,
                                        cb.slot(0)
                                            + ((dq_ci * otiles + blk * n_ot + oi) * 4) as u64,
                                        dense(1),
                                    )
                                });
                            evict(ctx, &s, (acc_t, work_t, cast, out_k), &ops, int8_col)?;
                            aslot += 1;
                        }
                        if in_place.is_none() {
                            ctx.store(dst, out_all);
                        }
                        oslot += 1;
                    }
                }
            }
        }
    }
    Ok(())
}

/// Loads the band of output rows `r0..r0 + nr` of images `n0..n0 + nb` under `pstack`:
/// partition `pstack_partition(c, j)`, band row `i`, holds input row `(r0 + i) * sh + j *
/// dh - pt` of channel `c` (whole rows, pitch `W`; images `img` apart). Rows every kernel
/// row reads inside the image take one DMA per channel (partition stride `dh` rows, `-dh`
/// in block 0); at an image edge the partitions that must read padding are a prefix or
/// a suffix of the block (partition starts other than 0, 32, 64, 96 cannot be written):
/// a valid prefix is loaded after zeroing the row; a valid suffix is loaded together with
/// the invalid prefix, which reads a neighbouring channel's rows and is then zeroed.
#[allow(clippy::too_many_arguments)]
fn pstack_band(
    ctx: &mut LowerCtx<'_>,
    s: &ConvShape,
    (xt, xdt): (TensorId, Dtype),
    tbase: u64,
    (n0, nb): (usize, usize),
    (r0, nr): (usize, usize),
    img: usize,
) -> Result<(), CompileError> {
    let (kh, dh, sh, pt) = (
        s.win.kernel[0],
        s.win.dilations[0],
        s.win.strides[0],
        s.win.pads[0] as i64,
    );
    let (h, w) = (s.h as i64, s.w);
    let mm = s.mm_dtype;
    let esz = mm.size();
    let xs = &s.x.strides;
    let in_row = |i: usize, j: usize| ((r0 + i) * sh + j * dh) as i64 - pt;
    // Kernel rows `[lo, hi)` of band row `i` inside the image.
    let valid = |i: usize| {
        let lo = (0..kh).find(|&j| in_row(i, j) >= 0).unwrap_or(kh);
        let hi = (0..kh)
            .rev()
            .find(|&j| in_row(i, j) < h)
            .map_or(0, |j| j + 1);
        (lo, hi.max(lo))
    };
    // One DMA: band rows `i0..i0 + ni`, partitions `c*32 .. c*32 + np` of channel `c`.
    let load = |ctx: &mut LowerCtx<'_>, c: usize, i0: usize, ni: usize, np: usize| {
        // Partition 0 of the block holds kernel row `kh - 1` (block 0) or 0.
        let (j0, pstride) = if c == 0 {
            (kh - 1, -((dh * w) as i64))
        } else {
            (0, (dh * w) as i64)
        };
        let off = s.x.offset as i64
            + n0 as i64 * xs[0] as i64
            + c as i64 * xs[1] as i64
            + in_row(i0, j0) * w as i64;
        let src = Ap {
            mem: Memory::Hbm(xt),
            dtype: xdt,
            offset: off.max(0) as u64 * xdt.size(),
            start_partition: 0,
            partitions: np as u32,
            partition_stride: pstride,
            dims: vec![
                Dim {
                    size: nb as u32,
                    stride: xs[0] as i64,
                },
                Dim {
                    size: ni as u32,
                    stride: (sh * w) as i64,
                },
                Dim {
                    size: w as u32,
                    stride: 1,
                },
            ],
        };
        let dst = sbuf(
            Memory::Sbuf,
            mm,
            c * 32,
            np,
            tbase + (i0 * w) as u64 * esz,
            vec![
                Dim {
                    size: nb as u32,
                    stride: img as i64,
                },
                Dim {
                    size: ni as u32,
                    stride: w as i64,
                },
                Dim {
                    size: w as u32,
                    stride: 1,
                },
            ],
        );
        ctx.load(dst, src);
    };
    let zero = |ctx: &mut LowerCtx<'_>, c: usize, i: usize, np: usize| {
        ctx.push(
            Engine::GpSimd,
            Op::Memset {
                dst: sbuf(
                    Memory::Sbuf,
                    mm,
                    c * 32,
                    np,
                    tbase + (i * w) as u64 * esz,
                    vec![
                        Dim {
                            size: nb as u32,
                            stride: img as i64,
                        },
                        Dim {
                            size: w as u32,
                            stride: 1,
                        },
                    ],
                ),
                value: 0.0,
            },
        );
    };
    let full: Vec<bool> = (0..nr).map(|i| valid(i) == (0, kh)).collect();
    for c in 0..s.c {
        // Interior rows: maximal runs of rows every kernel row reads inside the image.
        let mut i = 0;
        while i < nr {
            if full[i] {
                let i1 = (i..nr).find(|&k| !full[k]).unwrap_or(nr);
                load(ctx, c, i, i1 - i, kh);
                i = i1;
                continue;
            }
            let (lo, hi) = valid(i);
            // Partitions of the valid kernel rows.
            let (plo, phi) = if c == 0 { (kh - hi, kh - lo) } else { (lo, hi) };
            if plo == 0 {
                // Valid prefix: zero the row, load the prefix.
                zero(ctx, c, i, kh);
                if phi > 0 {
                    load(ctx, c, i, 1, phi);
                }
            } else if phi == kh {
                // Valid suffix: the prefix reads a neighbouring channel's rows (in the
                // tensor: see `choose`), then is zeroed.
                load(ctx, c, i, 1, kh);
                zero(ctx, c, i, plo);
            } else {
                return Err(ctx.err(format!(
                    "internal: stacked rows {plo}..{phi} of output row {} are neither a prefix nor a suffix",
                    r0 + i
                )));
            }
            i += 1;
        }
    }
    Ok(())
}
