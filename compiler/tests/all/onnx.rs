//! The ONNX importer: the golden fixtures imported straight from their `.onnx` files
//! (the models onnxruntime produced the expected outputs from), compiled and simulated;
//! `neuronc convert` round trips; opset-specific semantics, shape-subgraph folding,
//! external data; and every class of bad input giving a clear error.

#![allow(clippy::unwrap_used)] // Tests may unwrap: a panic is a test failure.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use neuronc::frontend::onnx::proto::{
    AttributeProto, Dimension, DimensionValue, GraphProto, ModelProto, NodeProto,
    OperatorSetIdProto, StringStringEntryProto, TensorProto, TensorShapeProto, TypeProto,
    TypeProtoTensor, ValueInfoProto, attr_type,
};
use neuronc::frontend::onnx::{OnnxError, OnnxOptions, load_onnx, parse_onnx};
use neuronc::frontend::{load_model, write_model_json};
use neuronc::ir::{DType, Tensor};
use neuronc::npy::{read_npy, sanitize_file_name};
use neuronc::reference::{RefOptions, run_reference};
use prost::Message;

use super::backend_harness::{Precision, compile_and_check_on, try_simulate};

fn fixture(case: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(case)
}

fn fixture_inputs(case: &str, g: &neuronc::ir::Graph) -> BTreeMap<String, Tensor> {
    g.inputs
        .iter()
        .map(|&id| {
            let name = g.value(id).name.clone();
            let f = fixture(case)
                .join("inputs")
                .join(format!("{}.npy", sanitize_file_name(&name)));
            (name, read_npy(&f).unwrap())
        })
        .collect()
}

fn expected(case: &str, name: &str) -> Tensor {
    read_npy(
        &fixture(case)
            .join("expected")
            .join(format!("{}.npy", sanitize_file_name(name))),
    )
    .unwrap()
}

/// Max |got - expected| relative to max |expected|, as `goldens.rs` requires (<= 1e-5).
fn assert_golden(case: &str, name: &str, got: &Tensor) {
    let want = expected(case, name);
    let diff = got.max_abs_diff(&want).unwrap();
    let rel = diff / want.max_abs();
    assert!(
        rel <= 1e-5,
        "{case}/{name}: relative error {rel:e} above 1e-5"
    );
}

fn reference_case(case: &str) {
    let g = load_onnx(&fixture(case).join("model.onnx"), &OnnxOptions::default())
        .unwrap_or_else(|e| panic!("{case}: {e}"));
    let inputs = fixture_inputs(case, &g);
    for f64 in [false, true] {
        let outs = run_reference(&g, &inputs, RefOptions { f64 }).unwrap();
        assert_eq!(outs.len(), g.outputs.len());
        for (name, got) in &outs {
            assert_golden(case, name, got);
        }
    }
}

#[test]
fn golden_fixtures_import_from_onnx_and_match_onnxruntime() {
    for case in [
        "bert_encoder",
        "gpt2_block",
        "resnet_block",
        "conv_pool",
        "misc_ops",
    ] {
        reference_case(case);
    }
}

/// The golden models compile straight from .onnx and the simulator matches
/// onnxruntime's outputs (and the reference, at the fp32 tolerance).
#[test]
fn golden_onnx_models_compile_and_simulate_matching_onnxruntime() {
    for case in [
        "bert_encoder",
        "gpt2_block",
        "resnet_block",
        "conv_pool",
        "misc_ops",
    ] {
        let g = load_onnx(&fixture(case).join("model.onnx"), &OnnxOptions::default()).unwrap();
        let inputs = fixture_inputs(case, &g);
        let (_, outs) =
            compile_and_check_on(&g, Precision::Fp32.options(), Precision::Fp32, &inputs);
        for (name, got) in outs {
            let want = expected(case, &name);
            let got = Tensor::F32(
                ndarray::ArrayD::from_shape_vec(
                    want.shape(),
                    got.iter().map(|&x| x as f32).collect(),
                )
                .unwrap(),
            );
            assert_golden(case, &name, &got);
        }
    }
}

