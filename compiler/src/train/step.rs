//! One training step as an ordinary graph: forward, loss, backward ([`crate::autodiff`]),
//! gradient clipping and the optimizer update.
//!
//! The step graph's inputs are the model's inputs, the labels, every trainable param (now an
//! input: it changes every step), the optimizer state and the per-step scalars; its outputs
//! are the loss, the loss output (logits), the sum of squared gradients, the updated params
//! (`{param}/next`) and the updated state (`{state}/next`). A training loop feeds each step's
//! `/next` outputs back as the next step's inputs, so the compiled program is the same for
//! every step and weights and optimizer state live in device memory between steps.

use std::collections::BTreeMap;

use ndarray::{ArrayD, IxDyn};

use crate::autodiff::{AutodiffError, Builder, differentiate};
use crate::ir::{DType, Graph, GraphError, Op, Tensor, ValueId};

use super::spec::{
    LossKind, OptimizerSpec, PrecisionPolicy, ResolvedSpec, SpecError, TrainingSpec,
};

/// Name of the loss output.
pub const LOSS: &str = "train/loss";
/// Name of the sum-of-squared-gradients output (after loss-scale removal, before clipping).
pub const GRAD_SQ: &str = "train/grad_sq";
/// Adam: `lr / (1 - beta1^t)`, a `[1]` input.
pub const STEP_SIZE: &str = "train/step_size";
/// Adam: `1 / sqrt(1 - beta2^t)`, a `[1]` input.
pub const BC2_RSQRT: &str = "train/bc2_rsqrt";
/// The loss scale (1 unless the policy scales the loss), a `[1]` input.
pub const LOSS_SCALE: &str = "train/loss_scale";

/// The `/next` output name of a param or state input.
pub fn next_name(name: &str) -> String {
    format!("{name}/next")
}

