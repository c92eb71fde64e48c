//! The `training` section of model.json: loss, labels, trainable params, optimizer, gradient
//! clipping and precision policy, parsed with JSON paths in errors and validated against the
//! graph.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use crate::ir::{DType, Graph, ValueId};

/// Which loss, on which output, against which labels.
#[derive(Deserialize, Serialize, Debug, Clone, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LossSpec {
    /// `cross_entropy` or `mse`.
    pub kind: LossKind,
    /// The graph output the loss applies to (logits for cross entropy).
    pub output: String,
}

/// The loss functions.
#[derive(Deserialize, Serialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum LossKind {
    /// Softmax cross entropy over the last axis, mean over the other axes. Labels are class
    /// indices (integer, the output's shape without its last axis) or probabilities (f32, the
    /// output's shape).
    CrossEntropy,
    /// Mean squared error against f32 targets of the output's shape.
    Mse,
}

/// The labels input the training step adds to the graph.
#[derive(Deserialize, Serialize, Debug, Clone, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LabelsSpec {
    /// Input name (must not clash with the model's values).
    pub name: String,
    /// Shape.
    pub shape: Vec<usize>,
    /// Dtype: `i32`/`i64` class indices, or `f32` probabilities / regression targets.
    #[serde(default = "default_label_dtype")]
    pub dtype: String,
}

fn default_label_dtype() -> String {
    "i64".into()
}

/// The optimizers.
#[derive(Deserialize, Serialize, Debug, Clone, PartialEq)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum OptimizerSpec {
    /// SGD with optional momentum and (L2) weight decay, as `torch.optim.SGD`.
    Sgd {
        /// Learning rate.
        lr: f64,
        /// Momentum (default 0: no state).
        #[serde(default)]
        momentum: f64,
        /// L2 weight decay added to the gradient (default 0).
        #[serde(default)]
        weight_decay: f64,
    },
    /// Adam with L2 weight decay, as `torch.optim.Adam`.
    Adam {
        /// Learning rate (default 1e-3).
        #[serde(default = "default_lr")]
        lr: f64,
        /// `[beta1, beta2]` (default `[0.9, 0.999]`).
        #[serde(default = "default_betas")]
        betas: [f64; 2],
        /// Denominator epsilon (default 1e-8).
        #[serde(default = "default_eps")]
        eps: f64,
        /// L2 weight decay added to the gradient (default 0).
        #[serde(default)]
        weight_decay: f64,
    },
    /// Adam with decoupled weight decay, as `torch.optim.AdamW`.
    Adamw {
        /// Learning rate (default 1e-3).
        #[serde(default = "default_lr")]
        lr: f64,
        /// `[beta1, beta2]` (default `[0.9, 0.999]`).
        #[serde(default = "default_betas")]
        betas: [f64; 2],
        /// Denominator epsilon (default 1e-8).
        #[serde(default = "default_eps")]
        eps: f64,
        /// Decoupled weight decay (default 0.01).
        #[serde(default = "default_wd")]
        weight_decay: f64,
    },
}

fn default_lr() -> f64 {
    1e-3
}
fn default_betas() -> [f64; 2] {
    [0.9, 0.999]
}
fn default_eps() -> f64 {
    1e-8
}
fn default_wd() -> f64 {
    0.01
}

impl OptimizerSpec {
    /// The learning rate.
    pub fn lr(&self) -> f64 {
        match self {
            OptimizerSpec::Sgd { lr, .. }
            | OptimizerSpec::Adam { lr, .. }
            | OptimizerSpec::Adamw { lr, .. } => *lr,
        }
    }

    /// The name in model.json.
    pub fn name(&self) -> &'static str {
        match self {
            OptimizerSpec::Sgd { .. } => "sgd",
            OptimizerSpec::Adam { .. } => "adam",
            OptimizerSpec::Adamw { .. } => "adamw",
        }
    }
}

/// The precision policy of a training step.
#[derive(Deserialize, Serialize, Debug, Clone, Copy, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum PrecisionPolicy {
    /// FP32 master weights and optimizer state, BF16 matmuls (the default).
    #[default]
    Bf16Mixed,
    /// Everything in FP32.
    Fp32,
    /// FP32 master weights, FP16 matmuls, dynamic loss scaling (the loop halves the scale and
    /// skips the step when a gradient is not finite, doubles it after 2000 good steps).
    Fp16LossScaling,
    /// BF16 weights updated with stochastic rounding (Trainium's way; the optimizer state
    /// stays FP32).
    Bf16Sr,
}

