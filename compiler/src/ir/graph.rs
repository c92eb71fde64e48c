//! The graph arena: values, nodes, and a construction API with shape inference.

use super::limits::check_shape;
use super::shape_infer::{Site, TensorType, fmt_shape};
use super::{DType, GraphError, NodeId, Op, ParamData, Tensor, ValueId};

/// A tensor-valued edge: a graph input, a param, or a node output.
#[derive(Clone, Debug, PartialEq)]
pub struct Value {
    /// Unique name within the graph.
    pub name: String,
    /// Static shape.
    pub shape: Vec<usize>,
    /// Element type.
    pub dtype: DType,
    /// The node computing this value (`None` for inputs and params).
    pub producer: Option<NodeId>,
    /// Param or constant data (`None` for inputs, node outputs and
    /// params declared without data). A shared handle: cloning never copies weights.
    pub data: Option<ParamData>,
}

impl Value {
    /// The shape and dtype together.
    pub fn ty(&self) -> TensorType {
        TensorType::new(self.shape.clone(), self.dtype)
    }
}

/// One operation applied to values.
#[derive(Clone, Debug, PartialEq)]
pub struct Node {
    /// Unique name within the graph.
    pub name: String,
    /// The operator and its attributes.
    pub op: Op,
    /// Operands, in op order.
    pub inputs: Vec<ValueId>,
    /// Results (exactly one in v1).
    pub outputs: Vec<ValueId>,
}

/// A tensor graph: arenas of values and nodes addressed by [`ValueId`] and [`NodeId`].
///
/// Invariants (checked by [`Graph::verify`], kept by the construction API):
/// names are unique; `nodes` is in topological order (every node input is a
/// graph input, a param, or an output of an earlier node); every value's
/// shape and dtype equal what its producer's [`Op::infer`] gives; every
/// shape is within [`limits`](super::limits).
#[derive(Clone, Debug, PartialEq, Default)]
pub struct Graph {
    /// Model name.
    pub name: String,
    /// Seed for param `init` and generated inputs.
    pub seed: u64,
    /// Value arena.
    pub values: Vec<Value>,
    /// Node arena, in topological order.
    pub nodes: Vec<Node>,
    /// Graph inputs, in declaration order.
    pub inputs: Vec<ValueId>,
    /// Params, in declaration order.
    pub params: Vec<ValueId>,
    /// Graph outputs, in declaration order.
    pub outputs: Vec<ValueId>,
    /// Name -> id indexes of values and nodes, so building a graph checks each new name
    /// in constant time (a 100k-node chain loads in linear time). A cache: the arenas are
    /// public, so a hit is checked against the arena and a stale index is rebuilt.
    names: NameIndex,
}

/// See [`Graph::names`]. Never part of a graph's identity (always equal).
#[derive(Clone, Debug, Default)]
struct NameIndex {
    values: std::collections::HashMap<String, ValueId>,
    nodes: std::collections::HashMap<String, NodeId>,
}

impl PartialEq for NameIndex {
    fn eq(&self, _: &NameIndex) -> bool {
        true
    }
}

impl Graph {
    /// Brings the name indexes up to date with the arenas (rebuilding them when the arenas
    /// were edited directly) and returns the value and node with `name`, if any.
    fn lookup_names(&mut self, name: &str) -> (Option<ValueId>, Option<NodeId>) {
        let stale = self.names.values.len() != self.values.len()
            || self.names.nodes.len() != self.nodes.len()
            || self.names.values.get(name).is_some_and(|id| {
                self.values
                    .get(id.0 as usize)
                    .is_none_or(|v| v.name != name)
            })
            || self
                .names
                .nodes
                .get(name)
                .is_some_and(|id| self.nodes.get(id.0 as usize).is_none_or(|n| n.name != name));
        if stale {
            self.names.values = self
                .values
                .iter()
                .enumerate()
                .map(|(i, v)| (v.name.clone(), ValueId(i as u32)))
                .collect();
            self.names.nodes = self
                .nodes
                .iter()
                .enumerate()
                .map(|(i, n)| (n.name.clone(), NodeId(i as u32)))
                .collect();
        }
        (
            self.names.values.get(name).copied(),
            self.names.nodes.get(name).copied(),
        )
    }

    /// An empty graph.
    pub fn new(name: impl Into<String>) -> Graph {
        Graph {
            name: name.into(),
            ..Graph::default()
        }
    }

    /// The value with this id.
    ///
    /// # Panics
    /// If `id` is not from this graph (ids are only minted by the graph).
    pub fn value(&self, id: ValueId) -> &Value {
        &self.values[id.index()]
    }

