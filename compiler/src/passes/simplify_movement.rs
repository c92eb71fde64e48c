//! Simplifies data-movement chains: `transpose(transpose(x))` becomes one transpose,
//! `reshape(reshape(x))` one reshape, and identity transposes, reshapes and full slices
//! disappear. Fewer movement nodes means fewer views to fold (and, under `--no-fuse`,
//! fewer copies).

use super::Pass;
use super::rewrite::{out, replace_value, use_count, use_counts};
use crate::CompileError;
use crate::ir::shape_infer::slice_plan;
use crate::ir::{Graph, NodeId, Op};

/// The movement-simplification pass.
#[derive(Debug, Clone, Copy, Default)]
pub struct SimplifyMovement;

impl Pass for SimplifyMovement {
    fn name(&self) -> &str {
        "simplify-movement"
    }

    fn run(&self, g: &mut Graph) -> Result<bool, CompileError> {
        let mut changed = false;
        // Counted once (a rewrite only changes the readers of the node's own output).
        let uses = use_counts(g);
        for i in 0..g.nodes.len() {
            let n = NodeId(i as u32);
            let o = out(g, n);
            if uses
                .get(o.index())
                .copied()
                .unwrap_or_else(|| use_count(g, o))
                == 0
            {
                continue;
            }
            changed |= simplify(g, n);
        }
        Ok(changed)
    }
}

fn simplify(g: &mut Graph, n: NodeId) -> bool {
    let node = g.node(n).clone();
    let o = node.outputs[0];
    let x = node.inputs[0];
    let is_identity = match &node.op {
        Op::Transpose { perm } => perm.iter().enumerate().all(|(i, &p)| i == p),
        Op::Reshape { .. } => g.value(x).shape == g.value(o).shape,
        Op::Slice {
            axes,
            starts,
            ends,
            steps,
        } => slice_plan(&g.value(x).shape, axes, starts, ends, steps).is_ok_and(|plan| {
            plan.iter()
                .all(|p| p.start == 0 && p.step == 1 && p.len == g.value(x).shape[p.axis])
        }),
        _ => false,
    };
    if is_identity && replace_value(g, o, x) {
        return true;
    }
    // Compose with a producing node of the same kind.
    let Some(p) = g.value(x).producer else {
        return false;
    };
    let inner = g.node(p).clone();
    match (&inner.op, &node.op) {
        (Op::Transpose { perm: p1 }, Op::Transpose { perm: p2 }) => {
            // Output axis i of the outer is inner-output axis p2[i] = input axis p1[p2[i]].
            let perm: Vec<usize> = p2.iter().map(|&a| p1[a]).collect();
            let nm = &mut g.nodes[n.index()];
            nm.op = Op::Transpose { perm };
            nm.inputs = vec![inner.inputs[0]];
            true
        }
        (Op::Reshape { .. }, Op::Reshape { .. }) => {
            let shape = g.value(o).shape.iter().map(|&d| d as i64).collect();
            let nm = &mut g.nodes[n.index()];
            nm.op = Op::Reshape { shape };
            nm.inputs = vec![inner.inputs[0]];
            true
        }
        _ => false,
    }
}
