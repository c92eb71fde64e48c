//! The reference executor, op by op: hand-computed values and identities.

// Test helpers unwrap freely: a failure is a test failure.
#![allow(
    clippy::unwrap_used,
    clippy::cloned_ref_to_slice_refs,
    clippy::approx_constant
)]

use std::collections::BTreeMap;

use ndarray::{ArrayD, IxDyn, arr1, arr2};
use neuronc::ir::{DType, GeluApprox, Graph, Op, Tensor};
use neuronc::reference::{RefError, RefOptions, random_inputs, run_reference, run_reference_all};
use neuronc::rng::SeededRng;

fn t(shape: &[usize], values: &[f32]) -> Tensor {
    Tensor::F32(ArrayD::from_shape_vec(IxDyn(shape), values.to_vec()).unwrap())
}

fn seeded(shape: &[usize], name: &str) -> Tensor {
    let mut rng = SeededRng::for_tensor(1, name);
    let n = shape.iter().product();
    let v: Vec<f32> = (0..n).map(|_| rng.standard_normal() as f32).collect();
    t(shape, &v)
}

/// Runs one node with every operand given as a graph input.
fn run_op_with(op: Op, args: &[Tensor], opts: RefOptions) -> Result<Tensor, RefError> {
    let mut g = Graph::new("op");
    let mut ids = Vec::new();
    let mut feeds = BTreeMap::new();
    for (i, a) in args.iter().enumerate() {
        let name = format!("in{i}");
        ids.push(
            g.add_input(name.clone(), a.shape().to_vec(), a.dtype())
                .unwrap(),
        );
        feeds.insert(name, a.clone());
    }
    let y = g.add_node("node", op, &ids, "y").unwrap();
    g.add_output(y).unwrap();
    Ok(run_reference(&g, &feeds, opts)?.remove("y").unwrap())
}

fn run_op(op: Op, args: &[Tensor]) -> Tensor {
    run_op_with(op, args, RefOptions::default()).unwrap()
}

fn vals(t: &Tensor) -> Vec<f64> {
    t.to_f64().iter().copied().collect()
}

fn assert_close(got: &[f64], want: &[f64], tol: f64) {
    assert_eq!(got.len(), want.len(), "lengths differ: {got:?} vs {want:?}");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() <= tol,
            "element {i}: got {g}, want {w} (tol {tol})\n{got:?}"
        );
    }
}

