//! The safetensors weights file named by a model's `weights` field.

use std::path::{Path, PathBuf};

use half::{bf16, f16};
use ndarray::{ArrayD, IxDyn};
use safetensors::{Dtype, SafeTensors};

use crate::ir::{DType, Tensor, fmt_shape};

/// A safetensors file read into memory and validated (header, offsets, length).
#[derive(Debug)]
pub struct WeightsFile {
    path: PathBuf,
    bytes: Vec<u8>,
}

fn st_dtype(d: DType) -> Dtype {
    match d {
        DType::F32 => Dtype::F32,
        DType::Bf16 => Dtype::BF16,
        DType::F16 => Dtype::F16,
        DType::I8 => Dtype::I8,
        DType::I32 => Dtype::I32,
        DType::I64 => Dtype::I64,
        DType::Bool => Dtype::BOOL,
    }
}

fn st_dtype_name(d: Dtype) -> String {
    match d {
        Dtype::F32 => "f32".into(),
        Dtype::BF16 => "bf16".into(),
        Dtype::F16 => "f16".into(),
        Dtype::I8 => "i8".into(),
        Dtype::I32 => "i32".into(),
        Dtype::I64 => "i64".into(),
        Dtype::BOOL => "bool".into(),
        other => format!("{other:?}").to_lowercase(),
    }
}

impl WeightsFile {
    /// Reads and validates the file. Errors are lower-case messages.
    pub fn open(path: &Path) -> Result<WeightsFile, String> {
        let bytes = std::fs::read(path).map_err(|e| format!("cannot be read: {e}"))?;
        let wf = WeightsFile {
            path: path.to_path_buf(),
            bytes,
        };
        wf.parse()?;
        Ok(wf)
    }

    fn parse(&self) -> Result<SafeTensors<'_>, String> {
        SafeTensors::deserialize(&self.bytes).map_err(|e| {
            format!(
                "is not a valid safetensors file (truncated or corrupt, {} bytes): {e}",
                self.bytes.len()
            )
            .to_lowercase()
        })
    }

    /// The file path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Tensor names in the file, sorted.
    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .parse()
            .map(|st| st.names().into_iter().map(String::from).collect())
            .unwrap_or_default();
        names.sort();
        names
    }

    /// Whether the file holds a tensor called `name`.
    pub fn contains(&self, name: &str) -> bool {
        self.parse().is_ok_and(|st| st.tensor(name).is_ok())
    }

    /// Reads tensor `name`, which must have exactly `shape` and `dtype`.
    pub fn tensor(&self, name: &str, shape: &[usize], dtype: DType) -> Result<Tensor, String> {
        let st = self.parse()?;
        let view = st
            .tensor(name)
            .map_err(|_| format!("holds no tensor '{name}'"))?;
        if view.shape() != shape || view.dtype() != st_dtype(dtype) {
            return Err(format!(
                "tensor '{name}' is {} {}, expected {} {dtype}",
                fmt_shape(view.shape()),
                st_dtype_name(view.dtype()),
                fmt_shape(shape)
            ));
        }
        let data = view.data();
        let size = dtype.size_bytes();
        let n = data.len() / size;
        if n * size != data.len() || Some(n) != crate::ir::limits::checked_numel(shape) {
            return Err(format!(
                "tensor '{name}' has {} bytes, which does not match its shape",
                data.len()
            ));
        }
        let chunks = data.chunks_exact(size);
        let fail = |e: ndarray::ShapeError| format!("tensor '{name}': {e}");
        let d = IxDyn(shape);
        Ok(match dtype {
            DType::F32 => Tensor::F32(
                ArrayD::from_shape_vec(
                    d,
                    chunks
                        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                        .collect(),
                )
                .map_err(fail)?,
            ),
            DType::Bf16 => Tensor::Bf16(
                ArrayD::from_shape_vec(
                    d,
                    chunks.map(|c| bf16::from_le_bytes([c[0], c[1]])).collect(),
                )
                .map_err(fail)?,
            ),
            DType::F16 => Tensor::F16(
                ArrayD::from_shape_vec(
                    d,
                    chunks.map(|c| f16::from_le_bytes([c[0], c[1]])).collect(),
                )
                .map_err(fail)?,
            ),
            DType::I8 => Tensor::I8(
                ArrayD::from_shape_vec(d, chunks.map(|c| i8::from_le_bytes([c[0]])).collect())
                    .map_err(fail)?,
            ),
            DType::I32 => Tensor::I32(
                ArrayD::from_shape_vec(
                    d,
                    chunks
                        .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                        .collect(),
                )
                .map_err(fail)?,
            ),
            DType::I64 => Tensor::I64(
                ArrayD::from_shape_vec(
                    d,
                    chunks
                        .map(|c| {
                            i64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]])
                        })
                        .collect(),
                )
                .map_err(fail)?,
            ),
            DType::Bool => Tensor::Bool(
                ArrayD::from_shape_vec(d, chunks.map(|c| c[0] != 0).collect()).map_err(fail)?,
            ),
        })
    }
}
