//! Reading and writing [`Tensor`]s as `.npy` files.
//!
//! Readable element types: f32, f64, i8, i32, i64, bool (little-endian, C or
//! Fortran order). bf16 and f16 tensors are written as f32 (npy has no bf16).
//! The header's shape is checked against
//! [`MAX_TENSOR_ELEMENTS`](crate::ir::limits::MAX_TENSOR_ELEMENTS) before any
//! data is read.

use std::path::{Path, PathBuf};

use ndarray::ArrayD;
use ndarray_npy::npy::header::Header;
use ndarray_npy::{ReadNpyExt, WriteNpyExt};

use crate::ir::limits::check_shape;
use crate::ir::{Tensor, fmt_shape};

/// Why an `.npy` file could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum NpyError {
    /// The file could not be opened, read or created.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The file is not a supported `.npy` array.
    #[error("{}: {message}", path.display())]
    Format {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
}

/// Reads an `.npy` file into a tensor of the file's element type.
pub fn read_npy(path: &Path) -> Result<Tensor, NpyError> {
    let bytes = std::fs::read(path).map_err(|source| NpyError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let format = |message: String| NpyError::Format {
        path: path.to_path_buf(),
        message,
    };
    let header = Header::from_reader(&mut &bytes[..])
        .map_err(|e| format(format!("not a valid .npy file: {e}").to_lowercase()))?;
    check_shape(&header.shape).map_err(|e| {
        format(format!(
            "array of shape {} refused: {e}",
            fmt_shape(&header.shape)
        ))
    })?;
    let descr = header.type_descriptor.to_string();
    macro_rules! try_read {
        ($t:ty, $variant:ident) => {
            if let Ok(a) = ArrayD::<$t>::read_npy(&bytes[..]) {
                return Ok(Tensor::$variant(a));
            }
        };
    }
    try_read!(f32, F32);
    try_read!(f64, F64);
    try_read!(i64, I64);
    try_read!(i32, I32);
    try_read!(i8, I8);
    try_read!(bool, Bool);
    Err(format(format!(
        "unsupported or truncated array (dtype {descr}, shape {}); expected little-endian f32, f64, i8, i32, i64 or bool data",
        fmt_shape(&header.shape)
    )))
}

/// Writes a tensor as `.npy` (bf16 and f16 are widened to f32).
pub fn write_npy(path: &Path, t: &Tensor) -> Result<(), NpyError> {
    let file = std::fs::File::create(path).map_err(|source| NpyError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let w = std::io::BufWriter::new(file);
    let res = match t {
        Tensor::F32(a) => a.write_npy(w),
        Tensor::F64(a) => a.write_npy(w),
        Tensor::Bf16(_) | Tensor::F16(_) => t.to_f32().write_npy(w),
        Tensor::I8(a) => a.write_npy(w),
        Tensor::I32(a) => a.write_npy(w),
        Tensor::I64(a) => a.write_npy(w),
        Tensor::Bool(a) => a.write_npy(w),
    };
    res.map_err(|e| NpyError::Format {
        path: path.to_path_buf(),
        message: format!("cannot write: {e}"),
    })
}

/// Replaces every character outside `[A-Za-z0-9._-]` with `_` (for file names); shared with
/// the runtime so both tools write the same files.
pub use neuron_isa::host::sanitize_file_name;

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::arr2;

    #[test]
    fn round_trip() {
        let dir = tempfile::tempdir().unwrap();
        for t in [
            Tensor::F32(arr2(&[[1.5f32, -2.0], [3.0, 4.0]]).into_dyn()),
            Tensor::F64(arr2(&[[1.5f64]]).into_dyn()),
            Tensor::I64(arr2(&[[7i64, -1]]).into_dyn()),
            Tensor::I32(arr2(&[[7i32, -1]]).into_dyn()),
            Tensor::I8(arr2(&[[7i8, -1]]).into_dyn()),
            Tensor::Bool(arr2(&[[true, false]]).into_dyn()),
        ] {
            let p = dir.path().join("t.npy");
            write_npy(&p, &t).unwrap();
            assert_eq!(read_npy(&p).unwrap(), t);
        }
        let p = dir.path().join("bad.npy");
        std::fs::write(&p, b"not npy").unwrap();
        assert!(
            read_npy(&p)
                .unwrap_err()
                .to_string()
                .contains("not a valid .npy file")
        );
    }

    #[test]
    fn sanitize() {
        assert_eq!(sanitize_file_name("a/b:c d.x-1"), "a_b_c_d.x-1");
    }
}
