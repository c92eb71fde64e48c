//! Keep or recompute the forward activations the backward pass reads, decided by HBM
//! capacity.
//!
//! The model: between the forward and the backward pass HBM holds the weights, the params
//! and optimizer state (read as inputs and written as `/next` outputs), the batch, and the
//! activations the backward pass reads. When those activations exceed what is left of the
//! target's HBM after the rest ([`ActivationPlan::budget_bytes`]), the cheapest ones to
//! recompute are dropped: an activation made by an elementwise node whose inputs are kept
//! anyway (a graph input, a param, or another kept activation) is recomputed in the
//! backward pass by a copy of its node, largest first, until the rest fits. Recomputation is
//! exact (the same op on the same inputs), so results do not change.
//!
//! Deviation: the compiler's own HBM check (`driver::check_hbm`) still sums every HBM
//! tensor of the program without reusing memory between tensors whose lifetimes do not
//! overlap; this plan is made against the liveness view above, which is what a runtime
//! that frees dead activations needs.

use std::collections::BTreeSet;
use std::fmt;

use crate::ir::{Graph, GraphError, NodeId, ValueId};

use super::step::TrainingStep;

/// What was decided for the saved activations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActivationPlan {
    /// HBM left for activations after weights, params, optimizer state and the batch.
    pub budget_bytes: u64,
    /// Bytes of activations kept from the forward to the backward pass.
    pub kept_bytes: u64,
    /// Activations recomputed in the backward pass instead (value names).
    pub recomputed: Vec<String>,
    /// Their bytes.
    pub recomputed_bytes: u64,
}

impl fmt::Display for ActivationPlan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "activations {} bytes kept for the backward pass ({} bytes of HBM left after \
             weights, params, optimizer state and the batch)",
            self.kept_bytes, self.budget_bytes
        )?;
        if self.recomputed.is_empty() {
            write!(f, ", none recomputed")
        } else {
            write!(
                f,
                ", {} recomputed in the backward pass ({} bytes: {})",
                self.recomputed.len(),
                self.recomputed_bytes,
                self.recomputed.join(", ")
            )
        }
    }
}

fn bytes(g: &Graph, v: ValueId) -> u64 {
    let v = g.value(v);
    (v.shape.iter().product::<usize>() * v.dtype.size_bytes()) as u64
}

/// Forward activations (outputs of the model's own nodes) that backward nodes read.
pub(super) fn saved(g: &Graph, forward_nodes: usize) -> BTreeSet<ValueId> {
    let mut s = BTreeSet::new();
    for n in &g.nodes[forward_nodes.min(g.nodes.len())..] {
        for &i in &n.inputs {
            if g.value(i)
                .producer
                .is_some_and(|p| p.index() < forward_nodes)
            {
                s.insert(i);
            }
        }
    }
    s
}

/// Decides keep or recompute for `step` on a target with `hbm_bytes` of HBM.
pub fn plan_activations(step: &TrainingStep, hbm_bytes: u64) -> ActivationPlan {
    let g = &step.graph;
    let fixed: u64 = g
        .inputs
        .iter()
        .chain(&g.params)
        .map(|&v| bytes(g, v))
        .sum::<u64>()
        + step
            .iface
            .carried
            .iter()
            .map(|c| (c.initial.num_elements() * 4) as u64)
            .sum::<u64>();
    let budget_bytes = hbm_bytes.saturating_sub(fixed);
    let mut kept = saved(g, step.forward_nodes);
    let mut kept_bytes: u64 = kept.iter().map(|&v| bytes(g, v)).sum();
    let mut recomputed = Vec::new();
    let mut recomputed_bytes = 0;
    if kept_bytes > budget_bytes {
        // Cheap to recompute: an elementwise node whose inputs stay available.
        let mut cands: Vec<ValueId> = kept
            .iter()
            .copied()
            .filter(|&v| {
                let Some(p) = g.value(v).producer else {
                    return false;
                };
                let n = g.node(p);
                n.op.is_elementwise()
                    && n.outputs.len() == 1
                    && n.inputs
                        .iter()
                        .all(|&i| g.value(i).producer.is_none() || (kept.contains(&i) && i != v))
            })
            .collect();
        cands.sort_by_key(|&v| (std::cmp::Reverse(bytes(g, v)), v));
        for v in cands {
            if kept_bytes <= budget_bytes {
                break;
            }
            // Its inputs must still be kept (an earlier choice may have dropped one).
            let Some(p) = g.value(v).producer else {
                continue;
            };
            if g.node(p)
                .inputs
                .iter()
                .any(|&i| g.value(i).producer.is_some() && !kept.contains(&i))
            {
                continue;
            }
            kept.remove(&v);
            kept_bytes -= bytes(g, v);
            recomputed_bytes += bytes(g, v);
            recomputed.push(g.value(v).name.clone());
        }
    }
    ActivationPlan {
        budget_bytes,
        kept_bytes,
        recomputed,
        recomputed_bytes,
    }
}

/// The step graph with `plan`'s activations recomputed: each gets a copy of its node
/// (`{node}/recompute`, output `{value}/recompute`) just before its first backward reader,
/// and the backward readers read the copy.
pub fn apply_plan(step: &TrainingStep, plan: &ActivationPlan) -> Result<Graph, GraphError> {
    let mut g = step.graph.clone();
    let fwd = step.forward_nodes;
    for name in &plan.recomputed {
        let Some(v) = g.value_by_name(name) else {
            continue;
        };
        let Some(p) = g.value(v).producer else {
            continue;
        };
        let Some(first) = (fwd..g.nodes.len()).find(|&i| g.nodes[i].inputs.contains(&v)) else {
            continue;
        };
        let src = g.node(p).clone();
        let out = g.add_node(
            format!("{}/recompute", src.name),
            src.op.clone(),
            &src.inputs,
            format!("{name}/recompute"),
        )?;
        // Move the copy from the end to just before the first reader.
        let last = g.nodes.len() - 1;
        let node = g.nodes.remove(last);
        for val in &mut g.values {
            if let Some(pr) = val.producer
                && pr.index() >= first
                && pr.index() < last
            {
                val.producer = Some(NodeId(pr.0 + 1));
            }
        }
        g.value_mut(out).producer = Some(NodeId(first as u32));
        g.nodes.insert(first, node);
        for n in &mut g.nodes[first + 1..] {
            for i in &mut n.inputs {
                if *i == v {
                    *i = out;
                }
            }
        }
    }
    g.verify()?;
    Ok(g)
}
