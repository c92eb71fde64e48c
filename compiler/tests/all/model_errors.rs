//! Every class of bad model input gets a clear error (never a panic) naming
//! the node (name and index), the JSON path, and expected vs found.

// Test helpers unwrap freely: a failure is a test failure.
#![allow(clippy::unwrap_used)]

use std::path::Path;

use neuronc::frontend::{ModelError, parse_model};
use proptest::prelude::*;

/// A model with one input `x: [2,3]`, a param `w: [3,4]`, and the given nodes and outputs.
fn model(nodes: &str, outputs: &str) -> String {
    format!(
        r#"{{
  "name": "t",
  "inputs": [{{"name": "x", "shape": [2, 3]}}],
  "params": [{{"name": "w", "shape": [3, 4], "init": "ones"}}],
  "nodes": [{nodes}],
  "outputs": [{outputs}]
}}"#
    )
}

fn parse(json: &str) -> Result<neuronc::ir::Graph, ModelError> {
    parse_model(json, Path::new("."))
}

fn err(json: &str) -> String {
    match parse(json) {
        Ok(g) => panic!("expected an error, got a valid graph:\n{g}"),
        Err(e) => e.to_string(),
    }
}

fn node_err(nodes: &str, outputs: &str) -> String {
    err(&model(nodes, outputs))
}

fn assert_has(msg: &str, parts: &[&str]) {
    for p in parts {
        assert!(msg.contains(p), "message {msg:?} lacks {p:?}");
    }
}

#[test]
fn valid_base_model() {
    let g = parse(&model(
        r#"{"name": "fc", "op": "matmul", "inputs": ["x", "w"], "outputs": ["y"]}"#,
        r#""y""#,
    ))
    .unwrap();
    assert_eq!(g.value(g.outputs[0]).shape, vec![2, 4]);
}

#[test]
fn malformed_json_has_line_and_column() {
    let m = err("{\n  \"name\": \"t\",\n  \"nodes\": [,]\n}");
    assert_eq!(m, "malformed json at line 3, column 13: expected value");
    let m = err("{\"name\": \"t\"");
    assert!(m.starts_with("malformed json at line 1, column 12"), "{m}");
}

