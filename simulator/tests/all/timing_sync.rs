//! Semaphores, deadlock detection, engine statistics, progress reports and determinism.

use crate::prog_builder::*;
use neuron_isa::{ActFunc, ChipConfig, Dtype, Engine, Op, Operand, Program, TensorKind};
use neuron_sim::{SimError, SimOptions, Simulator};

const T: f64 = 2.8;
const S: f64 = 1.4;
const LAT_PS: u64 = 1_300_000;

/// DMA load -> matmul -> activation eviction -> DMA store, chained by semaphores s0..s2.
fn pipeline() -> Program {
    let load = Op::Dma {
        dst: sb(Dtype::Bf16, 0, 128, 0, 128),
        src: hbm(0, Dtype::Bf16, 0, 128, 128),
    };
    let mm = matmul(
        ps(Dtype::F32, 0, 128, 0, 128),
        sb(Dtype::Bf16, 0, 128, 0, 128),
        sb(Dtype::Bf16, 0, 128, 0, 128),
        false,
    );
    let evict = Op::Activation {
        dst: sb(Dtype::F32, 0, 128, 1024, 128),
        src: ps(Dtype::F32, 0, 128, 0, 128),
        func: ActFunc::Relu,
        scale: Operand::Imm(1.0),
        bias: None,
        accum: None,
    };
    let store = Op::Dma {
        dst: hbm(1, Dtype::F32, 0, 128, 128),
        src: sb(Dtype::F32, 0, 128, 1024, 128),
    };
    program(
        vec![
            (
                Engine::Dma(0),
                vec![ins(load, &[], &[0]), ins(store, &[(2, 1)], &[])],
            ),
            (Engine::Tensor, vec![ins(mm, &[(0, 1)], &[1])]),
            (Engine::Scalar, vec![ins(evict, &[(1, 1)], &[2])]),
        ],
        3,
        vec![
            tensor("x", TensorKind::Input, &[128, 128], Dtype::Bf16),
            tensor("y", TensorKind::Output, &[128, 128], Dtype::F32),
        ],
    )
}

#[test]
fn semaphores_order_engines() {
    let cfg = ChipConfig::trn1();
    let s = run_timing(&pipeline(), &cfg);
    let load = rec(&s, 0, 0);
    let mm = rec(&s, 1, 0);
    let act = rec(&s, 2, 0);
    let store = rec(&s, 0, 1);
    // Each consumer starts exactly when its producer completes.
    assert_eq!(load.start_ps, 0);
    assert_eq!(mm.start_ps, load.end_ps);
    assert_eq!(act.start_ps, mm.end_ps);
    assert_eq!(store.start_ps, act.end_ps);
    // Closed forms: load 32 KiB of 256 B descriptors ((256 + 256) / 256 = 2x the engine
    // time: 136 B/ns); matmul max(64, 128) + 64 fill; activation max(64, 128) + 60; store
    // 64 KiB of 512 B descriptors (768 / 512 = 1.5x: 181.33 B/ns).
    assert!(load.duration_ps().abs_diff(LAT_PS + 240_942) <= 1);
    assert_eq!(mm.duration_ps(), ps_of(128 + 64, T));
    assert_eq!(act.duration_ps(), ps_of(128 + 60, S));
    assert!(store.duration_ps().abs_diff(LAT_PS + 361_412) <= 1);
    assert_eq!(s.total_ps, store.end_ps);
    // Engine statistics: the tensor engine waited for the load, then was busy.
    let tensor = &s.engines[1];
    assert_eq!(tensor.engine, Engine::Tensor);
    assert_eq!(tensor.wait_ps, load.end_ps);
    assert_eq!(tensor.busy_ps, mm.duration_ps());
    assert_eq!(tensor.busy_cycles, 192);
    assert_eq!(s.engines[2].busy_cycles, 188);
    let dma = &s.engines[0];
    assert_eq!(dma.instructions, 2);
    assert_eq!(dma.busy_ps, load.duration_ps() + store.duration_ps());
    // The queue keeps 4 transfers in flight, so the store was ready to issue from t = 0
    // (the load did not fill the queue): it waited on its semaphore until it started.
    assert_eq!(dma.wait_ps, store.start_ps);
    // Byte counters: 32 KiB in, 64 KiB out.
    assert_eq!(s.bytes.hbm_read, 32_768);
    assert_eq!(s.bytes.hbm_write, 65_536);
    assert_eq!(s.bytes.psum_write, 65_536);
    assert_eq!(s.bytes.psum_read, 65_536);
    // Records are sorted by start time.
    assert!(s.records.windows(2).all(|w| w[0].start_ps <= w[1].start_ps));
}

