//! The public driver in full mode: binding tensors, timing identical to timing-only runs,
//! determinism, warnings and errors.

use crate::prog_builder::*;
use neuron_isa::{ChipConfig, Dtype, Engine, Op, Program, TensorId, TensorKind};
use neuron_sim::{Rounding, SimError, SimOptions, Simulator, WarningKind};

/// Loads x [128, 64] f32, scales it by 3 on VectorE (rounding to bf16), stores y as bf16.
fn scale_program() -> Program {
    let load = Op::Dma {
        dst: sb(Dtype::F32, 0, 128, 0, 64),
        src: hbm(0, Dtype::F32, 0, 128, 64),
    };
    let scale = Op::TensorScalar {
        dst: sb(Dtype::Bf16, 0, 128, 1024, 64),
        src: sb(Dtype::F32, 0, 128, 0, 64),
        op0: neuron_isa::AluOp::Mul,
        operand0: neuron_isa::Operand::Imm(3.0),
        reverse0: false,
        op1: neuron_isa::AluOp::Bypass,
        operand1: neuron_isa::Operand::Imm(0.0),
        reverse1: false,
    };
    let store = Op::Dma {
        dst: hbm(1, Dtype::Bf16, 0, 128, 64),
        src: sb(Dtype::Bf16, 0, 128, 1024, 64),
    };
    program(
        vec![
            (
                Engine::Dma(0),
                vec![ins(load, &[], &[0]), ins(store, &[(1, 1)], &[])],
            ),
            (Engine::Vector, vec![ins(scale, &[(0, 1)], &[1])]),
        ],
        2,
        vec![
            tensor("x", TensorKind::Input, &[128, 64], Dtype::F32),
            tensor("y", TensorKind::Output, &[128, 64], Dtype::Bf16),
        ],
    )
}

fn x_bytes() -> Vec<u8> {
    (0..128 * 64)
        .flat_map(|i| (i as f32 * 0.001 + 0.1).to_le_bytes())
        .collect()
}

#[test]
fn full_run_computes_and_times_like_timing_only() {
    let cfg = ChipConfig::trn1();
    let p = scale_program();
    let mut sim = Simulator::new(&p, &cfg, SimOptions::default()).expect("loads");
    sim.write_tensor(TensorId(0), &x_bytes()).expect("binds");
    let full = sim.run().expect("runs");
    let y = sim.tensor(TensorId(1)).expect("output");
    for i in [0usize, 1, 777, 8191] {
        let x = i as f32 * 0.001 + 0.1;
        let got = half::bf16::from_le_bytes([y[2 * i], y[2 * i + 1]]);
        assert_eq!(got, half::bf16::from_f32(x * 3.0), "element {i}");
    }
    assert!(full.warnings.is_empty(), "{:?}", full.warnings);
    let timing = run_timing(&p, &cfg);
    assert_eq!(full.records, timing.records);
    assert_eq!(full.engines, timing.engines);
    assert_eq!(full.total_ps, timing.total_ps);
    assert_eq!(full.bytes, timing.bytes);
}

