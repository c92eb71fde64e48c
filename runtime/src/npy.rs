//! Reading and writing [`HostTensor`]s as `.npy` files.
//!
//! Supported element types: float32, float64, int8, uint8, int32, int64 and bool, in C
//! order, either byte order. Anything else (float16, complex, structured, Fortran order)
//! is refused with a message naming the file and the type found.

use crate::error::RuntimeError;
use crate::host::HostTensor;
use ndarray::ArrayD;
use ndarray_npy::npy::header::{Header, Layout};
use ndarray_npy::{ReadNpyExt, ReadableElement, WriteNpyExt};
use std::io::Cursor;
use std::path::Path;

fn npy_err(path: &Path, message: impl Into<String>) -> RuntimeError {
    RuntimeError::Npy {
        path: path.to_path_buf(),
        message: message.into(),
    }
}

fn read_as<T: ReadableElement>(bytes: &[u8], path: &Path) -> Result<ArrayD<T>, RuntimeError> {
    ArrayD::<T>::read_npy(Cursor::new(bytes))
        .map_err(|e| npy_err(path, format!("invalid .npy: {e}")))
}

/// Reads a `.npy` file.
pub fn read_npy(path: &Path) -> Result<HostTensor, RuntimeError> {
    let bytes = std::fs::read(path).map_err(|e| RuntimeError::io("read", path, e))?;
    let header = Header::from_reader(&mut Cursor::new(&bytes))
        .map_err(|e| npy_err(path, format!("not a valid .npy file: {e}")))?;
    if header.layout == Layout::Fortran {
        return Err(npy_err(
            path,
            "expected a C-order array, found fortran_order=True (save with np.ascontiguousarray)",
        ));
    }
    // The descriptor is a Python string literal such as '<f4'; the byte order does not
    // matter here (ndarray-npy swaps), only the kind and size.
    let descr = header.type_descriptor.to_string();
    let code = descr.trim_matches(|c| c == '\'' || c == '"');
    let kind = code.trim_start_matches(['<', '>', '|', '=']);
    Ok(match kind {
        "f4" => HostTensor::F32(read_as(&bytes, path)?),
        "f8" => HostTensor::F64(read_as(&bytes, path)?),
        "i1" => HostTensor::I8(read_as(&bytes, path)?),
        "u1" => HostTensor::U8(read_as(&bytes, path)?),
        "i4" => HostTensor::I32(read_as(&bytes, path)?),
        "i8" => HostTensor::I64(read_as(&bytes, path)?),
        "b1" => HostTensor::Bool(read_as(&bytes, path)?),
        _ => {
            return Err(npy_err(
                path,
                format!(
                    "unsupported element type {descr}: expected float32, float64, int8, uint8, int32, int64 or bool"
                ),
            ));
        }
    })
}

/// Writes a `.npy` file (the element type is the tensor's own).
pub fn write_npy(path: &Path, t: &HostTensor) -> Result<(), RuntimeError> {
    let file = std::fs::File::create(path).map_err(|e| RuntimeError::io("create", path, e))?;
    let mut w = std::io::BufWriter::new(file);
    let r = match t {
        HostTensor::F32(a) => a.write_npy(&mut w),
        HostTensor::F64(a) => a.write_npy(&mut w),
        HostTensor::I8(a) => a.write_npy(&mut w),
        HostTensor::U8(a) => a.write_npy(&mut w),
        HostTensor::I32(a) => a.write_npy(&mut w),
        HostTensor::I64(a) => a.write_npy(&mut w),
        HostTensor::Bool(a) => a.write_npy(&mut w),
    };
    r.map_err(|e| npy_err(path, format!("cannot write .npy: {e}")))?;
    std::io::Write::flush(&mut w).map_err(|e| RuntimeError::io("write", path, e))
}
