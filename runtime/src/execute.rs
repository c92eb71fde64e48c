//! Executing a bound model on the simulated NeuronCore.

use crate::error::RuntimeError;
use crate::host::HostTensor;
use crate::inputs::Bindings;
use crate::model::Model;
use neuron_isa::{TensorId, TensorKind};
use neuron_sim::{Rounding, RunStats, SimOptions, Simulator};
use neuronc::ir::limits::{available_memory, check_memory};
use std::collections::BTreeMap;

/// How to run a model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RunOptions {
    /// Skip numerics: the same instruction stream with the same timing, much faster, but
    /// outputs are not computed (the [`Execution`] has none).
    pub timing_only: bool,
    /// How writes round to narrow float types.
    pub rounding: Rounding,
    /// Seed of stochastic rounding.
    pub seed: u64,
    /// Look for unsynchronized SBUF/PSUM accesses between engines (slower).
    pub check_races: bool,
}

impl RunOptions {
    fn sim_options(&self) -> SimOptions {
        SimOptions {
            timing_only: self.timing_only,
            rounding: self.rounding,
            seed: self.seed,
            check_races: self.check_races,
        }
    }
}

/// What one execution produced.
#[derive(Debug, Clone)]
pub struct Execution {
    /// Output values by output name (empty for timing-only runs).
    pub outputs: BTreeMap<String, HostTensor>,
    /// The simulator's records: per-instruction times, engine totals, bytes, warnings.
    pub stats: RunStats,
    /// Whether numerics were skipped.
    pub timing_only: bool,
}

impl Model {
    /// Runs the model with `inputs` and returns its outputs and the run's records.
    ///
    /// Every input must be bound (see [`Bindings::generate_missing`]).
    pub fn execute(
        &self,
        inputs: &Bindings<'_>,
        opts: &RunOptions,
    ) -> Result<Execution, RuntimeError> {
        self.execute_with_progress(inputs, opts, &mut |_, _| {})
    }

