//! numpy matmul with broadcast batch dimensions.

use ndarray::{ArrayD, IxDyn};

use super::{broadcast_to, reshaped};
use crate::reference::Real;

/// `a @ b` (or `a @ b^T` on the last two axes) producing `out_shape`.
///
/// Plain triple loop per batch: `out[i, j] = sum_p a[i, p] * b[p, j]`,
/// summed in order `p = 0, 1, ...` in the compute type.
pub(crate) fn matmul<F: Real>(
    a: &ArrayD<F>,
    b: &ArrayD<F>,
    transpose_b: bool,
    out_shape: &[usize],
) -> Result<ArrayD<F>, String> {
    let r = out_shape.len();
    let (batch, m, n) = (&out_shape[..r - 2], out_shape[r - 2], out_shape[r - 1]);
    let k = a.shape()[a.ndim() - 1];
    let nb: usize = batch.iter().product();
    // Bring b to [..., n, k] so each output element is a dot of two contiguous rows.
    let mut bt = b.view();
    if !transpose_b {
        bt.swap_axes(b.ndim() - 2, b.ndim() - 1);
    }
    let bt = bt.to_owned();
    let a_shape: Vec<usize> = batch.iter().copied().chain([m, k]).collect();
    let b_shape: Vec<usize> = batch.iter().copied().chain([n, k]).collect();
    let a3 = reshaped(&broadcast_to(a, &a_shape)?.to_owned(), &[nb, m, k])?;
    let b3 = reshaped(&broadcast_to(&bt, &b_shape)?.to_owned(), &[nb, n, k])?;
    let (Some(a_s), Some(b_s)) = (a3.as_slice(), b3.as_slice()) else {
        return Err("matmul operands are not contiguous".into());
    };
    let mut out = Vec::with_capacity(nb * m * n);
    for bi in 0..nb {
        for i in 0..m {
            let row = &a_s[(bi * m + i) * k..][..k];
            for j in 0..n {
                let col = &b_s[(bi * n + j) * k..][..k];
                let mut s = F::ZERO;
                for (&x, &y) in row.iter().zip(col) {
                    s += x * y;
                }
                out.push(s);
            }
        }
    }
    ArrayD::from_shape_vec(IxDyn(out_shape), out).map_err(|e| e.to_string())
}
