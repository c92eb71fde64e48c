//! softmax, layer_norm, rms_norm and batch_norm.

use ndarray::{ArrayD, Axis};

use super::reshaped;
use crate::reference::Real;

/// Numerically stable softmax along `axis`: `e^(x - max) / sum e^(x - max)`.
pub(crate) fn softmax<F: Real>(x: &ArrayD<F>, axis: usize) -> ArrayD<F> {
    let mut out = x.clone();
    for mut lane in out.lanes_mut(Axis(axis)) {
        let m = lane.iter().fold(lane[0], |m, &v| m.max_nan(v));
        let mut sum = F::ZERO;
        for v in lane.iter_mut() {
            *v = (*v - m).exp();
            sum += *v;
        }
        for v in lane.iter_mut() {
            *v = *v / sum;
        }
    }
    out
}

fn mean<F: Real>(xs: impl Iterator<Item = F>, n: usize) -> F {
    let mut s = F::ZERO;
    for x in xs {
        s += x;
    }
    s / F::from_f64(n as f64)
}

/// Row-wise normalization of `x` viewed as `[outer, inner]`, where `inner`
/// is the product of the axes from `axis` on. `rms` selects RMS norm
/// (no mean subtraction); otherwise ONNX LayerNormalization:
/// `(x - mean) / sqrt(var + eps) * gamma + beta`, var the biased variance.
pub(crate) fn normalize<F: Real>(
    x: &ArrayD<F>,
    axis: usize,
    epsilon: f32,
    gamma: Option<&ArrayD<F>>,
    beta: Option<&ArrayD<F>>,
    rms: bool,
) -> Result<ArrayD<F>, String> {
    let inner: usize = x.shape()[axis..].iter().product();
    let outer = x.len() / inner;
    let x2 = reshaped(x, &[outer, inner])?;
    let flat = |t: Option<&ArrayD<F>>| -> Result<Option<Vec<F>>, String> {
        t.map(|t| Ok(reshaped(t, &[inner])?.into_iter().collect()))
            .transpose()
    };
    let (g, b) = (flat(gamma)?, flat(beta)?);
    let eps = F::from_f64(f64::from(epsilon));
    let mut out = x2.clone();
    for (row, mut orow) in x2.rows().into_iter().zip(out.rows_mut()) {
        let mu = if rms {
            F::ZERO
        } else {
            mean(row.iter().copied(), inner)
        };
        let var = mean(row.iter().map(|&v| (v - mu) * (v - mu)), inner);
        let denom = (var + eps).sqrt();
        for (j, o) in orow.iter_mut().enumerate() {
            let mut y = (row[j] - mu) / denom;
            if let Some(g) = &g {
                y = y * g[j];
            }
            if let Some(b) = &b {
                y += b[j];
            }
            *o = y;
        }
    }
    reshaped(&out, x.shape())
}

/// Inference batch norm over channel axis 1:
/// `(x - mean[c]) / sqrt(var[c] + eps) * scale[c] + bias[c]`.
pub(crate) fn batch_norm<F: Real>(
    x: &ArrayD<F>,
    params: [&ArrayD<F>; 4],
    epsilon: f32,
) -> Result<ArrayD<F>, String> {
    let [scale, bias, mean, var] = params.map(|p| p.iter().copied().collect::<Vec<F>>());
    let eps = F::from_f64(f64::from(epsilon));
    let mut out = x.clone();
    for (c, mut chan) in out.axis_iter_mut(Axis(1)).enumerate() {
        let denom = (var[c] + eps).sqrt();
        chan.mapv_inplace(|v| (v - mean[c]) / denom * scale[c] + bias[c]);
    }
    Ok(out)
}