/// `neuronc convert`: the written model.json loads into the same graph, and runs give
/// bit-identical outputs.
#[test]
fn convert_round_trips_to_identical_graph_and_bits() {
    let dir = tempfile::tempdir().unwrap();
    for case in ["bert_encoder", "gpt2_block", "resnet_block", "misc_ops"] {
        let g = load_onnx(&fixture(case).join("model.onnx"), &OnnxOptions::default()).unwrap();
        let json = dir.path().join(format!("{case}.json"));
        write_model_json(&g, &json).unwrap();
        assert!(dir.path().join(format!("{case}.safetensors")).exists());
        let back = load_model(&json).unwrap();
        assert_eq!(g, back, "{case}: graphs differ");
        let inputs = fixture_inputs(case, &g);
        let a = run_reference(&g, &inputs, RefOptions::default()).unwrap();
        let b = run_reference(&back, &inputs, RefOptions::default()).unwrap();
        assert_eq!(a, b, "{case}: outputs differ");
    }
}

// ---- Building small ONNX models in memory ----

fn attr_i(name: &str, v: i64) -> AttributeProto {
    AttributeProto {
        name: Some(name.into()),
        r#type: Some(attr_type::INT),
        i: Some(v),
        ..Default::default()
    }
}

fn attr_f(name: &str, v: f32) -> AttributeProto {
    AttributeProto {
        name: Some(name.into()),
        r#type: Some(attr_type::FLOAT),
        f: Some(v),
        ..Default::default()
    }
}

fn attr_ints(name: &str, v: &[i64]) -> AttributeProto {
    AttributeProto {
        name: Some(name.into()),
        r#type: Some(attr_type::INTS),
        ints: v.to_vec(),
        ..Default::default()
    }
}

fn node(
    op: &str,
    name: &str,
    ins: &[&str],
    outs: &[&str],
    attrs: Vec<AttributeProto>,
) -> NodeProto {
    NodeProto {
        input: ins.iter().map(|s| s.to_string()).collect(),
        output: outs.iter().map(|s| s.to_string()).collect(),
        name: Some(name.into()),
        op_type: Some(op.into()),
        domain: None,
        attribute: attrs,
    }
}

fn dim(d: &str) -> Dimension {
    Dimension {
        value: Some(match d.parse::<i64>() {
            Ok(v) => DimensionValue::DimValue(v),
            Err(_) => DimensionValue::DimParam(d.into()),
        }),
    }
}

fn vi(name: &str, elem: i32, dims: &[&str]) -> ValueInfoProto {
    ValueInfoProto {
        name: Some(name.into()),
        r#type: Some(TypeProto {
            tensor_type: Some(TypeProtoTensor {
                elem_type: Some(elem),
                shape: Some(TensorShapeProto {
                    dim: dims.iter().map(|d| dim(d)).collect(),
                }),
            }),
        }),
    }
}

fn f32_init(name: &str, dims: &[i64], v: &[f32]) -> TensorProto {
    TensorProto {
        name: Some(name.into()),
        dims: dims.to_vec(),
        data_type: Some(1),
        raw_data: Some(Bytes::from(
            v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>(),
        )),
        ..Default::default()
    }
}

fn i64_init(name: &str, v: &[i64]) -> TensorProto {
    TensorProto {
        name: Some(name.into()),
        dims: vec![v.len() as i64],
        data_type: Some(7),
        int64_data: v.to_vec(),
        ..Default::default()
    }
}

