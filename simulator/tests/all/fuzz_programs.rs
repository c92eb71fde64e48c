//! Property-based robustness of the verifier and the simulator on random programs.
//!
//! The generator builds random but plausible programs: a small HBM tensor table, a few
//! streams, random instructions of every `Op` variant with shape-consistent operands
//! (most of the time), random placements, strides (including 0, negative and huge),
//! semaphores and kernel indices. Half of the programs are "repaired": an instruction the
//! verifier rejects is dropped, so a good fraction of the programs reach the simulator.
//! Every program must disassemble and round-trip through an artifact; every verified
//! program must run (full and timing-only) without panicking, and both runs must agree on
//! time.

use neuron_isa::{
    ActFunc, AluOp, Ap, Artifact, ArtifactMeta, ChipConfig, Dim, Dtype, Engine, HbmTensor,
    Instruction, KernelInfo, Memory, NO_KERNEL, Op, Operand, Program, SemId, SemWait, Stream,
    TensorId, TensorKind, disasm::disassemble, verify_program,
};
use neuron_sim::{SimOptions, Simulator};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use std::collections::BTreeMap;
use std::panic::{AssertUnwindSafe, catch_unwind};

/// SplitMix64: the generator's own source of randomness, seeded by proptest.
pub struct Gen(u64);

impl Gen {
    pub fn new(seed: u64) -> Gen {
        Gen(seed)
    }

    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n > 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    /// Uniform in `lo..=hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi - lo + 1)
    }

    /// True with probability `pct` percent.
    pub fn chance(&mut self, pct: u64) -> bool {
        self.below(100) < pct
    }

    pub fn pick<T: Clone>(&mut self, items: &[T]) -> T {
        items[self.below(items.len() as u64) as usize].clone()
    }
}

const ON_CHIP_DTYPES: [Dtype; 8] = [
    Dtype::F32,
    Dtype::Bf16,
    Dtype::F16,
    Dtype::Fp8E4m3,
    Dtype::Fp8E5m2,
    Dtype::I8,
    Dtype::U8,
    Dtype::I32,
];

fn dtype(g: &mut Gen) -> Dtype {
    if g.chance(3) {
        g.pick(&Dtype::ALL)
    } else {
        g.pick(&ON_CHIP_DTYPES)
    }
}

/// A random partition count, biased to the common tile heights.
fn partitions(g: &mut Gen) -> u32 {
    match g.below(6) {
        0 => 128,
        1 => 64,
        2 => 32,
        3 => 1,
        _ => g.range(1, 128) as u32,
    }
}

/// A legal start partition for `n` partitions (usually), or a random one.
fn start_partition(g: &mut Gen, n: u32) -> u32 {
    if g.chance(5) {
        return g.below(130) as u32;
    }
    match n {
        65.. => 0,
        33..=64 => g.pick(&[0, 64]),
        _ => g.pick(&[0, 32, 64, 96]),
    }
}

/// Random free sizes with product `free` (split into up to 4 dims), or `[free]`.
fn split(g: &mut Gen, free: u32) -> Vec<u32> {
    let mut dims = Vec::new();
    let mut rest = free.max(1);
    let n = g.range(1, 4);
    for _ in 1..n {
        let divs: Vec<u32> = (1..=rest).filter(|d| rest % d == 0).take(16).collect();
        let d = g.pick(&divs);
        dims.push(d);
        rest /= d;
    }
    dims.push(rest);
    dims
}

/// A random free element count, biased small.
fn free_size(g: &mut Gen, max: u32) -> u32 {
    match g.below(4) {
        0 => 1,
        1 => g.range(1, 16) as u32,
        2 => g.range(1, u64::from(max.min(512))) as u32,
        _ => g.range(1, u64::from(max)) as u32,
    }
}

/// Strides for `sizes`: usually row-major contiguous, sometimes wild (0, negative, huge).
fn strides(g: &mut Gen, sizes: &[u32]) -> Vec<i64> {
    let mut out = vec![0i64; sizes.len()];
    let mut acc = 1i64;
    for i in (0..sizes.len()).rev() {
        out[i] = acc;
        acc *= i64::from(sizes[i]);
    }
    if g.chance(25) {
        for s in out.iter_mut() {
            if g.chance(40) {
                *s = match g.below(6) {
                    0 => 0,
                    1 => -*s,
                    2 => -(g.range(1, 64) as i64),
                    3 => g.range(1, 1024) as i64,
                    4 => g.pick(&[i64::MAX, i64::MIN, i64::MAX / 3, 1 << 40, -(1 << 33)]),
                    _ => 2 * *s,
                };
            }
        }
    }
    out
}