#[test]
fn binary_ops_broadcast() {
    let a = t(&[2, 3], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
    let b = t(&[3], &[10.0, 20.0, 30.0]);
    assert_eq!(
        vals(&run_op(Op::Add, &[a.clone(), b.clone()])),
        vec![11.0, 22.0, 33.0, 14.0, 25.0, 36.0]
    );
    assert_eq!(
        vals(&run_op(Op::Sub, &[a.clone(), b.clone()])),
        vec![-9.0, -18.0, -27.0, -6.0, -15.0, -24.0]
    );
    assert_eq!(
        vals(&run_op(Op::Mul, &[a.clone(), b.clone()])),
        vec![10.0, 40.0, 90.0, 40.0, 100.0, 180.0]
    );
    let col = t(&[2, 1], &[2.0, 4.0]);
    assert_eq!(
        vals(&run_op(Op::Div, &[a.clone(), col.clone()])),
        vec![0.5, 1.0, 1.5, 1.0, 1.25, 1.5]
    );
    let m = t(&[3], &[2.0, 5.0, 3.0]);
    assert_eq!(
        vals(&run_op(Op::Max, &[a.clone(), m.clone()])),
        vec![2.0, 5.0, 3.0, 4.0, 5.0, 6.0]
    );
    assert_eq!(
        vals(&run_op(Op::Min, &[a.clone(), m])),
        vec![1.0, 2.0, 3.0, 2.0, 5.0, 3.0]
    );
    let two = t(&[], &[2.0]);
    assert_eq!(
        vals(&run_op(Op::Pow, &[a, two])),
        vec![1.0, 4.0, 9.0, 16.0, 25.0, 36.0]
    );
    let out = run_op(
        Op::Add,
        &[t(&[3, 1], &[1.0, 2.0, 3.0]), t(&[1, 2], &[10.0, 20.0])],
    );
    assert_eq!(out.shape(), &[3, 2]);
    assert_eq!(vals(&out), vec![11.0, 21.0, 12.0, 22.0, 13.0, 23.0]);
}

#[test]
fn integer_arithmetic() {
    let a = Tensor::I64(arr1(&[1i64, -2, 3]).into_dyn());
    let b = Tensor::I64(arr1(&[10i64]).into_dyn());
    assert_eq!(
        run_op(Op::Add, &[a.clone(), b.clone()]),
        Tensor::I64(arr1(&[11, 8, 13]).into_dyn())
    );
    assert_eq!(
        run_op(Op::Relu, &[a.clone()]),
        Tensor::I64(arr1(&[1, 0, 3]).into_dyn())
    );
    assert_eq!(
        run_op(Op::Max, &[a, b]),
        Tensor::I64(arr1(&[10, 10, 10]).into_dyn())
    );
}

#[test]
fn unary_ops_hand_values() {
    let x = t(&[4], &[-1.0, 0.0, 1.0, 2.0]);
    let cases: Vec<(Op, [f64; 4])> = vec![
        (Op::Neg, [1.0, 0.0, -1.0, -2.0]),
        (Op::Abs, [1.0, 0.0, 1.0, 2.0]),
        (Op::Exp, [0.36787944, 1.0, 2.71828183, 7.3890561]),
        (Op::Relu, [0.0, 0.0, 1.0, 2.0]),
        (Op::Sigmoid, [0.26894142, 0.5, 0.73105858, 0.88079708]),
        (Op::Tanh, [-0.76159416, 0.0, 0.76159416, 0.96402758]),
        (Op::Erf, [-0.84270079, 0.0, 0.84270079, 0.99532227]),
        (Op::Silu, [-0.26894142, 0.0, 0.73105858, 1.76159416]),
        (
            Op::Gelu {
                approximate: GeluApprox::None,
            },
            [-0.15865525, 0.0, 0.84134475, 1.95449974],
        ),
        (
            Op::Gelu {
                approximate: GeluApprox::Tanh,
            },
            [-0.15880801, 0.0, 0.84119199, 1.95459769],
        ),
    ];
    for (op, want) in cases {
        let got = vals(&run_op(op.clone(), &[x.clone()]));
        assert_close(&got, &want, 2e-6);
    }
    let p = t(&[3], &[0.25, 1.0, 4.0]);
    assert_close(
        &vals(&run_op(Op::Log, &[p.clone()])),
        &[-1.38629436, 0.0, 1.38629436],
        2e-6,
    );
    assert_close(
        &vals(&run_op(Op::Sqrt, &[p.clone()])),
        &[0.5, 1.0, 2.0],
        0.0,
    );
    assert_close(
        &vals(&run_op(Op::Rsqrt, &[p.clone()])),
        &[2.0, 1.0, 0.5],
        0.0,
    );
    assert_close(&vals(&run_op(Op::Reciprocal, &[p])), &[4.0, 1.0, 0.25], 0.0);
}

#[test]
fn gelu_tanh_is_close_to_but_not_the_erf_form() {
    let x = t(
        &[201],
        &(0..201).map(|i| -5.0 + 0.05 * i as f32).collect::<Vec<_>>(),
    );
    let erf = run_op(
        Op::Gelu {
            approximate: GeluApprox::None,
        },
        &[x.clone()],
    );
    let tanh = run_op(
        Op::Gelu {
            approximate: GeluApprox::Tanh,
        },
        &[x],
    );
    let d = erf.max_abs_diff(&tanh).unwrap();
    assert!(d > 1e-5 && d < 1e-3, "max |gelu_erf - gelu_tanh| = {d}");
}

#[test]
fn matmul_hand_values_and_batches() {
    let a = t(&[2, 3], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
    let b = t(&[3, 2], &[7.0, 8.0, 9.0, 10.0, 11.0, 12.0]);
    assert_eq!(
        vals(&run_op(
            Op::MatMul { transpose_b: false },
            &[a.clone(), b.clone()]
        )),
        vec![58.0, 64.0, 139.0, 154.0]
    );
    // transpose_b: a @ (b^T)^T
    let bt = run_op(Op::Transpose { perm: vec![1, 0] }, &[b]);
    assert_eq!(
        vals(&run_op(Op::MatMul { transpose_b: true }, &[a, bt])),
        vec![58.0, 64.0, 139.0, 154.0]
    );
    // Broadcast batch: [2,1,2,3] @ [3,3,2] -> [2,3,2,2]; each block equals the 2-D product.
    let a4 = seeded(&[2, 1, 2, 3], "a4");
    let b3 = seeded(&[3, 3, 2], "b3");
    let out = run_op(Op::MatMul { transpose_b: false }, &[a4.clone(), b3.clone()]);
    assert_eq!(out.shape(), &[2, 3, 2, 2]);
    let (a4, b3, out) = (a4.to_f64(), b3.to_f64(), out.to_f64());
    for i in 0..2 {
        for j in 0..3 {
            for r in 0..2 {
                for c in 0..2 {
                    let want: f64 = (0..3).map(|k| a4[[i, 0, r, k]] * b3[[j, k, c]]).sum();
                    assert!((out[[i, j, r, c]] - want).abs() < 1e-5);
                }
            }
        }
    }
}

#[test]
fn softmax_rows_sum_to_one() {
    let x = t(&[1, 3], &[1.0, 2.0, 3.0]);
    assert_close(
        &vals(&run_op(Op::Softmax { axis: -1 }, &[x])),
        &[0.09003057, 0.24472847, 0.66524096],
        1e-7,
    );
    let x = seeded(&[4, 5, 6], "sm");
    for axis in [0i64, 1, -1] {
        let y = run_op(Op::Softmax { axis }, &[x.clone()]).to_f64();
        let a = if axis < 0 { 2 } else { axis as usize };
        for s in y.sum_axis(ndarray::Axis(a)).iter() {
            assert!((s - 1.0).abs() < 1e-6, "axis {axis}: row sum {s}");
        }
    }
    // Large values do not overflow (the max is subtracted first).
    let big = t(&[2], &[1000.0, 1000.0]);
    assert_eq!(
        vals(&run_op(Op::Softmax { axis: 0 }, &[big])),
        vec![0.5, 0.5]
    );
}

#[test]
fn layer_norm_gives_mean_zero_variance_one() {
    let x = seeded(&[3, 4, 8], "ln");
    for (axis, inner) in [(-1i64, 8usize), (1, 32)] {
        let y = run_op(
            Op::LayerNorm {
                axis,
                epsilon: 1e-5,
            },
            &[x.clone()],
        )
        .to_f64();
        let rows = y.into_shape_with_order((3 * 32 / inner, inner)).unwrap();
        for row in rows.rows() {
            let mean = row.mean().unwrap();
            let var = row.mapv(|v| (v - mean) * (v - mean)).mean().unwrap();
            assert!(mean.abs() < 1e-6, "mean {mean}");
            assert!((var - 1.0).abs() < 1e-3, "var {var}");
        }
    }
    // Hand values with gamma and beta: x = [1, 3] -> normalized [-1, 1] (eps 0).
    let x = t(&[1, 2], &[1.0, 3.0]);
    let (g, b) = (t(&[2], &[2.0, 3.0]), t(&[2], &[0.5, -0.5]));
    let y = run_op(
        Op::LayerNorm {
            axis: -1,
            epsilon: 0.0,
        },
        &[x, g, b],
    );
    assert_eq!(vals(&y), vec![-1.5, 2.5]);
}

#[test]
fn rms_norm_hand_values() {
    // rms([3, 4]) = sqrt(12.5)
    let x = t(&[1, 2], &[3.0, 4.0]);
    let r = 12.5f64.sqrt();
    let y = run_op(
        Op::RmsNorm {
            axis: -1,
            epsilon: 0.0,
        },
        &[x.clone(), t(&[2], &[1.0, 2.0])],
    );
    assert_close(&vals(&y), &[3.0 / r, 8.0 / r], 1e-6);
    let y = run_op(
        Op::RmsNorm {
            axis: -1,
            epsilon: 1e-6,
        },
        &[seeded(&[5, 16], "rms")],
    )
    .to_f64();
    for row in y.rows() {
        let ms = row.mapv(|v| v * v).mean().unwrap();
        assert!((ms - 1.0).abs() < 1e-4, "{ms}");
    }
}

#[test]
fn batch_norm_hand_values() {
    // x [1, 2, 1, 2]; channel 0: (x - 1)/sqrt(4) * 2 + 1; channel 1: (x - 0)/1 * 1 + 0
    let x = t(&[1, 2, 1, 2], &[3.0, 5.0, 7.0, -1.0]);
    let y = run_op(
        Op::BatchNorm { epsilon: 0.0 },
        &[
            x,
            t(&[2], &[2.0, 1.0]),
            t(&[2], &[1.0, 0.0]),
            t(&[2], &[1.0, 0.0]),
            t(&[2], &[4.0, 1.0]),
        ],
    );
    assert_eq!(vals(&y), vec![3.0, 5.0, 7.0, -1.0]);
}

#[test]
fn reductions() {
    let x = t(&[2, 3], &[1.0, 2.0, 3.0, 4.0, 5.0, 9.0]);
    let y = run_op(
        Op::ReduceSum {
            axes: vec![1],
            keepdims: true,
        },
        &[x.clone()],
    );
    assert_eq!(
        (y.shape().to_vec(), vals(&y)),
        (vec![2, 1], vec![6.0, 18.0])
    );
    let y = run_op(
        Op::ReduceMean {
            axes: vec![0],
            keepdims: false,
        },
        &[x.clone()],
    );
    assert_eq!(
        (y.shape().to_vec(), vals(&y)),
        (vec![3], vec![2.5, 3.5, 6.0])
    );
    let y = run_op(
        Op::ReduceMax {
            axes: vec![-1, 0],
            keepdims: false,
        },
        &[x.clone()],
    );
    assert_eq!((y.shape().to_vec(), vals(&y)), (vec![], vec![9.0]));
    let y = run_op(
        Op::ReduceMean {
            axes: vec![0, 1],
            keepdims: true,
        },
        &[x],
    );
    assert_eq!((y.shape().to_vec(), vals(&y)), (vec![1, 1], vec![4.0]));
}

#[test]
fn layout_ops() {
    let x = t(&[2, 3], &[0.0, 1.0, 2.0, 3.0, 4.0, 5.0]);
    let y = run_op(Op::Transpose { perm: vec![1, 0] }, &[x.clone()]);
    assert_eq!(
        (y.shape().to_vec(), vals(&y)),
        (vec![3, 2], vec![0.0, 3.0, 1.0, 4.0, 2.0, 5.0])
    );
    let y = run_op(Op::Reshape { shape: vec![3, -1] }, &[y]);
    assert_eq!(
        (y.shape().to_vec(), vals(&y)),
        (vec![3, 2], vec![0.0, 3.0, 1.0, 4.0, 2.0, 5.0])
    );
    let y = run_op(
        Op::Concat { axis: -1 },
        &[x.clone(), t(&[2, 1], &[9.0, 8.0])],
    );
    assert_eq!(
        (y.shape().to_vec(), vals(&y)),
        (vec![2, 4], vec![0.0, 1.0, 2.0, 9.0, 3.0, 4.0, 5.0, 8.0])
    );
    // numpy: x[:, -2:] and x[::1, ::2] and clamped ends
    let sl = |axes: Vec<i64>, starts: Vec<i64>, ends: Vec<i64>, steps: Vec<i64>| {
        run_op(
            Op::Slice {
                axes,
                starts,
                ends,
                steps,
            },
            &[x.clone()],
        )
    };
    let y = sl(vec![1], vec![-2], vec![i64::MAX], vec![]);
    assert_eq!(
        (y.shape().to_vec(), vals(&y)),
        (vec![2, 2], vec![1.0, 2.0, 4.0, 5.0])
    );
    let y = sl(vec![1, 0], vec![0, 1], vec![100, 2], vec![2, 1]);
    assert_eq!((y.shape().to_vec(), vals(&y)), (vec![1, 2], vec![3.0, 5.0]));
}

#[test]
fn gather_embedding_lookup() {
    let table = t(&[4, 2], &[0.0, 1.0, 10.0, 11.0, 20.0, 21.0, 30.0, 31.0]);
    let ids = Tensor::I64(arr2(&[[3i64, 0], [-1, 1]]).into_dyn());
    let y = run_op(Op::Gather { axis: 0 }, &[table.clone(), ids]);
    assert_eq!(y.shape(), &[2, 2, 2]);
    assert_eq!(vals(&y), vec![30.0, 31.0, 0.0, 1.0, 30.0, 31.0, 10.0, 11.0]);
    let ids = Tensor::I32(arr1(&[1i32]).into_dyn());
    let y = run_op(Op::Gather { axis: 1 }, &[table.clone(), ids]);
    assert_eq!(
        (y.shape().to_vec(), vals(&y)),
        (vec![4, 1], vec![1.0, 11.0, 21.0, 31.0])
    );
    let bad = Tensor::I64(arr1(&[4i64]).into_dyn());
    let e = run_op_with(Op::Gather { axis: 0 }, &[table, bad], RefOptions::default()).unwrap_err();
    assert_eq!(
        e.to_string(),
        "node 'node' (index 0, op gather): gather index 4 is out of range for axis 0 of size 4 (expected -4 to 3)"
    );
}

#[test]
fn where_and_cast() {
    let c = Tensor::Bool(arr2(&[[true], [false]]).into_dyn());
    let a = t(&[3], &[1.0, 2.0, 3.0]);
    let b = t(&[], &[-1.0]);
    let y = run_op(Op::Where, &[c, a, b]);
    assert_eq!(
        (y.shape().to_vec(), vals(&y)),
        (vec![2, 3], vec![1.0, 2.0, 3.0, -1.0, -1.0, -1.0])
    );
    let x = t(&[4], &[-1.5, 0.0, 2.7, 1.0]);
    assert_eq!(
        run_op(Op::Cast { dtype: DType::I64 }, &[x.clone()]),
        Tensor::I64(arr1(&[-1, 0, 2, 1]).into_dyn())
    );
    assert_eq!(
        run_op(Op::Cast { dtype: DType::Bool }, &[x.clone()]),
        Tensor::Bool(arr1(&[true, false, true, true]).into_dyn())
    );
    // bf16 keeps 8 significant bits: 1 + 2^-9 rounds to 1.
    let y = run_op(
        Op::Cast { dtype: DType::Bf16 },
        &[t(&[2], &[1.0 + 1.0 / 512.0, 3.0])],
    );
    assert_eq!(y.dtype(), DType::Bf16);
    assert_eq!(vals(&y), vec![1.0, 3.0]);
    let y = run_op(
        Op::Cast { dtype: DType::F32 },
        &[Tensor::Bool(arr1(&[true, false]).into_dyn())],
    );
    assert_eq!(vals(&y), vec![1.0, 0.0]);
}

/// Independent im2col formulation of conv2d: patches [N*OH*OW, C/G*KH*KW] per group times weights.
fn conv_im2col(
    x: &ArrayD<f64>,
    w: &ArrayD<f64>,
    s: [usize; 2],
    p: [usize; 4],
    d: [usize; 2],
    groups: usize,
) -> ArrayD<f64> {
    let (n, h, wd) = (x.shape()[0], x.shape()[2], x.shape()[3]);
    let (o, cg, kh, kw) = (w.shape()[0], w.shape()[1], w.shape()[2], w.shape()[3]);
    let oh = (h + p[0] + p[2] - d[0] * (kh - 1) - 1) / s[0] + 1;
    let ow = (wd + p[1] + p[3] - d[1] * (kw - 1) - 1) / s[1] + 1;
    let og = o / groups;
    let mut out = ArrayD::zeros(IxDyn(&[n, o, oh, ow]));
    for g in 0..groups {
        let mut cols = ndarray::Array2::<f64>::zeros((n * oh * ow, cg * kh * kw));
        for b in 0..n {
            for i in 0..oh {
                for j in 0..ow {
                    for ci in 0..cg {
                        for u in 0..kh {
                            for v in 0..kw {
                                let y = (i * s[0] + u * d[0]) as i64 - p[0] as i64;
                                let xx = (j * s[1] + v * d[1]) as i64 - p[1] as i64;
                                if y >= 0 && xx >= 0 && (y as usize) < h && (xx as usize) < wd {
                                    cols[[(b * oh + i) * ow + j, (ci * kh + u) * kw + v]] =
                                        x[[b, g * cg + ci, y as usize, xx as usize]];
                                }
                            }
                        }
                    }
                }
            }
        }
        let wg = w
            .slice_axis(ndarray::Axis(0), ndarray::Slice::from(g * og..(g + 1) * og))
            .to_owned()
            .into_shape_with_order((og, cg * kh * kw))
            .unwrap();
        let prod = cols.dot(&wg.t());
        for b in 0..n {
            for i in 0..oh {
                for j in 0..ow {
                    for oc in 0..og {
                        out[[b, g * og + oc, i, j]] = prod[[(b * oh + i) * ow + j, oc]];
                    }
                }
            }
        }
    }
    out
}

#[test]
fn conv2d_equals_im2col_matmul() {
    for (s, p, d, groups, bias) in [
        ([1, 1], [0, 0, 0, 0], [1, 1], 1, false),
        ([2, 2], [1, 1, 1, 1], [1, 1], 1, true),
        ([1, 2], [2, 0, 1, 1], [2, 1], 2, true),
        ([1, 1], [1, 1, 1, 1], [1, 1], 4, false),
    ] {
        let x = seeded(&[2, 4, 7, 6], "cx");
        let w = seeded(&[8, 4 / groups, 3, 3], "cw");
        let b = seeded(&[8], "cb");
        let op = Op::Conv2d {
            strides: s,
            pads: p,
            dilations: d,
            groups,
        };
        let mut args = vec![x.clone(), w.clone()];
        if bias {
            args.push(b.clone());
        }
        let got = run_op_with(op, &args, RefOptions { f64: true })
            .unwrap()
            .to_f64();
        let mut want = conv_im2col(&x.to_f64(), &w.to_f64(), s, p, d, groups);
        if bias {
            let bv = b.to_f64();
            for ((_, o, _, _), v) in want
                .view_mut()
                .into_dimensionality::<ndarray::Ix4>()
                .unwrap()
                .indexed_iter_mut()
            {
                *v += bv[[o]];
            }
        }
        assert_eq!(got.shape(), want.shape(), "{s:?} {p:?} {d:?} g{groups}");
        let diff = got
            .iter()
            .zip(want.iter())
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f64::max);
        assert!(diff < 1e-12, "diff {diff} for {s:?} {p:?} {d:?} g{groups}");
    }
}

#[test]
fn pools_hand_values() {
    // 1x1x3x3 = 1..9
    let x = t(
        &[1, 1, 3, 3],
        &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0],
    );
    let y = run_op(
        Op::MaxPool2d {
            kernel: [2, 2],
            strides: [1, 1],
            pads: [0, 0, 0, 0],
        },
        &[x.clone()],
    );
    assert_eq!(
        (y.shape().to_vec(), vals(&y)),
        (vec![1, 1, 2, 2], vec![5.0, 6.0, 8.0, 9.0])
    );
    // Padding never wins for max, even with negative inputs.
    let neg = t(&[1, 1, 1, 2], &[-3.0, -4.0]);
    let y = run_op(
        Op::MaxPool2d {
            kernel: [1, 2],
            strides: [1, 2],
            pads: [0, 1, 0, 1],
        },
        &[neg],
    );
    assert_eq!(vals(&y), vec![-3.0, -4.0]);
    let avg = |include| Op::AvgPool2d {
        kernel: [2, 2],
        strides: [2, 2],
        pads: [1, 1, 1, 1],
        count_include_pad: include,
    };
    let y = run_op(avg(false), &[x.clone()]);
    assert_eq!(
        (y.shape().to_vec(), vals(&y)),
        (vec![1, 1, 2, 2], vec![1.0, 2.5, 5.5, 7.0])
    );
    let y = run_op(avg(true), &[x.clone()]);
    assert_eq!(vals(&y), vec![0.25, 1.25, 2.75, 7.0]);
    let y = run_op(Op::GlobalAvgPool, &[x]);
    assert_eq!(
        (y.shape().to_vec(), vals(&y)),
        (vec![1, 1, 1, 1], vec![5.0])
    );
}

