//! `dma` and `dma_gather`: element-by-element copies with a cast through FP32 when the
//! dtypes differ (equal dtypes move bits; integer-to-integer casts are exact and
//! saturating, so int64 token ids survive a cast to int32; see `docs/numerics.md`).

use super::{ExecContext, ExecError, same_shape, shape};
use crate::memory::Memories;
use crate::numerics::cast_bytes;
use neuron_isa::{Ap, Dtype, Memory};

/// Casts dense raw bytes of `src_dtype` into dense raw bytes of `dst_dtype`.
fn cast(
    src_dtype: Dtype,
    raw: &[u8],
    dst_dtype: Dtype,
    ctx: &mut ExecContext,
) -> Result<Vec<u8>, ExecError> {
    let n = raw.len() / src_dtype.size() as usize;
    let mut out = vec![0u8; n * dst_dtype.size() as usize];
    cast_bytes(src_dtype, raw, dst_dtype, &mut out, &mut ctx.rounder)
        .map_err(|e| ExecError::new(format!("casting {src_dtype} to {dst_dtype}: {e}")))?;
    Ok(out)
}

/// `dst = src` element by element (same partitions and free element count); HBM rows map
/// onto partitions through `partition_stride` (0 broadcasts one row).
pub(super) fn dma(
    mem: &mut Memories,
    dst: &Ap,
    src: &Ap,
    ctx: &mut ExecContext,
) -> Result<bool, ExecError> {
    same_shape("dst", dst, "src", src)?;
    if let Some(poisoned) = mem.copy_raw(dst, src, ctx.may_split())? {
        return Ok(poisoned);
    }
    let mut raw = ctx.take_bytes();
    let poisoned = mem.read_raw(src, &mut raw)?;
    if src.dtype == dst.dtype {
        mem.write_raw(dst, &raw)?;
    } else {
        let out = cast(src.dtype, &raw, dst.dtype, ctx)?;
        mem.write_raw(dst, &out)?;
    }
    ctx.give_bytes(raw);
    Ok(poisoned)
}

/// For each destination partition `p`, copies row `indices[p]` of the HBM `table` (row `r`
/// at `table.offset + r * table.partition_stride` elements, `table.partitions` rows) into
/// `dst[p, :]`. A negative index `-rows..0` counts from the end (numpy `take`); any other
/// index outside `0..rows` is an error naming it.
pub(super) fn gather(
    mem: &mut Memories,
    dst: &Ap,
    table: &Ap,
    indices: &Ap,
    ctx: &mut ExecContext,
) -> Result<bool, ExecError> {
    let (parts, free) = shape(dst);
    if indices.dtype != Dtype::I32 || shape(indices) != (parts, 1) {
        return Err(ExecError::new(format!(
            "indices {indices}: expected [{parts}, 1] i32, found [{}, {}] {}",
            shape(indices).0,
            shape(indices).1,
            indices.dtype
        )));
    }
    if !matches!(table.mem, Memory::Hbm(_)) {
        return Err(ExecError::new(format!(
            "table {table}: expected an hbm pattern"
        )));
    }
    if shape(table).1 != free {
        return Err(ExecError::new(format!(
            "table {table}: rows have {} elements, dst rows have {free}",
            shape(table).1
        )));
    }
    let mut idx = Vec::new();
    mem.read_i32(indices, &mut idx)?;
    let rows = i64::from(table.partitions);
    let esize = table.dtype.size() as i128;
    let mut gathered = Vec::with_capacity(parts * free * esize as usize);
    let mut row_bytes = Vec::new();
    let mut poisoned = false;
    for (p, &i) in idx.iter().enumerate() {
        // numpy `take` semantics, as model.json's gather: -rows..0 counts from the end.
        let i = if i < 0 && i64::from(i) >= -rows {
            (i64::from(i) + rows) as i32
        } else {
            i
        };
        if i < 0 || i64::from(i) >= rows {
            return Err(ExecError::new(format!(
                "gather index {} at partition {p} out of range: the table has {rows} rows (expected {} to {})",
                idx[p],
                -rows,
                rows - 1
            )));
        }
        let offset =
            i128::from(table.offset) + i128::from(i) * i128::from(table.partition_stride) * esize;
        let offset = u64::try_from(offset).map_err(|_| {
            ExecError::new(format!(
                "table {table}: row {i} starts at byte {offset}, outside the tensor"
            ))
        })?;
        let row = Ap {
            offset,
            partitions: 1,
            partition_stride: 0,
            ..table.clone()
        };
        poisoned |= mem.read_raw(&row, &mut row_bytes)?;
        gathered.extend_from_slice(&row_bytes);
    }
    if table.dtype == dst.dtype {
        mem.write_raw(dst, &gathered)?;
    } else {
        let out = cast(table.dtype, &gathered, dst.dtype, ctx)?;
        mem.write_raw(dst, &out)?;
    }
    Ok(poisoned)
}
