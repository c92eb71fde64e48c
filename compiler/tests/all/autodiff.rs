//! Gradient checks: every differentiable op's vector-Jacobian product against central finite
//! differences in f64, over random shapes (proptest), and the error for an op without one.
//!
//! Each case builds `y = op(params...)`, differentiates `L = sum(y * r)` for a random `r`
//! (the seed of the backward pass is `r`), evaluates the gradients with the reference
//! executor in f64, and compares with `(L(x + h e_i) - L(x - h e_i)) / 2h` for every
//! element. Param values are multiples of 2^-10 and `h = 2^-7`, so `x +- h` is exact in the
//! f32 params and the only error is the O(h^2) truncation of the central difference.

#![allow(clippy::unwrap_used)] // Tests may unwrap: a panic is a test failure.

use std::collections::BTreeMap;

use ndarray::{ArrayD, IxDyn};
use neuronc::autodiff::{AutodiffError, Builder, differentiate};
use neuronc::ir::{DType, GeluApprox, Graph, Op, Tensor, ValueId};
use neuronc::reference::{RefOptions, run_reference};
use neuronc::rng::SeededRng;
use proptest::prelude::*;

const H: f32 = 1.0 / 128.0;

/// Values on a 2^-10 grid in `[lo, hi]`, avoiding `|x| < gap` (kinks of relu/abs/max).
fn grid(shape: &[usize], seed: u64, lo: f64, hi: f64, gap: f64) -> Tensor {
    let mut rng = SeededRng::for_tensor(seed, "grad");
    let n: usize = shape.iter().product();
    let v: Vec<f32> = (0..n)
        .map(|_| {
            loop {
                let x = rng.uniform(lo, hi);
                let q = (x * 1024.0).round() / 1024.0;
                if q.abs() >= gap {
                    break q as f32;
                }
            }
        })
        .collect();
    Tensor::F32(ArrayD::from_shape_vec(IxDyn(shape), v).unwrap())
}

/// `sum(y * r)` of the graph's single output, in f64.
fn objective(g: &Graph, r: &ArrayD<f64>) -> f64 {
    let out = run_reference(g, &BTreeMap::new(), RefOptions { f64: true }).unwrap();
    let y = out.values().next().unwrap().to_f64();
    (&y * r).sum()
}

/// Checks the gradients of `sum(op(params) * r)` with respect to `wrt` (param indices).
fn check_grad(g: &Graph, wrt: &[ValueId], tol: f64) {
    let y = g.outputs[0];
    let yshape = g.value(y).shape.clone();
    let r = grid(&yshape, 99, -1.0, 1.0, 0.0);
    let mut gg = g.clone();
    let seed = gg.add_param("seed_r", r.clone()).unwrap();
    let grads = {
        let mut b = Builder::new(&mut gg, "bw/");
        differentiate(&mut b, y, seed, wrt).unwrap()
    };
    gg.outputs = grads.clone();
    gg.verify().unwrap();
    let out = run_reference(&gg, &BTreeMap::new(), RefOptions { f64: true }).unwrap();
    let r64 = r.to_f64();
    for (k, (&p, &gid)) in wrt.iter().zip(&grads).enumerate() {
        let analytic = out[&gg.value(gid).name].to_f64();
        let base = g.value(p).data.as_ref().unwrap().tensor().clone();
        assert_eq!(analytic.shape(), base.shape(), "grad {k} shape");
        let Tensor::F32(x0) = base else { panic!() };
        // Logical (row-major) order, whatever the result's memory layout.
        let analytic: Vec<f64> = analytic.iter().copied().collect();
        for (i, &a) in analytic.iter().enumerate() {
            let mut fd = [0.0; 2];
            for (j, sign) in [1.0f32, -1.0].into_iter().enumerate() {
                let mut x = x0.clone();
                x.as_slice_mut().unwrap()[i] += sign * H;
                let mut gp = g.clone();
                gp.value_mut(p).data = Some(Tensor::F32(x).into());
                fd[j] = objective(&gp, &r64);
            }
            let numeric = (fd[0] - fd[1]) / (2.0 * f64::from(H));
            assert!(
                (a - numeric).abs() <= tol * (1.0 + numeric.abs()),
                "{}: d/d{}[{i}] analytic {a} vs numeric {numeric}",
                g.nodes.last().unwrap().op.name(),
                g.value(p).name
            );
        }
    }
}

