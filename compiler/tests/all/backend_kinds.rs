//! One small model per kernel kind (fixtures in `tests/fixtures/backend/`), compiled fused
//! and unfused, simulated with the race checker on, compared with the reference.

#![allow(clippy::unwrap_used)] // Tests may unwrap: a panic is a test failure.

use super::backend_harness::{Precision, compile_and_check, compile_and_check_with};
use neuronc::ir::Graph;
use std::path::PathBuf;

fn fixture(name: &str) -> Graph {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/backend")
        .join(name);
    neuronc::frontend::load_model(&p).unwrap()
}

/// Fused and unfused in fp32, fused in bf16.
fn check_all(name: &str) {
    let g = fixture(name);
    compile_and_check(&g, Precision::Fp32);
    let mut unfused = Precision::Fp32.options();
    unfused.fuse = false;
    compile_and_check_with(&g, unfused, Precision::Fp32);
    compile_and_check(&g, Precision::Bf16);
}

#[test]
fn norms_layer_norm_over_two_axes_rms_norm_and_wide_rows() {
    check_all("norms.json");
}

/// A layer norm's `* gamma` and `+ beta` (both full SBUF tiles) split between VectorE and
/// GpSimd, and the result still matches the reference in fp32 and bf16.
#[test]
fn layer_norm_affine_splits_between_vector_and_gpsimd() {
    use neuron_isa::{AluOp, Engine, Op};
    let g = fixture("norms.json");
    for prec in [Precision::Fp32, Precision::Bf16] {
        let (c, _) = compile_and_check(&g, prec);
        let p = &c.artifact.meta.program;
        let ln = p
            .kernels
            .iter()
            .position(|k| k.nodes.contains(&"ln_wide".to_string()))
            .unwrap() as u32;
        let tt = |e: Engine, want: AluOp| {
            p.streams.iter().filter(|s| s.engine == e).any(|s| {
                s.instrs.iter().any(|i| {
                    i.kernel == ln && matches!(&i.op, Op::TensorTensor { op, .. } if *op == want)
                })
            })
        };
        assert!(tt(Engine::Vector, AluOp::Mul), "gamma on VectorE");
        assert!(tt(Engine::GpSimd, AluOp::Add), "beta on GpSimd");
        assert!(!tt(Engine::Vector, AluOp::Add), "no beta on VectorE");
    }
}

#[test]
fn matmuls_multi_tile_epilogues_batched_and_transposed_weights() {
    check_all("matmuls.json");
}

#[test]
fn matmuls_int8_and_fp16() {
    let g = fixture("matmuls.json");
    compile_and_check(&g, Precision::Int8);
    compile_and_check(&g, Precision::Fp16);
}

#[test]
fn attention_with_partial_tiles_and_mask() {
    check_all("attention.json");
}

#[test]
fn rows_softmax_reduce_select_pow_casts_and_copies() {
    check_all("rows.json");
}

#[test]
fn misc_ops_fixture_fused_and_unfused() {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/misc_ops/model.json");
    let g = neuronc::frontend::load_model(&p).unwrap();
    compile_and_check(&g, Precision::Fp32);
    let mut unfused = Precision::Fp32.options();
    unfused.fuse = false;
    compile_and_check_with(&g, unfused, Precision::Fp32);
}