/// A tensor bound by reference is read where it lies, and the first instruction that
/// writes it writes a copy that starts as the bound bytes: the run (times, warnings,
/// every tensor) is the one `write_tensor` gives, and the caller's bytes stay as they
/// were. The store writes half of `x`'s rows, so a copy that started poisoned instead of
/// from the bound bytes would show in the other half.
#[test]
fn bound_tensors_are_read_in_place_and_copied_on_write() {
    let cfg = ChipConfig::trn1();
    let mut p = scale_program();
    // A third stream stores the scaled rows 0..64 back over x's first 64 rows (as f32).
    let scaled = Op::TensorCopy {
        dst: sb(Dtype::F32, 0, 64, 4096, 64),
        src: sb(Dtype::Bf16, 0, 64, 1024, 64),
    };
    let store_x = Op::Dma {
        dst: hbm(0, Dtype::F32, 0, 64, 64),
        src: sb(Dtype::F32, 0, 64, 4096, 64),
    };
    p.streams.push(neuron_isa::Stream {
        engine: Engine::GpSimd,
        instrs: vec![ins(scaled, &[(1, 1)], &[2])],
    });
    p.streams[0].instrs.push(ins(store_x, &[(2, 1)], &[]));
    p.semaphores = 3;
    let x = x_bytes();
    let run = |bind: bool| {
        let mut sim = Simulator::new(&p, &cfg, SimOptions::default()).expect("loads");
        if bind {
            sim.bind_tensor(TensorId(0), &x).expect("binds");
        } else {
            sim.write_tensor(TensorId(0), &x).expect("writes");
        }
        let stats = sim.run().expect("runs");
        let tensors: Vec<Vec<u8>> = (0..2)
            .map(|t| sim.tensor(TensorId(t)).expect("tensor").to_vec())
            .collect();
        (stats, tensors)
    };
    let (copied, bound) = (run(false), run(true));
    assert!(copied.0.warnings.is_empty(), "{:?}", copied.0.warnings);
    assert!(bound == copied, "binding by reference changed the run");
    let x_after = &bound.1[0];
    assert_eq!(
        x_after[256 * 64..],
        x[256 * 64..],
        "rows 64.. keep the bound bytes"
    );
    let first = f32::from_le_bytes([x_after[0], x_after[1], x_after[2], x_after[3]]);
    assert_eq!(
        first,
        half::bf16::from_f32(0.1 * 3.0).to_f32(),
        "row 0 was stored"
    );
    assert_eq!(x, x_bytes(), "the bound bytes themselves are never written");
    // Wrong sizes and ids are refused by binding as by writing.
    let mut sim = Simulator::new(&p, &cfg, SimOptions::default()).expect("loads");
    let err = sim.bind_tensor(TensorId(0), &x[..8]).expect_err("short");
    assert!(
        err.to_string().contains("expected 32768 bytes, found 8"),
        "{err}"
    );
    let err = sim.bind_tensor(TensorId(7), &x).expect_err("unknown");
    assert!(err.to_string().contains("unknown tensor"), "{err}");
}

#[test]
fn full_runs_are_deterministic_with_stochastic_rounding() {
    let cfg = ChipConfig::trn1();
    let p = scale_program();
    let opts = SimOptions {
        rounding: Rounding::Stochastic,
        seed: 7,
        ..SimOptions::default()
    };
    let run = || {
        let mut sim = Simulator::new(&p, &cfg, opts).expect("loads");
        sim.write_tensor(TensorId(0), &x_bytes()).expect("binds");
        let stats = sim.run().expect("runs");
        (stats, sim.tensor(TensorId(1)).expect("output").to_vec())
    };
    let (a, ya) = run();
    let (b, yb) = run();
    assert_eq!(a, b);
    assert_eq!(ya, yb);
}

#[test]
fn poisoned_reads_are_warned_and_capped() {
    // 40 copies from never-written SBUF: 32 warnings kept, then one summary.
    let cfg = ChipConfig::trn1();
    let instrs = (0..40u64)
        .map(|i| {
            op(Op::TensorCopy {
                dst: sb(Dtype::F32, 0, 128, 65536 + i * 256, 64),
                src: sb(Dtype::F32, 0, 128, i * 256, 64),
            })
        })
        .collect();
    let p = program(vec![(Engine::Vector, instrs)], 0, vec![]);
    let stats = Simulator::new(&p, &cfg, SimOptions::default())
        .expect("loads")
        .run()
        .expect("runs");
    let w: Vec<_> = stats
        .warnings
        .iter()
        .filter(|w| w.kind == WarningKind::PoisonedRead)
        .collect();
    assert_eq!(w.len(), 33);
    assert_eq!(
        w[0].message,
        "vector instruction 0 (stream 0, tensor_copy) read memory that was never written"
    );
    assert_eq!(w[32].message, "8 more poisoned-read warnings not shown");
    // Timing-only runs execute nothing, so they cannot see poison.
    assert!(run_timing(&p, &cfg).warnings.is_empty());
}

