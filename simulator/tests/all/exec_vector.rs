//! ScalarE/VectorE/GpSimd ops: activation, tensor_tensor, tensor_scalar, reduce,
//! bn_stats/bn_aggr, copies, memset, select, iota.
#![allow(clippy::unwrap_used)]

use super::exec_helpers::*;
use neuron_isa::{ActFunc, AluOp, Ap, Dim, Dtype, Op, Operand};
use neuron_sim::exec::{activation_fn, alu, execute};

fn act(
    dst: Ap,
    src: Ap,
    func: ActFunc,
    scale: Operand,
    bias: Option<Operand>,
    accum: Option<Ap>,
) -> Op {
    Op::Activation {
        dst,
        src,
        func,
        scale,
        bias,
        accum,
    }
}

/// Per-partition scale and bias, relu, and the accumulated row sums (before the cast to
/// bf16): row p computes relu(x * scale[p] + bias[p]).
#[test]
fn activation_per_partition_scale_bias_and_accum() {
    let mut m = mems(&[]);
    let src = sb(Dtype::F32, 0, 2, 0, 4);
    put(&mut m, &src, &[1.0, -2.0, 3.0, 0.25, 1.0, 2.0, 3.0, 4.0]);
    let scale = sb(Dtype::F32, 0, 2, 64, 1);
    let bias = sb(Dtype::F32, 0, 2, 68, 1);
    put(&mut m, &scale, &[2.0, -1.0]);
    put(&mut m, &bias, &[0.5, 2.5]);
    let dst = sb(Dtype::Bf16, 0, 2, 128, 4);
    let accum = sb(Dtype::F32, 0, 2, 256, 1);
    let op = act(
        dst.clone(),
        src,
        ActFunc::Relu,
        Operand::PerPartition(scale),
        Some(Operand::PerPartition(bias)),
        Some(accum.clone()),
    );
    assert!(!run(&mut m, &op).poisoned_read);
    // Row 0: 2x + 0.5 = [2.5, -3.5, 6.5, 1.0] -> relu [2.5, 0, 6.5, 1]. Row 1: -x + 2.5 =
    // [1.5, 0.5, -0.5, -1.5] -> [1.5, 0.5, 0, 0].
    assert_eq!(get(&m, &dst), vec![2.5, 0.0, 6.5, 1.0, 1.5, 0.5, 0.0, 0.0]);
    assert_eq!(get(&m, &accum), vec![10.0, 2.0]);
}

/// The accumulator sums FP32 results before the cast: 3 x (1 + 2^-9) sums to 3 + 3 * 2^-9
/// while each bf16 output rounds to 1.0.
#[test]
fn activation_accum_is_before_the_cast() {
    let mut m = mems(&[]);
    let src = sb(Dtype::F32, 0, 1, 0, 3);
    put(&mut m, &src, &[1.0 + 2f32.powi(-9); 3]);
    let dst = sb(Dtype::Bf16, 0, 1, 64, 3);
    let accum = sb(Dtype::F32, 0, 1, 128, 1);
    run(
        &mut m,
        &act(
            dst.clone(),
            src,
            ActFunc::Identity,
            Operand::Imm(1.0),
            None,
            Some(accum.clone()),
        ),
    );
    assert_eq!(get(&m, &dst), vec![1.0; 3]);
    assert_eq!(get(&m, &accum), vec![3.0 + 3.0 * 2f32.powi(-9)]);
}

/// The instruction's rows (vectorised `exp`, chunked sigmoid, sums only when asked for)
/// give exactly `activation_fn` of `x * scale + bias` element by element, and `accum` is
/// the sequential FP32 sum of those results, for every function, on rows whose length
/// is not a multiple of any vector width and with out-of-range inputs among ordinary
/// ones.
#[test]
fn activation_rows_have_the_bits_of_activation_fn_and_a_sequential_sum() {
    // Eleven partitions: a whole group of eight row sums and a remainder; the longer rows
    // take the path split across the pool.
    for (parts, free) in [(11usize, 203usize), (11, 1600)] {
        activation_rows_case(parts, free);
    }
}

