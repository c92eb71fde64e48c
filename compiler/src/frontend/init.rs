//! Param initialisers drawn from the seeded generator.

use crate::ir::limits::check_shape;
use crate::ir::{DType, ParamData, Tensor};

pub use crate::ir::InitSpec;

/// The seeded param `name` of the given type: checks the shape limits and the spec now,
/// draws the values only when they are read (see [`ParamData`]). Elements are drawn from
/// [`neuron_isa::rng::CounterRng::for_tensor`]`(seed, name)` by element index and
/// rounded to `dtype`. Returns an error message if the shape breaks the size limits or
/// the spec does not suit the dtype.
pub fn init_param(
    spec: InitSpec,
    seed: u64,
    name: &str,
    shape: &[usize],
    dtype: DType,
) -> Result<ParamData, String> {
    check_shape(shape).map_err(|e| e.to_string())?;
    ParamData::seeded(spec, seed, name, shape, dtype)
}

/// [`init_param`], materialized.
pub fn init_tensor(
    spec: InitSpec,
    seed: u64,
    name: &str,
    shape: &[usize],
    dtype: DType,
) -> Result<Tensor, String> {
    Ok(init_param(spec, seed, name, shape, dtype)?.tensor().clone())
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
