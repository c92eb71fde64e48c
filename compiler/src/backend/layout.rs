//! From kernel-IR [`View`]s to ISA access patterns ([`Ap`]).
//!
//! A kernel iterates over its output shape; each operand is a strided view broadcast to that
//! shape. [`Space`] holds the joint iteration space of several such views and merges
//! adjacent dimensions wherever *every* view allows it (`stride[i] == stride[i+1] *
//! shape[i+1]`), so a contiguous tensor becomes one long dimension and a transposed view
//! keeps its two axes. [`RowCols`] then splits the space into row dimensions (mapped onto
//! SBUF partitions, 128 rows per tile) and column dimensions (the free axes, at most
//! [`MAX_FREE_DIMS`]). A tile of rows that crosses a boundary of the innermost row dimension
//! cannot be one HBM access pattern (an HBM pattern has one partition stride), so
//! [`RowCols::runs`] cuts it into runs, one DMA each.
//!
//! On-chip tiles are always dense: `[partitions, free]` starting at partition 0, so compute
//! instructions never hit the partition-start rules of trainium.md 2.1.

use crate::kernel::View;
use neuron_isa::{Ap, Dim, Dtype, MAX_FREE_DIMS, Memory, TensorId};

/// A view as seen from an iteration space: element `(i0, i1, ..)` of the space is storage
/// element `offset + sum(i_k * strides[k])` of `tensor`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Strided {
    /// Storage offset in elements.
    pub offset: i64,
    /// One stride per dimension of the space, in elements.
    pub strides: Vec<i64>,
}

/// The joint iteration space of several views of the same logical shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Space {
    /// Sizes, outermost first; no dimension has size 1 after [`Space::new`].
    pub shape: Vec<usize>,
    /// One entry per view, in the order given.
    pub views: Vec<Strided>,
}

/// Broadcasts `v` to `shape` with numpy rules (trailing axes aligned; size-1 or missing
/// axes get stride 0). `None` if the shapes are not broadcast-compatible.
pub fn broadcast_view(v: &View, shape: &[usize]) -> Option<View> {
    if v.shape.len() > shape.len() {
        // Leading size-1 axes of the view may be dropped.
        let extra = v.shape.len() - shape.len();
        if v.shape[..extra].iter().any(|&d| d != 1) {
            return None;
        }
        let trimmed = View {
            tensor: v.tensor,
            offset: v.offset,
            shape: v.shape[extra..].to_vec(),
            strides: v.strides[extra..].to_vec(),
        };
        return broadcast_view(&trimmed, shape);
    }
    let lead = shape.len() - v.shape.len();
    let mut strides = vec![0isize; shape.len()];
    for (i, &d) in shape.iter().enumerate() {
        if i < lead {
            continue;
        }
        let vd = v.shape[i - lead];
        if vd == d {
            strides[i] = if d == 1 { 0 } else { v.strides[i - lead] };
        } else if vd == 1 {
            strides[i] = 0;
        } else {
            return None;
        }
    }
    Some(View {
        tensor: v.tensor,
        offset: v.offset,
        shape: shape.to_vec(),
        strides,
    })
}

impl Space {
    /// The space of `views` (all of logical shape `shape`), with size-1 dimensions dropped
    /// and mergeable neighbours merged.
    pub fn new(shape: &[usize], views: &[&View]) -> Space {
        let mut dims: Vec<usize> = Vec::new();
        let mut strides: Vec<Vec<i64>> = vec![Vec::new(); views.len()];
        for (i, &d) in shape.iter().enumerate() {
            if d == 1 {
                continue;
            }
            dims.push(d);
            for (s, v) in strides.iter_mut().zip(views) {
                s.push(v.strides.get(i).copied().unwrap_or(0) as i64);
            }
        }
        // Merge from the innermost pair outwards.
        let mut i = dims.len();
        while i >= 2 {
            let (outer, inner) = (i - 2, i - 1);
            let ok = strides
                .iter()
                .all(|s| s[outer] == s[inner] * dims[inner] as i64);
            if ok {
                dims[outer] *= dims[inner];
                dims.remove(inner);
                for s in &mut strides {
                    s[outer] = s[inner];
                    s.remove(inner);
                }
            }
            i -= 1;
        }
        Space {
            shape: dims,
            views: views
                .iter()
                .zip(strides)
                .map(|(v, s)| Strided {
                    offset: v.offset as i64,
                    strides: s,
                })
                .collect(),
        }
    }