fn unary(op: Op, shape: &[usize], lo: f64, hi: f64, gap: f64) {
    let mut g = Graph::new("t");
    let x = g.add_param("x", grid(shape, 1, lo, hi, gap)).unwrap();
    let y = g.add_node("op", op, &[x], "y").unwrap();
    g.add_output(y).unwrap();
    check_grad(&g, &[x], 2e-3);
}

/// Like [`grid`], but on odd (`odd`) or even multiples of 1/32: two such tensors never come
/// within `H` of each other, so max/min never switch sides inside a difference.
fn parity_grid(shape: &[usize], seed: u64, odd: bool) -> Tensor {
    let Tensor::F32(a) = grid(shape, seed, -2.0, 2.0, 0.0) else {
        unreachable!()
    };
    Tensor::F32(a.mapv(|x| (x * 16.0).round() / 16.0 + if odd { 1.0 / 32.0 } else { 0.0 }))
}

fn binary(op: Op, sa: &[usize], sb: &[usize], lo: f64, hi: f64) {
    let mut g = Graph::new("t");
    let kink = matches!(op, Op::Max | Op::Min);
    let (ta, tb) = if kink {
        (parity_grid(sa, 2, true), parity_grid(sb, 3, false))
    } else {
        (grid(sa, 2, lo, hi, 0.05), grid(sb, 3, lo, hi, 0.05))
    };
    let a = g.add_param("a", ta).unwrap();
    let b = g.add_param("b", tb).unwrap();
    let y = g.add_node("op", op, &[a, b], "y").unwrap();
    g.add_output(y).unwrap();
    check_grad(&g, &[a, b], 2e-3);
}

