//! Simulator speed.
//!
//! - `sim_timing_only/pipeline_100k`: timing-only simulation of a 100,000-instruction
//!   double-buffered load -> matmul -> evict -> store pipeline over 5 streams, reported in
//!   instructions per second (target: >= 1 M instructions/s).
//! - `sim_timing_only/bert_base_b16`: timing-only simulation of the compiled 12-layer
//!   BERT-base, seq 128, batch 16 (trn1; `neuron_benches::bert_base_json`), in
//!   instructions per second (issue 12's target: >= 1 M instructions/s). Its DMA traffic
//!   exercises the DMA model's sharing (many queues, transfers in flight). Compiling is
//!   set-up; `Simulator::new` and `run` are timed.
//! - `sim_matmul_512/simulated` vs `sim_matmul_512/ndarray_f32`: a functional 512x512x512
//!   matmul on the simulated core (bf16 inputs in 128x128x512 tiles, FP32 PSUM accumulation
//!   over K, eviction and store included) against ndarray's f32 GEMM of the same shapes;
//!   both report FLOP/s (`2 * 512^3` elements per iteration; target: simulated >= 50%).
//!   `simulated` times `Simulator::run` only (loading the program and binding inputs is
//!   set-up, like building the input matrices for ndarray); `simulated_with_load` also
//!   times `Simulator::new` (verification, allocating and poisoning SBUF/PSUM) and the
//!   input binding.
//!
//! Building programs and inputs is outside the timed region. In the timing-only bench,
//! `Simulator::new` (which verifies the program) is inside it.

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use half::bf16;
use ndarray::Array2;
use neuron_isa::{
    ActFunc, Ap, ChipConfig, Dtype, Engine, HbmTensor, Instruction, Memory, NO_KERNEL, Op, Operand,
    Program, SemId, SemWait, Stream, TensorId, TensorKind,
};
use neuron_sim::{SimOptions, Simulator};
use std::hint::black_box;

fn sb(dtype: Dtype, offset: u64, free: u32) -> Ap {
    Ap::on_chip(Memory::Sbuf, dtype, 0, 128, offset, free)
}

fn ps(offset: u64, free: u32) -> Ap {
    Ap::on_chip(Memory::Psum, Dtype::F32, 0, 128, offset, free)
}

fn ins(op: Op, wait: &[(u32, u32)], signal: &[u32]) -> Instruction {
    Instruction {
        op,
        wait: wait
            .iter()
            .filter(|(_, c)| *c > 0)
            .map(|&(s, c)| SemWait {
                sem: SemId(s),
                count: c,
            })
            .collect(),
        signal: signal.iter().map(|&s| SemId(s)).collect(),
        kernel: NO_KERNEL,
    }
}

fn hbm_tensor(name: &str, kind: TensorKind, shape: &[u64], dtype: Dtype) -> HbmTensor {
    HbmTensor {
        name: name.into(),
        kind,
        shape: shape.to_vec(),
        dtype,
    }
}

/// `tiles` iterations of: two DMA loads (queues 0 and 1) into a double buffer, a
/// 128x128x512 bf16 matmul into one of 8 PSUM banks, a ScalarE eviction into a double
/// buffer, and a DMA store (queue 2): 5 instructions per tile.
fn pipeline(tiles: u32) -> Program {
    // Semaphores: 0 loads done, 1 matmuls done, 2 evictions done, 3 stores done.
    let (ld, mm, ev, st) = (0, 1, 2, 3);
    let mut q0 = Vec::new();
    let mut q1 = Vec::new();
    let mut q2 = Vec::new();
    let mut te = Vec::new();
    let mut se = Vec::new();
    for i in 0..tiles {
        let buf = u64::from(i % 2);
        let bank = u64::from(i % 8);
        let row = u64::from(i % 64) * 128;
        // Loads may overwrite buffer `buf` once matmul i-2 (its last reader) is done.
        let free_in = i.saturating_sub(1);
        q0.push(ins(
            Op::Dma {
                dst: sb(Dtype::Bf16, buf * 256, 128),
                src: Ap::hbm_rows(TensorId(0), Dtype::Bf16, row * 256, 128, 128, 128),
            },
            &[(mm, free_in)],
            &[ld],
        ));
        q1.push(ins(
            Op::Dma {
                dst: sb(Dtype::Bf16, 512 + buf * 1024, 512),
                src: Ap::hbm_rows(TensorId(1), Dtype::Bf16, row * 1024, 128, 512, 512),
            },
            &[(mm, free_in)],
            &[ld],
        ));
        // The matmul needs both loads of tile i and bank `bank` evicted (eviction i-8).
        te.push(ins(
            Op::Matmul {
                dst: ps(bank * 2048, 512),
                stationary: sb(Dtype::Bf16, buf * 256, 128),
                moving: sb(Dtype::Bf16, 512 + buf * 1024, 512),
                accumulate: false,
            },
            &[(ld, 2 * (i + 1)), (ev, i.saturating_sub(7))],
            &[mm],
        ));
        // The eviction writes output buffer `buf` once store i-2 is done.
        se.push(ins(
            Op::Activation {
                dst: sb(Dtype::Bf16, 4096 + buf * 1024, 512),
                src: ps(bank * 2048, 512),
                func: ActFunc::Gelu,
                scale: Operand::Imm(1.0),
                bias: None,
                accum: None,
            },
            &[(mm, i + 1), (st, i.saturating_sub(1))],
            &[ev],
        ));
        q2.push(ins(
            Op::Dma {
                dst: Ap::hbm_rows(TensorId(2), Dtype::Bf16, row * 1024, 128, 512, 512),
                src: sb(Dtype::Bf16, 4096 + buf * 1024, 512),
            },
            &[(ev, i + 1)],
            &[st],
        ));
    }
    Program {
        streams: vec![
            Stream {
                engine: Engine::Dma(0),
                instrs: q0,
            },
            Stream {
                engine: Engine::Dma(1),
                instrs: q1,
            },
            Stream {
                engine: Engine::Tensor,
                instrs: te,
            },
            Stream {
                engine: Engine::Scalar,
                instrs: se,
            },
            Stream {
                engine: Engine::Dma(2),
                instrs: q2,
            },
        ],
        semaphores: 4,
        tensors: vec![
            hbm_tensor("a", TensorKind::Input, &[8192, 128], Dtype::Bf16),
            hbm_tensor("b", TensorKind::Input, &[8192, 512], Dtype::Bf16),
            hbm_tensor("c", TensorKind::Output, &[8192, 512], Dtype::Bf16),
        ],
        kernels: Vec::new(),
    }
}

