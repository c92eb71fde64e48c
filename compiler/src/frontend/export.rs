//! Writing a [`Graph`] back as model.json v1 plus a safetensors weights file
//! (`neuronc convert`): every param's data goes to the weights file bit for
//! bit, so loading the written model gives the same graph.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use safetensors::tensor::{Dtype, TensorView};
use serde_json::{Map, Value, json};

use crate::ir::{Graph, Op, Tensor};

/// Why a graph could not be written.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// A param has no data (declared by `init` only).
    #[error("param '{0}' has no data to write")]
    NoData(String),
    /// Writing a file failed.
    #[error("cannot write {}: {message}", file.display())]
    Write {
        /// The file.
        file: PathBuf,
        /// What failed.
        message: String,
    },
}

/// The model.json attributes of `op` (defaults written out explicitly).
pub fn op_attrs(op: &Op) -> Map<String, Value> {
    let v = match op {
        Op::Gelu { approximate } => json!({"approximate": approximate.name()}),
        Op::MatMul { transpose_b } => json!({"transpose_b": transpose_b}),
        Op::Softmax { axis } => json!({"axis": axis}),
        Op::LayerNorm { axis, epsilon } | Op::RmsNorm { axis, epsilon } => {
            json!({"axis": axis, "epsilon": f64::from(*epsilon)})
        }
        Op::BatchNorm { epsilon } => json!({"epsilon": f64::from(*epsilon)}),
        Op::ReduceSum { axes, keepdims }
        | Op::ReduceMean { axes, keepdims }
        | Op::ReduceMax { axes, keepdims } => json!({"axes": axes, "keepdims": keepdims}),
        Op::Transpose { perm } => json!({"perm": perm}),
        Op::Reshape { shape } => json!({"shape": shape}),
        Op::Concat { axis } | Op::Gather { axis } => json!({"axis": axis}),
        Op::Slice {
            axes,
            starts,
            ends,
            steps,
        } => json!({"starts": starts, "ends": ends, "axes": axes, "steps": steps}),
        Op::Cast { dtype } => json!({"dtype": dtype.name()}),
        Op::Conv2d {
            strides,
            pads,
            dilations,
            groups,
        } => json!({"strides": strides, "pads": pads, "dilations": dilations, "groups": groups}),
        Op::MaxPool2d {
            kernel,
            strides,
            pads,
        } => json!({"kernel": kernel, "strides": strides, "pads": pads}),
        Op::AvgPool2d {
            kernel,
            strides,
            pads,
            count_include_pad,
        } => json!({"kernel": kernel, "strides": strides, "pads": pads,
                    "count_include_pad": count_include_pad}),
        _ => json!({}),
    };
    match v {
        Value::Object(m) => m,
        _ => Map::new(),
    }
}

fn le_bytes(t: &Tensor) -> (Dtype, Vec<u8>) {
    let mut out = Vec::with_capacity(t.num_elements() * t.dtype().size_bytes());
    let dt = match t {
        Tensor::F32(a) => {
            a.iter().for_each(|x| out.extend(x.to_le_bytes()));
            Dtype::F32
        }
        Tensor::F64(a) => {
            a.iter().for_each(|x| out.extend((*x as f32).to_le_bytes()));
            Dtype::F32
        }
        Tensor::Bf16(a) => {
            a.iter().for_each(|x| out.extend(x.to_le_bytes()));
            Dtype::BF16
        }
        Tensor::F16(a) => {
            a.iter().for_each(|x| out.extend(x.to_le_bytes()));
            Dtype::F16
        }
        Tensor::I8(a) => {
            a.iter().for_each(|x| out.extend(x.to_le_bytes()));
            Dtype::I8
        }
        Tensor::I32(a) => {
            a.iter().for_each(|x| out.extend(x.to_le_bytes()));
            Dtype::I32
        }
        Tensor::I64(a) => {
            a.iter().for_each(|x| out.extend(x.to_le_bytes()));
            Dtype::I64
        }
        Tensor::Bool(a) => {
            a.iter().for_each(|&x| out.push(u8::from(x)));
            Dtype::BOOL
        }
    };
    (dt, out)
}

/// Writes `graph` as `json_path` plus `<stem>.safetensors` beside it holding
/// every param's data.
pub fn write_model_json(graph: &Graph, json_path: &Path) -> Result<(), ExportError> {
    let stem = json_path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "model".into());
    let weights_name = format!("{stem}.safetensors");
    let weights_path = json_path.with_file_name(&weights_name);
    let mut blobs = BTreeMap::new();
    let mut params = Vec::new();
    for &id in &graph.params {
        let v = graph.value(id);
        let t = v
            .data
            .as_ref()
            .ok_or_else(|| ExportError::NoData(v.name.clone()))?;
        params.push(json!({"name": v.name, "shape": v.shape, "dtype": v.dtype.name()}));
        blobs.insert(v.name.clone(), (le_bytes(t), v.shape.clone()));
    }
    let write_err = |file: &Path, message: String| ExportError::Write {
        file: file.to_path_buf(),
        message,
    };
    let mut views = Vec::with_capacity(blobs.len());
    for (name, ((dt, bytes), shape)) in &blobs {
        let view = TensorView::new(*dt, shape.clone(), bytes)
            .map_err(|e| write_err(&weights_path, format!("tensor '{name}': {e}")))?;
        views.push((name.clone(), view));
    }
    if !views.is_empty() {
        safetensors::tensor::serialize_to_file(views, None, &weights_path)
            .map_err(|e| write_err(&weights_path, e.to_string()))?;
    }
    let inputs: Vec<Value> = graph
        .inputs
        .iter()
        .map(|&id| {
            let v = graph.value(id);
            json!({"name": v.name, "shape": v.shape, "dtype": v.dtype.name()})
        })
        .collect();
    let nodes: Vec<Value> = graph
        .nodes
        .iter()
        .map(|n| {
            let mut m = Map::new();
            m.insert("name".into(), json!(n.name));
            m.insert("op".into(), json!(n.op.name()));
            let ins: Vec<&str> = n
                .inputs
                .iter()
                .map(|&i| graph.value(i).name.as_str())
                .collect();
            m.insert("inputs".into(), json!(ins));
            let outs: Vec<&str> = n
                .outputs
                .iter()
                .map(|&i| graph.value(i).name.as_str())
                .collect();
            m.insert("outputs".into(), json!(outs));
            let attrs = op_attrs(&n.op);
            if !attrs.is_empty() {
                m.insert("attrs".into(), Value::Object(attrs));
            }
            Value::Object(m)
        })
        .collect();
    let outputs: Vec<&str> = graph
        .outputs
        .iter()
        .map(|&i| graph.value(i).name.as_str())
        .collect();
    // One input, param or node per line.
    let line = |v: &Value| v.to_string();
    let list = |key: &str, xs: &[Value]| {
        let body: Vec<String> = xs.iter().map(|x| format!("    {}", line(x))).collect();
        format!("  \"{key}\": [\n{}\n  ]", body.join(",\n"))
    };
    let mut parts = vec![
        format!("  \"name\": {}", json!(graph.name)),
        format!("  \"seed\": {}", graph.seed),
        list("inputs", &inputs),
        list("params", &params),
    ];
    if !blobs.is_empty() {
        parts.push(format!("  \"weights\": {}", json!(weights_name)));
    }
    parts.push(list("nodes", &nodes));
    parts.push(format!("  \"outputs\": {}", json!(outputs)));
    let text = format!("{{\n{}\n}}\n", parts.join(",\n"));
    std::fs::write(json_path, text).map_err(|e| write_err(json_path, e.to_string()))
}