fn activation_rows_case(parts: usize, free: usize) {
    let xs: Vec<f32> = (0..parts * free)
        .map(|i| match i % 53 {
            0 => f32::NAN,
            1 => 95.0,
            2 => -120.0,
            3 => 1e-7,
            4 => -0.0,
            _ => ((i * 7919) % 1000) as f32 / 61.0 - 8.0,
        })
        .collect();
    let scales: Vec<f32> = (0..parts).map(|p| [1.5f32, -0.75, 1.0][p % 3]).collect();
    let biases: Vec<f32> = (0..parts)
        .map(|p| [0.25f32, -1.0, 0.0, 0.5][p % 4])
        .collect();
    for func in ActFunc::ALL {
        for with_accum in [false, true] {
            let mut m = mems(&[]);
            let src = sb(Dtype::F32, 0, parts as u32, 0, free as u32);
            put(&mut m, &src, &xs);
            let at = 4 * free as u64;
            let scale = sb(Dtype::F32, 0, parts as u32, at, 1);
            let bias = sb(Dtype::F32, 0, parts as u32, at + 4, 1);
            put(&mut m, &scale, &scales);
            put(&mut m, &bias, &biases);
            let dst = sb(Dtype::F32, 0, parts as u32, at + 8, free as u32);
            let accum = sb(Dtype::F32, 0, parts as u32, 2 * at + 8, 1);
            let op = act(
                dst.clone(),
                src,
                func,
                Operand::PerPartition(scale),
                Some(Operand::PerPartition(bias)),
                with_accum.then(|| accum.clone()),
            );
            run(&mut m, &op);
            let got = get(&m, &dst);
            let mut sums = vec![0.0f32; parts];
            for (i, (&x, &y)) in xs.iter().zip(&got).enumerate() {
                let p = i / free;
                let want = activation_fn(func, x * scales[p] + biases[p]);
                // The documented rule: the first NaN in free order is the sum.
                if !sums[p].is_nan() {
                    sums[p] += want;
                }
                assert_eq!(
                    y.to_bits(),
                    want.to_bits(),
                    "{} of {x} (row {p}): {y} vs {want}",
                    func.name()
                );
            }
            if with_accum {
                let got = get(&m, &accum);
                for p in 0..parts {
                    assert_eq!(
                        got[p].to_bits(),
                        sums[p].to_bits(),
                        "{} sum {p}",
                        func.name()
                    );
                }
            }
        }
    }
}

