//! A hand-written fused kernel, checked for numbers and for time:
//! `y = layer_norm(gelu(x @ w + b))` with x [128 tokens, 256] bf16, w [256, 256] bf16,
//! b [256] f32, y [128, 256] f32 (layer norm over the 256 features, eps 1e-5, no affine).
//!
//! Plan (features on partitions for the matmul so that the bias is per partition):
//! 1. Five DMA loads on queues 0-4, all at t = 0: x^T as two K-tiles `xt_i [128 k, 128 m]`
//!    (a strided HBM view), w as two K-tiles `w_i [128 k, 256 n]`, and b as `[128 n, 2]`
//!    (column j is the bias of feature tile j). Each signals s0.
//! 2. TensorE: for feature tile j = 0, 1, accumulate over K in PSUM bank j:
//!    `h^T_j [128 n, 128 m] = sum_i w_i[:, j]^T @ xt_i` (2 matmuls, the second signals s1).
//! 3. ScalarE evicts each bank: `g^T_j = gelu(h^T_j + b_j)` (per-partition bias) to SBUF
//!    as f32, signalling s2.
//! 4. TensorE transposes `g^T_j` into PSUM bank 2 as `g[128 m, j*128..]` (the second
//!    signals s3), putting tokens on partitions.
//! 5. VectorE: `bn_stats` over the 256 features (from PSUM), `bn_aggr` -> (mean, var),
//!    `rstd = (var + eps) ^ -0.5`, then `y = (g - mean) * rstd` (tensor_scalar with
//!    per-partition operands, from PSUM to SBUF), signalling s4.
//! 6. DMA queue 0 stores y after s4.

use crate::prog_builder::*;
use neuron_isa::{
    ActFunc, AluOp, Ap, ChipConfig, Dim, Dtype, Engine, Memory, Op, Operand, Program, TensorId,
    TensorKind,
};
use neuron_sim::{SimOptions, Simulator};

const M: usize = 128;
const K: usize = 256;
const N: usize = 256;

fn f32_ap(offset: u64, free: u32) -> Ap {
    sb(Dtype::F32, 0, 128, offset, free)
}

fn pp(offset: u64) -> Operand {
    Operand::PerPartition(f32_ap(offset, 1))
}

