//! ONNX graph to [`Graph`]: opset handling, constant folding of shape
//! subgraphs, and the mapping of every supported ONNX op onto graph IR ops.
//!
//! Every ONNX value is either a constant (an initializer, a `Constant`, or a
//! node whose inputs are all constants, folded at import with the reference
//! executor) or a value of the graph being built. Shape subgraphs (`Shape`,
//! `Gather`, `Unsqueeze`, `Concat`, `ConstantOfShape`, `Range`, `Expand`,
//! `Equal`, `Where`...) fold to constants once the input shapes are known, so
//! the operands that the graph IR takes as attributes (`Reshape` shapes,
//! `Slice` bounds, reduction axes) are always known.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::rc::Rc;

use ndarray::{ArrayD, IxDyn};
use petgraph::graph::DiGraph;

use super::error::{OnnxError, UnsupportedOp};
use super::proto::{
    AttributeProto, DimensionValue, GraphProto, ModelProto, NodeProto, TensorProto, attr_type,
    data_type as dt,
};
use super::tensor::{import_dtype, read_tensor};
use crate::ir::limits::check_shape;
use crate::ir::shape_infer::{broadcast_shapes, normalize_axis};
use crate::ir::{DType, GeluApprox, Graph, Op, Tensor, ValueId, fmt_shape};
use crate::reference::{RefOptions, run_reference};

/// Lowest and highest default-domain opset the importer accepts. The
/// semantics are those of opsets 9 to 21 (with the older forms of `Softmax`,
/// `Unsqueeze`/`Squeeze`/`ReduceSum` axes, `Split`, `Clip` and `Slice`);
/// opsets 22 to 25 only widen the type lists of the ops imported here, so
/// they are accepted too.
pub const OPSET_RANGE: (i64, i64) = (9, 25);

/// Every default-domain op the importer imports (some only when their
/// inputs are constants after folding: see `docs/onnx.md`).
pub const SUPPORTED_OPS: &[&str] = &[
    "Abs",
    "Add",
    "And",
    "AveragePool",
    "BatchNormalization",
    "Cast",
    "CastLike",
    "Clip",
    "Concat",
    "Constant",
    "ConstantOfShape",
    "Conv",
    "CumSum",
    "Div",
    "Dropout",
    "Equal",
    "Erf",
    "Exp",
    "Expand",
    "Flatten",
    "Gather",
    "GatherElements",
    "GatherND",
    "Gelu",
    "Gemm",
    "GlobalAveragePool",
    "GlobalMaxPool",
    "Greater",
    "GreaterOrEqual",
    "Identity",
    "IsNaN",
    "LayerNormalization",
    "LeakyRelu",
    "Less",
    "LessOrEqual",
    "Log",
    "LRN",
    "MatMul",
    "Max",
    "MaxPool",
    "Mean",
    "Min",
    "Mul",
    "Neg",
    "Not",
    "Or",
    "Pow",
    "Range",
    "Reciprocal",
    "ReduceMax",
    "ReduceMean",
    "ReduceSum",
    "Relu",
    "Reshape",
    "Shape",
    "Sigmoid",
    "Size",
    "Slice",
    "Softmax",
    "Split",
    "Sqrt",
    "Squeeze",
    "Sub",
    "Sum",
    "Tanh",
    "Transpose",
    "Trilu",
    "Unsqueeze",
    "Where",
];

/// Initializers with at least this many elements become graph params when
/// read instead of being folded like small constants.
const LARGE_INITIALIZER: usize = 1 << 16;

/// Import options.
#[derive(Clone, Debug, Default)]
pub struct OnnxOptions {
    /// Shapes for graph inputs (by name), binding their symbolic dimensions.
    pub input_shapes: BTreeMap<String, Vec<usize>>,
    /// Graph inputs bound to constant values at import (they are then
    /// folded like initializers and are no longer inputs of the graph).
    pub constant_inputs: BTreeMap<String, Tensor>,
}

/// A value while importing: a constant, or a value of the graph being built.
#[derive(Clone, Debug)]
enum Val {
    Const(Rc<Tensor>),
    Ir(ValueId),
}

type R<T> = Result<T, String>;

/// The default-domain opset of `model`.
fn default_opset(model: &ModelProto) -> Result<i64, OnnxError> {
    let mut opset = None;
    for o in &model.opset_import {
        let d = o.domain.as_deref().unwrap_or("");
        if d.is_empty() || d == "ai.onnx" {
            opset = o.version;
        }
    }
    let opset = opset.ok_or_else(|| {
        OnnxError::Graph("the model imports no opset of the default ONNX domain".into())
    })?;
    if !(OPSET_RANGE.0..=OPSET_RANGE.1).contains(&opset) {
        return Err(OnnxError::Graph(format!(
            "default-domain opset {opset} is not supported (expected {} to {})",
            OPSET_RANGE.0, OPSET_RANGE.1
        )));
    }
    Ok(opset)
}

fn node_label(n: &NodeProto, index: usize) -> String {
    match n.name.as_deref() {
        Some(s) if !s.is_empty() => s.to_string(),
        _ => format!("#{index}"),
    }
}

/// Converts a decoded model into a graph.
pub(crate) fn import_model(
    model: &ModelProto,
    base_dir: &Path,
    opts: &OnnxOptions,
) -> Result<Graph, OnnxError> {
    let opset = default_opset(model)?;
    let g = model
        .graph
        .as_ref()
        .ok_or_else(|| OnnxError::Graph("the model has no graph".into()))?;
    check_supported(model, g, opset)?;
    let order = topo_order(g)?;
    let mut imp = Importer {
        base_dir,
        opset,
        graph: Graph::new(g.name.clone().unwrap_or_else(|| "model".into())),
        vals: HashMap::new(),
        names: HashSet::new(),
        node_names: HashSet::new(),
        unproduced: HashMap::new(),
        cur: String::new(),
        cur_index: 0,
        cur_op: String::new(),
    };
    if imp.graph.name.is_empty() {
        imp.graph.name = "model".into();
    }
    imp.initializers(g)?;
    imp.inputs(g, opts)?;
    for &i in &order {
        imp.node(i, &g.node[i])?;
    }
    imp.outputs(g)?;
    canonical_order(imp.graph)
}

/// The same graph with its values numbered as the model.json loader numbers
/// them (inputs, then params, then node outputs), so that importing an ONNX
/// model and loading its `neuronc convert` output give equal graphs. Param
/// data is moved, not copied.
fn canonical_order(mut g: Graph) -> Result<Graph, OnnxError> {
    let mut out = Graph::new(g.name.clone());
    out.seed = g.seed;
    let mut map = vec![None; g.values.len()];
    let err = |e: crate::ir::GraphError| OnnxError::Graph(e.to_string());
    for &id in &g.inputs {
        let v = g.value(id);
        map[id.index()] = Some(
            out.add_input(v.name.clone(), v.shape.clone(), v.dtype)
                .map_err(err)?,
        );
    }
    for &id in &g.params.clone() {
        let v = g.value_mut(id);
        let data = v.data.take();
        let (name, shape, dtype) = (v.name.clone(), v.shape.clone(), v.dtype);
        map[id.index()] = Some(out.add_param_decl(name, shape, dtype, data).map_err(err)?);
    }
    for n in &g.nodes {
        let mut ins = Vec::with_capacity(n.inputs.len());
        for i in &n.inputs {
            ins.push(map[i.index()].ok_or_else(|| {
                OnnxError::Graph("internal: value used before definition".into())
            })?);
        }
        let o = n.outputs[0];
        let name = g.value(o).name.clone();
        map[o.index()] = Some(
            out.add_node(n.name.clone(), n.op.clone(), &ins, name)
                .map_err(err)?,
        );
    }
    for &o in &g.outputs {
        let id =
            map[o.index()].ok_or_else(|| OnnxError::Graph("internal: output not mapped".into()))?;
        out.add_output(id).map_err(err)?;
    }
    Ok(out)
}

/// One error listing every node whose op (or domain) is not supported.
fn check_supported(model: &ModelProto, g: &GraphProto, opset: i64) -> Result<(), OnnxError> {
    let mut list = Vec::new();
    let mut domain_opset = HashMap::new();
    for o in &model.opset_import {
        domain_opset.insert(o.domain.clone().unwrap_or_default(), o.version.unwrap_or(0));
    }
    for (i, n) in g.node.iter().enumerate() {
        let op = n.op_type.as_deref().unwrap_or("");
        let domain = n.domain.as_deref().unwrap_or("");
        let default = domain.is_empty() || domain == "ai.onnx";
        let has_subgraph = n.attribute.iter().any(|a| a.g.is_some());
        if !default || !SUPPORTED_OPS.contains(&op) || has_subgraph {
            list.push(UnsupportedOp {
                op_type: op.to_string(),
                domain: if default {
                    "ai.onnx".into()
                } else {
                    domain.to_string()
                },
                opset: if default {
                    opset
                } else {
                    domain_opset.get(domain).copied().unwrap_or(0)
                },
                node: node_label(n, i),
            });
        }
    }
    if list.is_empty() {
        Ok(())
    } else {
        Err(OnnxError::Unsupported { list })
    }
}

