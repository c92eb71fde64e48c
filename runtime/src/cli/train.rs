//! `neuron-sim train`: a training loop whose steps run on the simulated chip.
//!
//! The model.json's `training` section becomes one step graph (`neuronc::train`), compiled
//! once; every step binds the batch, the carried weights and optimizer state, runs the
//! program on the simulator and carries the `/next` outputs into the next step. A `.neff`
//! from `neuronc compile --train` runs the same loop: its metadata carries the step's
//! interface and initial state. With `--reference` the same loop runs on the reference
//! executor instead (the oracle; model.json only).

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use indicatif::{ProgressBar, ProgressStyle};
use neuron_isa::{Artifact, ChipConfig, Dtype};
use neuron_runtime::npy::read_npy;
use neuron_runtime::{Bindings, HostTensor, Model, RunOptions};
use neuron_sim::Rounding;
use neuronc::ir::Tensor;
use neuronc::options::CompileOptions;
use neuronc::reference::RefOptions;
use neuronc::train::{
    LoopConfig, PrecisionPolicy, ReferenceRunner, StepInterface, StepReport, StepRunner,
    TrainState, TrainingStep, compile_step, interface_from_artifact, load_training, train,
};

use crate::cli_common::UsageError;

/// `neuron-sim train` arguments.
#[derive(clap::Args, Debug)]
pub struct TrainArgs {
    /// A model.json with a `training` section, or a training step compiled from one
    /// (`neuronc compile --train model.json -o step.neff`).
    pub model: PathBuf,
    /// Training examples, one per row (a `.npy` of shape [N, ...input shape without batch]).
    #[arg(long)]
    pub data: PathBuf,
    /// Labels, one per example (`.npy`; class indices or targets, per the `training` section).
    #[arg(long)]
    pub labels: PathBuf,
    /// Batch size; must equal the model input's first dimension (the step is compiled for it).
    #[arg(long)]
    pub batch: Option<usize>,
    /// Passes over the data.
    #[arg(long, default_value_t = 1)]
    pub epochs: usize,
    /// Shuffle the examples every epoch.
    #[arg(long)]
    pub shuffle: bool,
    /// Seed of the shuffle and of stochastic rounding.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Write the trained weights here (`.safetensors`, loadable as `weights` in model.json).
    #[arg(long)]
    pub save: Option<PathBuf>,
    /// Write the profile of the last simulated step (flame graph, trace, summary with
    /// insights) to DIR.
    #[arg(long, value_name = "DIR", conflicts_with = "reference")]
    pub profile: Option<PathBuf>,
    /// Target chip: `trn1`, `trn2` or a TOML file (model.json only: a `.neff` is compiled
    /// for its target).
    #[arg(long)]
    pub target: Option<String>,
    /// Run the steps on the reference executor instead of the simulator.
    #[arg(long)]
    pub reference: bool,
    /// With --reference: compute in f64.
    #[arg(long, requires = "reference")]
    pub f64: bool,
    /// How the simulator rounds writes to narrow floats [default: `stochastic` for the
    /// `bf16_sr` precision policy, else `rne`].
    #[arg(long, value_parser = ["rne", "stochastic"])]
    pub rounding: Option<String>,
    /// Print one line per step instead of a progress bar.
    #[arg(long)]
    pub log_steps: bool,
}

/// Steps on the simulated chip.
struct ChipRunner {
    model: Model,
    rounding: Rounding,
    seed: u64,
    steps: u64,
    /// Simulated time and FLOPs of the last step.
    last_ps: u64,
    last_flops: u64,
    /// The last step's records (for `--profile`).
    last_stats: Option<neuron_sim::RunStats>,
}

fn to_host(t: &Tensor) -> HostTensor {
    match t {
        Tensor::I32(a) => HostTensor::I32(a.clone()),
        Tensor::I64(a) => HostTensor::I64(a.clone()),
        Tensor::Bool(a) => HostTensor::Bool(a.clone()),
        Tensor::I8(a) => HostTensor::I8(a.clone()),
        other => HostTensor::F32(other.to_f32()),
    }
}

fn from_host(t: &HostTensor) -> Tensor {
    match t {
        HostTensor::F32(a) => Tensor::F32(a.clone()),
        HostTensor::F64(a) => Tensor::F32(a.mapv(|x| x as f32)),
        HostTensor::I8(a) => Tensor::I8(a.clone()),
        HostTensor::U8(a) => Tensor::I32(a.mapv(i32::from)),
        HostTensor::I32(a) => Tensor::I32(a.clone()),
        HostTensor::I64(a) => Tensor::I64(a.clone()),
        HostTensor::Bool(a) => Tensor::Bool(a.clone()),
    }
}