    /// Total number of elements.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// Splits dimension `dim` (size `n`) into `[n / inner, inner]`; `inner` must divide `n`.
    pub fn split(&mut self, dim: usize, inner: usize) {
        let Some(&n) = self.shape.get(dim) else {
            return;
        };
        if inner <= 1 || inner >= n || n % inner != 0 {
            return;
        }
        self.shape[dim] = n / inner;
        self.shape.insert(dim + 1, inner);
        for v in &mut self.views {
            let s = v.strides[dim];
            v.strides[dim] = s * inner as i64;
            v.strides.insert(dim + 1, s);
        }
    }

    /// Moves some of the last dimension into a new row dimension when the space has fewer
    /// than `want_rows` rows (everything but the last dimension), so that small-row tensors
    /// still spread over the partitions. Keeps at least `min_cols` columns per row.
    pub fn spread_rows(&mut self, want_rows: usize, min_cols: usize) {
        let Some(&last) = self.shape.last() else {
            return;
        };
        let rows: usize = self.shape[..self.shape.len() - 1].iter().product();
        if rows >= want_rows {
            return;
        }
        let max_a = (want_rows / rows.max(1)).max(1);
        // The largest factor a of `last` with a <= max_a and last / a >= min_cols.
        let best = (2..=max_a.min(last))
            .rev()
            .find(|&a| last % a == 0 && last / a >= min_cols);
        if let Some(a) = best {
            let d = self.shape.len() - 1;
            // The new row dimension must merge with the existing rows in every view:
            // otherwise tiles would be cut into short runs of rows.
            let merges = d == 0
                || self
                    .views
                    .iter()
                    .all(|v| v.strides[d - 1] == v.strides[d] * last as i64);
            if merges {
                self.split(d, last / a);
                if d > 0 {
                    // Merge the new row dimension into the previous one.
                    self.shape[d - 1] *= self.shape[d];
                    self.shape.remove(d);
                    for v in &mut self.views {
                        v.strides[d - 1] = v.strides[d];
                        v.strides.remove(d);
                    }
                }
            }
        }
    }
}

/// One run of consecutive rows of a tile that one HBM access pattern can address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Run {
    /// First partition of the run within the tile.
    pub part: u32,
    /// Number of rows (partitions).
    pub len: u32,
    /// Global index of the first row.
    pub row: usize,
}

/// A [`Space`] split into row dimensions (partitions) and column dimensions (free axes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowCols {
    /// Row dimension sizes, outermost first (may be empty: a single row).
    pub rows: Vec<usize>,
    /// Column dimension sizes, outermost first (may be empty: one element per row).
    pub cols: Vec<usize>,
    /// Per view: offset, then row strides followed by column strides.
    pub views: Vec<Strided>,
}

impl RowCols {
    /// Splits `space` so that its last `ncols` dimensions are columns.
    pub fn new(space: Space, ncols: usize) -> RowCols {
        let ncols = ncols.min(space.shape.len());
        let split = space.shape.len() - ncols;
        RowCols {
            rows: space.shape[..split].to_vec(),
            cols: space.shape[split..].to_vec(),
            views: space.views,
        }
    }

    /// The joint space of `views` (all of logical shape `shape`) with the last `ncols_axes`
    /// axes as columns. Rows and columns are merged separately, so a normalized or reduced
    /// axis never merges into the rows.
    pub fn split_axes(shape: &[usize], views: &[&View], ncols_axes: usize) -> RowCols {
        let split = shape.len() - ncols_axes.min(shape.len());
        let part = |lo: usize, hi: usize, keep_offset: bool| {
            let vs: Vec<View> = views
                .iter()
                .map(|v| View {
                    tensor: v.tensor,
                    offset: if keep_offset { v.offset } else { 0 },
                    shape: shape[lo..hi].to_vec(),
                    strides: v.strides[lo..hi].to_vec(),
                })
                .collect();
            let refs: Vec<&View> = vs.iter().collect();
            Space::new(&shape[lo..hi], &refs)
        };
        let rows = part(0, split, true);
        let cols = part(split, shape.len(), false);
        RowCols {
            rows: rows.shape,
            cols: cols.shape,
            views: rows
                .views
                .into_iter()
                .zip(cols.views)
                .map(|(r, c)| Strided {
                    offset: r.offset,
                    strides: r.strides.into_iter().chain(c.strides).collect(),
                })
                .collect(),
        }
    }

    /// Number of rows.
    pub fn num_rows(&self) -> usize {
        self.rows.iter().product()
    }

    /// Number of elements per row.
    pub fn num_cols(&self) -> usize {
        self.cols.iter().product()
    }

    /// Size of the outermost column dimension (1 without columns): the unit in which
    /// row kernels chunk their columns.
    pub fn outer_cols(&self) -> usize {
        self.cols.first().copied().unwrap_or(1)
    }

