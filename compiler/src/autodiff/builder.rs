//! A small construction helper over [`Graph`]: fresh names under a prefix, constants, and
//! the broadcasting helpers that gradient rules need (sum a gradient back to an operand's
//! shape, broadcast a reduced gradient back to the input's shape).

use std::collections::HashMap;

use ndarray::ArrayD;

use crate::ir::{DType, Graph, GraphError, Op, Tensor, ValueId};

/// Appends nodes to a graph under unique names `{prefix}{counter}`.
pub struct Builder<'g> {
    /// The graph being extended.
    pub graph: &'g mut Graph,
    prefix: String,
    counter: usize,
    /// Zero constants made so far, by dtype and shape: one constant per shape, however many
    /// pads and scatters read it.
    zeros: HashMap<(DType, Vec<usize>), ValueId>,
}

impl<'g> Builder<'g> {
    /// A builder naming new nodes and values `{prefix}{n}`.
    pub fn new(graph: &'g mut Graph, prefix: impl Into<String>) -> Builder<'g> {
        Builder {
            graph,
            prefix: prefix.into(),
            counter: 0,
            zeros: HashMap::new(),
        }
    }

    /// A fresh name that no value or node of the graph uses.
    pub fn fresh(&mut self, hint: &str) -> String {
        loop {
            let name = format!("{}{}_{}", self.prefix, hint, self.counter);
            self.counter += 1;
            if self.graph.value_by_name(&name).is_none() && self.graph.node_by_name(&name).is_none()
            {
                return name;
            }
        }
    }

    /// Appends `op` on `inputs`; the node and its output share a fresh name.
    pub fn op(&mut self, op: Op, inputs: &[ValueId]) -> Result<ValueId, GraphError> {
        let name = self.fresh(op.name());
        self.graph.add_node(name.clone(), op, inputs, name)
    }

    /// A constant param holding `data`.
    pub fn constant(&mut self, hint: &str, data: Tensor) -> Result<ValueId, GraphError> {
        let name = self.fresh(hint);
        self.graph.add_param(name, data)
    }

    /// An f32 scalar constant of shape `[1]` (broadcasts against anything).
    pub fn scalar(&mut self, value: f32) -> Result<ValueId, GraphError> {
        self.constant(
            "const",
            Tensor::F32(ArrayD::from_elem(ndarray::IxDyn(&[1]), value)),
        )
    }

    /// An f32 zero tensor of `shape`.
    pub fn zeros(&mut self, shape: &[usize]) -> Result<ValueId, GraphError> {
        self.zeros_of(DType::F32, shape)
    }

    /// A zero tensor of `dtype` and `shape` (one shared constant per dtype and shape).
    pub fn zeros_of(&mut self, dtype: DType, shape: &[usize]) -> Result<ValueId, GraphError> {
        let key = (dtype, shape.to_vec());
        if let Some(&z) = self.zeros.get(&key) {
            return Ok(z);
        }
        let z = self.constant("zeros", Tensor::zeros(dtype, shape))?;
        self.zeros.insert(key, z);
        Ok(z)
    }

    /// Elements `start, start + step, ...` (`len` of them) of `a` along `axis`.
    pub fn slice_axis(
        &mut self,
        a: ValueId,
        axis: usize,
        start: usize,
        len: usize,
        step: usize,
    ) -> Result<ValueId, GraphError> {
        if start == 0 && step == 1 && self.graph.value(a).shape.get(axis) == Some(&len) {
            return Ok(a);
        }
        self.op(
            Op::Slice {
                axes: vec![axis as i64],
                starts: vec![start as i64],
                ends: vec![(start + (len - 1) * step + 1) as i64],
                steps: vec![step as i64],
            },
            &[a],
        )
    }

    /// `a` with `before` zeros prepended and `after` zeros appended along `axis`.
    pub fn pad_axis(
        &mut self,
        a: ValueId,
        axis: usize,
        before: usize,
        after: usize,
    ) -> Result<ValueId, GraphError> {
        if before == 0 && after == 0 {
            return Ok(a);
        }
        let v = self.graph.value(a);
        let (dtype, shape) = (v.dtype, v.shape.clone());
        let zeros = |b: &mut Self, n: usize| {
            let mut s = shape.clone();
            s[axis] = n;
            b.zeros_of(dtype, &s)
        };
        let mut parts = Vec::with_capacity(3);
        if before > 0 {
            parts.push(zeros(self, before)?);
        }
        parts.push(a);
        if after > 0 {
            parts.push(zeros(self, after)?);
        }
        self.op(Op::Concat { axis: axis as i64 }, &parts)
    }

    /// `a` with `step - 1` zeros inserted after each element but the last along `axis`
    /// (length `n` becomes `(n - 1) * step + 1`): the inverse of a strided slice.
    pub fn dilate_axis(
        &mut self,
        a: ValueId,
        axis: usize,
        step: usize,
    ) -> Result<ValueId, GraphError> {
        if step <= 1 {
            return Ok(a);
        }
        let v = self.graph.value(a);
        let (dtype, shape) = (v.dtype, v.shape.clone());
        let n = shape[axis];
        if n == 1 {
            return Ok(a);
        }
        // [.., n, ..] -> [.., n, 1, ..] ++ zeros [.., n, step - 1, ..] -> [.., n * step, ..].
        let mut s1 = shape.clone();
        s1.insert(axis + 1, 1);
        let r = self.reshape(a, &s1)?;
        let mut sz = s1.clone();
        sz[axis + 1] = step - 1;
        let z = self.zeros_of(dtype, &sz)?;
        let c = self.op(
            Op::Concat {
                axis: (axis + 1) as i64,
            },
            &[r, z],
        )?;
        let mut s2 = shape;
        s2[axis] = n * step;
        let flat = self.reshape(c, &s2)?;
        self.slice_axis(flat, axis, 0, (n - 1) * step + 1, 1)
    }

    /// The gradient of a strided slice along `axis` scattered back: `g` (the slice's
    /// `len` elements) placed at `start, start + step, ...` of a zero axis of size `dim`.
    pub fn unslice_axis(
        &mut self,
        g: ValueId,
        axis: usize,
        start: usize,
        step: usize,
        dim: usize,
    ) -> Result<ValueId, GraphError> {
        let len = self.graph.value(g).shape[axis];
        let d = self.dilate_axis(g, axis, step)?;
        let span = (len - 1) * step + 1;
        self.pad_axis(d, axis, start, dim.saturating_sub(start + span))
    }

    /// A 0/1 f32 mask of `a == b` (broadcasting).
    pub fn eq_mask(&mut self, a: ValueId, b: ValueId) -> Result<ValueId, GraphError> {
        let d = self.sub(a, b)?;
        let ne = self.nonzero_mask(d)?;
        self.rsub(1.0, ne)
    }

    /// `a + b`.
    pub fn add(&mut self, a: ValueId, b: ValueId) -> Result<ValueId, GraphError> {
        self.op(Op::Add, &[a, b])
    }

    /// `a - b`.
    pub fn sub(&mut self, a: ValueId, b: ValueId) -> Result<ValueId, GraphError> {
        self.op(Op::Sub, &[a, b])
    }

    /// `a * b`.
    pub fn mul(&mut self, a: ValueId, b: ValueId) -> Result<ValueId, GraphError> {
        self.op(Op::Mul, &[a, b])
    }

    /// `a / b`.
    pub fn div(&mut self, a: ValueId, b: ValueId) -> Result<ValueId, GraphError> {
        self.op(Op::Div, &[a, b])
    }

    /// `a * c` for a constant `c`.
    pub fn scale(&mut self, a: ValueId, c: f32) -> Result<ValueId, GraphError> {
        let k = self.scalar(c)?;
        self.mul(a, k)
    }

    /// `a + c` for a constant `c`.
    pub fn offset(&mut self, a: ValueId, c: f32) -> Result<ValueId, GraphError> {
        let k = self.scalar(c)?;
        self.add(a, k)
    }

    /// `c - a` for a constant `c`.
    pub fn rsub(&mut self, c: f32, a: ValueId) -> Result<ValueId, GraphError> {
        let k = self.scalar(c)?;
        self.sub(k, a)
    }

    /// Reshapes `a` to `shape`.
    pub fn reshape(&mut self, a: ValueId, shape: &[usize]) -> Result<ValueId, GraphError> {
        if self.graph.value(a).shape == shape {
            return Ok(a);
        }
        let shape = shape.iter().map(|&d| d as i64).collect();
        self.op(Op::Reshape { shape }, &[a])
    }

    /// Sums `a` over `axes`, keeping them as size 1 when `keepdims`.
    pub fn reduce_sum(
        &mut self,
        a: ValueId,
        axes: Vec<i64>,
        keepdims: bool,
    ) -> Result<ValueId, GraphError> {
        if axes.is_empty() {
            return Ok(a);
        }
        // A sum over the last axis and others runs in two stages: the last axis first (a
        // reduction along each row), then the rest over the row sums. The reduce lowering
        // runs a sum over every axis of a large tensor at a few GB/s (BERT-base's
        // `grad_sq` and attention-scale gradients, docs/training.md), a row sum at HBM
        // speed. The summation order is part of the graph, so chip and reference agree.
        let shape = self.graph.value(a).shape.clone();
        let r = shape.len() as i64;
        let norm: Vec<i64> = axes
            .iter()
            .map(|&x| if x < 0 { x + r } else { x })
            .collect();
        if r >= 2 && norm.len() > 1 && norm.contains(&(r - 1)) {
            let rows = self.op(
                Op::ReduceSum {
                    axes: vec![r - 1],
                    keepdims: true,
                },
                &[a],
            )?;
            let rest: Vec<i64> = norm.iter().copied().filter(|&x| x != r - 1).collect();
            let s = self.op(
                Op::ReduceSum {
                    axes: rest,
                    keepdims: true,
                },
                &[rows],
            )?;
            if keepdims {
                return Ok(s);
            }
            let kept: Vec<usize> = shape
                .iter()
                .enumerate()
                .filter(|&(i, _)| !norm.contains(&(i as i64)))
                .map(|(_, &d)| d)
                .collect();
            return self.reshape(s, &kept);
        }
        self.op(Op::ReduceSum { axes, keepdims }, &[a])
    }

    /// Sums a gradient `g` (of a broadcast result) back to the shape `target` of the operand
    /// that was broadcast: leading extra axes are summed away, size-1 axes summed with
    /// keepdims.
    pub fn unbroadcast(&mut self, g: ValueId, target: &[usize]) -> Result<ValueId, GraphError> {
        let shape = self.graph.value(g).shape.clone();
        if shape == target {
            return Ok(g);
        }
        let extra = shape.len().saturating_sub(target.len());
        let mut axes: Vec<i64> = (0..extra as i64).collect();
        for (i, &t) in target.iter().enumerate() {
            let s = shape.get(extra + i).copied().unwrap_or(1);
            if t == 1 && s != 1 {
                axes.push((extra + i) as i64);
            }
        }
        let summed = self.reduce_sum(g, axes, true)?;
        self.reshape(summed, target)
    }

    /// Broadcasts `g` (whose shape broadcasts to `shape`) to exactly `shape`, by adding a
    /// zero tensor of that shape.
    pub fn broadcast_to(&mut self, g: ValueId, shape: &[usize]) -> Result<ValueId, GraphError> {
        if self.graph.value(g).shape == shape {
            return Ok(g);
        }
        let z = self.zeros(shape)?;
        self.add(g, z)
    }

    /// Swaps the last two axes of `a`.
    pub fn transpose_last2(&mut self, a: ValueId) -> Result<ValueId, GraphError> {
        let r = self.graph.value(a).shape.len();
        let mut perm: Vec<usize> = (0..r).collect();
        perm.swap(r - 2, r - 1);
        self.op(Op::Transpose { perm }, &[a])
    }

    /// A 0/1 f32 mask of `a > 0` (as `cast(cast(relu(a), bool), f32)`: relu keeps exactly
    /// the positive values, and a cast to bool is `x != 0`).
    pub fn positive_mask(&mut self, a: ValueId) -> Result<ValueId, GraphError> {
        let r = self.op(Op::Relu, &[a])?;
        self.nonzero_mask(r)
    }

    /// A 0/1 f32 mask of `a != 0`.
    pub fn nonzero_mask(&mut self, a: ValueId) -> Result<ValueId, GraphError> {
        let b = self.op(Op::Cast { dtype: DType::Bool }, &[a])?;
        self.op(Op::Cast { dtype: DType::F32 }, &[b])
    }
}
