//! The reference executor: evaluates a [`Graph`](crate::ir::Graph) node by
//! node with plain ndarray code. It is the oracle every compiled and
//! simulated result is checked against: simple and obviously right, not fast.

mod error;
mod executor;
mod inputs;
pub(crate) mod ops;
mod real;
mod value;

pub use error::RefError;
pub use executor::{RefOptions, eval_op_f64, run_reference, run_reference_all};
pub use inputs::{INT_INPUT_RANGE, index_bound, index_bounds, random_input, random_inputs};
pub use real::Real;
