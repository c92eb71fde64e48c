//! Pooling kernels (`max_pool2d`, `avg_pool2d`) on VectorE.
//!
//! Channels (and, for contiguous NCHW, images too: `N * C` planes) go on partitions. For
//! each band of output rows the input rows it needs are loaded into an SBUF tile, and one
//! VectorE `TensorReduce` folds every window: the band viewed `[rows: sh * band_width,
//! cols: sw, kh: band_width, kw: 1]`, reduced over its two innermost dims (max or add, the
//! taps in row-major order as the reference folds them), no copies. Max pools keep whole
//! input rows (no halo columns: one contiguous run per partition, so one descriptor per
//! band) and clip the windows that reach into the column padding (one reduce per run of
//! alike-clipped output columns; `-inf` never wins a max); rows of padding are `-inf`
//! rows. A max pool over a 16-bit map stays in that type on chip (a max rounds nothing)
//! and VectorE reduces 16-bit data at half cost. Average pools keep the padded band
//! (pre-filled with 0) in fp32. Averages are scaled by `1 / (kh * kw)` (`count_include_pad`) or by a constant map of
//! `1 / count` per output pixel (padding excluded, as ONNX), loaded broadcast to every
//! partition. The epilogue runs on the result like any other kernel's.

use super::chain::{self, ChainTiles, OpTile};
use super::conv::{dense, nchw_ap, sbuf};
use super::{LowerCtx, kernel_input, lowering_error, view_storage};
use crate::backend::alloc::BufferReq;
use crate::backend::layout::broadcast_view;
use crate::error::CompileError;
use crate::kernel::{EwOp, Kernel, KernelGraph, KernelOp, PoolFn, View, Window};
use neuron_isa::{AluOp, Ap, ChipConfig, Dim, Dtype, Engine, Memory, Op, Operand};
use std::fmt;

/// Blocking of a pooling kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolTiling {
    /// Output rows per band.
    pub rows: usize,
    /// Global pooling of small planes: this many whole planes per partition per transfer
    /// (0: the banded form). Each partition's planes are adjacent in HBM, so a transfer is
    /// one long descriptor per partition, and one `TensorReduce` folds every plane.
    pub global: usize,
}

impl fmt::Display for PoolTiling {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.global > 0 {
            return write!(
                f,
                "global: {} whole planes per partition per transfer",
                self.global
            );
        }
        write!(
            f,
            "planes on partitions, bands of {} output rows",
            self.rows
        )
    }
}

/// The shape facts of a pooling kernel.
#[derive(Debug, Clone)]
pub struct PoolShape {
    /// Planes (`N * C` when the views allow merging, else `C` with `images` = N).
    pub images: usize,
    /// Planes per image.
    pub planes: usize,
    /// Input height and width.
    pub h: usize,
    /// Input width.
    pub w: usize,
    /// Output height.
    pub oh: usize,
    /// Output width.
    pub ow: usize,
    /// Operator.
    pub op: PoolFn,
    /// Window.
    pub win: Window,
    /// Input view `[images, planes, H, W]`.
    pub x: View,
    /// Output view `[images, planes, OH, OW]`.
    pub out: View,
    /// Epilogue operands broadcast to the output view's shape.
    pub operands: Vec<(usize, View)>,
    /// Epilogue.
    pub epilogue: Vec<EwOp>,
    /// Epilogue dtype.
    pub act_dtype: Dtype,
    /// The on-chip type of the input band and the folded windows: the map's own 16-bit
    /// type for a max pool (a max rounds nothing, and `-inf` is exact in it), else fp32.
    pub band_dtype: Dtype,
}

