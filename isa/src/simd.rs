//! Hot loops compiled for the host's widest vector units, chosen at run time.
//!
//! The workspace builds for the baseline x86-64 target (SSE2), so a binary runs on any
//! x86-64 host. A function defined with [`vectorized!`](crate::vectorized) has its body
//! compiled again with AVX-512 and with AVX2 enabled, and runs the widest build the host
//! has: its loops (decoding and encoding narrow floats,
//! the poison check, the seeded normal generator, the simulator's `exp`/`erf` lanes)
//! vectorize over 8 or 16 lanes instead of 4.
//!
//! The results are the same bits at every level: vector lanes round exactly like
//! scalars, Rust never fuses a multiply and an add (no `-ffast-math`), and integer and
//! comparison operations have one result. Tests compare every level the host has with
//! the baseline through the function's `at`.
//!
//! This module and `crate::mmap` are the only places in the workspace that use
//! `unsafe`: calling a `#[target_feature]` function is unsafe, and it is called only
//! after `is_x86_feature_detected!` found the features.
#![allow(unsafe_code)]

/// A set of vector extensions a closure can be compiled for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Level {
    /// AVX-512 F, DQ and VL (16 FP32 lanes).
    Avx512,
    /// AVX2 (8 FP32 lanes).
    Avx2,
    /// The build's own target (SSE2 on x86-64; every other architecture).
    Baseline,
}

impl Level {
    /// Every level, widest first.
    pub const ALL: [Level; 3] = [Level::Avx512, Level::Avx2, Level::Baseline];

    /// Whether this host can run code compiled for the level (detected once per
    /// process: a dispatched call costs one atomic load).
    #[inline]
    pub fn available(self) -> bool {
        match self {
            Level::Baseline => true,
            Level::Avx2 => detected() & AVX2 != 0,
            Level::Avx512 => detected() & AVX512 != 0,
        }
    }
}

const AVX2: u8 = 1;
const AVX512: u8 = 2;

/// The levels this host has, as bits (`AVX2`, `AVX512`).
#[inline]
fn detected() -> u8 {
    static DETECTED: std::sync::OnceLock<u8> = std::sync::OnceLock::new();
    *DETECTED.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            let avx2 = std::arch::is_x86_feature_detected!("avx2");
            let avx512 = std::arch::is_x86_feature_detected!("avx512f")
                && std::arch::is_x86_feature_detected!("avx512dq")
                && std::arch::is_x86_feature_detected!("avx512vl");
            (u8::from(avx2) * AVX2) | (u8::from(avx512) * AVX512)
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            0
        }
    })
}

/// The widest level this host has.
#[inline]
pub fn widest_level() -> Level {
    let d = detected();
    if d & AVX512 != 0 {
        Level::Avx512
    } else if d & AVX2 != 0 {
        Level::Avx2
    } else {
        Level::Baseline
    }
}

/// Defines a function whose body is compiled for each [`Level`] and run at the widest
/// one the host has:
///
/// ```
/// neuron_isa::vectorized! {
///     /// The sum of squares.
///     pub fn sum_sq(xs: &[f32]) -> f32 {
///         xs.iter().map(|x| x * x).sum()
///     }
/// }
/// assert_eq!(sum_sq(&[1.0, 2.0]), 5.0);
/// // Each level can be called by name (tests compare them with the baseline):
/// for level in neuron_isa::simd::Level::ALL {
///     assert_eq!(sum_sq::at(level, &[3.0]), 9.0);
/// }
/// ```
///
/// The body is written once (its helpers should be `#[inline(always)]`: a function it
/// calls without inlining runs the baseline build) and may not be generic; `name::at`
/// runs a given level, or the baseline if the host lacks it.
#[macro_export]
macro_rules! vectorized {
    ($(#[$meta:meta])* $vis:vis fn $name:ident($($arg:ident : $ty:ty),* $(,)?) $(-> $ret:ty)? $body:block) => {
        $(#[$meta])*
        $vis fn $name($($arg: $ty),*) $(-> $ret)? {
            $name::at($crate::simd::widest_level(), $($arg),*)
        }

        #[doc(hidden)]
        #[allow(unsafe_code)]
        // `at` takes the level besides the function's own arguments.
        #[allow(clippy::too_many_arguments)]
        $vis mod $name {
            #[allow(unused_imports)]
            use super::*;

            #[inline(always)]
            fn portable($($arg: $ty),*) $(-> $ret)? $body

            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx512f,avx512dq,avx512vl")]
            fn avx512($($arg: $ty),*) $(-> $ret)? {
                portable($($arg),*)
            }

            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx2")]
            fn avx2($($arg: $ty),*) $(-> $ret)? {
                portable($($arg),*)
            }

            /// The function compiled for `level` (the baseline if the host lacks it).
            #[inline]
            pub fn at(level: $crate::simd::Level, $($arg: $ty),*) $(-> $ret)? {
                #[cfg(target_arch = "x86_64")]
                {
                    if level == $crate::simd::Level::Avx512 && level.available() {
                        // SAFETY: the host has the features `avx512` is compiled for.
                        return unsafe { avx512($($arg),*) };
                    }
                    if level == $crate::simd::Level::Avx2 && level.available() {
                        // SAFETY: the host has the features `avx2` is compiled for.
                        return unsafe { avx2($($arg),*) };
                    }
                }
                let _ = level;
                portable($($arg),*)
            }
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    crate::vectorized! {
        fn affine(xs: &[f32]) -> Vec<f32> {
            xs.iter().map(|&x| (x * 1.000_001 + 0.1) / 3.0).collect()
        }
    }

    #[test]
    fn every_level_runs_the_closure_and_the_widest_is_available() {
        assert!(widest_level().available());
        for level in Level::ALL {
            // Arithmetic whose lanes must round like scalars: the same bits at every level.
            let xs: Vec<f32> = (0..1000).map(|i| (i as f32 * 0.37).sin() * 1e3).collect();
            let bits = |v: Vec<f32>| v.into_iter().map(f32::to_bits).collect::<Vec<_>>();
            let want = bits(affine::at(Level::Baseline, &xs));
            assert_eq!(bits(affine::at(level, &xs)), want, "{level:?}");
            assert_eq!(bits(affine(&xs)), want, "dispatched");
        }
    }
}
