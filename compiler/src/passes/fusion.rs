//! Fusion: partitions the graph's nodes into groups, each of which becomes one kernel.
//!
//! The rules follow TVM's op pattern classes (see `docs/compiler.md`, "Fusion rules"):
//! every group has one anchor — a matmul (out-elementwise-fusable), a norm, softmax or
//! reduction, a gather, or the first of a run of elementwise ops — plus
//! - an **epilogue**: the chain of elementwise nodes after the anchor, each reading the
//!   previous result as its only user, not growing the shape by broadcasting, and taking
//!   its other operands from HBM (bias, residual, mask) or as scalar constants;
//! - for softmax, a **prologue**: the same kind of chain before it (scale, mask add);
//! - for **attention** (`matmul(q, k^T) -> scale/mask -> softmax -> matmul(., v)`), the
//!   whole pattern, so the score matrix never leaves the chip.
//!
//! A value is internal to a group only if its single user is in the same group and it is
//! not a graph output; everything else (group results, values read by several groups)
//! is materialized in HBM. Data-movement nodes (reshape, transpose, slice, concat) form
//! groups of their own, which kernel formation usually folds into the strided views of
//! their neighbours instead of emitting a copy. With fusion off every node is its own
//! group.

use std::collections::HashMap;
use std::fmt::Write as _;

use super::attention::find_attention;
use super::rewrite::{Uses, out, scalar_const};
use crate::CompileError;
use crate::ir::shape_infer::normalize_axis;
use crate::ir::{Graph, NodeId, Op, ValueId};

/// What role an op can play in a fused kernel (the op's "pattern class").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpClass {
    /// Unary, binary, `where`, `cast`: joins a neighbour's prologue or epilogue.
    Elementwise,
    /// Matmul: an anchor whose elementwise epilogue is applied on PSUM eviction.
    MatMul,
    /// layer_norm / rms_norm: an anchor with an epilogue.
    Norm,
    /// Softmax: an anchor with a prologue and an epilogue.
    Softmax,
    /// reduce_sum / reduce_mean / reduce_max: an anchor with an epilogue.
    Reduce,
    /// gather (embedding lookup): an anchor whose epilogue is applied to the gathered rows.
    Gather,
    /// conv2d: an anchor whose epilogue (bias, folded batch_norm, residual, relu) is
    /// applied on PSUM eviction, like a matmul's.
    Conv,
    /// max_pool2d / avg_pool2d: an anchor with an epilogue.
    Pool,
    /// reshape / transpose / slice: a strided view, or a copy.
    Movement,
    /// concat: one copy per piece into a slice of the result.
    Concat,
    /// Not lowered by this compiler yet.
    Unsupported,
}

/// The pattern class of `op`.
pub fn op_class(op: &Op) -> OpClass {
    match op {
        _ if op.is_elementwise() => OpClass::Elementwise,
        Op::MatMul { .. } => OpClass::MatMul,
        Op::LayerNorm { .. } | Op::RmsNorm { .. } => OpClass::Norm,
        Op::Softmax { .. } => OpClass::Softmax,
        Op::ReduceSum { .. } | Op::ReduceMean { .. } | Op::ReduceMax { .. } | Op::GlobalAvgPool => {
            OpClass::Reduce
        }
        Op::Conv2d { .. } => OpClass::Conv,
        Op::MaxPool2d { .. } | Op::AvgPool2d { .. } => OpClass::Pool,
        Op::Transpose { .. } | Op::Reshape { .. } | Op::Slice { .. } => OpClass::Movement,
        Op::Concat { .. } => OpClass::Concat,
        Op::Gather { .. } => OpClass::Gather,
        _ => OpClass::Unsupported,
    }
}

/// The heart of a group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Anchor {
    /// A single node (any class but unsupported).
    Node(NodeId),
    /// The attention pattern `pv(softmax(prologue(qk)))`.
    Attention {
        /// `matmul(q, k^T)`.
        qk: NodeId,
        /// The softmax over the keys.
        softmax: NodeId,
        /// `matmul(probs, v)`.
        pv: NodeId,
    },
}

/// A set of nodes that becomes one kernel (or, for movement, possibly none).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Group {
    /// The anchor.
    pub anchor: Anchor,
    /// Elementwise nodes before the anchor's main op (softmax scale and mask, attention
    /// score scale and mask), in graph order.
    pub prologue: Vec<NodeId>,
    /// Elementwise nodes after the anchor, in graph order, each reading the previous one.
    pub epilogue: Vec<NodeId>,
}

impl Group {
    fn single(n: NodeId) -> Group {
        Group {
            anchor: Anchor::Node(n),
            prologue: Vec::new(),
            epilogue: Vec::new(),
        }
    }

    /// Every node of the group, in graph order.
    pub fn nodes(&self) -> Vec<NodeId> {
        let mut v: Vec<NodeId> = match &self.anchor {
            Anchor::Node(n) => vec![*n],
            Anchor::Attention { qk, softmax, pv } => vec![*qk, *softmax, *pv],
        };
        v.extend(&self.prologue);
        v.extend(&self.epilogue);
        v.sort();
        v
    }

