//! Param data by reference: weights are data, not IR.
//!
//! A [`ParamData`] is a cheap handle (an `Arc`) to a param's values. Cloning a graph, a
//! value or a kernel tensor clones the handle, never the numbers. Seeded params
//! (`"init"` in model.json) are not generated when the model is loaded: the handle
//! records the recipe, and the values are drawn only when something reads them (the
//! reference executor, a constant fold) or streamed chunk by chunk into the artifact by
//! [`ParamData::values_f64`], which never keeps the whole tensor. So `neuronc check`
//! never materializes a weight, and a compile holds at most one chunk per thread of a
//! seeded weight besides the encoded blob.

use std::fmt;
use std::sync::{Arc, OnceLock};

use ndarray::{ArrayD, IxDyn};

use super::{DType, Tensor};
use neuron_isa::rng::CounterRng;

/// How to fill a param that has no weights and no literal value.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum InitSpec {
    /// All zeros.
    Zeros,
    /// All ones.
    Ones,
    /// Normal(mean, std) (see [`neuron_isa::rng::CounterRng::normal_pair`]).
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

/// A seeded param's recipe.
#[derive(Clone, Debug, PartialEq)]
struct Seeded {
    spec: InitSpec,
    rng: CounterRng,
    shape: Vec<usize>,
    dtype: DType,
}

impl Seeded {
    /// Element values `start .. start + out.len()` in f64, already rounded to the
    /// param's dtype (as [`Tensor::from_f64`] would).
    fn fill(&self, start: usize, out: &mut [f64]) {
        match self.spec {
            InitSpec::Zeros => out.fill(0.0),
            InitSpec::Ones => out.fill(1.0),
            InitSpec::Normal { mean, std } => {
                let mut z = vec![0f32; out.len()];
                self.rng.fill_standard_normal(start as u64, &mut z);
                for (o, &z) in out.iter_mut().zip(&z) {
                    *o = round_to(self.dtype, mean + std * f64::from(z));
                }
            }
            InitSpec::Uniform { low, high } => {
                for (k, o) in out.iter_mut().enumerate() {
                    let u = self.rng.uniform01((start + k) as u64);
                    *o = round_to(self.dtype, low + (high - low) * u);
                }
            }
        }
    }
}

/// Rounds `x` to the value set of `dtype`, as [`Tensor::from_f64`] does.
fn round_to(dtype: DType, x: f64) -> f64 {
    match dtype {
        DType::F32 => f64::from(x as f32),
        DType::Bf16 => f64::from(half::bf16::from_f64(x)),
        DType::F16 => f64::from(half::f16::from_f64(x)),
        DType::I8 => f64::from(x as i8),
        DType::I32 => f64::from(x as i32),
        DType::I64 => x as i64 as f64,
        DType::Bool => f64::from(u8::from(x != 0.0)),
    }
}

/// Elements generated per parallel task when a seeded param is materialized or streamed.
pub const CHUNK: usize = 1 << 16;

#[derive(Debug)]
struct Inner {
    seeded: Option<Seeded>,
    tensor: OnceLock<Tensor>,
}

/// A shared, lazily generated param value. See the module documentation.
#[derive(Clone)]
pub struct ParamData(Arc<Inner>);

impl ParamData {
    /// Data that already exists.
    pub fn new(t: Tensor) -> ParamData {
        ParamData(Arc::new(Inner {
            seeded: None,
            tensor: OnceLock::from(t),
        }))
    }

    /// A seeded param: checks the recipe now, draws nothing until read. Returns an error
    /// message if the spec does not suit the dtype.
    pub fn seeded(
        spec: InitSpec,
        seed: u64,
        name: &str,
        shape: &[usize],
        dtype: DType,
    ) -> Result<ParamData, String> {
        let random = matches!(spec, InitSpec::Normal { .. } | InitSpec::Uniform { .. });
        if random && !dtype.is_float() {
            return Err(format!("random init needs a float dtype, found {dtype}"));
        }
        match spec {
            InitSpec::Normal { mean, std }
                if !(std.is_finite() && std >= 0.0 && mean.is_finite()) =>
            {
                return Err(format!(
                    "normal init needs finite mean and std >= 0, found mean {mean}, std {std}"
                ));
            }
            InitSpec::Uniform { low, high }
                if !(low.is_finite() && high.is_finite() && low < high) =>
            {
                return Err(format!(
                    "uniform init needs finite low < high, found low {low}, high {high}"
                ));
            }
            _ => {}
        }
        Ok(ParamData(Arc::new(Inner {
            seeded: Some(Seeded {
                spec,
                rng: CounterRng::for_tensor(seed, name),
                shape: shape.to_vec(),
                dtype,
            }),
            tensor: OnceLock::new(),
        })))
    }

    /// The shape.
    pub fn shape(&self) -> &[usize] {
        match (&self.0.seeded, self.0.tensor.get()) {
            (Some(s), _) => &s.shape,
            (None, Some(t)) => t.shape(),
            (None, None) => &[],
        }
    }

    /// The element count.
    pub fn num_elements(&self) -> usize {
        self.shape().iter().product()
    }

