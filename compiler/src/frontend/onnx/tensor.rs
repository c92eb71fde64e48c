//! `TensorProto` to [`Tensor`]: typed fields, `raw_data`, and external data
//! files (`location`, `offset`, `length`), with sizes checked before allocation.

use std::io::{Read, Seek, SeekFrom};
use std::path::{Component, Path};

use half::{bf16, f16};
use ndarray::{ArrayD, IxDyn};

use super::OnnxError;
use super::proto::{TensorProto, data_type as dt};
use crate::ir::limits::check_shape;
use crate::ir::{DType, ParamData, Tensor, fmt_shape};

/// The graph dtype an ONNX element type is imported as. DOUBLE becomes f32
/// (the graph IR has no f64; a deviation documented in `docs/onnx.md`).
pub(crate) fn import_dtype(t: i32) -> Option<DType> {
    Some(match t {
        dt::FLOAT | dt::DOUBLE => DType::F32,
        dt::FLOAT16 => DType::F16,
        dt::BFLOAT16 => DType::Bf16,
        dt::INT8 => DType::I8,
        dt::INT32 => DType::I32,
        dt::INT64 => DType::I64,
        dt::BOOL => DType::Bool,
        _ => return None,
    })
}

/// The tensor's shape, checked against the graph's size limits.
pub(crate) fn tensor_shape(name: &str, dims: &[i64]) -> Result<Vec<usize>, OnnxError> {
    let mut shape = Vec::with_capacity(dims.len());
    for &d in dims {
        if d <= 0 {
            return Err(OnnxError::tensor(
                name,
                format!(
                    "dims {dims:?}: every dimension must be >= 1 (empty tensors are not supported)"
                ),
            ));
        }
        shape.push(
            usize::try_from(d)
                .map_err(|_| OnnxError::tensor(name, format!("dimension {d} is too large")))?,
        );
    }
    check_shape(&shape)
        .map_err(|e| OnnxError::tensor(name, format!("shape {}: {e}", fmt_shape(&shape))))?;
    Ok(shape)
}

/// Decodes `t`; external data is read relative to `base_dir`.
pub(crate) fn read_tensor(t: &TensorProto, base_dir: &Path) -> Result<Tensor, OnnxError> {
    let name = t.name.as_deref().unwrap_or("");
    let ty = t.data_type.unwrap_or(0);
    let dtype = import_dtype(ty).ok_or_else(|| {
        OnnxError::tensor(
            name,
            format!(
                "data type {} ({ty}) is not supported (expected FLOAT, DOUBLE, FLOAT16, BFLOAT16, INT8, INT32, INT64 or BOOL)",
                dt::name(ty)
            ),
        )
    })?;
    let shape = tensor_shape(name, &t.dims)?;
    let n: usize = shape.iter().product();
    let width = if ty == dt::DOUBLE {
        8
    } else {
        dtype.size_bytes()
    };
    let external = t.data_location == Some(1);
    let ext_bytes;
    let raw: Option<&[u8]> = if external {
        ext_bytes = read_external(t, name, base_dir, n * width)?;
        Some(&ext_bytes)
    } else {
        t.raw_data.as_deref()
    };
    let bad_len = |found: usize, field: &str| {
        OnnxError::tensor(
            name,
            format!(
                "{} {} needs {n} elements, {field} holds {found}",
                fmt_shape(&shape),
                dt::name(ty)
            ),
        )
    };
    if let Some(raw) = raw {
        if raw.len() != n * width {
            return Err(bad_len(raw.len() / width.max(1), "raw_data"));
        }
        return Ok(from_raw(raw, ty, dtype, shape));
    }
    macro_rules! arr {
        ($v:expr) => {
            ArrayD::from_shape_vec(IxDyn(&shape), $v)
        };
    }
    let check = |len: usize, field: &str| {
        if len == n {
            Ok(())
        } else {
            Err(bad_len(len, field))
        }
    };
    let shape_err = |e: ndarray::ShapeError| OnnxError::tensor(name, e.to_string());
    Ok(match ty {
        dt::FLOAT => {
            check(t.float_data.len(), "float_data")?;
            Tensor::F32(arr!(t.float_data.clone()).map_err(shape_err)?)
        }
        dt::DOUBLE => {
            check(t.double_data.len(), "double_data")?;
            Tensor::F32(arr!(t.double_data.iter().map(|&x| x as f32).collect()).map_err(shape_err)?)
        }
        dt::INT64 => {
            check(t.int64_data.len(), "int64_data")?;
            Tensor::I64(arr!(t.int64_data.clone()).map_err(shape_err)?)
        }
        _ => {
            check(t.int32_data.len(), "int32_data")?;
            let d = &t.int32_data;
            match dtype {
                DType::I32 => Tensor::I32(arr!(d.clone()).map_err(shape_err)?),
                DType::I8 => {
                    Tensor::I8(arr!(d.iter().map(|&x| x as i8).collect()).map_err(shape_err)?)
                }
                DType::Bool => {
                    Tensor::Bool(arr!(d.iter().map(|&x| x != 0).collect()).map_err(shape_err)?)
                }
                DType::F16 => Tensor::F16(
                    arr!(d.iter().map(|&x| f16::from_bits(x as u16)).collect())
                        .map_err(shape_err)?,
                ),
                DType::Bf16 => Tensor::Bf16(
                    arr!(d.iter().map(|&x| bf16::from_bits(x as u16)).collect())
                        .map_err(shape_err)?,
                ),
                _ => return Err(OnnxError::tensor(name, "unexpected data field")),
            }
        }
    })
}