    /// The last node in graph order; its output is the group's result.
    pub fn last(&self) -> NodeId {
        self.nodes().last().copied().unwrap_or(NodeId(0))
    }

    /// The value the group produces.
    pub fn root(&self, g: &Graph) -> ValueId {
        out(g, self.last())
    }

    /// Short kind name: the anchor op's name, or `attention`.
    pub fn kind(&self, g: &Graph) -> &'static str {
        match &self.anchor {
            Anchor::Node(n) => g.node(*n).op.name(),
            Anchor::Attention { .. } => "attention",
        }
    }
}

/// The groups of a graph, ordered by their last node (a valid execution order: a group's
/// external operands are produced by groups ending earlier).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Partition {
    /// The groups.
    pub groups: Vec<Group>,
}

impl Partition {
    /// Readable text form for `--dump` (`03-fused`).
    pub fn display(&self, g: &Graph) -> String {
        let mut s = format!("partition of {}: {} groups\n", g.name, self.groups.len());
        for (i, grp) in self.groups.iter().enumerate() {
            let names: Vec<&str> = grp
                .nodes()
                .iter()
                .map(|&n| g.node(n).name.as_str())
                .collect();
            let _ = writeln!(
                s,
                "g{i} {} [{}] -> {}",
                grp.kind(g),
                names.join(", "),
                g.value(grp.root(g)).name
            );
        }
        s
    }
}

/// Partitions `g` into groups: fused by the rules in the module docs, or one node per
/// group if `fuse` is false.
///
/// Fails on ops this compiler cannot lower, naming the first such node.
pub fn partition(g: &Graph, fuse: bool) -> Result<Partition, CompileError> {
    let _span = tracing::debug_span!("fusion", fuse).entered();
    check_supported(g)?;
    let mut claimed = vec![false; g.nodes.len()];
    let mut groups = Vec::new();
    let mut prologues: HashMap<NodeId, Vec<NodeId>> = HashMap::new();
    let uses = Uses::new(g);
    if fuse {
        for m in find_attention(g, &uses, &mut claimed) {
            groups.push(m);
        }
        for (i, node) in g.nodes.iter().enumerate() {
            let n = NodeId(i as u32);
            if claimed[i] || op_class(&node.op) != OpClass::Softmax {
                continue;
            }
            let allow = softmax_on_last_axis(g, n);
            let (chain, _) = backward_chain(g, &uses, &claimed, node.inputs[0], allow, true);
            for &p in &chain {
                claimed[p.index()] = true;
            }
            prologues.insert(n, chain);
        }
    }
    for i in 0..g.nodes.len() {
        if claimed[i] {
            continue;
        }
        let n = NodeId(i as u32);
        claimed[i] = true;
        let mut grp = Group::single(n);
        let class = op_class(&g.node(n).op);
        if fuse && !matches!(class, OpClass::Movement | OpClass::Concat) {
            grp.prologue = prologues.remove(&n).unwrap_or_default();
            let allow = allows_tensor_operands(g, n);
            grp.epilogue = forward_chain(g, &uses, &claimed, out(g, n), allow);
            for &e in &grp.epilogue {
                claimed[e.index()] = true;
            }
        }
        groups.push(grp);
    }
    groups.sort_by_key(Group::last);
    tracing::debug!(groups = groups.len(), nodes = g.nodes.len(), "partitioned");
    Ok(Partition { groups })
}

/// Rejects ops that have no lowering yet, naming the node.
fn check_supported(g: &Graph) -> Result<(), CompileError> {
    for (i, node) in g.nodes.iter().enumerate() {
        if op_class(&node.op) == OpClass::Unsupported {
            return Err(CompileError::unsupported(
                &node.name,
                i,
                node.op.name(),
                "no kernel lowering for this op (a batch_norm is folded into constants \
                 before fusion; one left here has non-constant statistics)",
            ));
        }
    }
    Ok(())
}

/// Whether the anchor's kernel sees the graph's shapes unchanged, so tensor operands of
/// its prologue and epilogue broadcast the same way as in the graph. A reduction that
/// drops axes, or a softmax over an inner axis (computed through a permuted view), only
/// takes scalar operands.
fn allows_tensor_operands(g: &Graph, n: NodeId) -> bool {
    match &g.node(n).op {
        Op::ReduceSum { keepdims, .. }
        | Op::ReduceMean { keepdims, .. }
        | Op::ReduceMax { keepdims, .. } => *keepdims,
        Op::Softmax { .. } => softmax_on_last_axis(g, n),
        Op::Gather { .. } => gather_on_first_axis(g, n),
        _ => true,
    }
}

/// Whether gather node `n` indexes its table's first axis (otherwise its kernel sees the
/// table and output through permuted views).
pub fn gather_on_first_axis(g: &Graph, n: NodeId) -> bool {
    let node = g.node(n);
    let rank = g.value(node.inputs[0]).shape.len();
    match node.op {
        Op::Gather { axis } => normalize_axis(axis, rank) == Some(0),
        _ => false,
    }
}