    /// Mutable access to the value with this id (panics like [`Graph::value`]).
    pub fn value_mut(&mut self, id: ValueId) -> &mut Value {
        &mut self.values[id.index()]
    }

    /// The node with this id (panics like [`Graph::value`]).
    pub fn node(&self, id: NodeId) -> &Node {
        &self.nodes[id.index()]
    }

    /// The value with this id, or `None` if out of range.
    pub fn get_value(&self, id: ValueId) -> Option<&Value> {
        self.values.get(id.index())
    }

    /// All value ids, in arena order.
    pub fn value_ids(&self) -> impl Iterator<Item = ValueId> + '_ {
        (0..self.values.len()).map(|i| ValueId(i as u32))
    }

    /// All node ids, in topological order.
    pub fn node_ids(&self) -> impl Iterator<Item = NodeId> + '_ {
        (0..self.nodes.len()).map(|i| NodeId(i as u32))
    }

    /// Nodes that read `value`, in node order, each once.
    pub fn users(&self, value: ValueId) -> Vec<NodeId> {
        self.node_ids()
            .filter(|&n| self.node(n).inputs.contains(&value))
            .collect()
    }

    /// The value with this name.
    pub fn value_by_name(&self, name: &str) -> Option<ValueId> {
        self.values
            .iter()
            .position(|v| v.name == name)
            .map(|i| ValueId(i as u32))
    }

    /// The node with this name.
    pub fn node_by_name(&self, name: &str) -> Option<NodeId> {
        self.nodes
            .iter()
            .position(|n| n.name == name)
            .map(|i| NodeId(i as u32))
    }

    /// Whether `id` is a graph input.
    pub fn is_input(&self, id: ValueId) -> bool {
        self.inputs.contains(&id)
    }

    /// Whether `id` is a param.
    pub fn is_param(&self, id: ValueId) -> bool {
        self.params.contains(&id)
    }

    /// Whether `id` is a graph output.
    pub fn is_output(&self, id: ValueId) -> bool {
        self.outputs.contains(&id)
    }

    /// The type of a value.
    pub fn ty(&self, id: ValueId) -> TensorType {
        self.value(id).ty()
    }

    /// Describes what defines `id`, e.g. `input %0`, `param %1` or `node 'fc1' (index 3)`.
    pub fn describe_definer(&self, id: ValueId) -> String {
        match self.value(id).producer {
            Some(n) => format!("node '{}' (index {})", self.node(n).name, n.0),
            None if self.is_param(id) => format!("param {id}"),
            None => format!("input {id}"),
        }
    }

    fn check_new_value_name(&mut self, name: &str) -> Result<(), GraphError> {
        match self.lookup_names(name).0 {
            Some(id) => Err(GraphError::Duplicate {
                kind: "value",
                name: name.to_string(),
                first: self.describe_definer(id),
            }),
            None => Ok(()),
        }
    }

    fn push_value(&mut self, value: Value) -> ValueId {
        let id = ValueId(self.values.len() as u32);
        if self.names.values.len() == self.values.len() {
            self.names.values.insert(value.name.clone(), id);
        }
        self.values.push(value);
        id
    }

    fn check_limits(what: String, name: &str, shape: &[usize]) -> Result<(), GraphError> {
        check_shape(shape)
            .map(|_| ())
            .map_err(|reason| GraphError::Limit {
                what,
                name: name.to_string(),
                shape: fmt_shape(shape),
                reason,
            })
    }

    /// Declares a graph input.
    pub fn add_input(
        &mut self,
        name: impl Into<String>,
        shape: impl Into<Vec<usize>>,
        dtype: DType,
    ) -> Result<ValueId, GraphError> {
        let (name, shape) = (name.into(), shape.into());
        self.check_new_value_name(&name)?;
        Self::check_limits("input".into(), &name, &shape)?;
        let id = self.push_value(Value {
            name,
            shape,
            dtype,
            producer: None,
            data: None,
        });
        self.inputs.push(id);
        Ok(id)
    }

    /// Declares a param whose data is `data` (shape and dtype come from it).
    pub fn add_param(
        &mut self,
        name: impl Into<String>,
        data: Tensor,
    ) -> Result<ValueId, GraphError> {
        let shape = data.shape().to_vec();
        let dtype = data.dtype();
        self.add_param_decl(name, shape, dtype, Some(data.into()))
    }

    /// Declares a param by type, with optional data (which must match the type).
    pub fn add_param_decl(
        &mut self,
        name: impl Into<String>,
        shape: impl Into<Vec<usize>>,
        dtype: DType,
        data: Option<ParamData>,
    ) -> Result<ValueId, GraphError> {
        let (name, shape) = (name.into(), shape.into());
        self.check_new_value_name(&name)?;
        Self::check_limits("param".into(), &name, &shape)?;
        if let Some(t) = &data
            && (t.shape() != shape.as_slice()
                || t.dtype() != dtype
                || (t.is_materialized() && matches!(t.tensor(), Tensor::F64(_))))
        {
            return Err(GraphError::ParamData {
                name,
                expected: TensorType::new(shape, dtype).to_string(),
                found: format!(
                    "{} {}",
                    fmt_shape(t.shape()),
                    if t.is_materialized() {
                        t.tensor().elem_name()
                    } else {
                        t.dtype().name()
                    }
                ),
            });
        }
        let id = self.push_value(Value {
            name,
            shape,
            dtype,
            producer: None,
            data,
        });
        self.params.push(id);
        Ok(id)
    }

    /// Appends a node computing `op` on `inputs`, inferring its output type.
    /// Returns the id of its single output value, named `output`.
    pub fn add_node(
        &mut self,
        name: impl Into<String>,
        op: Op,
        inputs: &[ValueId],
        output: impl Into<String>,
    ) -> Result<ValueId, GraphError> {
        let (name, output) = (name.into(), output.into());
        let index = self.nodes.len();
        if let Some(first) = self.lookup_names(&name).1 {
            return Err(GraphError::Duplicate {
                kind: "node",
                name,
                first: format!("node index {}", first.0),
            });
        }
        for &i in inputs {
            if self.get_value(i).is_none() {
                return Err(GraphError::BadId {
                    what: "value",
                    id: i.to_string(),
                    len: self.values.len(),
                });
            }
        }
        let types: Vec<TensorType> = inputs.iter().map(|&i| self.ty(i)).collect();
        let mut outs = op.infer(&types).map_err(|e| GraphError::Node {
            node: name.clone(),
            index,
            op: op.name(),
            site: e.site,
            message: e.message,
        })?;
        let out = outs.remove(0);
        Self::check_limits(
            format!("output of node '{name}' (index {index})"),
            &output,
            &out.shape,
        )
        .map_err(|e| GraphError::Node {
            node: name.clone(),
            index,
            op: op.name(),
            site: Site::Node,
            message: e.to_string(),
        })?;
        self.check_new_value_name(&output)?;
        let vid = self.push_value(Value {
            name: output,
            shape: out.shape,
            dtype: out.dtype,
            producer: Some(NodeId(index as u32)),
            data: None,
        });
        if self.names.nodes.len() == self.nodes.len() {
            self.names.nodes.insert(name.clone(), NodeId(index as u32));
        }
        self.nodes.push(Node {
            name,
            op,
            inputs: inputs.to_vec(),
            outputs: vec![vid],
        });
        Ok(vid)
    }

    /// Marks `id` as a graph output (after any already marked).
    pub fn add_output(&mut self, id: ValueId) -> Result<(), GraphError> {
        if self.get_value(id).is_none() {
            return Err(GraphError::BadId {
                what: "value",
                id: id.to_string(),
                len: self.values.len(),
            });
        }
        self.outputs.push(id);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn build_and_query() {
        let mut g = Graph::new("t");
        let x = g.add_input("x", [2, 3], DType::F32).unwrap();
        let w = g
            .add_param("w", Tensor::zeros(DType::F32, &[3, 4]))
            .unwrap();
        let h = g
            .add_node("fc", Op::MatMul { transpose_b: false }, &[x, w], "h")
            .unwrap();
        let y = g.add_node("act", Op::Relu, &[h], "y").unwrap();
        g.add_output(y).unwrap();
        assert_eq!(g.value(h).shape, vec![2, 4]);
        assert_eq!(g.users(h), vec![NodeId(1)]);
        assert_eq!(g.value_by_name("y"), Some(y));
        assert_eq!(g.node_by_name("act"), Some(NodeId(1)));
        g.verify().unwrap();

        let e = g.add_node("fc2", Op::Add, &[x, w], "z").unwrap_err();
        assert_eq!(
            e.to_string(),
            "node 'fc2' (index 2, op add): shapes [2,3] and [3,4] do not broadcast"
        );
        let e = g.add_input("x", [1], DType::F32).unwrap_err();
        assert_eq!(
            e.to_string(),
            "value name 'x' is already defined by input %0"
        );
        let e = g
            .add_input("big", [1 << 20, 1 << 20], DType::F32)
            .unwrap_err();
        assert!(e.to_string().contains("more than the limit"), "{e}");
    }
}
