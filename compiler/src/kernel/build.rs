//! View algebra used when building kernel graphs: transposes, slices, reshapes and
//! broadcasts of strided [`View`]s, plus traffic accounting.
//!
//! A reshape, transpose or slice of an HBM tensor costs nothing when it can be written as
//! another strided view of the same storage; these functions compute that view, or say
//! (with `None`) that it cannot be expressed, in which case the caller emits a copy.

use super::{KernelGraph, KernelOp, View};

impl View {
    /// The view with its axes permuted: output axis `i` is input axis `perm[i]`.
    ///
    /// Returns `None` if `perm` is not a permutation of the view's axes.
    pub fn permuted(&self, perm: &[usize]) -> Option<View> {
        if perm.len() != self.shape.len() {
            return None;
        }
        let mut seen = vec![false; perm.len()];
        for &p in perm {
            if p >= perm.len() || std::mem::replace(&mut seen[p], true) {
                return None;
            }
        }
        Some(View {
            tensor: self.tensor,
            offset: self.offset,
            shape: perm.iter().map(|&p| self.shape[p]).collect(),
            strides: perm.iter().map(|&p| self.strides[p]).collect(),
        })
    }

    /// The view with its last two axes swapped (a matrix transpose per batch).
    pub fn swap_last_two(&self) -> Option<View> {
        let r = self.shape.len();
        if r < 2 {
            return None;
        }
        let mut perm: Vec<usize> = (0..r).collect();
        perm.swap(r - 2, r - 1);
        self.permuted(&perm)
    }

    /// Takes `len` elements starting at `start`, `step` apart, on `axis`.
    ///
    /// Returns `None` if the selection leaves the axis or is empty.
    pub fn sliced(&self, axis: usize, start: usize, step: usize, len: usize) -> Option<View> {
        let dim = *self.shape.get(axis)?;
        if len == 0 || step == 0 || start + (len - 1) * step >= dim {
            return None;
        }
        let stride = self.strides[axis];
        let offset = self.offset as isize + start as isize * stride;
        let mut v = self.clone();
        v.offset = usize::try_from(offset).ok()?;
        v.shape[axis] = len;
        v.strides[axis] = stride * step as isize;
        Some(v)
    }

    /// The same elements in row-major order with a new shape, if that is expressible
    /// with strides (the algorithm of PyTorch's `computeStride`: each run of input axes
    /// that is contiguous with respect to each other may be split or merged freely).
    ///
    /// Returns `None` if the element counts differ or the view would need a copy.
    pub fn reshaped(&self, shape: &[usize]) -> Option<View> {
        let old_n: usize = self.shape.iter().product();
        let new_n: usize = shape.iter().product();
        if old_n != new_n {
            return None;
        }
        let contiguous_strides = |shape: &[usize]| View::contiguous(self.tensor, shape).strides;
        // One element (or none): any strides address it.
        if new_n <= 1 {
            return Some(View {
                tensor: self.tensor,
                offset: self.offset,
                shape: shape.to_vec(),
                strides: contiguous_strides(shape),
            });
        }
        // Size-1 axes carry no layout information; drop them first.
        let (old_shape, old_strides): (Vec<usize>, Vec<isize>) = self
            .shape
            .iter()
            .zip(&self.strides)
            .filter(|(d, _)| **d != 1)
            .map(|(d, s)| (*d, *s))
            .unzip();
        let mut new_strides = vec![0isize; shape.len()];
        let mut view_d = shape.len() as isize - 1;
        let mut chunk_base_stride = *old_strides.last()?;
        let mut tensor_numel: usize = 1;
        let mut view_numel: usize = 1;
        for tensor_d in (0..old_shape.len()).rev() {
            tensor_numel *= old_shape[tensor_d];
            let chunk_ends = tensor_d == 0
                || old_strides[tensor_d - 1] != tensor_numel as isize * chunk_base_stride;
            if chunk_ends {
                while view_d >= 0 && (view_numel < tensor_numel || shape[view_d as usize] == 1) {
                    new_strides[view_d as usize] = view_numel as isize * chunk_base_stride;
                    view_numel *= shape[view_d as usize];
                    view_d -= 1;
                }
                if view_numel != tensor_numel {
                    return None;
                }
                if tensor_d > 0 {
                    chunk_base_stride = old_strides[tensor_d - 1];
                    tensor_numel = 1;
                    view_numel = 1;
                }
            }
        }
        // Trailing size-1 axes of the new shape that no input axis consumed.
        while view_d >= 0 {
            if shape[view_d as usize] != 1 {
                return None;
            }
            new_strides[view_d as usize] = 0;
            view_d -= 1;
        }
        Some(View {
            tensor: self.tensor,
            offset: self.offset,
            shape: shape.to_vec(),
            strides: new_strides,
        })
    }

