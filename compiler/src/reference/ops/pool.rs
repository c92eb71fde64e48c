//! max_pool2d and avg_pool2d over NCHW.

use ndarray::{Array4, ArrayD, Ix4};

use crate::reference::Real;

/// Pooling attributes.
#[derive(Clone, Copy, Debug)]
pub(crate) struct PoolParams {
    pub kernel: [usize; 2],
    pub strides: [usize; 2],
    pub pads: [usize; 4],
    /// `None` for max pooling; for average pooling, whether padding counts in the divisor.
    pub avg_count_include_pad: Option<bool>,
}

/// Max (padding never wins) or average over each window.
pub(crate) fn pool2d<F: Real>(
    x: &ArrayD<F>,
    p: PoolParams,
    out_shape: &[usize],
) -> Result<ArrayD<F>, String> {
    let x = x
        .clone()
        .into_dimensionality::<Ix4>()
        .map_err(|e| e.to_string())?;
    let (n, c, h, w) = x.dim();
    let (oh, ow) = (out_shape[2], out_shape[3]);
    let mut out = Array4::from_elem((n, c, oh, ow), F::ZERO);
    for b in 0..n {
        for ch in 0..c {
            for i in 0..oh {
                for j in 0..ow {
                    let mut acc: Option<F> = None;
                    let mut count = 0usize;
                    for pi in 0..p.kernel[0] {
                        let y = (i * p.strides[0] + pi) as isize - p.pads[0] as isize;
                        if y < 0 || y >= h as isize {
                            continue;
                        }
                        for qi in 0..p.kernel[1] {
                            let xx = (j * p.strides[1] + qi) as isize - p.pads[1] as isize;
                            if xx < 0 || xx >= w as isize {
                                continue;
                            }
                            let v = x[[b, ch, y as usize, xx as usize]];
                            count += 1;
                            acc = Some(match (acc, p.avg_count_include_pad) {
                                (None, _) => v,
                                (Some(a), None) => a.max_nan(v),
                                (Some(a), Some(_)) => a + v,
                            });
                        }
                    }
                    let a = acc.unwrap_or(F::ZERO);
                    out[[b, ch, i, j]] = match p.avg_count_include_pad {
                        None => a,
                        Some(include) => {
                            let d = if include {
                                p.kernel[0] * p.kernel[1]
                            } else {
                                count.max(1)
                            };
                            a / F::from_f64(d as f64)
                        }
                    };
                }
            }
        }
    }
    Ok(out.into_dyn())
}
