//! The public driver: [`Simulator`] binds a verified program to memories and runs it.
//!
//! A full run executes every instruction's functional effect ([`crate::exec::execute`])
//! at its start event, in the scheduler's global (start time, stream) order; a
//! timing-only run skips the effects and allocates no memories. Timing is the same in
//! both: it never depends on data.

use crate::error::SimError;
use crate::exec::{Deferred, ExecContext};
use crate::memory::Memories;
use crate::numerics::Rounding;
use crate::sched::{self, SchedOptions};
use crate::stats::RunStats;
use neuron_isa::{ChipConfig, Instruction, Program, TensorId};

/// How a run is performed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SimOptions {
    /// Time the program without executing its numerics (no memories are allocated; tensor
    /// data is neither stored nor produced). Timing is identical to a full run.
    pub timing_only: bool,
    /// Rounding of narrowing writes.
    pub rounding: Rounding,
    /// Seed of the stochastic-rounding generator.
    pub seed: u64,
    /// Report unsynchronized conflicting on-chip accesses as [`crate::WarningKind::Race`].
    pub check_races: bool,
}

impl Default for SimOptions {
    /// Full execution, round-to-nearest-even, seed 0, no race check.
    fn default() -> SimOptions {
        SimOptions {
            timing_only: false,
            rounding: Rounding::Rne,
            seed: 0,
            check_races: false,
        }
    }
}

/// A simulated NeuronCore loaded with one program.
#[derive(Debug)]
pub struct Simulator<'p> {
    program: &'p Program,
    cfg: ChipConfig,
    opts: SimOptions,
    /// Memories and execution state; `None` in timing-only mode.
    functional: Option<Functional<'p>>,
}

/// What a full (not timing-only) run needs.
#[derive(Debug)]
struct Functional<'p> {
    mem: Memories<'p>,
    ctx: ExecContext,
    /// Matmuls whose GEMM runs on a worker thread, committed before anything reads their
    /// destination (`exec::deferred`).
    deferred: Deferred,
}

impl<'p> Simulator<'p> {
    /// Validates `cfg`, verifies `program` against it (a violation is
    /// [`SimError::Illegal`] with the verifier's message) and allocates the chip's memories,
    /// all poisoned (none in timing-only mode).
    pub fn new(program: &'p Program, cfg: &ChipConfig, opts: SimOptions) -> Result<Self, SimError> {
        let _span = tracing::debug_span!(
            "sim.load",
            instructions = program.instruction_count(),
            timing_only = opts.timing_only
        )
        .entered();
        cfg.validate()
            .map_err(|e| SimError::Illegal(format!("chip config: {e}")))?;
        neuron_isa::verify_program(program, cfg).map_err(|e| SimError::Illegal(e.to_string()))?;
        let functional = if opts.timing_only {
            None
        } else {
            Some(Functional {
                mem: Memories::for_program(cfg, program)?,
                ctx: ExecContext::new(cfg.clone(), opts.rounding, opts.seed),
                deferred: Deferred::for_program(program),
            })
        };
        Ok(Simulator {
            program,
            cfg: cfg.clone(),
            opts,
            functional,
        })
    }

    /// The options of this simulator.
    pub fn options(&self) -> SimOptions {
        self.opts
    }

    /// The chip configuration.
    pub fn config(&self) -> &ChipConfig {
        &self.cfg
    }

    /// Binds the bytes of HBM tensor `t` (its full size, little-endian elements). In
    /// timing-only mode the size is checked and the data dropped.
    pub fn write_tensor(&mut self, t: TensorId, bytes: &[u8]) -> Result<(), SimError> {
        self.land_loads()?;
        match self.functional.as_mut() {
            Some(f) => f.mem.write_tensor(t, bytes),
            None => {
                let info = self.tensor_info(t)?;
                if bytes.len() as u64 == info.bytes() {
                    Ok(())
                } else {
                    Err(SimError::Tensor {
                        tensor: t,
                        name: info.name.clone(),
                        message: format!("expected {} bytes, found {}", info.bytes(), bytes.len()),
                    })
                }
            }
        }
    }

