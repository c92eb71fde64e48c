//! model.json v1: parsing, checking, and conversion into a [`Graph`].

use std::collections::{HashMap, HashSet};
use std::path::Path;

use super::ModelError;
use super::attrs::parse_op;
use super::init::{InitSpec, init_param};
use super::literal::parse_literal;
use super::raw::{RawInit, RawModel, RawNode};
use super::weights::WeightsFile;
use crate::ir::limits::check_shape;
use crate::ir::{DType, Graph, GraphError, Op, ParamData, Site, ValueId, fmt_shape};

/// Reads and checks the model at `path`; a `weights` file is resolved
/// relative to the model file's directory.
pub fn load_model(path: &Path) -> Result<Graph, ModelError> {
    let text = std::fs::read_to_string(path).map_err(|cause| ModelError::Io {
        file: path.to_path_buf(),
        cause,
    })?;
    let base = path.parent().unwrap_or(Path::new("."));
    parse_model(&text, base)
}

/// The files reading the model at `path` reads: the model itself and its `weights` file,
/// if it names one (the tools refuse to write an output over any of them). Best effort: a
/// model that does not parse yields just `path`.
pub fn model_files(path: &Path) -> Vec<std::path::PathBuf> {
    let mut files = vec![path.to_path_buf()];
    let weights = std::fs::read_to_string(path)
        .ok()
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
        .and_then(|v| {
            v.get("weights")
                .and_then(|w| w.as_str())
                .map(str::to_string)
        });
    if let Some(w) = weights {
        files.push(path.parent().unwrap_or(Path::new(".")).join(w));
    }
    files
}

/// Parses and checks model.json text; `base_dir` resolves the `weights` path.
pub fn parse_model(json: &str, base_dir: &Path) -> Result<Graph, ModelError> {
    // Syntax first, so malformed JSON is reported with its position alone.
    serde_json::from_str::<serde::de::IgnoredAny>(json).map_err(|e| ModelError::Syntax {
        line: e.line(),
        column: e.column(),
        message: strip_position(&e),
    })?;
    let mut de = serde_json::Deserializer::from_str(json);
    let raw: RawModel = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        ModelError::Field {
            path: if path == "." {
                "(top level)".into()
            } else {
                path
            },
            message: strip_position(&inner),
            line: inner.line(),
            column: inner.column(),
        }
    })?;
    Converter::new(base_dir).convert(raw)
}

/// serde_json's message without its trailing " at line L column C".
fn strip_position(e: &serde_json::Error) -> String {
    let s = e.to_string();
    match s.rfind(" at line ") {
        Some(i) => s[..i].to_string(),
        None => s,
    }
}

fn parse_dtype(d: &Option<String>, path: String) -> Result<DType, ModelError> {
    match d {
        None => Ok(DType::F32),
        Some(s) => s
            .parse()
            .map_err(|e| ModelError::invalid(path, format!("{e}"))),
    }
}

fn check_name(name: &str, path: String) -> Result<(), ModelError> {
    if name.is_empty() {
        Err(ModelError::invalid(path, "name is empty"))
    } else {
        Ok(())
    }
}

struct Converter<'a> {
    base_dir: &'a Path,
    graph: Graph,
    /// Value name -> (id, JSON path of its definition).
    defined: HashMap<String, (ValueId, String)>,
}

impl<'a> Converter<'a> {
    fn new(base_dir: &'a Path) -> Self {
        Converter {
            base_dir,
            graph: Graph::default(),
            defined: HashMap::new(),
        }
    }

    fn define(&mut self, name: &str, path: &str) -> Result<(), ModelError> {
        if let Some((_, first)) = self.defined.get(name) {
            return Err(ModelError::invalid(
                path,
                format!("value '{name}' is defined twice (first at {first})"),
            ));
        }
        Ok(())
    }

