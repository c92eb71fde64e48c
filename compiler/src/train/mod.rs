//! Training on the simulated chip: the `training` section of model.json ([`TrainingSpec`]),
//! one training step built as an ordinary graph ([`build_step`]: forward, loss, backward by
//! [`crate::autodiff`], gradient clipping, optimizer update), and the loop that runs steps
//! over a data set ([`train`]) with any [`StepRunner`] (the reference executor here, the
//! simulator in the runtime). [`compile_step`] compiles a step into an artifact that carries
//! the loop's [`StepInterface`], so the loop also runs from a `.neff` alone.

mod compiled;
mod recompute;
mod run;
mod spec;
mod step;

use std::path::Path;

pub use compiled::{CompiledStepError, attach_interface, compile_step, interface_from_artifact};
pub use recompute::{ActivationPlan, apply_plan, plan_activations};
pub use run::{
    EpochReport, INITIAL_LOSS_SCALE, LOSS_SCALE_GROWTH_INTERVAL, LoopConfig, LoopError,
    ReferenceRunner, StepReport, StepRunner, TrainState, check_data, train,
};
pub use spec::{
    LabelsSpec, LossKind, LossSpec, OptimizerSpec, PrecisionPolicy, ResolvedSpec, SpecError,
    TrainingSpec,
};
pub use step::{
    BC2_RSQRT, Carried, GRAD_SQ, IoValue, LOSS, LOSS_SCALE, STEP_SIZE, StepError, StepInterface,
    TrainingStep, build_step, next_name,
};

use crate::frontend::{ModelError, load_model};
use crate::ir::Graph;

/// Why a model could not be loaded for training.
#[derive(Debug, thiserror::Error)]
pub enum TrainLoadError {
    /// The model itself is invalid.
    #[error(transparent)]
    Model(#[from] ModelError),
    /// The file has no `training` section.
    #[error("{file}: the model has no `training` section (see docs/model-format.md, \"Training\")")]
    NoTraining {
        /// The model file.
        file: String,
    },
    /// The section is malformed.
    #[error("{file}: {source}")]
    Spec {
        /// The model file.
        file: String,
        /// What is wrong.
        #[source]
        source: SpecError,
    },
    /// The step could not be built.
    #[error("{file}: {source}")]
    Step {
        /// The model file.
        file: String,
        /// What is wrong.
        #[source]
        source: Box<StepError>,
    },
}

/// Loads a model.json with a `training` section and builds its training step.
pub fn load_training(path: &Path) -> Result<(Graph, TrainingStep), TrainLoadError> {
    let graph = load_model(path)?;
    let file = path.display().to_string();
    // The model loaded, so the file is readable JSON; read the section itself.
    let text = std::fs::read_to_string(path).map_err(|e| TrainLoadError::Spec {
        file: file.clone(),
        source: SpecError {
            path: "training".into(),
            message: e.to_string(),
        },
    })?;
    let doc: serde_json::Value = serde_json::from_str(&text).map_err(|e| TrainLoadError::Spec {
        file: file.clone(),
        source: SpecError {
            path: "training".into(),
            message: e.to_string(),
        },
    })?;
    let Some(section) = doc.get("training") else {
        return Err(TrainLoadError::NoTraining { file });
    };
    let spec = TrainingSpec::from_json(section).map_err(|source| TrainLoadError::Spec {
        file: file.clone(),
        source,
    })?;
    let step = build_step(&graph, &spec).map_err(|source| TrainLoadError::Step {
        file,
        source: Box::new(source),
    })?;
    Ok((graph, step))
}
