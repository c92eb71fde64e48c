//! Access patterns: where an instruction reads or writes, and in what shape.

use crate::dtype::Dtype;
use serde::{Deserialize, Serialize};
use std::fmt;

/// Index of a tensor in [`crate::Program::tensors`] (the HBM tensor table).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct TensorId(pub u32);

impl fmt::Display for TensorId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "t{}", self.0)
    }
}

/// The memory an access pattern addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Memory {
    /// A tensor in device HBM; addresses are byte offsets from the tensor's start.
    Hbm(TensorId),
    /// The state buffer: `partitions` rows of `sbuf_bytes_per_partition` bytes.
    Sbuf,
    /// The partial-sum buffer: `partitions` rows of `psum_bytes_per_partition` bytes,
    /// split into banks. Only TensorE writes accumulate here.
    Psum,
}

impl Memory {
    /// Whether this is an on-chip memory (SBUF or PSUM), addressed by partition.
    pub const fn is_on_chip(self) -> bool {
        matches!(self, Memory::Sbuf | Memory::Psum)
    }
}

/// One free (non-partition) dimension: a size and a stride, both in elements.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Dim {
    /// Number of elements along this dimension.
    pub size: u32,
    /// Distance between consecutive elements along this dimension, in elements. May be 0
    /// (broadcast) or negative.
    pub stride: i64,
}

/// Maximum number of free dimensions in an access pattern (the hardware's 4-D limit).
pub const MAX_FREE_DIMS: usize = 4;

/// A tile-shaped view of memory.
///
/// On chip (SBUF/PSUM) the view covers partitions `start_partition ..
/// start_partition + partitions`, and in every partition the same free-dimension pattern
/// starting at byte `offset` within that partition. In HBM there are no physical
/// partitions: "row" `p` of the view starts at byte
/// `offset + p * partition_stride * dtype.size()`, so a DMA between HBM and SBUF maps HBM
/// rows onto partitions. A `partition_stride` of 0 broadcasts one HBM row to every
/// partition. On chip `partition_stride` must be 1.
///
/// Element `(p, i0, i1, ..)` of the view is at byte
/// `base(p) + (i0 * dims[0].stride + i1 * dims[1].stride + ..) * dtype.size()`.
/// `dims` lists free dimensions outermost first; an empty `dims` means one element per
/// partition.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Ap {
    /// Which memory.
    pub mem: Memory,
    /// How elements are stored.
    pub dtype: Dtype,
    /// Byte offset: within each partition on chip, from the tensor start in HBM.
    pub offset: u64,
    /// First partition (on chip); 0 in HBM.
    pub start_partition: u32,
    /// Number of partitions (rows) the view covers, 1..=128.
    pub partitions: u32,
    /// HBM only: elements between consecutive rows. On chip: 1.
    pub partition_stride: i64,
    /// Free dimensions, outermost first, at most [`MAX_FREE_DIMS`].
    pub dims: Vec<Dim>,
}

impl Ap {
    /// A contiguous on-chip tile: `partitions` rows starting at `start_partition`, each with
    /// `free` contiguous elements at byte `offset`.
    pub fn on_chip(
        mem: Memory,
        dtype: Dtype,
        start_partition: u32,
        partitions: u32,
        offset: u64,
        free: u32,
    ) -> Ap {
        Ap {
            mem,
            dtype,
            offset,
            start_partition,
            partitions,
            partition_stride: 1,
            dims: vec![Dim {
                size: free,
                stride: 1,
            }],
        }
    }

    /// A row-major HBM view: `rows` rows of `cols` contiguous elements, rows `row_stride`
    /// elements apart, starting at byte `offset` of tensor `t`.
    pub fn hbm_rows(
        t: TensorId,
        dtype: Dtype,
        offset: u64,
        rows: u32,
        row_stride: i64,
        cols: u32,
    ) -> Ap {
        Ap {
            mem: Memory::Hbm(t),
            dtype,
            offset,
            start_partition: 0,
            partitions: rows,
            partition_stride: row_stride,
            dims: vec![Dim {
                size: cols,
                stride: 1,
            }],
        }
    }