impl StepRunner for ChipRunner {
    fn run_step(
        &mut self,
        inputs: &BTreeMap<String, Tensor>,
    ) -> Result<BTreeMap<String, Tensor>, String> {
        let mut b = Bindings::new(&self.model);
        for (name, t) in inputs {
            b.set_input(name, to_host(t)).map_err(|e| e.to_string())?;
        }
        self.steps += 1;
        let opts = RunOptions {
            timing_only: false,
            rounding: self.rounding,
            seed: self.seed.wrapping_add(self.steps),
            check_races: false,
        };
        let exec = self.model.execute(&b, &opts).map_err(|e| e.to_string())?;
        self.last_ps = exec.stats.total_ps;
        self.last_flops = exec.stats.total_flops();
        let outputs = exec
            .outputs
            .iter()
            .map(|(k, v)| (k.clone(), from_host(v)))
            .collect();
        self.last_stats = Some(exec.stats);
        Ok(outputs)
    }
}

fn compile_options(target: Option<&str>) -> anyhow::Result<CompileOptions> {
    let mut opts = CompileOptions::default();
    if let Some(t) = target {
        opts.target = ChipConfig::from_target(t).with_context(|| format!("--target {t}"))?;
    }
    Ok(opts)
}

/// Whether `path` starts with the artifact magic (else it is read as a model.json).
fn is_artifact(path: &Path) -> bool {
    use std::io::Read;
    let mut head = [0u8; 8];
    std::fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut head))
        .is_ok_and(|()| head == neuron_isa::artifact::MAGIC)
}

fn read_tensor(path: &Path) -> anyhow::Result<Tensor> {
    let t = read_npy(path)?;
    Ok(from_host(&t))
}

