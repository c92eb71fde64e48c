//! Numerics against the golden file (`tests/fixtures/precision_golden.json`: 234 float32
//! inputs with their bf16, fp16, fp8 e4m3fn and saturating e4m3fn bit patterns), plus
//! hand-derived e5m2 ties, integer saturation and stochastic rounding.
#![allow(clippy::unwrap_used)] // Test helpers: a malformed fixture should fail loudly.

use neuron_isa::Dtype;
use neuron_sim::numerics::{
    Rounder, Rounding, bf16_to_f32, cast_bytes, decode_slice, e4m3fn_to_f32, e5m2_to_f32,
    encode_slice, f16_to_f32, f32_to_bf16, f32_to_bf16_sr, f32_to_e4m3fn, f32_to_e4m3fn_sat,
    f32_to_e4m3fn_sat_sr, f32_to_e5m2, f32_to_e5m2_sr, f32_to_f16, f32_to_f16_sr, is_poisoned,
};
use serde_json::Value;

/// One golden row: the input and, per format, the expected bits and value.
struct Golden {
    category: String,
    input: f32,
    bf16: (u16, f64),
    fp16: (u16, f64),
    e4m3fn: (u8, f64),
    e4m3fn_sat: (u8, f64),
}

fn hex_u32(v: &Value, key: &str) -> u32 {
    let s = v[key].as_str().unwrap();
    u32::from_str_radix(s.trim_start_matches("0x"), 16).unwrap()
}

/// Parses Python's `float.hex()` output (`-0x1.c000000000000p+8`, `inf`, `-nan`).
fn parse_hex_float(s: &str) -> f64 {
    let (neg, body) = match s.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, s),
    };
    let mag = match body {
        "inf" => f64::INFINITY,
        "nan" => f64::NAN,
        _ => {
            let body = body.strip_prefix("0x").unwrap();
            let (mant, exp) = body.split_once('p').unwrap();
            let (int, frac) = mant.split_once('.').unwrap_or((mant, ""));
            let mut m = u64::from_str_radix(int, 16).unwrap() as f64;
            let mut scale = 1.0 / 16.0;
            for c in frac.chars() {
                m += c.to_digit(16).unwrap() as f64 * scale;
                scale /= 16.0;
            }
            m * 2f64.powi(exp.parse::<i32>().unwrap())
        }
    };
    if neg { -mag } else { mag }
}

fn golden() -> Vec<Golden> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/precision_golden.json"
    );
    let doc: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let values = doc["values"].as_array().unwrap();
    values
        .iter()
        .map(|v| Golden {
            category: v["category"].as_str().unwrap().to_string(),
            input: f32::from_bits(hex_u32(v, "f32_bits")),
            bf16: (
                hex_u32(v, "bf16_bits") as u16,
                parse_hex_float(v["bf16"].as_str().unwrap()),
            ),
            fp16: (
                hex_u32(v, "fp16_bits") as u16,
                parse_hex_float(v["fp16"].as_str().unwrap()),
            ),
            e4m3fn: (
                hex_u32(v, "fp8e4m3fn_bits") as u8,
                parse_hex_float(v["fp8e4m3fn"].as_str().unwrap()),
            ),
            e4m3fn_sat: (
                hex_u32(v, "fp8e4m3fn_sat_bits") as u8,
                parse_hex_float(v["fp8e4m3fn_sat"].as_str().unwrap()),
            ),
        })
        .collect()
}

