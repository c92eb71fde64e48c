//! Direct 2-D convolution over NCHW / OIHW.

use ndarray::{ArrayD, IxDyn};

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
/// outside the input read zero. Summed in order `c', p, q`.
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
    let og = o / p.groups;
    let xc = x.as_standard_layout();
    let wc = w.as_standard_layout();
    let (Some(xv), Some(wv)) = (xc.as_slice(), wc.as_slice()) else {
        return Err("conv2d operands are not contiguous".into());
    };
    let bv: Vec<F> = bias.map_or_else(|| vec![F::ZERO; o], |b| b.iter().copied().collect());
    let mut out = Vec::with_capacity(n * o * oh * ow);
    for b in 0..n {
        for oc in 0..o {
            let g = oc / og;
            for i in 0..oh {
                for j in 0..ow {
                    let mut s = bv[oc];
                    for ci in 0..cg {
                        let plane = &xv[(b * c + g * cg + ci) * h * wd..][..h * wd];
                        let kern = &wv[(oc * cg + ci) * kh * kw..][..kh * kw];
                        for pi in 0..kh {
                            let y = (i * p.strides[0] + pi * p.dilations[0]) as isize
                                - p.pads[0] as isize;
                            if y < 0 || y >= h as isize {
                                continue;
                            }
                            let row = &plane[y as usize * wd..][..wd];
                            for qi in 0..kw {
                                let xx = (j * p.strides[1] + qi * p.dilations[1]) as isize
                                    - p.pads[1] as isize;
                                if xx < 0 || xx >= wd as isize {
                                    continue;
                                }
                                s += row[xx as usize] * kern[pi * kw + qi];
                            }
                        }
                    }
                    out.push(s);
                }
            }
        }
    }
    ArrayD::from_shape_vec(IxDyn(out_shape), out).map_err(|e| e.to_string())
}