/// The nodes in an order where every value is defined before it is used;
/// undefined values and cycles are errors.
fn topo_order(g: &GraphProto) -> Result<Vec<usize>, OnnxError> {
    let mut producer: HashMap<&str, usize> = HashMap::new();
    let mut external: HashSet<&str> = HashSet::new();
    for t in &g.initializer {
        external.insert(t.name.as_deref().unwrap_or(""));
    }
    for v in &g.input {
        external.insert(v.name.as_deref().unwrap_or(""));
    }
    for (i, n) in g.node.iter().enumerate() {
        for o in n.output.iter().filter(|o| !o.is_empty()) {
            if external.contains(o.as_str()) {
                return Err(OnnxError::Graph(format!(
                    "node '{}' (index {i}) redefines '{o}', which is a graph input or initializer",
                    node_label(n, i)
                )));
            }
            if let Some(&first) = producer.get(o.as_str()) {
                return Err(OnnxError::Graph(format!(
                    "value '{o}' is defined twice: by node '{}' (index {first}) and node '{}' (index {i})",
                    node_label(&g.node[first], first),
                    node_label(n, i)
                )));
            }
            producer.insert(o, i);
        }
    }
    let mut dg = DiGraph::<usize, ()>::new();
    let ids: Vec<_> = (0..g.node.len()).map(|i| dg.add_node(i)).collect();
    let mut sorted = true;
    for (i, n) in g.node.iter().enumerate() {
        for x in n.input.iter().filter(|x| !x.is_empty()) {
            if let Some(&p) = producer.get(x.as_str()) {
                dg.add_edge(ids[p], ids[i], ());
                sorted &= p < i;
            } else if !external.contains(x.as_str()) {
                return Err(OnnxError::Graph(format!(
                    "node '{}' (index {i}) uses value '{x}', which is not defined (no graph input, initializer or node output has this name)",
                    node_label(n, i)
                )));
            }
        }
    }
    if sorted {
        return Ok((0..g.node.len()).collect());
    }
    match petgraph::algo::toposort(&dg, None) {
        Ok(order) => Ok(order.into_iter().map(|n| dg[n]).collect()),
        Err(cycle) => {
            let start = cycle.node_id();
            let scc = petgraph::algo::tarjan_scc(&dg)
                .into_iter()
                .find(|c| c.contains(&start))
                .unwrap_or_else(|| vec![start]);
            let mut members: Vec<usize> = scc.into_iter().map(|n| dg[n]).collect();
            members.sort_unstable();
            let names: Vec<String> = members
                .iter()
                .map(|&i| format!("'{}' (index {i})", node_label(&g.node[i], i)))
                .collect();
            Err(OnnxError::Graph(format!(
                "the graph has a cycle through nodes {}",
                names.join(", ")
            )))
        }
    }
}

struct Importer<'a> {
    base_dir: &'a Path,
    opset: i64,
    graph: Graph,
    vals: HashMap<String, Val>,
    /// IR value names in use.
    names: HashSet<String>,
    /// IR node names in use.
    node_names: HashSet<String>,
    /// Optional outputs the importer does not produce -> the node that declares them.
    unproduced: HashMap<String, String>,
    cur: String,
    cur_index: usize,
    cur_op: String,
}

/// Attribute access for one node.
struct Attrs<'a>(&'a [AttributeProto]);

impl<'a> Attrs<'a> {
    fn get(&self, name: &str) -> Option<&'a AttributeProto> {
        self.0.iter().find(|a| a.name.as_deref() == Some(name))
    }
    fn typed(&self, name: &str, ty: i32, what: &str) -> R<Option<&'a AttributeProto>> {
        match self.get(name) {
            None => Ok(None),
            Some(a) if a.ref_attr_name.is_some() => Err(format!(
                "attribute '{name}' refers to a function attribute, which is not supported"
            )),
            Some(a) if a.r#type.is_some_and(|t| t != ty) => Err(format!(
                "attribute '{name}' must be {what}, found attribute type {}",
                a.r#type.unwrap_or(0)
            )),
            Some(a) => Ok(Some(a)),
        }
    }
    fn int(&self, name: &str, default: i64) -> R<i64> {
        Ok(self
            .typed(name, attr_type::INT, "an integer")?
            .map_or(default, |a| a.i.unwrap_or(0)))
    }
    fn float(&self, name: &str, default: f32) -> R<f32> {
        Ok(self
            .typed(name, attr_type::FLOAT, "a float")?
            .map_or(default, |a| a.f.unwrap_or(0.0)))
    }
    fn ints(&self, name: &str) -> R<Option<Vec<i64>>> {
        Ok(self
            .typed(name, attr_type::INTS, "a list of integers")?
            .map(|a| a.ints.clone()))
    }
    fn floats(&self, name: &str) -> R<Option<Vec<f32>>> {
        Ok(self
            .typed(name, attr_type::FLOATS, "a list of floats")?
            .map(|a| a.floats.clone()))
    }
    fn string(&self, name: &str) -> R<Option<String>> {
        match self.typed(name, attr_type::STRING, "a string")? {
            None => Ok(None),
            Some(a) => String::from_utf8(a.s.clone().unwrap_or_default())
                .map(Some)
                .map_err(|_| format!("attribute '{name}' is not valid UTF-8")),
        }
    }
    fn tensor(&self, name: &str) -> R<Option<&'a TensorProto>> {
        Ok(self
            .typed(name, attr_type::TENSOR, "a tensor")?
            .and_then(|a| a.t.as_ref()))
    }
}

fn usize_of(v: i64, what: &str) -> R<usize> {
    usize::try_from(v).map_err(|_| format!("{what} {v} must be >= 0"))
}

fn numel(shape: &[usize]) -> usize {
    shape.iter().product()
}

fn scalar(dtype: DType, v: f64) -> Tensor {
    Tensor::from_f64(dtype, ArrayD::from_elem(IxDyn(&[]), v))
}

fn i64_tensor(v: Vec<i64>) -> Tensor {
    let n = v.len();
    Tensor::I64(
        ArrayD::from_shape_vec(IxDyn(&[n]), v).unwrap_or_else(|_| ArrayD::zeros(IxDyn(&[0]))),
    )
}

fn norm_axis(axis: i64, rank: usize) -> R<usize> {
    normalize_axis(axis, rank).ok_or_else(|| {
        format!(
            "axis {axis} is out of range for rank {rank} (expected {} to {})",
            -(rank as i64),
            rank as i64 - 1
        )
    })
}

