//! Image packing for narrow convolutions (the ResNet stem, 64-channel layers).
//!
//! The cost model (trainium.md 2.3) charges a matmul `max(min(64, M), N)` cycles whatever
//! K and M are, so a layer with few input channels (K) and at most 64 output channels (M)
//! uses a small corner of the array even after its kernel rows are stacked on partitions
//! (`ConvTiling::pack`). Here several **images** share each matmul as well:
//!
//! - **K**: partition `j * block + i * C + c` holds channel `c` of image `i` (of the `k`
//!   images of one transfer) in stacked block `j` (the band shifted down by `j` kernel
//!   rows, as in the block stacking of `conv.rs`). In dense NCHW, image `i + 1`'s channels
//!   follow image `i`'s (image stride `C * H * W`), so one DMA with partition stride `H *
//!   W` fills the `k * C` partitions of a block: the 3-channel stem's band loads spread
//!   over 4 DMA engines per block instead of one. Other layouts (channel-major maps) take
//!   one DMA per image, which the partition-start rules allow when `C` is a multiple of 32.
//! - **M**: `mp = 128 / O` images per matmul: the stationary of image slot `p` has columns
//!   `h * O + o` equal to the tap's weights on the rows of image `p * mp + h` and zero on
//!   the other images' rows, so the PSUM tile `[mp * O, pixels]` holds `mp` images'
//!   output channels, evicted (bias, relu, residual) and stored together, one DMA per
//!   image.
//!
//! A 7x7 stem over 3 channels with 64 outputs: 14 matmuls per two image tiles instead of
//! 14 per image tile; a 3x3 over 64 channels: 9 per two tiles instead of 6 per tile.

use super::chain::{self, OpTile};
use super::conv::{ConvShape, ConvTiling, dense, nchw_ap, prefetch_stationaries, sbuf};
use super::{LowerCtx, view_storage};
use crate::backend::alloc::BufferReq;
use crate::error::CompileError;
use neuron_isa::{Ap, ChipConfig, Dim, Dtype, Engine, Memory, Op};

/// An image-packed blocking: images per partition block, images per matmul, block size
/// and kernel rows stacked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImagePack {
    /// Images whose channels share one partition block (`k`).
    pub images: usize,
    /// Images per matmul (output channels of `mp` images on the stationary's columns).
    pub per_mm: usize,
    /// Partitions per stacked block.
    pub block: usize,
    /// Kernel rows stacked (blocks).
    pub pack: usize,
}

/// Whether image packing applies to `s` with output tiles of whole rows (`rows` rows of
/// the full width), and its blocking.
pub fn candidate(
    s: &ConvShape,
    cfg: &ChipConfig,
    images: usize,
    full_w: bool,
) -> Option<ImagePack> {
    let parts = cfg.partitions as usize;
    // int8 convs keep the stacked lowering (its quantizing band loads and dequantizing
    // eviction are not implemented here).
    if s.groups != 1 || s.w_data.is_none() || s.int8.is_some() || s.n < 2 || images != 1 || !full_w
    {
        return None;
    }
    if s.o == 0 || s.o % 32 != 0 || s.o * 2 > parts {
        return None;
    }
    let per_mm = parts / s.o;
    let xs = &s.x.strides;
    let uniform = xs[0] == (s.c as isize) * xs[1];
    // The smallest block (most kernel rows stacked) that holds `per_mm` images.
    let block = [32, 64, 128]
        .into_iter()
        .find(|b| b / s.c.max(1) >= per_mm && *b <= parts)?;
    if !uniform && s.c % 32 != 0 {
        return None;
    }
    let mut k = (block / s.c).min(s.n);
    if k >= per_mm {
        k -= k % per_mm;
    }
    let pack = (parts / block).min(s.win.kernel[0]).max(1);
    Some(ImagePack {
        images: k,
        per_mm,
        block,
        pack,
    })
}

/// Estimated TensorE time of `ip`, ns (one matmul per image slot, row tile and tap group).
pub fn est_ns(s: &ConvShape, cfg: &ChipConfig, ip: &ImagePack, rows: usize) -> f64 {
    let slots =
        (s.n / ip.images) * ip.images.div_ceil(ip.per_mm) + (s.n % ip.images).div_ceil(ip.per_mm);
    let mms = slots * s.oh.div_ceil(rows) * s.win.kernel[1] * s.win.kernel[0].div_ceil(ip.pack);
    let per = ((rows * s.ow) as f64).max(64.0);
    let fp32 = if s.mm_dtype == Dtype::F32 { 4.0 } else { 1.0 };
    fp32 * per * mms as f64 / cfg.tensor_clock_ghz.max(1e-9)
}

