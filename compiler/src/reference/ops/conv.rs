//! Direct 2-D convolution over NCHW / OIHW.

use ndarray::{ArrayD, IxDyn};
use rayon::prelude::*;

use crate::reference::Real;

/// Convolution attributes.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ConvParams {
    pub strides: [usize; 2],
    pub pads: [usize; 4],
    pub dilations: [usize; 2],
    pub groups: usize,
}

/// `y[n, o, i, j] = bias[o] + sum_{c', p, q} x[n, g*C/G + c', i*sh + p*dh - top, j*sw + q*dw - left] * w[o, c', p, q]`
/// where `g = o / (O/G)` is the group of output channel `o` and positions
/// outside the input read zero. Summed in order `c', p, q`, each output element on its own
/// (one `s += x * w` per tap, no fused multiply-add).
///
/// The loops run tap by tap over whole output rows, so the innermost loop is a row of
/// outputs (vectorized for stride 1), and output planes `(n, o)` are split over the rayon
/// pool: every element still sees the same additions in the same order, so the result is
/// the same bits for any thread count as the element-by-element loop's.
pub(crate) fn conv2d<F: Real>(
    x: &ArrayD<F>,
    w: &ArrayD<F>,
    bias: Option<&ArrayD<F>>,
    p: ConvParams,
    out_shape: &[usize],
) -> Result<ArrayD<F>, String> {
    let (xs, ws) = (x.shape(), w.shape());
    let (n, c, h, wd) = (xs[0], xs[1], xs[2], xs[3]);
    let (o, cg, kh, kw) = (ws[0], ws[1], ws[2], ws[3]);
    let (oh, ow) = (out_shape[2], out_shape[3]);
    let og = o / p.groups.max(1);
    let xc = x.as_standard_layout();
    let wc = w.as_standard_layout();
    let (Some(xv), Some(wv)) = (xc.as_slice(), wc.as_slice()) else {
        return Err("conv2d operands are not contiguous".into());
    };
    let bv: Vec<F> = bias.map_or_else(|| vec![F::ZERO; o], |b| b.iter().copied().collect());
    let plane_out = oh * ow;
    let mut out = vec![F::ZERO; n * o * plane_out];
    if plane_out == 0 || og == 0 {
        return ArrayD::from_shape_vec(IxDyn(out_shape), out).map_err(|e| e.to_string());
    }
    let [sh, sw] = p.strides;
    let [dh, dw] = p.dilations;
    let (top, left) = (p.pads[0] as isize, p.pads[1] as isize);
    out.par_chunks_mut(plane_out)
        .enumerate()
        .for_each(|(idx, plane_y)| {
            let (b, oc) = (idx / o, idx % o);
            let g = oc / og;
            plane_y.fill(bv[oc]);
            for ci in 0..cg {
                let plane = &xv[(b * c + g * cg + ci) * h * wd..][..h * wd];
                let kern = &wv[(oc * cg + ci) * kh * kw..][..kh * kw];
                for pi in 0..kh {
                    for qi in 0..kw {
                        let k = kern[pi * kw + qi];
                        // Output columns j whose input column j*sw + off is inside the row.
                        let off = (qi * dw) as isize - left;
                        let j_lo = if off >= 0 {
                            0
                        } else {
                            (-off as usize).div_ceil(sw)
                        };
                        let j_hi = if (wd as isize) <= off {
                            0
                        } else {
                            ((wd as isize - off) as usize).div_ceil(sw).min(ow)
                        };
                        if j_lo >= j_hi {
                            continue;
                        }
                        for i in 0..oh {
                            let y = (i * sh + pi * dh) as isize - top;
                            if y < 0 || y >= h as isize {
                                continue;
                            }
                            let row = &plane[y as usize * wd..][..wd];
                            let out_row = &mut plane_y[i * ow..][j_lo..j_hi];
                            let first = (j_lo * sw) as isize + off;
                            if sw == 1 {
                                let xs = &row[first as usize..][..out_row.len()];
                                for (s, &xv) in out_row.iter_mut().zip(xs) {
                                    *s += xv * k;
                                }
                            } else {
                                for (t, s) in out_row.iter_mut().enumerate() {
                                    *s += row[first as usize + t * sw] * k;
                                }
                            }
                        }
                    }
                }
            }
        });
    ArrayD::from_shape_vec(IxDyn(out_shape), out).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use neuron_isa::rng::SeededRng;

    /// The definition, element by element: what [`conv2d`] must equal bit for bit.
    fn by_element(
        x: &ArrayD<f32>,
        w: &ArrayD<f32>,
        b: &[f32],
        p: ConvParams,
        os: &[usize],
    ) -> Vec<f32> {
        let (xs, ws) = (x.shape(), w.shape());
        let (n, c, h, wd) = (xs[0], xs[1], xs[2], xs[3]);
        let (o, cg, kh, kw) = (ws[0], ws[1], ws[2], ws[3]);
        let og = o / p.groups;
        let mut out = Vec::new();
        for bi in 0..n {
            for oc in 0..o {
                let g = oc / og;
                for i in 0..os[2] {
                    for j in 0..os[3] {
                        let mut s = b[oc];
                        for ci in 0..cg {
                            for pi in 0..kh {
                                let y = (i * p.strides[0] + pi * p.dilations[0]) as isize
                                    - p.pads[0] as isize;
                                for qi in 0..kw {
                                    let xx = (j * p.strides[1] + qi * p.dilations[1]) as isize
                                        - p.pads[1] as isize;
                                    if y < 0 || y >= h as isize || xx < 0 || xx >= wd as isize {
                                        continue;
                                    }
                                    s += x[[bi, g * cg + ci, y as usize, xx as usize]]
                                        * w[[oc, ci, pi, qi]];
                                }
                            }
                        }
                        out.push(s);
                    }
                }
            }
        }
        let _ = c;
        out
    }

    #[test]
    fn row_loops_give_the_element_loops_bits_for_any_stride_padding_dilation_and_groups() {
        let mut rng = SeededRng::for_tensor(7, "conv-reference");
        let mut pick = |xs: &[usize]| xs[rng.below(xs.len() as u64) as usize];
        for case in 0..200 {
            let (n, groups) = (pick(&[1, 2]), pick(&[1, 2, 4]));
            let (c, o) = (groups * pick(&[1, 3]), groups * pick(&[1, 2]));
            let (h, wd) = (pick(&[1, 5, 9]), pick(&[1, 4, 11]));
            let (kh, kw) = (pick(&[1, 2, 3]), pick(&[1, 3, 5]));
            let p = ConvParams {
                strides: [pick(&[1, 2, 3]), pick(&[1, 2, 3])],
                pads: [
                    pick(&[0, 1, 2]),
                    pick(&[0, 1, 3]),
                    pick(&[0, 1]),
                    pick(&[0, 2]),
                ],
                dilations: [pick(&[1, 2]), pick(&[1, 2])],
                groups,
            };
            let span = |k: usize, d: usize| d * (k - 1) + 1;
            let (ph, pw) = (h + p.pads[0] + p.pads[2], wd + p.pads[1] + p.pads[3]);
            if ph < span(kh, p.dilations[0]) || pw < span(kw, p.dilations[1]) {
                continue;
            }
            let oh = (ph - span(kh, p.dilations[0])) / p.strides[0] + 1;
            let ow = (pw - span(kw, p.dilations[1])) / p.strides[1] + 1;
            let mut rng2 = SeededRng::for_tensor(case, "conv-reference-data");
            let mut data = |len: usize| -> Vec<f32> {
                (0..len)
                    .map(|_| rng2.below(2001) as f32 / 1000.0 - 1.0)
                    .collect()
            };
            let x = ArrayD::from_shape_vec(IxDyn(&[n, c, h, wd]), data(n * c * h * wd)).unwrap();
            let w = ArrayD::from_shape_vec(
                IxDyn(&[o, c / groups, kh, kw]),
                data(o * c / groups * kh * kw),
            )
            .unwrap();
            let b = ArrayD::from_shape_vec(IxDyn(&[o]), data(o)).unwrap();
            let os = [n, o, oh, ow];
            let got = conv2d(&x, &w, Some(&b), p, &os).unwrap();
            let want = by_element(&x, &w, b.as_slice().unwrap(), p, &os);
            let got: Vec<u32> = got.iter().map(|v| v.to_bits()).collect();
            let want: Vec<u32> = want.iter().map(|v| v.to_bits()).collect();
            assert_eq!(
                got,
                want,
                "case {case}: {p:?} x {:?} w {:?}",
                x.shape(),
                w.shape()
            );
        }
    }
}
