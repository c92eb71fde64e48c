//! Shared helpers of the back-end tests: compile, bind inputs and weights the way the
//! runtime does, simulate, and compare with the reference executor under the precision
//! tolerances of the issue.

#![allow(clippy::unwrap_used)] // Tests may unwrap: a panic is a test failure.

use neuron_isa::{Artifact, TensorId, TensorKind};
use neuron_sim::{RunStats, SimError, SimOptions, Simulator};
use neuronc::backend::encode;
use neuronc::driver::{Compiled, compile};
use neuronc::ir::{Graph, Tensor};
use neuronc::options::{AutoCast, CastType, CompileOptions};
use neuronc::reference::{RefOptions, random_inputs, run_reference};
use std::collections::BTreeMap;
use std::path::PathBuf;

/// A precision mode of the "done when" list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Precision {
    Fp32,
    Bf16,
    Fp16,
    Int8,
}

impl Precision {
    /// Compile options for this mode (`auto_cast = matmult` except for fp32).
    pub fn options(self) -> CompileOptions {
        let (auto_cast, auto_cast_type) = match self {
            Precision::Fp32 => (AutoCast::None, CastType::Bf16),
            Precision::Bf16 => (AutoCast::Matmult, CastType::Bf16),
            Precision::Fp16 => (AutoCast::Matmult, CastType::Fp16),
            Precision::Int8 => (AutoCast::Matmult, CastType::Int8),
        };
        CompileOptions {
            auto_cast,
            auto_cast_type,
            ..CompileOptions::default()
        }
    }
}

/// Path of a file under the workspace's `examples/`.
pub fn example(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../examples")
        .join(name)
}

/// Loads an example model.
pub fn load_example(name: &str) -> Graph {
    neuronc::frontend::load_model(&example(name)).unwrap()
}

/// Runs an artifact on the simulator with `inputs` bound by name; returns the outputs (as
/// f64, by name) and the run statistics.
pub fn simulate(
    art: &Artifact,
    inputs: &BTreeMap<String, Tensor>,
    opts: SimOptions,
) -> (BTreeMap<String, Vec<f64>>, RunStats) {
    try_simulate(art, inputs, opts).unwrap()
}

/// Like [`simulate`], returning the simulator's error if the run fails.
pub fn try_simulate(
    art: &Artifact,
    inputs: &BTreeMap<String, Tensor>,
    opts: SimOptions,
) -> Result<(BTreeMap<String, Vec<f64>>, RunStats), SimError> {
    let p = &art.meta.program;
    let mut sim = Simulator::new(p, &art.meta.target, opts).unwrap();
    for (i, t) in p.tensors.iter().enumerate() {
        let id = TensorId(i as u32);
        match t.kind {
            TensorKind::Input if !opts.timing_only => {
                let v = inputs
                    .get(&t.name)
                    .unwrap_or_else(|| panic!("no input named {}", t.name));
                let bytes = encode::encode(t.dtype, v.to_f64().iter().copied());
                sim.write_tensor(id, &bytes).unwrap();
            }
            TensorKind::Weight if !opts.timing_only => {
                let bytes = art.weight_bytes(id).unwrap().to_vec();
                sim.write_tensor(id, &bytes).unwrap();
            }
            _ => {}
        }
    }
    let stats = sim.run()?;
    let mut outs = BTreeMap::new();
    if !opts.timing_only {
        for (i, t) in p.tensors.iter().enumerate() {
            if t.kind == TensorKind::Output {
                let bytes = sim.tensor(TensorId(i as u32)).unwrap();
                outs.insert(t.name.clone(), encode::decode(t.dtype, bytes));
            }
        }
    }
    Ok((outs, stats))
}