impl PoolShape {
    fn band_h(&self, rows: usize) -> usize {
        (rows - 1) * self.win.strides[0] + self.win.kernel[0]
    }
    fn band_w(&self) -> usize {
        if self.full_w() {
            return self.w;
        }
        (self.ow - 1) * self.win.strides[1] + self.win.kernel[1]
    }
    /// Max pools keep whole input rows in the band (no halo columns): a band is then one
    /// contiguous run per partition, loaded by one descriptor instead of one per row, and
    /// the windows that reach into the column padding are clipped instead (`-inf` never
    /// wins a max, so dropping it changes nothing). Averages keep the padded band, where
    /// the zeros are added as the reference adds them.
    fn full_w(&self) -> bool {
        matches!(self.op, PoolFn::Max)
    }
    /// The output columns of each clipped window shape: `(first output column, count,
    /// first tap column, tap columns)` runs, in column order, covering `0..ow`.
    fn column_runs(&self) -> Vec<(usize, usize, usize, usize)> {
        let (sw, pl, kw) = (self.win.strides[1], self.win.pads[1], self.win.kernel[1]);
        let mut runs: Vec<(usize, usize, usize, usize)> = Vec::new();
        for j in 0..self.ow {
            let start = (j * sw) as i64 - pl as i64;
            let qa = (-start).clamp(0, kw as i64) as usize;
            let qb = (self.w as i64 - start).clamp(0, kw as i64) as usize;
            let nq = qb.saturating_sub(qa);
            match runs.last_mut() {
                Some(r) if r.2 == qa && r.3 == nq => r.1 += 1,
                _ => runs.push((j, 1, qa, nq)),
            }
        }
        runs
    }
}

/// Merges the image axis into the plane axis of `v` when strides allow.
fn merged(v: &View) -> Option<View> {
    let ok = v.shape[0] == 1 || v.strides[0] == v.strides[1] * v.shape[1] as isize;
    ok.then(|| View {
        tensor: v.tensor,
        offset: v.offset,
        shape: vec![1, v.shape[0] * v.shape[1], v.shape[2], v.shape[3]],
        strides: vec![0, v.strides[1], v.strides[2], v.strides[3]],
    })
}

/// Analyses a pooling kernel.
pub fn analyze(kg: &KernelGraph, k: &Kernel) -> Result<PoolShape, CompileError> {
    let err = |m: String| lowering_error(k, m);
    let KernelOp::Pool {
        x,
        op,
        window,
        epilogue,
    } = &k.op
    else {
        return Err(err("internal: not a pooling kernel".into()));
    };
    let xv = kernel_input(k, *x)?.clone();
    let out = k.output.clone();
    if xv.shape.len() != 4 || out.shape.len() != 4 || xv.shape[..2] != out.shape[..2] {
        return Err(err(format!(
            "pooling needs [N, C, H, W] in and out with the same N, C; found {:?} -> {:?}",
            xv.shape, out.shape
        )));
    }
    if window.kernel.contains(&0) || window.strides.contains(&0) || out.shape[2..].contains(&0) {
        return Err(err(format!("bad window {window:?}")));
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
        operands.push((i, b));
    }
    let (h, w, oh, ow) = (xv.shape[2], xv.shape[3], out.shape[2], out.shape[3]);
    let (_, xdt) = view_storage(kg, k, &xv, "x")?;
    let band_dtype = match (op, xdt) {
        (PoolFn::Max, Dtype::Bf16 | Dtype::F16) => xdt,
        _ => Dtype::F32,
    };
    // All planes on partitions at once when every view is plain NCHW.
    let merged_ops = operands
        .iter()
        .map(|(i, v)| merged(v).map(|m| (*i, m)))
        .collect::<Option<Vec<_>>>();
    let (xv, out, operands) = match (merged(&xv), merged(&out), merged_ops) {
        (Some(x), Some(o), Some(ops)) => (x, o, ops),
        _ => (xv, out, operands),
    };
    Ok(PoolShape {
        images: xv.shape[0],
        planes: xv.shape[1],
        h,
        w,
        oh,
        ow,
        op: *op,
        win: *window,
        x: xv,
        out,
        operands,
        epilogue: epilogue.clone(),
        act_dtype: k.act_dtype,
        band_dtype,
    })
}