/// Checks one format over the whole golden file: exact bits for non-NaN inputs (and the
/// decoded value equals the golden value), NaN-ness only for NaN inputs.
fn check_format<T: Copy + PartialEq + std::fmt::Debug>(
    name: &str,
    pick: impl Fn(&Golden) -> (T, f64),
    encode: impl Fn(f32) -> T,
    decode: impl Fn(T) -> f32,
) {
    let rows = golden();
    assert_eq!(rows.len(), 234, "the golden file has 234 values");
    let mut nan_inputs = 0;
    for g in &rows {
        let (bits, value) = pick(g);
        let got = encode(g.input);
        if g.input.is_nan() {
            nan_inputs += 1;
            assert!(
                decode(got).is_nan(),
                "{name} {}: NaN must stay NaN, got {got:?}",
                g.category
            );
            continue;
        }
        assert_eq!(
            got,
            bits,
            "{name} {} (input {:#010x})",
            g.category,
            g.input.to_bits()
        );
        let decoded = f64::from(decode(got));
        if value.is_nan() {
            assert!(decoded.is_nan(), "{name} {}", g.category);
        } else {
            assert_eq!(decoded, value, "{name} {}: decoded value", g.category);
        }
    }
    assert_eq!(nan_inputs, 7, "the golden file has 7 NaN inputs");
}

#[test]
fn golden_bf16_rne() {
    check_format("bf16", |g| g.bf16, f32_to_bf16, bf16_to_f32);
}

#[test]
fn golden_fp16_rne() {
    check_format("fp16", |g| g.fp16, f32_to_f16, f16_to_f32);
}

#[test]
fn golden_e4m3fn_non_saturating() {
    check_format("e4m3fn", |g| g.e4m3fn, f32_to_e4m3fn, e4m3fn_to_f32);
}

#[test]
fn golden_e4m3fn_saturating() {
    check_format(
        "e4m3fn_sat",
        |g| g.e4m3fn_sat,
        f32_to_e4m3fn_sat,
        e4m3fn_to_f32,
    );
}

/// The slice path (what memory writes use) gives the scalar functions' bits, and uses the
/// saturating convention for fp8_e4m3.
#[test]
fn golden_through_encode_slice() {
    let rows = golden();
    let inputs: Vec<f32> = rows.iter().map(|g| g.input).collect();
    let mut r = Rounder::rne();
    let mut bf = vec![0u8; inputs.len() * 2];
    encode_slice(Dtype::Bf16, &inputs, &mut bf, &mut r).unwrap();
    let mut f16 = vec![0u8; inputs.len() * 2];
    encode_slice(Dtype::F16, &inputs, &mut f16, &mut r).unwrap();
    let mut e4 = vec![0u8; inputs.len()];
    encode_slice(Dtype::Fp8E4m3, &inputs, &mut e4, &mut r).unwrap();
    for (i, g) in rows.iter().enumerate() {
        if g.input.is_nan() {
            continue;
        }
        assert_eq!(
            u16::from_le_bytes([bf[2 * i], bf[2 * i + 1]]),
            g.bf16.0,
            "{}",
            g.category
        );
        assert_eq!(
            u16::from_le_bytes([f16[2 * i], f16[2 * i + 1]]),
            g.fp16.0,
            "{}",
            g.category
        );
        assert_eq!(e4[i], g.e4m3fn_sat.0, "{}", g.category);
    }
    // And decode_slice gives the golden values back.
    let mut back = vec![0f32; inputs.len()];
    decode_slice(Dtype::Bf16, &bf, &mut back).unwrap();
    for (g, v) in rows.iter().zip(&back) {
        if !g.input.is_nan() {
            assert_eq!(f64::from(*v), g.bf16.1, "{}", g.category);
        }
    }
}