fn timing_only(c: &mut Criterion) {
    let program = pipeline(20_000);
    let n = program.instruction_count() as u64;
    assert_eq!(n, 100_000);
    let cfg = ChipConfig::trn1();
    let opts = SimOptions {
        timing_only: true,
        ..SimOptions::default()
    };
    let mut g = c.benchmark_group("sim_timing_only");
    g.throughput(Throughput::Elements(n));
    g.sample_size(10);
    g.bench_function("pipeline_100k", |b| {
        b.iter(|| {
            let mut sim = Simulator::new(&program, &cfg, opts).expect("program loads");
            black_box(sim.run().expect("program runs").total_ps)
        })
    });
    g.finish();

    let json = neuron_benches::bert_base_json(16, 12);
    let graph = neuronc::frontend::parse_model(&json, std::path::Path::new("."))
        .expect("BERT-base model.json parses");
    let copts = neuronc::options::CompileOptions {
        target: cfg.clone(),
        auto_cast: neuronc::options::AutoCast::Matmult,
        ..neuronc::options::CompileOptions::default()
    };
    let bert = neuronc::driver::compile(&graph, &copts)
        .expect("BERT-base compiles")
        .artifact
        .meta
        .program;
    let mut g = c.benchmark_group("sim_timing_only");
    g.throughput(Throughput::Elements(bert.instruction_count() as u64));
    g.sample_size(10);
    g.bench_function("bert_base_b16", |b| {
        b.iter(|| {
            let mut sim = Simulator::new(&bert, &cfg, opts).expect("program loads");
            black_box(sim.run().expect("program runs").total_ps)
        })
    });
    g.finish();
}

const DIM: u32 = 512;

