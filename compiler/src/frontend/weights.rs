//! The safetensors weights file named by a model's `weights` field.

use std::path::{Path, PathBuf};

use half::{bf16, f16};
use ndarray::{ArrayD, IxDyn};
use safetensors::{Dtype, SafeTensors};

use crate::ir::{DType, ParamData, Tensor, fmt_shape};

/// A safetensors file, memory-mapped and validated (header, offsets, length). Float
/// tensors become params that share the map ([`WeightsFile::param`]): loading a model
/// copies no weight; the bytes are read from the page cache when something reads them.
#[derive(Debug)]
pub struct WeightsFile {
    path: PathBuf,
    bytes: bytes::Bytes,
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
        let read_err = |e: std::io::Error| format!("cannot be read: {e}");
        let file = std::fs::File::open(path).map_err(read_err)?;
        let len = file.metadata().map_err(read_err)?.len();
        // An empty file is not mapped (nothing to map); the parse below refuses it.
        let bytes = if len == 0 {
            bytes::Bytes::new()
        } else {
            bytes::Bytes::from_owner(neuron_isa::mmap::map_file(&file).map_err(read_err)?)
        };
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

    /// Tensor `name` (exactly `shape` and `dtype`) as param data: f32, bf16 and f16
    /// share the file's map (no copy), other dtypes are decoded by
    /// [`WeightsFile::tensor`].
    pub fn param(&self, name: &str, shape: &[usize], dtype: DType) -> Result<ParamData, String> {
        if !matches!(dtype, DType::F32 | DType::Bf16 | DType::F16) {
            return self.tensor(name, shape, dtype).map(ParamData::from);
        }
        let (start, len) = {
            let st = self.parse()?;
            let data = self.checked_view(&st, name, shape, dtype)?.data();
            // `data` borrows from `self.bytes`: its offset there.
            let start = (data.as_ptr() as usize)
                .checked_sub(self.bytes.as_ptr() as usize)
                .filter(|s| s + data.len() <= self.bytes.len())
                .ok_or_else(|| format!("tensor '{name}': data outside the file"))?;
            (start, data.len())
        };
        ParamData::from_le_bytes(self.bytes.slice(start..start + len), dtype, shape)
            .map_err(|e| format!("tensor '{name}': {e}"))
    }

    /// The view of tensor `name`, checked to have exactly `shape` and `dtype` and a
    /// matching byte length.
    fn checked_view<'a>(
        &self,
        st: &SafeTensors<'a>,
        name: &str,
        shape: &[usize],
        dtype: DType,
    ) -> Result<safetensors::tensor::TensorView<'a>, String> {
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
        Ok(view)
    }

    /// Reads tensor `name`, which must have exactly `shape` and `dtype`.
    pub fn tensor(&self, name: &str, shape: &[usize], dtype: DType) -> Result<Tensor, String> {
        let st = self.parse()?;
        let view = self.checked_view(&st, name, shape, dtype)?;
        let data = view.data();
        let size = dtype.size_bytes();
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

#[cfg(test)]
mod tests {
    use super::*;
    use safetensors::tensor::TensorView;

    #[test]
    fn float_params_share_the_map_and_match_the_decoded_tensor() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.safetensors");
        let w: Vec<u8> = [1.5f32, -2.0, 0.25, 8.0, 3.0, -0.5]
            .iter()
            .flat_map(|x| x.to_le_bytes())
            .collect();
        let i: Vec<u8> = [7i32, -3].iter().flat_map(|x| x.to_le_bytes()).collect();
        let views = [
            ("w", TensorView::new(Dtype::F32, vec![2, 3], &w).unwrap()),
            ("i", TensorView::new(Dtype::I32, vec![2], &i).unwrap()),
        ];
        std::fs::write(&path, safetensors::serialize(views, None).unwrap()).unwrap();
        let f = WeightsFile::open(&path).unwrap();
        let p = f.param("w", &[2, 3], DType::F32).unwrap();
        let mut v = vec![0f32; 4];
        assert!(p.values_f32(2, &mut v));
        assert!(
            !p.is_materialized(),
            "a mapped param is decoded only when read"
        );
        assert_eq!(v, [0.25, 8.0, 3.0, -0.5]);
        assert_eq!(*p.tensor(), f.tensor("w", &[2, 3], DType::F32).unwrap());
        let q = f.param("i", &[2], DType::I32).unwrap();
        assert_eq!(*q.tensor(), f.tensor("i", &[2], DType::I32).unwrap());
        let e = f.param("w", &[3, 2], DType::F32).unwrap_err();
        assert!(e.contains("expected [3,2] f32"), "{e}");
        drop(f); // the param keeps the map alive
        assert_eq!(p.tensor().to_f64().iter().sum::<f64>(), 10.25);
    }
}
