//! Small graph-editing helpers shared by the graph passes: use replacement, constant
//! lookup and creation, and compaction of the arenas after nodes die.
//!
//! Passes rewrite in place where they can (a node keeps its output value, so value names
//! and graph outputs stay stable) and leave unreachable nodes for dead-code elimination.

use std::collections::HashSet;

use ndarray::{ArrayD, IxDyn};

use crate::CompileError;
use crate::ir::{DType, Graph, NodeId, Op, ParamData, Tensor, ValueId};

/// The value of `v` if it is a float constant with exactly one element (a scalar param or
/// literal, of any rank), e.g. the `0.125` in `mul(scores, 0.125)`.
pub fn scalar_const(g: &Graph, v: ValueId) -> Option<f64> {
    let val = g.get_value(v)?;
    if val.producer.is_some() || !val.dtype.is_float() {
        return None;
    }
    let t = val.data.as_ref()?;
    if t.num_elements() != 1 {
        return None;
    }
    t.to_f64().iter().next().copied()
}

/// Whether `v` is a param with data (of any shape).
pub fn is_const(g: &Graph, v: ValueId) -> bool {
    g.get_value(v)
        .is_some_and(|val| val.producer.is_none() && val.data.is_some() && g.is_param(v))
}

/// Adds a constant param named after `base` (made unique) holding `t`.
pub fn add_const(g: &mut Graph, base: &str, t: Tensor) -> Result<ValueId, CompileError> {
    add_const_data(g, base, t.into())
}

/// [`add_const`] for data held by reference (a lazily generated or concatenated param).
pub fn add_const_data(g: &mut Graph, base: &str, data: ParamData) -> Result<ValueId, CompileError> {
    let mut name = base.to_string();
    let mut i = 1;
    while g.value_by_name(&name).is_some() {
        name = format!("{base}_{i}");
        i += 1;
    }
    let (shape, dtype) = (data.shape().to_vec(), data.dtype());
    Ok(g.add_param_decl(name, shape, dtype, Some(data))?)
}

/// A constant of `dtype` with `shape` (one element) holding `x`.
pub fn scalar_tensor(x: f64, shape: &[usize], dtype: DType) -> Tensor {
    Tensor::from_f64(dtype, ArrayD::from_elem(IxDyn(shape), x))
}

/// Makes every node that reads `old` read `new` instead. Graph outputs are not touched:
/// callers must not replace a value that is a graph output (its name is the interface).
pub fn replace_uses(g: &mut Graph, old: ValueId, new: ValueId) {
    for n in &mut g.nodes {
        for i in &mut n.inputs {
            if *i == old {
                *i = new;
            }
        }
    }
}

/// Replaces `old` by `new` everywhere, including as a graph output: then `new` takes
/// over `old`'s name (the interface), which is only possible if `new` is an internal
/// node result (not an input, a param or another output). Other readers of `new` keep
/// reading it: a value with several readers lives in HBM anyway, so making it an output
/// costs nothing (an exported hidden state that a head also reads, for instance).
/// Returns whether it replaced.
pub fn replace_value(g: &mut Graph, old: ValueId, new: ValueId) -> bool {
    if !g.is_output(old) {
        replace_uses(g, old, new);
        return true;
    }
    let internal = g.value(new).producer.is_some() && !g.is_output(new);
    if !internal {
        return false;
    }
    let name = g.value(old).name.clone();
    let mut dead = format!("{name}.replaced");
    let mut i = 1;
    while g.value_by_name(&dead).is_some() {
        dead = format!("{name}.replaced{i}");
        i += 1;
    }
    g.value_mut(old).name = dead;
    g.value_mut(new).name = name;
    replace_uses(g, old, new);
    for o in &mut g.outputs {
        if *o == old {
            *o = new;
        }
    }
    true
}

/// Inserts a node computing `op` on `inputs` just before node `at` (so that `at` may read
/// its result), shifting the ids of `at` and every later node by one. Node and output
/// names are made unique from `name` and `output`. Returns the new node's output value.
pub fn insert_node_before(
    g: &mut Graph,
    at: NodeId,
    name: &str,
    op: Op,
    inputs: &[ValueId],
    output: &str,
) -> Result<ValueId, CompileError> {
    let unique = |taken: &dyn Fn(&str) -> bool, base: &str| {
        let mut s = base.to_string();
        let mut i = 1;
        while taken(&s) {
            s = format!("{base}_{i}");
            i += 1;
        }
        s
    };
    let name = unique(&|s| g.node_by_name(s).is_some(), name);
    let output = unique(&|s| g.value_by_name(s).is_some(), output);
    // Appending checks names and infers the type; then the node moves into place.
    let v = g.add_node(name, op, inputs, output)?;
    let node = g
        .nodes
        .pop()
        .ok_or_else(|| CompileError::Internal("inserted node vanished".into()))?;
    let at_index = at.index().min(g.nodes.len());
    g.nodes.insert(at_index, node);
    for val in &mut g.values {
        if let Some(p) = &mut val.producer
            && p.index() >= at_index
        {
            *p = NodeId(p.0 + 1);
        }
    }
    g.value_mut(v).producer = Some(NodeId(at_index as u32));
    Ok(v)
}

