//! Structural verification of a [`Graph`]'s invariants.

use std::collections::HashSet;

use super::limits::check_shape;
use super::shape_infer::fmt_shape;
use super::{Graph, GraphError, NodeId, ValueId};

impl Graph {
    /// Checks every invariant documented on [`Graph`]: ids in range, unique
    /// names, topological node order, producers consistent, value types equal
    /// to re-inferred types, size limits, param data matching its type.
    pub fn verify(&self) -> Result<(), GraphError> {
        let bad = |m: String| Err(GraphError::Invariant(m));
        let nv = self.values.len();
        let in_range = |v: ValueId| v.index() < nv;
        let mut names = HashSet::new();
        for (i, v) in self.values.iter().enumerate() {
            if !names.insert(v.name.as_str()) {
                return bad(format!(
                    "value name '{}' is used twice (second at %{i})",
                    v.name
                ));
            }
            if let Err(e) = check_shape(&v.shape) {
                return bad(format!(
                    "value %{i} '{}' {}: {e}",
                    v.name,
                    fmt_shape(&v.shape)
                ));
            }
        }
        let mut node_names = HashSet::new();
        for n in &self.nodes {
            if !node_names.insert(n.name.as_str()) {
                return bad(format!("node name '{}' is used twice", n.name));
            }
        }
        for list in [&self.inputs, &self.params, &self.outputs] {
            if let Some(v) = list.iter().find(|v| !in_range(**v)) {
                return bad(format!("{v} is out of range ({nv} values)"));
            }
        }
        let mut defined = vec![false; nv];
        for &v in self.inputs.iter().chain(&self.params) {
            if self.value(v).producer.is_some() {
                return bad(format!("input or param {v} has a producer"));
            }
            if defined[v.index()] {
                return bad(format!("{v} is declared twice as input or param"));
            }
            defined[v.index()] = true;
        }
        for &p in &self.params {
            let v = self.value(p);
            if let Some(t) = &v.data
                && (t.shape() != v.shape.as_slice() || t.dtype() != v.dtype)
            {
                return bad(format!(
                    "param {p} '{}' data is {} {}, declared {} {}",
                    v.name,
                    fmt_shape(t.shape()),
                    t.elem_name(),
                    fmt_shape(&v.shape),
                    v.dtype
                ));
            }
        }
        for (i, node) in self.nodes.iter().enumerate() {
            let nid = NodeId(i as u32);
            if node.outputs.len() != node.op.num_outputs() {
                return bad(format!(
                    "node '{}' (index {i}) has {} outputs, {} has {}",
                    node.name,
                    node.outputs.len(),
                    node.op.name(),
                    node.op.num_outputs()
                ));
            }
            for &v in &node.inputs {
                if !in_range(v) || !defined[v.index()] {
                    return bad(format!(
                        "node '{}' (index {i}) reads {v} before it is defined",
                        node.name
                    ));
                }
            }
            for &v in &node.outputs {
                if !in_range(v) || defined[v.index()] || self.value(v).producer != Some(nid) {
                    return bad(format!(
                        "node '{}' (index {i}) output {v} is defined twice or has another producer",
                        node.name
                    ));
                }
                defined[v.index()] = true;
            }
            let types: Vec<_> = node.inputs.iter().map(|&v| self.ty(v)).collect();
            let inferred = node.op.infer(&types).map_err(|e| GraphError::Node {
                node: node.name.clone(),
                index: i,
                op: node.op.name(),
                site: e.site,
                message: e.message,
            })?;
            let actual: Vec<_> = node.outputs.iter().map(|&v| self.ty(v)).collect();
            if inferred != actual {
                return bad(format!(
                    "node '{}' (index {i}) outputs are typed {:?}, inference gives {:?}",
                    node.name,
                    actual.iter().map(|t| t.to_string()).collect::<Vec<_>>(),
                    inferred.iter().map(|t| t.to_string()).collect::<Vec<_>>()
                ));
            }
        }
        if let Some(v) = (0..nv).find(|&i| !defined[i]) {
            return bad(format!(
                "value %{v} '{}' is never defined",
                self.values[v].name
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::ir::{DType, Graph, GraphError, Op};

    #[test]
    fn broken_graphs_are_caught() {
        let mut g = Graph::new("v");
        let x = g.add_input("x", [2], DType::F32).unwrap();
        let y = g.add_node("r", Op::Relu, &[x], "y").unwrap();
        g.add_output(y).unwrap();
        g.verify().unwrap();

        let mut bad = g.clone();
        bad.nodes[0].outputs.clear();
        assert!(matches!(bad.verify(), Err(GraphError::Invariant(_))));

        let mut bad = g.clone();
        bad.values[y.index()].shape = vec![3];
        let e = bad.verify().unwrap_err().to_string();
        assert!(e.contains("inference gives"), "{e}");

        let mut bad = g.clone();
        bad.nodes[0].inputs = vec![y];
        let e = bad.verify().unwrap_err().to_string();
        assert!(e.contains("reads %1 before it is defined"), "{e}");
    }
}
