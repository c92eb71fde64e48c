//! transpose, reshape, concat, slice and gather (any element type).

use ndarray::{ArrayD, ArrayViewD, Axis, IxDyn, Slice};

use super::reshaped;
use crate::ir::shape_infer::SliceAxis;

/// Output axis `i` is input axis `perm[i]`.
pub(crate) fn transpose<T: Clone>(x: &ArrayD<T>, perm: &[usize]) -> ArrayD<T> {
    x.view()
        .permuted_axes(IxDyn(perm))
        .as_standard_layout()
        .into_owned()
}

/// Row-major reshape to `shape`.
pub(crate) fn reshape<T: Clone>(x: &ArrayD<T>, shape: &[usize]) -> Result<ArrayD<T>, String> {
    reshaped(x, shape)
}

/// Concatenation along `axis`.
pub(crate) fn concat<T: Clone>(xs: &[&ArrayD<T>], axis: usize) -> Result<ArrayD<T>, String> {
    let views: Vec<ArrayViewD<T>> = xs.iter().map(|x| x.view()).collect();
    ndarray::concatenate(Axis(axis), &views).map_err(|e| e.to_string())
}

/// numpy basic slicing following a normalized plan.
pub(crate) fn slice<T: Clone>(x: &ArrayD<T>, plan: &[SliceAxis]) -> ArrayD<T> {
    x.slice_each_axis(|ad| match plan.iter().find(|p| p.axis == ad.axis.index()) {
        Some(p) => Slice::new(
            p.start as isize,
            Some((p.start + (p.len - 1) * p.step + 1) as isize),
            p.step as isize,
        ),
        None => Slice::from(..),
    })
    .to_owned()
}

/// `numpy.take(data, indices, axis)`; negative indices count from the end.
pub(crate) fn gather<T: Clone>(
    data: &ArrayD<T>,
    indices: &ArrayD<i64>,
    axis: usize,
) -> Result<ArrayD<T>, String> {
    let dim = data.shape()[axis];
    let mut views = Vec::with_capacity(indices.len());
    for &i in indices.iter() {
        let k = if i < 0 { i + dim as i64 } else { i };
        if k < 0 || k >= dim as i64 {
            return Err(format!(
                "gather index {i} is out of range for axis {axis} of size {dim} (expected {} to {})",
                -(dim as i64),
                dim as i64 - 1
            ));
        }
        views.push(
            data.index_axis(Axis(axis), k as usize)
                .insert_axis(Axis(axis)),
        );
    }
    let stacked = ndarray::concatenate(Axis(axis), &views).map_err(|e| e.to_string())?;
    let mut shape = data.shape()[..axis].to_vec();
    shape.extend_from_slice(indices.shape());
    shape.extend_from_slice(&data.shape()[axis + 1..]);
    reshaped(&stacked, &shape)
}