fn shape_strategy() -> impl Strategy<Value = Vec<usize>> {
    prop::collection::vec(1usize..4, 1..4)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 6, .. ProptestConfig::default() })]

    #[test]
    fn unary_ops_match_finite_differences(shape in shape_strategy()) {
        unary(Op::Neg, &shape, -2.0, 2.0, 0.0);
        unary(Op::Exp, &shape, -2.0, 2.0, 0.0);
        unary(Op::Log, &shape, 0.5, 3.0, 0.0);
        unary(Op::Sqrt, &shape, 0.5, 3.0, 0.0);
        unary(Op::Rsqrt, &shape, 0.5, 3.0, 0.0);
        unary(Op::Reciprocal, &shape, 0.5, 3.0, 0.0);
        unary(Op::Relu, &shape, -2.0, 2.0, 0.05);
        unary(Op::Abs, &shape, -2.0, 2.0, 0.05);
        unary(Op::Sigmoid, &shape, -3.0, 3.0, 0.0);
        unary(Op::Tanh, &shape, -2.0, 2.0, 0.0);
        unary(Op::Erf, &shape, -2.0, 2.0, 0.0);
        unary(Op::Silu, &shape, -3.0, 3.0, 0.0);
        unary(Op::Gelu { approximate: GeluApprox::None }, &shape, -3.0, 3.0, 0.0);
        unary(Op::Gelu { approximate: GeluApprox::Tanh }, &shape, -3.0, 3.0, 0.0);
    }

    #[test]
    fn broadcasting_binary_ops_match_finite_differences(
        shape in prop::collection::vec(2usize..4, 2..4),
        mask in 0u8..8,
    ) {
        // `b` broadcasts: some axes of `a`'s shape become 1, and a leading axis may go.
        let mut sb: Vec<usize> = shape
            .iter()
            .enumerate()
            .map(|(i, &d)| if mask & (1 << i) != 0 { 1 } else { d })
            .collect();
        if mask & 4 != 0 && sb.len() > 1 {
            sb.remove(0);
        }
        for op in [Op::Add, Op::Sub, Op::Mul, Op::Max, Op::Min] {
            binary(op, &shape, &sb, -2.0, 2.0);
        }
        binary(Op::Div, &shape, &sb, 0.5, 2.0);
        binary(Op::Pow, &shape, &sb, 0.5, 2.0);
    }

    #[test]
    fn matmul_matches_finite_differences(
        m in 1usize..4, k in 1usize..4, n in 1usize..4, batch in 1usize..3, tb in any::<bool>(),
        rank2_weight in any::<bool>(),
    ) {
        let mut g = Graph::new("t");
        let a = g.add_param("a", grid(&[batch, m, k], 4, -1.0, 1.0, 0.0)).unwrap();
        let ws: Vec<usize> = match (rank2_weight, tb) {
            (true, false) => vec![k, n],
            (true, true) => vec![n, k],
            (false, false) => vec![batch, k, n],
            (false, true) => vec![batch, n, k],
        };
        let w = g.add_param("w", grid(&ws, 5, -1.0, 1.0, 0.0)).unwrap();
        let y = g.add_node("mm", Op::MatMul { transpose_b: tb }, &[a, w], "y").unwrap();
        g.add_output(y).unwrap();
        check_grad(&g, &[a, w], 2e-3);
    }

    #[test]
    fn normalizations_and_softmax_match_finite_differences(
        rows in 1usize..4, d in 2usize..6, axis in -2i64..0,
    ) {
        for centered in [true, false] {
            let mut g = Graph::new("t");
            let x = g.add_param("x", grid(&[rows, d], 6, -2.0, 2.0, 0.0)).unwrap();
            let gamma = g.add_param("gamma", grid(&[d], 7, 0.5, 1.5, 0.0)).unwrap();
            let (op, ins) = if centered {
                let beta = g.add_param("beta", grid(&[d], 8, -0.5, 0.5, 0.0)).unwrap();
                (Op::LayerNorm { axis: -1, epsilon: 1e-5 }, vec![x, gamma, beta])
            } else {
                (Op::RmsNorm { axis: -1, epsilon: 1e-6 }, vec![x, gamma])
            };
            let y = g.add_node("norm", op, &ins, "y").unwrap();
            g.add_output(y).unwrap();
            check_grad(&g, &ins, 3e-3);
        }
        let mut g = Graph::new("t");
        let x = g.add_param("x", grid(&[rows, d], 9, -2.0, 2.0, 0.0)).unwrap();
        let y = g.add_node("sm", Op::Softmax { axis }, &[x], "y").unwrap();
        g.add_output(y).unwrap();
        check_grad(&g, &[x], 2e-3);
    }

    #[test]
    fn movement_and_reductions_match_finite_differences(
        a in 1usize..4, b in 1usize..4, c in 1usize..4, keepdims in any::<bool>(),
    ) {
        let shape = [a, b, c];
        let ops = [
            Op::ReduceSum { axes: vec![1], keepdims },
            Op::ReduceMean { axes: vec![0, -1], keepdims },
            Op::Transpose { perm: vec![2, 0, 1] },
            Op::Reshape { shape: vec![-1, c as i64] },
        ];
        for op in ops {
            unary(op, &shape, -2.0, 2.0, 0.0);
        }
        let mut g = Graph::new("t");
        let x = g.add_param("x", grid(&shape, 10, -1.0, 1.0, 0.0)).unwrap();
        let z = g.add_param("z", grid(&[a, 2, c], 11, -1.0, 1.0, 0.0)).unwrap();
        let y = g.add_node("cat", Op::Concat { axis: 1 }, &[x, z], "y").unwrap();
        g.add_output(y).unwrap();
        check_grad(&g, &[x, z], 2e-3);
    }
}

#[test]
fn where_routes_gradients_by_condition() {
    let mut g = Graph::new("t");
    let cond = Tensor::Bool(
        ArrayD::from_shape_vec(IxDyn(&[2, 2]), vec![true, false, false, true]).unwrap(),
    );
    let c = g.add_param("c", cond).unwrap();
    let a = g.add_param("a", grid(&[2, 2], 12, -1.0, 1.0, 0.0)).unwrap();
    let b = g.add_param("b", grid(&[2], 13, -1.0, 1.0, 0.0)).unwrap();
    let y = g.add_node("w", Op::Where, &[c, a, b], "y").unwrap();
    g.add_output(y).unwrap();
    check_grad(&g, &[a, b], 1e-6);
}

