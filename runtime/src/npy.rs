//! `.npy` files as [`HostTensor`]s: conversions around the toolchain's one `.npy` reader
//! and writer, [`neuron_isa::npy`] (float32, float64, int8, uint8, int32, int64 and bool,
//! C order, either byte order; every header claim checked before allocating).

use crate::error::RuntimeError;
use crate::host::HostTensor;
use ndarray::{ArrayD, IxDyn};
use neuron_isa::npy::{NpyArray, NpyData, NpyError};
use std::path::Path;

fn from_isa(e: NpyError) -> RuntimeError {
    match e {
        NpyError::Io {
            action,
            path,
            source,
        } => RuntimeError::Io {
            action,
            path,
            source,
        },
        NpyError::Format { path, message } => RuntimeError::Npy { path, message },
    }
}

/// Reads a `.npy` file.
pub fn read_npy(path: &Path) -> Result<HostTensor, RuntimeError> {
    let a = neuron_isa::npy::read_npy(path).map_err(from_isa)?;
    let shape = IxDyn(&a.shape);
    let shaped = |e: ndarray::ShapeError| RuntimeError::Npy {
        path: path.to_path_buf(),
        message: e.to_string(),
    };
    Ok(match a.data {
        NpyData::F32(v) => HostTensor::F32(ArrayD::from_shape_vec(shape, v).map_err(shaped)?),
        NpyData::F64(v) => HostTensor::F64(ArrayD::from_shape_vec(shape, v).map_err(shaped)?),
        NpyData::I8(v) => HostTensor::I8(ArrayD::from_shape_vec(shape, v).map_err(shaped)?),
        NpyData::U8(v) => HostTensor::U8(ArrayD::from_shape_vec(shape, v).map_err(shaped)?),
        NpyData::I32(v) => HostTensor::I32(ArrayD::from_shape_vec(shape, v).map_err(shaped)?),
        NpyData::I64(v) => HostTensor::I64(ArrayD::from_shape_vec(shape, v).map_err(shaped)?),
        NpyData::Bool(v) => HostTensor::Bool(ArrayD::from_shape_vec(shape, v).map_err(shaped)?),
    })
}

/// Writes a `.npy` file (the element type is the tensor's own; always C order).
pub fn write_npy(path: &Path, t: &HostTensor) -> Result<(), RuntimeError> {
    let shape: Vec<usize> = t.shape().iter().map(|&d| d as usize).collect();
    let data = match t {
        HostTensor::F32(a) => NpyData::F32(a.iter().copied().collect()),
        HostTensor::F64(a) => NpyData::F64(a.iter().copied().collect()),
        HostTensor::I8(a) => NpyData::I8(a.iter().copied().collect()),
        HostTensor::U8(a) => NpyData::U8(a.iter().copied().collect()),
        HostTensor::I32(a) => NpyData::I32(a.iter().copied().collect()),
        HostTensor::I64(a) => NpyData::I64(a.iter().copied().collect()),
        HostTensor::Bool(a) => NpyData::Bool(a.iter().copied().collect()),
    };
    neuron_isa::npy::write_npy(path, &NpyArray { shape, data }).map_err(from_isa)
}
