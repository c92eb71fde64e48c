//! Writes a model.json document node by node, inferring every value's shape with the IR's
//! own rules ([`Op::infer`]) as it goes, and counting parameters and multiply-accumulates.

use std::collections::HashMap;

use serde_json::{Map, Value as Json, json};

use super::ZooError;
use crate::frontend::parse_op;
use crate::ir::limits::check_shape;
use crate::ir::{DType, Op, TensorType, fmt_shape};

/// How a param is filled: a seeded `init` (docs/model-format.md) or a small literal.
#[derive(Clone, Debug)]
pub enum Init {
    /// `"zeros"`.
    Zeros,
    /// `"ones"`.
    Ones,
    /// `{"normal": {"std": s}}`.
    Normal(f64),
    /// A literal vector (only for small tables: positions, frequencies).
    Values(Vec<f64>),
}

/// A model being built: the JSON document plus the facts the zoo reports.
pub struct Builder {
    name: String,
    inputs: Vec<Json>,
    params: Vec<Json>,
    nodes: Vec<Json>,
    outputs: Vec<String>,
    types: HashMap<String, TensorType>,
    /// Trainable parameters (buffers such as positions and masks are not counted).
    pub param_count: u64,
    /// Multiply-accumulates of matmul and conv2d nodes.
    pub macs: u64,
}

impl Builder {
    /// An empty model called `name`.
    pub fn new(name: &str) -> Builder {
        Builder {
            name: name.to_string(),
            inputs: Vec::new(),
            params: Vec::new(),
            nodes: Vec::new(),
            outputs: Vec::new(),
            types: HashMap::new(),
            param_count: 0,
            macs: 0,
        }
    }

    fn declare(&mut self, name: &str, shape: &[usize], dtype: DType) -> Result<(), ZooError> {
        check_shape(shape).map_err(|e| ZooError::Size {
            model: self.name.clone(),
            message: format!("'{name}' {}: {e}", fmt_shape(shape)),
        })?;
        if self
            .types
            .insert(name.to_string(), TensorType::new(shape, dtype))
            .is_some()
        {
            return Err(ZooError::Internal(format!("value '{name}' defined twice")));
        }
        Ok(())
    }

    /// The shape of a defined value.
    pub fn shape(&self, v: &str) -> Vec<usize> {
        self.types
            .get(v)
            .map(|t| t.shape.clone())
            .unwrap_or_default()
    }

    /// Declares a graph input.
    pub fn input(&mut self, name: &str, shape: &[usize], dtype: DType) -> Result<String, ZooError> {
        self.declare(name, shape, dtype)?;
        self.inputs
            .push(json!({"name": name, "shape": shape, "dtype": dtype.name()}));
        Ok(name.to_string())
    }

    /// Declares a trainable f32 param (counted in [`Builder::param_count`]).
    pub fn param(&mut self, name: &str, shape: &[usize], init: Init) -> Result<String, ZooError> {
        self.param_count += shape.iter().product::<usize>() as u64;
        self.buffer(name, shape, init)
    }

    /// Declares an f32 constant that is not a trained weight (not counted).
    pub fn buffer(&mut self, name: &str, shape: &[usize], init: Init) -> Result<String, ZooError> {
        self.declare(name, shape, DType::F32)?;
        let mut p = Map::new();
        p.insert("name".into(), json!(name));
        p.insert("shape".into(), json!(shape));
        match init {
            Init::Zeros => p.insert("init".into(), json!("zeros")),
            Init::Ones => p.insert("init".into(), json!("ones")),
            Init::Normal(std) => p.insert("init".into(), json!({"normal": {"std": std}})),
            Init::Values(v) => {
                if v.len() != shape.iter().product::<usize>() {
                    return Err(ZooError::Internal(format!(
                        "literal '{name}' has {} values for shape {}",
                        v.len(),
                        fmt_shape(shape)
                    )));
                }
                p.insert("value".into(), nested(&v, shape))
            }
        };
        self.params.push(Json::Object(p));
        Ok(name.to_string())
    }

    /// A scalar f32 constant.
    pub fn scalar(&mut self, name: &str, v: f64) -> Result<String, ZooError> {
        self.buffer(name, &[], Init::Values(vec![v]))
    }

