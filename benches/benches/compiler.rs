//! Compiler speed, and the simulated performance of what it produces.
//!
//! Timed (criterion, wall-clock of `neuronc::driver::compile`):
//! - `compile/bert_layer_fused` and `compile/bert_layer_unfused`: `examples/bert_layer.json`
//!   in bf16 (target: under 1 s in a release build);
//! - `compile/mlp`;
//! - `compile/matmul_4096x8192x8192`: the big bf16 matmul (about 39k instructions);
//! - `scale/check/N` and `scale/compile/N` for N = 10k, 50k, 100k: a chain of N relu/neg
//!   nodes as model.json text, loaded and checked (`neuronc check`'s work) and compiled
//!   unfused (one kernel per node); `scale/compile_fused/N` compiles it fused (one kernel
//!   whose epilogue is the whole chain). Linear scaling means the 100k time is about 10x
//!   the 10k time.
//!
//! Reported once before the timings (simulated time from timing-only runs of
//! `neuron_sim`, printed to stderr): the big matmul's TensorE utilisation on trn1 (target:
//! at least 85% of peak; the hand-optimized NKI kernel reaches 85.24%), and bert_layer's
//! simulated latency, MFU and HBM bytes with and without fusion (target: fused moves at
//! least 30% fewer HBM bytes).

use criterion::{Criterion, criterion_group};
use neuron_isa::{Artifact, ChipConfig, Dtype, TensorId, TensorKind};
use neuron_sim::{SimOptions, Simulator};
use neuronc::driver::compile;
use neuronc::ir::{DType, Graph, Op};
use neuronc::options::{AutoCast, CastType, CompileOptions};
use std::hint::black_box;
use std::path::PathBuf;

fn example(name: &str) -> Graph {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../examples")
        .join(name);
    match neuronc::frontend::load_model(&p) {
        Ok(g) => g,
        Err(e) => panic!("cannot load {}: {e}", p.display()),
    }
}

fn matmul_graph(m: usize, k: usize, n: usize) -> Graph {
    let build = || -> Result<Graph, neuronc::ir::GraphError> {
        let mut g = Graph::new("matmul");
        let a = g.add_input("a", vec![m, k], DType::Bf16)?;
        let b = g.add_input("b", vec![k, n], DType::Bf16)?;
        let y = g.add_node("mm", Op::MatMul { transpose_b: false }, &[a, b], "y")?;
        g.add_output(y)?;
        Ok(g)
    };
    match build() {
        Ok(g) => g,
        Err(e) => panic!("cannot build the matmul graph: {e}"),
    }
}

fn bf16_opts(fuse: bool) -> CompileOptions {
    CompileOptions {
        auto_cast: AutoCast::Matmult,
        auto_cast_type: CastType::Bf16,
        fuse,
        ..CompileOptions::default()
    }
}

/// Simulated seconds and HBM bytes of a timing-only run.
fn simulate(art: &Artifact) -> (f64, u64) {
    let opts = SimOptions {
        timing_only: true,
        ..SimOptions::default()
    };
    let p = &art.meta.program;
    let mut sim = match Simulator::new(p, &art.meta.target, opts) {
        Ok(s) => s,
        Err(e) => panic!("simulator rejects the program: {e}"),
    };
    for (i, t) in p.tensors.iter().enumerate() {
        if t.kind == TensorKind::Weight {
            if let Some(w) = art.weight_bytes(TensorId(i as u32)) {
                let _ = sim.write_tensor(TensorId(i as u32), w);
            }
        }
    }
    match sim.run() {
        Ok(stats) => (
            stats.total_ps as f64 * 1e-12,
            stats.bytes.hbm_read + stats.bytes.hbm_write,
        ),
        Err(e) => panic!("simulation failed: {e}"),
    }
}

fn compiled(g: &Graph, opts: &CompileOptions) -> Artifact {
    match compile(g, opts) {
        Ok(c) => c.artifact,
        Err(e) => panic!("compile failed: {e}"),
    }
}