fn kernel_program() -> Program {
    // x^T K-tile i: partition k reads x[m, i*128 + k] for m = 0..128 (stride K elements).
    let xt = |i: u64| Op::Dma {
        dst: sb(Dtype::Bf16, 0, 128, i * 256, 128),
        src: Ap {
            mem: Memory::Hbm(TensorId(0)),
            dtype: Dtype::Bf16,
            offset: i * 128 * 2,
            start_partition: 0,
            partitions: 128,
            partition_stride: 1,
            dims: vec![Dim {
                size: 128,
                stride: K as i64,
            }],
        },
    };
    let w = |i: u64| Op::Dma {
        dst: sb(Dtype::Bf16, 0, 128, 512 + i * 512, 256),
        src: hbm(1, Dtype::Bf16, i * 128, 128, 256),
    };
    // b[j * 128 + p] -> partition p, column j.
    let b = Op::Dma {
        dst: f32_ap(1536, 2),
        src: Ap {
            mem: Memory::Hbm(TensorId(2)),
            dtype: Dtype::F32,
            offset: 0,
            start_partition: 0,
            partitions: 128,
            partition_stride: 1,
            dims: vec![Dim {
                size: 2,
                stride: 128,
            }],
        },
    };
    let store = Op::Dma {
        dst: hbm(3, Dtype::F32, 0, 128, 256),
        src: f32_ap(4096, 256),
    };
    let mm = |j: u64, i: u64| {
        matmul(
            ps(Dtype::F32, 0, 128, j * 2048, 128),
            sb(Dtype::Bf16, 0, 128, 512 + i * 512 + j * 256, 128),
            sb(Dtype::Bf16, 0, 128, i * 256, 128),
            i > 0,
        )
    };
    let act = |j: u64| Op::Activation {
        dst: f32_ap(2048 + j * 512, 128),
        src: ps(Dtype::F32, 0, 128, j * 2048, 128),
        func: ActFunc::Gelu,
        scale: Operand::Imm(1.0),
        bias: Some(pp(1536 + j * 4)),
        accum: None,
    };
    let tr = |j: u64| Op::Transpose {
        dst: ps(Dtype::F32, 0, 128, 4096 + j * 512, 128),
        src: f32_ap(2048 + j * 512, 128),
    };
    let g = ps(Dtype::F32, 0, 128, 4096, 256);
    let stats = Op::BnStats {
        dst: f32_ap(3072, 6),
        src: g.clone(),
    };
    let aggr = Op::BnAggr {
        dst: f32_ap(3104, 2),
        src: f32_ap(3072, 6),
    };
    let rstd = Op::TensorScalar {
        dst: f32_ap(3120, 1),
        src: f32_ap(3108, 1),
        op0: AluOp::Add,
        operand0: Operand::Imm(1e-5),
        reverse0: false,
        op1: AluOp::Pow,
        operand1: Operand::Imm(-0.5),
        reverse1: false,
    };
    let norm = Op::TensorScalar {
        dst: f32_ap(4096, 256),
        src: g,
        op0: AluOp::Sub,
        operand0: pp(3104),
        reverse0: false,
        op1: AluOp::Mul,
        operand1: pp(3120),
        reverse1: false,
    };
    program(
        vec![
            (
                Engine::Dma(0),
                vec![ins(xt(0), &[], &[0]), ins(store, &[(4, 1)], &[])],
            ),
            (Engine::Dma(1), vec![ins(xt(1), &[], &[0])]),
            (Engine::Dma(2), vec![ins(w(0), &[], &[0])]),
            (Engine::Dma(3), vec![ins(w(1), &[], &[0])]),
            (Engine::Dma(4), vec![ins(b, &[], &[0])]),
            (
                Engine::Tensor,
                vec![
                    ins(mm(0, 0), &[(0, 5)], &[]),
                    ins(mm(0, 1), &[], &[1]),
                    ins(mm(1, 0), &[], &[]),
                    ins(mm(1, 1), &[], &[1]),
                    ins(tr(0), &[(2, 1)], &[]),
                    ins(tr(1), &[(2, 2)], &[3]),
                ],
            ),
            (
                Engine::Scalar,
                vec![ins(act(0), &[(1, 1)], &[2]), ins(act(1), &[(1, 2)], &[2])],
            ),
            (
                Engine::Vector,
                vec![
                    ins(stats, &[(3, 1)], &[]),
                    op(aggr),
                    op(rstd),
                    ins(norm, &[], &[4]),
                ],
            ),
        ],
        5,
        vec![
            tensor("x", TensorKind::Input, &[M as u64, K as u64], Dtype::Bf16),
            tensor("w", TensorKind::Weight, &[K as u64, N as u64], Dtype::Bf16),
            tensor("b", TensorKind::Weight, &[N as u64], Dtype::F32),
            tensor("y", TensorKind::Output, &[M as u64, N as u64], Dtype::F32),
        ],
    )
}

/// Deterministic values in [-scale, scale).
fn values(n: usize, seed: u64, scale: f32) -> Vec<f32> {
    let mut s = seed;
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0) * scale
        })
        .collect()
}

fn bf16s(v: &[f32]) -> Vec<half::bf16> {
    v.iter().map(|x| half::bf16::from_f32(*x)).collect()
}

