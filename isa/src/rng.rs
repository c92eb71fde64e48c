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

#[cfg(test)]
mod tests {
    use super::*;

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
}