/// Every function against its formula at a few points; transcendental ones through libm.
#[test]
fn activation_functions_follow_their_formulas() {
    let xs = [-3.0f32, -0.5, 0.0, 0.75, 2.0];
    for x in xs {
        let sig = 1.0 / (1.0 + libm::expf(-x));
        let cases = [
            (ActFunc::Identity, x),
            (ActFunc::Relu, x.max(0.0)),
            (
                ActFunc::Gelu,
                0.5 * x * (1.0 + libm::erff(x / std::f32::consts::SQRT_2)),
            ),
            (ActFunc::Sigmoid, sig),
            (ActFunc::Silu, x * sig),
            (ActFunc::Tanh, libm::tanhf(x)),
            (ActFunc::Exp, libm::expf(x)),
            (ActFunc::Square, x * x),
            (ActFunc::Erf, libm::erff(x)),
            (ActFunc::Abs, x.abs()),
            (ActFunc::Reciprocal, 1.0 / x),
        ];
        for (f, want) in cases {
            let got = activation_fn(f, x);
            assert!(
                got == want || (got - want).abs() <= 1e-6 * want.abs().max(1.0),
                "{} at {x}: {got} vs {want}",
                f.name()
            );
        }
    }
    assert_eq!(
        activation_fn(ActFunc::Sign, -0.0).to_bits(),
        (-0.0f32).to_bits()
    );
    assert_eq!(activation_fn(ActFunc::Sign, -7.0), -1.0);
    assert_eq!(activation_fn(ActFunc::Sign, 1e-30), 1.0);
    assert_eq!(activation_fn(ActFunc::Sqrt, 16.0), 4.0);
    assert_eq!(activation_fn(ActFunc::Rsqrt, 16.0), 0.25);
    assert_eq!(activation_fn(ActFunc::Log, 1.0), 0.0);
    assert!(activation_fn(ActFunc::Log, -1.0).is_nan());
    assert!(activation_fn(ActFunc::Relu, f32::NAN).is_nan());
    // GELU (tanh form) at 1: 0.5 (1 + tanh(sqrt(2/pi) * 1.044715)) = 0.841192.
    assert!((activation_fn(ActFunc::GeluTanh, 1.0) - 0.841_192).abs() < 1e-6);
    assert!((activation_fn(ActFunc::Gelu, 1.0) - 0.841_344_7).abs() < 1e-6);
    // Softplus: ln 2 at 0, x for large x (no overflow), e^x for very negative x.
    assert!((activation_fn(ActFunc::Softplus, 0.0) - std::f32::consts::LN_2).abs() < 1e-7);
    assert_eq!(activation_fn(ActFunc::Softplus, 200.0), 200.0);
    assert!((activation_fn(ActFunc::Softplus, -20.0) - libm::expf(-20.0)).abs() < 1e-12);
}

#[test]
fn tensor_tensor_ops_and_nan_rules() {
    let mut m = mems(&[]);
    let a = sb(Dtype::F32, 0, 2, 0, 3);
    let b = sb(Dtype::F32, 0, 2, 64, 3);
    put(&mut m, &a, &[1.0, 5.0, f32::NAN, -2.0, 0.5, 3.0]);
    put(&mut m, &b, &[4.0, 5.0, 1.0, 3.0, 2.0, -1.0]);
    let dst = sb(Dtype::F32, 0, 2, 128, 3);
    let check = |m: &mut neuron_sim::Memories, op: AluOp, want: &[f32]| {
        run(
            m,
            &Op::TensorTensor {
                dst: dst.clone(),
                a: a.clone(),
                b: b.clone(),
                op,
            },
        );
        let got = get(m, &dst);
        for (i, (g, w)) in got.iter().zip(want).enumerate() {
            assert!(
                g.to_bits() == w.to_bits() || (g.is_nan() && w.is_nan()),
                "{} [{i}]: {g} vs {w}",
                op.name()
            );
        }
    };
    check(&mut m, AluOp::Add, &[5.0, 10.0, f32::NAN, 1.0, 2.5, 2.0]);
    check(&mut m, AluOp::Sub, &[-3.0, 0.0, f32::NAN, -5.0, -1.5, 4.0]);
    check(
        &mut m,
        AluOp::Div,
        &[0.25, 1.0, f32::NAN, -2.0 / 3.0, 0.25, -3.0],
    );
    check(&mut m, AluOp::Max, &[4.0, 5.0, f32::NAN, 3.0, 2.0, 3.0]);
    check(&mut m, AluOp::Min, &[1.0, 5.0, f32::NAN, -2.0, 0.5, -1.0]);
    check(
        &mut m,
        AluOp::Pow,
        &[1.0, 3125.0, f32::NAN, -8.0, 0.25, 1.0 / 3.0],
    );
    check(&mut m, AluOp::IsEq, &[0.0, 1.0, 0.0, 0.0, 0.0, 0.0]);
    check(&mut m, AluOp::IsNe, &[1.0, 0.0, 1.0, 1.0, 1.0, 1.0]);
    check(&mut m, AluOp::IsGt, &[0.0, 0.0, 0.0, 0.0, 0.0, 1.0]);
    check(&mut m, AluOp::IsGe, &[0.0, 1.0, 0.0, 0.0, 0.0, 1.0]);
    check(&mut m, AluOp::IsLt, &[1.0, 0.0, 0.0, 1.0, 1.0, 0.0]);
    check(&mut m, AluOp::IsLe, &[1.0, 1.0, 0.0, 1.0, 1.0, 0.0]);
    check(&mut m, AluOp::Bypass, &[1.0, 5.0, f32::NAN, -2.0, 0.5, 3.0]);
    // NaN on the right propagates through max/min too.
    assert!(alu(AluOp::Max, 1.0, f32::NAN).is_nan());
    assert!(alu(AluOp::Min, f32::NAN, 1.0).is_nan());
}

