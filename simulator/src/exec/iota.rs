//! `iota`: `dst[p, i0..] = offset + p * channel_multiplier + sum_k steps[k] * i_k` in
//! int32 (wrapping on overflow, as 32-bit hardware arithmetic does), then cast to `dst`'s
//! dtype: written exactly into i32, through FP32 otherwise. `p` counts from the pattern's
//! first partition.

use super::{ExecContext, ExecError, shape};
use crate::memory::Memories;
use neuron_isa::{Ap, Dtype};

pub(super) fn iota(
    mem: &mut Memories,
    dst: &Ap,
    offset: i32,
    channel_multiplier: i32,
    steps: &[i32],
    ctx: &mut ExecContext,
) -> Result<bool, ExecError> {
    if steps.len() != dst.dims.len() {
        return Err(ExecError::new(format!(
            "expected {} steps (one per dst free dim), found {}",
            dst.dims.len(),
            steps.len()
        )));
    }
    let (parts, free) = shape(dst);
    let total = parts.saturating_mul(free);
    if total > neuron_isa::verify::MAX_AP_ELEMS as usize {
        return Err(ExecError::new(format!(
            "dst {dst}: {total} elements exceed the simulator's limit"
        )));
    }
    let mut values = Vec::with_capacity(total);
    let sizes: Vec<i32> = dst.dims.iter().map(|d| d.size as i32).collect();
    let mut index = vec![0i32; sizes.len()];
    for p in 0..parts as i32 {
        let row = offset.wrapping_add(p.wrapping_mul(channel_multiplier));
        index.iter_mut().for_each(|i| *i = 0);
        for _ in 0..free {
            let v = index
                .iter()
                .zip(steps)
                .fold(row, |acc, (&i, &s)| acc.wrapping_add(i.wrapping_mul(s)));
            values.push(v);
            // Odometer over the free dims, innermost fastest.
            for k in (0..index.len()).rev() {
                index[k] += 1;
                if index[k] < sizes[k] {
                    break;
                }
                index[k] = 0;
            }
        }
    }
    if dst.dtype == Dtype::I32 {
        mem.write_i32(dst, &values)?;
    } else {
        let as_f32: Vec<f32> = values.iter().map(|&v| v as f32).collect();
        mem.write_f32(dst, &as_f32, &mut ctx.rounder)?;
    }
    Ok(false)
}