#[test]
fn a_wait_for_a_count_needs_that_many_signals() {
    // Vector waits for s0 >= 3; GpSimd signals s0 three times (3 memsets).
    let cfg = ChipConfig::trn1();
    let m = |off: u64| Op::Memset {
        dst: sb(Dtype::F32, 0, 128, off, 64),
        value: 1.0,
    };
    let p = program(
        vec![
            (
                Engine::GpSimd,
                vec![
                    ins(m(0), &[], &[0]),
                    ins(m(256), &[], &[0]),
                    ins(m(512), &[], &[0]),
                ],
            ),
            (Engine::Vector, vec![ins(m(1024), &[(0, 3)], &[])]),
        ],
        1,
        vec![],
    );
    let s = run_timing(&p, &cfg);
    // Each GpSimd memset: max(64, 64) + 150 + 60 = 274 cycles at 1.4 GHz.
    assert_eq!(rec(&s, 0, 2).end_ps, 3 * ps_of(274, 1.4));
    assert_eq!(rec(&s, 1, 0).start_ps, rec(&s, 0, 2).end_ps);
}

#[test]
fn deadlock_is_reported_naming_engines_and_semaphores() {
    let cfg = ChipConfig::trn1();
    let m = |off: u64| Op::Memset {
        dst: sb(Dtype::F32, 0, 128, off, 64),
        value: 0.0,
    };
    // Vector: one free memset, then waits for s0 >= 1 (which GpSimd signals only after
    // s1 >= 2, which vector signals only after its wait).
    let p = program(
        vec![
            (Engine::Vector, vec![op(m(0)), ins(m(256), &[(0, 1)], &[1])]),
            (Engine::GpSimd, vec![ins(m(512), &[(1, 2)], &[0])]),
        ],
        2,
        vec![],
    );
    let opts = SimOptions {
        timing_only: true,
        ..SimOptions::default()
    };
    let err = Simulator::new(&p, &cfg, opts)
        .expect("loads")
        .run()
        .expect_err("must deadlock");
    let SimError::Deadlock(msg) = &err else {
        panic!("expected a deadlock, got {err}");
    };
    assert_eq!(
        msg,
        "2 of 2 streams can never finish: vector instruction 1 (stream 0, memset) waits for \
         s0 >= 1 (current count 0); gpsimd instruction 0 (stream 1, memset) waits for s1 >= 2 \
         (current count 0)"
    );
    assert!(err.to_string().starts_with("deadlock: "));
}

#[test]
fn deadlock_after_partial_progress_reports_current_counts() {
    let cfg = ChipConfig::trn1();
    let m = |off: u64| Op::Memset {
        dst: sb(Dtype::F32, 0, 128, off, 64),
        value: 0.0,
    };
    // s0 is signalled once but the vector waits for 2.
    let p = program(
        vec![
            (Engine::GpSimd, vec![ins(m(0), &[], &[0])]),
            (Engine::Vector, vec![ins(m(256), &[(0, 2)], &[])]),
        ],
        1,
        vec![],
    );
    let opts = SimOptions {
        timing_only: true,
        ..SimOptions::default()
    };
    let err = Simulator::new(&p, &cfg, opts)
        .expect("loads")
        .run()
        .expect_err("deadlock");
    assert_eq!(
        err.to_string(),
        "deadlock: 1 of 2 streams can never finish: vector instruction 0 (stream 1, memset) \
         waits for s0 >= 2 (current count 1)"
    );
}

#[test]
fn progress_reports_reach_the_total() {
    let cfg = ChipConfig::trn1();
    let instrs = (0..10_000u64)
        .map(|i| {
            op(Op::Memset {
                dst: sb(Dtype::F32, 0, 128, (i % 16) * 256, 64),
                value: 0.0,
            })
        })
        .collect();
    let p = program(vec![(Engine::Vector, instrs)], 0, vec![]);
    let opts = SimOptions {
        timing_only: true,
        ..SimOptions::default()
    };
    let mut calls = Vec::new();
    let s = Simulator::new(&p, &cfg, opts)
        .expect("loads")
        .run_with_progress(&mut |done, total| calls.push((done, total)))
        .expect("runs");
    assert_eq!(
        calls,
        vec![(4096, 10_000), (8192, 10_000), (10_000, 10_000)]
    );
    // 10,000 x (64 + 60) cycles at 1.12 GHz, back to back.
    assert_eq!(s.total_ps, 10_000 * ps_of(124, 1.12));
}

#[test]
fn runs_are_deterministic() {
    let cfg = ChipConfig::trn1();
    let p = pipeline();
    let a = run_timing(&p, &cfg);
    let b = run_timing(&p, &cfg);
    assert_eq!(a, b);
    assert_eq!(a.records.len(), 4);
}

#[test]
fn empty_program_takes_no_time() {
    let s = run_timing(&Program::default(), &ChipConfig::trn1());
    assert_eq!(s.total_ps, 0);
    assert!(s.records.is_empty());
}
