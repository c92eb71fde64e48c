//! Weights at scale: seeded params are never drawn to validate, weights are shared (never
//! deep-copied), a model whose weights exceed host memory is refused before allocating,
//! and artifacts do not depend on the thread count.

use neuronc::driver::compile;
use neuronc::frontend::parse_model;
use neuronc::ir::limits::available_memory;
use neuronc::options::CompileOptions;
use neuronc::reference::{RefOptions, random_inputs, run_reference};
use std::path::Path;

/// `count` params of 2^28 f32 elements (1 GiB each), summed by a chain of adds.
fn huge_model(count: usize) -> String {
    let shape = "[16384, 16384]";
    let params: Vec<String> = (0..count)
        .map(|i| {
            format!(r#"{{"name": "p{i}", "shape": {shape}, "init": {{"normal": {{"std": 1}}}}}}"#)
        })
        .collect();
    let mut nodes = vec![
        r#"{"name": "n0", "op": "add", "inputs": ["x", "p0"], "outputs": ["y0"]}"#.to_string(),
    ];
    for i in 1..count {
        nodes.push(format!(
            r#"{{"name": "n{i}", "op": "add", "inputs": ["y{}", "p{i}"], "outputs": ["y{i}"]}}"#,
            i - 1
        ));
    }
    format!(
        r#"{{"name": "huge", "inputs": [{{"name": "x", "shape": {shape}, "dtype": "f32"}}], "params": [{}], "nodes": [{}], "outputs": ["y{}"]}}"#,
        params.join(","),
        nodes.join(","),
        count - 1
    )
}

#[test]
fn huge_seeded_params_load_without_drawing_and_are_refused_before_allocating() {
    // 256 GiB of f32 params: loading (what `neuronc check` does) draws none of them.
    let g = parse_model(&huge_model(256), Path::new(".")).unwrap();
    for &p in &g.params {
        assert!(!g.value(p).data.as_ref().unwrap().is_materialized());
    }
    // Cloning the graph shares the data.
    let g2 = g.clone();
    let (a, b) = (&g.value(g.params[0]).data, &g2.value(g2.params[0]).data);
    assert!(a.as_ref().unwrap().ptr_eq(b.as_ref().unwrap()));
    let Some(avail) = available_memory() else {
        return; // no way to know the host's memory here: nothing is refused
    };
    assert!(
        avail < 256 << 30,
        "this host has more than 256 GiB available"
    );
    let inputs = std::collections::BTreeMap::new();
    let e = run_reference(&g, &inputs, RefOptions::default())
        .unwrap_err()
        .to_string();
    assert!(e.contains("bytes") && e.contains("available"), "{e}");
    assert!(e.contains(&(256u64 * (1 << 28) * 8).to_string()), "{e}");
    for &p in &g.params {
        assert!(!g.value(p).data.as_ref().unwrap().is_materialized());
    }
}

#[test]
fn artifacts_and_reference_are_identical_across_thread_counts() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/bert_layer.json");
    let run = |threads: usize| {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        pool.install(|| {
            let g = neuronc::frontend::load_model(&path).unwrap();
            let bytes = compile(&g, &CompileOptions::default())
                .unwrap()
                .artifact
                .to_bytes()
                .unwrap();
            let outs = run_reference(&g, &random_inputs(&g), RefOptions::default()).unwrap();
            (bytes, outs)
        })
    };
    let (a1, r1) = run(1);
    let (a3, r3) = run(3);
    assert!(a1 == a3, "artifact bytes differ between 1 and 3 threads");
    assert_eq!(r1, r3);
}

/// `neuronc compile`'s path, weights encoded straight into the file in parallel chunks,
/// writes the bytes of the in-memory artifact, with 1 and 3 threads; with int8 weights
/// the dequantization constants the back end adds are in the blob too.
#[test]
fn compile_to_file_writes_the_in_memory_artifact_bytes() {
    use neuronc::options::CastType;
    let dir = std::env::temp_dir().join(format!("neuronc-to-file-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for (model, cast) in [("bert_layer", CastType::Bf16), ("mlp", CastType::Int8)] {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("../examples/{model}.json"));
        let g = neuronc::frontend::load_model(&path).unwrap();
        let opts = CompileOptions {
            auto_cast_type: cast,
            ..CompileOptions::default()
        };
        let compiled = compile(&g, &opts).unwrap();
        let want = compiled.artifact.to_bytes().unwrap();
        if cast == CastType::Int8 {
            assert!(
                compiled.artifact.meta.weights.len() > g.params.len(),
                "int8 adds dequantization constants to the blob"
            );
        }
        for threads in [1, 3] {
            let out = dir.join(format!("{model}-{threads}.neff"));
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            let summary = pool
                .install(|| neuronc::driver::compile_to_file(&g, &opts, &out))
                .unwrap();
            assert_eq!(summary.weight_bytes, compiled.summary.weight_bytes);
            let got = std::fs::read(&out).unwrap();
            assert!(
                got == want,
                "{model} with {threads} threads: the file differs"
            );
        }
    }
    // An unwritable path is an i/o error naming it, and leaves no file behind.
    let g = neuronc::frontend::load_model(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/mlp.json"),
    )
    .unwrap();
    let bad = dir.join("no-such-dir").join("m.neff");
    let e = neuronc::driver::compile_to_file(&g, &CompileOptions::default(), &bad)
        .unwrap_err()
        .to_string();
    assert!(e.contains("no-such-dir"), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
}