/// Partitions of the stationaries: every stacked block up to the last one's images.
fn prows(s: &ConvShape, t: &ConvTiling) -> usize {
    (t.pack - 1) * t.block + t.ipack * s.c
}

/// Image slots (groups of `per_mm` images) per transfer.
fn slots(t: &ConvTiling, per_mm: usize) -> usize {
    t.ipack.div_ceil(per_mm)
}

/// Bytes per partition of the resident stationaries.
pub fn weight_bytes(s: &ConvShape, t: &ConvTiling, parts: usize) -> u64 {
    let per_mm = parts / s.o.max(1);
    let ntg = s.win.kernel[1] * s.win.kernel[0].div_ceil(t.pack);
    (slots(t, per_mm) * ntg * per_mm * s.o) as u64 * s.mm_dtype.size()
}

/// The buffers of an image-packed tiling.
pub fn buffers(s: &ConvShape, t: &ConvTiling, cfg: &ChipConfig) -> Vec<BufferReq> {
    let parts = cfg.partitions as usize;
    let npix = (t.rows * t.cols) as u64;
    let spix = npix * t.sub as u64;
    let ncols = s.operands.iter().filter(|o| o.2).count();
    let band = (s.band_h(t.rows * t.sub) * s.w) as u64 * s.mm_dtype.size();
    let d = super::conv::depth(s, t, cfg);
    let mut b = vec![
        BufferReq::sbuf("w", weight_bytes(s, t, parts), 1),
        BufferReq::sbuf("band", band, d.band),
        BufferReq::psum("acc", npix * 4, d.acc),
        BufferReq::sbuf("work", npix * s.act_dtype.size(), d.acc),
        BufferReq::sbuf("out", spix * 4, d.out),
    ];
    if ncols > 0 {
        b.push(BufferReq::sbuf("cols", ncols as u64 * 4, 1));
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

/// Partitions `i * o .. (i + 1) * o` of on-chip pattern `a`.
fn part(a: &Ap, i: usize, o: usize) -> Ap {
    let mut a = a.clone();
    a.start_partition += (i * o) as u32;
    a.partitions = o as u32;
    a
}

/// Lowers an image-packed convolution (`t.ipack > 1`).
pub fn lower(ctx: &mut LowerCtx<'_>, s: &ConvShape, t: &ConvTiling) -> Result<(), CompileError> {
    let parts = ctx.cfg.partitions as usize;
    let (xt, xdt) = view_storage(ctx.kg, ctx.kernel, &s.x, "x")?;
    let out_view = ctx.kernel.output.clone();
    let (ot_id, odt) = ctx.tensor(&out_view)?;
    let odt = super::on_chip_dtype(odt);
    let mm = s.mm_dtype;
    let esz = mm.size();
    let (kh, kw) = (s.win.kernel[0], s.win.kernel[1]);
    let (sh, sw) = (s.win.strides[0], s.win.strides[1]);
    let (dh, dw) = (s.win.dilations[0], s.win.dilations[1]);
    let (pt, pl) = (s.win.pads[0], s.win.pads[1]);
    let (c, o) = (s.c, s.o);
    let per_mm = parts / o.max(1);
    let (k, pack, block) = (t.ipack, t.pack, t.block);
    if per_mm < 2 || k * c > block || pack * block > parts || !t.full_w {
        return Err(ctx.err(format!("internal: bad image packing {t}")));
    }
    let ngr = kh.div_ceil(pack);
    let ntg = kw * ngr;
    let os = per_mm * o;
    let prows = prows(s, t);
    let nslots = slots(t, per_mm);
    let wbuf = ctx.buf("w")?;
    let band = ctx.buf("band")?;
    let acc = ctx.buf("acc")?;
    let work = ctx.buf("work")?;
    let outb = ctx.buf("out")?;

    // Stationaries per (image slot, tap group): `[j * block + i * C + c, h * O + o] =
    // w[o, c, g * pack + j, q]` for image `i = slot * per_mm + h`, zero elsewhere.
    let data = s
        .w_data
        .as_ref()
        .ok_or_else(|| ctx.err("internal: image packing without constant weights"))?;
    let mut packed = vec![0f32; nslots * ntg * prows * os];
    for sl in 0..nslots {
        for q in 0..kw {
            for g in 0..ngr {
                let st = sl * ntg + q * ngr + g;
                for j in 0..pack.min(kh - g * pack) {
                    let p = g * pack + j;
                    for h in 0..per_mm {
                        let i = sl * per_mm + h;
                        if i >= k {
                            continue;
                        }
                        for cc in 0..c {
                            for oo in 0..o {
                                let src = ((oo * c + cc) * kh + p) * kw + q;
                                let dst = (st * prows + j * block + i * c + cc) * os + h * o + oo;
                                packed[dst] = data.get(src).copied().unwrap_or(0.0);
                            }
                        }
                    }
                }
            }
        }
    }
    prefetch_stationaries(ctx, "image_packed_w", packed, prows, os, mm, wbuf.slot(0));

    // Per-channel epilogue columns, one per image of a slot (the same values).
    let cols_buf = if s.operands.iter().any(|op| op.2) {
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
        for h in 0..per_mm {
            let src = nchw_ap(v, tid, dt, (0, 1), (0, o), (0, 1), (0, 1));
            let dst = sbuf(
                Memory::Sbuf,
                Dtype::F32,
                h * o,
                o,
                cb.slot(0) + (ci * 4) as u64,
                dense(1),
            );
            ctx.load(dst, src);
        }
    }

    let hb = s.band_h(t.rows * t.sub);
    let wb = s.w;
    let img = hb * wb;
    // Rows no load reaches and partitions between the blocks meet zero weights; they
    // must still hold finite numbers (0 * NaN is NaN).
    for i in 0..band.slots as usize {
        ctx.push(
            Engine::GpSimd,
            Op::Memset {
                dst: sbuf(Memory::Sbuf, mm, 0, prows, band.slot(i), dense(img)),
                value: 0.0,
            },
        );
    }
    let xs = &s.x.strides;
    let uniform = xs[0] == (c as isize) * xs[1];
    let (mut slot, mut oslot, mut aslot) = (0usize, 0usize, 0usize);
    for n0 in (0..s.n).step_by(k) {
        let nk = k.min(s.n - n0);
        for r0 in (0..s.oh).step_by(t.rows * t.sub) {
            let nr = (t.rows * t.sub).min(s.oh - r0);
            let spix = nr * s.ow;
            let ir0 = (r0 * sh) as i64 - pt as i64;
            let hbr = s.band_h(nr);
            let tbase = band.slot(slot);
            slot += 1;
            let (vr0, vr1) = (ir0.max(0), (ir0 + hbr as i64).min(s.h as i64));
            if vr0 != ir0 || vr1 != ir0 + hbr as i64 {
                ctx.push(
                    Engine::GpSimd,
                    Op::Memset {
                        dst: sbuf(Memory::Sbuf, mm, 0, prows, tbase, dense(img)),
                        value: 0.0,
                    },
                );
            }
            // Stacked block `j`: the band shifted down by `j` dilated rows, every image.
            for j in 0..pack {
                let irj = ir0 + (j * dh) as i64;
                let (vr0, vr1) = (irj.max(0), (irj + hbr as i64).min(s.h as i64));
                if vr1 <= vr0 {
                    continue;
                }
                let inner = ((vr0 - irj) as usize * wb) as u64 * esz;
                let (loads, np) = if uniform { (1, nk * c) } else { (nk, c) };
                for i in 0..loads {
                    let off =
                        s.x.offset as i64 + (n0 + i) as i64 * xs[0] as i64 + vr0 * xs[2] as i64;
                    let src = Ap {
                        mem: Memory::Hbm(xt),
                        dtype: xdt,
                        offset: off.max(0) as u64 * xdt.size(),
                        start_partition: 0,
                        partitions: np as u32,
                        partition_stride: xs[1] as i64,
                        dims: vec![
                            Dim {
                                size: (vr1 - vr0) as u32,
                                stride: xs[2] as i64,
                            },
                            Dim {
                                size: s.w as u32,
                                stride: xs[3] as i64,
                            },
                        ],
                    };
                    let dst = sbuf(
                        Memory::Sbuf,
                        mm,
                        j * block + i * c,
                        np,
                        tbase + inner,
                        vec![
                            Dim {
                                size: (vr1 - vr0) as u32,
                                stride: wb as i64,
                            },
                            Dim {
                                size: s.w as u32,
                                stride: 1,
                            },
                        ],
                    );
                    ctx.load(dst, src);
                }
            }
            for sl in 0..nk.div_ceil(per_mm) {
                let ni = per_mm.min(nk - sl * per_mm);
                let no = ni * o;
                let img0 = n0 + sl * per_mm;
                // Epilogue operands of the slot's images.
                let mut sops: Vec<Option<OpTile>> = vec![None; ctx.kernel.inputs.len().max(1)];
                for (i, v, per_channel) in &s.operands {
                    if *per_channel {
                        let ci = col_index.iter().position(|x| x == i).unwrap_or(0);
                        if let Some(cb) = &cols_buf {
                            sops[*i] = Some(OpTile::Column(sbuf(
                                Memory::Sbuf,
                                Dtype::F32,
                                0,
                                no,
                                cb.slot(0) + (ci * 4) as u64,
                                dense(1),
                            )));
                        }
                        continue;
                    }
                    let (tid, dt) = ctx.tensor(v)?;
                    let ob = ctx.buf(&format!("op{i}"))?;
                    let tdt = if dt == s.act_dtype && matches!(dt, Dtype::Bf16 | Dtype::F16) {
                        dt
                    } else {
                        Dtype::F32
                    };
                    let tile = ob.tile(oslot, tdt, no as u32, spix as u32);
                    for h in 0..ni {
                        let src = nchw_ap(v, tid, dt, (img0 + h, 1), (0, o), (r0, nr), (0, s.ow));
                        ctx.load(part(&tile, h, o), src);
                    }
                    sops[*i] = Some(OpTile::Full(tile));
                }
                let out_all = outb.tile(oslot, odt, no as u32, spix as u32);
                for k0 in (0..nr).step_by(t.rows) {
                    let nrk = t.rows.min(nr - k0);
                    let npix = nrk * s.ow;
                    let pix0 = (k0 * s.ow) as u32;
                    let acc_t = acc.tile(aslot, Dtype::F32, no as u32, npix as u32);
                    // (stationary, band offset, K, output columns) per matmul; the one
                    // covering every column goes first (it initializes the PSUM tile).
                    let mut mms = Vec::new();
                    for q in 0..kw {
                        let (jl, jh) = s.valid_cols(q, 0, s.ow);
                        if jh <= jl {
                            continue;
                        }
                        let col = (jl * sw + q * dw) as i64 - pl as i64;
                        for g in 0..ngr {
                            let nj = pack.min(kh - g * pack);
                            let row = (k0 * sh + g * pack * dh) as i64;
                            let boff = row * wb as i64 + col;
                            if boff < 0 {
                                continue;
                            }
                            let st = sl * ntg + q * ngr + g;
                            let kk = (nj - 1) * block + nk * c;
                            mms.push((st, boff as usize, kk, (jl, jh)));
                        }
                    }
                    mms.sort_by_key(|m| m.3 != (0, s.ow));
                    let mut first = true;
                    for (st, boff, kk, (jl, jh)) in mms {
                        let stationary = sbuf(
                            Memory::Sbuf,
                            mm,
                            0,
                            kk,
                            wbuf.slot(0) + (st * os) as u64 * esz,
                            dense(no),
                        );
                        let moving = sbuf(
                            Memory::Sbuf,
                            mm,
                            0,
                            kk,
                            tbase + boff as u64 * esz,
                            vec![
                                Dim {
                                    size: nrk as u32,
                                    stride: (sh * wb) as i64,
                                },
                                Dim {
                                    size: (jh - jl) as u32,
                                    stride: sw as i64,
                                },
                            ],
                        );
                        let dst = if (jl, jh) == (0, s.ow) {
                            acc_t.clone()
                        } else {
                            let mut d = acc_t.clone();
                            d.offset += (jl * 4) as u64;
                            d.dims = vec![
                                Dim {
                                    size: nrk as u32,
                                    stride: s.ow as i64,
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
                    let (ops, cast, out_k) = super::conv::tile_operands(
                        ctx,
                        &sops,
                        &out_all,
                        (pix0, npix as u32, no as u32),
                    );
                    let work_t = work.tile(aslot, s.act_dtype, no as u32, npix as u32);
                    super::conv::evict(ctx, s, (acc_t, work_t, cast, out_k), &ops, None)?;
                    aslot += 1;
                }
                for h in 0..ni {
                    let dst = nchw_ap(
                        &out_view,
                        ot_id,
                        odt,
                        (img0 + h, 1),
                        (0, o),
                        (r0, nr),
                        (0, s.ow),
                    );
                    ctx.store(dst, part(&out_all, h, o));
                }
                oslot += 1;
            }
        }
    }
    Ok(())
}