    fn convert(mut self, raw: RawModel) -> Result<Graph, ModelError> {
        self.graph.name = raw.name.clone().unwrap_or_else(|| "model".to_string());
        self.graph.seed = raw.seed;
        let weights = match &raw.weights {
            None => None,
            Some(w) => {
                let file = self.base_dir.join(w);
                Some(
                    WeightsFile::open(&file).map_err(|message| ModelError::Weights {
                        path: "weights".into(),
                        file: file.clone(),
                        message,
                    })?,
                )
            }
        };
        for (i, inp) in raw.inputs.iter().enumerate() {
            let path = format!("inputs[{i}]");
            check_name(&inp.name, format!("{path}.name"))?;
            self.define(&inp.name, &format!("{path}.name"))?;
            let dtype = parse_dtype(&inp.dtype, format!("{path}.dtype"))?;
            check_shape(&inp.shape).map_err(|e| {
                ModelError::invalid(
                    format!("{path}.shape"),
                    format!("input '{}' shape {}: {e}", inp.name, fmt_shape(&inp.shape)),
                )
            })?;
            let id = self
                .graph
                .add_input(inp.name.clone(), inp.shape.clone(), dtype)
                .map_err(|e| ModelError::invalid(path.clone(), e.to_string()))?;
            self.defined.insert(inp.name.clone(), (id, path));
        }
        let mut used_weights = HashSet::new();
        for (i, p) in raw.params.iter().enumerate() {
            let path = format!("params[{i}]");
            check_name(&p.name, format!("{path}.name"))?;
            self.define(&p.name, &format!("{path}.name"))?;
            let dtype = parse_dtype(&p.dtype, format!("{path}.dtype"))?;
            // Refuse absurd sizes before reading or generating any data.
            check_shape(&p.shape).map_err(|e| {
                ModelError::invalid(
                    format!("{path}.shape"),
                    format!("param '{}' shape {}: {e}", p.name, fmt_shape(&p.shape)),
                )
            })?;
            let data = self.param_data(&raw, p, i, dtype, weights.as_ref())?;
            if weights.as_ref().is_some_and(|w| w.contains(&p.name)) {
                used_weights.insert(p.name.clone());
            }
            let id = self
                .graph
                .add_param_decl(p.name.clone(), p.shape.clone(), dtype, Some(data))
                .map_err(|e| ModelError::invalid(path.clone(), e.to_string()))?;
            self.defined.insert(p.name.clone(), (id, path));
        }
        if let Some(w) = &weights {
            for name in w.names() {
                if !used_weights.contains(&name) {
                    tracing::warn!(tensor = %name, "weights file tensor is not a declared param; ignored");
                }
            }
        }
        self.nodes(&raw.nodes)?;
        if raw.outputs.is_empty() {
            return Err(ModelError::invalid(
                "outputs",
                "the model lists no outputs, expected at least one",
            ));
        }
        for (k, name) in raw.outputs.iter().enumerate() {
            let path = format!("outputs[{k}]");
            let Some((id, _)) = self.defined.get(name) else {
                return Err(ModelError::invalid(
                    path,
                    format!(
                        "output '{name}' names no value (no input, param or node output is called '{name}')"
                    ),
                ));
            };
            if self.graph.outputs.contains(id) {
                return Err(ModelError::invalid(
                    path,
                    format!("output '{name}' is listed twice"),
                ));
            }
            self.graph.outputs.push(*id);
        }
        self.check_constant_gathers()?;
        debug_assert!(self.graph.verify().is_ok());
        Ok(self.graph)
    }

    fn param_data(
        &self,
        raw: &RawModel,
        p: &super::raw::RawParam,
        i: usize,
        dtype: DType,
        weights: Option<&WeightsFile>,
    ) -> Result<ParamData, ModelError> {
        let path = format!("params[{i}]");
        if let Some(w) = weights
            && w.contains(&p.name)
        {
            return w
                .param(&p.name, &p.shape, dtype)
                .map_err(|message| ModelError::Weights {
                    path,
                    file: w.path().to_path_buf(),
                    message: format!("param '{}': {message}", p.name),
                });
        }
        if let Some(v) = &p.value {
            return parse_literal(v, &p.shape, dtype, &format!("{path}.value"))
                .map(ParamData::from);
        }
        if let Some(init) = p.init {
            let spec = match init {
                RawInit::Zeros => InitSpec::Zeros,
                RawInit::Ones => InitSpec::Ones,
                RawInit::Normal { std, mean } => InitSpec::Normal { mean, std },
                RawInit::Uniform { low, high } => InitSpec::Uniform { low, high },
            };
            return init_param(spec, raw.seed, &p.name, &p.shape, dtype).map_err(|m| {
                ModelError::invalid(format!("{path}.init"), format!("param '{}': {m}", p.name))
            });
        }
        let source = match (&raw.weights, weights) {
            (Some(file), Some(_)) => {
                format!("the weights file '{file}' holds no tensor '{}'", p.name)
            }
            _ => "the model has no weights file".to_string(),
        };
        Err(ModelError::invalid(
            path,
            format!(
                "param '{}' has no value: {source}, and it has no \"value\" or \"init\"",
                p.name
            ),
        ))
    }

    fn node_err(&self, path: String, node: &RawNode, index: usize, message: String) -> ModelError {
        ModelError::Node {
            path,
            node: node.name.clone(),
            index,
            message,
        }
    }