impl Importer<'_> {
    fn err(&self, message: impl Into<String>) -> OnnxError {
        OnnxError::Node {
            node: self.cur.clone(),
            index: self.cur_index,
            op_type: self.cur_op.clone(),
            message: message.into(),
        }
    }

    fn initializers(&mut self, g: &GraphProto) -> Result<(), OnnxError> {
        if let Some(s) = g.sparse_initializer.first() {
            return Err(OnnxError::Graph(format!(
                "sparse initializers are not supported (found one of dims {:?})",
                s.dims
            )));
        }
        let used: HashSet<&str> = g
            .node
            .iter()
            .flat_map(|n| n.input.iter().map(String::as_str))
            .chain(g.output.iter().filter_map(|o| o.name.as_deref()))
            .collect();
        for t in &g.initializer {
            let name = t.name.clone().unwrap_or_default();
            if name.is_empty() {
                return Err(OnnxError::Graph("an initializer has no name".into()));
            }
            if self.vals.contains_key(&name) {
                return Err(OnnxError::Graph(format!(
                    "initializer '{name}' is defined twice"
                )));
            }
            let numel = super::tensor::tensor_shape(&name, &t.dims)?
                .iter()
                .product::<usize>();
            // Large initializers are weights, never shape operands: they become
            // params at once, sharing the file buffer's bytes (no copy; see
            // `tensor::read_param`).
            let val = if numel >= LARGE_INITIALIZER && used.contains(name.as_str()) {
                let data = super::tensor::read_param(t, self.base_dir)?;
                let pname = self.fresh_value(&name);
                let (shape, dtype) = (data.shape().to_vec(), data.dtype());
                Val::Ir(
                    self.graph
                        .add_param_decl(pname, shape, dtype, Some(data))
                        .map_err(|e| OnnxError::tensor(&name, e.to_string()))?,
                )
            } else {
                Val::Const(Rc::new(read_tensor(t, self.base_dir)?))
            };
            self.vals.insert(name, val);
        }
        Ok(())
    }

    fn inputs(&mut self, g: &GraphProto, opts: &OnnxOptions) -> Result<(), OnnxError> {
        let mut unbound = Vec::new();
        let mut declared = HashSet::new();
        let mut pending = Vec::new();
        for v in &g.input {
            let name = v.name.clone().unwrap_or_default();
            declared.insert(name.clone());
            if self.vals.contains_key(&name) {
                continue; // an initializer listed as an input (IR version < 4)
            }
            if let Some(t) = opts.constant_inputs.get(&name) {
                self.vals.insert(name, Val::Const(Rc::new(t.clone())));
                continue;
            }
            let tt = v
                .r#type
                .as_ref()
                .and_then(|t| t.tensor_type.as_ref())
                .ok_or_else(|| OnnxError::Graph(format!("graph input '{name}' is not a tensor")))?;
            let ty = tt.elem_type.unwrap_or(0);
            let dtype = import_dtype(ty).ok_or_else(|| {
                OnnxError::Graph(format!(
                    "graph input '{name}' has element type {} ({ty}), which is not supported",
                    dt::name(ty)
                ))
            })?;
            let dims: Option<Vec<Result<usize, String>>> = tt.shape.as_ref().map(|s| {
                s.dim
                    .iter()
                    .enumerate()
                    .map(|(i, d)| match &d.value {
                        Some(DimensionValue::DimValue(v)) if *v > 0 => Ok(*v as usize),
                        Some(DimensionValue::DimValue(0)) => Ok(0),
                        Some(DimensionValue::DimParam(p)) if !p.is_empty() => Err(p.clone()),
                        _ => Err(format!("?{i}")),
                    })
                    .collect()
            });
            let shape = if let Some(s) = opts.input_shapes.get(&name) {
                if let Some(d) = &dims
                    && d.len() != s.len()
                {
                    return Err(OnnxError::Graph(format!(
                        "--input-shape {name}={}: the model declares rank {}, found rank {}",
                        fmt_shape(s),
                        d.len(),
                        s.len()
                    )));
                }
                if let Some(d) = &dims {
                    for (i, (want, got)) in d.iter().zip(s).enumerate() {
                        if let Ok(w) = want
                            && w != got
                        {
                            return Err(OnnxError::Graph(format!(
                                "--input-shape {name}={}: dimension {i} is fixed to {w} by the model, found {got}",
                                fmt_shape(s)
                            )));
                        }
                    }
                }
                s.clone()
            } else {
                match dims {
                    None => {
                        unbound.push(format!("{name}: unknown rank"));
                        continue;
                    }
                    Some(d) if d.iter().any(|x| x.is_err()) => {
                        let parts: Vec<String> = d
                            .iter()
                            .map(|x| match x {
                                Ok(v) => v.to_string(),
                                Err(p) => p.clone(),
                            })
                            .collect();
                        unbound.push(format!("{name}: [{}]", parts.join(", ")));
                        continue;
                    }
                    Some(d) => d.into_iter().filter_map(|x| x.ok()).collect(),
                }
            };
            if shape.contains(&0) {
                return Err(OnnxError::Graph(format!(
                    "graph input '{name}' has shape {}: empty tensors are not supported",
                    fmt_shape(&shape)
                )));
            }
            pending.push((name, shape, dtype));
        }
        if !unbound.is_empty() {
            return Err(OnnxError::UnboundDims { list: unbound });
        }
        for name in opts.input_shapes.keys() {
            if !declared.contains(name) || self.vals.contains_key(name) {
                return Err(OnnxError::Graph(format!(
                    "--input-shape names '{name}', which is not a graph input"
                )));
            }
        }
        for (name, shape, dtype) in pending {
            let id = self
                .graph
                .add_input(name.clone(), shape, dtype)
                .map_err(|e| OnnxError::Graph(format!("graph input '{name}': {e}")))?;
            self.names.insert(name.clone());
            self.vals.insert(name, Val::Ir(id));
        }
        Ok(())
    }

    fn outputs(&mut self, g: &GraphProto) -> Result<(), OnnxError> {
        self.cur = "(graph outputs)".into();
        self.cur_op = "output".into();
        for v in &g.output {
            let name = v.name.clone().unwrap_or_default();
            let val = self.val(&name).map_err(OnnxError::Graph)?;
            let id = match val {
                Val::Const(_) => self.ir(&val, &name).map_err(OnnxError::Graph)?,
                Val::Ir(id) => id,
            };
            let id = if self.graph.value(id).name == name && !self.graph.is_output(id) {
                id
            } else {
                let shape = self
                    .graph
                    .value(id)
                    .shape
                    .iter()
                    .map(|&d| d as i64)
                    .collect();
                let node = self.fresh_node(&name);
                let out = self.fresh_value(&name);
                self.graph
                    .add_node(node, Op::Reshape { shape }, &[id], out)
                    .map_err(|e| OnnxError::Graph(e.to_string()))?
            };
            self.graph
                .add_output(id)
                .map_err(|e| OnnxError::Graph(e.to_string()))?;
        }
        if g.output.is_empty() {
            return Err(OnnxError::Graph("the graph has no outputs".into()));
        }
        Ok(())
    }

    fn fresh_value(&mut self, base: &str) -> String {
        let mut name = base.to_string();
        let mut k = 1;
        while self.names.contains(&name) || name.is_empty() {
            name = format!("{base}__{k}");
            k += 1;
        }
        self.names.insert(name.clone());
        name
    }

    fn fresh_node(&mut self, base: &str) -> String {
        let mut name = base.to_string();
        let mut k = 1;
        while self.node_names.contains(&name) || name.is_empty() {
            name = format!("{base}__{k}");
            k += 1;
        }
        self.node_names.insert(name.clone());
        name
    }

    fn val(&self, name: &str) -> R<Val> {
        match self.vals.get(name) {
            Some(v) => Ok(v.clone()),
            None => Err(match self.unproduced.get(name) {
                Some(n) => format!(
                    "value '{name}' is an optional output of node '{n}' that the importer does not produce (only the first output is supported)"
                ),
                None => format!("value '{name}' is not defined"),
            }),
        }
    }

    /// A graph value for `v`: constants become params (named `name`).
    fn ir(&mut self, v: &Val, name: &str) -> R<ValueId> {
        match v {
            Val::Ir(id) => Ok(*id),
            Val::Const(t) => {
                // Drop the map's reference first, so a unique initializer moves
                // into the graph without a copy.
                let cached = self
                    .vals
                    .get(name)
                    .is_some_and(|x| matches!(x, Val::Const(c) if Rc::ptr_eq(c, t)));
                let t = t.clone();
                if cached {
                    self.vals.remove(name);
                }
                let data = Rc::try_unwrap(t).unwrap_or_else(|rc| (*rc).clone());
                let pname = self.fresh_value(name);
                let id = self
                    .graph
                    .add_param(pname, data)
                    .map_err(|e| e.to_string())?;
                if cached {
                    self.vals.insert(name.to_string(), Val::Ir(id));
                }
                Ok(id)
            }
        }
    }

    fn shape(&self, v: &Val) -> Vec<usize> {
        match v {
            Val::Const(t) => t.shape().to_vec(),
            Val::Ir(id) => self.graph.value(*id).shape.clone(),
        }
    }

    fn dtype(&self, v: &Val) -> DType {
        match v {
            Val::Const(t) => t.dtype(),
            Val::Ir(id) => self.graph.value(*id).dtype,
        }
    }

    /// Applies `op`: folds it when every input is a constant, else adds a
    /// node whose output is named `out`.
    fn apply(&mut self, op: Op, inputs: &[(Val, String)], out: &str) -> R<Val> {
        if inputs.iter().all(|(v, _)| matches!(v, Val::Const(_))) {
            return fold(op, inputs).map(|t| Val::Const(Rc::new(t)));
        }
        let mut ids = Vec::with_capacity(inputs.len());
        for (v, n) in inputs {
            ids.push(self.ir(v, n)?);
        }
        let cur = self.cur.clone();
        let node = self.fresh_node(&cur);
        let value = self.fresh_value(out);
        let id = self
            .graph
            .add_node(node, op, &ids, value)
            .map_err(|e| e.to_string())?;
        Ok(Val::Ir(id))
    }

    fn node(&mut self, index: usize, n: &NodeProto) -> Result<(), OnnxError> {
        let op = n.op_type.clone().unwrap_or_default();
        self.cur = node_label(n, index);
        if self.cur.starts_with('#') {
            self.cur = format!("{}_{index}", op.to_lowercase());
        }
        self.cur_index = index;
        self.cur_op = op.clone();
        let outs = self.import_node(&op, n).map_err(|m| self.err(m))?;
        for (k, o) in n.output.iter().enumerate() {
            if o.is_empty() {
                continue;
            }
            match outs.get(k) {
                Some(v) => {
                    self.vals.insert(o.clone(), v.clone());
                }
                None => {
                    self.unproduced.insert(o.clone(), self.cur.clone());
                }
            }
        }
        Ok(())
    }

    /// Imports one node; returns its outputs in order (fewer than declared
    /// when trailing optional outputs are not produced).
    fn import_node(&mut self, op: &str, n: &NodeProto) -> R<Vec<Val>> {
        let a = Attrs(&n.attribute);
        let out0 = n.output.first().cloned().unwrap_or_default();
        let input = |k: usize| -> Option<&String> { n.input.get(k).filter(|s| !s.is_empty()) };
        let mut ins: Vec<Option<(Val, String)>> = Vec::new();
        for k in 0..n.input.len() {
            ins.push(match input(k) {
                Some(name) => Some((self.val(name)?, name.clone())),
                None => None,
            });
        }
        let req = |k: usize| -> R<(Val, String)> {
            ins.get(k)
                .cloned()
                .flatten()
                .ok_or_else(|| format!("input {k} is required"))
        };
        let opset = self.opset;
        let one = |v: Val| Ok(vec![v]);
        macro_rules! unary {
            ($op:expr) => {{
                let x = req(0)?;
                return one(self.apply($op, &[x], &out0)?);
            }};
        }
        match op {
            "Identity" => one(req(0)?.0),
            "Dropout" => {
                let x = req(0)?;
                if opset >= 12
                    && let Some((Val::Const(t), _)) = ins.get(2).cloned().flatten()
                    && t.to_f64().iter().any(|&v| v != 0.0)
                {
                    return Err("training_mode = true is not supported (inference only)".into());
                }
                let mask = Tensor::Bool(ArrayD::from_elem(IxDyn(&self.shape(&x.0)), true));
                Ok(vec![x.0, Val::Const(Rc::new(mask))])
            }
            "Constant" => {
                let t = if let Some(t) = a.tensor("value")? {
                    // An empty 1-D integer constant is a shape operand (e.g. the scalar
                    // shape TorchScript exports give ConstantOfShape); it stays a constant.
                    if t.dims == [0] && matches!(t.data_type, Some(dt::INT64 | dt::INT32)) {
                        i64_tensor(Vec::new())
                    } else {
                        read_tensor(t, self.base_dir).map_err(|e| e.to_string())?
                    }
                } else if a.get("value_float").is_some() {
                    scalar(DType::F32, a.float("value_float", 0.0)? as f64)
                } else if a.get("value_int").is_some() {
                    Tensor::I64(ArrayD::from_elem(IxDyn(&[]), a.int("value_int", 0)?))
                } else if let Some(v) = a.floats("value_floats")? {
                    let n = v.len();
                    Tensor::F32(ArrayD::from_shape_vec(IxDyn(&[n]), v).map_err(|e| e.to_string())?)
                } else if let Some(v) = a.ints("value_ints")? {
                    i64_tensor(v)
                } else {
                    return Err("expected one of the attributes value, value_float(s), value_int(s) (sparse and string constants are not supported)".into());
                };
                if t.num_elements() == 0 && !(t.dtype() == DType::I64 && t.shape() == [0]) {
                    return Err("empty constants are not supported".into());
                }
                one(Val::Const(Rc::new(t)))
            }
            "Neg" => unary!(Op::Neg),
            "Abs" => unary!(Op::Abs),
            "Exp" => unary!(Op::Exp),
            "Log" => unary!(Op::Log),
            "Sqrt" => unary!(Op::Sqrt),
            "Reciprocal" => unary!(Op::Reciprocal),
            "Relu" => unary!(Op::Relu),
            "Sigmoid" => unary!(Op::Sigmoid),
            "Tanh" => unary!(Op::Tanh),
            "Erf" => unary!(Op::Erf),
            "Gelu" => {
                let approximate = match a.string("approximate")?.as_deref() {
                    None | Some("none") => GeluApprox::None,
                    Some("tanh") => GeluApprox::Tanh,
                    Some(o) => {
                        return Err(format!("approximate must be 'none' or 'tanh', found '{o}'"));
                    }
                };
                unary!(Op::Gelu { approximate })
            }
            "LeakyRelu" => {
                let x = req(0)?;
                let alpha = a.float("alpha", 0.01)?;
                let c = self.konst(scalar(self.dtype(&x.0), alpha as f64));
                let ax = self.apply(Op::Mul, &[x.clone(), c], &format!("{out0}__scaled"))?;
                let ax = (ax, format!("{out0}__scaled"));
                let pos =
                    self.apply(Op::Relu, std::slice::from_ref(&x), &format!("{out0}__pos"))?;
                let neg = self.apply(
                    Op::Min,
                    &[ax, self.konst(scalar(self.dtype(&x.0), 0.0))],
                    &format!("{out0}__neg"),
                )?;
                one(self.apply(
                    Op::Add,
                    &[(pos, format!("{out0}__pos")), (neg, format!("{out0}__neg"))],
                    &out0,
                )?)
            }
            "Add" | "Sub" | "Mul" | "Div" => {
                let o = match op {
                    "Add" => Op::Add,
                    "Sub" => Op::Sub,
                    "Mul" => Op::Mul,
                    _ => Op::Div,
                };
                let (x, y) = (req(0)?, req(1)?);
                if matches!(o, Op::Div) && self.dtype(&x.0).is_int() {
                    return self.int_div(x, y).map(|v| vec![v]);
                }
                one(self.apply(o, &[x, y], &out0)?)
            }
            "Pow" => {
                let (x, mut y) = (req(0)?, req(1)?);
                let xd = self.dtype(&x.0);
                if !xd.is_float() {
                    return Err(format!(
                        "Pow with a {xd} base is not supported (float bases only)"
                    ));
                }
                if self.dtype(&y.0) != xd {
                    let yn = format!("{out0}__exponent");
                    y = (self.apply(Op::Cast { dtype: xd }, &[y], &yn)?, yn);
                }
                one(self.apply(Op::Pow, &[x, y], &out0)?)
            }
            "Max" | "Min" | "Sum" | "Mean" => {
                let o = match op {
                    "Max" => Op::Max,
                    "Min" => Op::Min,
                    _ => Op::Add,
                };
                let xs: Vec<(Val, String)> = ins.iter().flatten().cloned().collect();
                if xs.is_empty() {
                    return Err("expected at least one input".into());
                }
                let count = xs.len();
                let mut acc = xs[0].clone();
                for (k, x) in xs.into_iter().enumerate().skip(1) {
                    let name = if k + 1 == count && op != "Mean" {
                        out0.clone()
                    } else {
                        format!("{out0}__{k}")
                    };
                    acc = (self.apply(o.clone(), &[acc, x], &name)?, name);
                }
                if op == "Mean" && count > 1 {
                    let c = self.konst(scalar(self.dtype(&acc.0), count as f64));
                    acc = (self.apply(Op::Div, &[acc, c], &out0)?, out0.clone());
                }
                one(acc.0)
            }
            "Equal" | "Less" | "Greater" | "LessOrEqual" | "GreaterOrEqual" | "And" | "Or" => {
                let (x, y) = (req(0)?, req(1)?);
                if matches!(op, "And" | "Or")
                    && (matches!(x.0, Val::Ir(_)) || matches!(y.0, Val::Ir(_)))
                {
                    return one(self.logical(op, &[x, y], &out0)?);
                }
                let (Val::Const(tx), Val::Const(ty)) = (&x.0, &y.0) else {
                    return Err(format!(
                        "{op} is supported only on constants (shape computations folded at import); an input is a runtime value"
                    ));
                };
                let (ax, ay) = (tx.to_f64(), ty.to_f64());
                let shape = broadcast_shapes(ax.shape(), ay.shape()).ok_or_else(|| {
                    format!(
                        "shapes {} and {} do not broadcast",
                        fmt_shape(ax.shape()),
                        fmt_shape(ay.shape())
                    )
                })?;
                let (bx, by) = (ax.broadcast(IxDyn(&shape)), ay.broadcast(IxDyn(&shape)));
                let (Some(bx), Some(by)) = (bx, by) else {
                    return Err("shapes do not broadcast".into());
                };
                let f: fn(f64, f64) -> bool = match op {
                    "Equal" => |a, b| a == b,
                    "Less" => |a, b| a < b,
                    "Greater" => |a, b| a > b,
                    "LessOrEqual" => |a, b| a <= b,
                    "GreaterOrEqual" => |a, b| a >= b,
                    "And" => |a, b| a != 0.0 && b != 0.0,
                    _ => |a, b| a != 0.0 || b != 0.0,
                };
                let r = ndarray::Zip::from(&bx)
                    .and(&by)
                    .map_collect(|&a, &b| f(a, b));
                one(Val::Const(Rc::new(Tensor::Bool(r))))
            }
            "Not" => {
                let x = req(0)?;
                let Val::Const(t) = &x.0 else {
                    return one(self.logical(op, &[x], &out0)?);
                };
                one(Val::Const(Rc::new(Tensor::Bool(
                    t.to_f64().mapv(|v| v == 0.0),
                ))))
            }
            "MatMul" => {
                let (x, y) = (req(0)?, req(1)?);
                self.matmul(x, y, false, &out0).map(|v| vec![v])
            }
            "Gemm" => {
                let (mut x, y) = (req(0)?, req(1)?);
                let (alpha, beta) = (a.float("alpha", 1.0)?, a.float("beta", 1.0)?);
                if self.shape(&x.0).len() != 2 || self.shape(&y.0).len() != 2 {
                    return Err(format!(
                        "A and B must be matrices, found {} and {}",
                        fmt_shape(&self.shape(&x.0)),
                        fmt_shape(&self.shape(&y.0))
                    ));
                }
                if a.int("transA", 0)? != 0 {
                    let n = format!("{out0}__a_t");
                    x = (self.apply(Op::Transpose { perm: vec![1, 0] }, &[x], &n)?, n);
                }
                let tb = a.int("transB", 0)? != 0;
                let c = ins.get(2).cloned().flatten();
                let mm_name = if c.is_none() && alpha == 1.0 {
                    out0.clone()
                } else {
                    format!("{out0}__matmul")
                };
                let mut acc = (self.matmul(x, y, tb, &mm_name)?, mm_name);
                if alpha != 1.0 {
                    let n = if c.is_none() {
                        out0.clone()
                    } else {
                        format!("{out0}__alpha")
                    };
                    let k = self.konst(scalar(self.dtype(&acc.0), alpha as f64));
                    acc = (self.apply(Op::Mul, &[acc, k], &n)?, n);
                }
                if let Some(mut c) = c {
                    if beta != 1.0 {
                        let n = format!("{out0}__beta");
                        let k = self.konst(scalar(self.dtype(&c.0), beta as f64));
                        c = (self.apply(Op::Mul, &[c, k], &n)?, n);
                    }
                    acc = (self.apply(Op::Add, &[acc, c], &out0)?, out0.clone());
                }
                one(acc.0)
            }
            "Softmax" => {
                let x = req(0)?;
                let rank = self.shape(&x.0).len();
                let axis = a.int("axis", if opset >= 13 { -1 } else { 1 })?;
                let ax = norm_axis(axis, rank.max(1))?;
                if opset >= 13 || ax + 1 == rank {
                    return one(self.apply(Op::Softmax { axis }, &[x], &out0)?);
                }
                // Before opset 13: coerce to 2-D [prod(..axis), prod(axis..)].
                let shape = self.shape(&x.0);
                let flat = vec![numel(&shape[..ax]) as i64, numel(&shape[ax..]) as i64];
                let n1 = format!("{out0}__2d");
                let x2 = (self.apply(Op::Reshape { shape: flat }, &[x], &n1)?, n1);
                let n2 = format!("{out0}__softmax");
                let s = (self.apply(Op::Softmax { axis: -1 }, &[x2], &n2)?, n2);
                one(self.reshape(s, &shape, &out0)?)
            }
            "LayerNormalization" => {
                let x = req(0)?;
                let axis = a.int("axis", -1)?;
                let epsilon = a.float("epsilon", 1e-5)?;
                let shape = self.shape(&x.0);
                let ax = norm_axis(axis, shape.len())?;
                let tail = &shape[ax..];
                let scale = ins.get(1).cloned().flatten();
                let bias = ins.get(2).cloned().flatten();
                let fits = |v: &Option<(Val, String)>| {
                    v.as_ref().is_none_or(|(v, _)| self.shape(v) == tail)
                };
                let exact = fits(&scale) && fits(&bias) && (bias.is_none() || scale.is_some());
                let ln = Op::LayerNorm { axis, epsilon };
                // The optional Mean and InvStdDev outputs, composed from reductions.
                let mut extra = Vec::new();
                if n.output.iter().skip(1).any(|o| !o.is_empty()) {
                    let axes: Vec<i64> = (ax as i64..shape.len() as i64).collect();
                    let (mean_name, inv_name) = (
                        n.output
                            .get(1)
                            .filter(|o| !o.is_empty())
                            .cloned()
                            .unwrap_or(format!("{out0}__mean")),
                        n.output
                            .get(2)
                            .filter(|o| !o.is_empty())
                            .cloned()
                            .unwrap_or(format!("{out0}__invstd")),
                    );
                    let red = Op::ReduceMean {
                        axes: axes.clone(),
                        keepdims: true,
                    };
                    let mean = (
                        self.apply(red.clone(), std::slice::from_ref(&x), &mean_name)?,
                        mean_name,
                    );
                    let dn = format!("{out0}__centered");
                    let d = (self.apply(Op::Sub, &[x.clone(), mean.clone()], &dn)?, dn);
                    let sn = format!("{out0}__sq");
                    let sq = (self.apply(Op::Mul, &[d.clone(), d], &sn)?, sn);
                    let vn = format!("{out0}__var");
                    let var = (self.apply(red, &[sq], &vn)?, vn);
                    let en = format!("{out0}__var_eps");
                    let e = self.konst(scalar(self.dtype(&x.0), epsilon as f64));
                    let ve = (self.apply(Op::Add, &[var, e], &en)?, en);
                    let inv = self.apply(Op::Rsqrt, &[ve], &inv_name)?;
                    extra = vec![mean.0, inv];
                }
                if exact {
                    let mut xs = vec![x];
                    xs.extend(scale);
                    xs.extend(bias);
                    let y = self.apply(ln, &xs, &out0)?;
                    return Ok(std::iter::once(y).chain(extra).collect());
                }
                // Broadcastable (not exactly shaped) scale or bias: normalize, then mul/add.
                let n = format!("{out0}__normalized");
                let mut acc = (self.apply(ln, &[x], &n)?, n);
                if let Some(s) = scale {
                    let n = if bias.is_none() {
                        out0.clone()
                    } else {
                        format!("{out0}__scaled")
                    };
                    acc = (self.apply(Op::Mul, &[acc, s], &n)?, n);
                }
                if let Some(b) = bias {
                    acc = (self.apply(Op::Add, &[acc, b], &out0)?, out0.clone());
                }
                Ok(std::iter::once(acc.0).chain(extra).collect())
            }
            "BatchNormalization" => {
                if a.int("training_mode", 0)? != 0 {
                    return Err("training_mode = 1 is not supported (inference only)".into());
                }
                let xs: Vec<_> = (0..5).map(&req).collect::<R<_>>()?;
                let epsilon = a.float("epsilon", 1e-5)?;
                one(self.apply(Op::BatchNorm { epsilon }, &xs, &out0)?)
            }
            "ReduceSum" | "ReduceMean" | "ReduceMax" => {
                let x = req(0)?;
                let rank = self.shape(&x.0).len();
                let axes = match ins.get(1).cloned().flatten() {
                    Some(v) => Some(self.const_ints(&v, "axes")?),
                    None => a.ints("axes")?,
                };
                let keepdims = a.int("keepdims", 1)? != 0;
                let axes = match axes {
                    Some(v) if !v.is_empty() => v,
                    _ if a.int("noop_with_empty_axes", 0)? != 0 => return one(x.0),
                    _ => (0..rank as i64).collect(),
                };
                if rank == 0 {
                    return one(x.0);
                }
                let o = match op {
                    "ReduceSum" => Op::ReduceSum { axes, keepdims },
                    "ReduceMean" => Op::ReduceMean { axes, keepdims },
                    _ => Op::ReduceMax { axes, keepdims },
                };
                one(self.apply(o, &[x], &out0)?)
            }
            "GlobalMaxPool" => {
                let x = req(0)?;
                let rank = self.shape(&x.0).len();
                if rank < 3 {
                    return Err(format!("input must have rank >= 3, found rank {rank}"));
                }
                let axes = (2..rank as i64).collect();
                one(self.apply(
                    Op::ReduceMax {
                        axes,
                        keepdims: true,
                    },
                    &[x],
                    &out0,
                )?)
            }
            "Transpose" => {
                let x = req(0)?;
                let rank = self.shape(&x.0).len();
                let perm = match a.ints("perm")? {
                    Some(p) => p
                        .iter()
                        .map(|&v| usize_of(v, "perm entry"))
                        .collect::<R<Vec<_>>>()?,
                    None => (0..rank).rev().collect(),
                };
                one(self.apply(Op::Transpose { perm }, &[x], &out0)?)
            }
            "Reshape" => {
                let x = req(0)?;
                let spec = self.const_ints(&req(1)?, "shape")?;
                let from = self.shape(&x.0);
                let allowzero = a.int("allowzero", 0)? != 0;
                let mut shape = Vec::with_capacity(spec.len());
                for (i, &d) in spec.iter().enumerate() {
                    shape.push(if d == 0 && !allowzero {
                        *from.get(i).ok_or_else(|| format!("shape {spec:?}: entry {i} is 0 (copy the input dimension) but the input {} has rank {}", fmt_shape(&from), from.len()))? as i64
                    } else {
                        d
                    });
                }
                one(self.apply(Op::Reshape { shape }, &[x], &out0)?)
            }
            "Flatten" => {
                let x = req(0)?;
                let shape = self.shape(&x.0);
                let axis = a.int("axis", 1)?;
                let ax = if axis == shape.len() as i64 {
                    shape.len()
                } else {
                    norm_axis(axis, shape.len())?
                };
                let to = [numel(&shape[..ax]), numel(&shape[ax..])];
                one(self.reshape(x, &to, &out0)?)
            }
            "Unsqueeze" => {
                let x = req(0)?;
                let axes = if opset >= 13 {
                    self.const_ints(&req(1)?, "axes")?
                } else {
                    a.ints("axes")?.ok_or("attribute 'axes' is required")?
                };
                let shape = self.shape(&x.0);
                let rank = shape.len() + axes.len();
                let mut ax: Vec<usize> =
                    axes.iter().map(|&v| norm_axis(v, rank)).collect::<R<_>>()?;
                ax.sort_unstable();
                if ax.windows(2).any(|w| w[0] == w[1]) {
                    return Err(format!("axes {axes:?} has a repeated axis"));
                }
                let mut to = Vec::with_capacity(rank);
                let mut src = shape.iter();
                for i in 0..rank {
                    if ax.contains(&i) {
                        to.push(1);
                    } else {
                        to.push(*src.next().unwrap_or(&1));
                    }
                }
                one(self.reshape(x, &to, &out0)?)
            }
            "Squeeze" => {
                let x = req(0)?;
                let shape = self.shape(&x.0);
                let axes = if opset >= 13 {
                    match ins.get(1).cloned().flatten() {
                        Some(v) => Some(self.const_ints(&v, "axes")?),
                        None => None,
                    }
                } else {
                    a.ints("axes")?
                };
                let ax: Vec<usize> = match axes {
                    Some(v) => v
                        .iter()
                        .map(|&v| norm_axis(v, shape.len()))
                        .collect::<R<_>>()?,
                    None => (0..shape.len()).filter(|&i| shape[i] == 1).collect(),
                };
                for &i in &ax {
                    if shape[i] != 1 {
                        return Err(format!(
                            "cannot squeeze axis {i} of size {} (input {})",
                            shape[i],
                            fmt_shape(&shape)
                        ));
                    }
                }
                let to: Vec<usize> = (0..shape.len())
                    .filter(|i| !ax.contains(i))
                    .map(|i| shape[i])
                    .collect();
                one(self.reshape(x, &to, &out0)?)
            }
            "Concat" => {
                let xs: Vec<_> = ins.iter().flatten().cloned().collect();
                let axis = a
                    .get("axis")
                    .map(|_| a.int("axis", 0))
                    .transpose()?
                    .ok_or("attribute 'axis' is required")?;
                one(self.apply(Op::Concat { axis }, &xs, &out0)?)
            }
            "Slice" => {
                let x = req(0)?;
                let (starts, ends, axes, steps) = if opset >= 10 {
                    let opt = |k: usize, what: &str| -> R<Option<Vec<i64>>> {
                        match ins.get(k).cloned().flatten() {
                            Some(v) => self.const_ints(&v, what).map(Some),
                            None => Ok(None),
                        }
                    };
                    (
                        self.const_ints(&req(1)?, "starts")?,
                        self.const_ints(&req(2)?, "ends")?,
                        opt(3, "axes")?,
                        opt(4, "steps")?,
                    )
                } else {
                    (
                        a.ints("starts")?.ok_or("attribute 'starts' is required")?,
                        a.ints("ends")?.ok_or("attribute 'ends' is required")?,
                        a.ints("axes")?,
                        None,
                    )
                };
                let shape = self.shape(&x.0);
                let axes = axes.unwrap_or_else(|| (0..starts.len() as i64).collect());
                let steps = steps.unwrap_or_else(|| vec![1; starts.len()]);
                if ends.len() != starts.len()
                    || axes.len() != starts.len()
                    || steps.len() != starts.len()
                {
                    return Err(format!(
                        "starts, ends, axes and steps must have the same length, found {}, {}, {}, {}",
                        starts.len(),
                        ends.len(),
                        axes.len(),
                        steps.len()
                    ));
                }
                let (mut s2, mut e2) = (Vec::new(), Vec::new());
                for i in 0..starts.len() {
                    let ax = norm_axis(axes[i], shape.len())?;
                    let dim = shape[ax] as i64;
                    if steps[i] < 1 {
                        return Err(format!(
                            "steps[{i}] = {} is not supported (expected a step >= 1)",
                            steps[i]
                        ));
                    }
                    let clamp = |v: i64| {
                        if v < 0 {
                            (v.saturating_add(dim)).max(0)
                        } else {
                            v.min(dim)
                        }
                    };
                    let (s, e) = (clamp(starts[i]), clamp(ends[i]));
                    if s >= e {
                        return Err(format!(
                            "slice of axis {ax} (size {dim}) from {} to {} is empty; empty tensors are not supported",
                            starts[i], ends[i]
                        ));
                    }
                    s2.push(s);
                    e2.push(e);
                }
                one(self.apply(
                    Op::Slice {
                        axes,
                        starts: s2,
                        ends: e2,
                        steps,
                    },
                    &[x],
                    &out0,
                )?)
            }
            "Split" => {
                let x = req(0)?;
                let shape = self.shape(&x.0);
                let axis = a.int("axis", 0)?;
                let ax = norm_axis(axis, shape.len())?;
                let dim = shape[ax];
                let count = n.output.len();
                let sizes: Vec<usize> = match (opset >= 13, ins.get(1).cloned().flatten()) {
                    (true, Some(v)) => self
                        .const_ints(&v, "split")?
                        .iter()
                        .map(|&s| usize_of(s, "split size"))
                        .collect::<R<_>>()?,
                    (false, _) if a.get("split").is_some() => a
                        .ints("split")?
                        .unwrap_or_default()
                        .iter()
                        .map(|&s| usize_of(s, "split size"))
                        .collect::<R<_>>()?,
                    _ => {
                        let parts = if opset >= 18 {
                            usize_of(a.int("num_outputs", count as i64)?, "num_outputs")?
                        } else {
                            count
                        };
                        if parts == 0 {
                            return Err("no outputs to split into".into());
                        }
                        let chunk = dim.div_ceil(parts);
                        (0..parts)
                            .map(|i| chunk.min(dim.saturating_sub(i * chunk)))
                            .collect()
                    }
                };
                if sizes.iter().sum::<usize>() != dim || sizes.len() != count || sizes.contains(&0)
                {
                    return Err(format!(
                        "split sizes {sizes:?} must be >= 1, one per output ({count}), and sum to the axis size {dim}"
                    ));
                }
                let mut outs = Vec::new();
                let mut start = 0;
                for (k, s) in sizes.iter().enumerate() {
                    let name = n.output[k].clone();
                    let o = Op::Slice {
                        axes: vec![ax as i64],
                        starts: vec![start as i64],
                        ends: vec![(start + s) as i64],
                        steps: vec![1],
                    };
                    outs.push(self.apply(o, std::slice::from_ref(&x), &name)?);
                    start += s;
                }
                Ok(outs)
            }
            "Gather" => {
                let (x, i) = (req(0)?, req(1)?);
                let axis = a.int("axis", 0)?;
                one(self.apply(Op::Gather { axis }, &[x, i], &out0)?)
            }
            "GatherElements" => {
                let (x, i) = (req(0)?, req(1)?);
                self.gather_elements(x, &i, a.int("axis", 0)?, &out0)
                    .map(|v| vec![v])
            }
            "GatherND" => {
                let (x, i) = (req(0)?, req(1)?);
                self.gather_nd(x, &i, a.int("batch_dims", 0)?, &out0)
                    .map(|v| vec![v])
            }
            "CumSum" => {
                let (x, ax) = (req(0)?, req(1)?);
                let Val::Const(t) = &x.0 else {
                    return Err(
                        "CumSum is supported only on constants (shape and position computations folded at import); its input is a runtime value"
                            .into(),
                    );
                };
                let axes = self.const_ints(&ax, "axis")?;
                let [axis] = axes[..] else {
                    return Err(format!("axis must hold one value, found {}", axes.len()));
                };
                let axis = norm_axis(axis, t.shape().len())?;
                let (exclusive, reverse) = (a.int("exclusive", 0)? != 0, a.int("reverse", 0)? != 0);
                let mut arr = t.to_f64();
                for mut lane in arr.lanes_mut(ndarray::Axis(axis)) {
                    let n = lane.len();
                    let mut acc = 0.0;
                    for j in 0..n {
                        let k = if reverse { n - 1 - j } else { j };
                        let v = lane[k];
                        lane[k] = if exclusive { acc } else { acc + v };
                        acc += v;
                    }
                }
                one(Val::Const(Rc::new(Tensor::from_f64(t.dtype(), arr))))
            }
            "IsNaN" => {
                let x = req(0)?;
                let Val::Const(t) = &x.0 else {
                    return Err(
                        "IsNaN is supported only on constants (the graph IR has no comparison op); its input is a runtime value"
                            .into(),
                    );
                };
                one(Val::Const(Rc::new(Tensor::Bool(
                    t.to_f64().mapv(f64::is_nan),
                ))))
            }
            "Where" => {
                let (c, x, y) = (req(0)?, req(1)?, req(2)?);
                one(self.apply(Op::Where, &[c, x, y], &out0)?)
            }
            "Cast" | "CastLike" => {
                let x = req(0)?;
                let dtype = if op == "Cast" {
                    let to = a.int("to", 0)? as i32;
                    import_dtype(to).ok_or_else(|| {
                        format!("cast to {} ({to}) is not supported", dt::name(to))
                    })?
                } else {
                    self.dtype(&req(1)?.0)
                };
                if self.dtype(&x.0) == dtype {
                    return one(x.0);
                }
                one(self.apply(Op::Cast { dtype }, &[x], &out0)?)
            }
            "Conv" => self.conv(&a, &ins, &out0).map(|v| vec![v]),
            "MaxPool" | "AveragePool" => self.pool(op, &a, req(0)?, &out0).map(|v| vec![v]),
            "GlobalAveragePool" => unary!(Op::GlobalAvgPool),
            "Clip" => {
                let x = req(0)?;
                let d = self.dtype(&x.0);
                let (lo, hi) = if opset >= 11 {
                    (ins.get(1).cloned().flatten(), ins.get(2).cloned().flatten())
                } else {
                    let lo = a.get("min").map(|_| a.float("min", 0.0)).transpose()?;
                    let hi = a.get("max").map(|_| a.float("max", 0.0)).transpose()?;
                    (
                        lo.map(|v| self.konst(scalar(d, v as f64))),
                        hi.map(|v| self.konst(scalar(d, v as f64))),
                    )
                };
                let mut acc = x;
                if let Some(lo) = lo {
                    let nm = if hi.is_none() {
                        out0.clone()
                    } else {
                        format!("{out0}__min")
                    };
                    acc = (self.apply(Op::Max, &[acc, lo], &nm)?, nm);
                }
                if let Some(hi) = hi {
                    acc = (self.apply(Op::Min, &[acc, hi], &out0)?, out0.clone());
                }
                one(acc.0)
            }
            "Trilu" => {
                let x = req(0)?;
                let shape = self.shape(&x.0);
                if shape.len() < 2 {
                    return Err(format!(
                        "input must have rank >= 2, found {}",
                        fmt_shape(&shape)
                    ));
                }
                let k = match ins.get(1).cloned().flatten() {
                    Some(v) => *self.const_ints(&v, "k")?.first().ok_or("k is empty")?,
                    None => 0,
                };
                let upper = a.int("upper", 1)? != 0;
                let (r, c) = (shape[shape.len() - 2], shape[shape.len() - 1]);
                let mask = ArrayD::from_shape_fn(IxDyn(&[r, c]), |ix| {
                    let d = ix[1] as i64 - ix[0] as i64;
                    if upper { d >= k } else { d <= k }
                });
                let m = self.konst(Tensor::Bool(mask));
                let z = self.konst(scalar(self.dtype(&x.0), 0.0));
                one(self.apply(Op::Where, &[m, x, z], &out0)?)
            }
            "LRN" => self.lrn(&a, req(0)?, &out0).map(|v| vec![v]),
            "Expand" => {
                let x = req(0)?;
                let spec = self.const_ints(&req(1)?, "shape")?;
                let spec: Vec<usize> = spec
                    .iter()
                    .map(|&d| usize_of(d, "shape entry"))
                    .collect::<R<_>>()?;
                let from = self.shape(&x.0);
                let to = broadcast_shapes(&from, &spec).ok_or_else(|| {
                    format!("cannot expand {} to {}", fmt_shape(&from), fmt_shape(&spec))
                })?;
                if to == from {
                    return one(x.0);
                }
                check_shape(&to).map_err(|e| e.to_string())?;
                let t = self.konst(Tensor::Bool(ArrayD::from_elem(IxDyn(&to), true)));
                one(self.apply(Op::Where, &[t, x.clone(), x], &out0)?)
            }
            "Shape" => {
                let x = req(0)?;
                let shape = self.shape(&x.0);
                let r = shape.len() as i64;
                let clamp = |v: i64| (if v < 0 { v + r } else { v }).clamp(0, r) as usize;
                let (s, e) = (clamp(a.int("start", 0)?), clamp(a.int("end", r)?));
                if s >= e {
                    return Err("the selected shape range is empty".into());
                }
                one(Val::Const(Rc::new(i64_tensor(
                    shape[s..e].iter().map(|&d| d as i64).collect(),
                ))))
            }
            "Size" => {
                let x = req(0)?;
                let n = numel(&self.shape(&x.0)) as i64;
                one(Val::Const(Rc::new(Tensor::I64(ArrayD::from_elem(
                    IxDyn(&[]),
                    n,
                )))))
            }
            "ConstantOfShape" => {
                let spec = self.const_ints(&req(0)?, "shape")?;
                let shape: Vec<usize> = spec
                    .iter()
                    .map(|&d| usize_of(d, "shape entry"))
                    .collect::<R<_>>()?;
                check_shape(&shape).map_err(|e| format!("shape {}: {e}", fmt_shape(&shape)))?;
                let (dtype, v) = match a.tensor("value")? {
                    Some(t) => {
                        let t = read_tensor(t, self.base_dir).map_err(|e| e.to_string())?;
                        (t.dtype(), t.to_f64().iter().next().copied().unwrap_or(0.0))
                    }
                    None => (DType::F32, 0.0),
                };
                one(Val::Const(Rc::new(Tensor::from_f64(
                    dtype,
                    ArrayD::from_elem(IxDyn(&shape), v),
                ))))
            }
            "Range" => {
                let (s, l, d) = (req(0)?, req(1)?, req(2)?);
                let (Val::Const(s), Val::Const(l), Val::Const(d)) = (&s.0, &l.0, &d.0) else {
                    return Err("Range is supported only on constant start, limit and delta".into());
                };
                let get = |t: &Tensor| t.to_f64().iter().next().copied().unwrap_or(0.0);
                let (s0, l0, d0) = (get(s), get(l), get(d));
                if d0 == 0.0 {
                    return Err("delta is 0".into());
                }
                let count = ((l0 - s0) / d0).ceil().max(0.0);
                if count < 1.0 || count > crate::ir::limits::MAX_TENSOR_ELEMENTS as f64 {
                    return Err(format!(
                        "range({s0}, {l0}, {d0}) has {count} elements (expected 1 to the tensor size limit)"
                    ));
                }
                let v: Vec<f64> = (0..count as usize).map(|i| s0 + i as f64 * d0).collect();
                let arr =
                    ArrayD::from_shape_vec(IxDyn(&[v.len()]), v).map_err(|e| e.to_string())?;
                one(Val::Const(Rc::new(Tensor::from_f64(s.dtype(), arr))))
            }
            _ => Err(format!("op {op} is not supported")),
        }
    }

    /// A constant operand (with a synthetic name used if it becomes a param).
    fn konst(&self, t: Tensor) -> (Val, String) {
        let name = format!("{}__const", self.cur);
        (Val::Const(Rc::new(t)), name)
    }

    fn const_ints(&self, v: &(Val, String), what: &str) -> R<Vec<i64>> {
        match &v.0 {
            Val::Const(t) => match t.dtype() {
                DType::I64 | DType::I32 | DType::I8 => Ok(t.to_i64().iter().copied().collect()),
                d => Err(format!(
                    "{what} ('{}') must be an integer tensor, found {d}",
                    v.1
                )),
            },
            Val::Ir(_) => Err(format!(
                "{what} ('{}') must be a constant once input shapes are known, but it depends on runtime values",
                v.1
            )),
        }
    }

    fn reshape(&mut self, x: (Val, String), to: &[usize], out: &str) -> R<Val> {
        if self.shape(&x.0) == to {
            return Ok(x.0);
        }
        let shape = to.iter().map(|&d| d as i64).collect();
        self.apply(Op::Reshape { shape }, &[x], out)
    }

    fn matmul(&mut self, x: (Val, String), y: (Val, String), tb: bool, out: &str) -> R<Val> {
        let (xs, ys) = (self.shape(&x.0), self.shape(&y.0));
        if xs.is_empty() || ys.is_empty() {
            return Err("MatMul operands must have rank >= 1".into());
        }
        if xs.len() >= 2 && ys.len() >= 2 {
            return self.apply(Op::MatMul { transpose_b: tb }, &[x, y], out);
        }
        // numpy's 1-D rules: promote, multiply, then drop the added axis.
        let x2 = if xs.len() == 1 {
            let n = format!("{out}__a2d");
            (self.reshape(x, &[1, xs[0]], &n)?, n)
        } else {
            x
        };
        let y2 = if ys.len() == 1 {
            let n = format!("{out}__b2d");
            (self.reshape(y, &[ys[0], 1], &n)?, n)
        } else {
            y
        };
        let n = format!("{out}__2d");
        let m = (
            self.apply(Op::MatMul { transpose_b: tb }, &[x2, y2], &n)?,
            n,
        );
        let mut shape = self.shape(&m.0);
        let r = shape.len();
        if ys.len() == 1 {
            shape.remove(r - 1);
        }
        if xs.len() == 1 {
            shape.remove(r - 2);
        }
        self.reshape(m, &shape, out)
    }

    /// Integer division truncating toward zero is not an IR op; it is folded
    /// on constants (shape arithmetic) only.
    fn int_div(&mut self, x: (Val, String), y: (Val, String)) -> R<Val> {
        let (Val::Const(a), Val::Const(b)) = (&x.0, &y.0) else {
            return Err("integer Div on runtime values is not supported (only on constants, as in shape computations)".into());
        };
        let dtype = a.dtype();
        let (a, b) = (a.to_i64(), b.to_i64());
        let shape = broadcast_shapes(a.shape(), b.shape()).ok_or("shapes do not broadcast")?;
        let (Some(ba), Some(bb)) = (a.broadcast(IxDyn(&shape)), b.broadcast(IxDyn(&shape))) else {
            return Err("shapes do not broadcast".into());
        };
        if bb.iter().any(|&v| v == 0) {
            return Err("integer division by zero".into());
        }
        let r = ndarray::Zip::from(&ba)
            .and(&bb)
            .map_collect(|&p, &q| p.wrapping_div(q));
        Ok(Val::Const(Rc::new(Tensor::from_f64(
            dtype,
            r.mapv(|v| v as f64),
        ))))
    }

    fn spatial(
        &self,
        a: &Attrs,
        input: &[usize],
        kernel: [usize; 2],
        out_of: &str,
    ) -> R<([usize; 2], [usize; 4], [usize; 2])> {
        let pair = |name: &str| -> R<[usize; 2]> {
            match a.ints(name)? {
                None => Ok([1, 1]),
                Some(v) if v.len() == 2 => Ok([usize_of(v[0], name)?, usize_of(v[1], name)?]),
                Some(v) => Err(format!(
                    "{name} {v:?}: expected 2 entries ({out_of} is 2-D only)"
                )),
            }
        };
        let strides = pair("strides")?;
        let dilations = pair("dilations")?;
        if strides.contains(&0) || dilations.contains(&0) {
            return Err("strides and dilations must be >= 1".into());
        }
        let auto = a.string("auto_pad")?.unwrap_or_else(|| "NOTSET".into());
        let pads = match auto.as_str() {
            "NOTSET" => match a.ints("pads")? {
                None => [0; 4],
                Some(p) if p.len() == 4 => [
                    usize_of(p[0], "pad")?,
                    usize_of(p[1], "pad")?,
                    usize_of(p[2], "pad")?,
                    usize_of(p[3], "pad")?,
                ],
                Some(p) => return Err(format!("pads {p:?}: expected 4 entries")),
            },
            "VALID" => [0; 4],
            "SAME_UPPER" | "SAME_LOWER" => {
                let mut p = [0; 4];
                for i in 0..2 {
                    let inn = input[2 + i];
                    let out = inn.div_ceil(strides[i]);
                    let eff = (kernel[i] - 1) * dilations[i] + 1;
                    let total = ((out - 1) * strides[i] + eff).saturating_sub(inn);
                    let (small, big) = (total / 2, total - total / 2);
                    if auto == "SAME_UPPER" {
                        p[i] = small;
                        p[2 + i] = big;
                    } else {
                        p[i] = big;
                        p[2 + i] = small;
                    }
                }
                p
            }
            o => {
                return Err(format!(
                    "auto_pad '{o}' is not one of NOTSET, SAME_UPPER, SAME_LOWER, VALID"
                ));
            }
        };
        Ok((strides, pads, dilations))
    }

    fn conv(&mut self, a: &Attrs, ins: &[Option<(Val, String)>], out: &str) -> R<Val> {
        let x = ins
            .first()
            .cloned()
            .flatten()
            .ok_or("input 0 is required")?;
        let w = ins
            .get(1)
            .cloned()
            .flatten()
            .ok_or("input 1 (weights) is required")?;
        let (xs, ws) = (self.shape(&x.0), self.shape(&w.0));
        if xs.len() != 4 || ws.len() != 4 {
            return Err(format!(
                "only 2-D convolutions (rank-4 input and weights) are supported, found input {} and weights {}",
                fmt_shape(&xs),
                fmt_shape(&ws)
            ));
        }
        let (strides, pads, dilations) = self.spatial(a, &xs, [ws[2], ws[3]], "Conv")?;
        let groups = usize_of(a.int("group", 1)?, "group")?;
        let mut inputs = vec![x, w];
        inputs.extend(ins.get(2).cloned().flatten());
        self.apply(
            Op::Conv2d {
                strides,
                pads,
                dilations,
                groups,
            },
            &inputs,
            out,
        )
    }

    fn pool(&mut self, op: &str, a: &Attrs, x: (Val, String), out: &str) -> R<Val> {
        let xs = self.shape(&x.0);
        let k = a
            .ints("kernel_shape")?
            .ok_or("attribute 'kernel_shape' is required")?;
        if xs.len() != 4 || k.len() != 2 {
            return Err(format!(
                "only 2-D pooling (rank-4 input, 2 kernel dims) is supported, found input {} and kernel_shape {k:?}",
                fmt_shape(&xs)
            ));
        }
        let kernel = [
            usize_of(k[0], "kernel size")?,
            usize_of(k[1], "kernel size")?,
        ];
        let (strides, pads, dilations) = self.spatial(a, &xs, kernel, op)?;
        if dilations != [1, 1] {
            return Err(format!(
                "dilations {dilations:?} are not supported for pooling"
            ));
        }
        if a.int("ceil_mode", 0)? != 0 {
            // ceil_mode only matters when the floor division leaves a remainder.
            for i in 0..2 {
                let span = xs[2 + i] + pads[i] + pads[2 + i];
                if span < kernel[i] || (span - kernel[i]) % strides[i] != 0 {
                    return Err(
                        "ceil_mode = 1 is not supported when it changes the output size".into(),
                    );
                }
            }
        }
        let o = if op == "MaxPool" {
            Op::MaxPool2d {
                kernel,
                strides,
                pads,
            }
        } else {
            Op::AvgPool2d {
                kernel,
                strides,
                pads,
                count_include_pad: a.int("count_include_pad", 0)? != 0,
            }
        };
        self.apply(o, &[x], out)
    }

    /// LRN across channels: `x / (bias + alpha/size * sum of squares over the window)^beta`.
    fn lrn(&mut self, a: &Attrs, x: (Val, String), out: &str) -> R<Val> {
        let shape = self.shape(&x.0);
        if shape.len() < 3 {
            return Err(format!(
                "input must have rank >= 3, found {}",
                fmt_shape(&shape)
            ));
        }
        let size = usize_of(a.int("size", 0)?, "size")?;
        if size == 0 {
            return Err("attribute 'size' (>= 1) is required".into());
        }
        let (alpha, beta, bias) = (
            a.float("alpha", 1e-4)?,
            a.float("beta", 0.75)?,
            a.float("bias", 1.0)?,
        );
        let d = self.dtype(&x.0);
        let c = shape[1];
        let n = format!("{out}__sq");
        let sq = (self.apply(Op::Mul, &[x.clone(), x.clone()], &n)?, n);
        let (lo, hi) = ((size - 1) / 2, (size - 1).div_ceil(2));
        let mut parts = Vec::new();
        for pad in [lo, hi] {
            let mut s = shape.clone();
            s[1] = pad;
            parts.push((pad > 0).then(|| self.konst(Tensor::zeros(d, &s))));
        }
        let mut cat = Vec::new();
        cat.extend(parts[0].clone());
        cat.push(sq);
        cat.extend(parts[1].clone());
        let n = format!("{out}__padded");
        let padded = if cat.len() == 1 {
            cat.remove(0)
        } else {
            (self.apply(Op::Concat { axis: 1 }, &cat, &n)?, n)
        };
        let mut acc: Option<(Val, String)> = None;
        for k in 0..size {
            let n = format!("{out}__win{k}");
            let s = Op::Slice {
                axes: vec![1],
                starts: vec![k as i64],
                ends: vec![(k + c) as i64],
                steps: vec![1],
            };
            let sl = (self.apply(s, std::slice::from_ref(&padded), &n)?, n);
            acc = Some(match acc {
                None => sl,
                Some(p) => {
                    let n = format!("{out}__sum{k}");
                    (self.apply(Op::Add, &[p, sl], &n)?, n)
                }
            });
        }
        let sum = acc.ok_or("empty window")?;
        let n = format!("{out}__scaled");
        let k1 = self.konst(scalar(d, (alpha / size as f32) as f64));
        let scaled = (self.apply(Op::Mul, &[sum, k1], &n)?, n);
        let n = format!("{out}__biased");
        let k2 = self.konst(scalar(d, bias as f64));
        let biased = (self.apply(Op::Add, &[scaled, k2], &n)?, n);
        let n = format!("{out}__denom");
        let k3 = self.konst(scalar(d, beta as f64));
        let denom = (self.apply(Op::Pow, &[biased, k3], &n)?, n);
        self.apply(Op::Div, &[x, denom], out)
    }
}

