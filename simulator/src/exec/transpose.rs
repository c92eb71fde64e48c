//! `transpose`: `dst[F, P] = src[P, F]` through the systolic array (SBUF -> PSUM).
//! Bit-exact when the dtypes are equal (NaN and Inf safe, as on NeuronCore-v3; the v2
//! array is not bit-exact for NaN/Inf, which we do not model); otherwise cast through
//! FP32 (e.g. bf16 into FP32 PSUM, which is exact).

use super::{ExecContext, ExecError, shape};
use crate::memory::Memories;
use neuron_isa::Ap;

/// Transposes a dense `rows x cols` matrix of `T` (`src` holds at least `rows * cols`).
#[inline(always)]
fn transpose_dense<T: Copy>(src: &[T], rows: usize, cols: usize, out: &mut Vec<T>) {
    out.clear();
    if let Some(&first) = src.first() {
        // Every element is overwritten below.
        out.resize(rows * cols, first);
    }
    // Bands of 16 source rows, tiles of 16 x 16: each output row's part of a tile is one
    // contiguous run, gathered from the band's 16 rows (which stay in L1 across the band).
    const B: usize = 16;
    for r0 in (0..rows).step_by(B) {
        let r1 = (r0 + B).min(rows);
        let band = &src[r0 * cols..r1 * cols];
        for c0 in (0..cols).step_by(B) {
            for c in c0..(c0 + B).min(cols) {
                let run = &mut out[c * rows + r0..c * rows + r1];
                for (o, row) in run.iter_mut().zip(band.chunks_exact(cols)) {
                    *o = row[c];
                }
            }
        }
    }
}

neuron_isa::vectorized! {
    /// [`transpose_dense`] of FP32 elements, compiled for the host's widest vector units
    /// (`neuron_isa::simd`).
    fn transpose_f32(src: &[f32], rows: usize, cols: usize, out: &mut Vec<f32>) {
        transpose_dense(src, rows, cols, out)
    }
}

/// Transposes a dense `rows x cols` matrix of `E`-byte elements stored as bytes.
fn transpose_words<const E: usize>(raw: &[u8], rows: usize, cols: usize, out: &mut Vec<u8>) {
    let words: Vec<[u8; E]> = raw
        .chunks_exact(E)
        .map(|c| {
            let mut w = [0u8; E];
            w.copy_from_slice(c);
            w
        })
        .collect();
    let mut t = Vec::with_capacity(words.len());
    transpose_dense(&words, rows, cols, &mut t);
    out.clear();
    out.extend(t.iter().flatten());
}

pub(super) fn transpose(
    mem: &mut Memories,
    dst: &Ap,
    src: &Ap,
    ctx: &mut ExecContext,
) -> Result<bool, ExecError> {
    let (p, f) = shape(src);
    if shape(dst) != (f, p) {
        return Err(ExecError::new(format!(
            "dst {dst} must be [{f}, {p}] (src transposed), found [{}, {}]",
            shape(dst).0,
            shape(dst).1
        )));
    }
    if dst.dtype == src.dtype {
        let e = src.dtype.size() as usize;
        let mut raw = Vec::new();
        let poisoned = mem.read_raw(src, &mut raw)?;
        // Transpose whole elements, as unsigned integers of their width.
        let mut out = Vec::with_capacity(raw.len());
        match e {
            1 => transpose_dense(&raw, p, f, &mut out),
            2 => transpose_words::<2>(&raw, p, f, &mut out),
            4 => transpose_words::<4>(&raw, p, f, &mut out),
            _ => transpose_words::<8>(&raw, p, f, &mut out),
        }
        mem.write_raw(dst, &out)?;
        return Ok(poisoned);
    }
    let mut x = ctx.take();
    let mut y = ctx.take();
    let poisoned = mem.read_f32(src, &mut x)?;
    transpose_f32(&x, p, f, &mut y);
    mem.write_f32(dst, &y, &mut ctx.rounder)?;
    ctx.give([x, y]);
    Ok(poisoned)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_level_maps_every_element() {
        for (rows, cols) in [(1, 1), (1, 37), (37, 1), (16, 16), (17, 33), (128, 128)] {
            let src: Vec<f32> = (0..rows * cols).map(|i| i as f32).collect();
            for level in neuron_isa::simd::Level::ALL {
                let mut out = Vec::new();
                transpose_f32::at(level, &src, rows, cols, &mut out);
                assert_eq!(out.len(), rows * cols);
                for r in 0..rows {
                    for c in 0..cols {
                        assert_eq!(
                            out[c * rows + r],
                            src[r * cols + c],
                            "{rows}x{cols} {level:?}"
                        );
                    }
                }
            }
        }
    }
}
