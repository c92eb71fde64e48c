//! ONNX import speed: a synthetic 300 M-parameter model (24 layers of
//! `MatMul(x, W[4096,3072]) -> Add(bias) -> Relu`, plus a shape subgraph feeding a
//! `Reshape`), built in memory as protobuf bytes and imported with
//! `neuronc::frontend::onnx::parse_onnx` (target: under 2 s). The weights stay in the
//! input buffer: large FLOAT initializers become params sharing `raw_data` slices of it,
//! decoded only when read, so the import copies no weight byte.
//!
//! `NEURON_ONNX_BENCH_PARAMS` sets the approximate parameter count (default 300e6, rounded
//! up to whole layers: 302 M) to run a smaller model on a small machine.
//!
//! Measured on the shared 2-core development machine under load from parallel builds
//! (`cargo bench -p neuron-benches --bench onnx_import`): 0.67 ms for 302 M parameters
//! (1.2 GB of protobuf); 1.50 s before the weights were shared (docs/performance.md).

use std::hint::black_box;
use std::path::Path;

use bytes::Bytes;
use criterion::{Criterion, criterion_group, criterion_main};
use neuronc::frontend::onnx::proto::{
    AttributeProto, Dimension, DimensionValue, GraphProto, ModelProto, NodeProto,
    OperatorSetIdProto, TensorProto, TensorShapeProto, TypeProto, TypeProtoTensor, ValueInfoProto,
    attr_type,
};
use neuronc::frontend::onnx::{OnnxOptions, parse_onnx};
use prost::Message;

fn node(op: &str, name: String, ins: Vec<String>, out: String) -> NodeProto {
    NodeProto {
        input: ins,
        output: vec![out],
        name: Some(name),
        op_type: Some(op.into()),
        ..Default::default()
    }
}

fn value(name: &str, dims: &[i64]) -> ValueInfoProto {
    ValueInfoProto {
        name: Some(name.into()),
        r#type: Some(TypeProto {
            tensor_type: Some(TypeProtoTensor {
                elem_type: Some(1),
                shape: Some(TensorShapeProto {
                    dim: dims
                        .iter()
                        .map(|&d| Dimension {
                            value: Some(DimensionValue::DimValue(d)),
                        })
                        .collect(),
                }),
            }),
        }),
    }
}

fn weight(name: String, dims: Vec<i64>, seed: u32) -> TensorProto {
    let n: i64 = dims.iter().product();
    let raw: Vec<u8> = (0..n as u32)
        .flat_map(|i| ((i.wrapping_mul(2654435761) ^ seed) as f32 * 1e-10).to_le_bytes())
        .collect();
    TensorProto {
        name: Some(name),
        dims,
        data_type: Some(1),
        raw_data: Some(Bytes::from(raw)),
        ..Default::default()
    }
}

/// The serialized model and its parameter count.
fn synthetic_model(target_params: usize) -> (Bytes, usize) {
    let (d, f) = (4096i64, 3072i64);
    let per_layer = (d * f + f + f * d + d) as usize;
    let layers = target_params.div_ceil(per_layer).max(1);
    let mut nodes = Vec::new();
    let mut inits = Vec::new();
    let mut x = "x".to_string();
    for l in 0..layers {
        for (k, (i, o)) in [(d, f), (f, d)].into_iter().enumerate() {
            let w = format!("layer{l}.fc{k}.weight");
            let b = format!("layer{l}.fc{k}.bias");
            inits.push(weight(w.clone(), vec![i, o], l as u32));
            inits.push(weight(b.clone(), vec![o], !(l as u32)));
            let (mm, add, act) = (
                format!("l{l}_mm{k}"),
                format!("l{l}_add{k}"),
                format!("l{l}_relu{k}"),
            );
            nodes.push(node("MatMul", mm.clone(), vec![x.clone(), w], mm.clone()));
            nodes.push(node("Add", add.clone(), vec![mm, b], add.clone()));
            nodes.push(node("Relu", act.clone(), vec![add], act.clone()));
            x = act;
        }
    }
    // The shape subgraph exporters emit: Shape -> Reshape to the same shape.
    nodes.push(node("Shape", "shape".into(), vec![x.clone()], "s".into()));
    nodes.push(node(
        "Reshape",
        "reshape".into(),
        vec![x, "s".into()],
        "y".into(),
    ));
    let params = inits
        .iter()
        .map(|t| t.dims.iter().product::<i64>() as usize)
        .sum();
    let m = ModelProto {
        ir_version: Some(8),
        opset_import: vec![OperatorSetIdProto {
            domain: Some(String::new()),
            version: Some(17),
        }],
        graph: Some(GraphProto {
            node: nodes,
            name: Some("synthetic".into()),
            initializer: inits,
            input: vec![value("x", &[8, d])],
            output: vec![value("y", &[8, d])],
            ..Default::default()
        }),
        ..Default::default()
    };
    let _ = AttributeProto {
        r#type: Some(attr_type::INT),
        ..Default::default()
    };
    (Bytes::from(m.encode_to_vec()), params)
}

fn bench_import(c: &mut Criterion) {
    let target = std::env::var("NEURON_ONNX_BENCH_PARAMS")
        .ok()
        .and_then(|s| s.parse::<f64>().ok())
        .unwrap_or(300e6) as usize;
    let (bytes, params) = synthetic_model(target);
    eprintln!(
        "onnx_import: {params} parameters, {} MB of protobuf",
        bytes.len() / 1_000_000
    );
    let mut g = c.benchmark_group("onnx_import");
    g.sample_size(10);
    g.bench_function("synthetic_300m", |b| {
        b.iter(|| {
            let graph = parse_onnx(
                bytes.clone(),
                Path::new("."),
                &OnnxOptions::default(),
                "synthetic",
            )
            .unwrap_or_else(|e| panic!("import failed: {e}"));
            black_box(graph.params.len())
        })
    });
    g.finish();
}

criterion_group!(benches, bench_import);
criterion_main!(benches);
