//! Closed-form cycle tests of the compute cost model (trainium.md 2.3), one per instruction
//! kind, on the trn1 preset: TensorE 2.8 GHz, VectorE 1.12 GHz, ScalarE and GpSimd 1.4 GHz,
//! MIN_II 64, access overhead 60, TensorE init latency 64, GpSimd start 150.

use crate::prog_builder::*;
use neuron_isa::{ActFunc, AluOp, ChipConfig, Dim, Dtype, Engine, Op, Operand, Program};

const T: f64 = 2.8;
const V: f64 = 1.12;
const S: f64 = 1.4;
const G: f64 = 1.4;

fn one(engine: Engine, o: Op) -> Program {
    program(vec![(engine, vec![op(o)])], 0, vec![])
}

fn one_dur(cfg: &ChipConfig, engine: Engine, o: Op) -> u64 {
    dur(&run_timing(&one(engine, o), cfg), 0, 0)
}

/// Two identical TensorE instructions back to back: the first pays the pipeline fill, the
/// second does not. Returns both durations.
fn tensor_pair(cfg: &ChipConfig, o: Op) -> (u64, u64) {
    let p = program(
        vec![(Engine::Tensor, vec![op(o.clone()), op(o)])],
        0,
        vec![],
    );
    let s = run_timing(&p, cfg);
    (dur(&s, 0, 0), dur(&s, 0, 1))
}

fn mm(dtype: Dtype, k: u32, m: u32, n: u32) -> Op {
    let out = if matches!(dtype, Dtype::I8 | Dtype::U8) {
        Dtype::I32
    } else {
        Dtype::F32
    };
    matmul(
        ps(out, 0, m, 0, n),
        sb(dtype, 0, k, 0, m),
        sb(dtype, 0, k, 4096, n),
        false,
    )
}

#[test]
fn bf16_matmul_128x128x512_costs_512_tensor_cycles() {
    let cfg = ChipConfig::trn1();
    let (first, second) = tensor_pair(&cfg, mm(Dtype::Bf16, 128, 128, 512));
    // max(min(64, 128), 512) = 512 cycles; the first also fills the pipeline (64).
    assert_eq!(second, ps_of(512, T));
    assert_eq!(first, ps_of(512 + 64, T));
}

#[test]
fn small_matmuls_are_floored_by_the_stationary_side() {
    let cfg = ChipConfig::trn1();
    // M = 128, N = 16: max(min(64, 128), 16) = 64.
    assert_eq!(
        tensor_pair(&cfg, mm(Dtype::Bf16, 128, 128, 16)).1,
        ps_of(64, T)
    );
    // M = 32, N = 16: max(min(64, 32), 16) = 32.
    assert_eq!(
        tensor_pair(&cfg, mm(Dtype::Bf16, 64, 32, 16)).1,
        ps_of(32, T)
    );
    // K does not matter: K = 8, M = 128, N = 200 -> 200.
    assert_eq!(
        tensor_pair(&cfg, mm(Dtype::F16, 8, 128, 200)).1,
        ps_of(200, T)
    );
}

#[test]
fn fp32_matmul_takes_four_times_bf16() {
    let cfg = ChipConfig::trn1();
    let bf16 = tensor_pair(&cfg, mm(Dtype::Bf16, 128, 128, 512)).1;
    let fp32 = tensor_pair(&cfg, mm(Dtype::F32, 128, 128, 512)).1;
    assert_eq!(fp32, ps_of(4 * 512, T));
    assert_eq!(bf16, ps_of(512, T));
    assert!((fp32 as f64 / bf16 as f64 - 4.0).abs() < 1e-5);
}

#[test]
fn fp8_and_int8_matmul_speedups() {
    // trn2: FP8 2x (double row), INT8 1x. trn1: FP8 1x, INT8 2x.
    let trn2 = ChipConfig::trn2();
    assert_eq!(
        tensor_pair(&trn2, mm(Dtype::Fp8E4m3, 128, 128, 512)).1,
        ps_of(256, 2.4)
    );
    assert_eq!(
        tensor_pair(&trn2, mm(Dtype::Bf16, 128, 128, 512)).1,
        ps_of(512, 2.4)
    );
    let trn1 = ChipConfig::trn1();
    assert_eq!(
        tensor_pair(&trn1, mm(Dtype::Fp8E5m2, 128, 128, 512)).1,
        ps_of(512, T)
    );
    assert_eq!(
        tensor_pair(&trn1, mm(Dtype::I8, 128, 128, 512)).1,
        ps_of(256, T)
    );
}