/// Byte span `[lo, hi)` of one row relative to its base (the verifier's arithmetic).
fn span(dims: &[Dim], esize: i128) -> (i128, i128) {
    let (mut lo, mut hi) = (0i128, 0i128);
    for d in dims {
        let r = (i128::from(d.size) - 1) * i128::from(d.stride) * esize;
        if r < 0 {
            lo += r;
        } else {
            hi += r;
        }
    }
    (lo, hi + esize)
}

/// An offset that keeps `[lo, hi)` inside `0..size` when possible (aligned to `esize`).
fn fit_offset(g: &mut Gen, lo: i128, hi: i128, size: u64, esize: u64) -> u64 {
    if g.chance(8) {
        return g.pick(&[0, 1, size, size.saturating_sub(1), u64::MAX, 1 << 50]);
    }
    let min = (-lo).max(0);
    let max = i128::from(size) - hi;
    if max < min {
        return g.below(size.max(1));
    }
    let span = (max - min) as u64;
    let off = min as u64 + g.below(span.saturating_add(1));
    let off = off - off % esize;
    if i128::from(off) < min {
        off + esize
    } else {
        off
    }
}

struct Ctx<'a> {
    g: Gen,
    cfg: &'a ChipConfig,
    tensors: Vec<HbmTensor>,
}

