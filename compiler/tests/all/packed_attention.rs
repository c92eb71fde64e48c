//! The packed attention form (several heads per VectorE/ScalarE instruction): each case is
//! simulated with the race checker on and compared with the reference executor at fp32
//! and bf16, and must actually have been lowered packed (a row max over several heads in
//! one `tensor_reduce`). Covers heads side by side in `[b, s, h*d]` rows (BERT) and
//! heads-first tensors, a padding mask per batch item (packs split where it changes), a
//! causal mask, a mask that differs per head, head sizes that stack 2 or 4 heads per
//! transpose or none, and a partial 128-key chunk.

#![allow(clippy::unwrap_used)]

use super::backend_harness::{Precision, compile_and_check, compile_and_check_with};
use ndarray::{ArrayD, IxDyn};
use neuron_isa::{Engine, Op as IsaOp};
use neuronc::ir::{DType, Graph, Op, Tensor, ValueId};

/// The mask of an attention case.
#[derive(Clone, Copy)]
enum Mask {
    /// `[b, 1, 1, sk]`: padding, the same for every head and query.
    Padding,
    /// `[sq, sk]` constant: query i sees keys j <= i.
    Causal,
    /// `[b, h, 1, sk]`: different for every head.
    PerHead,
    /// No mask: the prologue is the scale alone.
    None,
}

fn scalar(g: &mut Graph, name: &str, x: f32) -> ValueId {
    g.add_param(name, Tensor::F32(ArrayD::from_elem(IxDyn(&[]), x)))
        .unwrap()
}

/// `softmax(q k^T * scale + mask) v` over `b` batch items and `h` heads; `side` builds q,
/// k and v from `[b, s, h*d]` tensors split into heads (heads side by side in each row),
/// otherwise they are `[b, h, s, d]` inputs.
#[allow(clippy::too_many_arguments)]
fn attention(b: usize, h: usize, sq: usize, sk: usize, d: usize, mask: Mask, side: bool) -> Graph {
    let mut g = Graph::new("packed");
    let (bi, hi, di) = (b as i64, h as i64, d as i64);
    let heads = |g: &mut Graph, n: &str, s: usize| {
        if !side {
            return g.add_input(n, [b, h, s, d], DType::F32).unwrap();
        }
        let x = g.add_input(n, [b, s, h * d], DType::F32).unwrap();
        let r = g
            .add_node(
                format!("{n}_split"),
                Op::Reshape {
                    shape: vec![bi, s as i64, hi, di],
                },
                &[x],
                format!("{n}4"),
            )
            .unwrap();
        g.add_node(
            format!("{n}_perm"),
            Op::Transpose {
                perm: vec![0, 2, 1, 3],
            },
            &[r],
            format!("{n}h"),
        )
        .unwrap()
    };
    let q = heads(&mut g, "q", sq);
    let k = heads(&mut g, "k", sk);
    let v = heads(&mut g, "v", sk);
    let s = g
        .add_node("qk", Op::MatMul { transpose_b: true }, &[q, k], "scores")
        .unwrap();
    let c = scalar(&mut g, "scale", 1.0 / (d as f32).sqrt());
    let s = g.add_node("scale", Op::Mul, &[s, c], "scaled").unwrap();
    let m =
        match mask {
            Mask::None => return finish(g, s, v),
            Mask::Padding => g.add_input("pad", [b, 1, 1, sk], DType::F32).unwrap(),
            Mask::PerHead => g.add_input("pad", [b, h, 1, sk], DType::F32).unwrap(),
            Mask::Causal => {
                let t = ArrayD::from_shape_fn(IxDyn(&[sq, sk]), |ix| {
                    if ix[1] <= ix[0] { 0.0 } else { -1e9 }
                });
                g.add_param("causal", Tensor::F32(t)).unwrap()
            }
        };
    let s = g.add_node("mask", Op::Add, &[s, m], "masked").unwrap();
    finish(g, s, v)
}

/// Softmax of the scores `s`, times `v`, as the graph's output.
fn finish(mut g: Graph, s: ValueId, v: ValueId) -> Graph {
    let p = g
        .add_node("softmax", Op::Softmax { axis: -1 }, &[s], "probs")
        .unwrap();
    let o = g
        .add_node("pv", Op::MatMul { transpose_b: false }, &[p, v], "out")
        .unwrap();
    g.add_output(o).unwrap();
    g
}