#[test]
fn matmul_flops_are_counted_per_input_dtype() {
    let cfg = ChipConfig::trn1();
    let p = program(
        vec![(
            Engine::Tensor,
            vec![
                op(mm(Dtype::Bf16, 128, 64, 512)),
                op(mm(Dtype::F32, 32, 128, 100)),
            ],
        )],
        0,
        vec![],
    );
    let s = run_timing(&p, &cfg);
    assert_eq!(s.flops.get(&Dtype::Bf16), Some(&(2 * 128 * 64 * 512)));
    assert_eq!(s.flops.get(&Dtype::F32), Some(&(2 * 32 * 128 * 100)));
    assert_eq!(rec(&s, 0, 0).flops, 2 * 128 * 64 * 512);
    assert_eq!(s.total_flops(), 2 * 128 * 64 * 512 + 2 * 32 * 128 * 100);
}

#[test]
fn transpose_cost() {
    let cfg = ChipConfig::trn1();
    // src [P=128, F=32]: max(128, min(64, 32)) = 128.
    let t = Op::Transpose {
        dst: ps(Dtype::F32, 0, 32, 0, 128),
        src: sb(Dtype::F32, 0, 128, 0, 32),
    };
    assert_eq!(tensor_pair(&cfg, t).1, ps_of(128, T));
    // src [P=16, F=128]: max(16, min(64, 128)) = 64.
    let t = Op::Transpose {
        dst: ps(Dtype::F32, 0, 128, 0, 16),
        src: sb(Dtype::F32, 0, 16, 0, 128),
    };
    assert_eq!(tensor_pair(&cfg, t).1, ps_of(64, T));
}

fn act(n: u32, accum: bool) -> Op {
    Op::Activation {
        dst: sb(Dtype::Bf16, 0, 128, 0, n),
        src: ps(Dtype::F32, 0, 128, 0, n),
        func: ActFunc::Gelu,
        scale: Operand::Imm(1.0),
        bias: Some(Operand::PerPartition(sb(Dtype::F32, 0, 128, 8192, 1))),
        accum: accum.then(|| sb(Dtype::F32, 0, 128, 8196, 1)),
    }
}

#[test]
fn activation_cost() {
    let cfg = ChipConfig::trn1();
    // max(64, 512) + 60 access overhead.
    assert_eq!(
        one_dur(&cfg, Engine::Scalar, act(512, false)),
        ps_of(572, S)
    );
    // Small N is floored by MIN_II: 64 + 60.
    assert_eq!(one_dur(&cfg, Engine::Scalar, act(10, false)), ps_of(124, S));
    // Accumulate adds MIN_II: 512 + 64 + 60.
    assert_eq!(one_dur(&cfg, Engine::Scalar, act(512, true)), ps_of(636, S));
}

fn tt(a: neuron_isa::Ap, b: neuron_isa::Ap, dst: neuron_isa::Ap, alu: AluOp) -> Op {
    Op::TensorTensor { dst, a, b, op: alu }
}

