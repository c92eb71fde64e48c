//! Reading models: the model.json v1 format (see `docs/model-format.md`) and
//! its safetensors weights, converted into a checked [`Graph`](crate::ir::Graph).

mod attrs;
mod error;
mod export;
mod init;
mod literal;
mod model_json;
pub mod onnx;
mod raw;
mod weights;

pub(crate) use attrs::parse_op;
pub use error::ModelError;
pub use export::{ExportError, op_attrs, write_model_json};
pub use init::{InitSpec, init_param, init_tensor};
pub use literal::parse_literal;
pub use model_json::{load_model, model_files, parse_model};
pub use weights::WeightsFile;

/// Why [`load_graph`] failed: the model.json or the ONNX loader's error.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// From the model.json loader.
    #[error(transparent)]
    Json(#[from] ModelError),
    /// From the ONNX importer.
    #[error(transparent)]
    Onnx(#[from] onnx::OnnxError),
}

/// Loads a model by its extension: `.onnx` through the ONNX importer (with
/// `opts`), anything else as model.json (where `--input-shape` does not apply).
pub fn load_graph(
    path: &std::path::Path,
    opts: &onnx::OnnxOptions,
) -> Result<crate::ir::Graph, LoadError> {
    if onnx::is_onnx_path(path) {
        Ok(onnx::load_onnx(path, opts)?)
    } else {
        Ok(load_model(path)?)
    }
}
