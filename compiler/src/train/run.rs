//! The training loop: batches from a data set, one step per batch, state fed back from each
//! step's `/next` outputs, loss and accuracy per epoch, dynamic loss scaling.
//!
//! The loop is generic over the thing that runs a step ([`StepRunner`]): the reference
//! executor here, the simulated chip in the runtime (`neuron-sim train`).

use std::collections::BTreeMap;

use ndarray::{ArrayD, Axis};

use crate::ir::Tensor;
use crate::reference::{RefOptions, run_reference};
use crate::rng::SeededRng;

use super::spec::{LossKind, PrecisionPolicy};
use super::step::{GRAD_SQ, LOSS, StepInterface, TrainingStep};

/// Dynamic loss scaling (`fp16_loss_scaling`), as `torch.cuda.amp.GradScaler`'s defaults:
/// the first step's loss scale.
pub const INITIAL_LOSS_SCALE: f32 = 65536.0;
/// Dynamic loss scaling: the scale doubles after this many consecutive steps with finite
/// gradients (a step with a non-finite gradient is skipped and halves it, down to 1).
pub const LOSS_SCALE_GROWTH_INTERVAL: u32 = 2000;

/// Runs one training step: inputs by name in, outputs by name out.
pub trait StepRunner {
    /// Runs the step graph on `inputs`.
    fn run_step(
        &mut self,
        inputs: &BTreeMap<String, Tensor>,
    ) -> Result<BTreeMap<String, Tensor>, String>;
}

/// Runs steps with the reference executor (in f64 on request).
pub struct ReferenceRunner<'s> {
    /// The step.
    pub step: &'s TrainingStep,
    /// Executor options.
    pub opts: RefOptions,
}

impl StepRunner for ReferenceRunner<'_> {
    fn run_step(
        &mut self,
        inputs: &BTreeMap<String, Tensor>,
    ) -> Result<BTreeMap<String, Tensor>, String> {
        let mut out =
            run_reference(&self.step.graph, inputs, self.opts).map_err(|e| e.to_string())?;
        // f64 runs return f64 tensors; the loop carries f32 state like the chip.
        if self.opts.f64 {
            for t in out.values_mut() {
                if let Tensor::F64(a) = t {
                    *t = Tensor::F32(a.mapv(|x| x as f32));
                }
            }
        }
        Ok(out)
    }
}

/// Loop settings.
#[derive(Debug, Clone, Copy)]
pub struct LoopConfig {
    /// Epochs.
    pub epochs: usize,
    /// Shuffle the examples each epoch.
    pub shuffle: bool,
    /// Seed of the shuffle.
    pub seed: u64,
}

/// What one step reported.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepReport {
    /// Epoch (0-based).
    pub epoch: usize,
    /// Step within the run (1-based).
    pub step: u64,
    /// The batch's loss.
    pub loss: f64,
    /// Correct predictions in the batch (cross entropy over class indices only).
    pub correct: usize,
    /// Whether the update was skipped (non-finite gradients under loss scaling).
    pub skipped: bool,
}

/// One epoch's summary.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EpochReport {
    /// Epoch (0-based).
    pub epoch: usize,
    /// Mean batch loss.
    pub loss: f64,
    /// Training accuracy over the epoch's examples, if the loss has class indices.
    pub accuracy: Option<f64>,
    /// Steps run.
    pub steps: u64,
}

/// Why the loop stopped.
#[derive(Debug, thiserror::Error)]
pub enum LoopError {
    /// The data set does not fit the step.
    #[error("{0}")]
    Data(String),
    /// A step failed.
    #[error("step {step}: {message}")]
    Step {
        /// The step (1-based).
        step: u64,
        /// What went wrong.
        message: String,
    },
}

/// The carried state: params and optimizer state by input name.
#[derive(Debug, Clone)]
pub struct TrainState {
    /// Current values of the carried inputs.
    pub values: BTreeMap<String, Tensor>,
    /// Steps taken (updates applied or skipped).
    pub step: u64,
    /// Updates applied (steps not skipped): Adam's bias corrections count these, as a
    /// skipped `GradScaler` step does not call `optimizer.step()`.
    pub updates: u64,
    /// Current loss scale.
    pub loss_scale: f32,
    good_steps: u32,
}