/// e5m2 (no golden column): ties and edges derived by hand. Around 1.0 the grid is
/// 1, 1.25, 1.5, 1.75, 2 (codes 0x3c..0x40); the max is 1.75 * 2^15 = 57344 (0x7b); the
/// subnormal quantum is 2^-16; the overflow tie is (57344 + 65536) / 2 = 61440.
#[test]
fn e5m2_hand_derived() {
    let q = 2f32.powi(-16);
    let cases: [(f32, u8, &str); 24] = [
        (0.0, 0x00, "+0"),
        (-0.0, 0x80, "-0"),
        (1.0, 0x3c, "1"),
        (1.125, 0x3c, "tie 1|1.25 -> even 1"),
        (
            f32::from_bits(1.125f32.to_bits() + 1),
            0x3d,
            "just above tie -> 1.25",
        ),
        (1.375, 0x3e, "tie 1.25|1.5 -> even 1.5"),
        (
            f32::from_bits(1.375f32.to_bits() - 1),
            0x3d,
            "just below tie -> 1.25",
        ),
        (1.875, 0x40, "tie 1.75|2 -> even 2 (carry into exponent)"),
        (-1.875, 0xc0, "negative tie -> -2"),
        (57344.0, 0x7b, "max"),
        (61440.0, 0x7c, "overflow tie -> inf"),
        (
            f32::from_bits(61440f32.to_bits() - 1),
            0x7b,
            "below overflow tie -> max",
        ),
        (-1e6, 0xfc, "overflow -> -inf"),
        (f32::INFINITY, 0x7c, "+inf"),
        (f32::NEG_INFINITY, 0xfc, "-inf"),
        (q, 0x01, "min subnormal"),
        (0.5 * q, 0x00, "tie 0|q -> 0"),
        (
            f32::from_bits((0.5 * q).to_bits() + 1),
            0x01,
            "above half quantum -> q",
        ),
        (1.5 * q, 0x02, "tie 1|2 -> 2"),
        (2.5 * q, 0x02, "tie 2|3 -> 2"),
        (3.0 * q, 0x03, "max subnormal"),
        (3.5 * q, 0x04, "tie max subnormal|min normal -> min normal"),
        (2f32.powi(-14), 0x04, "min normal"),
        (-2.5 * q, 0x82, "negative subnormal tie"),
    ];
    for (x, bits, what) in cases {
        assert_eq!(f32_to_e5m2(x), bits, "e5m2 {what} ({x:e})");
    }
    assert_eq!(f32_to_e5m2(f32::NAN) & 0x7f, 0x7e, "NaN -> quiet NaN");
    // Decoding: the grid values named above.
    assert_eq!(e5m2_to_f32(0x3d), 1.25);
    assert_eq!(e5m2_to_f32(0x3e), 1.5);
    assert_eq!(e5m2_to_f32(0x7b), 57344.0);
    assert_eq!(e5m2_to_f32(0x03), 3.0 * q);
    assert_eq!(e5m2_to_f32(0x82), -2.0 * q);
    assert!(e5m2_to_f32(f32_to_e5m2(-f32::NAN)).is_nan());
}

/// Cross-check RNE against the `half` crate on many pseudo-random bit patterns.
#[test]
fn rne_matches_half_crate() {
    let mut r = Rounder::new(Rounding::Stochastic, 99);
    for _ in 0..300_000 {
        let x = f32::from_bits(r.next_random() as u32);
        let hb = half::bf16::from_f32(x);
        let hf = half::f16::from_f32(x);
        if x.is_nan() {
            assert!(bf16_to_f32(f32_to_bf16(x)).is_nan());
            assert!(f16_to_f32(f32_to_f16(x)).is_nan());
        } else {
            assert_eq!(
                f32_to_bf16(x),
                hb.to_bits(),
                "bf16 of {:#010x}",
                x.to_bits()
            );
            assert_eq!(f32_to_f16(x), hf.to_bits(), "f16 of {:#010x}", x.to_bits());
        }
    }
}

#[test]
fn int_writes_round_ties_even_and_saturate() {
    let xs = [
        0.5f32,
        1.5,
        2.5,
        -0.5,
        -1.5,
        126.5,
        127.49,
        127.5,
        300.0,
        -128.5,
        -1e9,
        f32::NAN,
    ];
    let mut r = Rounder::new(Rounding::Stochastic, 1);
    let mut out = vec![0u8; xs.len()];
    encode_slice(Dtype::I8, &xs, &mut out, &mut r).unwrap();
    let i8s: Vec<i8> = out.iter().map(|&b| b as i8).collect();
    assert_eq!(i8s, vec![0, 2, 2, 0, -2, 126, 127, 127, 127, -128, -128, 0]);
    encode_slice(Dtype::U8, &xs, &mut out, &mut r).unwrap();
    assert_eq!(out, vec![0, 2, 2, 0, 0, 126, 127, 128, 255, 0, 0, 0]);
    let big = [
        2_147_483_520.0f32,
        2_147_483_648.0,
        -2_147_483_648.0,
        16_777_217.0,
        -7.5,
    ];
    let mut out = vec![0u8; big.len() * 4];
    encode_slice(Dtype::I32, &big, &mut out, &mut r).unwrap();
    let i32s: Vec<i32> = out
        .chunks_exact(4)
        .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    assert_eq!(
        i32s,
        vec![2_147_483_520, i32::MAX, i32::MIN, 16_777_216, -8]
    );
}