impl PrecisionPolicy {
    /// The model.json spelling.
    pub fn name(self) -> &'static str {
        match self {
            PrecisionPolicy::Bf16Mixed => "bf16_mixed",
            PrecisionPolicy::Fp32 => "fp32",
            PrecisionPolicy::Fp16LossScaling => "fp16_loss_scaling",
            PrecisionPolicy::Bf16Sr => "bf16_sr",
        }
    }
}

/// The `training` section.
#[derive(Deserialize, Serialize, Debug, Clone, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TrainingSpec {
    /// The loss.
    pub loss: LossSpec,
    /// The labels input.
    pub labels: LabelsSpec,
    /// Trainable params by name; a name ending in `*` matches every param with that
    /// prefix (default: every float param).
    #[serde(default)]
    pub trainable: Option<Vec<String>>,
    /// Params to keep constant, by name or `prefix*`, removed from the trainable set.
    #[serde(default)]
    pub frozen: Vec<String>,
    /// The optimizer.
    pub optimizer: OptimizerSpec,
    /// Clip gradients to this global L2 norm (default: no clipping).
    #[serde(default)]
    pub clip_grad_norm: Option<f64>,
    /// The precision policy (default `bf16_mixed`).
    #[serde(default)]
    pub precision: PrecisionPolicy,
}

/// A `training` section that does not fit the graph, with its JSON path.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {message}")]
pub struct SpecError {
    /// JSON path, e.g. `training.loss.output`.
    pub path: String,
    /// What is wrong: expected vs found.
    pub message: String,
}

fn err(path: &str, message: impl Into<String>) -> SpecError {
    SpecError {
        path: path.to_string(),
        message: message.into(),
    }
}

/// The params named `pattern`, or starting with its prefix when it ends in `*`.
fn matching_params(graph: &Graph, pattern: &str) -> Vec<ValueId> {
    graph
        .params
        .iter()
        .copied()
        .filter(|&p| {
            let name = &graph.value(p).name;
            match pattern.strip_suffix('*') {
                Some(prefix) => name.starts_with(prefix),
                None => name == pattern,
            }
        })
        .collect()
}

/// The spec resolved against a graph.
#[derive(Debug, Clone)]
pub struct ResolvedSpec {
    /// The loss output.
    pub output: ValueId,
    /// The trainable params, in declaration order.
    pub trainable: Vec<ValueId>,
    /// The labels dtype.
    pub label_dtype: DType,
}

impl TrainingSpec {
    /// Parses the `training` value of a model.json document.
    pub fn from_json(v: &serde_json::Value) -> Result<TrainingSpec, SpecError> {
        serde_path_to_error::deserialize(v).map_err(|e| {
            let p = e.path().to_string();
            let path = if p == "." {
                "training".to_string()
            } else {
                format!("training.{p}")
            };
            err(&path, e.inner().to_string())
        })
    }

