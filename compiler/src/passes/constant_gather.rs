//! Gathers whose indices are constants stepping evenly are slices: framework exports
//! look up position embeddings with a constant `position_ids = [[0, 1, .., S-1]]` and pick
//! BERT's `[CLS]` token with a constant scalar index. `gather(x, [a, a+s, ..], axis)`
//! becomes `reshape(slice(x, axis, a.., step s))` (the reshape restores the indices' axes;
//! it is left out when the shapes already agree), which kernel formation turns into a
//! strided view of `x`: no kernel, no index tensor in HBM.
//!
//! Negative constant indices count from the end, as in the reference executor. The
//! rewritten gather keeps its name and output value (the interface); the slice is a new
//! node named after it (`<name>.rows`).

use super::Pass;
use super::rewrite::{insert_node_before, is_const, out, use_counts};
use crate::CompileError;
use crate::ir::shape_infer::normalize_axis;
use crate::ir::{Graph, NodeId, Op};

/// The constant-gather pass.
#[derive(Debug, Clone, Copy, Default)]
pub struct ConstantGather;

impl Pass for ConstantGather {
    fn name(&self) -> &str {
        "constant-gather"
    }

    fn run(&self, g: &mut Graph) -> Result<bool, CompileError> {
        let uses = use_counts(g);
        let todo: Vec<(NodeId, Rows)> = (0..g.nodes.len())
            .map(|i| NodeId(i as u32))
            .filter(|&n| uses[out(g, n).index()] > 0)
            .filter_map(|n| even_rows(g, n).map(|r| (n, r)))
            .collect();
        // From the last, so that inserting a slice does not move a gather still to do.
        for &(n, rows) in todo.iter().rev() {
            rewrite(g, n, rows)?;
        }
        Ok(!todo.is_empty())
    }
}

/// The rows a constant gather takes: `len` rows from `start`, `step` apart, on `axis`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Rows {
    axis: usize,
    start: usize,
    step: usize,
    len: usize,
}

/// The rows gather node `n` takes, if its indices are a constant even progression.
fn even_rows(g: &Graph, n: NodeId) -> Option<Rows> {
    let node = g.node(n);
    let Op::Gather { axis } = node.op else {
        return None;
    };
    let idx = node.inputs[1];
    if !is_const(g, idx) {
        return None;
    }
    let data = &g.value(node.inputs[0]).shape;
    let axis = normalize_axis(axis, data.len())?;
    let dim = i64::try_from(data[axis]).ok()?;
    let values: Vec<i64> = g
        .value(idx)
        .data
        .as_ref()?
        .to_i64()
        .iter()
        .map(|&i| if i < 0 { i + dim } else { i })
        .collect();
    if values.iter().any(|&i| i < 0 || i >= dim) {
        return None;
    }
    let (&first, rest) = values.split_first()?;
    let step = rest.first().map_or(1, |&second| second - first);
    let even = values
        .iter()
        .enumerate()
        .all(|(k, &i)| i == first + k as i64 * step);
    (step >= 1 && even).then_some(Rows {
        axis,
        start: usize::try_from(first).ok()?,
        step: usize::try_from(step).ok()?,
        len: values.len(),
    })
}

fn rewrite(g: &mut Graph, n: NodeId, r: Rows) -> Result<(), CompileError> {
    let node = g.node(n).clone();
    let o = node.outputs[0];
    let data = node.inputs[0];
    let slice = Op::Slice {
        axes: vec![r.axis as i64],
        starts: vec![r.start as i64],
        ends: vec![(r.start + (r.len - 1) * r.step + 1) as i64],
        steps: vec![r.step as i64],
    };
    let mut sliced_shape = g.value(data).shape.clone();
    sliced_shape[r.axis] = r.len;
    tracing::debug!(node = %node.name, rows = ?r, "constant gather becomes a slice");
    if sliced_shape == g.value(o).shape {
        let nm = &mut g.nodes[n.index()];
        nm.op = slice;
        nm.inputs = vec![data];
        return Ok(());
    }
    let base = format!("{}.rows", node.name);
    let rows = insert_node_before(g, n, &base, slice, &[data], &base)?;
    // The gather moved one place down.
    let n = NodeId(n.0 + 1);
    let shape = g.value(o).shape.iter().map(|&d| d as i64).collect();
    let nm = &mut g.nodes[n.index()];
    nm.op = Op::Reshape { shape };
    nm.inputs = vec![rows];
    Ok(())
}