/// Prints the simulated figures the issue asks for.
fn report_simulated() {
    let cfg = ChipConfig::trn1();
    let peak = cfg.peak_flops(Dtype::Bf16);
    let (m, k, n) = (4096, 8192, 8192);
    let art = compiled(&matmul_graph(m, k, n), &bf16_opts(true));
    let (secs, _) = simulate(&art);
    let flops = 2.0 * (m * k * n) as f64;
    eprintln!(
        "simulated: {m}x{k} @ {k}x{n} bf16 on trn1: {:.3} ms, {:.1}% of TensorE peak (target >= 85%)",
        secs * 1e3,
        100.0 * flops / (peak * secs)
    );
    let bert = example("bert_layer.json");
    let mut fused_bytes = 0;
    for fuse in [true, false] {
        let art = compiled(&bert, &bf16_opts(fuse));
        let (secs, bytes) = simulate(&art);
        let mfu = art.meta.model_flops as f64 / (peak * secs);
        eprintln!(
            "simulated: bert_layer bf16 {}: {:.1} us, MFU {:.1}%, {:.2} MiB HBM traffic, {} kernels",
            if fuse { "fused  " } else { "unfused" },
            secs * 1e6,
            mfu * 100.0,
            bytes as f64 / (1 << 20) as f64,
            art.meta.program.kernels.len()
        );
        if fuse {
            fused_bytes = bytes;
        } else {
            eprintln!(
                "simulated: bert_layer fusion moves {:.1}% fewer HBM bytes (target >= 30%)",
                100.0 * (1.0 - fused_bytes as f64 / bytes.max(1) as f64)
            );
        }
    }
}

fn bench_compile(c: &mut Criterion) {
    let mut group = c.benchmark_group("compile");
    group.sample_size(10);
    let bert = example("bert_layer.json");
    let mlp = example("mlp.json");
    let fused = bf16_opts(true);
    let unfused = bf16_opts(false);
    group.bench_function("bert_layer_fused", |b| {
        b.iter(|| black_box(compile(black_box(&bert), &fused).is_ok()))
    });
    group.bench_function("bert_layer_unfused", |b| {
        b.iter(|| black_box(compile(black_box(&bert), &unfused).is_ok()))
    });
    group.bench_function("mlp", |b| {
        b.iter(|| black_box(compile(black_box(&mlp), &fused).is_ok()))
    });
    let big = matmul_graph(4096, 8192, 8192);
    group.bench_function("matmul_4096x8192x8192", |b| {
        b.iter(|| black_box(compile(black_box(&big), &fused).is_ok()))
    });
    group.finish();
}

/// model.json text of a chain of `n` elementwise nodes on a [4, 8] input.
fn chain_json(n: usize) -> String {
    let mut nodes = Vec::with_capacity(n);
    for i in 0..n {
        let op = if i % 2 == 0 { "relu" } else { "neg" };
        let src = if i == 0 {
            "x".to_string()
        } else {
            format!("v{}", i - 1)
        };
        nodes.push(format!(
            r#"{{"name":"n{i}","op":"{op}","inputs":["{src}"],"outputs":["v{i}"]}}"#
        ));
    }
    format!(
        r#"{{"name":"chain","inputs":[{{"name":"x","shape":[4,8]}}],"nodes":[{}],"outputs":["v{}"]}}"#,
        nodes.join(","),
        n - 1
    )
}

fn bench_scale(c: &mut Criterion) {
    let mut group = c.benchmark_group("scale");
    group.sample_size(10);
    let unfused = CompileOptions {
        fuse: false,
        ..CompileOptions::default()
    };
    for n in [10_000, 50_000, 100_000] {
        let text = chain_json(n);
        let dir = std::path::Path::new(".");
        group.bench_function(format!("check/{n}"), |b| {
            b.iter(|| black_box(neuronc::frontend::parse_model(black_box(&text), dir).is_ok()))
        });
        let Ok(g) = neuronc::frontend::parse_model(&text, dir) else {
            panic!("the {n}-node chain does not load");
        };
        group.bench_function(format!("compile/{n}"), |b| {
            b.iter(|| black_box(compile(black_box(&g), &unfused).is_ok()))
        });
        // Fused (the default): the whole chain becomes one kernel's epilogue.
        group.bench_function(format!("compile_fused/{n}"), |b| {
            b.iter(|| black_box(compile(black_box(&g), &CompileOptions::default()).is_ok()))
        });
    }
    group.finish();
}

criterion_group!(benches, bench_compile, bench_scale);

fn main() {
    report_simulated();
    benches();
    Criterion::default().configure_from_args().final_summary();
}