/// In-place: dst overlaps both inputs; inputs are read before the write.
#[test]
fn tensor_tensor_in_place() {
    let mut m = mems(&[]);
    let a = sb(Dtype::F32, 0, 1, 0, 4);
    put(&mut m, &a, &[1.0, 2.0, 3.0, 4.0]);
    // b is a shifted view of the same bytes: b[i] = a[i + 1] for i < 3, and a[3] for i = 3.
    let mut b = a.clone();
    b.dims = vec![Dim { size: 3, stride: 1 }, Dim { size: 1, stride: 1 }];
    b.offset = 4;
    let mut a3 = a.clone();
    a3.dims = vec![Dim { size: 3, stride: 1 }];
    run(
        &mut m,
        &Op::TensorTensor {
            dst: a3.clone(),
            a: a3,
            b,
            op: AluOp::Mul,
        },
    );
    assert_eq!(get(&m, &a), vec![2.0, 6.0, 12.0, 4.0]);
}

/// (src op0 operand0) op1 operand1 with reverse flags: 10 - x, then 1 / that.
#[test]
fn tensor_scalar_reverse_flags() {
    let mut m = mems(&[]);
    let src = sb(Dtype::F32, 0, 2, 0, 3);
    put(&mut m, &src, &[2.0, 6.0, 8.0, 1.0, 2.0, 3.0]);
    let per_p = sb(Dtype::F32, 0, 2, 64, 1);
    put(&mut m, &per_p, &[10.0, 5.0]);
    let dst = sb(Dtype::F32, 0, 2, 128, 3);
    let op = |op0, rev0, op1, operand1, rev1| Op::TensorScalar {
        dst: dst.clone(),
        src: src.clone(),
        op0,
        operand0: Operand::PerPartition(per_p.clone()),
        reverse0: rev0,
        op1,
        operand1,
        reverse1: rev1,
    };
    run(
        &mut m,
        &op(AluOp::Sub, true, AluOp::Div, Operand::Imm(1.0), true),
    );
    // Row 0: 1 / (10 - x) = [1/8, 1/4, 1/2]; row 1: 1 / (5 - x) = [1/4, 1/3, 1/2].
    assert_eq!(get(&m, &dst), vec![0.125, 0.25, 0.5, 0.25, 1.0 / 3.0, 0.5]);
    run(
        &mut m,
        &op(AluOp::Sub, false, AluOp::Mul, Operand::Imm(-2.0), false),
    );
    // (x - s) * -2.
    assert_eq!(get(&m, &dst), vec![16.0, 8.0, 4.0, 8.0, 6.0, 4.0]);
    // Bypass as the second op leaves the first result alone.
    run(
        &mut m,
        &op(AluOp::IsGt, false, AluOp::Bypass, Operand::Imm(99.0), false),
    );
    assert_eq!(get(&m, &dst), vec![0.0, 0.0, 0.0, 0.0, 0.0, 0.0]);
    run(
        &mut m,
        &op(AluOp::Max, true, AluOp::Bypass, Operand::Imm(99.0), false),
    );
    assert_eq!(get(&m, &dst), vec![10.0, 10.0, 10.0, 5.0, 5.0, 5.0]);
}