    fn nodes(&mut self, nodes: &[RawNode]) -> Result<(), ModelError> {
        // Where every node output is defined, to explain use-before-definition.
        let mut producer_of: HashMap<&str, usize> = HashMap::new();
        for (i, n) in nodes.iter().enumerate() {
            for o in &n.outputs {
                producer_of.entry(o.as_str()).or_insert(i);
            }
        }
        let mut node_names: HashMap<&str, usize> = HashMap::new();
        for (i, n) in nodes.iter().enumerate() {
            let base = format!("nodes[{i}]");
            if n.name.is_empty() {
                return Err(self.node_err(
                    format!("{base}.name"),
                    n,
                    i,
                    "node name is empty".into(),
                ));
            }
            if let Some(first) = node_names.insert(n.name.as_str(), i) {
                return Err(self.node_err(
                    format!("{base}.name"),
                    n,
                    i,
                    format!(
                        "node name '{}' is used twice (first by node index {first})",
                        n.name
                    ),
                ));
            }
            let op = parse_op(&n.op, &n.attrs, &n.name, i)?;
            if n.outputs.len() != op.num_outputs() {
                return Err(self.node_err(
                    format!("{base}.outputs"),
                    n,
                    i,
                    format!(
                        "{} has {} output, found {} names",
                        n.op,
                        op.num_outputs(),
                        n.outputs.len()
                    ),
                ));
            }
            let mut inputs = Vec::with_capacity(n.inputs.len());
            for (k, name) in n.inputs.iter().enumerate() {
                let path = format!("{base}.inputs[{k}]");
                match self.defined.get(name) {
                    Some((id, _)) => inputs.push(*id),
                    None => {
                        let message = match producer_of.get(name.as_str()) {
                            Some(&j) => match find_cycle(nodes, &producer_of, i) {
                                Some(cycle) => {
                                    format!("value '{name}' is part of a cycle: {cycle}")
                                }
                                None => format!(
                                    "value '{name}' is used before it is defined by node '{}' (index {j}); nodes must be listed so that every value is defined before it is used",
                                    nodes[j].name
                                ),
                            },
                            None => format!(
                                "value '{name}' is not defined (no input, param or node output has this name)"
                            ),
                        };
                        return Err(self.node_err(path, n, i, message));
                    }
                }
            }
            let out_name = &n.outputs[0];
            let out_path = format!("{base}.outputs[0]");
            if out_name.is_empty() {
                return Err(self.node_err(out_path, n, i, "output name is empty".into()));
            }
            if let Some((_, first)) = self.defined.get(out_name) {
                return Err(self.node_err(
                    out_path,
                    n,
                    i,
                    format!("value '{out_name}' is defined twice (first at {first})"),
                ));
            }
            let id = self
                .graph
                .add_node(n.name.clone(), op, &inputs, out_name.clone())
                .map_err(|e| match e {
                    GraphError::Node { site, message, .. } => {
                        let path = match site {
                            Site::Node => base.clone(),
                            Site::Input(k) => format!("{base}.inputs[{k}]"),
                            Site::Attr(a) => format!("{base}.attrs.{a}"),
                        };
                        self.node_err(path, n, i, message)
                    }
                    other => self.node_err(base.clone(), n, i, other.to_string()),
                })?;
            self.defined.insert(out_name.clone(), (id, out_path));
        }
        Ok(())
    }

    /// Gathers whose indices are params: every index must be in range.
    fn check_constant_gathers(&self) -> Result<(), ModelError> {
        let g = &self.graph;
        for (i, node) in g.nodes.iter().enumerate() {
            let Op::Gather { axis } = node.op else {
                continue;
            };
            let data = g.value(node.inputs[0]);
            let Some(idx) = &g.value(node.inputs[1]).data else {
                continue;
            };
            let Some(a) = crate::ir::shape_infer::normalize_axis(axis, data.shape.len()) else {
                continue;
            };
            let dim = data.shape[a] as i64;
            if let Some(bad) = idx.to_i64().iter().find(|&&x| x < -dim || x >= dim) {
                return Err(ModelError::Node {
                    path: format!("nodes[{i}].inputs[1]"),
                    node: node.name.clone(),
                    index: i,
                    message: format!(
                        "gather index {bad} in '{}' is out of range for axis {a} of size {dim} (expected {} to {})",
                        g.value(node.inputs[1]).name,
                        -dim,
                        dim - 1
                    ),
                });
            }
        }
        Ok(())
    }
}

/// A cycle through node `start` in data-flow order, as
/// `'a' (index 1) -> 'b' (index 2) -> 'a' (index 1)` (a feeds b feeds a).
fn find_cycle(
    nodes: &[RawNode],
    producer_of: &HashMap<&str, usize>,
    start: usize,
) -> Option<String> {
    // Depth-first search over "reads a value produced by" edges.
    let mut stack = vec![(start, 0usize)];
    let mut on_path = vec![start];
    let mut visited = HashSet::new();
    while let Some((node, k)) = stack.pop() {
        let Some(input) = nodes[node].inputs.get(k) else {
            on_path.pop();
            continue;
        };
        stack.push((node, k + 1));
        let Some(&p) = producer_of.get(input.as_str()) else {
            continue;
        };
        if p == start {
            let mut names: Vec<String> = on_path
                .iter()
                .rev()
                .map(|&j| format!("'{}' (index {j})", nodes[j].name))
                .collect();
            names.insert(0, format!("'{}' (index {start})", nodes[start].name));
            return Some(names.join(" -> "));
        }
        if visited.insert(p) {
            on_path.push(p);
            stack.push((p, 0));
        }
    }
    None
}
