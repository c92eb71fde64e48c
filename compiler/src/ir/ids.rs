//! Typed indices into the [`Graph`](super::Graph) arenas.

use std::fmt;

/// Index of a [`Value`](super::Value) in [`Graph::values`](super::Graph::values).
///
/// Displays as `%3`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct ValueId(pub u32);

/// Index of a [`Node`](super::Node) in [`Graph::nodes`](super::Graph::nodes).
///
/// Displays as `n3`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct NodeId(pub u32);

impl ValueId {
    /// The position of this value in `Graph::values`.
    pub fn index(self) -> usize {
        self.0 as usize
    }
}

impl NodeId {
    /// The position of this node in `Graph::nodes`.
    pub fn index(self) -> usize {
        self.0 as usize
    }
}

impl fmt::Display for ValueId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "%{}", self.0)
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "n{}", self.0)
    }
}