impl Ctx<'_> {
    /// An on-chip pattern of `p` partitions and free sizes `sizes`.
    fn on_chip(&mut self, mem: Memory, dt: Dtype, p: u32, sizes: &[u32]) -> Ap {
        let st = strides(&mut self.g, sizes);
        let dims: Vec<Dim> = sizes
            .iter()
            .zip(st)
            .map(|(&size, stride)| Dim { size, stride })
            .collect();
        let size = if mem == Memory::Psum {
            self.cfg.psum_bytes_per_partition
        } else {
            self.cfg.sbuf_bytes_per_partition
        };
        let (lo, hi) = span(&dims, i128::from(dt.size()));
        let mut offset = fit_offset(&mut self.g, lo, hi, size, dt.size());
        if mem == Memory::Psum && self.g.chance(70) {
            // Stay in one bank when it fits (TensorE writes must).
            let bank = self.cfg.psum_bank_bytes();
            if hi - lo <= i128::from(bank) && lo == 0 {
                let b = self.g.below(u64::from(self.cfg.psum_banks));
                let room = (i128::from(bank) - hi) as u64;
                let o = self.g.below(room + 1);
                offset = b * bank + o - o % dt.size();
            }
        }
        Ap {
            mem,
            dtype: dt,
            offset,
            start_partition: start_partition(&mut self.g, p),
            partitions: p,
            partition_stride: if self.g.chance(3) { 0 } else { 1 },
            dims,
        }
    }

    fn sbuf(&mut self, dt: Dtype, p: u32, sizes: &[u32]) -> Ap {
        self.on_chip(Memory::Sbuf, dt, p, sizes)
    }

    /// A pattern over HBM tensor `t` with `p` rows of free sizes `sizes`.
    fn hbm(&mut self, t: u32, dt: Dtype, p: u32, sizes: &[u32]) -> Ap {
        let st = strides(&mut self.g, sizes);
        let dims: Vec<Dim> = sizes
            .iter()
            .zip(st)
            .map(|(&size, stride)| Dim { size, stride })
            .collect();
        let row_elems: i64 = sizes.iter().map(|&s| i64::from(s)).product();
        let partition_stride = match self.g.below(8) {
            0 => 0,
            1 => -row_elems,
            2 => self.g.pick(&[i64::MAX, i64::MIN, 1 << 35]),
            _ => row_elems,
        };
        let tsize = self
            .tensors
            .get(t as usize)
            .and_then(|t| {
                t.shape
                    .iter()
                    .try_fold(t.dtype.size(), |a, &d| a.checked_mul(d))
            })
            .unwrap_or(0);
        let esize = i128::from(dt.size());
        let (lo, hi) = span(&dims, esize);
        let reach = (i128::from(p) - 1) * i128::from(partition_stride) * esize;
        let offset = fit_offset(
            &mut self.g,
            lo + reach.min(0),
            hi + reach.max(0),
            tsize,
            dt.size(),
        );
        Ap {
            mem: Memory::Hbm(TensorId(t)),
            dtype: dt,
            offset,
            start_partition: if self.g.chance(3) { 32 } else { 0 },
            partitions: p,
            partition_stride,
            dims,
        }
    }

    fn tensor_id(&mut self) -> u32 {
        let n = self.tensors.len() as u64;
        if self.g.chance(3) {
            n as u32
        } else {
            self.g.below(n) as u32
        }
    }

    /// A data operand in SBUF, PSUM (if allowed) or HBM (if allowed).
    fn data(&mut self, p: u32, free: u32, psum: bool, hbm: bool) -> Ap {
        let sizes = split(&mut self.g, free);
        let dt = dtype(&mut self.g);
        let r = self.g.below(10);
        if hbm && r < 4 {
            let t = self.tensor_id();
            self.hbm(t, dt, p, &sizes)
        } else if psum && r >= 8 {
            self.on_chip(Memory::Psum, dt, p, &sizes)
        } else {
            self.sbuf(dt, p, &sizes)
        }
    }

    /// Any data operand of `p` x `free`, memory at random (the verifier decides).
    fn data_any(&mut self, p: u32, free: u32, psum_ok: bool) -> Ap {
        let wild = self.g.chance(5);
        self.data(p, free, psum_ok || wild, wild)
    }

    fn per_partition(&mut self, p: u32, dt: Dtype) -> Ap {
        let psum = self.g.chance(10);
        let mem = if psum { Memory::Psum } else { Memory::Sbuf };
        self.on_chip(mem, dt, p, &[1])
    }

    fn operand(&mut self, p: u32) -> Operand {
        if self.g.chance(50) {
            Operand::Imm(self.g.pick(&[0.0, 1.0, -2.5, 1e30, -1e-30, f32::INFINITY]))
        } else {
            let dt = if self.g.chance(80) {
                Dtype::F32
            } else {
                dtype(&mut self.g)
            };
            Operand::PerPartition(self.per_partition(p, dt))
        }
    }

    fn alu(&mut self) -> AluOp {
        self.g.pick(&[
            AluOp::Add,
            AluOp::Sub,
            AluOp::Mul,
            AluOp::Div,
            AluOp::Max,
            AluOp::Min,
            AluOp::Pow,
            AluOp::IsEq,
            AluOp::IsNe,
            AluOp::IsGt,
            AluOp::IsGe,
            AluOp::IsLt,
            AluOp::IsLe,
            AluOp::Bypass,
        ])
    }

    /// A random op and the engine it goes to (usually an allowed one).
    fn op(&mut self, dma_queues: u8) -> (Op, Engine) {
        let kind = self.g.below(14);
        let p = partitions(&mut self.g);
        let psum_ok = self.g.chance(30);
        let op = match kind {
            0 => {
                let free = free_size(&mut self.g, 4096);
                let (dh, sh) = match self.g.below(4) {
                    0 => (false, true),
                    1 => (true, false),
                    2 => (true, true),
                    _ => (false, false),
                };
                let dst = self.data(p, free, false, dh);
                let src = self.data(p, free, false, sh);
                let src = if src.dtype == Dtype::I64 || self.g.chance(50) {
                    src
                } else {
                    Ap {
                        dtype: dst.dtype,
                        ..src
                    }
                };
                Op::Dma { dst, src }
            }
            1 => {
                let free = free_size(&mut self.g, 512);
                let sizes = split(&mut self.g, free);
                let dt = dtype(&mut self.g);
                let dst = self.sbuf(dt, p, &sizes);
                let t = self.tensor_id();
                let rows = self.g.range(1, 300) as u32;
                let tdt = dtype(&mut self.g);
                let table = self.hbm(t, tdt, rows, &[free]);
                let indices = self.sbuf(Dtype::I32, p, &[1]);
                Op::DmaGather {
                    dst,
                    table,
                    indices,
                }
            }
            2 => {
                let k = p;
                let m = free_size(&mut self.g, self.cfg.matmul_stationary_fmax);
                let n = free_size(&mut self.g, self.cfg.matmul_moving_fmax);
                let (sdt, mdt, ddt) = match self.g.below(5) {
                    0 => (Dtype::F32, Dtype::F32, Dtype::F32),
                    1 => (Dtype::I8, Dtype::U8, Dtype::I32),
                    2 => (dtype(&mut self.g), dtype(&mut self.g), dtype(&mut self.g)),
                    3 => (Dtype::Fp8E4m3, Dtype::Bf16, Dtype::F32),
                    _ => (Dtype::Bf16, Dtype::Bf16, Dtype::F32),
                };
                let ss = split(&mut self.g, m);
                let stationary = self.sbuf(sdt, k, &ss);
                let ms = split(&mut self.g, n);
                let moving = self.sbuf(mdt, k, &ms);
                let dst = self.on_chip(Memory::Psum, ddt, m, &[n]);
                Op::Matmul {
                    dst,
                    stationary,
                    moving,
                    accumulate: self.g.chance(50),
                }
            }
            3 => {
                let f = free_size(&mut self.g, 128);
                let dt = dtype(&mut self.g);
                let src = self.sbuf(dt, p, &[f]);
                let ddt = if self.g.chance(50) { dt } else { Dtype::F32 };
                let dst = self.on_chip(Memory::Psum, ddt, f, &[p]);
                Op::Transpose { dst, src }
            }
            4 => {
                let free = free_size(&mut self.g, 4096);
                let dst = self.data_any(p, free, psum_ok);
                let src = self.data_any(p, free, true);
                let bias = if self.g.chance(50) {
                    Some(self.operand(p))
                } else {
                    None
                };
                let accum = if self.g.chance(30) {
                    Some(self.per_partition(p, Dtype::F32))
                } else {
                    None
                };
                Op::Activation {
                    dst,
                    src,
                    func: self.g.pick(&ActFunc::ALL),
                    scale: self.operand(p),
                    bias,
                    accum,
                }
            }
            5 => {
                let free = free_size(&mut self.g, 4096);
                Op::TensorTensor {
                    dst: self.data_any(p, free, psum_ok),
                    a: self.data_any(p, free, true),
                    b: self.data_any(p, free, false),
                    op: self.alu(),
                }
            }
            6 => {
                let free = free_size(&mut self.g, 4096);
                Op::TensorScalar {
                    dst: self.data_any(p, free, psum_ok),
                    src: self.data_any(p, free, true),
                    op0: self.alu(),
                    operand0: self.operand(p),
                    reverse0: self.g.chance(50),
                    op1: self.alu(),
                    operand1: self.operand(p),
                    reverse1: self.g.chance(50),
                }
            }
            7 => {
                let free = free_size(&mut self.g, 4096);
                let src = self.data_any(p, free, psum_ok);
                let axes = self.g.range(1, src.dims.len() as u64 + 1) as u8;
                let n = usize::from(axes).min(src.dims.len());
                let kept: u32 = src.dims[..src.dims.len() - n]
                    .iter()
                    .map(|d| d.size)
                    .product();
                let dst = self.data_any(p, kept, false);
                let op = if self.g.chance(80) {
                    self.g
                        .pick(&[AluOp::Add, AluOp::Max, AluOp::Min, AluOp::Mul])
                } else {
                    self.alu()
                };
                Op::TensorReduce {
                    dst,
                    src,
                    op,
                    axes,
                    negate: self.g.chance(50),
                }
            }
            8 => {
                let free = free_size(&mut self.g, 600);
                let src = self.data_any(p, free, psum_ok);
                let dst = self.sbuf(Dtype::F32, p, &[6]);
                Op::BnStats { dst, src }
            }
            9 => {
                let k = self.g.range(1, 40) as u32;
                let n = if self.g.chance(90) { 3 * k } else { k };
                let sizes = split(&mut self.g, n);
                let src = self.sbuf(Dtype::F32, p, &sizes);
                let dst = self.sbuf(Dtype::F32, p, &[2]);
                Op::BnAggr { dst, src }
            }
            10 => {
                let free = free_size(&mut self.g, 4096);
                Op::TensorCopy {
                    dst: self.data_any(p, free, psum_ok),
                    src: self.data_any(p, free, true),
                }
            }
            11 => {
                let free = free_size(&mut self.g, 4096);
                Op::Memset {
                    dst: self.data_any(p, free, psum_ok),
                    value: self.g.pick(&[0.0, 1.0, -3.0, 1e38, f32::NEG_INFINITY]),
                }
            }
            12 => {
                let free = free_size(&mut self.g, 4096);
                Op::Select {
                    dst: self.data_any(p, free, psum_ok),
                    pred: self.data_any(p, free, true),
                    on_true: self.data_any(p, free, false),
                    on_false: self.data_any(p, free, false),
                }
            }
            _ => {
                let free = free_size(&mut self.g, 4096);
                let dt = dtype(&mut self.g);
                let sizes = split(&mut self.g, free);
                let dst = self.sbuf(dt, p, &sizes);
                let mut n = dst.dims.len();
                if self.g.chance(5) {
                    n += 1;
                }
                let steps = (0..n)
                    .map(|_| self.g.pick(&[0, 1, -1, 7, i32::MAX, i32::MIN]))
                    .collect();
                Op::Iota {
                    dst,
                    offset: self.g.pick(&[0, 5, -100, i32::MAX, i32::MIN]),
                    channel_multiplier: self.g.pick(&[0, 1, -1, 3, i32::MAX]),
                    steps,
                }
            }
        };
        let mut engines: Vec<Engine> = [Engine::Tensor, Engine::Vector, Engine::Scalar]
            .into_iter()
            .chain([Engine::GpSimd])
            .chain((0..dma_queues).map(Engine::Dma))
            .filter(|e| op.allowed_on(*e))
            .collect();
        if engines.is_empty() || self.g.chance(3) {
            engines = vec![Engine::Vector, Engine::Dma(dma_queues + 1)];
        }
        let e = self.g.pick(&engines);
        (op, e)
    }
}

