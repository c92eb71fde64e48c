//! Flash attention: past `FLASH_MIN_KEYS` keys the attention kernel streams key blocks
//! with an online softmax. Small head dimensions keep these long-sequence cases fast;
//! each is simulated (race checker on) and compared with the reference executor, with
//! partial query tiles, a partial last key block and a partial 128-key chunk.

#![allow(clippy::unwrap_used)]

use super::backend_harness::{Precision, compile_and_check, compile_and_check_with};
use ndarray::{ArrayD, IxDyn};
use neuronc::ir::{DType, Graph, Op, Tensor};

/// `softmax(q k^T * scale + mask) v` with q `[1, heads, sq, d]`, k and v `[1, heads, sk, d]`.
fn attention(heads: usize, sq: usize, sk: usize, d: usize, causal: bool) -> Graph {
    let mut g = Graph::new("flash");
    let q = g.add_input("q", [1, heads, sq, d], DType::F32).unwrap();
    let k = g.add_input("k", [1, heads, sk, d], DType::F32).unwrap();
    let v = g.add_input("v", [1, heads, sk, d], DType::F32).unwrap();
    let s = g
        .add_node("qk", Op::MatMul { transpose_b: true }, &[q, k], "scores")
        .unwrap();
    let scale = g
        .add_param("scale", Tensor::F32(ArrayD::from_elem(IxDyn(&[]), 0.3)))
        .unwrap();
    let s = g.add_node("scale", Op::Mul, &[s, scale], "scaled").unwrap();
    let mask = if causal {
        // Query i sees keys j <= i + (sk - sq) (the last sq positions of a prefix).
        let off = sk - sq;
        let m = ArrayD::from_shape_fn(IxDyn(&[sq, sk]), |ix| {
            if ix[1] <= ix[0] + off { 0.0 } else { -1e9 }
        });
        g.add_param("mask", Tensor::F32(m)).unwrap()
    } else {
        // A padding mask shared by every query: the last 37 keys are padding.
        g.add_input("pad_mask", [1, 1, 1, sk], DType::F32).unwrap()
    };
    let s = g.add_node("mask", Op::Add, &[s, mask], "masked").unwrap();
    let p = g
        .add_node("softmax", Op::Softmax { axis: -1 }, &[s], "probs")
        .unwrap();
    let o = g
        .add_node("pv", Op::MatMul { transpose_b: false }, &[p, v], "out")
        .unwrap();
    g.add_output(o).unwrap();
    g
}

fn assert_flash(g: &Graph) {
    let dir = tempfile::tempdir().unwrap();
    let mut opts = Precision::Fp32.options();
    opts.dump_dir = Some(dir.path().to_path_buf());
    neuronc::driver::compile(g, &opts).unwrap();
    let mut found = false;
    for e in std::fs::read_dir(dir.path()).unwrap() {
        let text = std::fs::read_to_string(e.unwrap().path()).unwrap();
        found |= text.contains("flash: q tiles of");
    }
    assert!(
        found,
        "the attention kernel was not tiled in the flash form"
    );
}

#[test]
fn bidirectional_flash_attention_matches_the_reference() {
    // 2148 keys: four full blocks of 512 and one of 100 (a 100-key partial chunk).
    let g = attention(2, 160, 2148, 16, false);
    assert_flash(&g);
    compile_and_check(&g, Precision::Fp32);
    compile_and_check(&g, Precision::Bf16);
}

#[test]
fn causal_flash_attention_matches_the_reference() {
    let g = attention(1, 200, 2100, 8, true);
    assert_flash(&g);
    compile_and_check(&g, Precision::Fp32);
    let mut unfused = Precision::Fp32.options();
    unfused.fuse = false;
    compile_and_check_with(&g, unfused, Precision::Fp32);
}

#[test]
fn flash_attention_compiles_at_32k_keys() {
    // Timing-only scale check: one head of 64 over 32768 keys, 128 queries (the fused
    // whole-row form needs over 200 KB per partition from about 2k keys on).
    let g = attention(1, 128, 32768, 64, false);
    let c = neuronc::driver::compile(&g, &Precision::Bf16.options()).unwrap();
    assert_eq!(
        c.summary.kernels.get("attention"),
        Some(&1),
        "{:?}",
        c.summary.kernels
    );
}
