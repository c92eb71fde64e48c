//! TensorE: matmul (float and int8, accumulate), transpose; poisoned-read detection.
#![allow(clippy::unwrap_used)]

use super::exec_helpers::*;
use neuron_isa::{Dim, Dtype, Op};
use neuron_sim::exec::execute;

fn matmul(
    dst: neuron_isa::Ap,
    stationary: neuron_isa::Ap,
    moving: neuron_isa::Ap,
    accumulate: bool,
) -> Op {
    Op::Matmul {
        dst,
        stationary,
        moving,
        accumulate,
    }
}

/// `st[k, m] = k + m` (K=3, M=2), `mv[k, n] = k * n - 1` (N=4): small integers, so every
/// partial sum is exact and the expected values are closed-form.
#[test]
fn bf16_matmul_overwrites_then_accumulates() {
    let mut m = mems(&[]);
    let st = sb(Dtype::Bf16, 0, 3, 0, 2);
    let mv = sb(Dtype::Bf16, 0, 3, 64, 4);
    put(&mut m, &st, &seq(6, |i| (i / 2 + i % 2) as f32));
    put(&mut m, &mv, &seq(12, |i| ((i / 4) * (i % 4)) as f32 - 1.0));
    let dst = ps(Dtype::F32, 0, 2, 0, 4);
    // dst[m, n] = sum_k (k + m)(k n - 1).
    let expect = |acc: f32| -> Vec<f32> {
        seq(8, |i| {
            let (mm, n) = ((i / 4) as f32, (i % 4) as f32);
            (0..3)
                .map(|k| (k as f32 + mm) * (k as f32 * n - 1.0))
                .sum::<f32>()
                + acc
        })
    };
    let out = run(&mut m, &matmul(dst.clone(), st.clone(), mv.clone(), false));
    assert!(!out.poisoned_read);
    assert_eq!(get(&m, &dst), expect(0.0));
    assert_eq!(
        get(&m, &dst),
        vec![-3.0, 2.0, 7.0, 12.0, -6.0, 2.0, 10.0, 18.0]
    );
    run(&mut m, &matmul(dst.clone(), st.clone(), mv.clone(), true));
    assert_eq!(
        get(&m, &dst),
        vec![-6.0, 4.0, 14.0, 24.0, -12.0, 4.0, 20.0, 36.0]
    );
    // Accumulate=false overwrites whatever was there.
    run(&mut m, &matmul(dst.clone(), st, mv, false));
    assert_eq!(get(&m, &dst), expect(0.0));
}

/// Products of bf16 values are exact in FP32 and sums happen in FP32: with K=2 and
/// products 1 and 2^-24 the FP32 sum rounds (ties to even) to 1.0, while an exact
/// accumulator would keep 1 + 2^-24.
#[test]
fn products_exact_sums_in_fp32() {
    let mut m = mems(&[]);
    let st = sb(Dtype::Bf16, 0, 2, 0, 1);
    let mv = sb(Dtype::Bf16, 0, 2, 64, 2);
    put(&mut m, &st, &[1.0, 2f32.powi(-12)]);
    // Column 0: 1*1 + 2^-12 * 2^-12 = 1 + 2^-24 -> 1.0 in FP32 (tie to even).
    // Column 1: 1*(1 + 2^-7) + 2^-12 * 2^-11 = 1 + 2^-7 + 2^-23, exact in FP32.
    put(
        &mut m,
        &mv,
        &[1.0, 1.0 + 2f32.powi(-7), 2f32.powi(-12), 2f32.powi(-11)],
    );
    let dst = ps(Dtype::F32, 0, 1, 0, 2);
    run(&mut m, &matmul(dst.clone(), st, mv, false));
    assert_eq!(
        get(&m, &dst),
        vec![1.0, 1.0 + 2f32.powi(-7) + 2f32.powi(-23)]
    );
}

/// A full 128 x 128 x 512 bf16 matmul against a direct FP32 reference; inputs are small
/// integers times powers of two so every sum is exact whatever the order.
#[test]
fn full_size_matmul_matches_reference() {
    let (k, mm, n) = (128usize, 128usize, 512usize);
    let mut m = mems(&[]);
    let st = sb(Dtype::Bf16, 0, 128, 0, 128);
    let mv = sb(Dtype::Bf16, 0, 128, 1024, 512);
    let a = seq(k * mm, |i| ((i * 7 + 3) % 17) as f32 - 8.0);
    let b = seq(k * n, |i| (((i * 13 + 5) % 11) as f32 - 5.0) * 0.25);
    put(&mut m, &st, &a);
    put(&mut m, &mv, &b);
    let dst = ps(Dtype::F32, 0, 128, 0, 512);
    run(&mut m, &matmul(dst.clone(), st, mv, false));
    let got = get(&m, &dst);
    for i in 0..mm {
        for j in 0..n {
            let r: f32 = (0..k).map(|kk| a[kk * mm + i] * b[kk * n + j]).sum();
            assert_eq!(got[i * n + j], r, "dst[{i}, {j}]");
        }
    }
}

