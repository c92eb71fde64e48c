//! Property tests on the simulator: for each fused kernel kind, a small graph over random
//! shapes (partial row tiles, partial column chunks) is compiled fused and `--no-fuse`,
//! both programs run on the simulator with the race checker on, both match the reference
//! executor and each other within the fp32 tolerance (`atol 1e-5 + rtol 1e-4`). Few cases
//! each: every case compiles and simulates two programs.

#![allow(clippy::unwrap_used)] // Tests may unwrap: a panic is a test failure.

use super::backend_harness::{Precision, check, compile_and_check_on};
use super::fusion::randn;
use neuronc::ir::{DType, GeluApprox, Graph, Op, Tensor, ValueId};
use neuronc::reference::random_inputs;
use proptest::prelude::*;

/// Compiles `g` fused and unfused (fp32), simulates both on the same seeded inputs, checks
/// both against the reference and against each other; the fused program must contain a
/// kernel of kind `kind` and have fewer kernels.
fn fused_matches_unfused(g: &Graph, kind: &str) {
    let inputs = random_inputs(g);
    let (fused, f) = compile_and_check_on(g, Precision::Fp32.options(), Precision::Fp32, &inputs);
    let mut opts = Precision::Fp32.options();
    opts.fuse = false;
    let (unfused, u) = compile_and_check_on(g, opts, Precision::Fp32, &inputs);
    let (fk, uk) = (&fused.summary.kernels, &unfused.summary.kernels);
    assert!(fk.contains_key(kind), "no {kind} kernel among {fk:?}");
    assert!(
        fused.summary.total_kernels() < unfused.summary.total_kernels(),
        "fused {fk:?} vs unfused {uk:?}"
    );
    for (name, want) in &u {
        check(
            Precision::Fp32,
            &format!("{name} fused vs unfused"),
            &f[name],
            want,
        );
    }
}

fn param(g: &mut Graph, name: &str, shape: &[usize], std: f64) -> ValueId {
    g.add_param(name, randn(g.seed, name, shape, std)).unwrap()
}

fn scalar(g: &mut Graph, name: &str, x: f32) -> ValueId {
    let t = Tensor::F32(ndarray::ArrayD::from_elem(ndarray::IxDyn(&[]), x));
    g.add_param(name, t).unwrap()
}

/// `gelu(x @ w + b) (+ r)`.
fn matmul_bias_gelu(m: usize, k: usize, n: usize, tanh: bool, residual: bool, seed: u64) -> Graph {
    let mut g = Graph::new("matmul_bias_gelu");
    g.seed = seed;
    let x = g.add_input("x", [m, k], DType::F32).unwrap();
    // Unit-variance outputs keep the fp32 rounding of long sums well inside the tolerance.
    let w = param(&mut g, "w", &[k, n], 1.0 / (k as f64).sqrt());
    let b = param(&mut g, "b", &[n], 0.5);
    let h = g
        .add_node("mm", Op::MatMul { transpose_b: false }, &[x, w], "h")
        .unwrap();
    let hb = g.add_node("bias", Op::Add, &[h, b], "hb").unwrap();
    let approximate = if tanh {
        GeluApprox::Tanh
    } else {
        GeluApprox::None
    };
    let mut y = g
        .add_node("act", Op::Gelu { approximate }, &[hb], "a")
        .unwrap();
    if residual {
        let r = g.add_input("r", [m, n], DType::F32).unwrap();
        y = g.add_node("residual", Op::Add, &[y, r], "y").unwrap();
    }
    g.add_output(y).unwrap();
    g
}

/// `norm(x) * 2 + r`, layer norm with optional gamma/beta or RMS norm with optional gamma.
fn norm(rows: usize, n: usize, rms: bool, gamma: bool, beta: bool, seed: u64) -> Graph {
    let mut g = Graph::new("norm");
    g.seed = seed;
    let x = g.add_input("x", [rows, n], DType::F32).unwrap();
    let mut ins = vec![x];
    if gamma {
        ins.push(param(&mut g, "gamma", &[n], 1.0));
        if beta && !rms {
            ins.push(param(&mut g, "beta", &[n], 1.0));
        }
    }
    let op = if rms {
        Op::RmsNorm {
            axis: -1,
            epsilon: 1e-6,
        }
    } else {
        Op::LayerNorm {
            axis: -1,
            epsilon: 1e-5,
        }
    };
    let y = g.add_node("norm", op, &ins, "n").unwrap();
    let two = scalar(&mut g, "two", 2.0);
    let y = g.add_node("scale", Op::Mul, &[y, two], "s").unwrap();
    let r = g.add_input("r", [rows, n], DType::F32).unwrap();
    let y = g.add_node("residual", Op::Add, &[y, r], "y").unwrap();
    g.add_output(y).unwrap();
    g
}

/// `softmax(x * c + mask)` over the last axis, the mask broadcast over rows.
fn softmax(b: usize, s: usize, t: usize, seed: u64) -> Graph {
    let mut g = Graph::new("softmax");
    g.seed = seed;
    let x = g.add_input("x", [b, s, t], DType::F32).unwrap();
    let mask = g.add_input("mask", [b, 1, t], DType::F32).unwrap();
    let c = scalar(&mut g, "c", 0.3);
    let xs = g.add_node("scale", Op::Mul, &[x, c], "xs").unwrap();
    let xm = g.add_node("mask_add", Op::Add, &[xs, mask], "xm").unwrap();
    let y = g
        .add_node("sm", Op::Softmax { axis: -1 }, &[xm], "y")
        .unwrap();
    g.add_output(y).unwrap();
    g
}

