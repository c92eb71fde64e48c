//! Binding inputs: host arrays or `.npy` files checked against the declared shape and
//! dtype, and a seeded generator for inputs the caller does not give.
//!
//! The generator is the shared [`neuron_isa::rng::SeededRng`], used exactly as the
//! compiler's reference executor (`neuronc::reference::random_inputs`) uses it, so the runtime draws the same numbers
//! as `neuronc`'s reference executor for the same model and seed: one PCG64 stream per
//! input keyed by the seed and the input's name, elements in row-major order.
//! - float inputs: standard normal N(0, 1), rounded to the input's dtype;
//! - integer inputs: uniform in `[0, bound)`, where `bound` is the artifact's
//!   `index_bounds[name]` (e.g. the row count of the table the input indexes), else
//!   [`neuron_isa::host::INT_INPUT_RANGE`];
//! - `u8` inputs without a bound (graph booleans are stored as `u8`): 1 when a uniform
//!   draw in `[0, 1)` is below 0.5, else 0.

use crate::error::RuntimeError;
use crate::host::HostTensor;
use crate::model::{Model, TensorDesc};
use crate::npy;
use ndarray::{ArrayD, IxDyn};
use neuron_isa::host::INT_INPUT_RANGE;
use neuron_isa::rng::SeededRng;
use neuron_isa::{Dtype, TensorId};
use std::collections::BTreeMap;
use std::path::Path;

/// Draws the seeded values of input `desc` (see the module documentation); `bound` is
/// the artifact's index bound for it, if any.
pub fn seeded_input(desc: &TensorDesc, seed: u64, bound: Option<u64>) -> HostTensor {
    let mut rng = SeededRng::for_tensor(seed, &desc.name);
    let shape: Vec<usize> = desc.shape.iter().map(|&d| d as usize).collect();
    let n: usize = shape.iter().product();
    if desc.dtype.is_float() {
        let v: Vec<f32> = (0..n).map(|_| rng.standard_normal() as f32).collect();
        return HostTensor::F32(ArrayD::from_shape_vec(IxDyn(&shape), v).unwrap_or_default());
    }
    let v: Vec<i64> = match (desc.dtype, bound) {
        (Dtype::U8, None) => (0..n).map(|_| i64::from(rng.uniform01() < 0.5)).collect(),
        (_, bound) => {
            let bound = bound.unwrap_or(INT_INPUT_RANGE);
            (0..n).map(|_| rng.below(bound) as i64).collect()
        }
    };
    HostTensor::I64(ArrayD::from_shape_vec(IxDyn(&shape), v).unwrap_or_default())
}

/// Inputs bound to one model, encoded as the bytes their HBM tensors will hold.
#[derive(Debug, Clone)]
pub struct Bindings<'m> {
    model: &'m Model,
    bound: BTreeMap<TensorId, Vec<u8>>,
}

impl<'m> Bindings<'m> {
    /// No inputs bound yet.
    pub fn new(model: &'m Model) -> Bindings<'m> {
        Bindings {
            model,
            bound: BTreeMap::new(),
        }
    }

    /// The model these bindings belong to.
    pub fn model(&self) -> &'m Model {
        self.model
    }

    fn find(&self, name: &str) -> Result<TensorDesc, RuntimeError> {
        let inputs = self.model.inputs();
        let known = inputs
            .iter()
            .map(|d| format!("'{}'", d.name))
            .collect::<Vec<_>>()
            .join(", ");
        inputs
            .into_iter()
            .find(|d| d.name == name)
            .ok_or_else(|| RuntimeError::UnknownInput {
                name: name.to_string(),
                known: if known.is_empty() {
                    "none".into()
                } else {
                    known
                },
            })
    }

    /// Binds input `name` to `value`; its shape must equal the declared shape, and its
    /// element type must convert to the declared dtype (see [`HostTensor::encode_for`]).
    pub fn set_input(
        &mut self,
        name: &str,
        value: impl Into<HostTensor>,
    ) -> Result<(), RuntimeError> {
        let desc = self.find(name)?;
        let value = value.into();
        let t = &self.model.artifact().meta.program.tensors[desc.id.0 as usize];
        let bytes = value.encode_for(name, t)?;
        self.bound.insert(desc.id, bytes);
        Ok(())
    }

    /// Binds input `name` to the contents of a `.npy` file.
    pub fn set_input_npy(&mut self, name: &str, path: &Path) -> Result<(), RuntimeError> {
        self.find(name)?;
        let value = npy::read_npy(path)?;
        self.set_input(name, value).map_err(|e| match e {
            // Name the file too: the user typed a path, not an array.
            RuntimeError::InputShape { .. }
            | RuntimeError::InputDtype { .. }
            | RuntimeError::InputValue { .. } => RuntimeError::Npy {
                path: path.to_path_buf(),
                message: e.to_string(),
            },
            other => other,
        })
    }

    /// Whether input `name` is bound.
    pub fn is_bound(&self, name: &str) -> bool {
        self.find(name)
            .is_ok_and(|d| self.bound.contains_key(&d.id))
    }

    /// Names of the inputs not bound yet, in tensor-table order.
    pub fn missing(&self) -> Vec<String> {
        self.model
            .inputs()
            .into_iter()
            .filter(|d| !self.bound.contains_key(&d.id))
            .map(|d| d.name)
            .collect()
    }

    /// Binds every unbound input to values from the seeded generator (see the module
    /// documentation) under `seed`, and returns their names.
    pub fn generate_missing(&mut self, seed: u64) -> Result<Vec<String>, RuntimeError> {
        let meta = &self.model.artifact().meta;
        let mut drawn = Vec::new();
        for desc in self.model.inputs() {
            if self.bound.contains_key(&desc.id) {
                continue;
            }
            let bound = meta.index_bounds.get(&desc.name).copied();
            let value = seeded_input(&desc, seed, bound);
            self.set_input(&desc.name, value)?;
            drawn.push(desc.name);
        }
        Ok(drawn)
    }

    /// The encoded bytes of every bound input.
    pub(crate) fn bytes(&self) -> &BTreeMap<TensorId, Vec<u8>> {
        &self.bound
    }
}

impl Model {
    /// Starts binding inputs for an execution.
    pub fn bind(&self) -> Bindings<'_> {
        Bindings::new(self)
    }
}
