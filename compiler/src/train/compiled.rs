//! A compiled training step: the `.neff` of `neuronc compile --train`, which carries the
//! step's interface ([`StepInterface`]: the `training` section, data, labels and loss
//! output, the carried state and its initial values) in its metadata
//! ([`neuron_isa::TrainingMeta`], artifact format version 3), so `neuron-sim train
//! step.neff` runs the same loop as from the model.json.

use ndarray::{ArrayD, IxDyn};
use neuron_isa::{Artifact, BlobRange, CarriedState, IoSignature, TrainingMeta};

use crate::driver::{Compiled, compile};
use crate::error::CompileError;
use crate::ir::{DType, Tensor};
use crate::options::{AutoCast, CastType, CompileOptions};

use super::recompute::{apply_plan, plan_activations};
use super::spec::{PrecisionPolicy, TrainingSpec};
use super::step::{Carried, IoValue, StepInterface, TrainingStep};

/// Alignment of the initial values in the weight blob (as the weights').
const ALIGN: usize = 64;

impl PrecisionPolicy {
    /// Sets the auto-cast a step of this policy compiles with: none for `fp32`, fp16
    /// matmuls for `fp16_loss_scaling`, bf16 matmuls otherwise.
    pub fn set_auto_cast(self, opts: &mut CompileOptions) {
        (opts.auto_cast, opts.auto_cast_type) = match self {
            PrecisionPolicy::Fp32 => (AutoCast::None, opts.auto_cast_type),
            PrecisionPolicy::Fp16LossScaling => (AutoCast::Matmult, CastType::Fp16),
            PrecisionPolicy::Bf16Mixed | PrecisionPolicy::Bf16Sr => {
                (AutoCast::Matmult, CastType::Bf16)
            }
        };
    }
}

/// Compiles `step` with `opts` (whose auto-cast the precision policy sets) and records its
/// interface and initial state in the artifact. Activations that do not fit the target's
/// HBM are recomputed in the backward pass ([`plan_activations`]); the plan is a note of
/// the compile summary.
pub fn compile_step(step: &TrainingStep, opts: &CompileOptions) -> Result<Compiled, CompileError> {
    let mut opts = opts.clone();
    step.iface.spec.precision.set_auto_cast(&mut opts);
    let plan = plan_activations(step, opts.target.hbm_bytes);
    let recomputing;
    let graph = if plan.recomputed.is_empty() {
        &step.graph
    } else {
        recomputing = apply_plan(step, &plan)?;
        &recomputing
    };
    let mut compiled = compile(graph, &opts)?;
    compiled.summary.notes.push(plan.to_string());
    attach_interface(&mut compiled.artifact, &step.iface)?;
    Ok(compiled)
}

fn signature(v: &IoValue) -> IoSignature {
    IoSignature {
        name: v.name.clone(),
        shape: v.shape.iter().map(|&d| d as u64).collect(),
        dtype: v.dtype.name().to_string(),
    }
}

/// Appends the params' initial values (f32, little-endian, 64-byte aligned) to the blob and
/// records `iface` as the artifact's training metadata.
pub fn attach_interface(art: &mut Artifact, iface: &StepInterface) -> Result<(), CompileError> {
    let spec_json = serde_json::to_string(&iface.spec)
        .map_err(|e| CompileError::Internal(format!("cannot encode the training section: {e}")))?;
    let mut carried = Vec::with_capacity(iface.carried.len());
    for c in &iface.carried {
        let a = c.initial.to_f32();
        let initial = if a.iter().all(|&x| x.to_bits() == 0) {
            None
        } else {
            let blob = art.blob.to_mut();
            blob.resize(blob.len().next_multiple_of(ALIGN), 0);
            let offset = blob.len() as u64;
            blob.extend(a.iter().flat_map(|x| x.to_le_bytes()));
            Some(BlobRange {
                offset,
                len: blob.len() as u64 - offset,
            })
        };
        carried.push(CarriedState {
            name: c.name.clone(),
            next: c.next.clone(),
            is_param: c.is_param,
            shape: a.shape().iter().map(|&d| d as u64).collect(),
            initial,
        });
    }
    art.meta.training = Some(TrainingMeta {
        spec_json,
        data_inputs: iface.data_inputs.iter().map(signature).collect(),
        labels: signature(&iface.labels),
        output: signature(&iface.output),
        carried,
        trainable_elements: iface.trainable_elements as u64,
        saved_activation_bytes: iface.saved_activation_bytes,
    });
    art.check_weights()
        .map_err(|e| CompileError::Internal(format!("training artifact is inconsistent: {e}")))
}

