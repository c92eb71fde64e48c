//! Errors from reading a model, each naming the JSON path and node at fault.

use std::path::PathBuf;

/// Why a model could not be loaded.
///
/// Every variant's message names the JSON path (e.g. `nodes[3].attrs.axis`)
/// and, for node problems, the node's name and index.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// The model file could not be read.
    #[error("cannot read model file {}: {cause}", file.display())]
    Io {
        /// The file.
        file: PathBuf,
        /// The OS error.
        cause: std::io::Error,
    },
    /// The text is not JSON.
    #[error("malformed json at line {line}, column {column}: {message}")]
    Syntax {
        /// 1-based line.
        line: usize,
        /// 1-based column.
        column: usize,
        /// What the parser expected.
        message: String,
    },
    /// A field is missing, unknown, or has the wrong JSON type.
    #[error("{path}: {message} (line {line}, column {column})")]
    Field {
        /// JSON path of the field, e.g. `inputs[0].shape`.
        path: String,
        /// What is wrong.
        message: String,
        /// 1-based line.
        line: usize,
        /// 1-based column.
        column: usize,
    },
    /// A node is invalid (unknown op, attributes, inputs, shapes).
    #[error("{path}: node '{node}' (index {index}): {message}")]
    Node {
        /// JSON path, e.g. `nodes[3].attrs.axis` or `nodes[3].inputs[1]`.
        path: String,
        /// Node name.
        node: String,
        /// Node index in `nodes`.
        index: usize,
        /// What is wrong, expected vs found.
        message: String,
    },
    /// An input, param or output declaration is invalid.
    #[error("{path}: {message}")]
    Invalid {
        /// JSON path, e.g. `params[2].value[1]`.
        path: String,
        /// What is wrong, expected vs found.
        message: String,
    },
    /// The weights file is missing, truncated, or disagrees with a param.
    #[error("{path}: weights file {}: {message}", file.display())]
    Weights {
        /// JSON path (`weights` or `params[i]`).
        path: String,
        /// The weights file.
        file: PathBuf,
        /// What is wrong.
        message: String,
    },
}

impl ModelError {
    /// The JSON path the error is about (empty for I/O and syntax errors).
    pub fn path(&self) -> &str {
        match self {
            ModelError::Io { .. } | ModelError::Syntax { .. } => "",
            ModelError::Field { path, .. }
            | ModelError::Node { path, .. }
            | ModelError::Invalid { path, .. }
            | ModelError::Weights { path, .. } => path,
        }
    }

    pub(crate) fn invalid(path: impl Into<String>, message: impl Into<String>) -> ModelError {
        ModelError::Invalid {
            path: path.into(),
            message: message.into(),
        }
    }
}
