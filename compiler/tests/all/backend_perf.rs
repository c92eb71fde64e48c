//! Simulated performance of compiled programs (timing-only runs; figures are simulated
//! time, never wall-clock).

#![allow(clippy::unwrap_used)] // Tests may unwrap: a panic is a test failure.

use super::backend_harness::simulate;
use neuron_isa::{ChipConfig, Dtype};
use neuron_sim::SimOptions;
use neuronc::driver::compile;
use neuronc::ir::{DType, Graph, Op, Tensor};
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
fn big_bf16_matmul_reaches_88_percent_of_tensor_peak() {
    let cfg = ChipConfig::trn1();
    let (util, secs) = matmul_utilisation(4096, 8192, 8192, &cfg);
    eprintln!(
        "4096x8192 @ 8192x8192 bf16 on trn1: {:.3} ms simulated, {:.1}% of TensorE peak",
        secs * 1e3,
        util * 100.0
    );
    assert!(util >= 0.88, "utilisation {util}");
}

#[test]
fn gemm_2048_cubed_bf16_reaches_80_percent_of_tensor_peak() {
    // Issue 11: W (8 MiB) stays resident across the row groups and X^T arrives by DMA
    // transposes, so TensorE only multiplies.
    let cfg = ChipConfig::trn1();
    let (util, secs) = matmul_utilisation(2048, 2048, 2048, &cfg);
    eprintln!(
        "2048^3 bf16 on trn1: {:.1} us simulated, {:.1}% of TensorE peak",
        secs * 1e6,
        util * 100.0
    );
    assert!(util >= 0.80, "utilisation {util}");
}

/// `y = a @ b` with inputs of `dtype`, compiled with matmuls auto-cast to bf16, simulated
/// with numerics on the given inputs; returns y and the matmul kernel's tiling line.
fn run_gemm(
    dtype: DType,
    a: &ndarray::ArrayD<f64>,
    b: &ndarray::ArrayD<f64>,
) -> (Vec<f64>, String) {
    let (m, k, n) = (a.shape()[0], a.shape()[1], b.shape()[1]);
    let mut g = Graph::new("matmul");
    let ai = g.add_input("a", vec![m, k], dtype).unwrap();
    let bi = g.add_input("b", vec![k, n], dtype).unwrap();
    let y = g
        .add_node("mm", Op::MatMul { transpose_b: false }, &[ai, bi], "y")
        .unwrap();
    g.add_output(y).unwrap();
    let opts = CompileOptions {
        auto_cast: AutoCast::Matmult,
        ..CompileOptions::default()
    };
    let c = compile(&g, &opts).unwrap();
    let tiling = c.artifact.meta.program.kernels[0].tiling.clone();
    let inputs = BTreeMap::from([
        ("a".to_string(), Tensor::from_f64(dtype, a.clone())),
        ("b".to_string(), Tensor::from_f64(dtype, b.clone())),
    ]);
    let sim = SimOptions {
        check_races: true,
        ..SimOptions::default()
    };
    let (outs, stats) = simulate(&c.artifact, &inputs, sim);
    assert!(
        !stats
            .warnings
            .iter()
            .any(|w| w.kind == neuron_sim::WarningKind::Race),
        "races"
    );
    (outs["y"].clone(), tiling)
}

#[test]
fn dma_transposed_x_gives_the_bits_of_tensore_transposes() {
    // Rows of a matmul are independent and K accumulates in the same k-tile order either
    // way, so Y of a 1024-row X (X^T by transposing DMAs: 8 row tiles give 2 KiB
    // descriptors) must equal, bit for bit, the Ys of its two 512-row halves (X^T turned
    // around on TensorE). fp32 inputs: the DMA casts while it transposes.
    let (m, k, n) = (1024, 384, 256);
    let val = |i: usize, j: usize, s: usize| {
        let h = (i * 7919 + j * 104_729 + s * 15_485_863) % 2003;
        h as f64 / 1001.0 - 1.0 + 1.0 / 3.0
    };
    let a = ndarray::Array2::from_shape_fn((m, k), |(i, j)| val(i, j, 1)).into_dyn();
    let b = ndarray::Array2::from_shape_fn((k, n), |(i, j)| val(i, j, 2)).into_dyn();
    for dtype in [DType::Bf16, DType::F32] {
        let (whole, t_whole) = run_gemm(dtype, &a, &b);
        assert!(t_whole.contains("dma transpose"), "{t_whole}");
        let mut halves = Vec::new();
        for h in 0..2 {
            let part = ndarray::Array2::from_shape_fn((m / 2, k), |(i, j)| a[[h * m / 2 + i, j]])
                .into_dyn();
            let (y, t) = run_gemm(dtype, &part, &b);
            assert!(!t.contains("dma transpose"), "{t}");
            halves.extend(y);
        }
        assert_eq!(whole.len(), halves.len());
        let differ = whole
            .iter()
            .zip(&halves)
            .filter(|(x, y)| x.to_bits() != y.to_bits())
            .count();
        assert_eq!(differ, 0, "{dtype:?}: {differ} elements differ");
    }
}

