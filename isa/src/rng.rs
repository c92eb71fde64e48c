//! The seeded generator behind param `init` and generated inputs: the same
//! numbers on every platform.
//!
//! Algorithm (documented in `docs/model-format.md`):
//! - one generator per tensor: PCG64 (XSL-RR 128/64, `rand_pcg::Pcg64`) built
//!   with `Pcg64::new(state, stream)` where `state = (seed << 64) | fnv1a64(name)`
//!   and `stream = 0xa02bdbf7bb3c0a7ac28fa16a64abf96` (PCG's default stream);
//! - uniform `u = (next_u64() >> 11) * 2^-53` in `[0, 1)`;
//! - normal by Box–Muller: `u1 = 1 - u`, `u2 = u`, `r = sqrt(-2 ln u1)`,
//!   giving `r cos(2 pi u2)` then `r sin(2 pi u2)`, with `ln`, `cos`, `sin`
//!   from the portable `libm` crate;
//! - integers uniform in `[0, n)` as `(next_u64() * n) >> 64` (128-bit product).
//!
//! Elements are drawn in row-major order, computed in f64, then rounded to the
//! tensor's dtype.

use rand_pcg::Pcg64;
use rand_pcg::rand_core::Rng;

/// PCG's default stream constant.
const STREAM: u128 = 0x0a02_bdbf_7bb3_c0a7_ac28_fa16_a64a_bf96;

/// 64-bit FNV-1a hash of `bytes`.
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// A deterministic generator for one named tensor.
#[derive(Debug, Clone)]
pub struct SeededRng {
    pcg: Pcg64,
    spare_normal: Option<f64>,
}

impl SeededRng {
    /// The generator for the tensor `name` under the model seed `seed`.
    pub fn for_tensor(seed: u64, name: &str) -> SeededRng {
        let state = (u128::from(seed) << 64) | u128::from(fnv1a64(name.as_bytes()));
        SeededRng {
            pcg: Pcg64::new(state, STREAM),
            spare_normal: None,
        }
    }

    /// The next raw 64 bits.
    pub fn next_u64(&mut self) -> u64 {
        self.pcg.next_u64()
    }

    /// Uniform in `[0, 1)` with 53 random bits.
    pub fn uniform01(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Uniform in `[low, high)`.
    pub fn uniform(&mut self, low: f64, high: f64) -> f64 {
        low + (high - low) * self.uniform01()
    }

    /// Standard normal by Box–Muller (pairs: cosine branch first, then sine).
    pub fn standard_normal(&mut self) -> f64 {
        if let Some(z) = self.spare_normal.take() {
            return z;
        }
        let u1 = 1.0 - self.uniform01();
        let u2 = self.uniform01();
        let r = libm::sqrt(-2.0 * libm::log(u1));
        let theta = 2.0 * std::f64::consts::PI * u2;
        self.spare_normal = Some(r * libm::sin(theta));
        r * libm::cos(theta)
    }

    /// Normal with the given mean and standard deviation.
    pub fn normal(&mut self, mean: f64, std: f64) -> f64 {
        mean + std * self.standard_normal()
    }

    /// Uniform integer in `[0, n)` (0 if `n` is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }
}

// ---------------------------------------------------------------------------------------
// The counter-based generator of param `init` (format version 2 of seeded weights).

/// The golden-ratio increment of SplitMix64.
const PHI: u64 = 0x9e37_79b9_7f4a_7c15;

/// SplitMix64's output function: a bijective 64-bit mixer.
#[inline(always)]
pub fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The counter-based stream of one named tensor: element (or pair) `i` draws
/// `mix64(key + (i + 1) * PHI)`, so any slice of a tensor is computed independently of
/// the others and the values do not depend on how the work is split across threads.
///
/// `key = mix64(seed * PHI ^ fnv1a64(name))`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CounterRng {
    key: u64,
}