/// INT8 inputs accumulate in INT32 with saturation.
#[test]
fn int8_matmul_into_int32_saturates() {
    let mut m = mems(&[]);
    let st = sb(Dtype::I8, 0, 128, 0, 2);
    let mv = sb(Dtype::I8, 0, 128, 64, 2);
    // Column 0 of st is -128 everywhere, column 1 is 127; moving likewise.
    put(
        &mut m,
        &st,
        &seq(256, |i| if i % 2 == 0 { -128.0 } else { 127.0 }),
    );
    put(
        &mut m,
        &mv,
        &seq(256, |i| if i % 2 == 0 { -128.0 } else { 127.0 }),
    );
    let dst = ps(Dtype::I32, 0, 2, 0, 2);
    run(&mut m, &matmul(dst.clone(), st.clone(), mv.clone(), false));
    let mut v = Vec::new();
    m.read_i32(&dst, &mut v).unwrap();
    // 128 * (-128 * -128) = 2^21; 128 * (-128 * 127) = -2080768; 128 * 127^2 = 2064512.
    assert_eq!(v, vec![2_097_152, -2_080_768, -2_080_768, 2_064_512]);
    // Preload near the limits and accumulate: saturates instead of wrapping.
    m.write_i32(&dst, &[i32::MAX - 5, i32::MIN + 5, 0, 1])
        .unwrap();
    run(&mut m, &matmul(dst.clone(), st, mv, true));
    m.read_i32(&dst, &mut v).unwrap();
    assert_eq!(v, vec![i32::MAX, i32::MIN, -2_080_768, 2_064_513]);
}

#[test]
fn u8_matmul_is_exact() {
    let mut m = mems(&[]);
    let st = sb(Dtype::U8, 0, 128, 0, 1);
    let mv = sb(Dtype::U8, 0, 128, 64, 1);
    put(&mut m, &st, &[255.0; 128]);
    put(
        &mut m,
        &mv,
        &seq(128, |i| if i == 0 { 254.0 } else { 255.0 }),
    );
    let dst = ps(Dtype::I32, 0, 1, 0, 1);
    run(&mut m, &matmul(dst.clone(), st, mv, false));
    let mut v = Vec::new();
    m.read_i32(&dst, &mut v).unwrap();
    assert_eq!(v, vec![127 * 255 * 255 + 255 * 254]);
}

#[test]
fn matmul_reading_unwritten_memory_is_reported() {
    let mut m = mems(&[]);
    let st = sb(Dtype::Bf16, 0, 4, 0, 4);
    let mv = sb(Dtype::Bf16, 0, 4, 64, 8);
    let dst = ps(Dtype::F32, 0, 4, 0, 8);
    put(&mut m, &st, &[1.0; 16]);
    // The moving tile was never written.
    assert!(run(&mut m, &matmul(dst.clone(), st.clone(), mv.clone(), false)).poisoned_read);
    put(&mut m, &mv, &[1.0; 32]);
    assert!(!run(&mut m, &matmul(dst.clone(), st.clone(), mv.clone(), false)).poisoned_read);
    // Accumulating into a PSUM bank nobody initialised is a poisoned read too.
    let fresh = ps(Dtype::F32, 0, 4, 2048, 8);
    assert!(run(&mut m, &matmul(fresh.clone(), st.clone(), mv.clone(), true)).poisoned_read);
    assert!(get(&m, &fresh).iter().all(|v| v.is_nan()));
}

#[test]
fn matmul_shape_errors_do_not_panic() {
    let mut m = mems(&[]);
    let st = sb(Dtype::Bf16, 0, 4, 0, 4);
    let mv = sb(Dtype::Bf16, 0, 8, 64, 8);
    let e = run_err(
        &mut m,
        &matmul(ps(Dtype::F32, 0, 4, 0, 8), st.clone(), mv, false),
    );
    assert!(e.message.contains("K=4 partitions but moving"), "{e}");
    let mv = sb(Dtype::Bf16, 0, 4, 64, 8);
    let e = run_err(&mut m, &matmul(ps(Dtype::F32, 0, 4, 0, 9), st, mv, false));
    assert_eq!(
        e.message,
        "dst ps:f32@p0+4:0[9] must be [M=4, N=8], found [4, 9]"
    );
}

