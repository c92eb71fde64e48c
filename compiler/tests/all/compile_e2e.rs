//! End to end: examples compiled by the driver, run on the simulator, compared with the
//! reference executor.

#![allow(clippy::unwrap_used)] // Tests may unwrap: a panic is a test failure.

use super::backend_harness::{Precision, compile_and_check, load_example};

#[test]
fn mlp_fp32_matches_reference() {
    compile_and_check(&load_example("mlp.json"), Precision::Fp32);
}

#[test]
fn mlp_bf16_matches_reference_and_differs_from_fp32() {
    let g = load_example("mlp.json");
    let (_, f32_out) = compile_and_check(&g, Precision::Fp32);
    let (_, bf16_out) = compile_and_check(&g, Precision::Bf16);
    assert_ne!(f32_out, bf16_out, "bf16 rounding must change the result");
}

#[test]
fn mlp_fp16_matches_reference() {
    compile_and_check(&load_example("mlp.json"), Precision::Fp16);
}

#[test]
fn mlp_int8_matches_reference() {
    compile_and_check(&load_example("mlp.json"), Precision::Int8);
}

#[test]
fn bert_layer_fp32_matches_reference() {
    compile_and_check(&load_example("bert_layer.json"), Precision::Fp32);
}

#[test]
fn bert_layer_bf16_matches_reference_and_differs_from_fp32() {
    let g = load_example("bert_layer.json");
    let (_, f32_out) = compile_and_check(&g, Precision::Fp32);
    let (_, bf16_out) = compile_and_check(&g, Precision::Bf16);
    assert_ne!(f32_out, bf16_out, "bf16 rounding must change the result");
}

#[test]
fn bert_layer_fp16_matches_reference() {
    compile_and_check(&load_example("bert_layer.json"), Precision::Fp16);
}

#[test]
fn bert_layer_int8_matches_reference() {
    compile_and_check(&load_example("bert_layer.json"), Precision::Int8);
}