/// `ln x` for `x` in `(0, 1]` in f32, from its exponent and an odd `atanh` series of the
/// mantissa reduced to `[sqrt(1/2), sqrt(2))` (max relative error about 1e-7). Only
/// IEEE `+ - * /`, each rounded on its own (Rust never contracts to FMA), so the result
/// is the same on every host.
#[inline(always)]
fn ln01(x: f32) -> f32 {
    let bits = x.to_bits();
    let m1 = f32::from_bits((bits & 0x007f_ffff) | 0x3f80_0000);
    // Branch-free (random data would mispredict every other branch).
    let big = m1 > std::f32::consts::SQRT_2;
    let e = ((bits >> 23) & 0xff) as i32 - 127 + i32::from(big);
    let m = if big { m1 * 0.5 } else { m1 };
    let t = (m - 1.0) / (m + 1.0);
    let t2 = t * t;
    // The coefficients are f32 constants (1/3 etc. rounded once, at compile time).
    let p = 1.0 + t2 * (1.0 / 3.0 + t2 * (1.0 / 5.0 + t2 * (1.0 / 7.0 + t2 * (1.0 / 9.0))));
    e as f32 * std::f32::consts::LN_2 + 2.0 * t * p
}

/// `(cos 2 pi u, sin 2 pi u)` for `u` in `[0, 1)` in f32: the quadrant from `4u`, Taylor
/// polynomials on `[0, pi/2)` (max absolute error about 1e-7); same on every host.
#[inline]
fn cos_sin_turns(u: f32) -> (f32, f32) {
    let v = u * 4.0;
    let q = v as i32; // floor: 0 <= v < 4
    cos_sin_quadrant(q as u32, v - q as f32)
}

/// [`cos_sin_turns`] of `u = (q + f) / 4`: quadrant `q` in `0..4` and the fraction `f` in
/// `[0, 1)` of `4u`.
#[inline(always)]
fn cos_sin_quadrant(q: u32, f: f32) -> (f32, f32) {
    let a = f * std::f32::consts::FRAC_PI_2;
    let a2 = a * a;
    // Taylor coefficients as f32 constants (1/3! .. 1/11! and 1/2! .. 1/12!): multiplies
    // only, no division.
    const S: [f32; 5] = [
        -1.0 / 6.0,
        1.0 / 120.0,
        -1.0 / 5040.0,
        1.0 / 362_880.0,
        -1.0 / 39_916_800.0,
    ];
    const C: [f32; 6] = [
        -1.0 / 2.0,
        1.0 / 24.0,
        -1.0 / 720.0,
        1.0 / 40_320.0,
        -1.0 / 3_628_800.0,
        1.0 / 479_001_600.0,
    ];
    let s = a * (1.0 + a2 * (S[0] + a2 * (S[1] + a2 * (S[2] + a2 * (S[3] + a2 * S[4])))));
    let c = 1.0 + a2 * (C[0] + a2 * (C[1] + a2 * (C[2] + a2 * (C[3] + a2 * (C[4] + a2 * C[5])))));
    // Quadrant q: (c, s), (-s, c), (-c, -s), (s, -c), without branches.
    let odd = q & 1 == 1;
    let (x, y) = if odd { (s, c) } else { (c, s) };
    let neg_x = ((q + 1) & 2) << 30;
    let neg_y = (q & 2) << 30;
    (
        f32::from_bits(x.to_bits() ^ neg_x),
        f32::from_bits(y.to_bits() ^ neg_y),
    )
}

/// Pairs per block of [`CounterRng::fill_standard_normal`]'s vectorized bulk.
const NORMAL_BLOCK: usize = 64;

/// The Box–Muller inputs of one counter's bits: `u1 = (bits[63:40] + 1) 2^-24` in
/// `(0, 1]`, `u2 = bits[39:16] 2^-24` in `[0, 1)`.
#[inline(always)]
fn uniform_pair(h: u64) -> (f32, f32) {
    // Both below 2^25: exact through i32 (a single conversion instruction).
    let u1 = ((h >> 40) + 1) as i32 as f32 * (1.0 / (1u32 << 24) as f32);
    let u2 = ((h >> 16) & 0x00ff_ffff) as i32 as f32 * (1.0 / (1u32 << 24) as f32);
    (u1, u2)
}