/// BERT-style attention: q, k, v `[b, s, h*d]` split into heads, scaled scores plus an
/// additive mask `[b, 1, 1, s]`, softmax, times v, heads merged back.
fn attention(b: usize, s: usize, h: usize, d: usize, seed: u64) -> Graph {
    let mut g = Graph::new("attention");
    g.seed = seed;
    let e = h * d;
    let (bi, si, hi, di) = (b as i64, s as i64, h as i64, d as i64);
    let heads = |g: &mut Graph, n: &str, perm: Vec<usize>| {
        let x = g.add_input(n, [b, s, e], DType::F32).unwrap();
        let r = g
            .add_node(
                format!("{n}_split"),
                Op::Reshape {
                    shape: vec![bi, si, hi, di],
                },
                &[x],
                format!("{n}4"),
            )
            .unwrap();
        g.add_node(
            format!("{n}_perm"),
            Op::Transpose { perm },
            &[r],
            format!("{n}h"),
        )
        .unwrap()
    };
    let q = heads(&mut g, "q", vec![0, 2, 1, 3]);
    let k = heads(&mut g, "k", vec![0, 2, 3, 1]);
    let v = heads(&mut g, "v", vec![0, 2, 1, 3]);
    let mask = g.add_input("mask", [b, 1, 1, s], DType::F32).unwrap();
    let sc = g
        .add_node("qk", Op::MatMul { transpose_b: false }, &[q, k], "scores")
        .unwrap();
    let c = scalar(&mut g, "scale", 1.0 / (d as f32).sqrt());
    let ss = g.add_node("scale_mul", Op::Mul, &[sc, c], "ss").unwrap();
    let sm = g.add_node("mask_add", Op::Add, &[ss, mask], "sm").unwrap();
    let p = g
        .add_node("probs", Op::Softmax { axis: -1 }, &[sm], "p")
        .unwrap();
    let o = g
        .add_node("pv", Op::MatMul { transpose_b: false }, &[p, v], "o")
        .unwrap();
    let t = g
        .add_node(
            "merge_perm",
            Op::Transpose {
                perm: vec![0, 2, 1, 3],
            },
            &[o],
            "ot",
        )
        .unwrap();
    let y = g
        .add_node(
            "merge",
            Op::Reshape {
                shape: vec![bi, si, e as i64],
            },
            &[t],
            "y",
        )
        .unwrap();
    g.add_output(y).unwrap();
    g
}

/// `table[ids] + pos`: an embedding lookup plus position rows.
fn gather_add(vocab: usize, h: usize, b: usize, s: usize, i64_ids: bool, seed: u64) -> Graph {
    let mut g = Graph::new("gather_add");
    g.seed = seed;
    let table = param(&mut g, "table", &[vocab, h], 1.0);
    let pos = param(&mut g, "pos", &[s, h], 1.0);
    let dtype = if i64_ids { DType::I64 } else { DType::I32 };
    let ids = g.add_input("ids", [b, s], dtype).unwrap();
    let e = g
        .add_node("lookup", Op::Gather { axis: 0 }, &[table, ids], "e")
        .unwrap();
    let y = g.add_node("add_pos", Op::Add, &[e, pos], "y").unwrap();
    g.add_output(y).unwrap();
    g
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(8))]

    #[test]
    fn matmul_bias_gelu_residual(m in 1usize..300, k in 1usize..160, n in 1usize..700, tanh: bool, residual: bool, seed in 0u64..1000) {
        fused_matches_unfused(&matmul_bias_gelu(m, k, n, tanh, residual, seed), "matmul");
    }

    #[test]
    fn layer_norm_with_gamma_beta(rows in 1usize..300, n in 1usize..700, gamma: bool, beta: bool, seed in 0u64..1000) {
        fused_matches_unfused(&norm(rows, n, false, gamma, beta, seed), "layer_norm");
    }

    #[test]
    fn rms_norm(rows in 1usize..300, n in 1usize..700, gamma: bool, seed in 0u64..1000) {
        fused_matches_unfused(&norm(rows, n, true, gamma, false, seed), "rms_norm");
    }

    #[test]
    fn softmax_with_scale_and_mask(b in 1usize..3, s in 1usize..150, t in 1usize..700, seed in 0u64..1000) {
        fused_matches_unfused(&softmax(b, s, t, seed), "softmax");
    }

    #[test]
    fn attention_with_heads_and_mask(b in 1usize..3, s in 1usize..200, h in 1usize..4, d in 1usize..48, seed in 0u64..1000) {
        fused_matches_unfused(&attention(b, s, h, d, seed), "attention");
    }

    #[test]
    fn gather_plus_add(vocab in 1usize..1000, h in 1usize..700, b in 1usize..3, s in 1usize..150, i64_ids: bool, seed in 0u64..1000) {
        fused_matches_unfused(&gather_add(vocab, h, b, s, i64_ids, seed), "gather");
    }
}
