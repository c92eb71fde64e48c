//! The runtime's error type: one enum for loading, binding, executing and profiling.

use neuron_isa::{ArtifactError, ConfigError, Dtype, VerifyError};
use neuron_sim::SimError;
use std::path::PathBuf;

/// Formats a shape as `[2, 3]`.
pub(crate) fn fmt_shape(shape: &[u64]) -> String {
    let dims: Vec<String> = shape.iter().map(u64::to_string).collect();
    format!("[{}]", dims.join(", "))
}

/// Why a model could not be loaded, bound, executed or profiled.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// The `.neff` file is unreadable, truncated, corrupted or from a newer toolchain.
    #[error("cannot load {}: {source}", path.display())]
    Artifact {
        /// The file.
        path: PathBuf,
        /// What the artifact reader found.
        source: ArtifactError,
    },
    /// The artifact's target chip configuration is unusable.
    #[error("artifact target '{target}' is invalid: {source}")]
    Target {
        /// The target's name.
        target: String,
        /// The failed check.
        source: ConfigError,
    },
    /// The program breaks an ISA rule (found by the verifier before anything runs).
    #[error("invalid program in artifact: {0}")]
    Verify(#[from] VerifyError),
    /// The program or its metadata break a rule the runtime relies on.
    #[error("invalid program in artifact: {0}")]
    Program(String),
    /// A name given for an input is not an input of the model.
    #[error("unknown input '{name}': the model's inputs are {known}")]
    UnknownInput {
        /// The name given.
        name: String,
        /// The model's input names, comma-separated.
        known: String,
    },
    /// An input's data has the wrong shape.
    #[error(
        "input '{name}': expected shape {}, found {}",
        fmt_shape(expected),
        fmt_shape(found)
    )]
    InputShape {
        /// The input.
        name: String,
        /// Declared shape.
        expected: Vec<u64>,
        /// Shape of the data given.
        found: Vec<u64>,
    },
    /// An input's data cannot be converted to the input's declared dtype.
    #[error("input '{name}': expected {expected} data, found {found}")]
    InputDtype {
        /// The input.
        name: String,
        /// Declared HBM dtype.
        expected: Dtype,
        /// What the data holds (e.g. `f32`, `bool`).
        found: String,
    },
    /// An input holds a value its dtype cannot represent.
    #[error("input '{name}': element {index} is {value}, outside the {dtype} range")]
    InputValue {
        /// The input.
        name: String,
        /// Row-major element index.
        index: usize,
        /// The value.
        value: String,
        /// Declared dtype.
        dtype: Dtype,
    },
    /// Inputs were left unbound.
    #[error(
        "inputs not bound: {0} (bind them, or call Bindings::generate_missing to draw them from the seeded generator)"
    )]
    MissingInputs(String),
    /// A `.npy` file could not be read or written.
    #[error("{}: {message}", path.display())]
    Npy {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// A full simulation would need more host memory than is available (refused before
    /// allocating; the message gives both sizes).
    #[error(transparent)]
    HostMemory(#[from] neuronc::ir::limits::HostMemoryError),
    /// The simulator refused the program or failed while running it.
    #[error("simulation failed: {0}")]
    Sim(#[from] SimError),
    /// An instruction failed while running: names the kernel, its graph nodes and the
    /// tensors the instruction reads.
    #[error("simulation failed in kernel '{kernel}' (graph nodes: {nodes}{tensors}): {source}")]
    InKernel {
        /// The kernel's name.
        kernel: String,
        /// Its graph nodes, comma-separated.
        nodes: String,
        /// `; tensors 'a', 'b'` (the HBM tensors the kernel reads), or empty.
        tensors: String,
        /// The simulator's error (boxed: it is large).
        source: Box<SimError>,
    },
    /// A profile file could not be rendered.
    #[error("cannot render profile: {0}")]
    Profile(String),
    /// A file or directory could not be read or written.
    #[error("cannot {action} {}: {source}", path.display())]
    Io {
        /// `create`, `write`, ...
        action: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
}

impl RuntimeError {
    /// An I/O error on `path`.
    pub(crate) fn io(action: &'static str, path: &std::path::Path, source: std::io::Error) -> Self {
        RuntimeError::Io {
            action,
            path: path.to_path_buf(),
            source,
        }
    }
}