/// Why an artifact cannot drive a training loop.
#[derive(Debug, thiserror::Error)]
pub enum CompiledStepError {
    /// An inference artifact (or one written before format version 3).
    #[error(
        "model '{model}' is not a compiled training step (its artifact has no training \
         metadata); compile the model.json with `neuronc compile --train`"
    )]
    NotTraining {
        /// The artifact's model name.
        model: String,
    },
    /// The training metadata is inconsistent.
    #[error("the training metadata of model '{model}' is invalid: {message}")]
    Invalid {
        /// The artifact's model name.
        model: String,
        /// What is wrong.
        message: String,
    },
}

fn shape_of(s: &[u64], what: &str) -> Result<Vec<usize>, String> {
    s.iter()
        .map(|&d| usize::try_from(d).map_err(|_| format!("{what}: dimension {d} is too large")))
        .collect()
}

fn io_value(s: &IoSignature) -> Result<IoValue, String> {
    Ok(IoValue {
        name: s.name.clone(),
        shape: shape_of(&s.shape, &s.name)?,
        dtype: s
            .dtype
            .parse::<DType>()
            .map_err(|e| format!("'{}': {e}", s.name))?,
    })
}

/// The step interface an artifact of `neuronc compile --train` carries, with the carried
/// state's initial values read from its blob.
pub fn interface_from_artifact(art: &Artifact) -> Result<StepInterface, CompiledStepError> {
    let model = art.meta.model_name.clone();
    let Some(t) = &art.meta.training else {
        return Err(CompiledStepError::NotTraining { model });
    };
    let invalid = |message: String| CompiledStepError::Invalid {
        model: model.clone(),
        message,
    };
    let doc: serde_json::Value = serde_json::from_str(&t.spec_json)
        .map_err(|e| invalid(format!("training section: {e}")))?;
    let spec = TrainingSpec::from_json(&doc).map_err(|e| invalid(e.to_string()))?;
    let mut carried = Vec::with_capacity(t.carried.len());
    for c in &t.carried {
        let shape = shape_of(&c.shape, &c.name).map_err(&invalid)?;
        let initial = match c.initial {
            None => Tensor::zeros(DType::F32, &shape),
            Some(r) => {
                let bytes = art.range_bytes(r).ok_or_else(|| {
                    invalid(format!(
                        "the initial value of '{}' (blob bytes {}..{}) is not in the artifact \
                         ({} weight bytes; was it written without weights?)",
                        c.name,
                        r.offset,
                        r.offset.saturating_add(r.len),
                        art.blob.len()
                    ))
                })?;
                let values: Vec<f32> = bytes
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                    .collect();
                let a = ArrayD::from_shape_vec(IxDyn(&shape), values)
                    .map_err(|e| invalid(format!("the initial value of '{}': {e}", c.name)))?;
                Tensor::F32(a)
            }
        };
        carried.push(Carried {
            name: c.name.clone(),
            next: c.next.clone(),
            initial,
            is_param: c.is_param,
        });
    }
    Ok(StepInterface {
        spec,
        data_inputs: t
            .data_inputs
            .iter()
            .map(io_value)
            .collect::<Result<_, _>>()
            .map_err(&invalid)?,
        labels: io_value(&t.labels).map_err(&invalid)?,
        output: io_value(&t.output).map_err(&invalid)?,
        carried,
        trainable_elements: usize::try_from(t.trainable_elements)
            .map_err(|_| invalid("trainable_elements is too large".into()))?,
        saved_activation_bytes: t.saved_activation_bytes,
    })
}