/// Why a training step could not be built.
#[derive(Debug, thiserror::Error)]
pub enum StepError {
    /// The `training` section does not fit the model.
    #[error("invalid training section: {0}")]
    Spec(#[from] SpecError),
    /// The backward pass could not be built.
    #[error("cannot build the backward pass: {0}")]
    Autodiff(#[from] Box<AutodiffError>),
    /// A node of the loss or the optimizer could not be built.
    #[error("cannot build the training step: {0}")]
    Graph(#[from] GraphError),
    /// The model has no data for a trainable param.
    #[error("trainable param '{0}' has no data (give it an init, a value or weights)")]
    NoData(String),
}

/// A piece of state the loop carries from one step to the next.
#[derive(Debug, Clone)]
pub struct Carried {
    /// Input name.
    pub name: String,
    /// Output name of its next value.
    pub next: String,
    /// Its value before the first step.
    pub initial: Tensor,
    /// A trainable param (else optimizer state).
    pub is_param: bool,
}

/// A graph value the training loop binds or reads.
#[derive(Debug, Clone, PartialEq)]
pub struct IoValue {
    /// Its name.
    pub name: String,
    /// Its shape.
    pub shape: Vec<usize>,
    /// Its dtype.
    pub dtype: DType,
}

impl IoValue {
    fn of(g: &Graph, v: ValueId) -> IoValue {
        let v = g.value(v);
        IoValue {
            name: v.name.clone(),
            shape: v.shape.clone(),
            dtype: v.dtype,
        }
    }
}

/// What the training loop needs to know about a step, without its graph: the `training`
/// section, the data, labels and loss output, and the state carried from step to step. A
/// compiled step's artifact carries it (`neuronc::train::compile_step`), so the loop runs
/// from a `.neff` alone.
#[derive(Debug, Clone)]
pub struct StepInterface {
    /// The spec the step was built from.
    pub spec: TrainingSpec,
    /// The model inputs the data feeds (all of them, in declaration order).
    pub data_inputs: Vec<IoValue>,
    /// The labels input.
    pub labels: IoValue,
    /// The loss output (logits for cross entropy).
    pub output: IoValue,
    /// Trainable params, then optimizer state.
    pub carried: Vec<Carried>,
    /// Number of trainable scalars.
    pub trainable_elements: usize,
    /// Bytes of forward activations the backward pass reads (kept in device memory from
    /// the forward pass to the backward pass; nothing is recomputed).
    pub saved_activation_bytes: u64,
}

/// A built training step: its graph and its interface.
#[derive(Debug, Clone)]
pub struct TrainingStep {
    /// The step graph.
    pub graph: Graph,
    /// Its first nodes are the model's forward pass, the rest the loss, backward pass and
    /// optimizer.
    pub forward_nodes: usize,
    /// What the loop needs.
    pub iface: StepInterface,
}

impl StepInterface {
    /// The per-step scalar inputs for step `t` (1-based) and loss scale.
    pub fn scalars(&self, t: u64, loss_scale: f32) -> BTreeMap<String, Tensor> {
        let one = |v: f64| Tensor::F32(ArrayD::from_elem(IxDyn(&[1]), v as f32));
        let mut m = BTreeMap::new();
        m.insert(LOSS_SCALE.to_string(), one(f64::from(loss_scale)));
        if let OptimizerSpec::Adam { lr, betas, .. } | OptimizerSpec::Adamw { lr, betas, .. } =
            &self.spec.optimizer
        {
            let t = t.min(i32::MAX as u64) as i32;
            let bc1 = 1.0 - betas[0].powi(t);
            let bc2 = 1.0 - betas[1].powi(t);
            m.insert(STEP_SIZE.to_string(), one(lr / bc1));
            m.insert(BC2_RSQRT.to_string(), one(1.0 / bc2.sqrt()));
        }
        m
    }
}

/// Builds the training step of `model` for `spec`.
pub fn build_step(model: &Graph, spec: &TrainingSpec) -> Result<TrainingStep, StepError> {
    let resolved: ResolvedSpec = spec.resolve(model)?;
    let mut g = model.clone();
    let data_inputs: Vec<IoValue> = g.inputs.iter().map(|&i| IoValue::of(&g, i)).collect();
    let output = IoValue::of(&g, resolved.output);
    for name in [LOSS, GRAD_SQ, STEP_SIZE, BC2_RSQRT, LOSS_SCALE] {
        if g.value_by_name(name).is_some() {
            return Err(SpecError {
                path: "training".into(),
                message: format!(
                    "the model already has a value named '{name}', which the training step needs"
                ),
            }
            .into());
        }
    }
    // Trainable params become inputs: their value changes every step.
    let mut carried = Vec::new();
    let mut trainable_elements = 0usize;
    for &p in &resolved.trainable {
        let v = g.value_mut(p);
        let Some(data) = v.data.take() else {
            return Err(StepError::NoData(v.name.clone()));
        };
        trainable_elements += data.num_elements();
        let data = data.tensor();
        let initial = if data.dtype() == DType::F32 {
            data.clone()
        } else {
            data.cast(DType::F32)
        };
        carried.push(Carried {
            name: v.name.clone(),
            next: next_name(&v.name),
            initial,
            is_param: true,
        });
    }
    g.params.retain(|p| !resolved.trainable.contains(p));
    g.inputs.extend(resolved.trainable.iter().copied());
    // The graph's own outputs are replaced by the step's.
    g.outputs.clear();

    let labels = g.add_input(
        spec.labels.name.clone(),
        spec.labels.shape.clone(),
        resolved.label_dtype,
    )?;
    let loss_scale = g.add_input(LOSS_SCALE, [1usize], DType::F32)?;
    let (step_size, bc2_rsqrt) = match spec.optimizer {
        OptimizerSpec::Adam { .. } | OptimizerSpec::Adamw { .. } => (
            Some(g.add_input(STEP_SIZE, [1usize], DType::F32)?),
            Some(g.add_input(BC2_RSQRT, [1usize], DType::F32)?),
        ),
        OptimizerSpec::Sgd { .. } => (None, None),
    };

    let forward_nodes = g.nodes.len();
    let mut b = Builder::new(&mut g, "train/");
    let out = resolved.output;
    let (loss, seed) = match spec.loss.kind {
        LossKind::CrossEntropy => cross_entropy(&mut b, out, labels)?,
        LossKind::Mse => mse(&mut b, out, labels)?,
    };
    let seed = b.mul(seed, loss_scale)?;
    let grads = differentiate(&mut b, out, seed, &resolved.trainable).map_err(Box::new)?;

    // Undo the loss scale, then measure (and optionally clip) the global norm.
    let inv_scale = b.op(Op::Reciprocal, &[loss_scale])?;
    let mut grads: Vec<ValueId> = grads
        .into_iter()
        .map(|gr| b.mul(gr, inv_scale))
        .collect::<Result<_, _>>()?;
    let mut sq_terms = Vec::new();
    for &gr in &grads {
        let r = b.graph.value(gr).shape.len();
        let sq = b.mul(gr, gr)?;
        let s = b.reduce_sum(sq, (0..r as i64).collect(), true)?;
        sq_terms.push(b.reshape(s, &[1])?);
    }
    let mut total = sq_terms[0];
    for &t in &sq_terms[1..] {
        total = b.add(total, t)?;
    }
    let grad_sq = b
        .graph
        .add_node(GRAD_SQ, Op::Reshape { shape: vec![1] }, &[total], GRAD_SQ)?;
    if let Some(max_norm) = spec.clip_grad_norm {
        // coef = min(max_norm / (norm + 1e-6), 1), as torch.nn.utils.clip_grad_norm_.
        let norm = b.op(Op::Sqrt, &[grad_sq])?;
        let d = b.offset(norm, 1e-6)?;
        let r = b.op(Op::Reciprocal, &[d])?;
        let c = b.scale(r, max_norm as f32)?;
        let one = b.scalar(1.0)?;
        let coef = b.op(Op::Min, &[c, one])?;
        grads = grads
            .into_iter()
            .map(|gr| b.mul(gr, coef))
            .collect::<Result<_, _>>()?;
    }

    let mut outputs = vec![];
    let mut state = Vec::new();
    let sr = spec.precision == PrecisionPolicy::Bf16Sr;
    for (i, (&p, &gr)) in resolved.trainable.iter().zip(&grads).enumerate() {
        let pname = carried[i].name.clone();
        let shape = b.graph.value(p).shape.clone();
        let next = match spec.optimizer {
            OptimizerSpec::Sgd {
                lr,
                momentum,
                weight_decay,
            } => {
                let gr = if weight_decay > 0.0 {
                    let wd = b.scale(p, weight_decay as f32)?;
                    b.add(gr, wd)?
                } else {
                    gr
                };
                let upd = if momentum > 0.0 {
                    let buf = format!("{pname}/momentum");
                    let buf_in = b.graph.add_input(buf.clone(), shape.clone(), DType::F32)?;
                    let decayed = b.scale(buf_in, momentum as f32)?;
                    let nb = b.graph.add_node(
                        next_name(&buf),
                        Op::Add,
                        &[decayed, gr],
                        next_name(&buf),
                    )?;
                    state.push((buf, nb, shape.clone()));
                    nb
                } else {
                    gr
                };
                let step = b.scale(upd, lr as f32)?;
                b.sub(p, step)?
            }
            OptimizerSpec::Adam {
                lr,
                betas,
                eps,
                weight_decay,
            }
            | OptimizerSpec::Adamw {
                lr,
                betas,
                eps,
                weight_decay,
            } => {
                let decoupled = matches!(spec.optimizer, OptimizerSpec::Adamw { .. });
                let gr = if !decoupled && weight_decay > 0.0 {
                    let wd = b.scale(p, weight_decay as f32)?;
                    b.add(gr, wd)?
                } else {
                    gr
                };
                let w = if decoupled && weight_decay > 0.0 {
                    b.scale(p, (1.0 - lr * weight_decay) as f32)?
                } else {
                    p
                };
                let (m_name, v_name) = (format!("{pname}/adam_m"), format!("{pname}/adam_v"));
                let m_in = b
                    .graph
                    .add_input(m_name.clone(), shape.clone(), DType::F32)?;
                let v_in = b
                    .graph
                    .add_input(v_name.clone(), shape.clone(), DType::F32)?;
                let m1 = b.scale(m_in, betas[0] as f32)?;
                let g1 = b.scale(gr, (1.0 - betas[0]) as f32)?;
                let m_next =
                    b.graph
                        .add_node(next_name(&m_name), Op::Add, &[m1, g1], next_name(&m_name))?;
                let v1 = b.scale(v_in, betas[1] as f32)?;
                let g2 = b.mul(gr, gr)?;
                let g2 = b.scale(g2, (1.0 - betas[1]) as f32)?;
                let v_next =
                    b.graph
                        .add_node(next_name(&v_name), Op::Add, &[v1, g2], next_name(&v_name))?;
                state.push((m_name, m_next, shape.clone()));
                state.push((v_name, v_next, shape.clone()));
                let (Some(ss), Some(bc2)) = (step_size, bc2_rsqrt) else {
                    unreachable!("adam inputs are added above")
                };
                let sq = b.op(Op::Sqrt, &[v_next])?;
                let denom = b.mul(sq, bc2)?;
                let denom = b.offset(denom, eps as f32)?;
                let ratio = b.div(m_next, denom)?;
                let step = b.mul(ratio, ss)?;
                b.sub(w, step)?
            }
        };
        // Name the updated param `{param}/next` (bf16 when weights are kept in bf16).
        let nn = next_name(&pname);
        let named = if sr {
            b.graph
                .add_node(nn.clone(), Op::Cast { dtype: DType::Bf16 }, &[next], nn)?
        } else {
            b.graph.add_node(
                nn.clone(),
                Op::Reshape {
                    shape: shape.iter().map(|&d| d as i64).collect(),
                },
                &[next],
                nn,
            )?
        };
        outputs.push(named);
    }
    for (name, next, shape) in state {
        carried.push(Carried {
            next: next_name(&name),
            name,
            initial: Tensor::zeros(DType::F32, &shape),
            is_param: false,
        });
        outputs.push(next);
    }
    let loss = b
        .graph
        .add_node(LOSS, Op::Reshape { shape: vec![1] }, &[loss], LOSS)?;
    g.add_output(loss)?;
    g.add_output(out)?;
    g.add_output(grad_sq)?;
    for o in outputs {
        g.add_output(o)?;
    }
    g.verify()?;
    // Forward activations (outputs of the model's own nodes) that backward nodes read.
    let saved = super::recompute::saved(&g, forward_nodes);
    let saved_activation_bytes = saved
        .iter()
        .map(|&v| {
            let v = g.value(v);
            (v.shape.iter().product::<usize>() * v.dtype.size_bytes()) as u64
        })
        .sum();
    let labels = IoValue::of(&g, labels);
    Ok(TrainingStep {
        graph: g,
        forward_nodes,
        iface: StepInterface {
            spec: spec.clone(),
            data_inputs,
            labels,
            output,
            carried,
            trainable_elements,
            saved_activation_bytes,
        },
    })
}

/// Softmax cross entropy over the last axis, mean over the rest. Returns the loss (shape
/// `[1]`) and the gradient of the loss with respect to the logits.
fn cross_entropy(
    b: &mut Builder<'_>,
    z: ValueId,
    labels: ValueId,
) -> Result<(ValueId, ValueId), GraphError> {
    let zs = b.graph.value(z).shape.clone();
    let classes = zs[zs.len() - 1];
    let rows: usize = zs[..zs.len() - 1].iter().product();
    let target = if b.graph.value(labels).dtype.is_int() {
        // One-hot by gathering rows of the identity matrix.
        let eye = ArrayD::from_shape_fn(IxDyn(&[classes, classes]), |ix| {
            if ix[0] == ix[1] { 1.0f32 } else { 0.0 }
        });
        let eye = b.constant("eye", Tensor::F32(eye))?;
        b.op(Op::Gather { axis: 0 }, &[eye, labels])?
    } else {
        labels
    };
    let m = b.op(
        Op::ReduceMax {
            axes: vec![-1],
            keepdims: true,
        },
        &[z],
    )?;
    let shifted = b.sub(z, m)?;
    let e = b.op(Op::Exp, &[shifted])?;
    let s = b.reduce_sum(e, vec![-1], true)?;
    let lse = b.op(Op::Log, &[s])?;
    let logp = b.sub(shifted, lse)?;
    let tl = b.mul(target, logp)?;
    let row = b.reduce_sum(tl, vec![-1], true)?;
    let all: Vec<i64> = (0..zs.len() as i64).collect();
    let total = b.reduce_sum(row, all, true)?;
    let loss = b.scale(total, -1.0 / rows as f32)?;
    // d loss / d z = (softmax(z) * sum(target) - target) / rows.
    let p = b.div(e, s)?;
    let tsum = b.reduce_sum(target, vec![-1], true)?;
    let pt = b.mul(p, tsum)?;
    let d = b.sub(pt, target)?;
    let seed = b.scale(d, 1.0 / rows as f32)?;
    Ok((loss, seed))
}

/// Mean squared error. Returns the loss (shape `[1]`) and its gradient.
fn mse(b: &mut Builder<'_>, y: ValueId, target: ValueId) -> Result<(ValueId, ValueId), GraphError> {
    let ys = b.graph.value(y).shape.clone();
    let n: usize = ys.iter().product();
    let d = b.sub(y, target)?;
    let sq = b.mul(d, d)?;
    let all: Vec<i64> = (0..ys.len() as i64).collect();
    let total = b.reduce_sum(sq, all, true)?;
    let loss = b.scale(total, 1.0 / n as f32)?;
    let seed = b.scale(d, 2.0 / n as f32)?;
    Ok((loss, seed))
}
