//! Helpers for the functional-execution tests: memories, patterns, reads and writes.
#![allow(dead_code, clippy::unwrap_used)]

use neuron_isa::{Ap, ChipConfig, Dtype, HbmTensor, Memory, Op, Program, TensorId, TensorKind};
use neuron_sim::numerics::{Rounder, Rounding};
use neuron_sim::{ExecContext, ExecError, ExecOutcome, Memories, execute};

/// Memories of a trn1 core for a program with the given HBM tensors.
pub fn mems(tensors: &[(&str, &[u64], Dtype)]) -> Memories<'static> {
    let program = Program {
        tensors: tensors
            .iter()
            .map(|(n, s, d)| HbmTensor {
                name: n.to_string(),
                kind: TensorKind::Input,
                shape: s.to_vec(),
                dtype: *d,
            })
            .collect(),
        ..Program::default()
    };
    Memories::new(&ChipConfig::trn1(), &program).unwrap()
}

/// An RNE context.
pub fn ctx() -> ExecContext {
    ExecContext::new(ChipConfig::trn1(), Rounding::Rne, 0)
}

/// A contiguous SBUF tile.
pub fn sb(dtype: Dtype, start: u32, parts: u32, offset: u64, free: u32) -> Ap {
    Ap::on_chip(Memory::Sbuf, dtype, start, parts, offset, free)
}

/// A contiguous PSUM tile.
pub fn ps(dtype: Dtype, start: u32, parts: u32, offset: u64, free: u32) -> Ap {
    Ap::on_chip(Memory::Psum, dtype, start, parts, offset, free)
}

/// `rows x cols` row-major view of HBM tensor `t`.
pub fn hbm(t: u32, dtype: Dtype, rows: u32, cols: u32) -> Ap {
    Ap::hbm_rows(TensorId(t), dtype, 0, rows, i64::from(cols), cols)
}

/// Writes dense values to `ap` (RNE).
pub fn put(m: &mut Memories, ap: &Ap, values: &[f32]) {
    m.write_f32(ap, values, &mut Rounder::rne()).unwrap();
}

/// Reads `ap` densely as f32.
pub fn get(m: &Memories, ap: &Ap) -> Vec<f32> {
    let mut v = Vec::new();
    m.read_f32(ap, &mut v).unwrap();
    v
}

/// Reads `ap` densely as raw bytes.
pub fn raw(m: &Memories, ap: &Ap) -> Vec<u8> {
    let mut v = Vec::new();
    m.read_raw(ap, &mut v).unwrap();
    v
}

/// Executes `op` with a fresh RNE context.
pub fn run(m: &mut Memories, op: &Op) -> ExecOutcome {
    execute(m, op, &mut ctx()).unwrap()
}

/// Executes `op`, expecting an error.
pub fn run_err(m: &mut Memories, op: &Op) -> ExecError {
    execute(m, op, &mut ctx()).unwrap_err()
}

/// `n` values `f(0), f(1), ..`.
pub fn seq(n: usize, f: impl Fn(usize) -> f32) -> Vec<f32> {
    (0..n).map(f).collect()
}
