//! The safetensors weights file named by a model's `weights` field.

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::{Path, PathBuf};

use half::{bf16, f16};
use ndarray::{ArrayD, IxDyn};
use safetensors::{Dtype, SafeTensors};

use crate::ir::{DType, ParamData, Tensor, fmt_shape};

/// A safetensors file, memory-mapped and validated (header, offsets, length). Float
/// tensors become params that share the map ([`WeightsFile::param`]): loading a model
/// copies no weight; the bytes are read from the page cache when something reads them.
/// The header is parsed once, at [`WeightsFile::open`], into an index by name, so a
/// lookup costs a map search however many tensors the file holds.
#[derive(Debug)]
pub struct WeightsFile {
    path: PathBuf,
    bytes: bytes::Bytes,
    index: BTreeMap<String, Entry>,
}

/// One tensor of the file: its header entry and where its data lies in the map.
#[derive(Debug)]
struct Entry {
    dtype: Dtype,
    shape: Vec<usize>,
    range: Range<usize>,
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
        let index = Self::index(&bytes)?;
        Ok(WeightsFile {
            path: path.to_path_buf(),
            bytes,
            index,
        })
    }

    /// Parses and validates the header (safetensors checks the offsets against the
    /// file's length) and records each tensor's dtype, shape and byte range.
    fn index(bytes: &[u8]) -> Result<BTreeMap<String, Entry>, String> {
        let st = SafeTensors::deserialize(bytes).map_err(|e| {
            format!(
                "is not a valid safetensors file (truncated or corrupt, {} bytes): {e}",
                bytes.len()
            )
            .to_lowercase()
        })?;
        st.tensors()
            .into_iter()
            .map(|(name, view)| {
                let data = view.data();
                // `data` borrows from `bytes`: its offset there.
                let start = (data.as_ptr() as usize)
                    .checked_sub(bytes.as_ptr() as usize)
                    .filter(|s| s + data.len() <= bytes.len())
                    .ok_or_else(|| format!("tensor '{name}': data outside the file"))?;
                let entry = Entry {
                    dtype: view.dtype(),
                    shape: view.shape().to_vec(),
                    range: start..start + data.len(),
                };
                Ok((name, entry))
            })
            .collect()
    }

    /// The file path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Tensor names in the file, sorted.
    pub fn names(&self) -> Vec<String> {
        self.index.keys().cloned().collect()
    }

    /// Whether the file holds a tensor called `name`.
    pub fn contains(&self, name: &str) -> bool {
        self.index.contains_key(name)
    }

    /// Tensor `name` (exactly `shape` and `dtype`) as param data: f32, bf16 and f16
    /// share the file's map (no copy), other dtypes are decoded by
    /// [`WeightsFile::tensor`].
    pub fn param(&self, name: &str, shape: &[usize], dtype: DType) -> Result<ParamData, String> {
        if !matches!(dtype, DType::F32 | DType::Bf16 | DType::F16) {
            return self.tensor(name, shape, dtype).map(ParamData::from);
        }
        let range = self.checked_range(name, shape, dtype)?;
        ParamData::from_le_bytes(self.bytes.slice(range), dtype, shape)
            .map_err(|e| format!("tensor '{name}': {e}"))
    }

    /// The byte range of tensor `name`, checked to have exactly `shape` and `dtype` and
    /// a matching byte length.
    fn checked_range(
        &self,
        name: &str,
        shape: &[usize],
        dtype: DType,
    ) -> Result<Range<usize>, String> {
        let entry = self
            .index
            .get(name)
            .ok_or_else(|| format!("holds no tensor '{name}'"))?;
        if entry.shape != shape || entry.dtype != st_dtype(dtype) {
            return Err(format!(
                "tensor '{name}' is {} {}, expected {} {dtype}",
                fmt_shape(&entry.shape),
                st_dtype_name(entry.dtype),
                fmt_shape(shape)
            ));
        }
        let bytes = entry.range.len();
        let size = dtype.size_bytes();
        let n = bytes / size;
        if n * size != bytes || Some(n) != crate::ir::limits::checked_numel(shape) {
            return Err(format!(
                "tensor '{name}' has {bytes} bytes, which does not match its shape"
            ));
        }
        Ok(entry.range.clone())
    }

    /// Reads tensor `name`, which must have exactly `shape` and `dtype`.
    pub fn tensor(&self, name: &str, shape: &[usize], dtype: DType) -> Result<Tensor, String> {
        let data = &self.bytes[self.checked_range(name, shape, dtype)?];
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