#[test]
fn a_mlp_chain_matches_finite_differences() {
    // x @ w1 + b1 -> relu -> @ w2 -> softmax: the chain rule across several nodes, with a
    // value (h) used twice.
    let mut g = Graph::new("t");
    let x = g.add_param("x", grid(&[3, 4], 14, -1.0, 1.0, 0.0)).unwrap();
    let w1 = g
        .add_param("w1", grid(&[4, 5], 15, -1.0, 1.0, 0.0))
        .unwrap();
    let b1 = g.add_param("b1", grid(&[5], 16, -0.5, 0.5, 0.0)).unwrap();
    let w2 = g
        .add_param("w2", grid(&[5, 3], 17, -1.0, 1.0, 0.0))
        .unwrap();
    let h = g
        .add_node("fc1", Op::MatMul { transpose_b: false }, &[x, w1], "h")
        .unwrap();
    let h = g.add_node("bias", Op::Add, &[h, b1], "hb").unwrap();
    let r = g.add_node("relu", Op::Tanh, &[h], "r").unwrap();
    let r2 = g.add_node("twice", Op::Mul, &[r, h], "r2").unwrap();
    let z = g
        .add_node("fc2", Op::MatMul { transpose_b: false }, &[r2, w2], "z")
        .unwrap();
    let y = g
        .add_node("sm", Op::Softmax { axis: -1 }, &[z], "y")
        .unwrap();
    g.add_output(y).unwrap();
    check_grad(&g, &[w1, b1, w2], 3e-3);
}

#[test]
fn an_op_without_a_gradient_on_the_path_is_named() {
    // A float -> int cast (a truncation) has no gradient; the node and the param are named.
    let mut g = Graph::new("t");
    let x = g.add_param("x", grid(&[2, 3], 18, -1.0, 1.0, 0.0)).unwrap();
    let t = g
        .add_node("trunc", Op::Cast { dtype: DType::I32 }, &[x], "t")
        .unwrap();
    let y = g
        .add_node("back", Op::Cast { dtype: DType::F32 }, &[t], "y")
        .unwrap();
    g.add_output(y).unwrap();
    let seed = g.add_param("s", grid(&[2, 3], 19, -1.0, 1.0, 0.0)).unwrap();
    let mut b = Builder::new(&mut g, "bw/");
    let e = differentiate(&mut b, y, seed, &[x]).unwrap_err();
    assert!(
        matches!(e, AutodiffError::NotDifferentiable { .. }),
        "{e:?}"
    );
    let msg = e.to_string();
    assert!(msg.contains("node 'trunc' (op cast)"), "{msg}");
    assert!(msg.contains("param 'x'"), "{msg}");
    assert!(msg.contains("not a float type"), "{msg}");
}

