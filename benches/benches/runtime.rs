//! Runtime execution speed: a full (numerically exact) run against a timing-only run of
//! `examples/bert_layer.json` through `neuron_runtime::Model::execute`.
//!
//! - `runtime_execute/bert_layer_full` and `runtime_execute/bert_layer_timing_only` run
//!   the same compiled artifact (trn1, default options) and report instructions per
//!   second; their ratio is the `neuron-sim run --timing-only` speed-up (target: >= 10x).
//!   Both give the same simulated latency, checked before timing.
//!
//! Setup (compiling the model, binding the seeded inputs) is outside the timed region;
//! setting up the simulator, writing weights and inputs, running and reading the outputs
//! are inside it.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use neuron_runtime::{Model, RunOptions};
use neuronc::driver::compile;
use neuronc::options::CompileOptions;
use std::hint::black_box;
use std::path::Path;

/// Compiles `examples/<name>.json` with the default options and loads it.
fn compiled_example(name: &str) -> Model {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../examples")
        .join(format!("{name}.json"));
    let graph = neuronc::frontend::load_model(&path)
        .unwrap_or_else(|e| panic!("cannot load {}: {e}", path.display()));
    let compiled = compile(&graph, &CompileOptions::default())
        .unwrap_or_else(|e| panic!("cannot compile {}: {e}", path.display()));
    Model::from_artifact(compiled.artifact)
        .unwrap_or_else(|e| panic!("compiled {name} does not load: {e}"))
}

fn execute(c: &mut Criterion) {
    let model = compiled_example("bert_layer");
    let mut inputs = model.bind();
    let seed = model.artifact().meta.seed;
    if let Err(e) = inputs.generate_missing(seed) {
        panic!("cannot bind bench inputs: {e}");
    }
    let full = RunOptions::default();
    let fast = RunOptions {
        timing_only: true,
        ..RunOptions::default()
    };
    let run = |opts: &RunOptions| {
        model
            .execute(&inputs, opts)
            .unwrap_or_else(|e| panic!("bench run failed: {e}"))
    };
    // The speed-up only counts if timing-only really times the same program.
    let (a, b) = (run(&full), run(&fast));
    assert_eq!(
        a.stats.total_ps, b.stats.total_ps,
        "timing-only latency differs"
    );
    assert_eq!(
        a.stats.records, b.stats.records,
        "timing-only records differ"
    );
    assert!(!a.outputs.is_empty() && b.outputs.is_empty());

    let instrs = model.artifact().meta.program.instruction_count() as u64;
    let mut g = c.benchmark_group("runtime_execute");
    g.throughput(Throughput::Elements(instrs));
    g.sample_size(10);
    g.bench_function("bert_layer_full", |bch| bch.iter(|| black_box(run(&full))));
    g.bench_function("bert_layer_timing_only", |bch| {
        bch.iter(|| black_box(run(&fast)))
    });
    g.finish();
}

criterion_group!(benches, execute);
criterion_main!(benches);
