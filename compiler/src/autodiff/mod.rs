//! Reverse-mode automatic differentiation on the graph IR.
//!
//! [`differentiate`] appends the backward pass of a graph to the graph itself: for a scalar
//! (or seeded) value and a set of params, it adds ordinary nodes that compute the gradient
//! of that value with respect to each param. The backward graph is an ordinary graph, so
//! the existing passes fuse, tile and lower it like any forward graph, and the reference
//! executor evaluates it as the numerical oracle.
//!
//! Every differentiable op has its vector-Jacobian product in [`vjp`], next to the op's
//! own list in [`crate::ir::Op`]. Which nodes need a gradient is a graph analysis done with
//! petgraph: the nodes that lie on a path from a trainable param to the differentiated
//! value, visited in reverse topological order. An op without a VJP on such a path is an
//! error naming the node, its op and the param whose gradient needs it.

mod builder;
mod spatial;
mod vjp;

use std::collections::{BTreeMap, HashSet};

use petgraph::algo::toposort;
use petgraph::graph::{DiGraph, NodeIndex};
use petgraph::visit::{Dfs, Reversed};

pub use builder::Builder;

use crate::ir::{Graph, GraphError, NodeId, ValueId};

/// Why a graph could not be differentiated.
#[derive(Debug, thiserror::Error)]
pub enum AutodiffError {
    /// An op on the path from a trainable param to the loss has no gradient rule.
    #[error(
        "node '{node}' (op {op}) lies on the path from param '{param}' to the loss, but {op} \
         has no gradient with respect to its input {input}{why}; differentiable ops: {supported}"
    )]
    NotDifferentiable {
        /// The node's name.
        node: String,
        /// The op's name.
        op: &'static str,
        /// The input index that would need a gradient.
        input: usize,
        /// A trainable param upstream of that input.
        param: String,
        /// Extra explanation (may be empty).
        why: String,
        /// The ops that have gradients.
        supported: String,
    },
    /// A value the caller named is not a float tensor.
    #[error("cannot differentiate with respect to '{name}': it is {dtype}, not a float tensor")]
    NotFloat {
        /// The value's name.
        name: String,
        /// Its dtype.
        dtype: String,
    },
    /// Building a backward node failed (a bug in a VJP rule or an unsupported shape).
    #[error("while building the gradient of node '{node}': {source}")]
    Build {
        /// The forward node whose VJP was being built.
        node: String,
        /// The graph error.
        #[source]
        source: GraphError,
    },
    /// Building the loss or seed failed.
    #[error(transparent)]
    Graph(#[from] GraphError),
}

/// Appends to `graph` the nodes computing the gradient of `seed_of` (the value whose
/// upstream gradient is `seed`, a value of the same shape) with respect to each of `wrt`.
///
/// Returns one gradient value per entry of `wrt`, in order (a param the seed does not
/// depend on gets a zero gradient). New node and value names start with `prefix`.
pub fn differentiate(
    b: &mut Builder<'_>,
    seed_of: ValueId,
    seed: ValueId,
    wrt: &[ValueId],
) -> Result<Vec<ValueId>, AutodiffError> {
    for &w in wrt {
        let v = b.graph.value(w);
        if !v.dtype.is_float() {
            return Err(AutodiffError::NotFloat {
                name: v.name.clone(),
                dtype: v.dtype.to_string(),
            });
        }
    }
    let order = backward_order(b.graph, seed_of, wrt);
    let upstream = upstream_params(b.graph, wrt);
    let mut grads: BTreeMap<ValueId, ValueId> = BTreeMap::new();
    grads.insert(seed_of, seed);
    let needs: HashSet<ValueId> = order.needs_grad.clone();
    for node in order.nodes {
        let n = b.graph.node(node).clone();
        let out = n.outputs[0];
        let Some(&gy) = grads.get(&out) else {
            continue;
        };
        let wanted: Vec<bool> = n.inputs.iter().map(|i| needs.contains(i)).collect();
        if !wanted.iter().any(|&w| w) {
            continue;
        }
        let gins = vjp::vjp(b, &n, gy, &wanted).map_err(|e| match e {
            vjp::VjpError::Graph(source) => AutodiffError::Build {
                node: n.name.clone(),
                source,
            },
            vjp::VjpError::NoRule { input, why } => AutodiffError::NotDifferentiable {
                node: n.name.clone(),
                op: n.op.name(),
                input,
                param: upstream
                    .get(&n.inputs[input])
                    .map(|&p| b.graph.value(p).name.clone())
                    .unwrap_or_default(),
                why,
                supported: vjp::DIFFERENTIABLE_OPS.join(", "),
            },
        })?;
        for (i, g) in gins.into_iter().enumerate() {
            let (Some(g), true) = (g, wanted[i]) else {
                continue;
            };
            let x = n.inputs[i];
            let total = match grads.get(&x) {
                Some(&prev) => b.add(prev, g)?,
                None => g,
            };
            grads.insert(x, total);
        }
    }
    wrt.iter()
        .map(|&w| match grads.get(&w) {
            Some(&g) => Ok(g),
            None => {
                let shape = b.graph.value(w).shape.clone();
                Ok(b.zeros(&shape)?)
            }
        })
        .collect()
}