/// Same-dtype transpose moves bits (NaN payloads, infinities, -0 survive); bf16 into an
/// FP32 PSUM tile is an exact cast.
#[test]
fn transpose_is_bit_exact() {
    let mut m = mems(&[]);
    let src = sb(Dtype::Bf16, 0, 3, 0, 2);
    // [[1, NaN(payload)], [-0, inf], [2.5, -3]] as bf16 bits.
    let bits: [u16; 6] = [0x3f80, 0x7f81, 0x8000, 0x7f80, 0x4020, 0xc040];
    let bytes: Vec<u8> = bits.iter().flat_map(|b| b.to_le_bytes()).collect();
    m.write_raw(&src, &bytes).unwrap();
    let dst = ps(Dtype::Bf16, 0, 2, 0, 3);
    run(
        &mut m,
        &Op::Transpose {
            dst: dst.clone(),
            src: src.clone(),
        },
    );
    let t: Vec<u16> = raw(&m, &dst)
        .chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .collect();
    assert_eq!(t, vec![0x3f80, 0x8000, 0x4020, 0x7f81, 0x7f80, 0xc040]);
    let dst32 = ps(Dtype::F32, 0, 2, 64, 3);
    run(
        &mut m,
        &Op::Transpose {
            dst: dst32.clone(),
            src,
        },
    );
    let v = get(&m, &dst32);
    assert_eq!(v[0..3], [1.0, -0.0, 2.5]);
    assert!(v[3].is_nan());
    assert_eq!(v[4..6], [f32::INFINITY, -3.0]);
}

/// A transpose through strided views: reading the source column-major gives the same
/// result as transposing.
#[test]
fn transpose_matches_strided_view() {
    let mut m = mems(&[]);
    let src = sb(Dtype::F32, 0, 4, 0, 6);
    put(&mut m, &src, &seq(24, |i| i as f32));
    let dst = ps(Dtype::F32, 0, 6, 0, 4);
    run(
        &mut m,
        &Op::Transpose {
            dst: dst.clone(),
            src,
        },
    );
    let got = get(&m, &dst);
    assert_eq!(got, seq(24, |i| ((i % 4) * 6 + i / 4) as f32));
    // Element-strided read of one PSUM row: every other element backwards.
    let mut row = ps(Dtype::F32, 1, 1, 12, 2);
    row.dims = vec![Dim {
        size: 2,
        stride: -2,
    }];
    assert_eq!(get(&m, &row), vec![got[7], got[5]]);
}

/// Shapes that are not multiples of the transpose's 16 x 16 tiles (several full tiles and
/// partial ones on both sides), in each element width; values exact in bf16.
#[test]
fn transpose_of_odd_shapes_maps_every_element() {
    let (p, f) = (37usize, 53usize);
    let value = |i: usize| (i % 251) as f32;
    let want = seq(p * f, |i| value((i % p) * f + i / p));
    let first_wrong = |got: &[f32]| got.iter().zip(&want).position(|(a, b)| a != b);
    for dtype in [Dtype::F32, Dtype::Bf16] {
        let mut m = mems(&[]);
        let src = sb(dtype, 0, p as u32, 0, f as u32);
        put(&mut m, &src, &seq(p * f, value));
        let dst = ps(dtype, 0, f as u32, 0, p as u32);
        run(
            &mut m,
            &Op::Transpose {
                dst: dst.clone(),
                src: src.clone(),
            },
        );
        assert_eq!(first_wrong(&get(&m, &dst)), None, "{dtype}");
        // bf16 into FP32 PSUM: the cast path.
        let dst32 = ps(Dtype::F32, 0, f as u32, 4096, p as u32);
        run(
            &mut m,
            &Op::Transpose {
                dst: dst32.clone(),
                src,
            },
        );
        assert_eq!(first_wrong(&get(&m, &dst32)), None, "{dtype} into f32");
    }
}

/// Executing with a context whose rounding is stochastic changes only narrowing writes.
#[test]
fn matmul_psum_fp32_is_not_rounded_by_sr() {
    let mut m = mems(&[]);
    let st = sb(Dtype::F32, 0, 1, 0, 1);
    let mv = sb(Dtype::F32, 0, 1, 64, 1);
    put(&mut m, &st, &[1.0 + 2f32.powi(-20)]);
    put(&mut m, &mv, &[1.0]);
    let dst = ps(Dtype::F32, 0, 1, 0, 1);
    let mut c = neuron_sim::ExecContext::new(
        neuron_isa::ChipConfig::trn1(),
        neuron_sim::Rounding::Stochastic,
        9,
    );
    execute(&mut m, &matmul(dst.clone(), st, mv, false), &mut c).unwrap();
    assert_eq!(get(&m, &dst), vec![1.0 + 2f32.powi(-20)]);
}