/// `y = gelu(a @ w + bias)` (`a` an input, `w` and `bias` params), compiled with matmuls
/// auto-cast to bf16 and simulated with numerics; returns y, the matmul kernel's tiling
/// line and the compiled artifact.
fn run_bias_gelu(
    a: &ndarray::ArrayD<f64>,
    w: &ndarray::ArrayD<f64>,
    bias: &ndarray::ArrayD<f64>,
) -> (Vec<f64>, String, neuron_isa::Artifact) {
    use neuronc::ir::GeluApprox;
    let (m, k) = (a.shape()[0], a.shape()[1]);
    let mut g = Graph::new("fc1");
    let ai = g.add_input("a", vec![m, k], DType::F32).unwrap();
    let wi = g
        .add_param("w", Tensor::from_f64(DType::F32, w.clone()))
        .unwrap();
    let bi = g
        .add_param("bias", Tensor::from_f64(DType::F32, bias.clone()))
        .unwrap();
    let h = g
        .add_node("mm", Op::MatMul { transpose_b: false }, &[ai, wi], "h")
        .unwrap();
    let hb = g.add_node("bias_add", Op::Add, &[h, bi], "hb").unwrap();
    let y = g
        .add_node(
            "act",
            Op::Gelu {
                approximate: GeluApprox::None,
            },
            &[hb],
            "y",
        )
        .unwrap();
    g.add_output(y).unwrap();
    let opts = CompileOptions {
        auto_cast: AutoCast::Matmult,
        ..CompileOptions::default()
    };
    let c = compile(&g, &opts).unwrap();
    let kernels = &c.artifact.meta.program.kernels;
    assert_eq!(kernels.len(), 1, "one fused kernel");
    let tiling = kernels[0].tiling.clone();
    let inputs = BTreeMap::from([("a".to_string(), Tensor::from_f64(DType::F32, a.clone()))]);
    let sim = SimOptions {
        check_races: true,
        ..SimOptions::default()
    };
    let (outs, stats) = simulate(&c.artifact, &inputs, sim);
    assert!(
        !stats
            .warnings
            .iter()
            .any(|w| w.kind == neuron_sim::WarningKind::Race),
        "races"
    );
    (outs["y"].clone(), tiling, c.artifact)
}

#[test]
fn bias_gelu_matmul_evicts_with_one_activation_and_no_k1_bias_matmul() {
    // Issue 11 (BERT-base batch 16): a 2048-row matmul with a bias + gelu epilogue runs in
    // the transposed-output form: output columns on partitions, the bias a per-partition
    // operand of the one ScalarE activation that evicts each accumulator. So: no K=1 bias
    // broadcast on TensorE, no VectorE instruction at all, exactly one activation per
    // [128 columns x 512 rows] output tile; and Y equals, bit for bit, Y of the same rows
    // computed in the normal form (512-row quarters: too few rows for DMA transposes).
    let (m, k, n) = (2048, 256, 512);
    let val = |i: usize, j: usize, s: usize| {
        let h = (i * 7919 + j * 104_729 + s * 15_485_863) % 2003;
        h as f64 / 1001.0 - 1.0 + 1.0 / 3.0
    };
    let a = ndarray::Array2::from_shape_fn((m, k), |(i, j)| val(i, j, 1)).into_dyn();
    let w = ndarray::Array2::from_shape_fn((k, n), |(i, j)| val(i, j, 2) / 8.0).into_dyn();
    let bias = ndarray::Array1::from_shape_fn(n, |j| val(j, 0, 3)).into_dyn();
    let (whole, t_whole, art) = run_bias_gelu(&a, &w, &bias);
    assert!(t_whole.contains("output transposed"), "{t_whole}");
    let (mut matmuls, mut k1, mut acts, mut vector) = (0, 0, 0, 0);
    for s in &art.meta.program.streams {
        for i in &s.instrs {
            match &i.op {
                neuron_isa::Op::Matmul { stationary, .. } => {
                    matmuls += 1;
                    if stationary.partitions == 1 {
                        k1 += 1;
                    }
                }
                neuron_isa::Op::Activation { bias, .. } => {
                    assert!(
                        matches!(bias, Some(neuron_isa::Operand::PerPartition(_))),
                        "the bias rides on the activation"
                    );
                    acts += 1;
                }
                _ if s.engine == neuron_isa::Engine::Vector => vector += 1,
                _ => {}
            }
        }
    }
    assert_eq!(k1, 0, "no K=1 bias broadcast");
    assert_eq!(vector, 0, "no VectorE eviction step");
    let tiles = n.div_ceil(128) * m.div_ceil(512);
    assert_eq!(acts, tiles, "one activation per output tile");
    assert_eq!(matmuls, tiles * k.div_ceil(128));
    let mut quarters = Vec::new();
    for q in 0..4 {
        let part =
            ndarray::Array2::from_shape_fn((m / 4, k), |(i, j)| a[[q * m / 4 + i, j]]).into_dyn();
        let (y, t, _) = run_bias_gelu(&part, &w, &bias);
        assert!(!t.contains("output transposed"), "{t}");
        quarters.extend(y);
    }
    assert_eq!(whole.len(), quarters.len());
    let differ = whole
        .iter()
        .zip(&quarters)
        .filter(|(x, y)| x.to_bits() != y.to_bits())
        .count();
    assert_eq!(differ, 0, "{differ} elements differ");
}