/// Reduce the innermost axis (add, negated) and both axes (max, min, mul) of a [2, 2x3]
/// source.
#[test]
fn tensor_reduce_axes_ops_and_negate() {
    let mut m = mems(&[]);
    let mut src = sb(Dtype::F32, 0, 2, 0, 6);
    src.dims = vec![Dim { size: 2, stride: 3 }, Dim { size: 3, stride: 1 }];
    put(
        &mut m,
        &src,
        &[
            1.0, 2.0, 3.0, -4.0, 5.0, 0.5, 2.0, 2.0, 2.0, -1.0, -1.0, 3.0,
        ],
    );
    let reduce = |dst: &Ap, op, axes, negate| Op::TensorReduce {
        dst: dst.clone(),
        src: src.clone(),
        op,
        axes,
        negate,
    };
    let d2 = sb(Dtype::F32, 0, 2, 64, 2);
    run(&mut m, &reduce(&d2, AluOp::Add, 1, true));
    assert_eq!(get(&m, &d2), vec![-6.0, -1.5, -6.0, -1.0]);
    let d1 = sb(Dtype::F32, 0, 2, 128, 1);
    run(&mut m, &reduce(&d1, AluOp::Max, 2, false));
    assert_eq!(get(&m, &d1), vec![5.0, 3.0]);
    run(&mut m, &reduce(&d1, AluOp::Min, 2, false));
    assert_eq!(get(&m, &d1), vec![-4.0, -1.0]);
    run(&mut m, &reduce(&d1, AluOp::Mul, 2, false));
    assert_eq!(get(&m, &d1), vec![-60.0, 24.0]);
    let e = run_err(&mut m, &reduce(&d1, AluOp::Sub, 2, false));
    assert_eq!(
        e.message,
        "sub is not a reduction: expected add, max, min or mul"
    );
}

/// bn_stats on x = 1..=8 (even-indexed: 1,3,5,7 -> mean 4, M2 20; odd: 2,4,6,8 -> mean 5,
/// M2 20), bn_aggr -> mean 4.5 and population variance (8^2 - 1) / 12 = 5.25.
#[test]
fn bn_stats_and_aggr_match_closed_form() {
    let mut m = mems(&[]);
    let src = sb(Dtype::Bf16, 0, 1, 0, 8);
    put(&mut m, &src, &seq(8, |i| (i + 1) as f32));
    let stats = sb(Dtype::F32, 0, 1, 64, 6);
    run(
        &mut m,
        &Op::BnStats {
            dst: stats.clone(),
            src,
        },
    );
    assert_eq!(get(&m, &stats), vec![4.0, 4.0, 20.0, 4.0, 5.0, 20.0]);
    let out = sb(Dtype::F32, 0, 1, 128, 2);
    run(
        &mut m,
        &Op::BnAggr {
            dst: out.clone(),
            src: stats,
        },
    );
    assert_eq!(get(&m, &out), vec![4.5, 5.25]);
}

/// The LayerNorm pattern: a 1000-element row split into two bn_stats chunks of 500 and
/// 500 (each within bn_stats_fmax), aggregated; the row is 0..1000, so the mean is 499.5
/// and the population variance (1000^2 - 1) / 12 = 83333.25.
#[test]
fn bn_aggr_combines_chunks_like_a_layer_norm() {
    let mut m = mems(&[]);
    let row = sb(Dtype::F32, 0, 2, 0, 1000);
    // Partition 1 holds the same row shifted by 10: same variance, mean 509.5.
    put(
        &mut m,
        &row,
        &seq(2000, |i| {
            (i % 1000) as f32 + if i >= 1000 { 10.0 } else { 0.0 }
        }),
    );
    let stats = sb(Dtype::F32, 0, 2, 8192, 12);
    for c in 0..2u64 {
        let chunk = sb(Dtype::F32, 0, 2, c * 2000, 500);
        run(
            &mut m,
            &Op::BnStats {
                dst: sb(Dtype::F32, 0, 2, 8192 + c * 24, 6),
                src: chunk,
            },
        );
    }
    let out = sb(Dtype::F32, 0, 2, 9000, 2);
    run(
        &mut m,
        &Op::BnAggr {
            dst: out.clone(),
            src: stats,
        },
    );
    let got = get(&m, &out);
    assert_eq!(got[0], 499.5);
    assert_eq!(got[2], 509.5);
    for v in [got[1], got[3]] {
        assert!((v - 83_333.25).abs() < 83_333.25 * 1e-6, "variance {v}");
    }
}

