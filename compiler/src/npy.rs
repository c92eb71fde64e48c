//! `.npy` files as [`Tensor`]s: conversions around the toolchain's one `.npy` reader and
//! writer, [`neuron_isa::npy`] (which checks every header claim before allocating).
//!
//! uint8 files read as i32; bf16 and f16 tensors are written as f32 (npy has no bf16).
//! Shapes are also checked against the compiler's limits
//! ([`check_shape`](crate::ir::limits::check_shape): no empty tensors).

use std::path::Path;

use ndarray::{ArrayD, IxDyn};
pub use neuron_isa::npy::NpyError;
use neuron_isa::npy::{NpyArray, NpyData};

use crate::ir::limits::check_shape;
use crate::ir::{Tensor, fmt_shape};

/// Reads an `.npy` file into a tensor of the file's element type.
pub fn read_npy(path: &Path) -> Result<Tensor, NpyError> {
    let a = neuron_isa::npy::read_npy(path)?;
    let format = |message: String| NpyError::Format {
        path: path.to_path_buf(),
        message,
    };
    check_shape(&a.shape).map_err(|e| {
        format(format!(
            "array of shape {} refused: {e}",
            fmt_shape(&a.shape)
        ))
    })?;
    let shape = IxDyn(&a.shape);
    let shaped = |e: ndarray::ShapeError| format(e.to_string());
    Ok(match a.data {
        NpyData::F32(v) => Tensor::F32(ArrayD::from_shape_vec(shape, v).map_err(shaped)?),
        NpyData::F64(v) => Tensor::F64(ArrayD::from_shape_vec(shape, v).map_err(shaped)?),
        NpyData::I8(v) => Tensor::I8(ArrayD::from_shape_vec(shape, v).map_err(shaped)?),
        NpyData::U8(v) => Tensor::I32(
            ArrayD::from_shape_vec(shape, v.into_iter().map(i32::from).collect())
                .map_err(shaped)?,
        ),
        NpyData::I32(v) => Tensor::I32(ArrayD::from_shape_vec(shape, v).map_err(shaped)?),
        NpyData::I64(v) => Tensor::I64(ArrayD::from_shape_vec(shape, v).map_err(shaped)?),
        NpyData::Bool(v) => Tensor::Bool(ArrayD::from_shape_vec(shape, v).map_err(shaped)?),
    })
}

/// Writes a tensor as `.npy`, C order (bf16 and f16 are widened to f32).
pub fn write_npy(path: &Path, t: &Tensor) -> Result<(), NpyError> {
    let data = match t {
        Tensor::F32(a) => NpyData::F32(a.iter().copied().collect()),
        Tensor::F64(a) => NpyData::F64(a.iter().copied().collect()),
        Tensor::Bf16(_) | Tensor::F16(_) => NpyData::F32(t.to_f32().iter().copied().collect()),
        Tensor::I8(a) => NpyData::I8(a.iter().copied().collect()),
        Tensor::I32(a) => NpyData::I32(a.iter().copied().collect()),
        Tensor::I64(a) => NpyData::I64(a.iter().copied().collect()),
        Tensor::Bool(a) => NpyData::Bool(a.iter().copied().collect()),
    };
    neuron_isa::npy::write_npy(
        path,
        &NpyArray {
            shape: t.shape().to_vec(),
            data,
        },
    )
}

/// The file-name rule both tools share (see [`neuron_isa::host::output_file_names`]).
pub use neuron_isa::host::{output_file_names, sanitize_file_name};

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
            // A transposed view is written in row-major (C) order, never Fortran order.
            Tensor::F32(
                arr2(&[[1.0f32, 2.0], [3.0, 4.0]])
                    .reversed_axes()
                    .into_dyn(),
            ),
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
                .contains("not a .npy file")
        );
    }
}