#[test]
fn fused_matmul_gelu_layer_norm_matches_f64_and_the_hand_timing() {
    let cfg = ChipConfig::trn1();
    let p = kernel_program();
    let x = bf16s(&values(M * K, 11, 1.0));
    let w = bf16s(&values(K * N, 12, 0.1));
    let b = values(N, 13, 0.5);
    let mut sim = Simulator::new(
        &p,
        &cfg,
        SimOptions {
            check_races: true,
            ..SimOptions::default()
        },
    )
    .expect("program is legal");
    let le = |v: &[half::bf16]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
    sim.write_tensor(TensorId(0), &le(&x)).expect("x");
    sim.write_tensor(TensorId(1), &le(&w)).expect("w");
    sim.write_tensor(
        TensorId(2),
        &b.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>(),
    )
    .expect("b");
    let stats = sim.run().expect("runs");
    assert!(stats.warnings.is_empty(), "{:?}", stats.warnings);

    // Numbers: an f64 reference from the same bf16 inputs. The chip accumulates the
    // (exact) bf16 products in FP32 and does gelu and the normalization in FP32, so the
    // normalized outputs (order 1) agree to about 1e-5; we allow 1e-4.
    let y: Vec<f32> = sim
        .tensor(TensorId(3))
        .expect("y")
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    let mut worst = 0.0f64;
    for m in 0..M {
        let g: Vec<f64> = (0..N)
            .map(|n| {
                let h = (0..K)
                    .map(|k| f64::from(x[m * K + k].to_f32()) * f64::from(w[k * N + n].to_f32()))
                    .sum::<f64>()
                    + f64::from(b[n]);
                0.5 * h * (1.0 + libm::erf(h / std::f64::consts::SQRT_2))
            })
            .collect();
        let mean = g.iter().sum::<f64>() / N as f64;
        let var = g.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / N as f64;
        for n in 0..N {
            let want = (g[n] - mean) / (var + 1e-5).sqrt();
            let got = f64::from(y[m * N + n]);
            worst = worst.max((got - want).abs());
            assert!(
                (got - want).abs() <= 1e-4,
                "y[{m}, {n}] = {got}, expected {want}"
            );
        }
    }
    assert!(
        worst > 0.0,
        "bit-identical to f64 is implausible: is the reference used?"
    );

    // Time, by hand from the cost model (trn1; T = 2.8 GHz, S = 1.4 GHz, V = 1.12 GHz):
    // - Loads: 5 transfers over all 128 partitions share the 16 DMA engines (272 B/ns <
    //   410 B/ns HBM) and never leave them idle once the 1300 ns latency is over, so the
    //   last ends when the engines have done all the work: each transfer costs its bytes
    //   times (d + 256) / d for d-byte descriptors (over the transpose efficiency 0.9 when
    //   it transposes). x^T tiles: 32 KiB, transposes with 256 B SBUF runs: 2 / 0.9. W
    //   tiles: 64 KiB of 512 B rows: 1.5. Bias: 1 KiB, a 4-byte transpose with 8 B runs:
    //   33 / 0.9. t_L = 1300 ns + (2 x 32768 x 2 / 0.9 + 2 x 65536 x 1.5 + 1024 x 33 / 0.9)
    //   / 272 = 1300 + 379790.2 / 272 = 2696.287 ns.
    // - TensorE from t_L: matmul 128x128x128 = max(min(64, 128), 128) = 128 cycles; the
    //   first pays the 64-cycle fill: 192, 128 (signals s1), 128, 128.
    // - ScalarE: gelu eviction = max(64, 128) + 60 = 188 cycles. act0 starts at
    //   t_L + 192T + 128T = t_L + 114.285 ns, ends t_L + 248.571 ns; act1 starts then
    //   (the last matmul ended at t_L + 205.713 ns) and ends t_L + 382.857 ns.
    // - TensorE transposes [128, 128] = max(128, min(64, 128)) = 128 cycles, each after an
    //   idle TensorE, so + 64 fill: tr0 ends t_L + 317.142 ns, tr1 (waits for act1) ends
    //   t_L + 382.857 + 68.571 = t_L + 451.428 ns.
    // - VectorE: bn_stats max(64, 256) + 60 = 316; bn_aggr max(64, 13 x 2) + 60 = 124;
    //   rstd max(64, 1) + 60 = 124; normalize (PSUM source) max(64, 256) + 60 = 316:
    //   880 cycles = 785.714 ns.
    // - Store: 128 x 256 x 4 = 131072 B of 1 KiB descriptors (1.25x: 217.6 B/ns) after
    //   1300 ns: 1902.353 ns.
    // Total = 2696.287 + 451.428 + 785.714 + 1902.353 = 5835.782 ns.
    let t = |c| ps_of(c, 2.8);
    let s = |c| ps_of(c, 1.4);
    let v = |c| ps_of(c, 1.12);
    let work: f64 = 2.0 * 32768.0 * 2.0 / 0.9 + 2.0 * 65536.0 * 1.5 + 1024.0 * 33.0 / 0.9;
    let t_l = 1_300_000 + (work * 1000.0 / 272.0).ceil() as u64;
    let act0_end = t_l + t(192) + t(128) + s(188);
    let act1_end = act0_end + s(188);
    let tr1_end = act1_end + t(192);
    let vec_end = tr1_end + v(316) + v(124) + v(124) + v(316);
    let store = 1_300_000 + (131_072.0f64 * 1000.0 / 217.6).ceil() as u64;
    let expected = vec_end + store;
    assert!(
        stats.total_ps.abs_diff(expected) <= 10,
        "total {} ps, hand calculation {expected} ps",
        stats.total_ps
    );
    assert!(expected.abs_diff(5_835_782) <= 2);
    let tensor = stats
        .engines
        .iter()
        .find(|e| e.engine == Engine::Tensor)
        .expect("tensor");
    assert_eq!(tensor.busy_cycles, 192 + 3 * 128 + 2 * 192);
    assert_eq!(stats.total_flops(), 2 * (M * K * N) as u64);
}