#[test]
fn bn_stats_of_one_element_has_an_empty_odd_half() {
    let mut m = mems(&[]);
    let src = sb(Dtype::F32, 0, 1, 0, 1);
    put(&mut m, &src, &[7.0]);
    let stats = sb(Dtype::F32, 0, 1, 64, 6);
    run(
        &mut m,
        &Op::BnStats {
            dst: stats.clone(),
            src,
        },
    );
    assert_eq!(get(&m, &stats), vec![1.0, 7.0, 0.0, 0.0, 0.0, 0.0]);
    let out = sb(Dtype::F32, 0, 1, 128, 2);
    run(
        &mut m,
        &Op::BnAggr {
            dst: out.clone(),
            src: stats,
        },
    );
    assert_eq!(get(&m, &out), vec![7.0, 0.0]);
}

/// Equal dtypes copy bits (NaN payload kept); different dtypes cast (PSUM f32 -> bf16 tie).
#[test]
fn tensor_copy_bit_exact_or_cast() {
    let mut m = mems(&[]);
    let src = ps(Dtype::F32, 0, 1, 0, 3);
    let bits = [0x7f80_1234u32, 0x3f80_8000, 0xbf81_8000];
    m.write_raw(
        &src,
        &bits
            .iter()
            .flat_map(|b| b.to_le_bytes())
            .collect::<Vec<_>>(),
    )
    .unwrap();
    let same = sb(Dtype::F32, 0, 1, 0, 3);
    run(
        &mut m,
        &Op::TensorCopy {
            dst: same.clone(),
            src: src.clone(),
        },
    );
    assert_eq!(raw(&m, &same), raw(&m, &src));
    let narrow = sb(Dtype::Bf16, 0, 1, 64, 3);
    run(
        &mut m,
        &Op::TensorCopy {
            dst: narrow.clone(),
            src,
        },
    );
    let got: Vec<u16> = raw(&m, &narrow)
        .chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .collect();
    // NaN -> quiet NaN; 0x3f808000 ties to even 0x3f80; 0xbf818000 ties to even 0xbf82.
    assert_eq!(got, vec![0x7fc0, 0x3f80, 0xbf82]);
}

#[test]
fn memset_casts_and_saturates() {
    let mut m = mems(&[]);
    let a = sb(Dtype::I8, 0, 2, 0, 3);
    run(
        &mut m,
        &Op::Memset {
            dst: a.clone(),
            value: 300.0,
        },
    );
    assert_eq!(raw(&m, &a), vec![127u8; 6]);
    let b = sb(Dtype::Bf16, 0, 2, 64, 2);
    run(
        &mut m,
        &Op::Memset {
            dst: b.clone(),
            value: 1.0 + 2f32.powi(-8),
        },
    );
    assert_eq!(get(&m, &b), vec![1.0; 4]);
    let c = sb(Dtype::Fp8E4m3, 0, 1, 128, 2);
    run(
        &mut m,
        &Op::Memset {
            dst: c.clone(),
            value: f32::NEG_INFINITY,
        },
    );
    assert_eq!(raw(&m, &c), vec![0xfe, 0xfe]);
}