/// Output rows per band: as many as keep the band near 16 KiB per partition (in its
/// on-chip type), split evenly over the bands.
pub fn choose(s: &PoolShape, cfg: &ChipConfig) -> PoolTiling {
    let per_row = (s.band_w() * s.win.strides[0]).max(1) as u64 * s.band_dtype.size();
    let rows = ((16 * 1024 / per_row) as usize).clamp(1, s.oh);
    let rows = s.oh.div_ceil(s.oh.div_ceil(rows));
    PoolTiling {
        rows,
        global: global_planes(s, cfg),
    }
}

/// Planes per partition per transfer of a global pooling (the window is the whole,
/// unpadded plane; planes merged across images and adjacent in HBM; no epilogue
/// operands), about 16 KiB per partition; 0 when the banded form applies.
fn global_planes(s: &PoolShape, cfg: &ChipConfig) -> usize {
    let parts = cfg.partitions as usize;
    let (xs, os) = (&s.x.strides, &s.out.strides);
    let plane = s.h * s.w;
    let whole = s.win.kernel == [s.h, s.w] && s.win.pads == [0; 4] && s.oh == 1 && s.ow == 1;
    let dense = xs[3] == 1 && xs[2] == s.w as isize && xs[1] == plane as isize;
    if !whole
        || !dense
        || s.images != 1
        || !s.operands.is_empty()
        || s.planes % parts != 0
        || os[1] <= 0
    {
        return 0;
    }
    let per = s.planes / parts;
    let want = (16 * 1024 / (plane * 4)).max(1);
    // The largest divisor of `per` up to `want`, so every transfer has the same shape.
    (1..=want.min(per))
        .rev()
        .find(|g| per % g == 0)
        .unwrap_or(1)
}

/// The buffers a tiling needs.
pub fn buffers(s: &PoolShape, t: &PoolTiling) -> Vec<BufferReq> {
    if t.global > 0 {
        let g = t.global as u64;
        let mut b = vec![
            BufferReq::sbuf("band", g * (s.h * s.w) as u64 * 4, 2),
            BufferReq::sbuf("acc", g * 4, 2),
            BufferReq::sbuf("work", g * 4, 2),
            BufferReq::sbuf("out", g * 4, 2),
        ];
        if chain::has_cast(&s.epilogue) {
            b.push(BufferReq::sbuf("cast", g * chain::CAST_BYTES, 1));
        }
        return b;
    }
    let band = (s.band_h(t.rows) * s.band_w()) as u64 * s.band_dtype.size();
    let npix = (t.rows * s.ow) as u64;
    let mut b = vec![
        // Three bands: one loading, one folding, one spare so a load never waits for
        // the fold of the band before.
        BufferReq::sbuf("band", band, 3),
        BufferReq::sbuf("acc", npix * 4, 2),
        BufferReq::sbuf("work", npix * 4, 2),
        BufferReq::sbuf("out", npix * 4, 2),
    ];
    if matches!(
        s.op,
        PoolFn::Avg {
            count_include_pad: false
        }
    ) {
        b.push(BufferReq::sbuf("div", npix * 4, 2));
    }
    if chain::has_cast(&s.epilogue) {
        b.push(BufferReq::sbuf("cast", npix * chain::CAST_BYTES, 1));
    }
    for (i, _) in &s.operands {
        b.push(BufferReq::sbuf(&format!("op{i}"), npix * 4, 2));
    }
    b
}

/// `1 / count` of real (non-padding) elements of each output pixel's window.
fn reciprocal_counts(s: &PoolShape) -> Vec<f32> {
    let span = |o: usize, stride: usize, pad: usize, k: usize, n: usize| {
        let start = (o * stride) as i64 - pad as i64;
        let lo = start.max(0);
        let hi = (start + k as i64).min(n as i64);
        (hi - lo).max(0) as usize
    };
    let mut v = Vec::with_capacity(s.oh * s.ow);
    for i in 0..s.oh {
        let rh = span(i, s.win.strides[0], s.win.pads[0], s.win.kernel[0], s.h);
        for j in 0..s.ow {
            let rw = span(j, s.win.strides[1], s.win.pads[1], s.win.kernel[1], s.w);
            v.push(1.0 / (rh * rw).max(1) as f32);
        }
    }
    v
}