    /// Like [`Model::execute`], calling `progress(done, total)` as instructions complete.
    pub fn execute_with_progress(
        &self,
        inputs: &Bindings<'_>,
        opts: &RunOptions,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<Execution, RuntimeError> {
        if !std::ptr::eq(inputs.model(), self) {
            return Err(RuntimeError::Program(
                "the bindings were made for a different model".into(),
            ));
        }
        let missing = inputs.missing();
        if !missing.is_empty() {
            let names: Vec<String> = missing.iter().map(|n| format!("'{n}'")).collect();
            return Err(RuntimeError::MissingInputs(names.join(", ")));
        }
        if !opts.timing_only && !self.has_weights() {
            return Err(RuntimeError::Program(format!(
                "model '{}' was loaded without its weights: it can run timing-only only",
                self.name()
            )));
        }
        let artifact = self.artifact();
        let program = &artifact.meta.program;
        let _span = tracing::info_span!("execute", model = %self.name()).entered();
        if !opts.timing_only {
            check_simulation_memory(program, self.target(), self.name(), available_memory())?;
        }
        let mut sim = Simulator::new(program, self.target(), opts.sim_options())?;
        // A timing-only run never reads a weight byte: don't even bind them. A full run
        // reads them where they lie in the artifact (copied only if the program writes
        // one, as a training step's update does).
        // Weights checked to hold no poison element are bound as such: loads from them
        // can then be put off until their destination is touched.
        let poison_free: &[bool] = if opts.timing_only {
            &[]
        } else {
            self.poison_free_weights()
        };
        for (w, &clean) in artifact.meta.weights.iter().zip(poison_free) {
            if let Some(bytes) = artifact.weight_bytes(w.tensor) {
                if clean {
                    sim.bind_poison_free_tensor(w.tensor, bytes)?;
                } else {
                    sim.bind_tensor(w.tensor, bytes)?;
                }
            }
        }
        for (&id, bytes) in inputs.bytes() {
            sim.bind_tensor(id, bytes)?;
        }
        let stats = sim
            .run_with_progress(progress)
            .map_err(|e| in_kernel(program, e))?;
        let mut outputs = BTreeMap::new();
        if !opts.timing_only {
            for (i, t) in program.tensors.iter().enumerate() {
                if t.kind == TensorKind::Output {
                    let bytes = sim.tensor(TensorId(i as u32))?;
                    outputs.insert(t.name.clone(), HostTensor::decode(bytes, t)?);
                }
            }
        }
        Ok(Execution {
            outputs,
            stats,
            timing_only: opts.timing_only,
        })
    }
}

/// Host bytes a full (not timing-only) simulation of `program` allocates: a buffer per HBM
/// tensor plus, at most, the chip's SBUF and PSUM (saturating).
fn simulation_bytes(program: &neuron_isa::Program, cfg: &neuron_isa::ChipConfig) -> u64 {
    let on_chip = u64::from(cfg.partitions).saturating_mul(
        cfg.sbuf_bytes_per_partition
            .saturating_add(cfg.psum_bytes_per_partition),
    );
    program.tensors.iter().fold(on_chip, |acc, t| {
        let bytes = t
            .shape
            .iter()
            .fold(t.dtype.size(), |b, &d| b.saturating_mul(d));
        acc.saturating_add(bytes)
    })
}

/// Refuses, before the simulator allocates anything, a full simulation whose memories
/// exceed the host's `available` bytes, with both sizes in the message. A program whose
/// HBM tensors exceed the chip's own HBM is left to the simulator, which names that limit.
fn check_simulation_memory(
    program: &neuron_isa::Program,
    cfg: &neuron_isa::ChipConfig,
    model: &str,
    available: Option<u64>,
) -> Result<(), RuntimeError> {
    let needed = simulation_bytes(program, cfg);
    let hbm: u64 = needed.saturating_sub(
        u64::from(cfg.partitions)
            .saturating_mul(cfg.sbuf_bytes_per_partition + cfg.psum_bytes_per_partition),
    );
    if hbm > cfg.hbm_bytes {
        return Ok(());
    }
    let what = format!(
        "a full simulation of model '{model}' (its HBM tensors, weights included, and the \
         on-chip memories; a --timing-only run needs none of it)"
    );
    Ok(check_memory(needed, available, &what)?)
}

/// Names the kernel, graph nodes and HBM tensors of the instruction a run-time error
/// comes from (a gather index out of range names the gather's node, table and indices).
fn in_kernel(program: &neuron_isa::Program, e: neuron_sim::SimError) -> RuntimeError {
    let neuron_sim::SimError::Exec { stream, index, .. } = &e else {
        return RuntimeError::Sim(e);
    };
    let Some(instr) = program
        .streams
        .get(*stream)
        .and_then(|s| s.instrs.get(*index))
    else {
        return RuntimeError::Sim(e);
    };
    let Some(k) = program.kernels.get(instr.kernel as usize) else {
        return RuntimeError::Sim(e);
    };
    let mut tensors = std::collections::BTreeSet::new();
    for s in &program.streams {
        for i in s.instrs.iter().filter(|i| i.kernel == instr.kernel) {
            for ap in i.op.reads() {
                if let neuron_isa::Memory::Hbm(t) = ap.mem {
                    if let Some(t) = program.tensors.get(t.0 as usize) {
                        tensors.insert(format!("'{}'", t.name));
                    }
                }
            }
        }
    }
    RuntimeError::InKernel {
        kernel: k.name.clone(),
        nodes: k.nodes.join(", "),
        tensors: if tensors.is_empty() {
            String::new()
        } else {
            format!(
                "; reads {}",
                tensors.into_iter().collect::<Vec<_>>().join(", ")
            )
        },
        source: Box::new(e),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use neuron_isa::{ChipConfig, Dtype, HbmTensor, Program};

    fn program(shapes: &[&[u64]]) -> Program {
        Program {
            streams: Vec::new(),
            semaphores: 0,
            tensors: shapes
                .iter()
                .enumerate()
                .map(|(i, s)| HbmTensor {
                    name: format!("w{i}"),
                    kind: TensorKind::Weight,
                    shape: s.to_vec(),
                    dtype: Dtype::F32,
                })
                .collect(),
            kernels: Vec::new(),
        }
    }

    #[test]
    fn a_simulation_larger_than_host_memory_is_refused_with_both_sizes() {
        let cfg = ChipConfig::trn1();
        // Four 1 GiB f32 weights.
        let p = program(&[&[16384u64, 16384][..]; 4]);
        let needed = simulation_bytes(&p, &cfg);
        let on_chip = 128 * (cfg.sbuf_bytes_per_partition + cfg.psum_bytes_per_partition);
        assert_eq!(needed, 4 * (1 << 30) + on_chip);
        let e = check_simulation_memory(&p, &cfg, "huge", Some(1 << 30)).unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("model 'huge'"), "{msg}");
        assert!(msg.contains(&needed.to_string()), "{msg}");
        assert!(msg.contains(&(1u64 << 30).to_string()), "{msg}");
        assert!(msg.contains("4.0"), "{msg}");
        // Enough memory, or an unknown amount: accepted.
        check_simulation_memory(&p, &cfg, "huge", Some(needed)).unwrap();
        check_simulation_memory(&p, &cfg, "huge", None).unwrap();
    }

    #[test]
    fn a_program_beyond_the_chip_hbm_is_left_to_the_simulator() {
        let mut cfg = ChipConfig::trn1();
        cfg.hbm_bytes = 1 << 20;
        let p = program(&[&[1024, 1024]]);
        // 4 MiB of tensors on a 1 MiB chip: the simulator reports the chip's limit.
        check_simulation_memory(&p, &cfg, "m", Some(1)).unwrap();
    }
}
