//! A cycle-approximate, numerically exact simulator of one NeuronCore.
//!
//! Central types: [`Simulator`] holds the chip's memories (SBUF, PSUM and the HBM tensors of
//! a [`neuron_isa::Program`]); [`Simulator::run`] executes every engine's instruction stream
//! with event-driven timing and returns [`RunStats`]. The ISA comes from `neuron-isa`; this
//! crate never depends on the compiler.
//!
//! Invariants: a run is deterministic (same program, inputs, options: same bits, same
//! picoseconds); memories start poisoned (all bytes 0xFF, a NaN in every float type);
//! a program whose streams can never finish is reported as a deadlock, never a hang.
//!
//! Code map: [`sim`] is the driver; [`sched`] the event-driven scheduler (one in-order
//! queue per engine, semaphores, deadlock detection, statistics); [`cost`] the compute
//! cost model; [`dma`] the DMA bandwidth model (shared engines and HBM, max-min fair);
//! [`races`] the optional race checker; [`exec`], [`memory`] and [`numerics`] the
//! functional side. `docs/isa.md` documents the semantics and the timing model.
#![warn(missing_docs)]

pub mod cost;
pub mod dma;
pub mod error;
pub mod exec;
pub mod memory;
pub mod numerics;
pub mod races;
pub mod sched;
pub mod sim;
pub mod stats;

pub use error::SimError;
pub use exec::{ExecContext, ExecError, ExecOutcome, execute};
pub use memory::Memories;
pub use numerics::Rounding;
pub use sim::{SimOptions, Simulator};
pub use stats::{ByteCounters, EngineStats, InstrRecord, RunStats, Warning, WarningKind};