/// Runs `neuron-sim train`.
pub fn run(args: &TrainArgs) -> anyhow::Result<()> {
    let neff = is_artifact(&args.model);
    if neff && args.reference {
        return Err(UsageError(format!(
            "--reference runs the step graph of a model.json on the reference executor; {} is a \
             compiled step (give its model.json)",
            args.model.display()
        ))
        .into());
    }
    if neff && let Some(t) = &args.target {
        return Err(UsageError(format!(
            "--target {t}: {} is already compiled for its target (recompile the model.json with \
             `neuronc compile --train --target {t}`)",
            args.model.display()
        ))
        .into());
    }
    // The step graph (model.json only), the loop's interface, and the compiled program
    // (unless the reference executor runs the steps).
    let mut json_step: Option<TrainingStep> = None;
    let mut neff_iface: Option<StepInterface> = None;
    let mut artifact: Option<Artifact> = None;
    if neff {
        let art = Artifact::read(&args.model)
            .with_context(|| format!("invalid artifact {}", args.model.display()))?;
        neff_iface =
            Some(interface_from_artifact(&art).with_context(|| args.model.display().to_string())?);
        artifact = Some(art);
    } else {
        let (_, step) = load_training(&args.model)?;
        if !args.reference {
            let opts = compile_options(args.target.as_deref())?;
            let compiled = compile_step(&step, &opts).with_context(|| {
                format!(
                    "cannot compile the training step of {}",
                    args.model.display()
                )
            })?;
            eprintln!(
                "compiled the training step for {} ({} kernels, {} instructions)",
                compiled.artifact.meta.target.name,
                compiled.summary.total_kernels(),
                compiled.summary.total_instructions(),
            );
            for n in &compiled.summary.notes {
                eprintln!("{n}");
            }
            artifact = Some(compiled.artifact);
        }
        json_step = Some(step);
    }
    let iface: &StepInterface = match (&json_step, &neff_iface) {
        (Some(s), _) => &s.iface,
        (None, Some(i)) => i,
        (None, None) => bail!("internal error: no training step was loaded"),
    };
    let input = iface
        .data_inputs
        .first()
        .map(|v| v.name.clone())
        .unwrap_or_default();
    let batch = iface
        .data_inputs
        .first()
        .and_then(|v| v.shape.first().copied())
        .unwrap_or(0);
    if let Some(b) = args.batch
        && b != batch
    {
        bail!(
            "--batch {b}: {} is compiled for batch {batch} (the first dimension of input '{input}'); \
             change the input's shape in the model to train with another batch",
            args.model.display()
        );
    }
    let data =
        read_tensor(&args.data).with_context(|| format!("--data {}", args.data.display()))?;
    let labels =
        read_tensor(&args.labels).with_context(|| format!("--labels {}", args.labels.display()))?;
    let n = neuronc::train::check_data(iface, &data, &labels)?;
    let steps_per_epoch = (n / batch) as u64;
    eprintln!(
        "training {} ({} trainable values, {} with lr {}, {}; {} bytes of activations kept for \
         the backward pass) on {} examples, batch {batch}, {} steps per epoch{}",
        args.model.display(),
        iface.trainable_elements,
        iface.spec.optimizer.name(),
        iface.spec.optimizer.lr(),
        iface.spec.precision.name(),
        iface.saved_activation_bytes,
        n,
        steps_per_epoch,
        if n % batch != 0 {
            format!(
                " (the last {} examples of each epoch are dropped)",
                n % batch
            )
        } else {
            String::new()
        }
    );
    let mut chip = None;
    let mut reference;
    let runner: &mut dyn StepRunner = match (artifact, &json_step) {
        (Some(art), _) => {
            let model = Model::from_artifact(art)?;
            let rounding = match args.rounding.as_deref() {
                Some("rne") => Rounding::Rne,
                Some(_) => Rounding::Stochastic,
                None if iface.spec.precision == PrecisionPolicy::Bf16Sr => Rounding::Stochastic,
                None => Rounding::Rne,
            };
            chip.insert(ChipRunner {
                model,
                rounding,
                seed: args.seed,
                steps: 0,
                last_ps: 0,
                last_flops: 0,
                last_stats: None,
            })
        }
        (None, Some(step)) => {
            reference = ReferenceRunner {
                step,
                opts: RefOptions { f64: args.f64 },
            };
            &mut reference
        }
        (None, None) => bail!("internal error: nothing to run the steps on"),
    };
    let total = steps_per_epoch * args.epochs as u64;
    let bar = (std::io::stderr().is_terminal() && !args.log_steps).then(|| {
        let bar = ProgressBar::new(total);
        if let Ok(style) =
            ProgressStyle::with_template("{spinner} step {pos}/{len} [{bar:30}] {msg} ({eta})")
        {
            bar.set_style(style.progress_chars("=> "));
        }
        bar
    });
    let mut state = TrainState::new(iface);
    let mut running = None::<f64>;
    let log = args.log_steps;
    let mut on_step = |r: &StepReport| {
        running = Some(match running {
            Some(x) => 0.9 * x + 0.1 * r.loss,
            None => r.loss,
        });
        if let Some(bar) = &bar {
            bar.set_position(r.step);
            bar.set_message(format!("loss {:.4}", running.unwrap_or(r.loss)));
        } else if log {
            // The loss exactly (the shortest decimal that reads back as the same f32).
            eprintln!(
                "epoch {} step {} loss {}{}",
                r.epoch + 1,
                r.step,
                r.loss as f32,
                if r.skipped {
                    " (skipped: non-finite gradients)"
                } else {
                    ""
                }
            );
        }
    };
    let cfg = LoopConfig {
        epochs: args.epochs,
        shuffle: args.shuffle,
        seed: args.seed,
    };
    let epochs = train(iface, runner, &mut state, &data, &labels, cfg, &mut on_step)?;
    if let Some(bar) = &bar {
        bar.finish_and_clear();
    }
    for e in &epochs {
        match e.accuracy {
            Some(a) => println!(
                "epoch {:>3}  loss {:.6}  accuracy {:.2} %",
                e.epoch + 1,
                e.loss,
                100.0 * a
            ),
            None => println!("epoch {:>3}  loss {:.6}", e.epoch + 1, e.loss),
        }
    }
    if let Some(c) = &chip {
        let target = c.model.target();
        let us = c.last_ps as f64 / 1e6;
        let peak = target.peak_flops(Dtype::Bf16);
        let mfu = if c.last_ps > 0 {
            100.0 * c.last_flops as f64 / (peak * c.last_ps as f64 * 1e-12)
        } else {
            0.0
        };
        println!(
            "simulated on {}: {:.2} us per step, {:.1} samples/s per NeuronCore, MFU {:.2} % of bf16 peak",
            target.name,
            us,
            batch as f64 / (us * 1e-6),
            mfu
        );
    }
    if let (Some(dir), Some(c)) = (&args.profile, &chip)
        && let Some(stats) = &c.last_stats
    {
        neuron_runtime::write_profile(dir, &c.model, stats)?;
        println!("profile of the last step written to {}", dir.display());
    }
    if let Some(path) = &args.save {
        save_weights(path, iface, &state)?;
        println!("wrote trained weights to {}", path.display());
    }
    Ok(())
}

/// Writes the trained params (f32) as safetensors, named as in the model.
fn save_weights(path: &Path, step: &StepInterface, state: &TrainState) -> anyhow::Result<()> {
    let mut bufs: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
    for c in &step.carried {
        if !c.is_param {
            continue; // optimizer state
        }
        let Some(t) = state.values.get(&c.name) else {
            continue;
        };
        let a = t.to_f32();
        let bytes: Vec<u8> = a.iter().flat_map(|x| x.to_le_bytes()).collect();
        bufs.push((c.name.clone(), a.shape().to_vec(), bytes));
    }
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = bufs
        .iter()
        .map(|(n, s, b)| {
            safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), b)
                .map(|v| (n.clone(), v))
        })
        .collect::<Result<_, _>>()
        .context("cannot encode the weights")?;
    safetensors::serialize_to_file(views, None, path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}
