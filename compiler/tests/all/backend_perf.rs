//! Simulated performance of compiled programs (timing-only runs; figures are simulated
//! time, never wall-clock).

#![allow(clippy::unwrap_used)] // Tests may unwrap: a panic is a test failure.

use super::backend_harness::simulate;
use neuron_isa::{ChipConfig, Dtype};
use neuron_sim::SimOptions;
use neuronc::driver::compile;
use neuronc::ir::{DType, Graph, Op};
use neuronc::options::{AutoCast, CompileOptions};
use std::collections::BTreeMap;

/// `y = a @ b` with bf16 inputs of the given sizes.
pub fn matmul_graph(m: usize, k: usize, n: usize) -> Graph {
    let mut g = Graph::new("matmul");
    let a = g.add_input("a", vec![m, k], DType::Bf16).unwrap();
    let b = g.add_input("b", vec![k, n], DType::Bf16).unwrap();
    let y = g
        .add_node("mm", Op::MatMul { transpose_b: false }, &[a, b], "y")
        .unwrap();
    g.add_output(y).unwrap();
    g
}

/// Simulated TensorE utilisation (model flops over bf16 peak x time) of `y = a @ b`.
pub fn matmul_utilisation(m: usize, k: usize, n: usize, cfg: &ChipConfig) -> (f64, f64) {
    let g = matmul_graph(m, k, n);
    let opts = CompileOptions {
        target: cfg.clone(),
        auto_cast: AutoCast::Matmult,
        ..CompileOptions::default()
    };
    let c = compile(&g, &opts).unwrap();
    eprintln!("{}", c.summary);
    eprintln!("{}", c.artifact.meta.program.kernels[0].tiling);
    let sim = SimOptions {
        timing_only: true,
        ..SimOptions::default()
    };
    let (_, stats) = simulate(&c.artifact, &BTreeMap::new(), sim);
    let flops = 2.0 * (m * k * n) as f64;
    let secs = stats.total_ps as f64 * 1e-12;
    (flops / (cfg.peak_flops(Dtype::Bf16) * secs), secs)
}

#[test]
fn big_bf16_matmul_reaches_85_percent_of_tensor_peak() {
    let cfg = ChipConfig::trn1();
    let (util, secs) = matmul_utilisation(4096, 8192, 8192, &cfg);
    eprintln!(
        "4096x8192 @ 8192x8192 bf16 on trn1: {:.3} ms simulated, {:.1}% of TensorE peak",
        secs * 1e3,
        util * 100.0
    );
    assert!(util >= 0.85, "utilisation {util}");
}
