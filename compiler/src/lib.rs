//! `neuronc`: the compiler from model.json tensor graphs to NeuronCore programs.
//!
//! The central data structure is [`ir::Graph`]: an arena of [`ir::Value`]s
//! (graph inputs, params with their [`ir::Tensor`] data, node outputs) and
//! [`ir::Node`]s (an [`ir::Op`] with typed attributes applied to values),
//! addressed by the typed ids [`ir::ValueId`] (`%3`) and [`ir::NodeId`] (`n3`).
//! Its invariants: names are unique, `nodes` is in topological order, every
//! value's shape and dtype are what its producer's [`ir::Op::infer`] gives,
//! and no tensor exceeds [`ir::limits::MAX_TENSOR_ELEMENTS`]. Graphs come
//! from model.json via [`frontend::load_model`] (which reports bad input as a
//! [`frontend::ModelError`] naming the node and JSON path, never a panic) or
//! from code via [`ir::Graph::add_input`] / [`ir::Graph::add_node`].
//! [`reference::run_reference`] evaluates a graph plainly with ndarray and is
//! the oracle all compiled output is checked against; [`rng::SeededRng`] gives
//! the same numbers on every platform.

#![warn(missing_docs)]

pub mod autodiff;
pub mod backend;
pub mod driver;
pub mod error;
pub mod frontend;
pub mod ir;
pub mod kernel;
pub mod npy;
pub mod options;
pub mod passes;
pub mod quant;
pub mod reference;
pub mod train;
pub mod zoo;
/// The platform-independent seeded generator (shared with the runtime through `neuron-isa`).
pub use neuron_isa::rng;

pub use error::CompileError;
