//! Errors from the reference executor.

/// Why the reference executor could not evaluate a graph.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum RefError {
    /// The params cannot fit in host memory (refused before allocating).
    #[error(transparent)]
    HostMemory(#[from] crate::ir::limits::HostMemoryError),
    /// A graph input was not supplied.
    #[error("missing input '{name}' (declared {expected})")]
    MissingInput {
        /// Input name.
        name: String,
        /// Declared type, e.g. `[8,784] f32`.
        expected: String,
    },
    /// A supplied tensor names no graph input.
    #[error("unknown input '{name}' (the graph's inputs are: {known})")]
    UnknownInput {
        /// The supplied name.
        name: String,
        /// The declared input names, comma separated.
        known: String,
    },
    /// A supplied tensor has the wrong shape or dtype.
    #[error("input '{name}': expected {expected}, found {found}")]
    InputMismatch {
        /// Input name.
        name: String,
        /// Declared type.
        expected: String,
        /// Supplied type.
        found: String,
    },
    /// A param has no data to evaluate with.
    #[error("param '{name}' ({id}) has no data")]
    NoParamData {
        /// Param name.
        name: String,
        /// Value id, formatted.
        id: String,
    },
    /// A node failed on its data (e.g. a gather index out of range).
    #[error("node '{node}' (index {index}, op {op}): {message}")]
    Node {
        /// Node name.
        node: String,
        /// Node index.
        index: usize,
        /// Op name.
        op: &'static str,
        /// What went wrong.
        message: String,
    },
    /// The graph breaks an invariant (see [`Graph::verify`](crate::ir::Graph::verify)).
    #[error("{0}")]
    Graph(#[from] crate::ir::GraphError),
}