    /// Elements per outer column (the product of the inner column dimensions): a column
    /// chunk always takes all of them.
    pub fn inner_cols(&self) -> usize {
        self.cols.iter().skip(1).product()
    }

    /// Size of the innermost row dimension (the longest run possible).
    pub fn inner_rows(&self) -> usize {
        self.rows.last().copied().unwrap_or(1)
    }

    /// Row tiles of at most `max` rows that never cross a boundary of the innermost row
    /// dimension, as `(first row, rows)`. Each tile is then a single run, so its DMAs fill
    /// the tile from partition 0 (on-chip patterns may only start at partitions 0, 32, 64
    /// or 96 depending on their size, trainium.md 2.1).
    pub fn tiles(&self, max: usize) -> Vec<(usize, usize)> {
        let inner = self.inner_rows();
        let h = max.clamp(1, inner.max(1));
        let mut out = Vec::new();
        let mut seg = 0;
        let total = self.num_rows();
        while seg < total {
            let mut r = 0;
            while r < inner {
                let n = h.min(inner - r);
                out.push((seg + r, n));
                r += n;
            }
            seg += inner;
        }
        out
    }

    /// The runs covering rows `r0 .. r0 + n`.
    pub fn runs(&self, r0: usize, n: usize) -> Vec<Run> {
        let inner = self.inner_rows();
        let mut out = Vec::new();
        let mut r = r0;
        while r < r0 + n {
            let left_in_dim = inner - r % inner;
            let len = left_in_dim.min(r0 + n - r);
            out.push(Run {
                part: (r - r0) as u32,
                len: len as u32,
                row: r,
            });
            r += len;
        }
        out
    }

    /// Storage element offset of row `row` in view `v`.
    pub fn row_offset(&self, v: usize, row: usize) -> i64 {
        let s = &self.views[v];
        let mut rem = row;
        let mut off = s.offset;
        for (k, &d) in self.rows.iter().enumerate().rev() {
            off += (rem % d) as i64 * s.strides[k];
            rem /= d;
        }
        off
    }

    /// Stride between consecutive rows of a run in view `v` (0 without row dims).
    pub fn row_stride(&self, v: usize) -> i64 {
        if self.rows.is_empty() {
            0
        } else {
            self.views[v].strides[self.rows.len() - 1]
        }
    }

    /// Stride of column dimension `c` in view `v`.
    pub fn col_stride(&self, v: usize, c: usize) -> i64 {
        self.views[v].strides[self.rows.len() + c]
    }

    /// The HBM access pattern of view `v` (stored in `tensor` as `dtype`) over `run` and
    /// columns `c0 .. c0 + nc` of the outermost column dimension (all of the inner ones).
    pub fn hbm_ap(
        &self,
        v: usize,
        tensor: TensorId,
        dtype: Dtype,
        run: &Run,
        c0: usize,
        nc: usize,
    ) -> Ap {
        let mut off = self.row_offset(v, run.row);
        let mut dims = Vec::with_capacity(self.cols.len().max(1));
        for (c, &size) in self.cols.iter().enumerate() {
            let stride = self.col_stride(v, c);
            if c == 0 {
                off += c0 as i64 * stride;
                dims.push(Dim {
                    size: nc as u32,
                    stride,
                });
            } else {
                dims.push(Dim {
                    size: size as u32,
                    stride,
                });
            }
        }
        if dims.is_empty() {
            dims.push(Dim { size: 1, stride: 1 });
        }
        Ap {
            mem: Memory::Hbm(tensor),
            dtype,
            offset: (off.max(0) as u64) * dtype.size(),
            start_partition: 0,
            partitions: run.len,
            partition_stride: self.row_stride(v),
            dims,
        }
    }
}

/// A 2-D strided matrix inside an HBM tensor: element `(r, c)` is storage element
/// `offset + r * rs + c * cs`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mat {
    /// The tensor.
    pub tensor: TensorId,
    /// Storage dtype.
    pub dtype: Dtype,
    /// Storage offset of element (0, 0), in elements.
    pub offset: i64,
    /// Rows.
    pub rows: usize,
    /// Columns.
    pub cols: usize,
    /// Row stride in elements.
    pub rs: i64,
    /// Column stride in elements.
    pub cs: i64,
}

