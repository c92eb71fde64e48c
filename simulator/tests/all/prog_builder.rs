//! Small helpers to write test programs by hand and run them.

#![allow(dead_code)]

use neuron_isa::{
    Ap, ChipConfig, Dtype, Engine, HbmTensor, Instruction, Memory, Op, Program, SemId, SemWait,
    Stream, TensorId, TensorKind,
};
use neuron_sim::{RunStats, SimOptions, Simulator};

/// A contiguous SBUF tile.
pub fn sb(dtype: Dtype, p0: u32, np: u32, offset: u64, free: u32) -> Ap {
    Ap::on_chip(Memory::Sbuf, dtype, p0, np, offset, free)
}

/// A contiguous PSUM tile.
pub fn ps(dtype: Dtype, p0: u32, np: u32, offset: u64, free: u32) -> Ap {
    Ap::on_chip(Memory::Psum, dtype, p0, np, offset, free)
}

/// `rows` x `cols` row-major view of HBM tensor `t` at element row offset `row0`.
pub fn hbm(t: u32, dtype: Dtype, row0: u64, rows: u32, cols: u32) -> Ap {
    Ap::hbm_rows(
        TensorId(t),
        dtype,
        row0 * u64::from(cols) * dtype.size(),
        rows,
        i64::from(cols),
        cols,
    )
}

/// An instruction with waits and signals.
pub fn ins(op: Op, wait: &[(u32, u32)], signal: &[u32]) -> Instruction {
    Instruction {
        op,
        wait: wait
            .iter()
            .map(|&(s, c)| SemWait {
                sem: SemId(s),
                count: c,
            })
            .collect(),
        signal: signal.iter().map(|&s| SemId(s)).collect(),
        kernel: neuron_isa::NO_KERNEL,
    }
}

/// An instruction without synchronization.
pub fn op(op: Op) -> Instruction {
    Instruction::new(op)
}

/// A matmul `dst[M, N] = st[K, M]^T @ mv[K, N]`.
pub fn matmul(dst: Ap, stationary: Ap, moving: Ap, accumulate: bool) -> Op {
    Op::Matmul {
        dst,
        stationary,
        moving,
        accumulate,
    }
}

/// A program from `(engine, instructions)` pairs.
pub fn program(
    streams: Vec<(Engine, Vec<Instruction>)>,
    semaphores: u32,
    tensors: Vec<HbmTensor>,
) -> Program {
    Program {
        streams: streams
            .into_iter()
            .map(|(engine, instrs)| Stream { engine, instrs })
            .collect(),
        semaphores,
        tensors,
        kernels: Vec::new(),
    }
}

/// An HBM tensor.
pub fn tensor(name: &str, kind: TensorKind, shape: &[u64], dtype: Dtype) -> HbmTensor {
    HbmTensor {
        name: name.into(),
        kind,
        shape: shape.to_vec(),
        dtype,
    }
}

/// Runs `p` on `cfg` in timing-only mode.
pub fn run_timing(p: &Program, cfg: &ChipConfig) -> RunStats {
    let opts = SimOptions {
        timing_only: true,
        ..SimOptions::default()
    };
    Simulator::new(p, cfg, opts)
        .expect("program loads")
        .run()
        .expect("program runs")
}

/// Picoseconds of `cycles` at `ghz`, rounded to nearest (the simulator's documented
/// conversion), computed independently here.
pub fn ps_of(cycles: u64, ghz: f64) -> u64 {
    (cycles as f64 * 1000.0 / ghz).round() as u64
}

/// The record of instruction `index` of stream `stream`.
pub fn rec(stats: &RunStats, stream: u16, index: u32) -> &neuron_sim::InstrRecord {
    stats
        .records
        .iter()
        .find(|r| r.stream == stream && r.index == index)
        .expect("record exists")
}

/// The duration of instruction `index` of stream `stream`, ps.
pub fn dur(stats: &RunStats, stream: u16, index: u32) -> u64 {
    rec(stats, stream, index).duration_ps()
}
