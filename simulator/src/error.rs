//! The simulator's error type.

use neuron_isa::{Engine, TensorId};

/// Why a simulation could not be set up or completed.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    /// The program breaks an ISA rule (found when loading, before anything runs).
    #[error("illegal program: {0}")]
    Illegal(String),
    /// An instruction failed while executing (e.g. a gather index out of range).
    #[error("{engine} instruction {index} (stream {stream}, {opcode}): {message}")]
    Exec {
        /// Stream index.
        stream: usize,
        /// Instruction index in the stream.
        index: usize,
        /// Engine of the stream.
        engine: Engine,
        /// Opcode name.
        opcode: &'static str,
        /// What went wrong, with expected vs found.
        message: String,
    },
    /// Every unfinished stream waits on a semaphore that can no longer be signalled.
    #[error("deadlock: {0}")]
    Deadlock(String),
    /// Binding or reading an HBM tensor failed.
    #[error("tensor {tensor} ('{name}'): {message}")]
    Tensor {
        /// Tensor id.
        tensor: TensorId,
        /// Tensor name ("?" if the id is unknown).
        name: String,
        /// What is wrong.
        message: String,
    },
    /// A request that exceeds the simulator's documented limits.
    #[error("limit exceeded: {0}")]
    Limit(String),
    /// A numeric conversion was asked for something it cannot do (buffers whose sizes do
    /// not match the element count, or a write to the read-only i64 type).
    #[error("conversion: {0}")]
    Conversion(String),
}