    /// The view broadcast (numpy rules) to `shape`: missing leading axes and size-1 axes
    /// get stride 0.
    ///
    /// Returns `None` if the shapes are not broadcast-compatible in that direction.
    pub fn broadcast_to(&self, shape: &[usize]) -> Option<View> {
        if shape.len() < self.shape.len() {
            return None;
        }
        let lead = shape.len() - self.shape.len();
        let mut strides = vec![0isize; shape.len()];
        for (i, (&d, &s)) in self.shape.iter().zip(&self.strides).enumerate() {
            let want = shape[lead + i];
            if d == want {
                strides[lead + i] = s;
            } else if d == 1 {
                strides[lead + i] = 0;
            } else {
                return None;
            }
        }
        Some(View {
            tensor: self.tensor,
            offset: self.offset,
            shape: shape.to_vec(),
            strides,
        })
    }

    /// Whether the view is the whole of a tensor of `numel` elements in row-major order.
    pub fn is_whole_contiguous(&self, numel: usize) -> bool {
        self.offset == 0
            && self.numel() == numel
            && *self == View::contiguous(self.tensor, &self.shape)
    }

    /// Inserts size-1 axes at the (sorted, output-rank) positions `axes`, e.g. to see a
    /// reduction result without its reduced axes as one with them kept.
    pub fn with_unit_axes(&self, axes: &[usize]) -> View {
        let mut v = self.clone();
        for &a in axes {
            let a = a.min(v.shape.len());
            v.shape.insert(a, 1);
            v.strides.insert(a, 0);
        }
        v
    }
}

impl KernelGraph {
    /// Bytes moved between HBM and the chip if every kernel reads each input view once
    /// and writes its output view once (element count times the tensor's storage size).
    ///
    /// This is the figure fusion reduces: an intermediate kept on chip is neither written
    /// nor read back. A gather reads one table row per index, not the whole table.
    pub fn hbm_traffic_bytes(&self) -> u64 {
        let size = |v: &View| self.tensor(v.tensor).map_or(0, |t| t.dtype.size());
        let bytes = |v: &View| v.numel() as u64 * size(v);
        self.kernels
            .iter()
            .map(|k| {
                let inputs: u64 = k
                    .inputs
                    .iter()
                    .enumerate()
                    .map(|(i, v)| match &k.op {
                        KernelOp::Gather { table, indices, .. } if i == *table => {
                            let rows = v.shape.first().copied().unwrap_or(1).max(1);
                            let picked = k.inputs.get(*indices).map_or(0, View::numel);
                            (v.numel() / rows * picked) as u64 * size(v)
                        }
                        _ => bytes(v),
                    })
                    .sum();
                inputs + bytes(&k.output)
            })
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::KTensorId;

    fn c(shape: &[usize]) -> View {
        View::contiguous(KTensorId(0), shape)
    }

    #[test]
    fn reshape_split_and_merge() {
        let v = c(&[2, 3, 8]);
        let r = v.reshaped(&[2, 3, 2, 4]).unwrap();
        assert_eq!(r.strides, vec![24, 8, 4, 1]);
        let t = r.permuted(&[0, 2, 1, 3]).unwrap();
        assert_eq!(t.shape, vec![2, 2, 3, 4]);
        assert_eq!(t.strides, vec![24, 4, 8, 1]);
        // Merging the head and feature axes of a transposed view needs a copy.
        let back = t.permuted(&[0, 2, 1, 3]).unwrap();
        assert_eq!(back.reshaped(&[2, 3, 8]).unwrap(), v);
        assert!(t.reshaped(&[2, 2, 12]).is_none());
        // Splitting an axis of a transposed view is always fine, and so is merging axes
        // that are still adjacent in memory.
        assert_eq!(
            t.reshaped(&[2, 2, 3, 2, 2]).unwrap().strides,
            vec![24, 4, 8, 2, 1]
        );
        assert_eq!(r.reshaped(&[6, 2, 4]).unwrap().strides, vec![8, 4, 1]);
        assert!(t.reshaped(&[4, 3, 4]).is_none());
    }

    #[test]
    fn reshape_unit_axes_and_scalars() {
        let v = c(&[4, 1, 5]);
        assert_eq!(v.reshaped(&[20]).unwrap().strides, vec![1]);
        assert_eq!(v.reshaped(&[1, 20, 1]).unwrap().shape, vec![1, 20, 1]);
        assert!(v.reshaped(&[21]).is_none());
        let s = c(&[]);
        assert_eq!(s.reshaped(&[1, 1]).unwrap().shape, vec![1, 1]);
    }

    #[test]
    fn slice_and_broadcast() {
        let v = c(&[4, 6]);
        let s = v.sliced(1, 2, 2, 2).unwrap();
        assert_eq!(
            (s.offset, s.strides.clone(), s.shape.clone()),
            (2, vec![6, 2], vec![4, 2])
        );
        assert!(v.sliced(1, 5, 2, 2).is_none());
        let b = c(&[6]).broadcast_to(&[3, 6]).unwrap();
        assert_eq!(b.strides, vec![0, 1]);
        assert!(c(&[6]).broadcast_to(&[3, 5]).is_none());
        assert!(c(&[2, 3]).is_whole_contiguous(6));
        assert!(!s.is_whole_contiguous(24));
        let k = c(&[4]).with_unit_axes(&[1]);
        assert_eq!(k.shape, vec![4, 1]);
    }
}