#[test]
fn decode_integers_and_i64() {
    let mut out = [0f32; 3];
    decode_slice(Dtype::I8, &[0x80, 0xff, 0x7f], &mut out).unwrap();
    assert_eq!(out, [-128.0, -1.0, 127.0]);
    decode_slice(Dtype::U8, &[0x80, 0xff, 0x7f], &mut out).unwrap();
    assert_eq!(out, [128.0, 255.0, 127.0]);
    let ids: Vec<u8> = [5i64, -3, (1 << 40) + 1]
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    decode_slice(Dtype::I64, &ids, &mut out).unwrap();
    assert_eq!(out, [5.0, -3.0, 1_099_511_627_776.0]);
}

#[test]
fn i64_cannot_be_written_and_sizes_must_match() {
    let mut r = Rounder::rne();
    let err = encode_slice(Dtype::I64, &[1.0], &mut [0u8; 8], &mut r).unwrap_err();
    assert!(err.to_string().contains("i64 is read-only"), "{err}");
    let err = encode_slice(Dtype::Bf16, &[1.0, 2.0], &mut [0u8; 3], &mut r).unwrap_err();
    assert_eq!(
        err.to_string(),
        "conversion: encode bf16: 2 elements need 4 bytes, found 3"
    );
    let err = decode_slice(Dtype::F32, &[0u8; 4], &mut [0f32; 2]).unwrap_err();
    assert_eq!(
        err.to_string(),
        "conversion: decode f32: 2 elements need 8 bytes, found 4"
    );
}

#[test]
fn cast_bytes_int_to_int_is_exact_and_float_cast_rounds() {
    let mut r = Rounder::rne();
    let ids: Vec<u8> = [16_777_217i64, -5, 1 << 40]
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    let mut out = vec![0u8; 12];
    cast_bytes(Dtype::I64, &ids, Dtype::I32, &mut out, &mut r).unwrap();
    let v: Vec<i32> = out
        .chunks_exact(4)
        .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    assert_eq!(v, vec![16_777_217, -5, i32::MAX]);
    // 1 + 2^-8 is a bf16 tie between 1.0 (even) and 1 + 2^-7: rounds to 0x3f80.
    let src = (1.0f32 + 2f32.powi(-8)).to_le_bytes();
    let mut out = [0u8; 2];
    cast_bytes(Dtype::F32, &src, Dtype::Bf16, &mut out, &mut r).unwrap();
    assert_eq!(u16::from_le_bytes(out), 0x3f80);
}