    /// Elements per partition (the product of the free sizes): the `N` of the cost model.
    /// Saturates at `u64::MAX` for absurd, unverified patterns.
    pub fn free_elems(&self) -> u64 {
        self.dims
            .iter()
            .fold(1u64, |acc, d| acc.saturating_mul(u64::from(d.size)))
    }

    /// Total elements in the view (saturating).
    pub fn elems(&self) -> u64 {
        self.free_elems().saturating_mul(u64::from(self.partitions))
    }

    /// Total bytes the view covers (elements times element size; broadcast elements count;
    /// saturating).
    pub fn bytes(&self) -> u64 {
        self.elems().saturating_mul(self.dtype.size())
    }

    /// Bytes per partition (row) of the view (saturating).
    pub fn bytes_per_partition(&self) -> u64 {
        self.free_elems().saturating_mul(self.dtype.size())
    }

    /// Whether the innermost free dimension is contiguous (stride 1) or there are no dims.
    pub fn is_unit_stride(&self) -> bool {
        self.dims
            .last()
            .is_none_or(|d| d.stride == 1 || d.size <= 1)
    }

    /// The range of byte offsets `[lo, hi)` touched within one row, relative to the row's
    /// base, or `None` for an empty view (or an absurd, unverified one whose span does not
    /// fit in 64 bits). Negative strides can make `lo` negative.
    pub fn row_byte_span(&self) -> Option<(i64, i64)> {
        let esize = i128::from(self.dtype.size());
        let mut lo: i128 = 0;
        let mut hi: i128 = 0;
        for d in &self.dims {
            if d.size == 0 {
                return None;
            }
            let reach = (i128::from(d.size) - 1) * i128::from(d.stride);
            if reach < 0 {
                lo += reach;
            } else {
                hi += reach;
            }
        }
        let offset = i128::from(self.offset);
        Some((
            i64::try_from(lo * esize + offset).ok()?,
            i64::try_from((hi + 1) * esize + offset).ok()?,
        ))
    }
}

impl fmt::Display for Ap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.mem {
            Memory::Hbm(t) => write!(
                f,
                "{}:{}@{}[{}x{}]",
                t, self.dtype, self.offset, self.partitions, self.partition_stride
            )?,
            Memory::Sbuf => write!(
                f,
                "sb:{}@p{}+{}:{}",
                self.dtype, self.start_partition, self.partitions, self.offset
            )?,
            Memory::Psum => write!(
                f,
                "ps:{}@p{}+{}:{}",
                self.dtype, self.start_partition, self.partitions, self.offset
            )?,
        }
        f.write_str("[")?;
        for (i, d) in self.dims.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            if d.stride == 1 {
                write!(f, "{}", d.size)?;
            } else {
                write!(f, "{}/{}", d.size, d.stride)?;
            }
        }
        f.write_str("]")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Regression (found by the program fuzzer): sizes and spans of absurd, unverified
    /// patterns overflowed (a panic in debug builds) instead of saturating / giving `None`.
    #[test]
    fn absurd_patterns_saturate() {
        let big = Dim {
            size: u32::MAX,
            stride: i64::MAX,
        };
        let ap = Ap {
            mem: Memory::Sbuf,
            dtype: Dtype::I64,
            offset: u64::MAX,
            start_partition: 0,
            partitions: 128,
            partition_stride: 1,
            dims: vec![big; 4],
        };
        assert_eq!(ap.free_elems(), u64::MAX);
        assert_eq!(ap.elems(), u64::MAX);
        assert_eq!(ap.bytes(), u64::MAX);
        assert_eq!(ap.bytes_per_partition(), u64::MAX);
        assert_eq!(ap.row_byte_span(), None);
        let small = Ap {
            dims: vec![
                Dim {
                    size: 3,
                    stride: -2,
                },
                Dim { size: 4, stride: 1 },
            ],
            offset: 40,
            ..ap
        };
        assert_eq!(small.row_byte_span(), Some((40 - 32, 40 + 32)));
        assert_eq!((small.free_elems(), small.bytes()), (12, 12 * 128 * 8));
    }
}