impl Mat {
    /// The matrix of batch `bi` (row-major over `batch`) of a view shaped
    /// `batch ++ [rows, cols]`, stored in `tensor` as `dtype`: batches only move the offset.
    pub fn of_batch(v: &View, batch: &[usize], bi: usize, tensor: TensorId, dtype: Dtype) -> Mat {
        let r = v.shape.len();
        let mut off = v.offset as i64;
        let mut rem = bi;
        for d in (0..batch.len()).rev() {
            off += (rem % batch[d]) as i64 * v.strides[d] as i64;
            rem /= batch[d];
        }
        Mat {
            tensor,
            dtype,
            offset: off,
            rows: v.shape[r - 2],
            cols: v.shape[r - 1],
            rs: v.strides[r - 2] as i64,
            cs: v.strides[r - 1] as i64,
        }
    }

    /// The HBM pattern of rows `r0 .. r0 + nr` (partitions) and columns `c0 .. c0 + nc`.
    pub fn rows_ap(&self, r0: usize, nr: usize, c0: usize, nc: usize) -> Ap {
        let off = self.offset + r0 as i64 * self.rs + c0 as i64 * self.cs;
        Ap {
            mem: Memory::Hbm(self.tensor),
            dtype: self.dtype,
            offset: (off.max(0) as u64) * self.dtype.size(),
            start_partition: 0,
            partitions: nr as u32,
            partition_stride: self.rs,
            dims: vec![Dim {
                size: nc as u32,
                stride: self.cs,
            }],
        }
    }

    /// The HBM pattern of the transposed block: columns `c0 .. c0 + nc` on partitions and
    /// rows `r0 .. r0 + nr` along the free axis (an element-strided DMA unless `rs == 1`).
    pub fn cols_ap(&self, r0: usize, nr: usize, c0: usize, nc: usize) -> Ap {
        // The rows of the transpose are our columns: same storage, same pattern.
        self.t().rows_ap(c0, nc, r0, nr)
    }

    /// The transposed matrix (same storage).
    pub fn t(&self) -> Mat {
        Mat {
            rows: self.cols,
            cols: self.rows,
            rs: self.cs,
            cs: self.rs,
            ..*self
        }
    }
}

/// A dense on-chip tile `[partitions, free]` at byte `offset` of each partition.
pub fn tile(mem: Memory, dtype: Dtype, partitions: u32, offset: u64, free: u32) -> Ap {
    Ap::on_chip(mem, dtype, 0, partitions, offset, free)
}

/// Columns `c0 .. c0 + n` of a dense single-free-dim on-chip tile.
pub fn cols(ap: &Ap, c0: u32, n: u32) -> Ap {
    Ap {
        offset: ap.offset + u64::from(c0) * ap.dtype.size(),
        dims: vec![Dim { size: n, stride: 1 }],
        ..ap.clone()
    }
}

/// Elements `start .. start + n` of `ap`'s free axis in row-major order, as one pattern:
/// for a dense tile the columns ([`cols`]); for a multi-dimensional pattern (a resident
/// tensor's region read in place), a range of whole inner blocks within one outer dim.
/// `None` when the range is not a single pattern.
pub fn free_range(ap: &Ap, start: u64, n: u64) -> Option<Ap> {
    let d = ap.dims.len();
    if n == 0 || d == 0 {
        return None;
    }
    for k in (0..d).rev() {
        let inner: u64 = ap.dims[k + 1..].iter().map(|x| u64::from(x.size)).product();
        if start % inner != 0 || n % inner != 0 {
            continue;
        }
        let (m, pos) = (n / inner, (start / inner) % u64::from(ap.dims[k].size));
        if pos + m > u64::from(ap.dims[k].size) {
            continue;
        }
        // Element offset of flat index `start`.
        let (mut rem, mut off) = (start, 0i64);
        for dim in ap.dims.iter().rev() {
            let size = u64::from(dim.size.max(1));
            off += (rem % size) as i64 * dim.stride;
            rem /= size;
        }
        let mut dims = vec![Dim {
            size: u32::try_from(m).ok()?,
            stride: ap.dims[k].stride,
        }];
        dims.extend_from_slice(&ap.dims[k + 1..]);
        let byte = off.checked_mul(ap.dtype.size() as i64)?;
        return Some(Ap {
            offset: u64::try_from(ap.offset as i64 + byte).ok()?,
            dims,
            ..ap.clone()
        });
    }
    None
}

/// The first `n` partitions of an on-chip tile.
pub fn parts(ap: &Ap, p0: u32, n: u32) -> Ap {
    Ap {
        start_partition: ap.start_partition + p0,
        partitions: n,
        ..ap.clone()
    }
}

/// The same tile with its free axis viewed as `dims` (sizes with dense strides).
pub fn shaped(ap: &Ap, sizes: &[usize]) -> Ap {
    let mut dims = Vec::with_capacity(sizes.len());
    let mut stride = 1i64;
    for &s in sizes.iter().rev() {
        dims.push(Dim {
            size: s as u32,
            stride,
        });
        stride *= s as i64;
    }
    dims.reverse();
    if dims.is_empty() {
        dims.push(Dim { size: 1, stride: 1 });
    }
    debug_assert!(dims.len() <= MAX_FREE_DIMS);
    Ap { dims, ..ap.clone() }
}