/// The nodes to visit, in reverse topological order, and the values that need a gradient.
struct BackwardOrder {
    nodes: Vec<NodeId>,
    needs_grad: HashSet<ValueId>,
}

/// The value-dependency graph: an edge `a -> b` when a node reads `a` and produces `b`.
/// Node `i` of the petgraph graph is value `%i`.
fn dependency_graph(graph: &Graph) -> DiGraph<(), NodeId> {
    let mut dg = DiGraph::with_capacity(graph.values.len(), graph.nodes.len());
    for _ in graph.value_ids() {
        dg.add_node(());
    }
    for nid in graph.node_ids() {
        let n = graph.node(nid);
        for &i in &n.inputs {
            for &o in &n.outputs {
                dg.add_edge(ix(i), ix(o), nid);
            }
        }
    }
    dg
}

fn ix(v: ValueId) -> NodeIndex {
    NodeIndex::new(v.index())
}

fn vid(n: NodeIndex) -> ValueId {
    ValueId(n.index() as u32)
}

/// The nodes on a path from any of `wrt` to `target`, reverse-topologically ordered.
fn backward_order(graph: &Graph, target: ValueId, wrt: &[ValueId]) -> BackwardOrder {
    let dg = dependency_graph(graph);
    let mut from_params = HashSet::new();
    for &w in wrt {
        let mut dfs = Dfs::new(&dg, ix(w));
        while let Some(v) = dfs.next(&dg) {
            from_params.insert(vid(v));
        }
    }
    let mut to_target = HashSet::new();
    let rev = Reversed(&dg);
    let mut dfs = Dfs::new(rev, ix(target));
    while let Some(v) = dfs.next(rev) {
        to_target.insert(vid(v));
    }
    let needs_grad: HashSet<ValueId> = from_params.intersection(&to_target).copied().collect();
    // Reverse topological order of the values on the path; visit each value's producer.
    let topo = toposort(&dg, None).unwrap_or_default();
    let mut nodes = Vec::new();
    let mut seen = HashSet::new();
    for v in topo.into_iter().rev() {
        let v = vid(v);
        if !needs_grad.contains(&v) {
            continue;
        }
        if let Some(p) = graph.value(v).producer
            && seen.insert(p)
        {
            nodes.push(p);
        }
    }
    BackwardOrder { nodes, needs_grad }
}

/// For every value downstream of a param in `wrt`, one such param (for error messages).
fn upstream_params(graph: &Graph, wrt: &[ValueId]) -> BTreeMap<ValueId, ValueId> {
    let dg = dependency_graph(graph);
    let mut out = BTreeMap::new();
    for &w in wrt {
        let mut dfs = Dfs::new(&dg, ix(w));
        while let Some(v) = dfs.next(&dg) {
            out.entry(vid(v)).or_insert(w);
        }
    }
    out
}

/// Whether `graph` has any node of an op that has no gradient on the path from `wrt` to
/// `target` (a cheap pre-check used by validation).
pub fn check_differentiable(
    graph: &Graph,
    target: ValueId,
    wrt: &[ValueId],
) -> Result<(), AutodiffError> {
    let order = backward_order(graph, target, wrt);
    let upstream = upstream_params(graph, wrt);
    for node in order.nodes {
        let n = graph.node(node);
        for (i, x) in n.inputs.iter().enumerate() {
            if !order.needs_grad.contains(x) {
                continue;
            }
            if let Err(why) = vjp::has_rule(&n.op, i) {
                return Err(AutodiffError::NotDifferentiable {
                    node: n.name.clone(),
                    op: n.op.name(),
                    input: i,
                    param: upstream
                        .get(x)
                        .map(|&p| graph.value(p).name.clone())
                        .unwrap_or_default(),
                    why,
                    supported: vjp::DIFFERENTIABLE_OPS.join(", "),
                });
            }
        }
    }
    Ok(())
}