    /// Appends node `name` applying `op` (model.json spelling, with `attrs`) to `inputs`;
    /// its output value is also called `name`.
    pub fn node(
        &mut self,
        name: &str,
        op: &str,
        inputs: &[&str],
        attrs: Json,
    ) -> Result<String, ZooError> {
        let attrs = match attrs {
            Json::Object(m) => m,
            _ => Map::new(),
        };
        let index = self.nodes.len();
        let parsed =
            parse_op(op, &attrs, name, index).map_err(|e| ZooError::Internal(e.to_string()))?;
        let mut types = Vec::with_capacity(inputs.len());
        for i in inputs {
            let t = self.types.get(*i).ok_or_else(|| {
                ZooError::Internal(format!("node '{name}': input '{i}' is not defined"))
            })?;
            types.push(t.clone());
        }
        let out = parsed
            .infer(&types)
            .map_err(|e| ZooError::Internal(format!("node '{name}': {}", e.message)))?
            .remove(0);
        self.macs += match &parsed {
            Op::MatMul { .. } => {
                let k = types[0].shape.last().copied().unwrap_or(1) as u64;
                k * out.shape.iter().product::<usize>() as u64
            }
            // `w` is `[O, C / groups, KH, KW]`: each output sums C/groups x KH x KW products.
            Op::Conv2d { .. } => {
                let w = &types[1].shape;
                (w[1] * w[2] * w[3]) as u64 * out.shape.iter().product::<usize>() as u64
            }
            _ => 0,
        };
        self.declare(name, &out.shape, out.dtype)?;
        let mut n = Map::new();
        n.insert("name".into(), json!(name));
        n.insert("op".into(), json!(op));
        n.insert("inputs".into(), json!(inputs));
        n.insert("outputs".into(), json!([name]));
        if !attrs.is_empty() {
            n.insert("attrs".into(), Json::Object(attrs));
        }
        self.nodes.push(Json::Object(n));
        Ok(name.to_string())
    }

    /// A node without attributes.
    pub fn op(&mut self, name: &str, op: &str, inputs: &[&str]) -> Result<String, ZooError> {
        self.node(name, op, inputs, Json::Null)
    }

    /// `x @ w + b` with `w: [in, out]` (normal(0.02)) and optional zero bias.
    pub fn linear(
        &mut self,
        name: &str,
        x: &str,
        din: usize,
        dout: usize,
        bias: bool,
    ) -> Result<String, ZooError> {
        let w = self.param(&format!("{name}.weight"), &[din, dout], Init::Normal(0.02))?;
        let mm = self.op(&format!("{name}.mm"), "matmul", &[x, &w])?;
        if !bias {
            return Ok(mm);
        }
        let b = self.param(&format!("{name}.bias"), &[dout], Init::Zeros)?;
        self.op(name, "add", &[&mm, &b])
    }

    /// Layer norm over the last axis with gamma and beta.
    pub fn layer_norm(
        &mut self,
        name: &str,
        x: &str,
        dim: usize,
        eps: f64,
    ) -> Result<String, ZooError> {
        let g = self.param(&format!("{name}.gamma"), &[dim], Init::Ones)?;
        let b = self.param(&format!("{name}.beta"), &[dim], Init::Zeros)?;
        self.node(
            name,
            "layer_norm",
            &[x, &g, &b],
            json!({"axis": -1, "epsilon": eps}),
        )
    }

    /// RMS norm over the last axis with gamma.
    pub fn rms_norm(
        &mut self,
        name: &str,
        x: &str,
        dim: usize,
        eps: f64,
    ) -> Result<String, ZooError> {
        let g = self.param(&format!("{name}.gamma"), &[dim], Init::Ones)?;
        self.node(
            name,
            "rms_norm",
            &[x, &g],
            json!({"axis": -1, "epsilon": eps}),
        )
    }

    /// Reshape.
    pub fn reshape(&mut self, name: &str, x: &str, shape: &[usize]) -> Result<String, ZooError> {
        self.node(name, "reshape", &[x], json!({"shape": shape}))
    }

    /// Transpose.
    pub fn transpose(&mut self, name: &str, x: &str, perm: &[usize]) -> Result<String, ZooError> {
        self.node(name, "transpose", &[x], json!({"perm": perm}))
    }

    /// Marks a graph output.
    pub fn output(&mut self, v: &str) {
        self.outputs.push(v.to_string());
    }

    /// The finished model.json document.
    pub fn finish(self, seed: u64) -> Json {
        json!({
            "name": self.name,
            "seed": seed,
            "inputs": self.inputs,
            "params": self.params,
            "nodes": self.nodes,
            "outputs": self.outputs,
        })
    }
}

/// A row-major literal as nested JSON lists matching `shape`.
fn nested(v: &[f64], shape: &[usize]) -> Json {
    match shape {
        [] => json!(v.first().copied().unwrap_or(0.0)),
        [_] => json!(v),
        [_, rest @ ..] => {
            let inner: usize = rest.iter().product();
            Json::Array(v.chunks(inner.max(1)).map(|c| nested(c, rest)).collect())
        }
    }
}
