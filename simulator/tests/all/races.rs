//! Race detection: conflicting on-chip accesses with no semaphore chain between them.

use crate::prog_builder::*;
use neuron_isa::{ChipConfig, Dtype, Engine, Op, Program, TensorKind};
use neuron_sim::{RunStats, SimOptions, Simulator, WarningKind};

fn run_checked(p: &Program) -> RunStats {
    let opts = SimOptions {
        timing_only: true,
        check_races: true,
        ..SimOptions::default()
    };
    Simulator::new(p, &ChipConfig::trn1(), opts)
        .expect("loads")
        .run()
        .expect("runs")
}

fn races(s: &RunStats) -> Vec<&str> {
    s.warnings
        .iter()
        .filter(|w| w.kind == WarningKind::Race)
        .map(|w| w.message.as_str())
        .collect()
}

/// A DMA writes SBUF bytes 0..512 of partitions 0..128; VectorE then reads `read_off`.
/// With `sync` the vector waits for the DMA's signal.
fn dma_then_vector(sync: bool, read_off: u64) -> Program {
    let load = Op::Dma {
        dst: sb(Dtype::F32, 0, 128, 0, 128),
        src: hbm(0, Dtype::F32, 0, 128, 128),
    };
    let copy = Op::TensorCopy {
        dst: sb(Dtype::F32, 0, 128, 4096, 64),
        src: sb(Dtype::F32, 0, 128, read_off, 64),
    };
    let wait: &[(u32, u32)] = if sync { &[(0, 1)] } else { &[] };
    program(
        vec![
            (Engine::Dma(0), vec![ins(load, &[], &[0])]),
            (Engine::Vector, vec![ins(copy, wait, &[])]),
        ],
        1,
        vec![tensor("x", TensorKind::Input, &[128, 128], Dtype::F32)],
    )
}

#[test]
fn unsynchronized_overlap_is_a_race() {
    let s = run_checked(&dma_then_vector(false, 256));
    let r = races(&s);
    assert_eq!(r.len(), 1, "{r:?}");
    assert_eq!(
        r[0],
        "race: dma0 instruction 0 (stream 0) writes sbuf partitions 0..128 bytes 0..512 while \
         vector instruction 0 (stream 1) reads sbuf partitions 0..128 bytes 256..512, with no \
         semaphore ordering them"
    );
}

#[test]
fn semaphore_ordered_accesses_do_not_race() {
    let s = run_checked(&dma_then_vector(true, 256));
    assert!(races(&s).is_empty(), "{:?}", s.warnings);
}

#[test]
fn disjoint_bytes_do_not_race() {
    let s = run_checked(&dma_then_vector(false, 512));
    assert!(races(&s).is_empty(), "{:?}", s.warnings);
}

#[test]
fn reads_do_not_race_with_reads() {
    let rd = |dst_off: u64| Op::TensorCopy {
        dst: sb(Dtype::F32, 0, 128, dst_off, 64),
        src: sb(Dtype::F32, 0, 128, 0, 64),
    };
    let p = program(
        vec![
            (Engine::Vector, vec![op(rd(1024))]),
            (Engine::GpSimd, vec![op(rd(2048))]),
        ],
        0,
        vec![],
    );
    assert!(races(&run_checked(&p)).is_empty());
}

#[test]
fn ordering_is_transitive_through_a_third_engine() {
    // DMA writes X, signals s0; TensorE waits s0, signals s1; ScalarE waits s1 and
    // overwrites X: ordered through TensorE. GpSimd overwrites X with no wait: races with
    // both the DMA and ScalarE.
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
    let overwrite = Op::Memset {
        dst: sb(Dtype::Bf16, 0, 128, 0, 128),
        value: 0.0,
    };
    let ts = Op::TensorScalar {
        dst: sb(Dtype::Bf16, 0, 128, 0, 128),
        src: sb(Dtype::Bf16, 0, 128, 1024, 128),
        op0: neuron_isa::AluOp::Mul,
        operand0: neuron_isa::Operand::Imm(1.0),
        reverse0: false,
        op1: neuron_isa::AluOp::Bypass,
        operand1: neuron_isa::Operand::Imm(0.0),
        reverse1: false,
    };
    let base = |gpsimd: bool| {
        let mut streams = vec![
            (Engine::Dma(0), vec![ins(load.clone(), &[], &[0])]),
            (Engine::Tensor, vec![ins(mm.clone(), &[(0, 1)], &[1])]),
            (Engine::Scalar, vec![ins(ts.clone(), &[(1, 1)], &[])]),
        ];
        if gpsimd {
            // Starts after a long chain of its own work so that it overlaps nothing in
            // time order except by being unordered.
            streams.push((Engine::GpSimd, vec![op(overwrite.clone())]));
        }
        program(
            streams,
            2,
            vec![tensor("x", TensorKind::Input, &[128, 128], Dtype::Bf16)],
        )
    };
    assert!(races(&run_checked(&base(false))).is_empty());
    let s = run_checked(&base(true));
    let r = races(&s);
    // GpSimd's memset (t = 0) races with the DMA (t = 0); TensorE reads X after waiting on
    // the DMA only, ScalarE writes X after TensorE: both unordered with GpSimd.
    assert_eq!(r.len(), 3, "{r:?}");
    assert!(
        r.iter()
            .any(|m| m.contains("dma0 instruction 0") && m.contains("gpsimd"))
    );
    assert!(
        r.iter()
            .any(|m| m.contains("gpsimd instruction 0") && m.contains("tensor"))
    );
    assert!(
        r.iter()
            .any(|m| m.contains("gpsimd instruction 0") && m.contains("scalar"))
    );
}

#[test]
fn race_check_does_not_change_timing() {
    let p = dma_then_vector(false, 256);
    let a = run_checked(&p);
    let b = run_timing(&p, &ChipConfig::trn1());
    assert_eq!(a.records, b.records);
    assert_eq!(a.total_ps, b.total_ps);
}