#[test]
fn select_picks_by_predicate() {
    let mut m = mems(&[]);
    let pred = sb(Dtype::U8, 0, 2, 0, 3);
    let t = sb(Dtype::F32, 0, 2, 64, 3);
    let f = sb(Dtype::Bf16, 0, 2, 128, 3);
    put(&mut m, &pred, &[1.0, 0.0, 255.0, 0.0, 0.0, 7.0]);
    put(&mut m, &t, &seq(6, |i| i as f32));
    put(&mut m, &f, &seq(6, |i| -(i as f32)));
    let dst = sb(Dtype::F32, 0, 2, 256, 3);
    run(
        &mut m,
        &Op::Select {
            dst: dst.clone(),
            pred,
            on_true: t,
            on_false: f,
        },
    );
    assert_eq!(get(&m, &dst), vec![0.0, -1.0, 2.0, -3.0, -4.0, 5.0]);
}

/// iota over [P=3, 2 x 4]: offset + p * 100 + 10 * i0 + i1, in int32 and cast to f32.
#[test]
fn iota_two_dims_with_channel_multiplier() {
    let mut m = mems(&[]);
    let mut dst = sb(Dtype::I32, 32, 3, 0, 8);
    dst.dims = vec![Dim { size: 2, stride: 4 }, Dim { size: 4, stride: 1 }];
    let op = |dst: &Ap| Op::Iota {
        dst: dst.clone(),
        offset: -5,
        channel_multiplier: 100,
        steps: vec![10, 1],
    };
    run(&mut m, &op(&dst));
    let mut v = Vec::new();
    m.read_i32(&dst, &mut v).unwrap();
    let want: Vec<i32> = (0..24)
        .map(|i| -5 + (i / 8) * 100 + ((i % 8) / 4) * 10 + i % 4)
        .collect();
    assert_eq!(v, want);
    let mut fdst = dst.clone();
    fdst.dtype = Dtype::F32;
    fdst.offset = 64;
    run(&mut m, &op(&fdst));
    assert_eq!(
        get(&m, &fdst),
        want.iter().map(|&x| x as f32).collect::<Vec<_>>()
    );
    // Wrong step count is an error, not a panic.
    let bad = Op::Iota {
        dst,
        offset: 0,
        channel_multiplier: 0,
        steps: vec![1],
    };
    assert!(run_err(&mut m, &bad).message.contains("expected 2 steps"));
}

/// Stochastic rounding in a context is deterministic for a seed: the same program state and
/// seed give the same bits, another seed gives different bits.
#[test]
fn stochastic_rounding_context_is_deterministic() {
    let run_with = |seed| {
        let mut m = mems(&[]);
        let src = sb(Dtype::F32, 0, 4, 0, 64);
        put(&mut m, &src, &seq(256, |i| 1.0 + i as f32 * 1e-4));
        let dst = sb(Dtype::Bf16, 0, 4, 1024, 64);
        let mut c = neuron_sim::ExecContext::new(
            neuron_isa::ChipConfig::trn1(),
            neuron_sim::Rounding::Stochastic,
            seed,
        );
        execute(
            &mut m,
            &Op::TensorCopy {
                dst: dst.clone(),
                src,
            },
            &mut c,
        )
        .unwrap();
        raw(&m, &dst)
    };
    assert_eq!(run_with(1), run_with(1));
    assert_ne!(run_with(1), run_with(2));
}

#[test]
fn poisoned_reads_of_operands_are_reported() {
    let mut m = mems(&[]);
    let src = sb(Dtype::F32, 0, 2, 0, 4);
    put(&mut m, &src, &[0.0; 8]);
    let dst = sb(Dtype::F32, 0, 2, 64, 4);
    // A per-partition bias nobody wrote.
    let op = act(
        dst.clone(),
        src.clone(),
        ActFunc::Exp,
        Operand::Imm(1.0),
        Some(Operand::PerPartition(sb(Dtype::F32, 0, 2, 128, 1))),
        None,
    );
    assert!(run(&mut m, &op).poisoned_read);
    let op = act(dst, src, ActFunc::Exp, Operand::Imm(1.0), None, None);
    assert!(!run(&mut m, &op).poisoned_read);
}

