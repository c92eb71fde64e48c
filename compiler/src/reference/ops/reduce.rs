//! reduce_sum, reduce_mean, reduce_max and global_avg_pool.

use ndarray::{ArrayD, Axis};

use crate::reference::Real;

/// Which reduction.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Reduce {
    Sum,
    Mean,
    Max,
}

/// Reduces `x` over `axes` (sorted, distinct), optionally keeping them as size 1.
pub(crate) fn reduce<F: Real>(
    x: &ArrayD<F>,
    axes: &[usize],
    keepdims: bool,
    kind: Reduce,
) -> ArrayD<F> {
    let mut out = x.clone();
    let mut count = 1usize;
    // Highest axis first so lower axis numbers stay valid.
    for &a in axes.iter().rev() {
        count *= x.shape()[a];
        out = out.map_axis(Axis(a), |lane| match kind {
            Reduce::Max => lane.iter().fold(lane[0], |m, &v| m.max_nan(v)),
            Reduce::Sum | Reduce::Mean => {
                let mut s = F::ZERO;
                for &v in lane {
                    s += v;
                }
                s
            }
        });
    }
    if let Reduce::Mean = kind {
        let n = F::from_f64(count as f64);
        out.mapv_inplace(|v| v / n);
    }
    if keepdims {
        for &a in axes {
            out.insert_axis_inplace(Axis(a));
        }
    }
    out
}

/// Mean over axes `2..rank`, keeping them as size 1.
pub(crate) fn global_avg_pool<F: Real>(x: &ArrayD<F>) -> ArrayD<F> {
    let axes: Vec<usize> = (2..x.ndim()).collect();
    reduce(x, &axes, true, Reduce::Mean)
}
