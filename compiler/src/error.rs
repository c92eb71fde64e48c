//! The compiler's error type: one enum for every stage after the frontend.
//!
//! Messages are lower-case, name the node or kernel at fault, and say what was expected
//! and what was found.

use std::path::PathBuf;

use crate::ir::GraphError;

/// Why a graph could not be compiled.
#[derive(Debug, thiserror::Error)]
pub enum CompileError {
    /// The graph uses an op (or an op configuration) this compiler cannot lower yet.
    #[error("unsupported op `{op}` in node '{node}' (node {index}): {message}")]
    Unsupported {
        /// Node name.
        node: String,
        /// Node index in the graph being compiled.
        index: usize,
        /// Op name, e.g. `conv2d`.
        op: String,
        /// Why, and what would be supported instead.
        message: String,
    },
    /// A precision assignment that cannot be honoured (e.g. int8 without calibration data).
    #[error("precision assignment for kernel '{kernel}': {message}")]
    Precision {
        /// The kernel (or node) at fault.
        kernel: String,
        /// What is wrong, expected vs found.
        message: String,
    },
    /// An IR verifier rejected the output of a pass (a compiler bug, caught at the pass).
    #[error("verification failed: {0}")]
    Verify(String),
    /// The input graph is malformed, or a pass built a malformed node.
    #[error(transparent)]
    Graph(#[from] GraphError),
    /// Reading or writing a file (dumps, artifacts, calibration data).
    #[error("i/o error on '{path}': {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// Evaluating the graph for calibration or checking failed.
    #[error("evaluation failed: {0}")]
    Eval(String),
    /// The model's data cannot fit in host memory (refused before allocating).
    #[error(transparent)]
    HostMemory(#[from] crate::ir::limits::HostMemoryError),
    /// An internal invariant does not hold (always a compiler bug).
    #[error("internal compiler error: {0}")]
    Internal(String),
    /// The back end cannot lower a kernel: a shape, layout or size beyond its limits, or
    /// buffers that do not fit the target's SBUF/PSUM.
    #[error("cannot lower kernel '{kernel}' ({kind}; nodes {nodes}): {message}")]
    Lowering {
        /// Kernel name.
        kernel: String,
        /// Kernel kind, e.g. `matmul`.
        kind: String,
        /// The graph nodes fused into the kernel, comma-separated.
        nodes: String,
        /// What is wrong, expected vs found.
        message: String,
    },
}

impl CompileError {
    /// A [`CompileError::Unsupported`] for node `index` named `node` running `op`.
    pub fn unsupported(
        node: impl Into<String>,
        index: usize,
        op: impl Into<String>,
        message: impl Into<String>,
    ) -> CompileError {
        CompileError::Unsupported {
            node: node.into(),
            index,
            op: op.into(),
            message: message.into(),
        }
    }

    /// A [`CompileError::Io`] for `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> CompileError {
        CompileError::Io {
            path: path.into(),
            source,
        }
    }
}