/// `C[512, 512] = A @ B` with `at` = A^T (`[K, M]`, the stationary layout) and `b`
/// (`[K, N]`) in HBM as bf16: all of A^T and B are loaded into SBUF as four K-tiles each
/// (queues 0 and 1), then for each of the 4 M-tiles TensorE accumulates 4 matmuls
/// (128x128x512) into its own PSUM bank, VectorE evicts it to SBUF as f32 and queue 2
/// stores it.
fn matmul_512() -> Program {
    let kt = DIM / 128;
    // SBUF layout per partition: A^T tiles at k * 1024 (512 bf16), B tiles at 4096 +
    // k * 1024, C tiles at 8192 + m * 2048 (512 f32).
    let mut q0 = Vec::new();
    let mut q1 = Vec::new();
    let mut q2 = Vec::new();
    let mut te = Vec::new();
    let mut ve = Vec::new();
    for k in 0..kt {
        let row = u64::from(k) * 128;
        q0.push(ins(
            Op::Dma {
                dst: sb(Dtype::Bf16, u64::from(k) * 1024, DIM),
                src: Ap::hbm_rows(TensorId(0), Dtype::Bf16, row * 1024, 128, 512, DIM),
            },
            &[],
            &[0],
        ));
        q1.push(ins(
            Op::Dma {
                dst: sb(Dtype::Bf16, 4096 + u64::from(k) * 1024, DIM),
                src: Ap::hbm_rows(TensorId(1), Dtype::Bf16, row * 1024, 128, 512, DIM),
            },
            &[],
            &[0],
        ));
    }
    for m in 0..kt {
        for k in 0..kt {
            te.push(ins(
                Op::Matmul {
                    dst: ps(u64::from(m) * 2048, DIM),
                    stationary: sb(Dtype::Bf16, u64::from(k) * 1024 + u64::from(m) * 256, 128),
                    moving: sb(Dtype::Bf16, 4096 + u64::from(k) * 1024, DIM),
                    accumulate: k > 0,
                },
                &[(0, 2 * kt)],
                if k + 1 == kt { &[1] } else { &[] },
            ));
        }
        ve.push(ins(
            Op::TensorCopy {
                dst: sb(Dtype::F32, 8192 + u64::from(m) * 2048, DIM),
                src: ps(u64::from(m) * 2048, DIM),
            },
            &[(1, m + 1)],
            &[2],
        ));
        q2.push(ins(
            Op::Dma {
                dst: Ap::hbm_rows(
                    TensorId(2),
                    Dtype::F32,
                    u64::from(m) * 128 * 2048,
                    128,
                    512,
                    DIM,
                ),
                src: sb(Dtype::F32, 8192 + u64::from(m) * 2048, DIM),
            },
            &[(2, m + 1)],
            &[],
        ));
    }
    let d = u64::from(DIM);
    Program {
        streams: vec![
            Stream {
                engine: Engine::Dma(0),
                instrs: q0,
            },
            Stream {
                engine: Engine::Dma(1),
                instrs: q1,
            },
            Stream {
                engine: Engine::Tensor,
                instrs: te,
            },
            Stream {
                engine: Engine::Vector,
                instrs: ve,
            },
            Stream {
                engine: Engine::Dma(2),
                instrs: q2,
            },
        ],
        semaphores: 3,
        tensors: vec![
            hbm_tensor("at", TensorKind::Input, &[d, d], Dtype::Bf16),
            hbm_tensor("b", TensorKind::Input, &[d, d], Dtype::Bf16),
            hbm_tensor("c", TensorKind::Output, &[d, d], Dtype::F32),
        ],
        kernels: Vec::new(),
    }
}

/// Deterministic pseudo-random values in [-1, 1).
fn values(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed;
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

fn bf16_bytes(v: &[f32]) -> Vec<u8> {
    v.iter()
        .flat_map(|x| bf16::from_f32(*x).to_le_bytes())
        .collect()
}

fn matmul(c: &mut Criterion) {
    let n = DIM as usize;
    let program = matmul_512();
    let cfg = ChipConfig::trn1();
    let a = values(n * n, 1);
    let b = values(n * n, 2);
    // A^T in HBM.
    let mut at = vec![0.0f32; n * n];
    for i in 0..n {
        for j in 0..n {
            at[j * n + i] = a[i * n + j];
        }
    }
    let at_bytes = bf16_bytes(&at);
    let b_bytes = bf16_bytes(&b);
    let a_nd = Array2::from_shape_vec((n, n), a).expect("shape");
    let b_nd = Array2::from_shape_vec((n, n), b).expect("shape");
    let flops = 2 * (n as u64).pow(3);

    let mut g = c.benchmark_group("sim_matmul_512");
    g.throughput(Throughput::Elements(flops));
    g.sample_size(10);
    let load = || {
        let mut sim = Simulator::new(&program, &cfg, SimOptions::default()).expect("program loads");
        sim.write_tensor(TensorId(0), &at_bytes).expect("bind at");
        sim.write_tensor(TensorId(1), &b_bytes).expect("bind b");
        sim
    };
    // The run alone: loading (verification, allocating and poisoning the SBUF and PSUM
    // bytes the program reaches, binding inputs) is set-up, as building the input matrices
    // is for ndarray.
    g.bench_function("simulated", |bch| {
        bch.iter_batched(
            load,
            |mut sim| {
                let stats = sim.run().expect("program runs");
                assert_eq!(stats.total_flops(), flops);
                black_box(sim.tensor(TensorId(2)).map(|t| t[0]).ok())
            },
            BatchSize::LargeInput,
        )
    });
    // The same including the load, for the whole picture.
    g.bench_function("simulated_with_load", |bch| {
        bch.iter(|| {
            let mut sim = load();
            let stats = sim.run().expect("program runs");
            black_box((stats.total_ps, sim.tensor(TensorId(2)).map(|t| t[0]).ok()))
        })
    });
    g.bench_function("ndarray_f32", |bch| bch.iter(|| black_box(a_nd.dot(&b_nd))));
    g.finish();
}

criterion_group!(benches, timing_only, matmul);
criterion_main!(benches);
