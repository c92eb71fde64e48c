//! Param initialisers drawn from the seeded generator.

use ndarray::{ArrayD, IxDyn};

use crate::ir::limits::check_shape;
use crate::ir::{DType, Tensor};
use crate::rng::SeededRng;

/// How to fill a param that has no weights and no literal value.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum InitSpec {
    /// All zeros.
    Zeros,
    /// All ones.
    Ones,
    /// Normal(mean, std) by Box–Muller (see [`crate::rng`]).
    Normal {
        /// Mean (default 0).
        mean: f64,
        /// Standard deviation.
        std: f64,
    },
    /// Uniform in `[low, high)`.
    Uniform {
        /// Inclusive lower bound.
        low: f64,
        /// Exclusive upper bound.
        high: f64,
    },
}

/// Fills a tensor for param `name` of the given type, drawing elements in
/// row-major order from [`SeededRng::for_tensor`]`(seed, name)` in f64 and
/// rounding to `dtype`. Returns an error message if the shape breaks the
/// size limits or the spec does not suit the dtype.
pub fn init_tensor(
    spec: InitSpec,
    seed: u64,
    name: &str,
    shape: &[usize],
    dtype: DType,
) -> Result<Tensor, String> {
    let n = check_shape(shape).map_err(|e| e.to_string())?;
    let random = matches!(spec, InitSpec::Normal { .. } | InitSpec::Uniform { .. });
    if random && !dtype.is_float() {
        return Err(format!("random init needs a float dtype, found {dtype}"));
    }
    let mut rng = SeededRng::for_tensor(seed, name);
    let values: Vec<f64> = match spec {
        InitSpec::Zeros => vec![0.0; n],
        InitSpec::Ones => vec![1.0; n],
        InitSpec::Normal { mean, std } => {
            if !(std.is_finite() && std >= 0.0 && mean.is_finite()) {
                return Err(format!(
                    "normal init needs finite mean and std >= 0, found mean {mean}, std {std}"
                ));
            }
            (0..n).map(|_| rng.normal(mean, std)).collect()
        }
        InitSpec::Uniform { low, high } => {
            if !(low.is_finite() && high.is_finite() && low < high) {
                return Err(format!(
                    "uniform init needs finite low < high, found low {low}, high {high}"
                ));
            }
            (0..n).map(|_| rng.uniform(low, high)).collect()
        }
    };
    let a = ArrayD::from_shape_vec(IxDyn(shape), values).map_err(|e| e.to_string())?;
    Ok(Tensor::from_f64(dtype, a))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deterministic_and_distributed() {
        let spec = InitSpec::Normal {
            mean: 0.0,
            std: 0.05,
        };
        let a = init_tensor(spec, 7, "w1", &[64, 64], DType::F32).unwrap();
        let b = init_tensor(spec, 7, "w1", &[64, 64], DType::F32).unwrap();
        assert_eq!(a, b);
        let std = (a.to_f64().mapv(|x| x * x).mean().unwrap()).sqrt();
        assert!((std - 0.05).abs() < 0.003, "{std}");
        let u = init_tensor(
            InitSpec::Uniform {
                low: 2.0,
                high: 3.0,
            },
            1,
            "u",
            &[100],
            DType::F32,
        )
        .unwrap();
        assert!(u.to_f64().iter().all(|&x| (2.0..3.0).contains(&x)));
        assert!(init_tensor(spec, 7, "i", &[2], DType::I32).is_err());
        assert!(init_tensor(InitSpec::Ones, 7, "i", &[2], DType::I32).is_ok());
        assert!(
            init_tensor(
                InitSpec::Uniform {
                    low: 1.0,
                    high: 1.0
                },
                7,
                "u",
                &[2],
                DType::F32
            )
            .is_err()
        );
    }
}