#[test]
fn poison_detection_per_dtype() {
    assert!(is_poisoned(
        Dtype::F32,
        &[0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff]
    ));
    assert!(!is_poisoned(
        Dtype::F32,
        &[0xff, 0xff, 0xff, 0x7f, 0, 0, 0xc0, 0xff]
    ));
    assert!(is_poisoned(Dtype::Bf16, &[0, 0, 0xff, 0xff]));
    assert!(!is_poisoned(Dtype::Bf16, &[0xc0, 0xff, 0xff, 0x7f]));
    assert!(is_poisoned(Dtype::F16, &[0xff, 0xff]));
    assert!(is_poisoned(Dtype::Fp8E4m3, &[0x00, 0xff]));
    assert!(is_poisoned(Dtype::Fp8E5m2, &[0xff]));
    assert!(!is_poisoned(Dtype::Fp8E5m2, &[0xfe, 0x7f]));
    assert!(!is_poisoned(Dtype::I8, &[0xff]));
    assert!(!is_poisoned(Dtype::I32, &[0xff; 4]));
    // A computed NaN (x86 default NaN 0xffc00000) is not poison in any 2- or 4-byte type.
    let mut r = Rounder::rne();
    let nan = f32::from_bits(0xffc0_0000);
    for dt in [Dtype::F32, Dtype::Bf16, Dtype::F16, Dtype::Fp8E5m2] {
        let mut b = vec![0u8; dt.size() as usize];
        encode_slice(dt, &[nan], &mut b, &mut r).unwrap();
        assert!(!is_poisoned(dt, &b), "{dt}");
    }
}

/// The two neighbours of `x` in bf16 (truncated magnitude and the next code).
fn bf16_neighbours(x: f32) -> (u16, u16) {
    let t = (x.to_bits() >> 16) as u16;
    (t, t + 1)
}

#[test]
fn sr_is_deterministic_per_seed() {
    let xs: Vec<f32> = (0..1000).map(|i| 1.0 + i as f32 * 1e-4).collect();
    let run = |seed| {
        let mut r = Rounder::new(Rounding::Stochastic, seed);
        let mut out = vec![0u8; xs.len() * 2];
        encode_slice(Dtype::Bf16, &xs, &mut out, &mut r).unwrap();
        out
    };
    assert_eq!(run(42), run(42));
    assert_ne!(run(42), run(43));
    // Splitting a write into slices consumes the same random sequence.
    let mut r = Rounder::new(Rounding::Stochastic, 42);
    let mut out = vec![0u8; xs.len() * 2];
    let (a, b) = out.split_at_mut(600);
    encode_slice(Dtype::Bf16, &xs[..300], a, &mut r).unwrap();
    encode_slice(Dtype::Bf16, &xs[300..], b, &mut r).unwrap();
    assert_eq!(out, run(42));
    // The slice path is the scalar SR function fed by the rounder's sequence.
    let mut r = Rounder::new(Rounding::Stochastic, 42);
    let scalar: Vec<u8> = xs
        .iter()
        .flat_map(|&x| f32_to_bf16_sr(x, r.next_random()).to_le_bytes())
        .collect();
    assert_eq!(scalar, run(42));
}

#[test]
fn sr_stays_within_the_two_neighbours_and_keeps_exact_values() {
    let mut r = Rounder::new(Rounding::Stochastic, 5);
    for i in 0..200_000u32 {
        // Positive and negative normals and subnormals.
        let x = f32::from_bits((i.wrapping_mul(2_654_435_761) % 0x7f00_0000) | ((i & 1) << 31));
        let got = f32_to_bf16_sr(x, r.next_random());
        let (lo, hi) = bf16_neighbours(x);
        if x.to_bits() & 0xffff == 0 {
            assert_eq!(got, lo, "exact value {x:e} must not move");
        } else {
            assert!(
                got == lo || got == hi,
                "{x:e}: {got:#06x} not in {lo:#06x}/{hi:#06x}"
            );
        }
    }
    // fp8 e4m3: between 1.0 and 1.125 only; saturating at the top.
    for _ in 0..10_000 {
        let b = f32_to_e4m3fn_sat_sr(1.05, r.next_random());
        assert!(b == 0x38 || b == 0x39, "{b:#04x}");
        assert_eq!(f32_to_e4m3fn_sat_sr(460.0, r.next_random()), 0x7e);
    }
}

/// Mean of many SR roundings of a value between two neighbours is the value.
fn sr_mean(x: f32, n: usize, round: impl Fn(f32, u64) -> f32) -> f64 {
    let mut r = Rounder::new(Rounding::Stochastic, 2024);
    (0..n)
        .map(|_| f64::from(round(x, r.next_random())))
        .sum::<f64>()
        / n as f64
}