    /// The dtype (an f64 tensor reports f32, as [`Tensor::dtype`]).
    pub fn dtype(&self) -> DType {
        match (&self.0.seeded, self.0.tensor.get()) {
            (Some(s), _) => s.dtype,
            (_, Some(t)) => t.dtype(),
            (None, None) => DType::F32,
        }
    }

    /// Whether the values exist in memory (false for a seeded param nobody read yet).
    pub fn is_materialized(&self) -> bool {
        self.0.tensor.get().is_some()
    }

    /// Whether two handles share one buffer.
    pub fn ptr_eq(&self, other: &ParamData) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }

    /// The values, generated (in parallel over chunks, the same bits for any thread
    /// count) and kept on first use.
    pub fn tensor(&self) -> &Tensor {
        self.0.tensor.get_or_init(|| {
            let Some(s) = &self.0.seeded else {
                // `new` always sets the tensor; unreachable, but harmless.
                return Tensor::zeros(DType::F32, &[]);
            };
            let mut v = vec![0f64; self.num_elements()];
            generate(s, &mut v);
            let a = ArrayD::from_shape_vec(IxDyn(&s.shape), v)
                .unwrap_or_else(|_| ArrayD::zeros(IxDyn(&s.shape)));
            Tensor::from_f64(s.dtype, a)
        })
    }

    /// Element values `start .. start + out.len()` as f64 (in the param's value set),
    /// without materializing a seeded param: what the artifact encoder streams.
    pub fn values_f64(&self, start: usize, out: &mut [f64]) {
        if let (Some(s), None) = (&self.0.seeded, self.0.tensor.get()) {
            s.fill(start, out);
            return;
        }
        let t = self.tensor();
        macro_rules! copy {
            ($a:expr, $f:expr) => {{
                match $a.as_slice() {
                    Some(sl) => {
                        for (o, x) in out.iter_mut().zip(&sl[start..]) {
                            *o = $f(*x);
                        }
                    }
                    None => {
                        for (o, x) in out.iter_mut().zip($a.iter().skip(start)) {
                            *o = $f(*x);
                        }
                    }
                }
            }};
        }
        match t {
            Tensor::F32(a) => copy!(a, f64::from),
            Tensor::F64(a) => copy!(a, |x| x),
            Tensor::Bf16(a) => copy!(a, f64::from),
            Tensor::F16(a) => copy!(a, f64::from),
            Tensor::I8(a) => copy!(a, f64::from),
            Tensor::I32(a) => copy!(a, f64::from),
            Tensor::I64(a) => copy!(a, |x: i64| x as f64),
            Tensor::Bool(a) => copy!(a, |x: bool| f64::from(u8::from(x))),
        }
    }
}

/// Fills `out` with a seeded param's values, in parallel over [`CHUNK`]-element chunks.
fn generate(s: &Seeded, out: &mut [f64]) {
    use rayon::prelude::*;
    out.par_chunks_mut(CHUNK)
        .enumerate()
        .for_each(|(c, chunk)| s.fill(c * CHUNK, chunk));
}

impl std::ops::Deref for ParamData {
    type Target = Tensor;
    fn deref(&self) -> &Tensor {
        self.tensor()
    }
}

impl From<Tensor> for ParamData {
    fn from(t: Tensor) -> ParamData {
        ParamData::new(t)
    }
}

impl PartialEq for ParamData {
    fn eq(&self, other: &ParamData) -> bool {
        if self.ptr_eq(other) {
            return true;
        }
        match (&self.0.seeded, &other.0.seeded) {
            (Some(a), Some(b)) if !self.is_materialized() || !other.is_materialized() => a == b,
            _ => self.tensor() == other.tensor(),
        }
    }
}

impl fmt::Debug for ParamData {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0.seeded {
            Some(s) => write!(
                f,
                "ParamData(seeded {:?} {:?} {})",
                s.spec, s.shape, s.dtype
            ),
            None => write!(f, "ParamData({:?})", self.tensor()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lazy_streamed_and_materialized_agree() {
        let spec = InitSpec::Normal {
            mean: 0.5,
            std: 0.02,
        };
        let p = ParamData::seeded(spec, 7, "w", &[300, 700], DType::F32).unwrap();
        assert!(!p.is_materialized());
        assert_eq!(p.shape(), &[300, 700]);
        let q = p.clone();
        let mut part = vec![0.0; 1000];
        p.values_f64(123_457, &mut part);
        assert!(!p.is_materialized(), "streaming must not materialize");
        let t = q.tensor().to_f64();
        assert!(p.is_materialized() && p.ptr_eq(&q));
        let all: Vec<f64> = t.iter().copied().collect();
        assert_eq!(&all[123_457..124_457], &part[..]);
        let mut again = vec![0.0; 1000];
        p.values_f64(123_457, &mut again);
        assert_eq!(part, again);
        assert!(ParamData::seeded(spec, 7, "i", &[2], DType::I32).is_err());
        let u = ParamData::seeded(
            InitSpec::Uniform {
                low: 2.0,
                high: 3.0,
            },
            1,
            "u",
            &[100],
            DType::Bf16,
        )
        .unwrap();
        assert!(u.to_f64().iter().all(|&x| (2.0..=3.0).contains(&x)));
    }
}
