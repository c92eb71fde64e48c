//! Runtime execution speed: a full (numerically exact) run against a timing-only run of
//! the same program through `neuron_runtime::Model::execute`.
//!
//! - `runtime_execute/full` and `runtime_execute/timing_only` run the same artifact and
//!   report instructions per second; their ratio is the `--timing-only` speed-up
//!   (target: >= 10x). Both give the same simulated latency (checked before timing).
//!
//! The workload is a hand-built projection layer `y = gelu(W^T x)` with `W: bf16[768,
//! 768]` and `x: f32[768, 512]` (a BERT-base hidden projection over 512 tokens): 36
//! matmuls of 128x128x512 accumulating over K in PSUM, double-buffered weight tiles,
//! GELU evictions on ScalarE and stores, over 5 streams. It stands in for
//! `examples/bert_layer.json` until the compiler driver can compile that in the bench.
//!
//! Setup (building the artifact, binding inputs) is outside the timed region; setting up
//! the simulator, writing weights and inputs, running and reading outputs are inside.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use neuron_isa::{
    ActFunc, Ap, Artifact, ArtifactMeta, ChipConfig, Dtype, Engine, HbmTensor, Instruction,
    KernelInfo, Memory, Op, Operand, Program, SemId, SemWait, Stream, TensorId, TensorKind,
    WeightRange,
};
use neuron_runtime::{Model, RunOptions};
use std::collections::BTreeMap;
use std::hint::black_box;

/// 128-row tiles along K (input features) and M (output features); tokens per tile.
const KT: u32 = 6;
const MT: u32 = 6;
const TOKENS: u32 = 512;

fn sb(dtype: Dtype, offset: u64, free: u32) -> Ap {
    Ap::on_chip(Memory::Sbuf, dtype, 0, 128, offset, free)
}

fn ins(op: Op, kernel: u32, wait: &[(u32, u32)], signal: &[u32]) -> Instruction {
    Instruction {
        op,
        wait: wait
            .iter()
            .filter(|(_, c)| *c > 0)
            .map(|&(s, count)| SemWait {
                sem: SemId(s),
                count,
            })
            .collect(),
        signal: signal.iter().map(|&s| SemId(s)).collect(),
        kernel,
    }
}

fn hbm(name: &str, kind: TensorKind, shape: &[u64], dtype: Dtype) -> HbmTensor {
    HbmTensor {
        name: name.into(),
        kind,
        shape: shape.to_vec(),
        dtype,
    }
}