/// Lowers a pooling kernel.
pub fn lower(ctx: &mut LowerCtx<'_>, t: &PoolTiling) -> Result<(), CompileError> {
    let s = analyze(ctx.kg, ctx.kernel)?;
    if t.global > 0 {
        return lower_global(ctx, &s, t.global);
    }
    let parts = ctx.cfg.partitions as usize;
    let (xt, xdt) = view_storage(ctx.kg, ctx.kernel, &s.x, "x")?;
    let (ot, odt) = ctx.tensor(&s.out)?;
    let odt = super::on_chip_dtype(odt);
    let band = ctx.buf("band")?;
    let accb = ctx.buf("acc")?;
    let work = ctx.buf("work")?;
    let outb = ctx.buf("out")?;
    let (kh, kw) = (s.win.kernel[0], s.win.kernel[1]);
    let (sh, sw) = (s.win.strides[0], s.win.strides[1]);
    let (pt, pl) = (s.win.pads[0], s.win.pads[1]);
    let wb = s.band_w();
    let fdt = Dtype::F32;
    let (fill, alu) = match s.op {
        PoolFn::Max => (f32::NEG_INFINITY, AluOp::Max),
        PoolFn::Avg { .. } => (0.0, AluOp::Add),
    };
    // A max pool over a 16-bit map keeps the band and the maxima in that type: half the
    // bytes, and VectorE reduces 16-bit data at half cost (trainium.md 2.3).
    let (bdt, adt) = (s.band_dtype, s.band_dtype);
    let div = match s.op {
        PoolFn::Avg {
            count_include_pad: false,
        } => Some((
            ctx.constant("inv_count", reciprocal_counts(&s)),
            ctx.buf("div")?,
        )),
        _ => None,
    };
    let mut slot = 0usize;
    for n in 0..s.images {
        for p0 in (0..s.planes).step_by(parts) {
            let np = (s.planes - p0).min(parts);
            for r0 in (0..s.oh).step_by(t.rows) {
                let nr = t.rows.min(s.oh - r0);
                let npix = nr * s.ow;
                let hbr = s.band_h(nr);
                let ir0 = (r0 * sh) as i64 - pt as i64;
                let ic0 = if s.full_w() { 0 } else { -(pl as i64) };
                let vr0 = ir0.max(0);
                let vr1 = (ir0 + hbr as i64).min(s.h as i64);
                let vc0 = ic0.max(0);
                let vc1 = (ic0 + wb as i64).min(s.w as i64);
                let padded =
                    vr0 != ir0 || vc0 != ic0 || vr1 != ir0 + hbr as i64 || vc1 != ic0 + wb as i64;
                let bbase = band.slot(slot);
                if padded {
                    ctx.push(
                        Engine::GpSimd,
                        Op::Memset {
                            dst: sbuf(Memory::Sbuf, bdt, 0, np, bbase, dense(hbr * wb)),
                            value: fill,
                        },
                    );
                }
                if vr1 > vr0 && vc1 > vc0 {
                    let xs = &s.x.strides;
                    let off = s.x.offset as i64
                        + n as i64 * xs[0] as i64
                        + p0 as i64 * xs[1] as i64
                        + vr0 * xs[2] as i64
                        + vc0 * xs[3] as i64;
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
                                size: (vc1 - vc0) as u32,
                                stride: xs[3] as i64,
                            },
                        ],
                    };
                    let inner = ((vr0 - ir0) as usize * wb + (vc0 - ic0) as usize) as u64;
                    let dst = sbuf(
                        Memory::Sbuf,
                        bdt,
                        0,
                        np,
                        bbase + inner * bdt.size(),
                        vec![
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
                    ctx.load(dst, src);
                }
                // `TensorReduce` folds every tap of every output pixel: the band viewed
                // `[rows, cols, kh, kw]` (the taps innermost, row-major, the order of the
                // reference's fold), reduced over its two innermost dims; one per run of
                // output columns whose windows are clipped alike (full-width bands).
                let acc = accb.tile(slot, adt, np as u32, npix as u32);
                let runs = if s.full_w() {
                    s.column_runs()
                } else {
                    vec![(0, s.ow, 0, kw)]
                };
                for (j0, nj, qa, nq) in runs {
                    // Band column of the run's first tap (the band starts at input column
                    // `ic0`: 0 for full-width bands, `-pl` for padded ones).
                    let col0 = (j0 * sw + qa) as i64 - pl as i64 - ic0;
                    if nq == 0 || col0 < 0 {
                        return Err(ctx.err(format!(
                            "internal: max pool output column {j0} has no input column"
                        )));
                    }
                    let src = sbuf(
                        Memory::Sbuf,
                        bdt,
                        0,
                        np,
                        bbase + col0 as u64 * bdt.size(),
                        vec![
                            Dim {
                                size: nr as u32,
                                stride: (sh * wb) as i64,
                            },
                            Dim {
                                size: nj as u32,
                                stride: sw as i64,
                            },
                            Dim {
                                size: kh as u32,
                                stride: wb as i64,
                            },
                            Dim {
                                size: nq as u32,
                                stride: 1,
                            },
                        ],
                    );
                    let dst = sbuf(
                        Memory::Sbuf,
                        adt,
                        0,
                        np,
                        acc.offset + j0 as u64 * adt.size(),
                        vec![
                            Dim {
                                size: nr as u32,
                                stride: s.ow as i64,
                            },
                            Dim {
                                size: nj as u32,
                                stride: 1,
                            },
                        ],
                    );
                    ctx.push(
                        Engine::Vector,
                        Op::TensorReduce {
                            dst,
                            src,
                            op: alu,
                            axes: 2,
                            negate: false,
                        },
                    );
                }
                match (&s.op, &div) {
                    (PoolFn::Avg { .. }, Some((cid, dbuf))) => {
                        let d = dbuf.tile(slot, fdt, np as u32, npix as u32);
                        let src = Ap {
                            mem: Memory::Hbm(*cid),
                            dtype: fdt,
                            offset: (r0 * s.ow) as u64 * 4,
                            start_partition: 0,
                            partitions: np as u32,
                            partition_stride: 0,
                            dims: dense(npix),
                        };
                        ctx.load(d.clone(), src);
                        ctx.push(
                            Engine::Vector,
                            Op::TensorTensor {
                                dst: acc.clone(),
                                a: acc.clone(),
                                b: d,
                                op: AluOp::Mul,
                            },
                        );
                    }
                    (PoolFn::Avg { .. }, None) => {
                        ctx.push(
                            Engine::Vector,
                            Op::TensorScalar {
                                dst: acc.clone(),
                                src: acc.clone(),
                                op0: AluOp::Mul,
                                operand0: Operand::Imm(1.0 / (kh * kw) as f32),
                                reverse0: false,
                                op1: AluOp::Bypass,
                                operand1: Operand::Imm(0.0),
                                reverse1: false,
                            },
                        );
                    }
                    _ => {}
                }
                let mut ops: Vec<Option<OpTile>> = vec![None; ctx.kernel.inputs.len().max(1)];
                for (i, v) in &s.operands {
                    let (tid, dt) = ctx.tensor(v)?;
                    let ob = ctx.buf(&format!("op{i}"))?;
                    let tile = ob.tile(slot, fdt, np as u32, npix as u32);
                    let src = nchw_ap(v, tid, dt, (n, 1), (p0, np), (r0, nr), (0, s.ow));
                    ctx.load(tile.clone(), src);
                    ops[*i] = Some(OpTile::Full(tile));
                }
                let cast = ctx
                    .bufs
                    .get("cast")
                    .map(|c| c.tile(0, Dtype::F32, np as u32, npix as u32));
                let tiles = ChainTiles {
                    src: acc,
                    work: work.tile(slot, s.act_dtype, np as u32, npix as u32),
                    cast,
                    out: outb.tile(slot, odt, np as u32, npix as u32),
                    operands: &ops,
                };
                let res = chain::apply(ctx, &s.epilogue, &tiles)?;
                let dst = nchw_ap(&s.out, ot, odt, (n, 1), (p0, np), (r0, nr), (0, s.ow));
                ctx.store(dst, res);
                slot += 1;
            }
        }
    }
    Ok(())
}