    /// Binds HBM tensor `t` to `bytes` (its full size) by reference, for as long as the
    /// simulator lives: the bytes are read where they lie and never written (the first
    /// instruction that writes the tensor writes a copy, see [`Memories::bind_tensor`]).
    /// What a run computes is the same as after [`Simulator::write_tensor`]; a weight that
    /// is only read is never copied. In timing-only mode the size is checked and nothing
    /// kept.
    pub fn bind_tensor(&mut self, t: TensorId, bytes: &'p [u8]) -> Result<(), SimError> {
        self.land_loads()?;
        match self.functional.as_mut() {
            Some(f) => f.mem.bind_tensor(t, bytes),
            None => self.write_tensor(t, bytes),
        }
    }

    /// [`Simulator::bind_tensor`] for bytes the caller has checked to hold no poison
    /// element of the tensor's dtype (`!numerics::is_poisoned(dtype, bytes)`), as the
    /// runtime does once per model for its weights: loads from such a tensor that no
    /// instruction writes may then be copied when something first touches their
    /// destination instead of when issued (same results; see `exec/deferred.rs`).
    pub fn bind_poison_free_tensor(
        &mut self,
        t: TensorId,
        bytes: &'p [u8],
    ) -> Result<(), SimError> {
        let dtype = self.tensor_info(t)?.dtype;
        self.land_loads()?;
        match self.functional.as_mut() {
            Some(f) => f.mem.bind_poison_free_tensor(t, dtype, bytes),
            None => self.write_tensor(t, bytes),
        }
    }

    /// The bytes of HBM tensor `t`. A timing-only simulator keeps no data and returns an
    /// error.
    pub fn tensor(&self, t: TensorId) -> Result<&[u8], SimError> {
        match self.functional.as_ref() {
            Some(f) => f.mem.tensor(t),
            None => {
                let info = self.tensor_info(t)?;
                Err(SimError::Tensor {
                    tensor: t,
                    name: info.name.clone(),
                    message: "no data: the simulator runs in timing-only mode".into(),
                })
            }
        }
    }

    /// Runs the program to completion. Running again executes the program again on the
    /// current memories (times restart at 0).
    pub fn run(&mut self) -> Result<RunStats, SimError> {
        self.run_with_progress(&mut |_, _| {})
    }

    /// Runs the program, calling `progress(done, total)` every
    /// [`crate::sched::PROGRESS_INTERVAL`] completed instructions and at the end.
    pub fn run_with_progress(
        &mut self,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<RunStats, SimError> {
        let _span = tracing::debug_span!(
            "sim.run",
            instructions = self.program.instruction_count(),
            timing_only = self.opts.timing_only
        )
        .entered();
        let opts = SchedOptions {
            check_races: self.opts.check_races,
        };
        let program = self.program;
        match self.functional.as_mut() {
            None => {
                let mut skip = |_: usize, _: usize, _: &Instruction| Ok(false);
                sched::run(program, &self.cfg, opts, &mut skip, progress)
            }
            Some(f) => {
                let (mem, ctx, deferred) = (&mut f.mem, &mut f.ctx, &mut f.deferred);
                let mut run_one = |stream: usize, index: usize, instr: &Instruction| {
                    deferred
                        .execute(mem, &instr.op, ctx)
                        .map(|o| o.poisoned_read)
                        .map_err(|e| SimError::Exec {
                            stream,
                            index,
                            engine: program.streams[stream].engine,
                            opcode: instr.op.opcode(),
                            message: e.message,
                        })
                };
                let stats = sched::run(program, &self.cfg, opts, &mut run_one, progress);
                // Every deferred GEMM lands in PSUM before the run returns, even a failed
                // one (the memories then hold every effect executed before the error).
                let flushed = f
                    .deferred
                    .flush(&mut f.mem)
                    .map_err(|e| SimError::Limit(format!("deferred matmul: {}", e.message)));
                let stats = stats?;
                flushed?;
                Ok(stats)
            }
        }
    }

    /// Copies the loads a previous run put off, whose sources are about to change.
    fn land_loads(&mut self) -> Result<(), SimError> {
        match self.functional.as_mut() {
            Some(f) => f
                .deferred
                .land_loads(&mut f.mem)
                .map_err(|e| SimError::Limit(format!("put-off load: {}", e.message))),
            None => Ok(()),
        }
    }

    fn tensor_info(&self, t: TensorId) -> Result<&neuron_isa::HbmTensor, SimError> {
        self.program
            .tensors
            .get(t.0 as usize)
            .ok_or_else(|| SimError::Tensor {
                tensor: t,
                name: "?".into(),
                message: format!(
                    "expected a tensor id below {}, found {}",
                    self.program.tensors.len(),
                    t.0
                ),
            })
    }
}