/// Number of node operand slots that read `v`, plus one if it is a graph output.
pub fn use_count(g: &Graph, v: ValueId) -> usize {
    let uses: usize = g
        .nodes
        .iter()
        .map(|n| n.inputs.iter().filter(|&&i| i == v).count())
        .sum();
    uses + usize::from(g.is_output(v))
}

/// [`use_count`] of every value at once, indexed by value id: one pass over the graph
/// instead of one per query, for passes that ask about every node (asking
/// [`use_count`] per node is quadratic in the graph's size).
pub fn use_counts(g: &Graph) -> Vec<usize> {
    let mut counts = vec![0usize; g.values.len()];
    for n in &g.nodes {
        for &i in &n.inputs {
            if let Some(c) = counts.get_mut(i.index()) {
                *c += 1;
            }
        }
    }
    for &o in &g.outputs {
        if let Some(c) = counts.get_mut(o.index()) {
            *c += 1;
        }
    }
    counts
}

/// Readers of every value, indexed once for an analysis that does not change the graph:
/// [`Uses::count`] is [`use_count`] and [`Uses::users`] is [`Graph::users`], each in
/// constant time instead of a scan of every node (which made fusion quadratic in the
/// graph's size).
pub struct Uses {
    counts: Vec<usize>,
    users: Vec<Vec<NodeId>>,
}

impl Uses {
    /// Indexes `g`'s readers.
    pub fn new(g: &Graph) -> Uses {
        let mut users: Vec<Vec<NodeId>> = vec![Vec::new(); g.values.len()];
        for (i, n) in g.nodes.iter().enumerate() {
            let id = NodeId(i as u32);
            for &v in &n.inputs {
                if let Some(u) = users.get_mut(v.index())
                    && u.last() != Some(&id)
                {
                    u.push(id);
                }
            }
        }
        Uses {
            counts: use_counts(g),
            users,
        }
    }

    /// Times `v` is read, counting a graph output as one read (as [`use_count`]).
    pub fn count(&self, v: ValueId) -> usize {
        self.counts.get(v.index()).copied().unwrap_or(0)
    }

    /// The nodes that read `v`, each once, in graph order (as [`Graph::users`]).
    pub fn users(&self, v: ValueId) -> &[NodeId] {
        self.users.get(v.index()).map_or(&[], Vec::as_slice)
    }
}

/// The single output of node `n`.
pub fn out(g: &Graph, n: NodeId) -> ValueId {
    g.node(n).outputs[0]
}

/// Removes the nodes for which `keep` is false, and every param no remaining node reads
/// (unless it is a graph output); renumbers values and nodes, keeping their order.
/// Graph inputs are the interface and always stay.
///
/// Returns whether anything was removed.
pub fn compact(g: &mut Graph, keep: &[bool]) -> bool {
    let mut used: HashSet<ValueId> = g.outputs.iter().copied().collect();
    for (i, n) in g.nodes.iter().enumerate() {
        if keep.get(i).copied().unwrap_or(true) {
            used.extend(n.inputs.iter().copied());
        }
    }
    let mut keep_value = vec![false; g.values.len()];
    for &v in &g.inputs {
        keep_value[v.index()] = true;
    }
    for &v in &g.params {
        keep_value[v.index()] = used.contains(&v);
    }
    for (i, n) in g.nodes.iter().enumerate() {
        if keep.get(i).copied().unwrap_or(true) {
            for &o in &n.outputs {
                keep_value[o.index()] = true;
            }
        }
    }
    let removed_nodes = keep.iter().any(|k| !k);
    let removed_values = keep_value.iter().any(|k| !k);
    if !removed_nodes && !removed_values {
        return false;
    }
    // Old value index -> new id.
    let mut vmap = vec![None; g.values.len()];
    let mut values = Vec::new();
    for (i, v) in g.values.iter().enumerate() {
        if keep_value[i] {
            vmap[i] = Some(ValueId(values.len() as u32));
            values.push(v.clone());
        }
    }
    let map = |v: ValueId| vmap[v.index()].unwrap_or(v);
    let mut nodes = Vec::new();
    for (i, n) in g.nodes.iter().enumerate() {
        if keep.get(i).copied().unwrap_or(true) {
            let mut n = n.clone();
            n.inputs = n.inputs.iter().map(|&v| map(v)).collect();
            n.outputs = n.outputs.iter().map(|&v| map(v)).collect();
            let id = NodeId(nodes.len() as u32);
            for &o in &n.outputs {
                values[o.index()].producer = Some(id);
            }
            nodes.push(n);
        }
    }
    g.values = values;
    g.nodes = nodes;
    g.inputs = g.inputs.iter().map(|&v| map(v)).collect();
    g.params = g
        .params
        .iter()
        .filter(|v| keep_value[v.index()])
        .map(|&v| map(v))
        .collect();
    g.outputs = g.outputs.iter().map(|&v| map(v)).collect();
    true
}

/// Whether two floats are equal within a relative tolerance (for matching constants
/// written at different precisions, e.g. `0.7978846` and `sqrt(2/pi)`).
pub fn approx(x: f64, want: f64, rel: f64) -> bool {
    (x - want).abs() <= rel * want.abs().max(f64::MIN_POSITIVE)
}
