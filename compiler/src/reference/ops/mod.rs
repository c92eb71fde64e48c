//! Plain ndarray implementations of every op, one family per file.
//!
//! Each function takes already type-checked operands (the graph was
//! verified) and returns `Err(message)` only for data-dependent failures
//! such as out-of-range gather indices.

pub(crate) mod conv;
pub(crate) mod elementwise;
pub(crate) mod layout;
pub(crate) mod matmul;
pub(crate) mod norm;
pub(crate) mod pool;
pub(crate) mod reduce;

use ndarray::{ArrayD, ArrayViewD, IxDyn};

/// Broadcasts `a` to `shape`, or explains why it cannot.
pub(crate) fn broadcast_to<'a, T>(
    a: &'a ArrayD<T>,
    shape: &[usize],
) -> Result<ArrayViewD<'a, T>, String> {
    a.broadcast(IxDyn(shape)).ok_or_else(|| {
        format!(
            "cannot broadcast {} to {}",
            crate::ir::fmt_shape(a.shape()),
            crate::ir::fmt_shape(shape)
        )
    })
}

/// A row-major copy of `a` reshaped to `shape` (same element count).
pub(crate) fn reshaped<T: Clone>(a: &ArrayD<T>, shape: &[usize]) -> Result<ArrayD<T>, String> {
    a.as_standard_layout()
        .into_owned()
        .into_shape_with_order(IxDyn(shape))
        .map_err(|e| format!("reshape failed: {e}"))
}
