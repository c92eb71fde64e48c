//! ONNX models: the protobuf (`proto`, hand-written `prost` messages), tensor
//! decoding with external data (`tensor`), and the importer onto the graph IR
//! (`import`). See `docs/onnx.md` for the supported ops and opsets.

mod error;
mod import;
pub mod proto;
mod tensor;

use std::path::Path;

use bytes::Bytes;
use prost::Message;

pub use error::{OnnxError, UnsupportedOp};
pub use import::{OPSET_RANGE, OnnxOptions, SUPPORTED_OPS};

use crate::ir::{Graph, Tensor};

/// Reads and imports the ONNX model at `path`; external data files are
/// resolved relative to its directory.
///
/// The file is memory-mapped, not read: initializers' `raw_data` become params that
/// share the map (see `tensor::read_param`), so the weights are never copied at import.
pub fn load_onnx(path: &Path, opts: &OnnxOptions) -> Result<Graph, OnnxError> {
    let io = |cause| OnnxError::Io {
        file: path.to_path_buf(),
        cause,
    };
    let file = std::fs::File::open(path).map_err(io)?;
    // An empty file is not mapped (nothing to map); decoding refuses it.
    let bytes = if file.metadata().map_err(io)?.len() == 0 {
        Bytes::new()
    } else {
        Bytes::from_owner(neuron_isa::mmap::map_file(&file).map_err(io)?)
    };
    let base = path.parent().unwrap_or(Path::new("."));
    parse_onnx(bytes, base, opts, &path.display().to_string())
}

/// Imports an ONNX model from its serialized bytes. `what` names the source
/// in errors; `base_dir` resolves external data.
pub fn parse_onnx(
    bytes: Bytes,
    base_dir: &Path,
    opts: &OnnxOptions,
    what: &str,
) -> Result<Graph, OnnxError> {
    let len = bytes.len();
    let model = proto::ModelProto::decode(bytes).map_err(|e| OnnxError::Decode {
        what: what.to_string(),
        len,
        message: e.to_string(),
    })?;
    import::import_model(&model, base_dir, opts)
}

/// Decodes a serialized `TensorProto` (ONNX test data `input_K.pb`).
pub fn parse_tensor(bytes: &[u8], base_dir: &Path, what: &str) -> Result<Tensor, OnnxError> {
    let t = proto::TensorProto::decode(bytes).map_err(|e| OnnxError::Decode {
        what: what.to_string(),
        len: bytes.len(),
        message: e.to_string(),
    })?;
    tensor::read_tensor(&t, base_dir)
}

/// Whether `path` names an ONNX model (by its `.onnx` extension).
pub fn is_onnx_path(path: &Path) -> bool {
    path.extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("onnx"))
}

/// Parses a `--input-shape` value, `NAME=1x128` (`NAME=` alone is a scalar).
pub fn parse_input_shape(s: &str) -> Result<(String, Vec<usize>), String> {
    let (name, dims) = s.rsplit_once('=').ok_or_else(|| {
        format!("--input-shape '{s}': expected NAME=DxDx... (e.g. input_ids=1x128)")
    })?;
    if name.is_empty() {
        return Err(format!("--input-shape '{s}': the input name is empty"));
    }
    let mut shape = Vec::new();
    if !dims.is_empty() {
        for d in dims.split(['x', 'X', ',']) {
            let v: usize = d.trim().parse().map_err(|_| {
                format!("--input-shape '{s}': dimension '{d}' is not a positive integer")
            })?;
            if v == 0 {
                return Err(format!("--input-shape '{s}': dimensions must be >= 1"));
            }
            shape.push(v);
        }
    }
    Ok((name.to_string(), shape))
}

/// Import options from `--input-shape` values.
pub fn options_from_input_shapes(values: &[String]) -> Result<OnnxOptions, String> {
    let mut opts = OnnxOptions::default();
    for v in values {
        let (name, shape) = parse_input_shape(v)?;
        if opts.input_shapes.insert(name.clone(), shape).is_some() {
            return Err(format!("--input-shape gives input '{name}' twice"));
        }
    }
    Ok(opts)
}
