//! Errors from importing an ONNX model.

use std::fmt;
use std::path::PathBuf;

/// One node whose op the importer does not support.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnsupportedOp {
    /// ONNX op type, e.g. `NonMaxSuppression`.
    pub op_type: String,
    /// Its domain (`ai.onnx` for the default domain).
    pub domain: String,
    /// The opset version imported for that domain.
    pub opset: i64,
    /// The node's name (or `#index` if it has none).
    pub node: String,
}

impl fmt::Display for UnsupportedOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} (domain {}, opset {}) at node '{}'",
            self.op_type, self.domain, self.opset, self.node
        )
    }
}

/// Why an ONNX model could not be imported.
#[derive(Debug, thiserror::Error)]
pub enum OnnxError {
    /// The model file (or an external data file) could not be read.
    #[error("cannot read {}: {cause}", file.display())]
    Io {
        /// The file.
        file: PathBuf,
        /// The OS error.
        cause: std::io::Error,
    },
    /// The bytes are not a valid ONNX protobuf.
    #[error("{what} is not a valid ONNX protobuf (malformed or truncated, {len} bytes): {message}")]
    Decode {
        /// The file or message decoded.
        what: String,
        /// Its length in bytes.
        len: usize,
        /// The decoder's message.
        message: String,
    },
    /// The model uses ops the importer does not support; all of them are listed.
    #[error("{} unsupported op(s) in the model: {}", list.len(), fmt_list(list))]
    Unsupported {
        /// Every unsupported node.
        list: Vec<UnsupportedOp>,
    },
    /// Graph inputs have symbolic or unknown dimensions that no `--input-shape` binds.
    #[error(
        "unbound symbolic dimension(s): {}; bind each input's shape with --input-shape NAME=DxDx...",
        list.join(", ")
    )]
    UnboundDims {
        /// One entry per input, e.g. `input_ids: [batch, sequence]`.
        list: Vec<String>,
    },
    /// A node cannot be imported (bad attribute, shapes, non-constant shape operand...).
    #[error("node '{node}' (index {index}, {op_type}): {message}")]
    Node {
        /// Node name.
        node: String,
        /// Index in the graph's node list.
        index: usize,
        /// ONNX op type.
        op_type: String,
        /// What is wrong, expected vs found.
        message: String,
    },
    /// A tensor (initializer, constant, test data) is invalid.
    #[error("tensor '{name}': {message}")]
    Tensor {
        /// Tensor name.
        name: String,
        /// What is wrong.
        message: String,
    },
    /// The graph as a whole is invalid (cycle, undefined or duplicate value, bad output).
    #[error("{0}")]
    Graph(String),
}

fn fmt_list(list: &[UnsupportedOp]) -> String {
    list.iter()
        .map(|u| u.to_string())
        .collect::<Vec<_>>()
        .join("; ")
}

impl OnnxError {
    pub(crate) fn tensor(name: &str, message: impl Into<String>) -> OnnxError {
        OnnxError::Tensor {
            name: name.to_string(),
            message: message.into(),
        }
    }
}