/// The reference outputs of `g` on `inputs`, flattened to f64.
pub fn reference(g: &Graph, inputs: &BTreeMap<String, Tensor>) -> BTreeMap<String, Vec<f64>> {
    run_reference(g, inputs, RefOptions::default())
        .unwrap()
        .into_iter()
        .map(|(k, v)| (k, v.to_f64().iter().copied().collect()))
        .collect()
}

/// Cosine similarity.
pub fn cosine(a: &[f64], b: &[f64]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let na: f64 = a.iter().map(|x| x * x).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| x * x).sum::<f64>().sqrt();
    if na == 0.0 && nb == 0.0 {
        1.0
    } else {
        dot / (na * nb)
    }
}

/// Asserts that `got` matches the reference `want` within the tolerance of `prec`.
pub fn check(prec: Precision, name: &str, got: &[f64], want: &[f64]) {
    assert_eq!(got.len(), want.len(), "{name}: length");
    assert!(
        got.iter().all(|x| x.is_finite()),
        "{name}: non-finite output {:?}",
        &got[..got.len().min(8)]
    );
    let maxabs = want.iter().fold(0.0f64, |m, x| m.max(x.abs()));
    let maxdiff = got
        .iter()
        .zip(want)
        .fold(0.0f64, |m, (a, b)| m.max((a - b).abs()));
    let cos = cosine(got, want);
    match prec {
        Precision::Fp32 => {
            for (i, (a, b)) in got.iter().zip(want).enumerate() {
                assert!(
                    (a - b).abs() <= 1e-5 + 1e-4 * b.abs(),
                    "{name}[{i}]: got {a}, want {b} (fp32 tolerance)"
                );
            }
        }
        Precision::Bf16 => {
            assert!(
                maxdiff <= 2e-2 * maxabs,
                "{name}: max diff {maxdiff} > 2e-2 * {maxabs}"
            );
            assert!(cos >= 0.9995, "{name}: cosine {cos}");
        }
        Precision::Fp16 => {
            assert!(
                maxdiff <= 2e-3 * maxabs,
                "{name}: max diff {maxdiff} > 2e-3 * {maxabs}"
            );
            assert!(cos >= 0.99995, "{name}: cosine {cos}");
        }
        Precision::Int8 => assert!(cos >= 0.99, "{name}: cosine {cos}"),
    }
}

/// Compiles `g` in `prec`, simulates it on seeded inputs with the race checker on, checks
/// every output against the reference, and returns the compiled model and outputs.
pub fn compile_and_check(g: &Graph, prec: Precision) -> (Compiled, BTreeMap<String, Vec<f64>>) {
    compile_and_check_with(g, prec.options(), prec)
}

/// Like [`compile_and_check`] with explicit options.
pub fn compile_and_check_with(
    g: &Graph,
    opts: CompileOptions,
    prec: Precision,
) -> (Compiled, BTreeMap<String, Vec<f64>>) {
    compile_and_check_on(g, opts, prec, &random_inputs(g))
}

/// Like [`compile_and_check_with`] on the given inputs.
pub fn compile_and_check_on(
    g: &Graph,
    opts: CompileOptions,
    prec: Precision,
    inputs: &BTreeMap<String, Tensor>,
) -> (Compiled, BTreeMap<String, Vec<f64>>) {
    let c = compile(g, &opts).unwrap_or_else(|e| panic!("compile failed: {e}"));
    let sim_opts = SimOptions {
        check_races: true,
        ..SimOptions::default()
    };
    let (outs, stats) = simulate(&c.artifact, inputs, sim_opts);
    let races: Vec<_> = stats
        .warnings
        .iter()
        .filter(|w| w.kind == neuron_sim::WarningKind::Race)
        .collect();
    assert!(races.is_empty(), "races: {races:?}");
    let want = reference(g, inputs);
    assert_eq!(outs.len(), want.len(), "outputs");
    for (name, w) in &want {
        let got = outs.get(name).unwrap_or_else(|| panic!("no output {name}"));
        check(prec, name, got, w);
    }
    (c, outs)
}