#[test]
fn sr_is_unbiased() {
    let n = 200_000;
    // bf16: 1 + 0.3 ulp (ulp = 2^-7). The standard deviation of one rounding is
    // ulp * sqrt(0.3 * 0.7) = 0.0036; of the mean, 8.1e-6. Bound: 5 sigma.
    let x = 1.0 + 0.3 * 2f32.powi(-7);
    let m = sr_mean(x, n, |x, r| bf16_to_f32(f32_to_bf16_sr(x, r)));
    assert!((m - f64::from(x)).abs() < 4.1e-5, "bf16 mean {m} vs {x}");
    // f16: -3 - 0.7 ulp (ulp = 2^-9 at 3).
    let x = -3.0 - 0.7 * 2f32.powi(-9);
    let m = sr_mean(x, n, |x, r| f16_to_f32(f32_to_f16_sr(x, r)));
    assert!((m - f64::from(x)).abs() < 5.0 * 2f64.powi(-9) * 0.46 / (n as f64).sqrt());
    // e5m2 subnormal: 0.25 of the way from 2^-16 to 2 * 2^-16.
    let q = 2f32.powi(-16);
    let x = 1.25 * q;
    let m = sr_mean(x, n, |x, r| e5m2_to_f32(f32_to_e5m2_sr(x, r)));
    assert!((m - f64::from(x)).abs() < 5.0 * f64::from(q) * 0.44 / (n as f64).sqrt());
    // RNE of the same value is biased (it always gives q), SR is not.
    assert_eq!(e5m2_to_f32(f32_to_e5m2(x)), q);
}

#[test]
fn sr_round_up_probability_is_the_dropped_fraction() {
    let mut r = Rounder::new(Rounding::Stochastic, 77);
    let x = 1.0 + 0.25 * 2f32.powi(-7);
    let n = 100_000;
    let ups = (0..n)
        .filter(|_| f32_to_bf16_sr(x, r.next_random()) == 0x3f81)
        .count();
    // Expected 25000, sigma = sqrt(n p (1-p)) = 137.
    assert!((ups as i64 - 25_000).abs() < 700, "{ups} round-ups");
}

#[test]
fn sr_overflow_rules() {
    let mut r = Rounder::new(Rounding::Stochastic, 3);
    for _ in 0..1000 {
        // NaN stays NaN; infinities stay infinite (bf16, f16, e5m2), saturate in e4m3.
        assert!(bf16_to_f32(f32_to_bf16_sr(f32::NAN, r.next_random())).is_nan());
        assert_eq!(f32_to_f16_sr(f32::INFINITY, r.next_random()), 0x7c00);
        assert_eq!(f32_to_e5m2_sr(f32::NEG_INFINITY, r.next_random()), 0xfc);
        assert_eq!(f32_to_e4m3fn_sat_sr(f32::INFINITY, r.next_random()), 0x7e);
        assert_eq!(f32_to_e4m3fn_sat_sr(-1e30, r.next_random()), 0xfe);
        // Integer writes ignore SR: a tie always goes to even.
        let mut out = [0u8; 1];
        encode_slice(Dtype::I8, &[2.5], &mut out, &mut r).unwrap();
        assert_eq!(out[0], 2);
    }
}

#[test]
fn poison_detection_matches_the_per_element_rule_at_every_position() {
    // The word-at-a-time check against the definition, for every length up to 40 bytes
    // and one all-ones element at every position, and ones straddling two elements
    // (never poison).
    for dt in [Dtype::F32, Dtype::Bf16, Dtype::Fp8E5m2] {
        let e = dt.size() as usize;
        for n in 1..=40 / e {
            let mut b = vec![0x7fu8; n * e];
            assert!(!is_poisoned(dt, &b), "{dt} clean {n}");
            for i in 0..n {
                b[i * e..(i + 1) * e].fill(0xff);
                assert!(is_poisoned(dt, &b), "{dt} element {i} of {n}");
                b[i * e..(i + 1) * e].fill(0x7f);
            }
            if e > 1 && n > 1 {
                for i in 0..n - 1 {
                    // The last byte of element i and the first bytes of element i + 1.
                    b[i * e + 1..(i + 1) * e + e - 1].fill(0xff);
                    assert!(!is_poisoned(dt, &b), "{dt} straddle {i} of {n}");
                    b[i * e + 1..(i + 1) * e + e - 1].fill(0x7f);
                }
            }
        }
    }
}

