//! Errors from building or verifying a [`Graph`](super::Graph).

use super::limits::ShapeLimitError;
use super::shape_infer::Site;

/// Why a graph could not be built or is not well formed.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum GraphError {
    /// A node's inputs or attributes are wrong (arity, dtype, shape, attribute range).
    #[error("node '{node}' (index {index}, op {op}): {message}")]
    Node {
        /// Node name.
        node: String,
        /// Node index in `Graph::nodes`.
        index: usize,
        /// Op name.
        op: &'static str,
        /// Which part of the node is at fault.
        site: Site,
        /// What is wrong, expected vs found.
        message: String,
    },
    /// A value or node name is used twice.
    #[error("{kind} name '{name}' is already defined by {first}")]
    Duplicate {
        /// `value` or `node`.
        kind: &'static str,
        /// The name.
        name: String,
        /// What defined it first, e.g. `input %0` or `node 'fc1' (index 3)`.
        first: String,
    },
    /// A declared or inferred shape breaks a size limit.
    #[error("{what} '{name}' with shape {shape}: {reason}")]
    Limit {
        /// E.g. `input`, `param`, `output of node 'fc1' (index 3)`.
        what: String,
        /// Value name.
        name: String,
        /// The offending shape, formatted.
        shape: String,
        /// Which limit.
        reason: ShapeLimitError,
    },
    /// Param data disagrees with its declared type.
    #[error("param '{name}': data is {found}, expected {expected}")]
    ParamData {
        /// Param name.
        name: String,
        /// Declared type, e.g. `[512] f32`.
        expected: String,
        /// Data type, e.g. `[256] f32`.
        found: String,
    },
    /// An id that is not in this graph.
    #[error("{what} {id} does not exist (the graph has {len})")]
    BadId {
        /// `value` or `node`.
        what: &'static str,
        /// The id, formatted.
        id: String,
        /// Arena length.
        len: usize,
    },
    /// A structural invariant does not hold (found by [`Graph::verify`](super::Graph::verify)).
    #[error("invalid graph: {0}")]
    Invariant(String),
}
