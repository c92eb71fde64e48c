//! The reference executor against goldens from an independent runtime.
//!
//! Fixtures in `compiler/tests/fixtures/<case>/` are made by
//! `scripts/gen_reference_goldens.py`: small models built as ONNX graphs
//! (`model.onnx`, imported directly by `onnx.rs`), with model.json + safetensors
//! conversions of them (what `neuronc convert` writes) and expected outputs from
//! onnxruntime. This test needs no Python.

// Test helpers unwrap freely: a failure is a test failure.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use neuronc::frontend::load_model;
use neuronc::npy::{read_npy, sanitize_file_name};
use neuronc::reference::{RefOptions, run_reference};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// Runs one fixture and returns, per output, `max |got - expected| / max |expected|`.
fn check_case(case: &str, opts: RefOptions) -> BTreeMap<String, f64> {
    let dir = fixtures().join(case);
    let g = load_model(&dir.join("model.json")).unwrap_or_else(|e| panic!("{case}: {e}"));
    let mut inputs = BTreeMap::new();
    for &id in &g.inputs {
        let name = &g.value(id).name;
        let file = dir
            .join("inputs")
            .join(format!("{}.npy", sanitize_file_name(name)));
        inputs.insert(name.clone(), read_npy(&file).unwrap());
    }
    let outputs = run_reference(&g, &inputs, opts).unwrap_or_else(|e| panic!("{case}: {e}"));
    let mut report = BTreeMap::new();
    for (name, got) in &outputs {
        let file = dir
            .join("expected")
            .join(format!("{}.npy", sanitize_file_name(name)));
        let want = read_npy(&file).unwrap();
        let diff = got.max_abs_diff(&want).unwrap_or_else(|| {
            panic!(
                "{case}/{name}: shape {:?} vs expected {:?}",
                got.shape(),
                want.shape()
            )
        });
        let scale = want.max_abs();
        assert!(scale > 0.0, "{case}/{name}: expected output is all zeros");
        report.insert(name.clone(), diff / scale);
    }
    assert_eq!(report.len(), g.outputs.len());
    report
}

fn assert_case(case: &str) {
    for f64 in [false, true] {
        for (name, rel) in check_case(case, RefOptions { f64 }) {
            eprintln!("{case}/{name} (f64={f64}): relative max error {rel:.2e}");
            assert!(
                rel <= 1e-5,
                "{case}/{name} (f64={f64}): max |got - expected| = {rel:e} x max |expected|, above 1e-5"
            );
        }
    }
}

#[test]
fn bert_encoder_with_embedding_gathers() {
    assert_case("bert_encoder");
}

#[test]
fn gpt2_block_with_causal_mask_and_pow_tanh_gelu() {
    assert_case("gpt2_block");
}

#[test]
fn resnet_blocks_with_conv_batch_norm() {
    assert_case("resnet_block");
}

#[test]
fn strided_padded_grouped_convs_and_pools() {
    assert_case("conv_pool");
}

#[test]
fn misc_elementwise_reduce_and_layout_ops() {
    assert_case("misc_ops");
}

#[test]
fn every_golden_fixture_is_checked() {
    let mut found: Vec<String> = std::fs::read_dir(fixtures())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("model.json").is_file() && p.join("expected").is_dir())
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    found.sort();
    assert_eq!(
        found,
        [
            "bert_encoder",
            "conv_pool",
            "gpt2_block",
            "misc_ops",
            "resnet_block"
        ]
    );
}

#[test]
fn a_wrong_expected_value_is_caught() {
    // The comparison itself can fail: perturb one output and compare again.
    let dir = fixtures().join("misc_ops");
    let want = read_npy(&dir.join("expected/silu.npy")).unwrap();
    let mut bumped = want.to_f32();
    bumped[[0, 0, 0]] += 1e-3 * want.max_abs() as f32;
    let bumped = neuronc::ir::Tensor::F32(bumped);
    let rel = want.max_abs_diff(&bumped).unwrap() / want.max_abs();
    assert!(rel > 1e-5);
}