/// Whether softmax node `n` normalizes over its input's last axis.
pub fn softmax_on_last_axis(g: &Graph, n: NodeId) -> bool {
    let node = g.node(n);
    let rank = g.value(node.inputs[0]).shape.len();
    match node.op {
        Op::Softmax { axis } => normalize_axis(axis, rank) == Some(rank.saturating_sub(1)),
        _ => false,
    }
}

/// The node that can extend a chain whose running value is `acc`: its only reader, if
/// that reader is elementwise, unclaimed, keeps the shape, reads `acc` once (not as a
/// `where` condition), and takes only scalar constants besides `acc` unless `allow_tensor`.
pub fn chain_successor(
    g: &Graph,
    uses: &Uses,
    claimed: &[bool],
    acc: ValueId,
    allow_tensor: bool,
) -> Option<NodeId> {
    if g.is_output(acc) || uses.count(acc) != 1 {
        return None;
    }
    let u = *uses.users(acc).first()?;
    let node = g.node(u);
    if claimed[u.index()]
        || op_class(&node.op) != OpClass::Elementwise
        || g.value(out(g, u)).shape != g.value(acc).shape
        || (node.op == Op::Where && node.inputs[0] == acc)
    {
        return None;
    }
    let others_ok = node
        .inputs
        .iter()
        .filter(|&&i| i != acc)
        .all(|&i| allow_tensor || scalar_const(g, i).is_some());
    others_ok.then_some(u)
}

/// The epilogue chain starting after `acc`, in graph order.
pub fn forward_chain(
    g: &Graph,
    uses: &Uses,
    claimed: &[bool],
    acc: ValueId,
    allow_tensor: bool,
) -> Vec<NodeId> {
    let mut chain = Vec::new();
    let mut cur = acc;
    while let Some(u) = chain_successor(g, uses, claimed, cur, allow_tensor) {
        chain.push(u);
        cur = out(g, u);
    }
    chain
}

/// The prologue chain ending in `x` (the anchor's input), in graph order, and the value
/// the chain starts from (the kernel's real input).
///
/// Walking backwards, each producer must be an elementwise node whose result is read only
/// by the chain; of its operands, the running value is the one with the full shape,
/// preferring one computed by a node and read only here (scores rather than a shared
/// mask).
///
/// With `leave_bias`, a bias add right after a matmul stays out of the chain: it belongs
/// to the matmul's epilogue (the bias of the activation that evicts PSUM), so a
/// standalone softmax takes only what follows it (scale, mask).
pub fn backward_chain(
    g: &Graph,
    uses: &Uses,
    claimed: &[bool],
    x: ValueId,
    allow_tensor: bool,
    leave_bias: bool,
) -> (Vec<NodeId>, ValueId) {
    let mut chain = Vec::new();
    let mut cur = x;
    loop {
        if g.is_output(cur) || uses.count(cur) != 1 {
            break;
        }
        let Some(p) = g.value(cur).producer else {
            break;
        };
        let node = g.node(p);
        if claimed[p.index()] || op_class(&node.op) != OpClass::Elementwise {
            break;
        }
        let Some(acc) = prologue_acc(g, uses, p) else {
            break;
        };
        if chain_successor(g, uses, claimed, acc, allow_tensor) != Some(p)
            || (leave_bias && is_bias_add(g, p, acc) && produced_by_matmul(g, acc))
        {
            break;
        }
        chain.push(p);
        cur = acc;
    }
    chain.reverse();
    (chain, cur)
}

/// Which operand of elementwise node `p` is the running value of a prologue chain.
pub fn prologue_acc(g: &Graph, uses: &Uses, p: NodeId) -> Option<ValueId> {
    let node = g.node(p);
    let shape = &g.value(out(g, p)).shape;
    let first = usize::from(node.op == Op::Where);
    let candidates: Vec<ValueId> = node.inputs[first..]
        .iter()
        .copied()
        .filter(|&v| &g.value(v).shape == shape && scalar_const(g, v).is_none())
        .filter(|&v| node.inputs.iter().filter(|&&i| i == v).count() == 1)
        .collect();
    let computed_once = |v: &ValueId| g.value(*v).producer.is_some() && uses.count(*v) == 1;
    candidates
        .iter()
        .find(|v| computed_once(v))
        .or(candidates.first())
        .copied()
}

/// Whether `p` adds a bias row to `acc`: an `add` whose other operand is a param laid
/// out along `acc`'s last axis (`[N]`, or `[1, .., 1, N]`).
fn is_bias_add(g: &Graph, p: NodeId, acc: ValueId) -> bool {
    let node = g.node(p);
    if node.op != Op::Add {
        return false;
    }
    let Some(&other) = node.inputs.iter().find(|&&i| i != acc) else {
        return false;
    };
    let (os, acc_shape) = (&g.value(other).shape, &g.value(acc).shape);
    g.is_param(other) && os.last() == acc_shape.last() && os.iter().rev().skip(1).all(|&d| d == 1)
}

/// Whether `v` is computed by a matmul node.
fn produced_by_matmul(g: &Graph, v: ValueId) -> bool {
    g.value(v)
        .producer
        .is_some_and(|p| op_class(&g.node(p).op) == OpClass::MatMul)
}