/// The projection layer described in the module documentation.
fn projection_artifact() -> Artifact {
    let (k_dim, m_dim, n) = (u64::from(KT * 128), u64::from(MT * 128), u64::from(TOKENS));
    // SBUF per partition: x tiles (bf16) at 0, two weight buffers, two output buffers.
    let x_at = |k: u32| u64::from(k) * n * 2;
    let w_at = |b: u32| u64::from(KT) * n * 2 + u64::from(b) * 256;
    let y_at = |b: u32| u64::from(KT) * n * 2 + 512 + u64::from(b) * n * 4;
    // Semaphores: 0 x tiles loaded, 1 weight tiles loaded, 2 matmuls done, 3 evictions
    // done, 4 stores done.
    let (xl, wl, mm, ev, st) = (0, 1, 2, 3, 4);
    let (mut q0, mut q1, mut q2, mut te, mut se) = (vec![], vec![], vec![], vec![], vec![]);
    for k in 0..KT {
        q0.push(ins(
            Op::Dma {
                dst: sb(Dtype::Bf16, x_at(k), TOKENS),
                src: Ap::hbm_rows(
                    TensorId(0),
                    Dtype::F32,
                    u64::from(k) * 128 * n * 4,
                    128,
                    n as i64,
                    TOKENS,
                ),
            },
            0,
            &[],
            &[xl],
        ));
    }
    for m in 0..MT {
        for k in 0..KT {
            let i = m * KT + k;
            // Weight buffer i % 2 is free once matmul i - 2 is done.
            q1.push(ins(
                Op::Dma {
                    dst: sb(Dtype::Bf16, w_at(i % 2), 128),
                    src: Ap::hbm_rows(
                        TensorId(1),
                        Dtype::Bf16,
                        (u64::from(k) * 128 * m_dim + u64::from(m) * 128) * 2,
                        128,
                        m_dim as i64,
                        128,
                    ),
                },
                0,
                &[(mm, i.saturating_sub(1))],
                &[wl],
            ));
            // PSUM bank m % 2 is free once eviction m - 2 is done.
            let bank_free = if k == 0 { m.saturating_sub(1) } else { 0 };
            te.push(ins(
                Op::Matmul {
                    dst: Ap::on_chip(
                        Memory::Psum,
                        Dtype::F32,
                        0,
                        128,
                        u64::from(m % 2) * 2048,
                        TOKENS,
                    ),
                    stationary: sb(Dtype::Bf16, w_at(i % 2), 128),
                    moving: sb(Dtype::Bf16, x_at(k), TOKENS),
                    accumulate: k > 0,
                },
                1,
                &[(xl, KT), (wl, i + 1), (ev, bank_free)],
                &[mm],
            ));
        }
        se.push(ins(
            Op::Activation {
                dst: sb(Dtype::F32, y_at(m % 2), TOKENS),
                src: Ap::on_chip(
                    Memory::Psum,
                    Dtype::F32,
                    0,
                    128,
                    u64::from(m % 2) * 2048,
                    TOKENS,
                ),
                func: ActFunc::Gelu,
                scale: Operand::Imm(1.0),
                bias: None,
                accum: None,
            },
            1,
            &[(mm, (m + 1) * KT), (st, m.saturating_sub(1))],
            &[ev],
        ));
        q2.push(ins(
            Op::Dma {
                dst: Ap::hbm_rows(
                    TensorId(2),
                    Dtype::F32,
                    u64::from(m) * 128 * n * 4,
                    128,
                    n as i64,
                    TOKENS,
                ),
                src: sb(Dtype::F32, y_at(m % 2), TOKENS),
            },
            1,
            &[(ev, m + 1)],
            &[st],
        ));
    }
    let flops = 2 * k_dim * m_dim * n;
    let kernel = |name: &str, kind: &str, flops| KernelInfo {
        name: name.into(),
        kind: kind.into(),
        nodes: vec![name.into()],
        flops,
        hbm_bytes: 0,
        tiling: String::new(),
    };
    let program = Program {
        streams: vec![
            Stream {
                engine: Engine::Tensor,
                instrs: te,
            },
            Stream {
                engine: Engine::Scalar,
                instrs: se,
            },
            Stream {
                engine: Engine::Dma(0),
                instrs: q0,
            },
            Stream {
                engine: Engine::Dma(1),
                instrs: q1,
            },
            Stream {
                engine: Engine::Dma(2),
                instrs: q2,
            },
        ],
        semaphores: 5,
        tensors: vec![
            hbm("x", TensorKind::Input, &[k_dim, n], Dtype::F32),
            hbm("w", TensorKind::Weight, &[k_dim, m_dim], Dtype::Bf16),
            hbm("y", TensorKind::Output, &[m_dim, n], Dtype::F32),
        ],
        kernels: vec![
            kernel("load_x", "dma", 0),
            kernel("proj+gelu", "matmul", flops),
        ],
    };
    let blob: Vec<u8> = (0..k_dim * m_dim)
        .flat_map(|i| half::bf16::from_f32(((i * 7) % 13) as f32 / 64.0 - 0.09).to_le_bytes())
        .collect();
    Artifact {
        meta: ArtifactMeta {
            model_name: "projection".into(),
            target: ChipConfig::trn1(),
            options: BTreeMap::new(),
            batch_size: 1,
            model_flops: flops,
            seed: 0,
            index_bounds: BTreeMap::new(),
            program,
            weights: vec![WeightRange {
                tensor: TensorId(1),
                offset: 0,
                len: blob.len() as u64,
            }],
        },
        blob,
    }
}

fn execute(c: &mut Criterion) {
    let model = match Model::from_artifact(projection_artifact()) {
        Ok(m) => m,
        Err(e) => panic!("bench artifact is invalid: {e}"),
    };
    let mut inputs = model.bind();
    if let Err(e) = inputs.generate_missing(1) {
        panic!("cannot bind bench inputs: {e}");
    }
    let full = RunOptions::default();
    let fast = RunOptions {
        timing_only: true,
        ..RunOptions::default()
    };
    let run = |opts: &RunOptions| match model.execute(&inputs, opts) {
        Ok(r) => r,
        Err(e) => panic!("bench run failed: {e}"),
    };
    // The speed-up only counts if timing-only really times the same program.
    let (a, b) = (run(&full), run(&fast));
    assert_eq!(
        a.stats.total_ps, b.stats.total_ps,
        "timing-only latency differs"
    );
    assert_eq!(a.outputs.len(), 1);

    let instrs = model.artifact().meta.program.instruction_count() as u64;
    let mut g = c.benchmark_group("runtime_execute");
    g.throughput(Throughput::Elements(instrs));
    g.sample_size(10);
    g.bench_function("full", |bch| bch.iter(|| black_box(run(&full))));
    g.bench_function("timing_only", |bch| bch.iter(|| black_box(run(&fast))));
    g.finish();
}

criterion_group!(benches, execute);
criterion_main!(benches);