/// A random chip (a preset, sometimes with a smaller SBUF).
fn chip(g: &mut Gen) -> ChipConfig {
    let mut cfg = if g.chance(50) {
        ChipConfig::trn1()
    } else {
        ChipConfig::trn2()
    };
    if g.chance(20) {
        cfg.sbuf_bytes_per_partition = 16 * 1024;
    }
    if g.chance(25) {
        // Unusual but valid chips: engine counts, banks, limits and extreme rates.
        cfg.dma_engines = g.pick(&[1, 2, 64, 128]);
        cfg.psum_banks = g.pick(&[1, 2, 8, 16]);
        cfg.psum_bytes_per_partition = u64::from(cfg.psum_banks) * 2048;
        cfg.matmul_moving_fmax = g.pick(&[1, 7, 512]);
        cfg.matmul_stationary_fmax = g.pick(&[1, 64, 128]);
        cfg.vector_bf16_perf_factor = g.pick(&[0, 1, 3, u32::MAX]);
        cfg.stride_penalty_bytes = g.pick(&[0, 1, u64::MAX]);
        cfg.min_ii_cycles = g.pick(&[0, 64, u64::MAX]);
        cfg.access_overhead_cycles = g.pick(&[0, 60, u64::MAX / 2]);
        cfg.gpsimd_start_cycles = g.pick(&[0, u64::MAX]);
        cfg.matmul_init_latency_cycles = g.pick(&[0, u64::MAX]);
        cfg.bn_aggr_cycles_per_triple = g.pick(&[0, 13, u64::MAX]);
        cfg.matmul_stationary_min_cycles = g.pick(&[0, 64, u64::MAX]);
        cfg.vector_clock_ghz = g.pick(&[1e-300, 1.0, 1e300, f64::MIN_POSITIVE]);
        cfg.tensor_clock_ghz = g.pick(&[1e-300, 2.8, 1e300]);
        cfg.dma_engine_bytes_per_ns = g.pick(&[1e-300, 17.0, 1e300]);
        cfg.hbm_bandwidth_bytes_per_ns = g.pick(&[1e-300, 410.0, 1e300]);
        cfg.dma_fixed_latency_ns = g.pick(&[0.0, 1300.0, 1e300]);
        cfg.dma_queue_depth = g.pick(&[1, 4, 64]);
        cfg.dma_descriptor_overhead_bytes = g.pick(&[0, 1, 256, 1 << 20]);
        cfg.dma_transpose_hbm_efficiency = g.pick(&[f64::MIN_POSITIVE, 0.9, 1.0]);
        cfg.dma_transpose_sbuf_efficiency = g.pick(&[f64::MIN_POSITIVE, 0.5, 1.0]);
    }
    cfg
}

