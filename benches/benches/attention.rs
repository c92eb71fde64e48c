//! Fused attention at long sequences (the flash form: key blocks with an online softmax).
//!
//! Reported once before the timings (timing-only simulation on trn1 and trn2, bf16, one
//! batch of 2 heads of 64, printed to stderr): simulated latency and MFU (model FLOPs
//! `4 Sq Sk d` over TensorE's bf16 peak) at 2k, 8k and 32k keys, bidirectional, and causal
//! (an additive `[S, S]` mask) at 2k and 8k. Queries equal keys up to 8k; at 32k keys 4096
//! queries (the graph IR's 2^28-element limit applies to the `[.., Sq, Sk]` score value
//! even though the fused kernel never materializes it).
//!
//! Also reported: BERT-base's attention (batch 16, 128 tokens, 12 heads of 64 side by side
//! in `[B, S, 768]` rows, scale 1/8 and a padding mask), the packed form that puts several
//! heads in one VectorE/ScalarE instruction.
//!
//! Timed (criterion): compiling the 8k-key bidirectional kernel.

use criterion::{Criterion, criterion_group};
use ndarray::{ArrayD, IxDyn};
use neuron_isa::{ChipConfig, Dtype};
use neuron_sim::{SimOptions, Simulator};
use neuronc::driver::compile;
use neuronc::ir::{DType, Graph, Op, Tensor};
use neuronc::options::{AutoCast, CastType, CompileOptions};
use std::hint::black_box;

const HEADS: usize = 2;
const D: usize = 64;

/// Queries for `s` keys.
fn queries(s: usize) -> usize {
    s.min(8192).min((1 << 28) / (HEADS * s))
}

fn attention(s: usize, causal: bool) -> Graph {
    let build = || -> Result<Graph, neuronc::ir::GraphError> {
        let mut g = Graph::new("attention");
        let sq = queries(s);
        let q = g.add_input("q", vec![1, HEADS, sq, D], DType::F32)?;
        let k = g.add_input("k", vec![1, HEADS, s, D], DType::F32)?;
        let v = g.add_input("v", vec![1, HEADS, s, D], DType::F32)?;
        let sc = g.add_node("qk", Op::MatMul { transpose_b: true }, &[q, k], "scores")?;
        let scale = g.add_param("scale", Tensor::F32(ArrayD::from_elem(IxDyn(&[]), 0.125)))?;
        let mut sc = g.add_node("scale", Op::Mul, &[sc, scale], "scaled")?;
        if causal {
            let m =
                ArrayD::from_shape_fn(IxDyn(&[s, s]), |ix| if ix[1] <= ix[0] { 0.0 } else { -1e9 });
            let mask = g.add_param("mask", Tensor::F32(m))?;
            sc = g.add_node("mask", Op::Add, &[sc, mask], "masked")?;
        }
        let p = g.add_node("softmax", Op::Softmax { axis: -1 }, &[sc], "probs")?;
        let o = g.add_node("pv", Op::MatMul { transpose_b: false }, &[p, v], "out")?;
        g.add_output(o)?;
        Ok(g)
    };
    match build() {
        Ok(g) => g,
        Err(e) => panic!("cannot build the attention graph: {e}"),
    }
}