/// An initializer as param data. FLOAT, FLOAT16 and BFLOAT16 `raw_data` in the model
/// file is not copied: the handle shares the file buffer's bytes (a slice of the
/// `Bytes` the protobuf was decoded from) and decodes elements when they are read, so
/// importing a large model copies no weight. Anything else is decoded by
/// [`read_tensor`] (the one copy).
pub(crate) fn read_param(t: &TensorProto, base_dir: &Path) -> Result<ParamData, OnnxError> {
    let ty = t.data_type.unwrap_or(0);
    let dtype = match ty {
        dt::FLOAT => Some(DType::F32),
        dt::FLOAT16 => Some(DType::F16),
        dt::BFLOAT16 => Some(DType::Bf16),
        _ => None,
    };
    if let (Some(dtype), Some(raw), false) = (dtype, &t.raw_data, t.data_location == Some(1)) {
        let name = t.name.as_deref().unwrap_or("");
        let shape = tensor_shape(name, &t.dims)?;
        // A length that does not match falls through to `read_tensor`'s error.
        if raw.len() == shape.iter().product::<usize>() * dtype.size_bytes() {
            return ParamData::from_le_bytes(raw.clone(), dtype, &shape)
                .map_err(|e| OnnxError::tensor(name, format!("raw_data: {e}")));
        }
    }
    read_tensor(t, base_dir).map(ParamData::new)
}

/// Little-endian packed elements (length already checked) to a tensor.
fn from_raw(raw: &[u8], ty: i32, dtype: DType, shape: Vec<usize>) -> Tensor {
    fn le<const W: usize, T>(raw: &[u8], f: impl Fn([u8; W]) -> T) -> Vec<T> {
        raw.chunks_exact(W)
            .map(|c| {
                let mut b = [0u8; W];
                b.copy_from_slice(c);
                f(b)
            })
            .collect()
    }
    let sh = IxDyn(&shape);
    // Lengths were checked against the shape, so from_shape_vec cannot fail;
    // fall back to zeros rather than panic if it ever did.
    macro_rules! mk {
        ($var:ident, $v:expr) => {
            ArrayD::from_shape_vec(sh.clone(), $v)
                .map(Tensor::$var)
                .unwrap_or_else(|_| Tensor::zeros(dtype, &shape))
        };
    }
    match (ty, dtype) {
        (dt::DOUBLE, _) => mk!(F32, le::<8, _>(raw, |b| f64::from_le_bytes(b) as f32)),
        (_, DType::F32) => mk!(F32, le::<4, _>(raw, f32::from_le_bytes)),
        (_, DType::F16) => mk!(
            F16,
            le::<2, _>(raw, |b| f16::from_bits(u16::from_le_bytes(b)))
        ),
        (_, DType::Bf16) => mk!(
            Bf16,
            le::<2, _>(raw, |b| bf16::from_bits(u16::from_le_bytes(b)))
        ),
        (_, DType::I8) => mk!(I8, raw.iter().map(|&b| b as i8).collect()),
        (_, DType::I32) => mk!(I32, le::<4, _>(raw, i32::from_le_bytes)),
        (_, DType::I64) => mk!(I64, le::<8, _>(raw, i64::from_le_bytes)),
        (_, DType::Bool) => mk!(Bool, raw.iter().map(|&b| b != 0).collect()),
    }
}

/// Reads the `expected` bytes of an external tensor, checking the file's size
/// and the declared `length` before allocating.
fn read_external(
    t: &TensorProto,
    name: &str,
    base_dir: &Path,
    expected: usize,
) -> Result<Vec<u8>, OnnxError> {
    let mut location = None;
    let mut offset = 0u64;
    let mut length = None;
    for e in &t.external_data {
        let v = e.value.as_deref().unwrap_or("");
        let parse = |key: &str| {
            v.parse::<u64>().map_err(|_| {
                OnnxError::tensor(
                    name,
                    format!("external data {key} '{v}' is not a non-negative integer"),
                )
            })
        };
        match e.key.as_deref().unwrap_or("") {
            "location" => location = Some(v.to_string()),
            "offset" => offset = parse("offset")?,
            "length" => length = Some(parse("length")?),
            _ => {}
        }
    }
    let location =
        location.ok_or_else(|| OnnxError::tensor(name, "external data has no 'location'"))?;
    let rel = Path::new(&location);
    if rel.is_absolute() || rel.components().any(|c| matches!(c, Component::ParentDir)) {
        return Err(OnnxError::tensor(
            name,
            format!(
                "external data location '{location}' must be a relative path inside the model's directory"
            ),
        ));
    }
    if let Some(len) = length
        && len != expected as u64
    {
        return Err(OnnxError::tensor(
            name,
            format!(
                "external data length {len} does not match the {expected} bytes its shape and type need"
            ),
        ));
    }
    let file = base_dir.join(rel);
    let io = |cause| OnnxError::Io {
        file: file.clone(),
        cause,
    };
    let mut f = std::fs::File::open(&file).map_err(io)?;
    let size = f.metadata().map_err(io)?.len();
    if offset
        .checked_add(expected as u64)
        .is_none_or(|end| end > size)
    {
        return Err(OnnxError::tensor(
            name,
            format!(
                "external data file {} has {size} bytes, the tensor needs bytes {offset}..{} (truncated file?)",
                file.display(),
                offset.saturating_add(expected as u64)
            ),
        ));
    }
    f.seek(SeekFrom::Start(offset)).map_err(io)?;
    let mut buf = vec![0u8; expected];
    f.read_exact(&mut buf).map_err(io)?;
    Ok(buf)
}