/// The largest number of heads one row-max instruction of the program covers.
fn heads_per_reduce(g: &Graph, prec: Precision) -> u32 {
    let c = neuronc::driver::compile(g, &prec.options()).unwrap();
    let prog = &c.artifact.meta.program;
    let vector = prog.stream(Engine::Vector).unwrap();
    vector
        .instrs
        .iter()
        .filter_map(|i| match &i.op {
            IsaOp::TensorReduce { src, .. } if src.dims.len() == 2 => Some(src.dims[0].size),
            _ => None,
        })
        .max()
        .unwrap_or(1)
}

fn check_packed(g: &Graph, heads: u32) {
    for prec in [Precision::Fp32, Precision::Bf16] {
        assert_eq!(
            heads_per_reduce(g, prec),
            heads,
            "heads per pack ({prec:?})"
        );
        compile_and_check(g, prec);
    }
}

#[test]
fn bert_layout_packs_four_heads_per_instruction() {
    // 6 heads of 64 side by side: packs of 4 and 2 per batch item, 2 heads per transpose.
    check_packed(&attention(2, 6, 128, 128, 64, Mask::Padding, true), 4);
}

#[test]
fn heads_first_layout_with_a_causal_mask() {
    // Head size 32: 4 heads per transpose; 96 keys (a partial 128-key chunk); the packs
    // run across batch items (the causal mask is the same for all).
    check_packed(&attention(2, 3, 96, 96, 32, Mask::Causal, false), 4);
}

#[test]
fn long_key_rows_pack_two_heads_without_stacking() {
    // 200 keys (two 128-key chunks, the second partial), head size 48 (no stacking),
    // queries fewer than keys.
    let g = attention(1, 4, 50, 200, 48, Mask::Padding, true);
    check_packed(&g, 2);
    let mut unfused = Precision::Fp32.options();
    unfused.fuse = false;
    compile_and_check_with(&g, unfused, Precision::Fp32);
}

#[test]
fn a_mask_per_head_splits_packs_and_stays_exact() {
    // Every head has its own mask row: each pack holds one head, still correct.
    let g = attention(2, 3, 64, 64, 64, Mask::PerHead, true);
    for prec in [Precision::Fp32, Precision::Bf16] {
        compile_and_check(&g, prec);
    }
}

/// VectorE instructions of the program other than row maxima and the memsets/copies of
/// the mask broadcast: with the scale folded into Q^T and no mask, none touch the scores.
fn vector_score_passes(g: &Graph, prec: Precision) -> usize {
    let c = neuronc::driver::compile(g, &prec.options()).unwrap();
    let prog = &c.artifact.meta.program;
    prog.stream(Engine::Vector)
        .unwrap()
        .instrs
        .iter()
        .filter(|i| matches!(i.op, IsaOp::TensorScalar { .. }))
        .count()
}

#[test]
fn a_power_of_two_scale_is_folded_into_q() {
    // Scale 1/8 (head size 64), no mask: the scores go from PSUM straight into the
    // softmax; no VectorE scaling pass is left, and the result is unchanged.
    let g = attention(1, 4, 128, 128, 64, Mask::None, false);
    for prec in [Precision::Fp32, Precision::Bf16] {
        assert_eq!(vector_score_passes(&g, prec), 0, "{prec:?}");
        assert_eq!(heads_per_reduce(&g, prec), 4);
        compile_and_check(&g, prec);
    }
    // Head size 48: scale 1/sqrt(48) is not a power of two, so it stays a VectorE pass.
    let g = attention(1, 4, 128, 128, 48, Mask::None, false);
    assert!(vector_score_passes(&g, Precision::Fp32) > 0);
    compile_and_check(&g, Precision::Fp32);
}

#[test]
fn flash_form_with_a_folded_scale_matches_the_reference() {
    // 2148 keys (flash form, a partial last block), head size 16: scale 1/4 is folded
    // into Q^T and the online softmax reads the scores from PSUM.
    let g = attention(1, 2, 130, 2148, 16, Mask::None, false);
    for prec in [Precision::Fp32, Precision::Bf16] {
        compile_and_check(&g, prec);
    }
    let g = attention(1, 1, 130, 2148, 16, Mask::Causal, false);
    compile_and_check(&g, Precision::Fp32);
}