#[test]
fn tensor_tensor_cost() {
    let cfg = ChipConfig::trn1();
    let n = 256;
    // Two SBUF f32 inputs: max(64, 2N) + 60 = 572.
    let o = tt(
        sb(Dtype::F32, 0, 128, 0, n),
        sb(Dtype::F32, 0, 128, 1024, n),
        sb(Dtype::F32, 0, 128, 2048, n),
        AluOp::Max,
    );
    assert_eq!(one_dur(&cfg, Engine::Vector, o), ps_of(572, V));
    // One PSUM and one SBUF input: max(64, N) + 60 = 316.
    let o = tt(
        ps(Dtype::F32, 0, 128, 0, n),
        sb(Dtype::F32, 0, 128, 1024, n),
        sb(Dtype::F32, 0, 128, 2048, n),
        AluOp::Add,
    );
    assert_eq!(one_dur(&cfg, Engine::Vector, o), ps_of(316, V));
    // All bf16 in SBUF with add, unit stride: max(64, N) + 60 = 316.
    let o = tt(
        sb(Dtype::Bf16, 0, 128, 0, n),
        sb(Dtype::Bf16, 0, 128, 1024, n),
        sb(Dtype::Bf16, 0, 128, 2048, n),
        AluOp::Add,
    );
    assert_eq!(one_dur(&cfg, Engine::Vector, o), ps_of(316, V));
    // The same on GpSimd adds GPSIMD_START: 512 + 150 + 60 = 722 at 1.4 GHz (f32 inputs).
    let o = tt(
        sb(Dtype::F32, 0, 128, 0, n),
        sb(Dtype::F32, 0, 128, 1024, n),
        sb(Dtype::F32, 0, 128, 2048, n),
        AluOp::Max,
    );
    assert_eq!(one_dur(&cfg, Engine::GpSimd, o), ps_of(722, G));
}

#[test]
fn fewer_partitions_cost_the_same() {
    let cfg = ChipConfig::trn1();
    let full = tt(
        sb(Dtype::F32, 0, 128, 0, 300),
        sb(Dtype::F32, 0, 128, 2048, 300),
        sb(Dtype::F32, 0, 128, 4096, 300),
        AluOp::Mul,
    );
    let few = tt(
        sb(Dtype::F32, 32, 32, 0, 300),
        sb(Dtype::F32, 32, 32, 2048, 300),
        sb(Dtype::F32, 32, 32, 4096, 300),
        AluOp::Mul,
    );
    let a = one_dur(&cfg, Engine::Vector, full);
    assert_eq!(a, one_dur(&cfg, Engine::Vector, few));
    assert_eq!(a, ps_of(600 + 60, V));
}

fn ts(dst: neuron_isa::Ap, src: neuron_isa::Ap) -> Op {
    Op::TensorScalar {
        dst,
        src,
        op0: AluOp::Mul,
        operand0: Operand::Imm(2.0),
        reverse0: false,
        op1: AluOp::Add,
        operand1: Operand::PerPartition(sb(Dtype::F32, 0, 128, 16384, 1)),
        reverse1: false,
    }
}

#[test]
fn tensor_scalar_and_copy_cost() {
    let cfg = ChipConfig::trn1();
    // Two ops cost the same as one: max(64, 512) + 60.
    let o = ts(
        sb(Dtype::F32, 0, 128, 0, 512),
        sb(Dtype::F32, 0, 128, 4096, 512),
    );
    assert_eq!(one_dur(&cfg, Engine::Vector, o.clone()), ps_of(572, V));
    assert_eq!(one_dur(&cfg, Engine::Scalar, o.clone()), ps_of(572, S));
    assert_eq!(one_dur(&cfg, Engine::GpSimd, o), ps_of(722, G));
    let c = Op::TensorCopy {
        dst: sb(Dtype::Bf16, 0, 128, 0, 512),
        src: ps(Dtype::F32, 0, 128, 0, 512),
    };
    assert_eq!(one_dur(&cfg, Engine::Vector, c), ps_of(572, V));
}

#[test]
fn trn2_vector_bf16_perf_mode_halves_copies() {
    let cfg = ChipConfig::trn2();
    let v2 = 0.96;
    // bf16 SBUF -> bf16 SBUF, unit stride: 512 / 2 + 60.
    let c = Op::TensorCopy {
        dst: sb(Dtype::Bf16, 0, 128, 0, 512),
        src: sb(Dtype::Bf16, 0, 128, 4096, 512),
    };
    assert_eq!(one_dur(&cfg, Engine::Vector, c.clone()), ps_of(316, v2));
    // Not on trn1.
    assert_eq!(
        one_dur(&ChipConfig::trn1(), Engine::Vector, c),
        ps_of(572, V)
    );
    // Not from PSUM.
    let c = Op::TensorCopy {
        dst: sb(Dtype::Bf16, 0, 128, 0, 512),
        src: ps(Dtype::F32, 0, 128, 0, 512),
    };
    assert_eq!(one_dur(&cfg, Engine::Vector, c), ps_of(572, v2));
}