    /// Checks the spec against `graph` and resolves names to ids.
    pub fn resolve(&self, graph: &Graph) -> Result<ResolvedSpec, SpecError> {
        let Some(output) = graph
            .outputs
            .iter()
            .copied()
            .find(|&o| graph.value(o).name == self.loss.output)
        else {
            let outs: Vec<&str> = graph
                .outputs
                .iter()
                .map(|&o| graph.value(o).name.as_str())
                .collect();
            return Err(err(
                "training.loss.output",
                format!(
                    "'{}' is not a graph output; outputs: {}",
                    self.loss.output,
                    outs.join(", ")
                ),
            ));
        };
        let out = graph.value(output);
        if out.dtype != DType::F32 {
            return Err(err(
                "training.loss.output",
                format!("expected an f32 output, found {} '{}'", out.dtype, out.name),
            ));
        }
        let label_dtype = self.labels.dtype.parse::<DType>().map_err(|_| {
            err(
                "training.labels.dtype",
                format!("expected i32, i64 or f32, found '{}'", self.labels.dtype),
            )
        })?;
        if graph.value_by_name(&self.labels.name).is_some() {
            return Err(err(
                "training.labels.name",
                format!(
                    "'{}' is already a value of the model; pick a new name",
                    self.labels.name
                ),
            ));
        }
        let expect_shape: Vec<usize> = match (self.loss.kind, label_dtype) {
            (LossKind::CrossEntropy, DType::I32 | DType::I64) => {
                if out.shape.len() < 2 {
                    return Err(err(
                        "training.loss.output",
                        format!(
                            "cross entropy needs logits of rank >= 2 (classes on the last \
                             axis), found shape {:?}",
                            out.shape
                        ),
                    ));
                }
                out.shape[..out.shape.len() - 1].to_vec()
            }
            (LossKind::CrossEntropy | LossKind::Mse, DType::F32) => out.shape.clone(),
            (LossKind::Mse, _) => {
                return Err(err(
                    "training.labels.dtype",
                    format!("mse needs f32 targets, found {label_dtype}"),
                ));
            }
            (LossKind::CrossEntropy, _) => {
                return Err(err(
                    "training.labels.dtype",
                    format!(
                        "cross entropy needs i32/i64 class indices or f32 probabilities, \
                         found {label_dtype}"
                    ),
                ));
            }
        };
        if self.labels.shape != expect_shape {
            return Err(err(
                "training.labels.shape",
                format!(
                    "expected {:?} for {} on output '{}' of shape {:?}, found {:?}",
                    expect_shape,
                    match self.loss.kind {
                        LossKind::CrossEntropy => "cross entropy",
                        LossKind::Mse => "mse",
                    },
                    out.name,
                    out.shape,
                    self.labels.shape
                ),
            ));
        }
        let trainable = match &self.trainable {
            None => graph
                .params
                .iter()
                .copied()
                .filter(|&p| graph.value(p).dtype.is_float())
                .collect::<Vec<_>>(),
            Some(names) => {
                let mut seen = BTreeSet::new();
                let mut ids = Vec::new();
                for (i, n) in names.iter().enumerate() {
                    let path = format!("training.trainable[{i}]");
                    let matched = matching_params(graph, n);
                    if matched.is_empty() {
                        return Err(err(&path, format!("'{n}' matches no param of the model")));
                    }
                    for p in matched {
                        let v = graph.value(p);
                        if !v.dtype.is_float() {
                            if n.ends_with('*') {
                                continue;
                            }
                            return Err(err(
                                &path,
                                format!("'{n}' is {}, not a float param", v.dtype),
                            ));
                        }
                        if !seen.insert(p) {
                            return Err(err(&path, format!("'{}' is listed twice", v.name)));
                        }
                        ids.push(p);
                    }
                }
                ids
            }
        };
        let mut trainable = trainable;
        for (i, n) in self.frozen.iter().enumerate() {
            let matched = matching_params(graph, n);
            if matched.is_empty() {
                return Err(err(
                    &format!("training.frozen[{i}]"),
                    format!("'{n}' matches no param of the model"),
                ));
            }
            trainable.retain(|p| !matched.contains(p));
        }
        if trainable.is_empty() {
            return Err(err("training.trainable", "no float param to train"));
        }
        let lr = self.optimizer.lr();
        if !(lr.is_finite() && lr > 0.0) {
            return Err(err(
                "training.optimizer.lr",
                format!("expected a positive finite learning rate, found {lr}"),
            ));
        }
        let check01 = |path: &str, v: f64| {
            if (0.0..1.0).contains(&v) {
                Ok(())
            } else {
                Err(err(path, format!("expected a value in [0, 1), found {v}")))
            }
        };
        let nonneg = |path: &str, v: f64| {
            if v.is_finite() && v >= 0.0 {
                Ok(())
            } else {
                Err(err(
                    path,
                    format!("expected a non-negative finite value, found {v}"),
                ))
            }
        };
        match &self.optimizer {
            OptimizerSpec::Sgd {
                momentum,
                weight_decay,
                ..
            } => {
                check01("training.optimizer.momentum", *momentum)?;
                nonneg("training.optimizer.weight_decay", *weight_decay)?;
            }
            OptimizerSpec::Adam {
                betas,
                eps,
                weight_decay,
                ..
            }
            | OptimizerSpec::Adamw {
                betas,
                eps,
                weight_decay,
                ..
            } => {
                check01("training.optimizer.betas[0]", betas[0])?;
                check01("training.optimizer.betas[1]", betas[1])?;
                if !(eps.is_finite() && *eps > 0.0) {
                    return Err(err(
                        "training.optimizer.eps",
                        format!("expected a positive finite value, found {eps}"),
                    ));
                }
                nonneg("training.optimizer.weight_decay", *weight_decay)?;
            }
        }
        if let Some(c) = self.clip_grad_norm
            && !(c.is_finite() && c > 0.0)
        {
            return Err(err(
                "training.clip_grad_norm",
                format!("expected a positive finite norm, found {c}"),
            ));
        }
        Ok(ResolvedSpec {
            output,
            trainable,
            label_dtype,
        })
    }
}