/// The correctly rounded code of a finite, non-negative f64 `x`, found independently of
/// the encoders: among the codes next to a first guess, the one whose value is nearest to
/// `x` (the differences are exact: Sterbenz), ties to the even code.
fn nearest_code(x: f64, guess: u16, decode: impl Fn(u16) -> f32, max_finite: u16) -> u16 {
    let lo = guess.saturating_sub(2);
    let hi = guess.saturating_add(2).min(max_finite);
    let mut best = lo;
    for c in lo..=hi {
        let d = (f64::from(decode(c)) - x).abs();
        let b = (f64::from(decode(best)) - x).abs();
        if d < b || (d == b && c % 2 == 0 && best % 2 == 1) {
            best = c;
        }
    }
    best
}

/// f64 -> bf16 / f16 round once: at and around every tie between neighbouring codes (where
/// a first rounding to f32 would land on the tie and a second round to even could go the
/// wrong way) and at random points. `half`'s `bf16::from_f64` fails this (it ignores the
/// low mantissa bits of the f64, e.g. f32 bits 0x5d608003 go down instead of up), which
/// is why the compiler encodes through `neuron_isa::numerics::f64_to_bf16`.
#[test]
fn f64_to_narrow_rounds_once() {
    use neuron_isa::numerics::{f64_to_bf16, f64_to_f16, f64_to_f32_odd};
    assert_eq!(f64_to_bf16(f64::from(f32::from_bits(0x5d60_8003))), 0x5d61);
    assert_eq!(f64_to_f32_odd(1.0), 1.0);
    assert_eq!(f64_to_f32_odd(f64::MAX), f32::MAX);
    assert_eq!(f64_to_f32_odd(-1e-300).to_bits(), 0x8000_0001);
    assert!(f64_to_f32_odd(f64::NAN).is_nan());
    let mut r = Rounder::new(Rounding::Stochastic, 7);
    // (name, encoder, decoder, largest finite code, infinity code)
    type Format = (&'static str, fn(f64) -> u16, fn(u16) -> f32, u16, u16);
    let formats: [Format; 2] = [
        ("bf16", f64_to_bf16, bf16_to_f32, 0x7f7f, 0x7f80),
        ("f16", f64_to_f16, f16_to_f32, 0x7bff, 0x7c00),
    ];
    for (name, enc, dec, max_finite, inf) in formats {
        for _ in 0..200_000 {
            let rnd = r.next_random();
            let code = (rnd as u16) % max_finite;
            let (a, b) = (f64::from(dec(code)), f64::from(dec(code + 1)));
            let mid = (a + b) / 2.0; // exact: one more bit than the format has
            let tiny = (b - a) * 2f64.powi(-30);
            let frac = ((rnd >> 16) as u32) as f64 / 2f64.powi(32);
            for x in [mid, mid + tiny, mid - tiny, a + (b - a) * frac, a] {
                for s in [1.0, -1.0] {
                    let got = enc(s * x);
                    let want =
                        nearest_code(x, code, dec, max_finite) | if s < 0.0 { 0x8000 } else { 0 };
                    assert_eq!(
                        got,
                        want,
                        "{name} of {:e} ({:#018x})",
                        s * x,
                        (s * x).to_bits()
                    );
                }
            }
        }
        // Past the largest finite value by more than half an ulp: infinity.
        let (a, b) = (f64::from(dec(max_finite - 1)), f64::from(dec(max_finite)));
        assert_eq!(enc(f64::from(dec(max_finite)) + (b - a)), inf, "{name}");
    }
}