/// Large elementwise work (the gelu is split by partitions across the pool on two
/// threads) and direct DMA copies give the same bits with 1 and 2 threads,
/// and the same as their definitions: a gelu with per-partition bias and accumulation
/// over a [128 x 512] bf16 tile with one poisoned element, a strided read, and an
/// SBUF -> HBM -> SBUF round trip (copied run by run between memories).
#[test]
fn large_ops_are_bit_identical_across_thread_counts() {
    let (p, f) = (128u32, 512u32);
    let mut x = vec![0f32; (p * f) as usize];
    neuron_isa::rng::CounterRng::for_tensor(5, "act").fill_standard_normal(0, &mut x);
    let src = sb(Dtype::Bf16, 0, p, 0, f);
    let bias = sb(Dtype::F32, 0, p, 2048, 1);
    let dst = sb(Dtype::Bf16, 0, p, 4096, f);
    let accum = sb(Dtype::F32, 0, p, 8192, 1);
    let mut strided = sb(Dtype::Bf16, 0, p, 0, f / 2);
    strided.dims = vec![Dim {
        size: f / 2,
        stride: 2,
    }];
    let op = act(
        dst.clone(),
        src.clone(),
        ActFunc::Gelu,
        Operand::Imm(1.5),
        Some(Operand::PerPartition(bias.clone())),
        Some(accum.clone()),
    );
    let outcome = |threads: usize| {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        pool.install(|| {
            let mut m = mems(&[("h", &[128, 512], Dtype::Bf16)]);
            put(&mut m, &src, &x);
            // One element never written: its poison must be reported and propagate.
            let hole = sb(Dtype::Bf16, 77, 1, 2 * 300, 1);
            m.write_raw(&hole, &[0xff, 0xff]).unwrap();
            put(&mut m, &bias, &x[..p as usize]);
            let poisoned = run(&mut m, &op).poisoned_read;
            let back = sb(Dtype::Bf16, 0, p, 16384, f);
            let to_hbm = Op::Dma {
                dst: hbm(0, Dtype::Bf16, p, f),
                src: dst.clone(),
            };
            let from_hbm = Op::Dma {
                dst: back.clone(),
                src: hbm(0, Dtype::Bf16, p, f),
            };
            assert!(!run(&mut m, &to_hbm).poisoned_read);
            assert!(!run(&mut m, &from_hbm).poisoned_read);
            (
                poisoned,
                raw(&m, &dst),
                raw(&m, &accum),
                raw(&m, &back),
                get(&m, &strided)
                    .iter()
                    .map(|v| v.to_bits())
                    .collect::<Vec<_>>(),
            )
        })
    };
    let one = outcome(1);
    assert!(one.0, "the unwritten element is reported");
    assert_eq!(one.1, one.3, "the round trip through HBM moves bits");
    // The definition, element by element: bf16(gelu(x * 1.5 + bias[p])).
    let want: Vec<f32> = (0..(p * f) as usize)
        .map(|i| {
            let xi = neuron_sim::numerics::bf16_to_f32(neuron_sim::numerics::f32_to_bf16(x[i]));
            let xi = if i == 77 * 512 + 300 { f32::NAN } else { xi };
            activation_fn(ActFunc::Gelu, xi * 1.5 + x[i / f as usize])
        })
        .collect();
    let got: Vec<f32> = one
        .1
        .chunks_exact(2)
        .map(|c| neuron_sim::numerics::bf16_to_f32(u16::from_le_bytes([c[0], c[1]])))
        .collect();
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        let w = neuron_sim::numerics::bf16_to_f32(neuron_sim::numerics::f32_to_bf16(*w));
        assert!(
            g.to_bits() == w.to_bits() || (g.is_nan() && w.is_nan()),
            "element {i}"
        );
    }
    assert!(outcome(2) == one, "2 threads differ from 1");
}
