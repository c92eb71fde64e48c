//! The attention pattern: `matmul(q, k^T) -> [scale, mask] -> softmax -> matmul(., v)`
//! as one group, so the `[.., Sq, Sk]` score and probability matrices stay on chip.
//!
//! Matched as BERT and GPT-2 write it: the score matmul either takes `k^T` (a transpose
//! with perm `[0,2,3,1]` of the key projection, folded into a strided view later) or `k`
//! with `transpose_b`; the scale may be a `mul` or a `div` (canonicalized to `mul`); the
//! mask may be an `add` of a bias tensor or a `where` with a boolean mask and a constant.
//! Both intermediate matrices must be read only inside the pattern.

use super::fusion::{Anchor, Group, OpClass, backward_chain, op_class, softmax_on_last_axis};
use super::rewrite::{Uses, out};
use crate::ir::{Graph, NodeId};

/// Finds every attention pattern not overlapping `claimed`, claims its nodes, and returns
/// one group per match.
pub fn find_attention(g: &Graph, uses: &Uses, claimed: &mut [bool]) -> Vec<Group> {
    let mut groups = Vec::new();
    for (i, pv_node) in g.nodes.iter().enumerate() {
        let pv = NodeId(i as u32);
        if claimed[i] || op_class(&pv_node.op) != OpClass::MatMul {
            continue;
        }
        let probs = pv_node.inputs[0];
        if pv_node.inputs[1] == probs || g.is_output(probs) || uses.count(probs) != 1 {
            continue;
        }
        let Some(softmax) = g.value(probs).producer else {
            continue;
        };
        if claimed[softmax.index()] || !softmax_on_last_axis(g, softmax) {
            continue;
        }
        let scores_in = g.node(softmax).inputs[0];
        let (prologue, scores) = backward_chain(g, uses, claimed, scores_in, true, false);
        if g.is_output(scores) || uses.count(scores) != 1 {
            continue;
        }
        let Some(qk) = g.value(scores).producer else {
            continue;
        };
        if claimed[qk.index()] || op_class(&g.node(qk).op) != OpClass::MatMul {
            continue;
        }
        debug_assert_eq!(out(g, qk), scores);
        for n in [qk, softmax, pv].iter().chain(&prologue) {
            claimed[n.index()] = true;
        }
        tracing::debug!(
            qk = %g.node(qk).name,
            softmax = %g.node(softmax).name,
            pv = %g.node(pv).name,
            "attention pattern"
        );
        groups.push(Group {
            anchor: Anchor::Attention { qk, softmax, pv },
            prologue,
            epilogue: Vec::new(),
        });
    }
    groups
}