#[test]
fn stride_penalty_doubles_element_cost() {
    let cfg = ChipConfig::trn1();
    // Innermost stride 8 f32 elements = 32 bytes > 16: 2 x 256 + 60.
    let mut src = sb(Dtype::F32, 0, 128, 0, 256);
    src.dims = vec![Dim {
        size: 256,
        stride: 8,
    }];
    let c = Op::TensorCopy {
        dst: sb(Dtype::F32, 0, 128, 16384, 256),
        src,
    };
    assert_eq!(one_dur(&cfg, Engine::Vector, c.clone()), ps_of(572, V));
    // Stride 4 f32 = 16 bytes: no penalty.
    let mut src = sb(Dtype::F32, 0, 128, 0, 256);
    src.dims = vec![Dim {
        size: 256,
        stride: 4,
    }];
    let c = Op::TensorCopy {
        dst: sb(Dtype::F32, 0, 128, 16384, 256),
        src,
    };
    assert_eq!(one_dur(&cfg, Engine::Vector, c), ps_of(316, V));
}

#[test]
fn reduce_cost() {
    let cfg = ChipConfig::trn1();
    let r = |dtype: Dtype, alu: AluOp| Op::TensorReduce {
        dst: sb(dtype, 0, 128, 8192, 1),
        src: sb(dtype, 0, 128, 0, 512),
        op: alu,
        axes: 1,
        negate: false,
    };
    // bf16 in and out with add: N / 2 + 60.
    assert_eq!(
        one_dur(&cfg, Engine::Vector, r(Dtype::Bf16, AluOp::Add)),
        ps_of(316, V)
    );
    // f32: N + 60.
    assert_eq!(
        one_dur(&cfg, Engine::Vector, r(Dtype::F32, AluOp::Max)),
        ps_of(572, V)
    );
    // bf16 with min: N + 60.
    assert_eq!(
        one_dur(&cfg, Engine::Vector, r(Dtype::Bf16, AluOp::Min)),
        ps_of(572, V)
    );
}

#[test]
fn bn_stats_and_aggr_cost() {
    let cfg = ChipConfig::trn1();
    let st = Op::BnStats {
        dst: sb(Dtype::F32, 0, 128, 8192, 6),
        src: sb(Dtype::F32, 0, 128, 0, 512),
    };
    assert_eq!(one_dur(&cfg, Engine::Vector, st), ps_of(572, V));
    // 2 triples: max(64, 13 * 2) + 60.
    let ag = Op::BnAggr {
        dst: sb(Dtype::F32, 0, 128, 0, 2),
        src: sb(Dtype::F32, 0, 128, 64, 6),
    };
    assert_eq!(one_dur(&cfg, Engine::Vector, ag), ps_of(124, V));
    // 100 triples: 13 * 100 + 60.
    let ag = Op::BnAggr {
        dst: sb(Dtype::F32, 0, 128, 0, 2),
        src: sb(Dtype::F32, 0, 128, 64, 300),
    };
    assert_eq!(one_dur(&cfg, Engine::Vector, ag), ps_of(1360, V));
}

#[test]
fn memset_and_iota_cost() {
    let cfg = ChipConfig::trn1();
    let m = |dtype: Dtype, value: f32| Op::Memset {
        dst: sb(dtype, 0, 128, 0, 512),
        value,
    };
    // Zero into bf16: max(64, N / 2) + 60.
    assert_eq!(
        one_dur(&cfg, Engine::Vector, m(Dtype::Bf16, 0.0)),
        ps_of(316, V)
    );
    assert_eq!(
        one_dur(&cfg, Engine::Vector, m(Dtype::Bf16, 1.0)),
        ps_of(572, V)
    );
    assert_eq!(
        one_dur(&cfg, Engine::Vector, m(Dtype::F32, 0.0)),
        ps_of(572, V)
    );
    // GpSimd memset adds GPSIMD_START.
    assert_eq!(
        one_dur(&cfg, Engine::GpSimd, m(Dtype::F32, 0.0)),
        ps_of(722, G)
    );
    // iota: GPSIMD_START + N + 60 = 150 + 100 + 60.
    let i = Op::Iota {
        dst: sb(Dtype::I32, 0, 128, 0, 100),
        offset: 0,
        channel_multiplier: 1,
        steps: vec![1],
    };
    assert_eq!(one_dur(&cfg, Engine::GpSimd, i), ps_of(310, G));
}

