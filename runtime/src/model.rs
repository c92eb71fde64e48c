//! A loaded, verified artifact: the unit the runtime binds inputs to and executes.

use crate::error::RuntimeError;
use neuron_isa::{Artifact, ChipConfig, Dtype, TensorId, TensorKind};
use std::collections::BTreeSet;
use std::path::Path;

/// What the runtime knows about one input or output tensor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorDesc {
    /// The tensor's id in the program's HBM tensor table.
    pub id: TensorId,
    /// The graph value's name.
    pub name: String,
    /// Logical shape, row-major.
    pub shape: Vec<u64>,
    /// Element type as stored in HBM.
    pub dtype: Dtype,
}

/// A verified artifact, ready to be bound and executed any number of times.
///
/// Invariants (checked by [`Model::from_artifact`]): the target configuration is valid;
/// the program passes the ISA verifier ([`neuron_isa::verify_program`]) for that target;
/// every weight tensor has its bytes in the artifact; input and output names are unique.
#[derive(Debug, Clone)]
pub struct Model {
    artifact: Artifact,
    /// False for a model loaded by [`Model::load_without_weights`]: it runs timing-only.
    weights_loaded: bool,
    /// Per weight (in `meta.weights` order): it holds no poison element of its dtype.
    /// Checked once, at the first functional run.
    poison_free: std::sync::OnceLock<Vec<bool>>,
}

impl Model {
    /// Reads and verifies a `.neff` file: magic, format version, checksum and weight
    /// ranges (by [`Artifact::read`]), then the checks of [`Model::from_artifact`].
    pub fn load(path: &Path) -> Result<Model, RuntimeError> {
        let artifact = Artifact::read(path).map_err(|source| RuntimeError::Artifact {
            path: path.to_path_buf(),
            source,
        })?;
        Model::from_artifact(artifact)
    }

    /// Reads and verifies a `.neff` file's header and program but not one weight byte
    /// ([`Artifact::read_meta`]): the model can run timing-only (which never reads a
    /// weight), nothing else.
    pub fn load_without_weights(path: &Path) -> Result<Model, RuntimeError> {
        let (meta, _) = Artifact::read_meta(path).map_err(|source| RuntimeError::Artifact {
            path: path.to_path_buf(),
            source,
        })?;
        Model::from_program(Artifact {
            meta,
            blob: Default::default(),
        })
    }

    /// Verifies the program of an artifact whose weight bytes are absent (compiled
    /// without them, or loaded by [`Model::load_without_weights`]): it runs timing-only.
    pub fn from_program(artifact: Artifact) -> Result<Model, RuntimeError> {
        Model::verify(&artifact, false)?;
        Ok(Model {
            artifact,
            weights_loaded: false,
            poison_free: std::sync::OnceLock::new(),
        })
    }

    /// Whether the weight bytes are loaded (false: the model runs timing-only).
    pub fn has_weights(&self) -> bool {
        self.weights_loaded
    }

    /// Per weight (in the artifact's `meta.weights` order), whether its bytes hold no
    /// poison element of its dtype (`neuron_sim::numerics::is_poisoned`): checked once
    /// per model, so every run can bind them with
    /// [`neuron_sim::Simulator::bind_poison_free_tensor`].
    pub(crate) fn poison_free_weights(&self) -> &[bool] {
        self.poison_free.get_or_init(|| {
            let meta = &self.artifact.meta;
            meta.weights
                .iter()
                .map(|w| {
                    let dtype = meta
                        .program
                        .tensors
                        .get(w.tensor.0 as usize)
                        .map(|t| t.dtype);
                    match (dtype, self.artifact.weight_bytes(w.tensor)) {
                        (Some(d), Some(b)) => !neuron_sim::numerics::is_poisoned_parallel(d, b),
                        _ => false,
                    }
                })
                .collect()
        })
    }

    /// Verifies an artifact already in memory (e.g. compiled in this process).
    pub fn from_artifact(artifact: Artifact) -> Result<Model, RuntimeError> {
        Model::verify(&artifact, true)?;
        Ok(Model {
            artifact,
            weights_loaded: true,
            poison_free: std::sync::OnceLock::new(),
        })
    }

    fn verify(artifact: &Artifact, weights: bool) -> Result<(), RuntimeError> {
        let meta = &artifact.meta;
        meta.target
            .validate()
            .map_err(|source| RuntimeError::Target {
                target: meta.target.name.clone(),
                source,
            })?;
        if weights {
            artifact
                .check_weights()
                .map_err(|e| RuntimeError::Program(e.to_string()))?;
        }
        let program = &meta.program;
        neuron_isa::verify_program(program, &meta.target)?;
        let mut names = BTreeSet::new();
        for t in &program.tensors {
            match t.kind {
                TensorKind::Input | TensorKind::Output => {
                    if !names.insert(t.name.as_str()) {
                        return Err(RuntimeError::Program(format!(
                            "two inputs or outputs are named '{}'",
                            t.name
                        )));
                    }
                }
                TensorKind::Weight | TensorKind::Scratch => {}
            }
        }
        for (i, t) in program.tensors.iter().enumerate() {
            if weights
                && t.kind == TensorKind::Weight
                && artifact.weight_bytes(TensorId(i as u32)).is_none()
            {
                return Err(RuntimeError::Program(format!(
                    "weight tensor '{}' (t{i}) has no bytes in the artifact",
                    t.name
                )));
            }
        }
        Ok(())
    }

    /// The artifact (program, metadata, weights).
    pub fn artifact(&self) -> &Artifact {
        &self.artifact
    }

    /// The model's name.
    pub fn name(&self) -> &str {
        &self.artifact.meta.model_name
    }

    /// The chip the program was compiled for, and runs on.
    pub fn target(&self) -> &ChipConfig {
        &self.artifact.meta.target
    }

    fn descs(&self, kind: TensorKind) -> Vec<TensorDesc> {
        self.artifact
            .meta
            .program
            .tensors
            .iter()
            .enumerate()
            .filter(|(_, t)| t.kind == kind)
            .map(|(i, t)| TensorDesc {
                id: TensorId(i as u32),
                name: t.name.clone(),
                shape: t.shape.clone(),
                dtype: t.dtype,
            })
            .collect()
    }

    /// The inputs, in tensor-table order.
    pub fn inputs(&self) -> Vec<TensorDesc> {
        self.descs(TensorKind::Input)
    }

    /// The outputs, in tensor-table order.
    pub fn outputs(&self) -> Vec<TensorDesc> {
        self.descs(TensorKind::Output)
    }
}