fn model(
    opset: i64,
    nodes: Vec<NodeProto>,
    inputs: Vec<ValueInfoProto>,
    outputs: &[&str],
    inits: Vec<TensorProto>,
) -> ModelProto {
    ModelProto {
        ir_version: Some(8),
        opset_import: vec![OperatorSetIdProto {
            domain: Some(String::new()),
            version: Some(opset),
        }],
        graph: Some(GraphProto {
            node: nodes,
            name: Some("t".into()),
            initializer: inits,
            input: inputs,
            output: outputs.iter().map(|o| vi(o, 1, &[])).collect(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn import(m: &ModelProto, opts: &OnnxOptions) -> Result<neuronc::ir::Graph, OnnxError> {
    parse_onnx(
        Bytes::from(m.encode_to_vec()),
        Path::new("."),
        opts,
        "test.onnx",
    )
}

fn run1(g: &neuronc::ir::Graph, inputs: &[(&str, Tensor)]) -> BTreeMap<String, Tensor> {
    let inputs = inputs
        .iter()
        .map(|(n, t)| (n.to_string(), t.clone()))
        .collect();
    run_reference(g, &inputs, RefOptions::default()).unwrap()
}

fn f32s(shape: &[usize], v: Vec<f32>) -> Tensor {
    Tensor::F32(ndarray::ArrayD::from_shape_vec(shape, v).unwrap())
}

fn scalar_i64(name: &str, v: i64) -> TensorProto {
    TensorProto {
        name: Some(name.into()),
        data_type: Some(7),
        int64_data: vec![v],
        ..Default::default()
    }
}

/// An HF-style dynamic-shape subgraph: `Shape -> Gather -> Div -> Unsqueeze -> Concat ->
/// Reshape`, `ConstantOfShape`, `Range`, `Equal`, `Expand` and `Where` all fold once
/// `batch` and `sequence` are bound, and an unbound dimension is an error naming each one.
#[test]
fn shape_subgraphs_fold_once_symbolic_dims_are_bound() {
    let nodes = vec![
        node("Shape", "shape", &["x"], &["s"], vec![]),
        node(
            "Gather",
            "g_batch",
            &["s", "zero_s"],
            &["b"],
            vec![attr_i("axis", 0)],
        ),
        node(
            "Gather",
            "g_seq",
            &["s", "one_s"],
            &["q"],
            vec![attr_i("axis", 0)],
        ),
        node("Div", "half", &["q", "two_s"], &["h"], vec![]),
        node("Unsqueeze", "u_b", &["b", "axes0"], &["b1"], vec![]),
        node("Unsqueeze", "u_h", &["h", "axes0"], &["h1"], vec![]),
        node(
            "Concat",
            "cat",
            &["b1", "two", "h1"],
            &["shp"],
            vec![attr_i("axis", 0)],
        ),
        node("Reshape", "reshape", &["x", "shp"], &["r"], vec![]),
        node("ConstantOfShape", "cos", &["shp"], &["zeros"], vec![]),
        node(
            "Range",
            "range",
            &["zero_s", "h", "one_s"],
            &["pos"],
            vec![],
        ),
        node("Equal", "eq", &["pos", "zero_s"], &["is0"], vec![]),
        node("Expand", "expand", &["is0", "shp"], &["mask"], vec![]),
        node("Where", "where", &["mask", "zeros", "r"], &["y"], vec![]),
    ];
    let inits = vec![
        scalar_i64("zero_s", 0),
        scalar_i64("one_s", 1),
        scalar_i64("two_s", 2),
        i64_init("two", &[2]),
        i64_init("axes0", &[0]),
    ];
    let m = model(
        17,
        nodes,
        vec![vi("x", 1, &["batch", "sequence"])],
        &["y"],
        inits,
    );
    let e = import(&m, &OnnxOptions::default()).unwrap_err();
    assert_eq!(
        e.to_string(),
        "unbound symbolic dimension(s): x: [batch, sequence]; bind each input's shape with --input-shape NAME=DxDx..."
    );
    let mut opts = OnnxOptions::default();
    opts.input_shapes.insert("x".into(), vec![4, 6]);
    let g = import(&m, &opts).unwrap();
    let ops: Vec<&str> = g.nodes.iter().map(|n| n.op.name()).collect();
    assert_eq!(
        ops,
        ["reshape", "where"],
        "the shape subgraph must fold away"
    );
    let x: Vec<f32> = (0..24).map(|v| v as f32 + 1.0).collect();
    let out = run1(&g, &[("x", f32s(&[4, 6], x.clone()))]);
    let y = out["y"].to_f32();
    assert_eq!(y.shape(), [4, 2, 3]);
    let want: Vec<f32> = x
        .iter()
        .enumerate()
        .map(|(i, &v)| if i % 3 == 0 { 0.0 } else { v })
        .collect();
    assert_eq!(y.iter().copied().collect::<Vec<_>>(), want);
}

/// Opset-dependent forms: Softmax's 2-D coercion before opset 13, Unsqueeze/ReduceSum
/// axes as attributes before 13, Clip bounds as attributes before 11.
#[test]
fn older_opset_semantics() {
    // Softmax axis=1 on [2,2,2] at opset 11 normalizes over the last 4 elements per row.
    let m = model(
        11,
        vec![node(
            "Softmax",
            "sm",
            &["x"],
            &["y"],
            vec![attr_i("axis", 1)],
        )],
        vec![vi("x", 1, &["2", "2", "2"])],
        &["y"],
        vec![],
    );
    let g = import(&m, &OnnxOptions::default()).unwrap();
    let y = run1(&g, &[("x", f32s(&[2, 2, 2], vec![0.0; 8]))])["y"].to_f32();
    assert!(y.iter().all(|&v| (v - 0.25).abs() < 1e-7), "{y:?}");
    // The same model at opset 13 normalizes over axis 1 alone.
    let mut m13 = m.clone();
    m13.opset_import[0].version = Some(13);
    let g = import(&m13, &OnnxOptions::default()).unwrap();
    let y = run1(&g, &[("x", f32s(&[2, 2, 2], vec![0.0; 8]))])["y"].to_f32();
    assert!(y.iter().all(|&v| (v - 0.5).abs() < 1e-7), "{y:?}");

    let m = model(
        9,
        vec![
            node(
                "Unsqueeze",
                "u",
                &["x"],
                &["u"],
                vec![attr_ints("axes", &[0])],
            ),
            node(
                "ReduceSum",
                "r",
                &["u"],
                &["s"],
                vec![attr_ints("axes", &[2]), attr_i("keepdims", 0)],
            ),
            node(
                "Clip",
                "c",
                &["s"],
                &["y"],
                vec![attr_f("min", 0.0), attr_f("max", 4.0)],
            ),
        ],
        vec![vi("x", 1, &["2", "3"])],
        &["y"],
        vec![],
    );
    let g = import(&m, &OnnxOptions::default()).unwrap();
    let y = run1(
        &g,
        &[("x", f32s(&[2, 3], vec![1.0, 2.0, 3.0, -1.0, -2.0, 0.5]))],
    )["y"]
        .to_f32();
    assert_eq!(y.shape(), [1, 2]);
    assert_eq!(y.iter().copied().collect::<Vec<_>>(), [4.0, 0.0]);
}

/// External initializer data (`location`, `offset`, `length`) is read from beside the
/// model; a missing or short file and an escaping path are clear errors.
#[test]
fn external_data() {
    let dir = tempfile::tempdir().unwrap();
    let w: Vec<f32> = vec![1.5, -2.0, 3.25, 4.0];
    let mut bytes = vec![0xAB; 16];
    bytes.extend(w.iter().flat_map(|x| x.to_le_bytes()));
    std::fs::write(dir.path().join("w.bin"), &bytes).unwrap();
    let ext = |loc: &str, offset: &str| TensorProto {
        name: Some("w".into()),
        dims: vec![2, 2],
        data_type: Some(1),
        data_location: Some(1),
        external_data: [("location", loc), ("offset", offset), ("length", "16")]
            .iter()
            .map(|(k, v)| StringStringEntryProto {
                key: Some(k.to_string()),
                value: Some(v.to_string()),
            })
            .collect(),
        ..Default::default()
    };
    let mk = |t: TensorProto| {
        let m = model(
            17,
            vec![node("MatMul", "mm", &["x", "w"], &["y"], vec![])],
            vec![vi("x", 1, &["1", "2"])],
            &["y"],
            vec![t],
        );
        let path = dir.path().join("m.onnx");
        std::fs::write(&path, m.encode_to_vec()).unwrap();
        load_onnx(&path, &OnnxOptions::default())
    };
    let g = mk(ext("w.bin", "16")).unwrap();
    let y = run1(&g, &[("x", f32s(&[1, 2], vec![1.0, 1.0]))])["y"].to_f32();
    assert_eq!(y.iter().copied().collect::<Vec<_>>(), [4.75, 2.0]);

    let e = mk(ext("nope.bin", "0")).unwrap_err().to_string();
    assert!(
        e.starts_with("cannot read ") && e.contains("nope.bin"),
        "{e}"
    );
    let e = mk(ext("w.bin", "24")).unwrap_err().to_string();
    assert!(
        e.contains("has 32 bytes, the tensor needs bytes 24..40 (truncated file?)"),
        "{e}"
    );
    let e = mk(ext("../w.bin", "0")).unwrap_err().to_string();
    assert!(
        e.contains("must be a relative path inside the model's directory"),
        "{e}"
    );
}

#[test]
fn unsupported_ops_are_listed_all_at_once() {
    let mut custom = node("FancyOp", "f", &["x"], &["a"], vec![]);
    custom.domain = Some("com.example".into());
    let m = model(
        17,
        vec![
            node("NonMaxSuppression", "nms", &["x"], &["n"], vec![]),
            node("Relu", "ok", &["x"], &["r"], vec![]),
            custom,
            node("Einsum", "", &["x"], &["e"], vec![]),
        ],
        vec![vi("x", 1, &["2"])],
        &["r"],
        vec![],
    );
    let e = import(&m, &OnnxOptions::default()).unwrap_err();
    assert_eq!(
        e.to_string(),
        "3 unsupported op(s) in the model: NonMaxSuppression (domain ai.onnx, opset 17) at node 'nms'; \
         FancyOp (domain com.example, opset 0) at node 'f'; Einsum (domain ai.onnx, opset 17) at node '#3'"
    );
}

#[test]
fn malformed_files_cycles_and_undefined_values_are_clear_errors() {
    let bytes = std::fs::read(fixture("gpt2_block").join("model.onnx")).unwrap();
    let half = Bytes::copy_from_slice(&bytes[..bytes.len() / 2]);
    let e = parse_onnx(half, Path::new("."), &OnnxOptions::default(), "gpt2.onnx").unwrap_err();
    assert!(
        e.to_string()
            .starts_with("gpt2.onnx is not a valid ONNX protobuf (malformed or truncated"),
        "{e}"
    );
    let junk = Bytes::from_static(b"\xff\xff\xff\xff garbage");
    assert!(matches!(
        parse_onnx(junk, Path::new("."), &OnnxOptions::default(), "junk").unwrap_err(),
        OnnxError::Decode { .. }
    ));

    let cyc = model(
        17,
        vec![
            node("Relu", "a", &["c"], &["b"], vec![]),
            node("Relu", "b", &["b"], &["c"], vec![]),
            node("Relu", "out", &["x"], &["y"], vec![]),
        ],
        vec![vi("x", 1, &["2"])],
        &["y"],
        vec![],
    );
    assert_eq!(
        import(&cyc, &OnnxOptions::default())
            .unwrap_err()
            .to_string(),
        "the graph has a cycle through nodes 'a' (index 0), 'b' (index 1)"
    );
    let undef = model(
        17,
        vec![node("Add", "add", &["x", "nope"], &["y"], vec![])],
        vec![vi("x", 1, &["2"])],
        &["y"],
        vec![],
    );
    assert_eq!(
        import(&undef, &OnnxOptions::default())
            .unwrap_err()
            .to_string(),
        "node 'add' (index 0) uses value 'nope', which is not defined (no graph input, initializer or node output has this name)"
    );
    // A weight whose raw_data is shorter than its shape: checked before use.
    let short = model(
        17,
        vec![node("Add", "add", &["x", "w"], &["y"], vec![])],
        vec![vi("x", 1, &["2"])],
        &["y"],
        vec![f32_init("w", &[1000000], &[1.0])],
    );
    assert_eq!(
        import(&short, &OnnxOptions::default())
            .unwrap_err()
            .to_string(),
        "tensor 'w': [1000000] FLOAT needs 1000000 elements, raw_data holds 1"
    );
    let huge = model(
        17,
        vec![node("Add", "add", &["x", "w"], &["y"], vec![])],
        vec![vi("x", 1, &["2"])],
        &["y"],
        vec![f32_init("w", &[1 << 20, 1 << 20], &[1.0])],
    );
    let e = import(&huge, &OnnxOptions::default())
        .unwrap_err()
        .to_string();
    assert!(e.contains("more than the limit"), "{e}");
    // A wrong opset.
    let mut old = undef.clone();
    old.opset_import[0].version = Some(7);
    assert_eq!(
        import(&old, &OnnxOptions::default())
            .unwrap_err()
            .to_string(),
        "default-domain opset 7 is not supported (expected 9 to 25)"
    );
}

#[test]
fn input_shape_flag_errors() {
    use neuronc::frontend::onnx::parse_input_shape;
    assert_eq!(
        parse_input_shape("ids=1x128").unwrap(),
        ("ids".to_string(), vec![1, 128])
    );
    assert!(
        parse_input_shape("ids")
            .unwrap_err()
            .contains("expected NAME=DxDx")
    );
    assert!(parse_input_shape("ids=1x0").unwrap_err().contains(">= 1"));
    let m = model(
        17,
        vec![node("Relu", "r", &["x"], &["y"], vec![])],
        vec![vi("x", 1, &["batch", "4"])],
        &["y"],
        vec![],
    );
    let mut opts = OnnxOptions::default();
    opts.input_shapes.insert("x".into(), vec![2, 5]);
    assert_eq!(
        import(&m, &opts).unwrap_err().to_string(),
        "--input-shape x=[2,5]: dimension 1 is fixed to 4 by the model, found 5"
    );
    let mut opts = OnnxOptions::default();
    opts.input_shapes.insert("z".into(), vec![2]);
    opts.input_shapes.insert("x".into(), vec![2, 4]);
    assert_eq!(
        import(&m, &opts).unwrap_err().to_string(),
        "--input-shape names 'z', which is not a graph input"
    );
    let _ = DType::F32;
}

fn neuronc(args: &[&std::ffi::OsStr]) -> (i32, String, String) {
    let out = assert_cmd::Command::cargo_bin("neuronc")
        .unwrap()
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `check`, `run --reference`, `compile` and `convert` take .onnx models; bad
/// `--input-shape` values are usage errors (2), unbound dimensions invalid models (1).
#[test]
fn cli_accepts_onnx_models() {
    use std::ffi::OsStr;
    let dir = tempfile::tempdir().unwrap();
    let m = fixture("gpt2_block").join("model.onnx");
    let ids = fixture("gpt2_block").join("inputs/input_ids.npy");
    let (code, out, err) = neuronc(&[OsStr::new("check"), m.as_os_str()]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("ok: model 'gpt2_block' is valid: 42 nodes"),
        "{out}"
    );
    let json = dir.path().join("gpt2.json");
    let (code, _, err) = neuronc(&[
        OsStr::new("convert"),
        m.as_os_str(),
        OsStr::new("-o"),
        json.as_os_str(),
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(dir.path().join("gpt2.safetensors").exists());
    let input = format!("--input=input_ids={}", ids.display());
    for (model, out) in [(&m, "a"), (&json, "b")] {
        let d = dir.path().join(out);
        let (code, _, err) = neuronc(&[
            OsStr::new("run"),
            OsStr::new("--reference"),
            model.as_os_str(),
            OsStr::new(&input),
            OsStr::new("--output-dir"),
            d.as_os_str(),
        ]);
        assert_eq!(code, 0, "{err}");
    }
    let a = std::fs::read(dir.path().join("a/logits.npy")).unwrap();
    let b = std::fs::read(dir.path().join("b/logits.npy")).unwrap();
    assert_eq!(a, b, "converted model gives different bits");
    let neff = dir.path().join("g.neff");
    let (code, _, err) = neuronc(&[
        OsStr::new("compile"),
        m.as_os_str(),
        OsStr::new("-o"),
        neff.as_os_str(),
    ]);
    assert_eq!(code, 0, "{err}");

    // Symbolic dimensions.
    let sym = model(
        17,
        vec![node("Relu", "r", &["x"], &["y"], vec![])],
        vec![vi("x", 1, &["batch", "sequence"])],
        &["y"],
        vec![],
    );
    let p = dir.path().join("sym.onnx");
    std::fs::write(&p, sym.encode_to_vec()).unwrap();
    let (code, _, err) = neuronc(&[OsStr::new("check"), p.as_os_str()]);
    assert_eq!(code, 1);
    assert!(
        err.contains("unbound symbolic dimension(s): x: [batch, sequence]; bind each input's shape with --input-shape"),
        "{err}"
    );
    let (code, out, err) = neuronc(&[
        OsStr::new("check"),
        p.as_os_str(),
        OsStr::new("--input-shape"),
        OsStr::new("x=2x3"),
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("[2,3]"), "{out}");
    let (code, _, err) = neuronc(&[
        OsStr::new("check"),
        p.as_os_str(),
        OsStr::new("--input-shape"),
        OsStr::new("x=2xq"),
    ]);
    assert_eq!(code, 2, "{err}");
}

fn i64s(shape: &[i64], v: &[i64]) -> TensorProto {
    TensorProto {
        dims: shape.to_vec(),
        ..i64_init("", v)
    }
}

fn constant(out: &str, t: TensorProto) -> NodeProto {
    NodeProto {
        attribute: vec![AttributeProto {
            name: Some("value".into()),
            r#type: Some(attr_type::TENSOR),
            t: Some(t),
            ..Default::default()
        }],
        ..node("Constant", out, &[], &[out], vec![])
    }
}

/// The ops transformers' mask and position code exports to (GatherElements, GatherND,
/// CumSum), on constants and on runtime data with constant indices, runtime And/Or/Not on
/// bools, and an empty shape constant (TorchScript's scalar ConstantOfShape); expected
/// values worked out by hand from the ONNX operator definitions.
#[test]
fn gather_elements_gather_nd_cumsum_and_runtime_logic() {
    let x = f32s(&[2, 3], vec![0., 1., 2., 10., 11., 12.]);
    let nodes = vec![
        // GatherElements axis 1 (negative index wraps) on a runtime value.
        constant("ge_i", i64s(&[2, 2], &[2, 0, -1, 1])),
        node(
            "GatherElements",
            "ge",
            &["x", "ge_i"],
            &["ge_out"],
            vec![attr_i("axis", 1)],
        ),
        // GatherND (batch_dims 0, K 2): picks x[1, 0] and x[0, 2].
        constant("nd_i", i64s(&[2, 2], &[1, 0, 0, 2])),
        node("GatherND", "nd", &["x", "nd_i"], &["nd_out"], vec![]),
        // GatherND with batch_dims 1 (K 1): x[0, 1] and x[1, 2].
        constant("ndb_i", i64s(&[2, 1], &[1, 2])),
        node(
            "GatherND",
            "ndb",
            &["x", "ndb_i"],
            &["ndb_out"],
            vec![attr_i("batch_dims", 1)],
        ),
        // CumSum on a constant, exclusive and reversed, folded at import.
        constant("cs_x", i64s(&[4], &[1, 2, 3, 4])),
        constant("cs_ax", i64s(&[], &[0])),
        node(
            "CumSum",
            "cs",
            &["cs_x", "cs_ax"],
            &["cs_out"],
            vec![attr_i("exclusive", 1), attr_i("reverse", 1)],
        ),
        node("Cast", "csf", &["cs_out"], &["cs_f"], vec![attr_i("to", 1)]),
        // Runtime logic on bools: (m and c) or not m, with c constant.
        constant("c", {
            let mut t = i64s(&[3], &[]);
            t.data_type = Some(9);
            t.int32_data = vec![1, 0, 1];
            t.int64_data = vec![];
            t
        }),
        node("And", "and", &["m", "c"], &["and_out"], vec![]),
        node("Not", "not", &["m"], &["not_out"], vec![]),
        node("Or", "or", &["and_out", "not_out"], &["or_out"], vec![]),
        node("Cast", "orf", &["or_out"], &["or_f"], vec![attr_i("to", 1)]),
        // An empty shape constant: ConstantOfShape([]) is a scalar.
        constant("empty", i64s(&[0], &[])),
        node("ConstantOfShape", "cos", &["empty"], &["scalar"], vec![]),
        node("Add", "plus", &["or_f", "scalar"], &["or_f0"], vec![]),
    ];
    let m = model(
        17,
        nodes,
        vec![vi("x", 1, &["2", "3"]), vi("m", 9, &["2", "3"])],
        &["ge_out", "nd_out", "ndb_out", "cs_f", "or_f0"],
        vec![],
    );
    let g = import(&m, &OnnxOptions::default()).unwrap();
    let mask = Tensor::Bool(
        ndarray::ArrayD::from_shape_vec(vec![2, 3], vec![true, true, false, false, true, true])
            .unwrap(),
    );
    let o = run1(&g, &[("x", x.clone()), ("m", mask.clone())]);
    // The compositions (flat gathers, where on bools) run on the chip too (the folded
    // constant output `cs_f` is not part of the program).
    let inputs = BTreeMap::from([("x".to_string(), x), ("m".to_string(), mask)]);
    let c = neuronc::driver::compile(&g, &Precision::Fp32.options()).unwrap();
    let (sim, _) = try_simulate(&c.artifact, &inputs, neuron_sim::SimOptions::default()).unwrap();
    for name in ["ge_out", "nd_out", "ndb_out", "or_f0"] {
        let want: Vec<f64> = o[name].to_f64().iter().copied().collect();
        assert_eq!(sim[name], want, "{name} on the chip");
    }
    let v = |n: &str| o[n].to_f64().iter().copied().collect::<Vec<_>>();
    assert_eq!(v("ge_out"), vec![2., 0., 12., 11.]);
    assert_eq!(o["ge_out"].shape(), &[2, 2]);
    assert_eq!(v("nd_out"), vec![10., 2.]);
    assert_eq!(v("ndb_out"), vec![1., 12.]);
    assert_eq!(v("cs_f"), vec![9., 7., 4., 0.]);
    // m = [[t, t, f], [f, t, t]], c = [t, f, t]: (m and c) or not m.
    assert_eq!(v("or_f0"), vec![1., 0., 1., 1., 0., 1.]);
    // CumSum on a runtime value and out-of-range indices are clear errors.
    let bad = model(
        17,
        vec![
            constant("ax", i64s(&[], &[0])),
            node("CumSum", "cs_rt", &["x", "ax"], &["y"], vec![]),
        ],
        vec![vi("x", 1, &["3"])],
        &["y"],
        vec![],
    );
    let e = import(&bad, &OnnxOptions::default())
        .unwrap_err()
        .to_string();
    assert!(e.contains("'cs_rt'") && e.contains("runtime value"), "{e}");
    let bad = model(
        17,
        vec![
            constant("i", i64s(&[1, 2], &[0, 5])),
            node("GatherND", "nd_oob", &["x", "i"], &["y"], vec![]),
        ],
        vec![vi("x", 1, &["2", "3"])],
        &["y"],
        vec![],
    );
    let e = import(&bad, &OnnxOptions::default())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("'nd_oob'") && e.contains("index 5 is out of range"),
        "{e}"
    );
}
