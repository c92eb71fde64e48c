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

#[test]
fn bert_layer_on_trn2_and_unfused_match_reference() {
    use super::backend_harness::compile_and_check_with;
    let g = load_example("bert_layer.json");
    let mut opts = Precision::Bf16.options();
    opts.target = neuron_isa::ChipConfig::trn2();
    compile_and_check_with(&g, opts, Precision::Bf16);
    let mut opts = Precision::Bf16.options();
    opts.fuse = false;
    compile_and_check_with(&g, opts, Precision::Bf16);
}

#[test]
fn mlp_auto_cast_all_and_fp8_match_reference() {
    use super::backend_harness::compile_and_check_with;
    use neuronc::options::{AutoCast, CastType};
    let g = load_example("mlp.json");
    let mut opts = Precision::Bf16.options();
    opts.auto_cast = AutoCast::All;
    compile_and_check_with(&g, opts, Precision::Bf16);
    let mut opts = Precision::Bf16.options();
    opts.auto_cast_type = CastType::Fp8E4m3;
    // fp8 e4m3 keeps 3 mantissa bits: checked with the int8 (cosine) tolerance.
    compile_and_check_with(&g, opts, Precision::Int8);
}