#[test]
fn f64_mode_agrees_with_f32_mode() {
    let x = seeded(&[4, 16], "x64");
    let w = seeded(&[16, 8], "w64");
    let f32r = run_op(Op::MatMul { transpose_b: false }, &[x.clone(), w.clone()]);
    let f64r = run_op_with(
        Op::MatMul { transpose_b: false },
        &[x, w],
        RefOptions { f64: true },
    )
    .unwrap();
    assert!(matches!(f32r, Tensor::F32(_)));
    assert!(matches!(f64r, Tensor::F64(_)));
    assert!(f32r.max_abs_diff(&f64r).unwrap() < 1e-5);
}

#[test]
fn bf16_values_are_rounded_after_each_op() {
    let mut g = Graph::new("bf");
    let x = g.add_input("x", [2], DType::Bf16).unwrap();
    let y = g.add_node("e", Op::Exp, &[x], "y").unwrap();
    g.add_output(y).unwrap();
    let feeds = BTreeMap::from([(
        "x".to_string(),
        Tensor::F32(arr1(&[1.0f32, 0.5]).into_dyn()).cast(DType::Bf16),
    )]);
    let out = run_reference(&g, &feeds, RefOptions::default())
        .unwrap()
        .remove("y")
        .unwrap();
    assert_eq!(out.dtype(), DType::Bf16);
    // e = 2.71828 -> bf16 2.71875; e^0.5 = 1.64872 -> bf16 1.6484375
    assert_eq!(vals(&out), vec![2.71875, 1.6484375]);
}