impl CounterRng {
    /// The stream of tensor `name` under model seed `seed`.
    pub fn for_tensor(seed: u64, name: &str) -> CounterRng {
        CounterRng {
            key: mix64(seed.wrapping_mul(PHI) ^ fnv1a64(name.as_bytes())),
        }
    }

    /// The 64 bits of counter `i`.
    #[inline(always)]
    pub fn bits(&self, i: u64) -> u64 {
        mix64(self.key.wrapping_add(i.wrapping_add(1).wrapping_mul(PHI)))
    }

    /// Element `i` uniform in `[0, 1)`: the top 53 bits of counter `i`.
    #[inline]
    pub fn uniform01(&self, i: u64) -> f64 {
        (self.bits(i) >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// The standard normal pair of counter `j` (elements `2j` and `2j + 1`), by
    /// Box–Muller in f32: `u1 = (bits[63:40] + 1) 2^-24` in `(0, 1]`,
    /// `u2 = bits[39:16] 2^-24` in `[0, 1)`, `r = sqrt(-2 ln u1)`,
    /// `(r cos 2 pi u2, r sin 2 pi u2)` (|z| <= 5.77).
    #[inline]
    pub fn normal_pair(&self, j: u64) -> (f32, f32) {
        let (u1, u2) = uniform_pair(self.bits(j));
        let r = (-2.0 * ln01(u1)).sqrt();
        let (c, s) = cos_sin_turns(u2);
        (r * c, r * s)
    }

    /// Standard normals of elements `start .. start + out.len()` (element `i` is the
    /// cosine half of pair `i / 2` when `i` is even, the sine half when odd).
    ///
    /// The bulk is computed in blocks of [`NORMAL_BLOCK`] pairs: the counter bits one
    /// pair at a time (64-bit multiplies), then the floating-point part over the block's
    /// arrays, a loop without branches that the compiler vectorizes. Each element goes
    /// through the same IEEE operations as [`CounterRng::normal_pair`] (vector lanes
    /// round exactly like scalars), so the values are the same bits as pair by pair.
    pub fn fill_standard_normal(&self, start: u64, out: &mut [f32]) {
        let mut i = start;
        let mut k = 0;
        if i % 2 == 1 && k < out.len() {
            out[k] = self.normal_pair(i / 2).1;
            k += 1;
            i += 1;
        }
        let bulk = (out.len() - k) / (2 * NORMAL_BLOCK) * (2 * NORMAL_BLOCK);
        self.fill_blocks(i / 2, &mut out[k..k + bulk]);
        k += bulk;
        i += bulk as u64;
        while k + 1 < out.len() {
            let (a, b) = self.normal_pair(i / 2);
            out[k] = a;
            out[k + 1] = b;
            k += 2;
            i += 2;
        }
        if k < out.len() {
            out[k] = self.normal_pair(i / 2).0;
        }
    }
    /// The pairs `j0 ..` into `out` (a whole number of blocks), compiled for the widest
    /// vector units the host has ([`crate::vectorized!`]; the same bits at every level).
    fn fill_blocks(&self, j0: u64, out: &mut [f32]) {
        fill_blocks(self, j0, out);
    }

    /// [`CounterRng::fill_blocks`]: the counter bits of a block one pair at a time
    /// (64-bit multiplies), then the floating-point part over the block's arrays, a loop
    /// without branches that the compiler vectorizes.
    #[inline(always)]
    fn fill_blocks_portable(&self, j0: u64, out: &mut [f32]) {
        let mut u1 = [0f32; NORMAL_BLOCK];
        let mut quadrant = [0u32; NORMAL_BLOCK];
        let mut frac = [0f32; NORMAL_BLOCK];
        let mut zc = [0f32; NORMAL_BLOCK];
        let mut zs = [0f32; NORMAL_BLOCK];
        for (b, block) in out.chunks_exact_mut(2 * NORMAL_BLOCK).enumerate() {
            let j = j0 + (b * NORMAL_BLOCK) as u64;
            for (p, ((a, q), f)) in u1
                .iter_mut()
                .zip(quadrant.iter_mut())
                .zip(frac.iter_mut())
                .enumerate()
            {
                let h = self.bits(j + p as u64);
                *a = uniform_pair(h).0;
                // `u2 = m 2^-24` (`m = bits[39:16]`), so `4 u2 = m 2^-22` exactly: its
                // floor is `m`'s top two bits and its fraction `(m mod 2^22) 2^-22`, the
                // same floats `cos_sin_turns(u2)` computes (without its float-to-int
                // conversion, which does not vectorize).
                *q = ((h >> 38) & 3) as u32;
                *f = ((h >> 16) & 0x3f_ffff) as i32 as f32 * (1.0 / (1u32 << 22) as f32);
            }
            for p in 0..NORMAL_BLOCK {
                let r = (-2.0 * ln01(u1[p])).sqrt();
                let (c, s) = cos_sin_quadrant(quadrant[p], frac[p]);
                zc[p] = r * c;
                zs[p] = r * s;
            }
            for (o, (&c, &s)) in block.chunks_exact_mut(2).zip(zc.iter().zip(&zs)) {
                o[0] = c;
                o[1] = s;
            }
        }
    }
}

crate::vectorized! {
    /// [`CounterRng::fill_blocks`] compiled for each vector level.
    fn fill_blocks(rng: &CounterRng, j0: u64, out: &mut [f32]) {
        rng.fill_blocks_portable(j0, out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PINNED: [u32; 4] = [1_052_934_920, 3_205_890_766, 3_200_236_949, 1_070_562_870];

    #[test]
    fn pinned_values() {
        // Pins the algorithm: these must never change across platforms or versions.
        let mut r = SeededRng::for_tensor(7, "w1");
        let a = r.next_u64();
        let mut r2 = SeededRng::for_tensor(7, "w1");
        assert_eq!(a, r2.next_u64());
        assert_ne!(a, SeededRng::for_tensor(8, "w1").next_u64());
        assert_ne!(a, SeededRng::for_tensor(7, "w2").next_u64());
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
    }

    #[test]
    fn distributions() {
        let mut r = SeededRng::for_tensor(0, "x");
        let n = 20000;
        let xs: Vec<f64> = (0..n).map(|_| r.standard_normal()).collect();
        let mean = xs.iter().sum::<f64>() / n as f64;
        let var = xs.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / n as f64;
        assert!(mean.abs() < 0.03, "{mean}");
        assert!((var - 1.0).abs() < 0.05, "{var}");
        for _ in 0..1000 {
            let u = r.uniform(-2.0, 3.0);
            assert!((-2.0..3.0).contains(&u));
            assert!(r.below(10) < 10);
        }
    }
    #[test]
    fn counter_rng_is_split_invariant_and_normal() {
        let r = CounterRng::for_tensor(42, "w");
        let mut whole = vec![0f32; 1001];
        r.fill_standard_normal(0, &mut whole);
        // Any split gives the same values (what makes threads irrelevant).
        for cut in [0usize, 1, 2, 7, 500, 1000, 1001] {
            let mut a = vec![0f32; cut];
            let mut b = vec![0f32; 1001 - cut];
            r.fill_standard_normal(0, &mut a);
            r.fill_standard_normal(cut as u64, &mut b);
            a.extend(b);
            assert_eq!(
                a.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
                whole.iter().map(|x| x.to_bits()).collect::<Vec<_>>()
            );
        }
        // The vectorized blocks against the pair-by-pair definition, from odd and even
        // starts (blocks of 128 elements plus tails).
        for start in [0u64, 1, 2, 129, 1_000_001] {
            let mut v = vec![0f32; 700];
            r.fill_standard_normal(start, &mut v);
            for (k, x) in v.iter().enumerate() {
                let i = start + k as u64;
                let (c, s) = r.normal_pair(i / 2);
                let want = if i % 2 == 0 { c } else { s };
                assert_eq!(x.to_bits(), want.to_bits(), "start {start} element {i}");
            }
        }
        assert_ne!(CounterRng::for_tensor(43, "w"), r);
        assert_ne!(CounterRng::for_tensor(42, "v"), r);
        let n = 200_000;
        let mut xs = vec![0f32; n];
        r.fill_standard_normal(0, &mut xs);
        let mean = xs.iter().map(|&x| f64::from(x)).sum::<f64>() / n as f64;
        let var = xs.iter().map(|&x| f64::from(x).powi(2)).sum::<f64>() / n as f64;
        let kurt = xs.iter().map(|&x| f64::from(x).powi(4)).sum::<f64>() / n as f64;
        assert!(mean.abs() < 0.01, "{mean}");
        assert!((var - 1.0).abs() < 0.01, "{var}");
        assert!((kurt - 3.0).abs() < 0.1, "{kurt}");
    }

    #[test]
    fn polynomial_kernels_match_libm() {
        for i in 1..=4096u32 {
            let x = i as f32 / 4096.0;
            let want = libm::log(f64::from(x));
            assert!(
                (f64::from(ln01(x)) - want).abs() <= 2e-7 * want.abs().max(1.0),
                "{x}"
            );
            let (c, s) = cos_sin_turns(x - 1.0 / 4096.0);
            let t = 2.0 * std::f64::consts::PI * f64::from(x - 1.0 / 4096.0);
            assert!((f64::from(c) - libm::cos(t)).abs() < 3e-7, "{x}");
            assert!((f64::from(s) - libm::sin(t)).abs() < 3e-7, "{x}");
        }
        assert!((f64::from(ln01(2f32.powi(-24))) + 24.0 * std::f64::consts::LN_2).abs() < 1e-5);
    }

    #[test]
    fn every_vector_version_gives_the_same_bits() {
        let r = CounterRng::for_tensor(3, "layer.0.w");
        let n = 2 * NORMAL_BLOCK * 5;
        let mut want = vec![0f32; n];
        r.fill_blocks_portable(1_000_003, &mut want);
        let mut pairs = Vec::new();
        for j in 1_000_003..1_000_003 + n as u64 / 2 {
            let (c, s) = r.normal_pair(j);
            pairs.extend([c, s]);
        }
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&want), bits(&pairs), "portable blocks");
        let mut got = vec![0f32; n];
        r.fill_blocks(1_000_003, &mut got);
        assert_eq!(bits(&got), bits(&want), "dispatched");
        for level in crate::simd::Level::ALL {
            got.fill(0.0);
            fill_blocks::at(level, &r, 1_000_003, &mut got);
            assert_eq!(bits(&got), bits(&want), "{level:?}");
        }
    }

    #[test]
    fn pinned_tensor_hash() {
        // 100,003 normals from an odd start (head, vector blocks, tail): the FNV-1a hash
        // of their little-endian f32 bytes, as the first counter-based generator gave
        // them. Must never change (docs/model-format.md).
        let r = CounterRng::for_tensor(7, "w1");
        let mut v = vec![0f32; 100_003];
        r.fill_standard_normal(5, &mut v);
        let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
        assert_eq!(fnv1a64(&bytes), 0x2c63_c2f3_fbc9_debc);
    }

    #[test]
    fn pinned_counter_values() {
        // Pins the algorithm (docs/model-format.md): these bits must never change.
        let r = CounterRng::for_tensor(7, "w1");
        let mut v = [0f32; 4];
        r.fill_standard_normal(0, &mut v);
        let bits: Vec<u32> = v.iter().map(|x| x.to_bits()).collect();
        assert_eq!(bits, PINNED);
    }
}