/// The rule of `exec/matmul.rs`, one element at a time: `acc = +0; acc += s[k, m] *
/// v[k, n]` for `k` in order, each product and sum rounded on its own, then `dst = acc`
/// or `dst = dst + acc`.
fn matmul_rule(
    s: &[f32],
    v: &[f32],
    c: &[f32],
    (k, m, n): (usize, usize, usize),
    acc: bool,
) -> Vec<u32> {
    (0..m * n)
        .map(|i| {
            let (mi, ni) = (i / n, i % n);
            let mut sum = 0f32;
            for kk in 0..k {
                let p = s[kk * m + mi] * v[kk * n + ni];
                sum += p;
            }
            (if acc { c[i] + sum } else { sum }).to_bits()
        })
        .collect()
}

/// Matmuls accumulate in place in PSUM when `dst` is one contiguous f32 run per
/// partition (the fast path), and through a dense copy otherwise (a strided `dst`, int8):
/// both give the rule's bits on random bf16 inputs whose sums round, overwriting and
/// accumulating, with 1 and 2 threads (the large case is split over column blocks).
#[test]
fn in_place_and_copied_psum_matmuls_follow_the_rule_for_any_thread_count() {
    let normals = |name: &str, len: usize| {
        let mut x = vec![0f32; len];
        neuron_isa::rng::CounterRng::for_tensor(3, name).fill_standard_normal(0, &mut x);
        x
    };
    for (k, mm, n, strided) in [
        (128usize, 96usize, 500usize, false),
        (128, 128, 512, false),
        (64, 32, 200, true),
        (7, 5, 9, false),
    ] {
        // Rounded to bf16 as stored, so the reference sees the values the engine reads.
        let bf = |x: Vec<f32>| -> Vec<f32> {
            x.into_iter()
                .map(|v| neuron_sim::numerics::bf16_to_f32(neuron_sim::numerics::f32_to_bf16(v)))
                .collect()
        };
        let a = bf(normals("st", k * mm));
        let b = bf(normals("mv", k * n));
        let c0 = normals("psum", mm * n);
        let st = sb(Dtype::Bf16, 0, k as u32, 0, mm as u32);
        let mv = sb(Dtype::Bf16, 0, k as u32, 4096, n as u32);
        let mut dst = ps(Dtype::F32, 0, mm as u32, 64, n as u32);
        if strided {
            dst.dims = vec![Dim {
                size: n as u32,
                stride: 2,
            }];
        }
        for threads in [1, 2] {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            for acc in [false, true] {
                let mut m = mems(&[]);
                put(&mut m, &st, &a);
                put(&mut m, &mv, &b);
                put(&mut m, &dst, &c0);
                let out =
                    pool.install(|| run(&mut m, &matmul(dst.clone(), st.clone(), mv.clone(), acc)));
                assert!(!out.poisoned_read);
                let got: Vec<u32> = get(&m, &dst).iter().map(|x| x.to_bits()).collect();
                assert!(
                    got == matmul_rule(&a, &b, &c0, (k, mm, n), acc),
                    "k {k} m {mm} n {n} strided {strided} threads {threads} acc {acc}"
                );
            }
        }
    }
}

/// A large matmul is split over column blocks (the destination's poison checked per
/// block): an unwritten column anywhere in the moving tile, or in the PSUM it accumulates
/// into, is still reported.
#[test]
fn split_matmuls_report_poisoned_reads_in_any_block() {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(2)
        .build()
        .unwrap();
    let st = sb(Dtype::Bf16, 0, 128, 0, 128);
    let dst = ps(Dtype::F32, 0, 128, 0, 512);
    for written in [0..256u32, 256..512] {
        let mut m = mems(&[]);
        put(&mut m, &st, &vec![1.0; 128 * 128]);
        let part = sb(
            Dtype::Bf16,
            0,
            128,
            1024 + 2 * u64::from(written.start),
            256,
        );
        put(&mut m, &part, &vec![1.0; 128 * 256]);
        let mv = sb(Dtype::Bf16, 0, 128, 1024, 512);
        let op = matmul(dst.clone(), st.clone(), mv.clone(), false);
        assert!(
            pool.install(|| run(&mut m, &op)).poisoned_read,
            "{written:?}"
        );
        // Moving written in full: clean; then accumulating into a half-written bank.
        put(&mut m, &mv, &vec![1.0; 128 * 512]);
        assert!(!pool.install(|| run(&mut m, &op)).poisoned_read);
        let half = ps(Dtype::F32, 0, 128, 4096 + 4 * u64::from(written.start), 256);
        put(&mut m, &half, &vec![0.0; 128 * 256]);
        let bank = ps(Dtype::F32, 0, 128, 4096, 512);
        let acc = matmul(bank, st.clone(), mv, true);
        assert!(
            pool.install(|| run(&mut m, &acc)).poisoned_read,
            "{written:?}"
        );
    }
}