/// A random tensor table.
fn tensors(g: &mut Gen) -> Vec<HbmTensor> {
    let n = g.range(1, 4);
    (0..n)
        .map(|i| {
            let shape = match g.below(10) {
                0 => vec![g.range(1, 64)],
                1 => vec![],
                2 if g.chance(20) => vec![u64::MAX / 2, 3],
                _ => vec![g.range(1, 300), g.range(1, 600)],
            };
            HbmTensor {
                name: format!("t{i}"),
                kind: g.pick(&[
                    TensorKind::Input,
                    TensorKind::Output,
                    TensorKind::Weight,
                    TensorKind::Scratch,
                ]),
                shape,
                dtype: dtype(g),
            }
        })
        .collect()
}

/// A random program for `cfg`; `repair` drops instructions the verifier rejects.
pub fn program(seed: u64, repair: bool) -> (Program, ChipConfig) {
    let mut g = Gen::new(seed);
    let cfg = chip(&mut g);
    let tensors = tensors(&mut g);
    let kernels: Vec<KernelInfo> = (0..g.below(3))
        .map(|i| KernelInfo {
            name: format!("k{i}"),
            kind: "elementwise".into(),
            ..KernelInfo::default()
        })
        .collect();
    let semaphores = g.below(4) as u32;
    let dma_queues = g.range(1, 3) as u8;
    let mut ctx = Ctx {
        g,
        cfg: &cfg,
        tensors,
    };
    let mut p = Program {
        streams: Vec::new(),
        semaphores,
        tensors: ctx.tensors.clone(),
        kernels,
    };
    let n = ctx.g.range(1, 10);
    let mut attempts = 0;
    let mut placed = 0;
    while placed < n && attempts < 60 {
        attempts += 1;
        let (op, engine) = ctx.op(dma_queues);
        let mut instr = Instruction::new(op);
        let g = &mut ctx.g;
        if semaphores > 0 {
            if g.chance(50) {
                instr
                    .signal
                    .push(SemId(g.below(u64::from(semaphores) + 1) as u32));
            }
            if g.chance(40) {
                instr.wait.push(SemWait {
                    sem: SemId(g.below(u64::from(semaphores)) as u32),
                    count: g.range(0, 3) as u32,
                });
            }
        }
        instr.kernel = if g.chance(50) {
            NO_KERNEL
        } else {
            g.below(p.kernels.len() as u64 + 1) as u32
        };
        let si = match p.streams.iter().position(|s| s.engine == engine) {
            Some(si) => si,
            None => {
                p.streams.push(Stream {
                    engine,
                    instrs: Vec::new(),
                });
                p.streams.len() - 1
            }
        };
        p.streams[si].instrs.push(instr);
        if repair && verify_program(&p, &cfg).is_err() {
            p.streams[si].instrs.pop();
            if p.streams[si].instrs.is_empty() {
                p.streams.remove(si);
            }
            continue;
        }
        placed += 1;
    }
    // Waits for more signals than the program ever gives deadlock; keep most satisfiable.
    let mut signals = vec![0u32; semaphores as usize + 1];
    for s in &p.streams {
        for i in &s.instrs {
            for sem in &i.signal {
                if let Some(c) = signals.get_mut(sem.0 as usize) {
                    *c += 1;
                }
            }
        }
    }
    for s in &mut p.streams {
        for i in &mut s.instrs {
            for w in &mut i.wait {
                let have = signals.get(w.sem.0 as usize).copied().unwrap_or(0);
                if w.count > have && ctx.g.chance(80) {
                    w.count = have;
                }
            }
        }
    }
    (p, cfg)
}