/// Global pooling, `g` planes per partition per transfer: partition `p` of transfer `k`
/// holds planes `(k * P + p) * g ..` (P = partitions), one contiguous run in HBM; a
/// `TensorReduce` over each plane folds its elements in the same order as the banded form's
/// taps (row-major), so the results are the same bits.
fn lower_global(ctx: &mut LowerCtx<'_>, s: &PoolShape, g: usize) -> Result<(), CompileError> {
    let parts = ctx.cfg.partitions as usize;
    let (xt, xdt) = view_storage(ctx.kg, ctx.kernel, &s.x, "x")?;
    let (ot, odt) = ctx.tensor(&s.out)?;
    let odt = super::on_chip_dtype(odt);
    let band = ctx.buf("band")?;
    let accb = ctx.buf("acc")?;
    let work = ctx.buf("work")?;
    let outb = ctx.buf("out")?;
    let plane = s.h * s.w;
    let fdt = Dtype::F32;
    let (xs, os) = (&s.x.strides, &s.out.strides);
    let block = parts * g;
    for (slot, k0) in (0..s.planes).step_by(block).enumerate() {
        let off = s.x.offset as i64 + (k0 as i64) * xs[1] as i64;
        let src = Ap {
            mem: Memory::Hbm(xt),
            dtype: xdt,
            offset: off.max(0) as u64 * xdt.size(),
            start_partition: 0,
            partitions: parts as u32,
            partition_stride: (g * plane) as i64,
            dims: dense(g * plane),
        };
        let bt = sbuf(
            Memory::Sbuf,
            fdt,
            0,
            parts,
            band.slot(slot),
            dense(g * plane),
        );
        ctx.load(bt, src);
        let acc = accb.tile(slot, fdt, parts as u32, g as u32);
        let planes = sbuf(
            Memory::Sbuf,
            fdt,
            0,
            parts,
            band.slot(slot),
            vec![
                Dim {
                    size: g as u32,
                    stride: plane as i64,
                },
                Dim {
                    size: plane as u32,
                    stride: 1,
                },
            ],
        );
        let op = match s.op {
            PoolFn::Max => AluOp::Max,
            PoolFn::Avg { .. } => AluOp::Add,
        };
        ctx.push(
            Engine::Vector,
            Op::TensorReduce {
                dst: acc.clone(),
                src: planes,
                op,
                axes: 1,
                negate: false,
            },
        );
        if let PoolFn::Avg { .. } = s.op {
            ctx.push(
                Engine::Vector,
                Op::TensorScalar {
                    dst: acc.clone(),
                    src: acc.clone(),
                    op0: AluOp::Mul,
                    operand0: Operand::Imm(1.0 / plane as f32),
                    reverse0: false,
                    op1: AluOp::Bypass,
                    operand1: Operand::Imm(0.0),
                    reverse1: false,
                },
            );
        }
        let cast = ctx
            .bufs
            .get("cast")
            .map(|c| c.tile(0, Dtype::F32, parts as u32, g as u32));
        let tiles = ChainTiles {
            src: acc,
            work: work.tile(slot, s.act_dtype, parts as u32, g as u32),
            cast,
            out: outb.tile(slot, odt, parts as u32, g as u32),
            operands: &[],
        };
        let res = chain::apply(ctx, &s.epilogue, &tiles)?;
        let dst = Ap {
            mem: Memory::Hbm(ot),
            dtype: odt,
            offset: (s.out.offset as i64 + k0 as i64 * os[1] as i64).max(0) as u64 * odt.size(),
            start_partition: 0,
            partitions: parts as u32,
            partition_stride: g as i64 * os[1] as i64,
            dims: vec![Dim {
                size: g as u32,
                stride: os[1] as i64,
            }],
        };
        ctx.store(dst, res);
    }
    Ok(())
}
