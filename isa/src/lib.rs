//! The contract between the compiler (`neuronc`) and the simulator (`neuron-sim`): the
//! NeuronCore instruction set, chip configurations, and the `.neff` artifact format.
//!
//! Central types:
//! - [`Program`]: per-engine in-order instruction [`Stream`]s, an HBM tensor table, a
//!   semaphore count and kernel metadata.
//! - [`Instruction`]: an [`Op`] with semaphore waits and signals; operands are access
//!   patterns ([`Ap`]) into HBM, SBUF or PSUM.
//! - [`ChipConfig`]: every hardware figure the compiler plans with and the simulator
//!   times with (`trn1`, `trn2`, or TOML overrides).
//! - [`Artifact`]: a program plus target, options and weights, serialised with a checked
//!   header.
//!
//! Invariants: the simulator depends on this crate and never on the compiler; a program
//! that passes [`verify::verify_program`] can be executed without the simulator hitting
//! an out-of-bounds access.
#![warn(missing_docs)]

pub mod ap;
pub mod artifact;
pub mod config;
pub mod disasm;
pub mod dma;
pub mod dtype;
pub mod host;
pub mod instr;
pub mod mmap;
pub mod npy;
pub mod numerics;
pub mod program;
pub mod rng;
pub mod simd;
pub mod verify;

pub use ap::{Ap, Dim, MAX_FREE_DIMS, Memory, TensorId};
pub use artifact::{
    Artifact, ArtifactError, ArtifactMeta, ArtifactWriter, Blob, BlobRange, CarriedState,
    IoSignature, TrainingMeta, WeightRange,
};
pub use config::{ChipConfig, ConfigError};
pub use dtype::Dtype;
pub use instr::{ActFunc, AluOp, Engine, Instruction, NO_KERNEL, Op, Operand, SemId, SemWait};
pub use program::{HbmTensor, KernelInfo, Program, Stream, TensorKind};
pub use verify::{Rule, VerifyError, verify_program};