/// BERT-base attention: q, k, v `[b, s, h*d]` viewed as heads, scale `1/sqrt(d)`, padding
/// mask `[b, 1, 1, s]`, output `[b, h, s, d]`.
fn bert_attention(b: usize, s: usize, h: usize, d: usize) -> Graph {
    let build = || -> Result<Graph, neuronc::ir::GraphError> {
        let mut g = Graph::new("bert_attention");
        let dims = [b as i64, s as i64, h as i64, d as i64];
        let mut heads = |n: &str| -> Result<_, neuronc::ir::GraphError> {
            let x = g.add_input(n, vec![b, s, h * d], DType::F32)?;
            let r = g.add_node(
                format!("{n}_split"),
                Op::Reshape {
                    shape: dims.to_vec(),
                },
                &[x],
                format!("{n}4"),
            )?;
            g.add_node(
                format!("{n}_perm"),
                Op::Transpose {
                    perm: vec![0, 2, 1, 3],
                },
                &[r],
                format!("{n}h"),
            )
        };
        let (q, k, v) = (heads("q")?, heads("k")?, heads("v")?);
        let mask = g.add_input("mask", vec![b, 1, 1, s], DType::F32)?;
        let sc = g.add_node("qk", Op::MatMul { transpose_b: true }, &[q, k], "scores")?;
        let c = 1.0 / (d as f32).sqrt();
        let scale = g.add_param("scale", Tensor::F32(ArrayD::from_elem(IxDyn(&[]), c)))?;
        let sc = g.add_node("scale", Op::Mul, &[sc, scale], "scaled")?;
        let sc = g.add_node("mask", Op::Add, &[sc, mask], "masked")?;
        let p = g.add_node("softmax", Op::Softmax { axis: -1 }, &[sc], "probs")?;
        let o = g.add_node("pv", Op::MatMul { transpose_b: false }, &[p, v], "out")?;
        g.add_output(o)?;
        Ok(g)
    };
    match build() {
        Ok(g) => g,
        Err(e) => panic!("cannot build the BERT attention graph: {e}"),
    }
}

fn opts(target: ChipConfig) -> CompileOptions {
    CompileOptions {
        target,
        auto_cast: AutoCast::Matmult,
        auto_cast_type: CastType::Bf16,
        ..CompileOptions::default()
    }
}

/// Simulated seconds of a timing-only run.
fn simulate(g: &Graph, target: &ChipConfig) -> f64 {
    let art = match compile(g, &opts(target.clone())) {
        Ok(c) => c.artifact,
        Err(e) => panic!("compile failed: {e}"),
    };
    let sim_opts = SimOptions {
        timing_only: true,
        ..SimOptions::default()
    };
    let mut sim = match Simulator::new(&art.meta.program, &art.meta.target, sim_opts) {
        Ok(s) => s,
        Err(e) => panic!("simulator rejects the program: {e}"),
    };
    match sim.run() {
        Ok(stats) => stats.total_ps as f64 * 1e-12,
        Err(e) => panic!("simulation failed: {e}"),
    }
}

fn report_simulated() {
    for target in [ChipConfig::trn1(), ChipConfig::trn2()] {
        let peak = target.peak_flops(Dtype::Bf16);
        for (s, causal) in [
            (2048, false),
            (8192, false),
            (32768, false),
            (2048, true),
            (8192, true),
        ] {
            let secs = simulate(&attention(s, causal), &target);
            let flops = 4.0 * (HEADS * queries(s) * s * D) as f64;
            eprintln!(
                "simulated: attention {} {s} keys x {} queries, {HEADS} heads of {D}, bf16 on {}: {:.3} ms, MFU {:.1}%",
                if causal {
                    "causal       "
                } else {
                    "bidirectional"
                },
                queries(s),
                target.name,
                secs * 1e3,
                100.0 * flops / (peak * secs)
            );
        }
    }
}

fn report_bert() {
    let (b, s, h, d) = (16, 128, 12, 64);
    for target in [ChipConfig::trn1(), ChipConfig::trn2()] {
        let peak = target.peak_flops(Dtype::Bf16);
        let secs = simulate(&bert_attention(b, s, h, d), &target);
        let flops = 4.0 * (b * h * s * s * d) as f64;
        eprintln!(
            "simulated: BERT-base attention, batch {b}, {s} tokens, {h} heads of {d}, bf16 on {}: {:.1} us, MFU {:.1}%",
            target.name,
            secs * 1e6,
            100.0 * flops / (peak * secs)
        );
    }
}

fn bench_compile(c: &mut Criterion) {
    let mut group = c.benchmark_group("attention");
    group.sample_size(10);
    let g = attention(8192, false);
    let o = opts(ChipConfig::trn1());
    group.bench_function("compile_flash_8k", |b| {
        b.iter(|| black_box(compile(black_box(&g), &o).is_ok()))
    });
    group.finish();
}

criterion_group!(benches, bench_compile);

fn main() {
    report_simulated();
    report_bert();
    benches();
    Criterion::default().configure_from_args().final_summary();
}