/// Tensor bytes for a run: random-ish data (small index-like values for i32 tensors).
pub fn tensor_bytes(t: &HbmTensor, seed: u64) -> Option<Vec<u8>> {
    let bytes = t
        .shape
        .iter()
        .try_fold(t.dtype.size(), |a, &d| a.checked_mul(d))?;
    if bytes > 1 << 24 {
        return None;
    }
    let mut g = Gen::new(seed);
    Some((0..bytes).map(|_| (g.next() % 7) as u8).collect())
}

#[derive(Default)]
struct Tally {
    cases: u64,
    verified: u64,
    ran_ok: u64,
}

/// Checks one program; returns whether it verified and whether the full run succeeded.
fn check_program(p: &Program, cfg: &ChipConfig, seed: u64) -> Result<(bool, bool), String> {
    let text = catch_unwind(AssertUnwindSafe(|| disassemble(p)))
        .map_err(|_| format!("disassemble panicked on {p:?}"))?;
    // The artifact container must round-trip any program (verified or not).
    let art = Artifact {
        meta: ArtifactMeta {
            model_name: "fuzz".into(),
            target: cfg.clone(),
            options: BTreeMap::new(),
            batch_size: 1,
            model_flops: 0,
            seed,
            index_bounds: BTreeMap::new(),
            program: p.clone(),
            weights: Vec::new(),
            training: None,
            kernel_estimates_ns: Vec::new(),
        },
        blob: Default::default(),
    };
    let bytes = art.to_bytes().map_err(|e| format!("to_bytes: {e}"))?;
    let back = Artifact::from_bytes(&bytes).map_err(|e| format!("from_bytes: {e}\n{text}"))?;
    let again = back.to_bytes().map_err(|e| format!("to_bytes: {e}"))?;
    if again != bytes {
        return Err(format!("artifact does not round-trip:\n{text}"));
    }
    if verify_program(p, cfg).is_err() {
        return Ok((false, false));
    }
    let run = |timing_only: bool| {
        catch_unwind(AssertUnwindSafe(|| {
            let opts = SimOptions {
                timing_only,
                check_races: true,
                ..SimOptions::default()
            };
            let mut sim = Simulator::new(p, cfg, opts)?;
            for (i, t) in p.tensors.iter().enumerate() {
                if let Some(b) = tensor_bytes(t, seed ^ i as u64) {
                    sim.write_tensor(TensorId(i as u32), &b)?;
                }
            }
            sim.run()
        }))
        .map_err(|e| {
            let msg = e
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            format!("simulator panicked (timing_only={timing_only}): {msg}\n{text}")
        })
    };
    let full = run(false)?;
    let timing = run(true)?;
    if let (Ok(f), Ok(t)) = (&full, &timing) {
        if f.total_ps != t.total_ps {
            return Err(format!(
                "full run took {} ps, timing-only {} ps\n{text}",
                f.total_ps, t.total_ps
            ));
        }
    }
    Ok((true, full.is_ok()))
}

/// Random programs never make the verifier, disassembler, artifact codec or simulator
/// panic, and a good fraction of them verify and run.
#[test]
fn random_programs_never_panic() {
    let mut runner = TestRunner::new(Config {
        // `FUZZ_CASES=20000` explores further (about 25 s).
        cases: std::env::var("FUZZ_CASES")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(256),
        failure_persistence: None,
        ..Config::default()
    });
    let tally = std::cell::RefCell::new(Tally::default());
    runner
        .run(&(any::<u64>(), any::<bool>()), |(seed, repair)| {
            let (p, cfg) = program(seed, repair);
            let (verified, ok) = check_program(&p, &cfg, seed).map_err(TestCaseError::fail)?;
            let mut t = tally.borrow_mut();
            t.cases += 1;
            t.verified += u64::from(verified);
            t.ran_ok += u64::from(ok);
            Ok(())
        })
        .unwrap();
    let t = tally.into_inner();
    eprintln!(
        "random programs: {} cases, {} verified, {} ran ok",
        t.cases, t.verified, t.ran_ok
    );
    assert!(
        t.verified * 5 > t.cases,
        "only {} of {} programs verified",
        t.verified,
        t.cases
    );
    assert!(t.ran_ok > 0, "no verified program ran to completion");
}