/// A constant index tensor (GatherElements / GatherND indices).
fn const_indices(v: &(Val, String), what: &str) -> R<ArrayD<i64>> {
    match &v.0 {
        Val::Const(t) => match t.dtype() {
            DType::I64 | DType::I32 | DType::I8 => Ok(t.to_i64()),
            d => Err(format!(
                "{what} ('{}') must be an integer tensor, found {d}",
                v.1
            )),
        },
        Val::Ir(_) => Err(format!(
            "{what} ('{}') must be a constant once input shapes are known, but it depends on runtime values",
            v.1
        )),
    }
}

/// Row-major strides of `shape`.
fn strides_of(shape: &[usize]) -> Vec<usize> {
    let mut st = vec![1usize; shape.len()];
    for k in (0..shape.len().saturating_sub(1)).rev() {
        st[k] = st[k + 1] * shape[k + 1];
    }
    st
}

/// An index into an axis of size `n`, negative values counted from the end.
fn wrap_index(i: i64, n: usize, what: &str) -> R<usize> {
    let j = if i < 0 { i + n as i64 } else { i };
    if j < 0 || j >= n as i64 {
        return Err(format!(
            "{what} {i} is out of range for an axis of size {n} (expected {} to {})",
            -(n as i64),
            n as i64 - 1
        ));
    }
    Ok(j as usize)
}