#[test]
fn input_checks() {
    let mut g = Graph::new("c");
    let x = g.add_input("x", [2], DType::F32).unwrap();
    let y = g.add_node("r", Op::Relu, &[x], "y").unwrap();
    g.add_output(y).unwrap();
    let opts = RefOptions::default();
    let e = run_reference(&g, &BTreeMap::new(), opts).unwrap_err();
    assert_eq!(e.to_string(), "missing input 'x' (declared [2] f32)");
    let feeds = BTreeMap::from([("x".to_string(), t(&[3], &[1.0, 2.0, 3.0]))]);
    let e = run_reference(&g, &feeds, opts).unwrap_err();
    assert_eq!(e.to_string(), "input 'x': expected [2] f32, found [3] f32");
    let feeds = BTreeMap::from([
        ("x".to_string(), t(&[2], &[1.0, 2.0])),
        ("z".to_string(), t(&[1], &[1.0])),
    ]);
    let e = run_reference(&g, &feeds, opts).unwrap_err();
    assert_eq!(
        e.to_string(),
        "unknown input 'z' (the graph's inputs are: x)"
    );
}

#[test]
fn random_inputs_are_deterministic_and_index_safe() {
    let mut g = Graph::new("emb");
    g.seed = 11;
    let ids = g.add_input("ids", [4, 32], DType::I64).unwrap();
    let x = g.add_input("x", [3, 5], DType::F32).unwrap();
    let m = g.add_input("m", [6], DType::Bool).unwrap();
    let table = g
        .add_param("table", Tensor::zeros(DType::F32, &[5, 2]))
        .unwrap();
    let y = g
        .add_node("g", Op::Gather { axis: 0 }, &[table, ids], "y")
        .unwrap();
    g.add_output(y).unwrap();
    let _ = (x, m);
    let a = random_inputs(&g);
    assert_eq!(a, random_inputs(&g));
    let idv = a["ids"].to_i64();
    assert!(idv.iter().all(|&i| (0..5).contains(&i)));
    assert!(idv.iter().any(|&i| i == 4) && idv.iter().any(|&i| i == 0));
    assert_eq!(a["x"].dtype(), DType::F32);
    assert_eq!(a["m"].dtype(), DType::Bool);
    g.seed = 12;
    assert_ne!(a["x"], random_inputs(&g)["x"]);
}

#[test]
fn run_all_returns_every_value() {
    let mut g = Graph::new("all");
    let x = g.add_input("x", [2], DType::F32).unwrap();
    let h = g.add_node("n", Op::Neg, &[x], "h").unwrap();
    let y = g.add_node("e", Op::Exp, &[h], "y").unwrap();
    g.add_output(y).unwrap();
    let feeds = BTreeMap::from([("x".to_string(), t(&[2], &[0.0, 1.0]))]);
    let all = run_reference_all(&g, &feeds, RefOptions::default()).unwrap();
    assert_eq!(all.len(), 3);
    assert_eq!(vals(&all[h.index()]), vec![0.0, -1.0]);
    assert_close(&vals(&all[y.index()]), &[1.0, 0.36787944], 1e-7);
}
