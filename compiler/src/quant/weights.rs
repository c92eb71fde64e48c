//! Symmetric int8 weight quantization.

use ndarray::ArrayD;

use crate::ir::Tensor;

/// Largest quantized magnitude (the range is symmetric: -128 is never used).
pub const QMAX: f64 = 127.0;

/// A weight in int8 with its dequantization scales.
#[derive(Debug, Clone, PartialEq)]
pub struct QuantizedWeight {
    /// The int8 values ([`Tensor::I8`], same shape as the input).
    pub data: Tensor,
    /// One scale per index of the last axis: `real = q * scales[n]`.
    pub scales: Vec<f32>,
}

/// The scale that maps `max_abs` to [`QMAX`]; 1 for an all-zero channel (any positive
/// scale represents zeros exactly).
pub fn scale_for(max_abs: f64) -> f32 {
    if max_abs > 0.0 && max_abs.is_finite() {
        (max_abs / QMAX) as f32
    } else {
        1.0
    }
}

/// `x / scale` rounded to nearest even and clamped to `[-127, 127]`.
pub fn quantize_value(x: f64, scale: f32) -> i8 {
    let q = (x / f64::from(scale)).round_ties_even();
    if q.is_nan() {
        0
    } else {
        q.clamp(-QMAX, QMAX) as i8
    }
}

/// Quantizes `w` symmetrically. With `per_channel`, each index of the last axis (the
/// output channel of a `[K, N]` matmul weight) gets its own scale `max|w[.., n]| / 127`;
/// otherwise one scale for the whole tensor, repeated for every channel (used when the
/// weight is read transposed or through a partial view, where the last axis is not the
/// output channel).
pub fn quantize_symmetric(w: &Tensor, per_channel: bool) -> QuantizedWeight {
    let last = w.shape().len().saturating_sub(1);
    quantize_symmetric_axis(w, last, per_channel)
}

/// [`quantize_symmetric`] with the output channel on `axis` (0 for a convolution weight
/// `[O, C/G, KH, KW]`): `scales[o] = max|w[.., o, ..]| / 127` over every other axis. An
/// axis past the rank means one channel.
pub fn quantize_symmetric_axis(w: &Tensor, axis: usize, per_channel: bool) -> QuantizedWeight {
    let x = w.to_f64();
    let n = x.shape().get(axis).copied().unwrap_or(1).max(1);
    let inner: usize = x.shape().get(axis + 1..).map_or(1, |s| s.iter().product());
    // Logical row-major order: element i sits at index (i / inner) % n of `axis`.
    let chan = |i: usize| (i / inner.max(1)) % n;
    let mut maxes = vec![0.0f64; n];
    for (i, v) in x.iter().enumerate() {
        maxes[chan(i)] = maxes[chan(i)].max(v.abs());
    }
    let scales: Vec<f32> = if per_channel {
        maxes.iter().map(|&m| scale_for(m)).collect()
    } else {
        vec![scale_for(maxes.iter().fold(0.0f64, |a, &b| a.max(b))); n]
    };
    let q: Vec<i8> = x
        .iter()
        .enumerate()
        .map(|(i, &v)| quantize_value(v, scales[chan(i)]))
        .collect();
    let data = Tensor::I8(
        ArrayD::from_shape_vec(x.shape(), q).unwrap_or_else(|_| ArrayD::zeros(x.shape())),
    );
    QuantizedWeight { data, scales }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::arr2;

    #[test]
    fn per_channel_scales() {
        let w = Tensor::F32(arr2(&[[1.0f32, -0.5], [-2.54, 0.25]]).into_dyn());
        let q = quantize_symmetric(&w, true);
        assert_eq!(
            q.scales,
            vec![(2.54f64 / 127.0) as f32, (0.5f64 / 127.0) as f32]
        );
        let Tensor::I8(d) = &q.data else {
            panic!("not i8")
        };
        assert_eq!(
            d.iter().copied().collect::<Vec<_>>(),
            vec![50, -127, -127, 64]
        );
        let t = quantize_symmetric(&w, false);
        assert_eq!(t.scales, vec![(2.54f64 / 127.0) as f32; 2]);
        assert_eq!(scale_for(0.0), 1.0);
    }

    #[test]
    fn conv_weights_quantize_per_output_channel_on_axis_0() {
        // [O=2, C=1, KH=1, KW=2]: channel 0 holds {1.5, -2}, channel 1 {0.5, 0.2}.
        let w = Tensor::F32(
            ndarray::Array4::from_shape_vec((2, 1, 1, 2), vec![1.5f32, -2.0, 0.5, 0.2])
                .unwrap()
                .into_dyn(),
        );
        let q = quantize_symmetric_axis(&w, 0, true);
        assert_eq!(
            q.scales,
            vec![(2.0f64 / 127.0) as f32, (0.5f64 / 127.0) as f32]
        );
        let Tensor::I8(d) = &q.data else {
            panic!("not i8")
        };
        assert_eq!(
            d.iter().copied().collect::<Vec<_>>(),
            vec![95, -127, 127, 51]
        );
    }
}
