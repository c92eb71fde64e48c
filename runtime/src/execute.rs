//! Executing a bound model on the simulated NeuronCore.

use crate::error::RuntimeError;
use crate::host::HostTensor;
use crate::inputs::Bindings;
use crate::model::Model;
use neuron_isa::{TensorId, TensorKind};
use neuron_sim::{Rounding, RunStats, SimOptions, Simulator};
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
        let mut sim = Simulator::new(program, self.target(), opts.sim_options())?;
        // A timing-only run never reads a weight byte: don't even copy them in.
        for w in artifact.meta.weights.iter().filter(|_| !opts.timing_only) {
            if let Some(bytes) = artifact.weight_bytes(w.tensor) {
                sim.write_tensor(w.tensor, bytes)?;
            }
        }
        for (&id, bytes) in inputs.bytes() {
            sim.write_tensor(id, bytes)?;
        }
        let stats = sim.run_with_progress(progress)?;
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
