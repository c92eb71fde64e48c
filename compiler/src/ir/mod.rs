//! The graph intermediate representation: an arena of [`Value`]s and
//! [`Node`]s addressed by typed ids, with ops that infer their own types.

mod display;
mod dtype;
mod error;
mod graph;
mod ids;
pub mod limits;
mod op;
mod param;
pub mod shape_infer;
mod tensor;
mod verify;

pub use dtype::{DType, UnknownDType};
pub use error::GraphError;
pub use graph::{Graph, Node, Value};
pub use ids::{NodeId, ValueId};
pub use op::{Arity, GeluApprox, OP_NAMES, Op};
pub use param::{CHUNK as PARAM_CHUNK, InitSpec, ParamData};
pub use shape_infer::{ShapeError, Site, TensorType, fmt_shape};
pub use tensor::Tensor;
