//! Literal param values: a JSON scalar or nested list matching the shape.

use ndarray::{ArrayD, IxDyn};
use serde_json::Value;

use super::ModelError;
use super::attrs::describe;
use crate::ir::limits::check_shape;
use crate::ir::{DType, Tensor, fmt_shape};

/// Parses `v` (a scalar for shape `[]`, else nested lists whose lengths are
/// the dims of `shape`) into a tensor of `dtype`.
///
/// Floats must be finite after rounding to `dtype`; integers must be whole
/// and fit `dtype`; bools are `true`/`false`. `path` (e.g. `params[2].value`)
/// prefixes error paths, which point at the offending element.
pub fn parse_literal(
    v: &Value,
    shape: &[usize],
    dtype: DType,
    path: &str,
) -> Result<Tensor, ModelError> {
    check_shape(shape).map_err(|e| {
        ModelError::invalid(path, format!("literal of shape {}: {e}", fmt_shape(shape)))
    })?;
    let mut leaves = Vec::new();
    collect(v, shape, path.to_string(), &mut leaves)?;
    let shape_d = IxDyn(shape);
    let build = |t: Result<Tensor, ndarray::ShapeError>| {
        t.map_err(|e| {
            ModelError::invalid(
                path,
                format!("literal does not fit shape {}: {e}", fmt_shape(shape)),
            )
        })
    };
    if dtype == DType::Bool {
        let mut out = Vec::with_capacity(leaves.len());
        for (p, x) in &leaves {
            out.push(x.as_bool().ok_or_else(|| {
                ModelError::invalid(
                    p.as_str(),
                    format!(
                        "expected true or false for a bool literal, found {}",
                        describe(x)
                    ),
                )
            })?);
        }
        return build(ArrayD::from_shape_vec(shape_d, out).map(Tensor::Bool));
    }
    if dtype.is_int() {
        let (lo, hi) = match dtype {
            DType::I8 => (i64::from(i8::MIN), i64::from(i8::MAX)),
            DType::I32 => (i64::from(i32::MIN), i64::from(i32::MAX)),
            _ => (i64::MIN, i64::MAX),
        };
        let mut out = Vec::with_capacity(leaves.len());
        for (p, x) in &leaves {
            let i = x
                .as_i64()
                .filter(|i| (lo..=hi).contains(i))
                .ok_or_else(|| {
                    ModelError::invalid(
                        p.as_str(),
                        format!(
                            "expected an integer in {lo}..={hi} for a {dtype} literal, found {}",
                            describe(x)
                        ),
                    )
                })?;
            out.push(i);
        }
        let a = ArrayD::from_shape_vec(shape_d, out);
        return build(a.map(|a| Tensor::I64(a).cast(dtype)));
    }
    let mut out = Vec::with_capacity(leaves.len());
    for (p, x) in &leaves {
        let f = x.as_f64().ok_or_else(|| {
            ModelError::invalid(
                p.as_str(),
                format!(
                    "expected a number for a {dtype} literal, found {}",
                    describe(x)
                ),
            )
        })?;
        let rounded = Tensor::from_f64(dtype, ArrayD::from_elem(IxDyn(&[]), f)).to_f64();
        if rounded.iter().any(|r| !r.is_finite()) {
            return Err(ModelError::invalid(
                p.as_str(),
                format!("non-finite literal: {x} is not a finite {dtype} value"),
            ));
        }
        out.push(f);
    }
    build(ArrayD::from_shape_vec(shape_d, out).map(|a| Tensor::from_f64(dtype, a)))
}

fn collect<'a>(
    v: &'a Value,
    shape: &[usize],
    path: String,
    out: &mut Vec<(String, &'a Value)>,
) -> Result<(), ModelError> {
    match shape.split_first() {
        None => {
            if v.is_array() || v.is_object() || v.is_null() || v.is_string() {
                return Err(ModelError::invalid(
                    path,
                    format!("expected a scalar, found {}", describe(v)),
                ));
            }
            out.push((path, v));
            Ok(())
        }
        Some((&n, rest)) => {
            let list = v.as_array().filter(|l| l.len() == n).ok_or_else(|| {
                let found = match v.as_array() {
                    Some(l) => format!("a list of {}", l.len()),
                    None => describe(v),
                };
                ModelError::invalid(
                    path.as_str(),
                    format!(
                        "expected a list of {n} (shape {} remaining), found {found}",
                        fmt_shape(shape)
                    ),
                )
            })?;
            for (i, x) in list.iter().enumerate() {
                collect(x, rest, format!("{path}[{i}]"), out)?;
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn literals() {
        let t = parse_literal(&json!([[1, 2], [3, 4.5]]), &[2, 2], DType::F32, "p").unwrap();
        assert_eq!(
            t.to_f64().iter().copied().collect::<Vec<_>>(),
            vec![1.0, 2.0, 3.0, 4.5]
        );
        let t = parse_literal(&json!(0.125), &[], DType::F32, "p").unwrap();
        assert_eq!(t.shape(), &[] as &[usize]);
        let e = parse_literal(
            &json!([[1, 2], [3]]),
            &[2, 2],
            DType::F32,
            "params[0].value",
        )
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "params[0].value[1]: expected a list of 2 (shape [2] remaining), found a list of 1"
        );
        let e = parse_literal(&json!([1e300]), &[1], DType::F32, "v").unwrap_err();
        assert!(e.to_string().contains("non-finite"), "{e}");
        let e = parse_literal(&json!([300]), &[1], DType::I8, "v").unwrap_err();
        assert!(
            e.to_string()
                .starts_with("v[0]: expected an integer in -128..=127"),
            "{e}"
        );
        let t = parse_literal(&json!([true, false]), &[2], DType::Bool, "v").unwrap();
        assert_eq!(t.dtype(), DType::Bool);
    }
}