#[test]
fn wrong_field_type_has_path_line_and_column() {
    let m = err(r#"{"inputs": [{"name": "x", "shape": "8x784"}], "nodes": [], "outputs": []}"#);
    assert_has(
        &m,
        &[
            "inputs[0].shape: invalid type: string \"8x784\", expected a sequence",
            "(line 1, column",
        ],
    );
    let m = err(r#"{"inputs": [{"name": "x", "shape": [8, -1]}], "nodes": [], "outputs": []}"#);
    assert_has(&m, &["inputs[0].shape[1]", "invalid value: integer `-1`"]);
}

#[test]
fn unknown_and_missing_fields() {
    let m = err(r#"{"inputs": [{"name": "x", "shpe": [1]}], "nodes": [], "outputs": []}"#);
    assert_has(
        &m,
        &[
            "inputs[0]",
            "unknown field `shpe`",
            "expected one of `name`, `shape`, `dtype`",
        ],
    );
    let m = err(
        r#"{"inputs": [], "nodes": [{"name": "a", "op": "relu", "inputs": ["x"]}], "outputs": []}"#,
    );
    assert_has(&m, &["nodes[0]", "missing field `outputs`"]);
    let m = err(r#"{"nodes": [], "outputs": [], "extra": 1}"#);
    assert_has(&m, &["unknown field `extra`"]);
}

#[test]
fn unknown_op_names_node_and_suggests() {
    let m = node_err(
        r#"{"name": "act", "op": "gelu2", "inputs": ["x"], "outputs": ["y"]}"#,
        r#""y""#,
    );
    assert_has(
        &m,
        &[
            "nodes[0].op: node 'act' (index 0): unknown op 'gelu2'",
            "did you mean 'gelu'?",
            "expected one of: add, sub",
        ],
    );
}

#[test]
fn unknown_attribute() {
    let m = node_err(
        r#"{"name": "sm", "op": "softmax", "inputs": ["x"], "outputs": ["y"], "attrs": {"axs": 1}}"#,
        r#""y""#,
    );
    assert_eq!(
        m,
        "nodes[0].attrs.axs: node 'sm' (index 0): unknown attribute 'axs' for softmax (expected one of: axis)"
    );
    let m = node_err(
        r#"{"name": "r", "op": "relu", "inputs": ["x"], "outputs": ["y"], "attrs": {"alpha": 1}}"#,
        r#""y""#,
    );
    assert_has(&m, &["nodes[0].attrs.alpha", "it takes no attributes"]);
}

#[test]
fn missing_attribute() {
    let m = node_err(
        r#"{"name": "t", "op": "transpose", "inputs": ["x"], "outputs": ["y"]}"#,
        r#""y""#,
    );
    assert_eq!(
        m,
        "nodes[0].attrs: node 't' (index 0): transpose requires attribute 'perm' (a list of integers)"
    );
    let m = node_err(
        r#"{"name": "c", "op": "concat", "inputs": ["x", "x"], "outputs": ["y"]}"#,
        r#""y""#,
    );
    assert_has(&m, &["concat requires attribute 'axis'"]);
}

#[test]
fn ill_typed_attribute() {
    let m = node_err(
        r#"{"name": "sm", "op": "softmax", "inputs": ["x"], "outputs": ["y"], "attrs": {"axis": "last"}}"#,
        r#""y""#,
    );
    assert_eq!(
        m,
        "nodes[0].attrs.axis: node 'sm' (index 0): attribute 'axis' of softmax must be an integer, found string \"last\""
    );
    let m = node_err(
        r#"{"name": "g", "op": "gelu", "inputs": ["x"], "outputs": ["y"], "attrs": {"approximate": "fast"}}"#,
        r#""y""#,
    );
    assert_has(
        &m,
        &[
            "nodes[0].attrs.approximate",
            "must be \"none\" or \"tanh\", found \"fast\"",
        ],
    );
    let m = node_err(
        r#"{"name": "mm", "op": "matmul", "inputs": ["x", "w"], "outputs": ["y"], "attrs": {"transpose_b": 1}}"#,
        r#""y""#,
    );
    assert_has(
        &m,
        &[
            "nodes[0].attrs.transpose_b",
            "must be true or false, found number 1",
        ],
    );
    let m = node_err(
        r#"{"name": "c", "op": "cast", "inputs": ["x"], "outputs": ["y"], "attrs": {"dtype": "float"}}"#,
        r#""y""#,
    );
    assert_has(&m, &["nodes[0].attrs.dtype", "unknown dtype 'float'"]);
}

#[test]
fn value_used_before_definition() {
    let m = node_err(
        r#"{"name": "second", "op": "relu", "inputs": ["h"], "outputs": ["y"]},
           {"name": "first", "op": "relu", "inputs": ["x"], "outputs": ["h"]}"#,
        r#""y""#,
    );
    assert_eq!(
        m,
        "nodes[0].inputs[0]: node 'second' (index 0): value 'h' is used before it is defined by node 'first' (index 1); nodes must be listed so that every value is defined before it is used"
    );
}

#[test]
fn undefined_value() {
    let m = node_err(
        r#"{"name": "a", "op": "add", "inputs": ["x", "nope"], "outputs": ["y"]}"#,
        r#""y""#,
    );
    assert_eq!(
        m,
        "nodes[0].inputs[1]: node 'a' (index 0): value 'nope' is not defined (no input, param or node output has this name)"
    );
}

#[test]
fn value_defined_twice() {
    let m = node_err(
        r#"{"name": "a", "op": "relu", "inputs": ["x"], "outputs": ["h"]},
           {"name": "b", "op": "neg", "inputs": ["x"], "outputs": ["h"]}"#,
        r#""h""#,
    );
    assert_eq!(
        m,
        "nodes[1].outputs[0]: node 'b' (index 1): value 'h' is defined twice (first at nodes[0].outputs[0])"
    );
    let m = node_err(
        r#"{"name": "a", "op": "relu", "inputs": ["x"], "outputs": ["w"]}"#,
        r#""w""#,
    );
    assert_has(
        &m,
        &[
            "nodes[0].outputs[0]",
            "value 'w' is defined twice (first at params[0])",
        ],
    );
    let m = err(
        r#"{"inputs": [{"name": "x", "shape": [1]}, {"name": "x", "shape": [2]}], "nodes": [], "outputs": ["x"]}"#,
    );
    assert_eq!(
        m,
        "inputs[1].name: value 'x' is defined twice (first at inputs[0])"
    );
    let m = node_err(
        r#"{"name": "a", "op": "relu", "inputs": ["x"], "outputs": ["h"]},
           {"name": "a", "op": "neg", "inputs": ["x"], "outputs": ["k"]}"#,
        r#""h""#,
    );
    assert_has(
        &m,
        &["nodes[1].name: node 'a' (index 1): node name 'a' is used twice (first by node index 0)"],
    );
}

#[test]
fn cycle_is_reported_with_its_nodes() {
    let m = node_err(
        r#"{"name": "a", "op": "add", "inputs": ["x", "c"], "outputs": ["a_out"]},
           {"name": "b", "op": "relu", "inputs": ["a_out"], "outputs": ["b_out"]},
           {"name": "c", "op": "neg", "inputs": ["b_out"], "outputs": ["c"]}"#,
        r#""c""#,
    );
    assert_eq!(
        m,
        "nodes[0].inputs[1]: node 'a' (index 0): value 'c' is part of a cycle: 'a' (index 0) -> 'b' (index 1) -> 'c' (index 2) -> 'a' (index 0)"
    );
    let m = node_err(
        r#"{"name": "self", "op": "relu", "inputs": ["s"], "outputs": ["s"]}"#,
        r#""s""#,
    );
    assert_has(
        &m,
        &["value 's' is part of a cycle: 'self' (index 0) -> 'self' (index 0)"],
    );
}

#[test]
fn output_names_no_value() {
    let m = node_err(
        r#"{"name": "r", "op": "relu", "inputs": ["x"], "outputs": ["y"]}"#,
        r#""z""#,
    );
    assert_eq!(
        m,
        "outputs[0]: output 'z' names no value (no input, param or node output is called 'z')"
    );
    let m = node_err(
        r#"{"name": "r", "op": "relu", "inputs": ["x"], "outputs": ["y"]}"#,
        "",
    );
    assert_has(&m, &["outputs: the model lists no outputs"]);
}

#[test]
fn shape_mismatch_shows_both_shapes() {
    let m = node_err(
        r#"{"name": "fc", "op": "matmul", "inputs": ["w", "x"], "outputs": ["y"]}"#,
        r#""y""#,
    );
    assert_eq!(
        m,
        "nodes[0]: node 'fc' (index 0): matmul inner dimensions differ: [3,4] x [2,3] (4 vs 2)"
    );
    let m = node_err(
        r#"{"name": "s", "op": "add", "inputs": ["x", "w"], "outputs": ["y"]}"#,
        r#""y""#,
    );
    assert_eq!(
        m,
        "nodes[0]: node 's' (index 0): shapes [2,3] and [3,4] do not broadcast"
    );
}

#[test]
fn arity_and_dtype_errors() {
    let m = node_err(
        r#"{"name": "s", "op": "add", "inputs": ["x"], "outputs": ["y"]}"#,
        r#""y""#,
    );
    assert_eq!(
        m,
        "nodes[0]: node 's' (index 0): add takes 2 inputs, found 1"
    );
    let m = node_err(
        r#"{"name": "sel", "op": "where", "inputs": ["x", "x", "x"], "outputs": ["y"]}"#,
        r#""y""#,
    );
    assert_eq!(
        m,
        "nodes[0].inputs[0]: node 'sel' (index 0): where condition must be bool, found f32"
    );
    let m = node_err(
        r#"{"name": "g", "op": "gather", "inputs": ["w", "x"], "outputs": ["y"]}"#,
        r#""y""#,
    );
    assert_has(
        &m,
        &[
            "nodes[0].inputs[1]",
            "gather indices must be i32 or i64, found f32",
        ],
    );
}

#[test]
fn bad_axes_and_perms() {
    let m = node_err(
        r#"{"name": "sm", "op": "softmax", "inputs": ["x"], "outputs": ["y"], "attrs": {"axis": 2}}"#,
        r#""y""#,
    );
    assert_eq!(
        m,
        "nodes[0].attrs.axis: node 'sm' (index 0): axis 2 is out of range for rank 2 (expected -2 to 1)"
    );
    let m = node_err(
        r#"{"name": "t", "op": "transpose", "inputs": ["x"], "outputs": ["y"], "attrs": {"perm": [0, 0]}}"#,
        r#""y""#,
    );
    assert_eq!(
        m,
        "nodes[0].attrs.perm: node 't' (index 0): perm [0, 0] is not a permutation of 0..2 for input shape [2,3]"
    );
    let m = node_err(
        r#"{"name": "r", "op": "reduce_sum", "inputs": ["x"], "outputs": ["y"], "attrs": {"axes": [1, -1]}}"#,
        r#""y""#,
    );
    assert_has(&m, &["nodes[0].attrs.axes", "axis -1 is listed twice"]);
    let m = node_err(
        r#"{"name": "t", "op": "transpose", "inputs": ["x"], "outputs": ["y"], "attrs": {"perm": [1, -1]}}"#,
        r#""y""#,
    );
    assert_has(&m, &["nodes[0].attrs.perm", "negative entry"]);
}

#[test]
fn reshape_size_mismatch() {
    let m = node_err(
        r#"{"name": "rs", "op": "reshape", "inputs": ["x"], "outputs": ["y"], "attrs": {"shape": [4, -1]}}"#,
        r#""y""#,
    );
    assert_eq!(
        m,
        "nodes[0].attrs.shape: node 'rs' (index 0): cannot reshape [2,3] (6 elements) to [4,-1]"
    );
    let m = node_err(
        r#"{"name": "rs", "op": "reshape", "inputs": ["x"], "outputs": ["y"], "attrs": {"shape": [-1, -1]}}"#,
        r#""y""#,
    );
    assert_has(&m, &["shape has more than one -1"]);
}

#[test]
fn slice_and_gather_out_of_range() {
    let m = node_err(
        r#"{"name": "sl", "op": "slice", "inputs": ["x"], "outputs": ["y"], "attrs": {"axes": [1], "starts": [5], "ends": [9]}}"#,
        r#""y""#,
    );
    assert_eq!(
        m,
        "nodes[0].attrs.starts: node 'sl' (index 0): starts[0] = 5 is out of range for axis 1 of size 3"
    );
    let m = node_err(
        r#"{"name": "sl", "op": "slice", "inputs": ["x"], "outputs": ["y"], "attrs": {"starts": [0], "ends": [1], "steps": [0]}}"#,
        r#""y""#,
    );
    assert_has(
        &m,
        &["nodes[0].attrs.steps", "steps[0] is 0, expected >= 1"],
    );
    let json = r#"{
      "params": [{"name": "table", "shape": [4, 2], "init": "ones"},
                 {"name": "ids", "shape": [3], "dtype": "i64", "value": [0, 3, 4]}],
      "nodes": [{"name": "emb", "op": "gather", "inputs": ["table", "ids"], "outputs": ["y"]}],
      "outputs": ["y"]}"#;
    assert_eq!(
        err(json),
        "nodes[0].inputs[1]: node 'emb' (index 0): gather index 4 in 'ids' is out of range for axis 0 of size 4 (expected -4 to 3)"
    );
}

#[test]
fn non_finite_and_bad_literals() {
    let json = r#"{"params": [{"name": "p", "shape": [2], "value": [1.0, 1e39]}], "nodes": [], "outputs": ["p"]}"#;
    assert_eq!(
        err(json),
        "params[0].value[1]: non-finite literal: 1e+39 is not a finite f32 value"
    );
    let json = r#"{"params": [{"name": "p", "shape": [2, 2], "value": [[1, 2], [3]]}], "nodes": [], "outputs": ["p"]}"#;
    assert_eq!(
        err(json),
        "params[0].value[1]: expected a list of 2 (shape [2] remaining), found a list of 1"
    );
    let json = r#"{"params": [{"name": "p", "shape": [1], "value": ["a"]}], "nodes": [], "outputs": ["p"]}"#;
    assert_eq!(
        err(json),
        "params[0].value[0]: expected a scalar, found string \"a\""
    );
    let json = r#"{"params": [{"name": "p", "shape": [2], "init": {"normal": {"std": -1}}}], "nodes": [], "outputs": ["p"]}"#;
    assert_has(
        &err(json),
        &["params[0].init: param 'p': normal init needs finite mean and std >= 0"],
    );
}

#[test]
fn param_without_any_value() {
    let json = r#"{"params": [{"name": "p", "shape": [2]}], "nodes": [], "outputs": ["p"]}"#;
    assert_eq!(
        err(json),
        "params[0]: param 'p' has no value: the model has no weights file, and it has no \"value\" or \"init\""
    );
}

#[test]
fn unknown_dtype() {
    let json = r#"{"inputs": [{"name": "x", "shape": [1], "dtype": "float32"}], "nodes": [], "outputs": ["x"]}"#;
    assert_eq!(
        err(json),
        "inputs[0].dtype: unknown dtype 'float32' (expected one of f32, bf16, f16, i8, i32, i64, bool)"
    );
}

#[test]
fn absurd_sizes_are_refused_before_allocation() {
    // 2^60 elements: would be exabytes if allocated.
    let json = r#"{"params": [{"name": "p", "shape": [1073741824, 1073741824], "init": "zeros"}], "nodes": [], "outputs": ["p"]}"#;
    assert_eq!(
        err(json),
        "params[0].shape: param 'p' shape [1073741824,1073741824]: tensor has more than the limit of 268435456 elements"
    );
    // Overflowing usize.
    let json = r#"{"inputs": [{"name": "x", "shape": [18446744073709551615, 4]}], "nodes": [], "outputs": ["x"]}"#;
    assert_has(&err(json), &["inputs[0].shape", "more than the limit"]);
    // An inferred shape over the limit.
    let json = r#"{"inputs": [{"name": "a", "shape": [65536, 1]}, {"name": "b", "shape": [1, 65536]}],
        "nodes": [{"name": "outer", "op": "mul", "inputs": ["a", "b"], "outputs": ["y"]}], "outputs": ["y"]}"#;
    assert_has(
        &err(json),
        &[
            "nodes[0]: node 'outer' (index 0)",
            "more than the limit of 268435456 elements",
        ],
    );
    let json = r#"{"inputs": [{"name": "x", "shape": [2, 0]}], "nodes": [], "outputs": ["x"]}"#;
    assert_has(&err(json), &["inputs[0].shape", "dimension 1 is 0"]);
}

mod weights {
    use super::*;
    use safetensors::{Dtype, serialize, tensor::TensorView};

    fn write_weights(dir: &Path, name: &str, dtype: Dtype, shape: &[usize], bytes: &[u8]) {
        let view = TensorView::new(dtype, shape.to_vec(), bytes).unwrap();
        let data = serialize([(name, view)], None).unwrap();
        std::fs::write(dir.join("w.safetensors"), data).unwrap();
    }

    const MODEL: &str = r#"{"weights": "w.safetensors",
        "params": [{"name": "w", "shape": [2, 2], "init": "zeros"}],
        "nodes": [], "outputs": ["w"]}"#;

    fn f32_bytes(xs: &[f32]) -> Vec<u8> {
        xs.iter().flat_map(|x| x.to_le_bytes()).collect()
    }

    #[test]
    fn weights_take_precedence_over_init() {
        let dir = tempfile::tempdir().unwrap();
        write_weights(
            dir.path(),
            "w",
            Dtype::F32,
            &[2, 2],
            &f32_bytes(&[1.0, 2.0, 3.0, 4.0]),
        );
        let g = parse_model(MODEL, dir.path()).unwrap();
        let data = g.value(g.params[0]).data.as_ref().unwrap().to_f64();
        assert_eq!(
            data.iter().copied().collect::<Vec<_>>(),
            vec![1.0, 2.0, 3.0, 4.0]
        );
    }

    #[test]
    fn missing_file() {
        let dir = tempfile::tempdir().unwrap();
        let m = parse_model(MODEL, dir.path()).unwrap_err().to_string();
        assert_has(
            &m,
            &["weights: weights file", "w.safetensors: cannot be read"],
        );
    }

    #[test]
    fn truncated_file() {
        let dir = tempfile::tempdir().unwrap();
        write_weights(
            dir.path(),
            "w",
            Dtype::F32,
            &[2, 2],
            &f32_bytes(&[1.0, 2.0, 3.0, 4.0]),
        );
        let p = dir.path().join("w.safetensors");
        let bytes = std::fs::read(&p).unwrap();
        std::fs::write(&p, &bytes[..bytes.len() - 5]).unwrap();
        let m = parse_model(MODEL, dir.path()).unwrap_err().to_string();
        assert_has(
            &m,
            &[
                "weights: weights file",
                "is not a valid safetensors file (truncated or corrupt",
            ],
        );
        std::fs::write(&p, &bytes[..4]).unwrap();
        let m = parse_model(MODEL, dir.path()).unwrap_err().to_string();
        assert_has(&m, &["is not a valid safetensors file"]);
    }

    #[test]
    fn wrong_shape_or_dtype() {
        let dir = tempfile::tempdir().unwrap();
        write_weights(
            dir.path(),
            "w",
            Dtype::F32,
            &[4],
            &f32_bytes(&[1.0, 2.0, 3.0, 4.0]),
        );
        let m = parse_model(MODEL, dir.path()).unwrap_err().to_string();
        assert_has(
            &m,
            &[
                "params[0]: weights file",
                "param 'w': tensor 'w' is [4] f32, expected [2,2] f32",
            ],
        );
        write_weights(dir.path(), "w", Dtype::I32, &[2, 2], &[0u8; 16]);
        let m = parse_model(MODEL, dir.path()).unwrap_err().to_string();
        assert_has(&m, &["tensor 'w' is [2,2] i32, expected [2,2] f32"]);
    }

    #[test]
    fn absent_name_falls_back_to_init() {
        let dir = tempfile::tempdir().unwrap();
        write_weights(dir.path(), "other", Dtype::F32, &[1], &f32_bytes(&[1.0]));
        let g = parse_model(MODEL, dir.path()).unwrap();
        assert_eq!(g.value(g.params[0]).data.as_ref().unwrap().max_abs(), 0.0);
        let no_init = MODEL.replace(r#", "init": "zeros""#, "");
        let m = parse_model(&no_init, dir.path()).unwrap_err().to_string();
        assert_has(
            &m,
            &[
                "params[0]: param 'w' has no value: the weights file 'w.safetensors' holds no tensor 'w'",
            ],
        );
    }
}

#[test]
fn examples_are_valid() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    for (name, out) in [
        ("mlp", vec![8, 10]),
        ("bert_layer", vec![1, 128, 768]),
        ("resnet_block", vec![1, 64, 56, 56]),
    ] {
        let g = neuronc::frontend::load_model(&dir.join(format!("{name}.json"))).unwrap();
        assert_eq!(g.value(g.outputs[0]).shape, out, "{name}");
        g.verify().unwrap();
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    /// Corrupting a valid model anywhere gives an error or a graph, never a panic.
    #[test]
    fn corrupted_models_never_panic(cut in 0usize..400, pos in 0usize..400, byte in 0u8..128) {
        let base = model(
            r#"{"name": "fc", "op": "matmul", "inputs": ["x", "w"], "outputs": ["h"]},
               {"name": "t", "op": "transpose", "inputs": ["h"], "outputs": ["y"], "attrs": {"perm": [1, 0]}}"#,
            r#""y""#,
        );
        let mut bytes = base.into_bytes();
        if pos < bytes.len() {
            bytes[pos] = byte;
        }
        bytes.truncate(cut.max(1));
        if let Ok(s) = String::from_utf8(bytes) {
            let _ = parse(&s);
        }
    }
}
