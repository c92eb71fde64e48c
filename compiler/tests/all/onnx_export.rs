//! Real exporter output: a Hugging Face BertLayer, GPT2Block, T5Block and ViTLayer and
//! torchvision Bottlenecks exported by PyTorch's two ONNX exporters (`dynamo=True`, opset 18, and the
//! TorchScript one, opset 17) with symbolic `batch`/`sequence` dimensions, by the offline
//! generator `scripts/gen_onnx_exports.py`. Each model is imported straight from its
//! `.onnx` with the dimensions bound per input set, run on the reference executor and
//! compiled + simulated at fp32, against onnxruntime's outputs; and `neuronc convert`'s
//! model.json must give the identical graph and bit-identical outputs.

#![allow(clippy::unwrap_used)] // Tests may unwrap: a panic is a test failure.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use neuronc::frontend::onnx::{OnnxOptions, load_onnx};
use neuronc::frontend::{load_model, write_model_json};
use neuronc::ir::{Graph, Tensor};
use neuronc::npy::read_npy;
use neuronc::reference::{RefOptions, run_reference};

use super::backend_harness::{Precision, compile_and_check_on};

const MODELS: [&str; 5] = [
    "bert_layer",
    "gpt2_block",
    "t5_block",
    "vit_layer",
    "resnet_bottleneck",
];
const EXPORTERS: [&str; 2] = ["dynamo", "torchscript"];
/// Input sets per model, at different (batch, sequence) sizes.
const SETS: [&str; 2] = ["set0", "set1"];

fn case_dir(case: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/onnx_export")
        .join(case)
}

fn cases() -> Vec<String> {
    MODELS
        .iter()
        .flat_map(|m| EXPORTERS.iter().map(move |e| format!("{m}_{e}")))
        .collect()
}

/// The input set's tensors, by input name (from `setK/inputs/NAME.npy`).
fn set_inputs(case: &str, set: &str) -> BTreeMap<String, Tensor> {
    let dir = case_dir(case).join(set).join("inputs");
    let mut inputs = BTreeMap::new();
    for e in std::fs::read_dir(&dir).unwrap() {
        let p = e.unwrap().path();
        let name = p.file_stem().unwrap().to_string_lossy().to_string();
        inputs.insert(name, read_npy(&p).unwrap());
    }
    inputs
}

/// Imports the case's model.onnx with every input's shape bound to the set's (what
/// `--input-shape NAME=DxD..` does).
fn import(case: &str, inputs: &BTreeMap<String, Tensor>) -> Graph {
    let opts = OnnxOptions {
        input_shapes: inputs
            .iter()
            .map(|(n, t)| (n.clone(), t.shape().to_vec()))
            .collect(),
        ..OnnxOptions::default()
    };
    load_onnx(&case_dir(case).join("model.onnx"), &opts).unwrap_or_else(|e| panic!("{case}: {e}"))
}

fn expected(case: &str, set: &str) -> Tensor {
    read_npy(&case_dir(case).join(set).join("expected/output.npy")).unwrap()
}

/// Max |got - expected| relative to max |expected| within 1e-5, the tolerance of the
/// other onnxruntime goldens (`onnx.rs`, `goldens.rs`).
fn assert_golden(what: &str, got: &[f64], want: &Tensor) {
    let want = want.to_f64();
    assert_eq!(got.len(), want.len(), "{what}: output size");
    let maxabs = want.iter().fold(0.0f64, |m, x| m.max(x.abs()));
    let diff = got
        .iter()
        .zip(want.iter())
        .fold(0.0f64, |m, (a, b)| m.max((a - b).abs()));
    assert!(
        diff <= 1e-5 * maxabs,
        "{what}: max |diff| {diff:e} above 1e-5 * {maxabs}"
    );
}

#[test]
fn exported_models_match_onnxruntime_in_the_reference_executor() {
    for case in cases() {
        for set in SETS {
            let inputs = set_inputs(&case, set);
            let g = import(&case, &inputs);
            for f64 in [false, true] {
                let outs = run_reference(&g, &inputs, RefOptions { f64 }).unwrap();
                let got: Vec<f64> = outs["output"].to_f64().iter().copied().collect();
                assert_golden(
                    &format!("{case}/{set} (reference, f64 {f64})"),
                    &got,
                    &expected(&case, set),
                );
            }
        }
    }
}

#[test]
fn exported_models_compile_and_simulate_matching_onnxruntime() {
    for case in cases() {
        for set in SETS {
            let inputs = set_inputs(&case, set);
            let g = import(&case, &inputs);
            // Also checks the simulator against the reference at the fp32 tolerance.
            let (_, outs) =
                compile_and_check_on(&g, Precision::Fp32.options(), Precision::Fp32, &inputs);
            assert_golden(
                &format!("{case}/{set} (simulator, fp32)"),
                &outs["output"],
                &expected(&case, set),
            );
        }
    }
}

/// The symbolic dimensions the exporters declare are bound per input set: importing with
/// nothing bound names every one of them and the flag.
#[test]
fn exported_models_need_their_symbolic_dims_bound() {
    for case in cases() {
        let e = load_onnx(&case_dir(&case).join("model.onnx"), &OnnxOptions::default())
            .unwrap_err()
            .to_string();
        assert!(e.contains("--input-shape"), "{case}: {e}");
        assert!(e.contains("batch"), "{case}: {e}");
        if !case.starts_with("resnet") {
            assert!(e.contains("sequence"), "{case}: {e}");
        }
    }
}

/// `neuronc convert`: the converted model.json loads into the identical graph and gives
/// bit-identical outputs, in the reference executor and on the simulator.
#[test]
fn exported_models_round_trip_through_convert() {
    let dir = tempfile::tempdir().unwrap();
    for case in cases() {
        let inputs = set_inputs(&case, "set0");
        let g = import(&case, &inputs);
        let json = dir.path().join(format!("{case}.json"));
        write_model_json(&g, &json).unwrap();
        let back = load_model(&json).unwrap();
        assert_eq!(g, back, "{case}: graphs differ");
        let a = run_reference(&g, &inputs, RefOptions::default()).unwrap();
        let b = run_reference(&back, &inputs, RefOptions::default()).unwrap();
        assert_eq!(a, b, "{case}: reference outputs differ");
        let opts = Precision::Fp32.options();
        let ca = neuronc::driver::compile(&g, &opts).unwrap();
        let cb = neuronc::driver::compile(&back, &opts).unwrap();
        assert!(
            ca.artifact == cb.artifact,
            "{case}: compiled artifacts differ"
        );
    }
}