impl TrainState {
    /// The state before the first step.
    pub fn new(step: &StepInterface) -> TrainState {
        let loss_scale = if step.spec.precision == PrecisionPolicy::Fp16LossScaling {
            INITIAL_LOSS_SCALE
        } else {
            1.0
        };
        TrainState {
            values: step
                .carried
                .iter()
                .map(|c| (c.name.clone(), c.initial.clone()))
                .collect(),
            step: 0,
            updates: 0,
            loss_scale,
            good_steps: 0,
        }
    }
}

/// Checks that `data` and `labels` fit the step and returns the number of examples.
pub fn check_data(
    step: &StepInterface,
    data: &Tensor,
    labels: &Tensor,
) -> Result<usize, LoopError> {
    let [iv] = step.data_inputs.as_slice() else {
        return Err(LoopError::Data(format!(
            "training from a data file needs a model with exactly one input, found {} ({})",
            step.data_inputs.len(),
            step.data_inputs
                .iter()
                .map(|v| v.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )));
    };
    let input = &iv.name;
    let lv = &step.labels;
    let batch = iv.shape.first().copied().unwrap_or(0);
    if batch == 0 {
        return Err(LoopError::Data(format!(
            "input '{input}' of shape {:?} has no batch dimension (expected [batch, ...] with batch >= 1)",
            iv.shape
        )));
    }
    let n = data.shape().first().copied().unwrap_or(0);
    if data.shape().len() != iv.shape.len() || data.shape()[1..] != iv.shape[1..] {
        return Err(LoopError::Data(format!(
            "data: expected shape [N, {}] for input '{input}' of shape {:?} (batch {batch}), found {:?}",
            iv.shape[1..]
                .iter()
                .map(|d| d.to_string())
                .collect::<Vec<_>>()
                .join(", "),
            iv.shape,
            data.shape()
        )));
    }
    if labels.shape().first() != Some(&n) || labels.shape()[1..] != lv.shape[1..] {
        return Err(LoopError::Data(format!(
            "labels: expected shape [{n}{}] (one row per example of the data), found {:?}",
            lv.shape[1..]
                .iter()
                .map(|d| format!(", {d}"))
                .collect::<String>(),
            labels.shape()
        )));
    }
    let label_ok = if lv.dtype.is_int() {
        labels.dtype().is_int()
    } else {
        labels.dtype().is_float()
    };
    if !label_ok {
        return Err(LoopError::Data(format!(
            "labels: expected {} values, found {}",
            if lv.dtype.is_int() {
                "integer class index"
            } else {
                "float"
            },
            labels.dtype()
        )));
    }
    if lv.dtype.is_int() {
        let c = *step.output.shape.last().unwrap_or(&0) as i64;
        if let Some((i, &bad)) = labels
            .to_i64()
            .iter()
            .enumerate()
            .find(|(_, l)| **l < 0 || **l >= c)
        {
            return Err(LoopError::Data(format!(
                "labels: element {i} is {bad}, outside the {c} classes 0..{c} of output '{}'",
                step.output.name
            )));
        }
    }
    if n < batch {
        return Err(LoopError::Data(format!(
            "data: {n} examples are fewer than one batch of {batch}"
        )));
    }
    Ok(n)
}

fn take_rows(t: &Tensor, rows: &[usize], dtype: crate::ir::DType) -> Tensor {
    let pick = |a: &ArrayD<f64>| a.select(Axis(0), rows);
    match t {
        Tensor::I32(a) => Tensor::I32(a.select(Axis(0), rows)).cast(dtype),
        Tensor::I64(a) => Tensor::I64(a.select(Axis(0), rows)).cast(dtype),
        Tensor::F32(a) => Tensor::F32(a.select(Axis(0), rows)).cast(dtype),
        other => Tensor::from_f64(dtype, pick(&other.to_f64())),
    }
}

/// Trains for `cfg.epochs` over `data`/`labels`, calling `on_step` after every step.
///
/// The last partial batch of an epoch is dropped (the step graph has a static batch).
pub fn train(
    step: &StepInterface,
    runner: &mut dyn StepRunner,
    state: &mut TrainState,
    data: &Tensor,
    labels: &Tensor,
    cfg: LoopConfig,
    on_step: &mut dyn FnMut(&StepReport),
) -> Result<Vec<EpochReport>, LoopError> {
    let n = check_data(step, data, labels)?;
    // `check_data` found exactly one data input.
    let iv = &step.data_inputs[0];
    let input = iv.name.clone();
    let (batch, in_dtype) = (iv.shape.first().copied().unwrap_or(1), iv.dtype);
    let label_dtype = step.labels.dtype;
    let indices = step.spec.loss.kind == LossKind::CrossEntropy && label_dtype.is_int();
    let mut order: Vec<usize> = (0..n).collect();
    let mut rng = SeededRng::for_tensor(cfg.seed, "train/shuffle");
    let mut epochs = Vec::new();
    for epoch in 0..cfg.epochs {
        if cfg.shuffle {
            // Fisher-Yates with the platform-independent generator.
            for i in (1..n).rev() {
                let j = rng.below(i as u64 + 1) as usize;
                order.swap(i, j);
            }
        }
        let (mut loss_sum, mut correct, mut seen, mut steps) = (0.0, 0usize, 0usize, 0u64);
        for chunk in order.chunks_exact(batch) {
            state.step += 1;
            let mut inputs = state.values.clone();
            inputs.insert(input.clone(), take_rows(data, chunk, in_dtype));
            let y = take_rows(labels, chunk, label_dtype);
            inputs.insert(step.labels.name.clone(), y.clone());
            inputs.extend(step.scalars(state.updates + 1, state.loss_scale));
            let out = runner
                .run_step(&inputs)
                .map_err(|message| LoopError::Step {
                    step: state.step,
                    message,
                })?;
            let get = |name: &str| {
                out.get(name).ok_or_else(|| LoopError::Step {
                    step: state.step,
                    message: format!("the step produced no output '{name}'"),
                })
            };
            let loss = get(LOSS)?
                .to_f64()
                .iter()
                .next()
                .copied()
                .unwrap_or(f64::NAN);
            let grad_sq = get(GRAD_SQ)?
                .to_f64()
                .iter()
                .next()
                .copied()
                .unwrap_or(f64::NAN);
            let finite = grad_sq.is_finite();
            let scaling = step.spec.precision == PrecisionPolicy::Fp16LossScaling;
            let skipped = scaling && !finite;
            if skipped {
                state.loss_scale = (state.loss_scale / 2.0).max(1.0);
                state.good_steps = 0;
            } else {
                state.updates += 1;
                for c in &step.carried {
                    let v = get(&c.next)?;
                    state
                        .values
                        .insert(c.name.clone(), v.cast(crate::ir::DType::F32));
                }
                if scaling {
                    state.good_steps += 1;
                    if state.good_steps >= LOSS_SCALE_GROWTH_INTERVAL {
                        state.loss_scale *= 2.0;
                        state.good_steps = 0;
                    }
                }
            }
            let mut batch_correct = 0;
            if indices {
                let logits = get(&step.output.name)?.to_f64();
                let c = logits.shape()[logits.ndim() - 1];
                let flat = logits
                    .as_standard_layout()
                    .into_shape_with_order((logits.len() / c, c))
                    .map_err(|e| LoopError::Data(e.to_string()))?
                    .to_owned();
                for (row, label) in flat.rows().into_iter().zip(y.to_i64().iter()) {
                    let arg = row
                        .iter()
                        .enumerate()
                        .fold(
                            (0, f64::NEG_INFINITY),
                            |b, (i, &v)| if v > b.1 { (i, v) } else { b },
                        )
                        .0;
                    if arg as i64 == *label {
                        batch_correct += 1;
                    }
                }
            }
            correct += batch_correct;
            seen += y.num_elements();
            loss_sum += loss;
            steps += 1;
            on_step(&StepReport {
                epoch,
                step: state.step,
                loss,
                correct: batch_correct,
                skipped,
            });
        }
        epochs.push(EpochReport {
            epoch,
            loss: loss_sum / steps.max(1) as f64,
            accuracy: indices.then(|| correct as f64 / seen.max(1) as f64),
            steps,
        });
    }
    Ok(epochs)
}