impl Importer<'_> {
    /// Runtime `And`/`Or`/`Not` on bools as `where`: `a and b = where(a, b, false)`,
    /// `a or b = where(a, true, b)`, `not a = where(a, false, true)`.
    fn logical(&mut self, op: &str, xs: &[(Val, String)], out: &str) -> R<Val> {
        for x in xs {
            if self.dtype(&x.0) != DType::Bool {
                return Err(format!(
                    "{op} on runtime values needs bool operands, '{}' is {}",
                    x.1,
                    self.dtype(&x.0)
                ));
            }
        }
        let b = |v: bool| Tensor::Bool(ArrayD::from_elem(IxDyn(&[]), v));
        let args = match (op, xs) {
            ("And", [x, y]) => [x.clone(), y.clone(), self.konst(b(false))],
            ("Or", [x, y]) => [x.clone(), self.konst(b(true)), y.clone()],
            ("Not", [x]) => [x.clone(), self.konst(b(false)), self.konst(b(true))],
            _ => return Err(format!("internal: {op} with {} operands", xs.len())),
        };
        self.apply(Op::Where, &args, out)
    }

    /// `gather` on axis 0 of `x` with its first `lead` axes merged into one, at the
    /// constant flat indices `flat`: the result has shape `flat.shape + x.shape[lead..]`.
    fn gather_flat(
        &mut self,
        x: (Val, String),
        lead: usize,
        flat: ArrayD<i64>,
        out: &str,
    ) -> R<Val> {
        let xs = self.shape(&x.0);
        let mut merged = vec![numel(&xs[..lead])];
        merged.extend_from_slice(&xs[lead..]);
        let n = format!("{out}__flat");
        let data = (self.reshape(x, &merged, &n)?, n);
        let idx = self.konst(Tensor::I64(flat));
        self.apply(Op::Gather { axis: 0 }, &[data, idx], out)
    }

    /// `GatherElements` with constant indices (data constant or not): element `p` of the
    /// result is `x[p with p[axis] = indices[p]]`, one flat `gather`.
    fn gather_elements(
        &mut self,
        x: (Val, String),
        i: &(Val, String),
        axis: i64,
        out: &str,
    ) -> R<Val> {
        let xs = self.shape(&x.0);
        let idx = const_indices(i, "indices")?;
        let r = xs.len();
        if r == 0 || idx.ndim() != r {
            return Err(format!(
                "indices must have the data's rank {r} (>= 1), found shape {}",
                fmt_shape(idx.shape())
            ));
        }
        let axis = norm_axis(axis, r)?;
        if let Some(k) = (0..r).find(|&k| k != axis && idx.shape()[k] > xs[k]) {
            return Err(format!(
                "indices shape {} exceeds data shape {} on axis {k}",
                fmt_shape(idx.shape()),
                fmt_shape(&xs)
            ));
        }
        let st = strides_of(&xs);
        let mut flat = ArrayD::<i64>::zeros(idx.raw_dim());
        for (p, &v) in idx.indexed_iter() {
            let mut f = 0usize;
            for k in 0..r {
                let c = if k == axis {
                    wrap_index(v, xs[k], "index")?
                } else {
                    p[k]
                };
                f += c * st[k];
            }
            flat[&p] = f as i64;
        }
        self.gather_flat(x, r, flat, out)
    }

    /// `GatherND` with constant indices (data constant or not): the last axis of `indices`
    /// (size K) addresses the K data axes after `batch_dims`; one flat `gather`.
    fn gather_nd(
        &mut self,
        x: (Val, String),
        i: &(Val, String),
        batch_dims: i64,
        out: &str,
    ) -> R<Val> {
        let xs = self.shape(&x.0);
        let idx = const_indices(i, "indices")?;
        let is = idx.shape().to_vec();
        let (q, r) = (is.len(), xs.len());
        let b = usize_of(batch_dims, "batch_dims")?;
        if q == 0 || b >= q.min(r) {
            return Err(format!(
                "batch_dims {b} must be less than the ranks of data ({r}) and indices ({q})"
            ));
        }
        let k = is[q - 1];
        if b + k > r || is[..b] != xs[..b] {
            return Err(format!(
                "indices shape {} does not address data shape {} with batch_dims {b}",
                fmt_shape(&is),
                fmt_shape(&xs)
            ));
        }
        let lead = b + k;
        let st = strides_of(&xs[..lead]);
        let pos: Vec<usize> = is[..q - 1].to_vec();
        let rows = idx
            .to_shape((numel(&pos), k))
            .map_err(|e| format!("indices: {e}"))?;
        let pst = strides_of(&pos);
        let mut flat = Vec::with_capacity(numel(&pos));
        for (n, row) in rows.outer_iter().enumerate() {
            // The batch coordinates of position n (row-major over `pos`).
            let mut f = 0usize;
            let mut rem = n;
            for j in 0..b {
                f += (rem / pst[j]) * st[j];
                rem %= pst[j];
            }
            for (kk, &v) in row.iter().enumerate() {
                f += wrap_index(v, xs[b + kk], "index")? * st[b + kk];
            }
            flat.push(f as i64);
        }
        let flat = ArrayD::from_shape_vec(IxDyn(&pos), flat).map_err(|e| e.to_string())?;
        self.gather_flat(x, lead, flat, out)
    }
}

/// Evaluates `op` on constants with the reference executor.
fn fold(op: Op, inputs: &[(Val, String)]) -> R<Tensor> {
    let mut g = Graph::new("fold");
    let mut ids = Vec::with_capacity(inputs.len());
    for (k, (v, _)) in inputs.iter().enumerate() {
        let Val::Const(t) = v else {
            return Err("internal: folding a non-constant".into());
        };
        ids.push(
            g.add_param(format!("c{k}"), (**t).clone())
                .map_err(|e| e.to_string())?,
        );
    }
    let out = g.add_node("fold", op, &ids, "out").map_err(|e| {
        let s = e.to_string();
        // "node 'fold' (index 0, op X): message" -> "X: message"
        match s.split_once("): ") {
            Some((_, m)) => m.to_string(),
            None => s,
        }
    })?;
    g.add_output(out).map_err(|e| e.to_string())?;
    let mut r =
        run_reference(&g, &BTreeMap::new(), RefOptions::default()).map_err(|e| e.to_string())?;
    r.remove("out")
        .ok_or_else(|| "internal: folding produced no output".into())
}