#[test]
fn select_cost() {
    let cfg = ChipConfig::trn1();
    let s = Op::Select {
        dst: sb(Dtype::F32, 0, 128, 0, 200),
        pred: sb(Dtype::U8, 0, 128, 4096, 200),
        on_true: sb(Dtype::F32, 0, 128, 8192, 200),
        on_false: sb(Dtype::F32, 0, 128, 12288, 200),
    };
    // Both data operands in SBUF: max(64, 2N) + 60.
    assert_eq!(one_dur(&cfg, Engine::Vector, s), ps_of(460, V));
}

#[test]
fn tensor_engine_pays_pipeline_fill_after_idling() {
    // A matmul that waits for a DMA finds TensorE idle and pays the fill again.
    let cfg = ChipConfig::trn1();
    let m = mm(Dtype::Bf16, 128, 128, 512);
    let load = neuron_isa::Op::Dma {
        dst: sb(Dtype::Bf16, 0, 128, 65536, 512),
        src: hbm(0, Dtype::Bf16, 0, 128, 512),
    };
    let p = program(
        vec![
            (
                Engine::Tensor,
                vec![op(m.clone()), op(m.clone()), ins(m, &[(0, 1)], &[])],
            ),
            (Engine::Dma(0), vec![ins(load, &[], &[0])]),
        ],
        1,
        vec![tensor(
            "x",
            neuron_isa::TensorKind::Input,
            &[128, 512],
            Dtype::Bf16,
        )],
    );
    let s = run_timing(&p, &cfg);
    assert_eq!(dur(&s, 0, 0), ps_of(576, T));
    assert_eq!(dur(&s, 0, 1), ps_of(512, T));
    // The DMA (1.3 us + 128 KiB at 272 B/ns) ends long after the two matmuls.
    assert!(rec(&s, 0, 2).start_ps > rec(&s, 0, 1).end_ps);
    assert_eq!(rec(&s, 0, 2).start_ps, rec(&s, 1, 0).end_ps);
    assert_eq!(dur(&s, 0, 2), ps_of(576, T));
}

#[test]
fn long_matmul_stream_runs_at_peak() {
    // 1000 independent 128x128x512 bf16 matmuls, rotating over the 8 PSUM banks.
    let cfg = ChipConfig::trn1();
    let instrs = (0..1000u64)
        .map(|i| {
            op(matmul(
                ps(Dtype::F32, 0, 128, (i % 8) * 2048, 512),
                sb(Dtype::Bf16, 0, 128, 0, 128),
                sb(Dtype::Bf16, 0, 128, 256 + (i % 4) * 1024, 512),
                false,
            ))
        })
        .collect();
    let p = program(vec![(Engine::Tensor, instrs)], 0, vec![]);
    let s = run_timing(&p, &cfg);
    // 1000 x 512 cycles + one 64-cycle fill.
    assert_eq!(s.total_ps, ps_of(576, T) + 999 * ps_of(512, T));
    let achieved = s.total_flops() as f64 / (s.total_ps as f64 * 1e-12);
    let peak = cfg.peak_flops(Dtype::Bf16);
    assert!(achieved >= 0.99 * peak, "{achieved} vs peak {peak}");
    let tensor = &s.engines[0];
    assert_eq!(tensor.instructions, 1000);
    assert_eq!(tensor.busy_cycles, 1000 * 512 + 64);
    assert_eq!(tensor.busy_ps, s.total_ps);
    assert_eq!(tensor.wait_ps, 0);
}
