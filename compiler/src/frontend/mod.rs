//! Reading models: the model.json v1 format (see `docs/model-format.md`) and
//! its safetensors weights, converted into a checked [`Graph`](crate::ir::Graph).

mod attrs;
mod error;
mod init;
mod literal;
mod model_json;
mod raw;
mod weights;

pub use error::ModelError;
pub use init::{InitSpec, init_tensor};
pub use literal::parse_literal;
pub use model_json::{load_model, model_files, parse_model};
pub use weights::WeightsFile;