#[test]
fn illegal_programs_are_refused_with_the_verifier_message() {
    let cfg = ChipConfig::trn1();
    // A matmul on VectorE.
    let p = program(
        vec![(
            Engine::Vector,
            vec![op(matmul(
                ps(Dtype::F32, 0, 128, 0, 128),
                sb(Dtype::Bf16, 0, 128, 0, 128),
                sb(Dtype::Bf16, 0, 128, 0, 128),
                false,
            ))],
        )],
        0,
        vec![],
    );
    let err = Simulator::new(&p, &cfg, SimOptions::default()).expect_err("illegal");
    let SimError::Illegal(msg) = &err else {
        panic!("expected Illegal, got {err}");
    };
    assert!(msg.starts_with("vector instruction 0"), "{msg}");
    assert!(msg.contains("matmul"), "{msg}");
}

#[test]
fn tensor_binding_errors_name_the_tensor() {
    let cfg = ChipConfig::trn1();
    let p = scale_program();
    for timing_only in [false, true] {
        let opts = SimOptions {
            timing_only,
            ..SimOptions::default()
        };
        let mut sim = Simulator::new(&p, &cfg, opts).expect("loads");
        let err = sim
            .write_tensor(TensorId(0), &[0u8; 10])
            .expect_err("wrong size");
        assert!(
            matches!(&err, SimError::Tensor { tensor: TensorId(0), name, .. } if name == "x"),
            "{err}"
        );
        let err = sim.write_tensor(TensorId(9), &[]).expect_err("unknown id");
        assert!(
            matches!(
                err,
                SimError::Tensor {
                    tensor: TensorId(9),
                    ..
                }
            ),
            "{err}"
        );
        assert!(sim.write_tensor(TensorId(0), &x_bytes()).is_ok());
    }
    let timing = Simulator::new(
        &p,
        &cfg,
        SimOptions {
            timing_only: true,
            ..SimOptions::default()
        },
    )
    .expect("loads");
    let err = timing.tensor(TensorId(1)).expect_err("no data");
    assert_eq!(
        err.to_string(),
        "tensor t1 ('y'): no data: the simulator runs in timing-only mode"
    );
}

#[test]
fn execution_errors_name_the_instruction() {
    // A gather whose index 500 is past the table's 100 rows.
    let cfg = ChipConfig::trn1();
    let idx = Op::Iota {
        dst: sb(Dtype::I32, 0, 128, 0, 1),
        offset: 500,
        channel_multiplier: 0,
        steps: vec![0],
    };
    let gather = Op::DmaGather {
        dst: sb(Dtype::F32, 0, 128, 64, 16),
        table: neuron_isa::Ap::hbm_rows(TensorId(0), Dtype::F32, 0, 100, 16, 16),
        indices: sb(Dtype::I32, 0, 128, 0, 1),
    };
    let p = program(
        vec![
            (Engine::GpSimd, vec![ins(idx, &[], &[0])]),
            (Engine::Dma(3), vec![ins(gather, &[(0, 1)], &[])]),
        ],
        1,
        vec![tensor("table", TensorKind::Weight, &[100, 16], Dtype::F32)],
    );
    let mut sim = Simulator::new(&p, &cfg, SimOptions::default()).expect("loads");
    sim.write_tensor(TensorId(0), &vec![0u8; 6400])
        .expect("binds");
    let err = sim.run().expect_err("index out of range");
    let SimError::Exec {
        stream,
        index,
        engine,
        opcode,
        ..
    } = &err
    else {
        panic!("expected Exec, got {err}");
    };
    assert_eq!(
        (*stream, *index, *engine, *opcode),
        (1, 0, Engine::Dma(3), "dma_gather")
    );
    assert!(
        err.to_string()
            .starts_with("dma3 instruction 0 (stream 1, dma_gather): ")
    );
}