/// `n` distinct multiples of 1/16 in random order (no two within `2 H`: a max never changes
/// hands inside a central difference).
fn distinct(shape: &[usize], seed: u64) -> Tensor {
    let n: usize = shape.iter().product();
    let mut rng = SeededRng::for_tensor(seed, "distinct");
    let mut v: Vec<f32> = (0..n).map(|i| (i as f32 - n as f32 / 2.0) / 16.0).collect();
    for i in (1..n).rev() {
        let j = (rng.uniform(0.0, 1.0) * (i + 1) as f64) as usize;
        v.swap(i, j.min(i));
    }
    Tensor::F32(ArrayD::from_shape_vec(IxDyn(shape), v).unwrap())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 6, .. ProptestConfig::default() })]

    #[test]
    fn conv2d_matches_finite_differences(
        n in 1usize..3, cg in 1usize..3, og in 1usize..3, groups in 1usize..3,
        kh in 1usize..4, kw in 1usize..4, sh in 1usize..3, sw in 1usize..4,
        dh in 1usize..3, dw in 1usize..3, pads in prop::array::uniform4(0usize..3),
        extra in 0usize..3, bias in any::<bool>(),
    ) {
        // The input is just large enough for an output of 2 rows (plus `extra` rows and
        // columns that strides may leave unread).
        let h = (dh * (kh - 1) + 1 + sh + extra).saturating_sub(pads[0] + pads[2]).max(1);
        let w = (dw * (kw - 1) + 1 + extra).saturating_sub(pads[1] + pads[3]).max(1);
        prop_assume!(h + pads[0] + pads[2] > dh * (kh - 1));
        prop_assume!(w + pads[1] + pads[3] > dw * (kw - 1));
        let (c, o) = (cg * groups, og * groups);
        let mut g = Graph::new("t");
        let x = g.add_param("x", grid(&[n, c, h, w], 20, -1.0, 1.0, 0.0)).unwrap();
        let wt = g.add_param("w", grid(&[o, cg, kh, kw], 21, -1.0, 1.0, 0.0)).unwrap();
        let mut ins = vec![x, wt];
        if bias {
            ins.push(g.add_param("b", grid(&[o], 22, -1.0, 1.0, 0.0)).unwrap());
        }
        let op = Op::Conv2d { strides: [sh, sw], pads, dilations: [dh, dw], groups };
        let y = g.add_node("conv", op, &ins, "y").unwrap();
        g.add_output(y).unwrap();
        check_grad(&g, &ins, 2e-3);
    }

    #[test]
    fn pooling_matches_finite_differences(
        n in 1usize..3, c in 1usize..3, k in prop::array::uniform2(1usize..4),
        s in prop::array::uniform2(1usize..3), pads in prop::array::uniform4(0usize..2),
        extra in 0usize..3, include in any::<bool>(),
    ) {
        // Padding at most half the window (as ONNX requires).
        let pads = [pads[0].min(k[0] / 2), pads[1].min(k[1] / 2), pads[2].min(k[0] / 2),
                    pads[3].min(k[1] / 2)];
        let (h, w) = (k[0] + s[0] + extra, k[1] + extra + 1);
        let shape = [n, c, h, w];
        let max = Op::MaxPool2d { kernel: k, strides: s, pads };
        let mut g = Graph::new("t");
        let x = g.add_param("x", distinct(&shape, 23)).unwrap();
        let y = g.add_node("pool", max, &[x], "y").unwrap();
        g.add_output(y).unwrap();
        check_grad(&g, &[x], 2e-3);
        let avg = Op::AvgPool2d { kernel: k, strides: s, pads, count_include_pad: include };
        unary(avg, &shape, -1.0, 1.0, 0.0);
        unary(Op::GlobalAvgPool, &shape, -1.0, 1.0, 0.0);
    }

    #[test]
    fn batch_norm_matches_finite_differences(
        n in 1usize..3, c in 1usize..4, hw in prop::collection::vec(1usize..4, 0..3),
    ) {
        let mut shape = vec![n, c];
        shape.extend(hw);
        let mut g = Graph::new("t");
        let x = g.add_param("x", grid(&shape, 24, -2.0, 2.0, 0.0)).unwrap();
        let scale = g.add_param("scale", grid(&[c], 25, 0.5, 1.5, 0.0)).unwrap();
        let bias = g.add_param("bias", grid(&[c], 26, -0.5, 0.5, 0.0)).unwrap();
        let mean = g.add_param("mean", grid(&[c], 27, -0.5, 0.5, 0.0)).unwrap();
        let var = g.add_param("var", grid(&[c], 28, 0.5, 2.0, 0.0)).unwrap();
        let ins = [x, scale, bias, mean, var];
        let y = g.add_node("bn", Op::BatchNorm { epsilon: 1e-5 }, &ins, "y").unwrap();
        g.add_output(y).unwrap();
        check_grad(&g, &ins, 2e-3);
    }

    #[test]
    fn slice_gather_and_reduce_max_match_finite_differences(
        a in 2usize..5, b in 2usize..5, c in 2usize..4, start in -2i64..2, step in 1i64..3,
        axis in 0i64..3, keepdims in any::<bool>(), ids in prop::collection::vec(-2i64..2, 1..5),
    ) {
        let shape = [a, b, c];
        // A strided slice of the middle axis and a plain one of the last.
        let slice = Op::Slice {
            axes: vec![1, -1],
            starts: vec![start, 0],
            ends: vec![i64::MAX, c as i64],
            steps: vec![step, 1],
        };
        unary(slice, &shape, -1.0, 1.0, 0.0);
        // Gather along any axis, with negative and repeated indices (their gradients add).
        let mut g = Graph::new("t");
        let x = g.add_param("x", grid(&shape, 29, -1.0, 1.0, 0.0)).unwrap();
        let idx = Tensor::I64(ArrayD::from_shape_vec(IxDyn(&[ids.len()]), ids).unwrap());
        let idx = g.add_param("idx", idx).unwrap();
        let y = g.add_node("gather", Op::Gather { axis }, &[x, idx], "y").unwrap();
        g.add_output(y).unwrap();
        check_grad(&g, &[x], 2e-3);
        let mut g = Graph::new("t");
        let x = g.add_param("x", distinct(&shape, 30)).unwrap();
        let op = Op::ReduceMax { axes: vec![axis], keepdims };
        let y = g.add_node("rmax", op, &[x], "y").unwrap();
        g.add_output(y).unwrap();
        check_grad(&g, &[x], 2e-3);
    }
}