/// The same tile with another dtype over the same bytes (for reinterpreting a buffer slot).
pub fn retyped(ap: &Ap, dtype: Dtype) -> Ap {
    Ap {
        dtype,
        ..ap.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::KTensorId;

    fn view(shape: &[usize], strides: &[isize], offset: usize) -> View {
        View {
            tensor: KTensorId(0),
            offset,
            shape: shape.to_vec(),
            strides: strides.to_vec(),
        }
    }

    #[test]
    fn free_range_cuts_dense_tiles_and_whole_blocks_of_strided_patterns() {
        let dense = Ap::on_chip(Memory::Sbuf, Dtype::Bf16, 0, 64, 1024, 784);
        assert_eq!(free_range(&dense, 100, 50), Some(cols(&dense, 100, 50)));
        // [2 images 3136 apart][28 rows 28 apart][28 cols]: a resident map's band.
        let mut band = dense.clone();
        band.dims = vec![
            Dim {
                size: 2,
                stride: 3136,
            },
            Dim {
                size: 28,
                stride: 28,
            },
            Dim {
                size: 28,
                stride: 1,
            },
        ];
        // Rows 10..18 of image 1.
        let r = free_range(&band, 784 + 10 * 28, 8 * 28).unwrap();
        assert_eq!(r.offset, 1024 + 2 * (3136 + 10 * 28));
        assert_eq!(
            r.dims,
            vec![
                Dim {
                    size: 8,
                    stride: 28
                },
                Dim {
                    size: 28,
                    stride: 1
                }
            ]
        );
        // Both images whole.
        let r = free_range(&band, 0, 2 * 784).unwrap();
        assert_eq!((r.offset, r.dims.clone()), (1024, band.dims.clone()));
        // Columns 3..30 of image 0 span two rows partially: not one pattern.
        assert_eq!(free_range(&band, 3, 27), None);
        // A range across the image boundary that is not whole images.
        assert_eq!(free_range(&band, 784 - 28, 56), None);
    }

    #[test]
    fn contiguous_views_merge_to_one_dim() {
        let a = View::contiguous(KTensorId(0), &[2, 3, 4]);
        let s = Space::new(&[2, 3, 4], &[&a, &a]);
        assert_eq!(s.shape, vec![24]);
        assert_eq!(s.views[0].strides, vec![1]);
    }

    #[test]
    fn broadcast_bias_keeps_rows_mergeable() {
        let out = View::contiguous(KTensorId(0), &[2, 8, 16]);
        let bias = broadcast_view(&view(&[16], &[1], 0), &[2, 8, 16]).unwrap();
        assert_eq!(bias.strides, vec![0, 0, 1]);
        let s = Space::new(&[2, 8, 16], &[&out, &bias]);
        assert_eq!(s.shape, vec![16, 16]);
        assert_eq!(s.views[1].strides, vec![0, 1]);
    }

    #[test]
    fn transposed_heads_split_into_runs() {
        // [1, 12, 128, 64] heads-first view of a [1, 128, 768] tensor.
        let v = view(&[1, 12, 128, 64], &[98304, 64, 768, 1], 0);
        let out = View::contiguous(KTensorId(1), &[1, 12, 128, 64]);
        let s = Space::new(&[1, 12, 128, 64], &[&out, &v]);
        assert_eq!(s.shape, vec![12, 128, 64]);
        let rc = RowCols::new(s, 1);
        assert_eq!(rc.num_rows(), 12 * 128);
        let runs = rc.runs(100, 128);
        assert_eq!(runs.len(), 2);
        assert_eq!(
            (runs[0].part, runs[0].len, runs[1].part, runs[1].len),
            (0, 28, 28, 100)
        );
        let ap = rc.hbm_ap(1, TensorId(0), Dtype::F32, &runs[1], 0, 64);
        // Row 128 is head 1, sequence 0: element 64.
        assert_eq!(ap.offset, 64 * 4);
        assert_eq!(ap.partition_stride, 768);
    }

    #[test]
    fn spread_rows_factors_long_rows() {
        let a = View::contiguous(KTensorId(0), &[3072]);
        let mut s = Space::new(&[3072], &[&a]);
        s.spread_rows(128, 16);
        assert_eq!(s.shape, vec![128, 24]);
        assert_eq!(s.views[0].strides, vec![24, 1]);
    }
}
