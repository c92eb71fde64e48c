//! The `neuronc check` and `neuronc run --reference` command lines.

// Test helpers unwrap freely: a failure is a test failure.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

use assert_cmd::Command;
use neuronc::ir::Tensor;
use neuronc::npy::{read_npy, write_npy};

fn neuronc() -> Command {
    Command::cargo_bin("neuronc").unwrap()
}

fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples")
}

fn stdout(cmd: &mut Command) -> (i32, String, String) {
    let out = cmd.output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn check_accepts_the_examples_and_prints_types() {
    for name in ["mlp", "bert_layer", "resnet_block"] {
        let (code, out, err) = stdout(
            neuronc()
                .arg("check")
                .arg(examples().join(format!("{name}.json"))),
        );
        assert_eq!(code, 0, "{name}: {err}");
        assert!(
            out.contains(&format!("ok: model '{name}' is valid")),
            "{out}"
        );
    }
    let (_, out, _) = stdout(
        neuronc()
            .args(["check", "--dump"])
            .arg(examples().join("mlp.json")),
    );
    assert!(
        out.contains("%6    h     : [8,512]          f32   n0 fc1 (matmul)"),
        "{out}"
    );
    assert!(
        out.contains("n2 act1 = gelu[approximate=tanh](%7 h1) : [8,512] f32 -> %8 a1"),
        "{out}"
    );
}

#[test]
fn check_rejects_an_invalid_model_with_exit_1() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("bad.json");
    std::fs::write(
        &model,
        r#"{"inputs": [{"name": "x", "shape": [2, 3]}],
            "nodes": [{"name": "sm", "op": "softmax", "inputs": ["x"], "outputs": ["y"], "attrs": {"axis": 5}}],
            "outputs": ["y"]}"#,
    )
    .unwrap();
    let (code, out, err) = stdout(neuronc().arg("check").arg(&model));
    assert_eq!(code, 1);
    assert!(out.is_empty(), "{out}");
    assert!(
        err.contains("nodes[0].attrs.axis: node 'sm' (index 0): axis 5 is out of range for rank 2 (expected -2 to 1)"),
        "{err}"
    );
    let (code, _, err) = stdout(neuronc().arg("check").arg(dir.path().join("missing.json")));
    assert_eq!(code, 1);
    assert!(err.contains("cannot read model file"), "{err}");
}

#[test]
fn usage_errors_exit_2() {
    assert_eq!(stdout(neuronc().arg("check")).0, 2);
    assert_eq!(stdout(neuronc().arg("frobnicate")).0, 2);
    let mlp = examples().join("mlp.json");
    let (code, _, err) = stdout(neuronc().arg("run").arg(&mlp));
    assert_eq!(code, 2);
    assert!(err.contains("pass --reference"), "{err}");
    let (code, _, err) = stdout(
        neuronc()
            .args(["run", "--reference", "--input", "nonsense"])
            .arg(&mlp),
    );
    assert_eq!(code, 2);
    assert!(err.contains("expected NAME=FILE.npy"), "{err}");
    let (code, _, err) = stdout(
        neuronc()
            .args(["run", "--reference", "--input", "q=a.npy"])
            .arg(&mlp),
    );
    assert_eq!(code, 2);
    assert!(
        err.contains("the model has no input 'q' (its inputs are: x)"),
        "{err}"
    );
}

const TINY: &str = r#"{
  "name": "tiny", "seed": 5,
  "inputs": [{"name": "x", "shape": [2, 3]}, {"name": "ids", "shape": [2], "dtype": "i64"}],
  "params": [{"name": "table", "shape": [4, 3], "value": [[1, 2, 3], [4, 5, 6], [7, 8, 9], [10, 11, 12]]}],
  "nodes": [
    {"name": "emb", "op": "gather", "inputs": ["table", "ids"], "outputs": ["e"]},
    {"name": "sum", "op": "add", "inputs": ["x", "e"], "outputs": ["out/value:0"]}
  ],
  "outputs": ["out/value:0"]
}"#;

#[test]
fn run_writes_outputs_from_given_inputs() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("tiny.json");
    std::fs::write(&model, TINY).unwrap();
    let x = dir.path().join("x.npy");
    // f64 data for an f32 input is accepted (rounded); i32 for i64 is widened.
    write_npy(
        &x,
        &Tensor::F64(ndarray::arr2(&[[0.5, 0.0, 0.0], [0.0, 0.0, -1.0]]).into_dyn()),
    )
    .unwrap();
    let ids = dir.path().join("ids.npy");
    write_npy(&ids, &Tensor::I32(ndarray::arr1(&[3, 0]).into_dyn())).unwrap();
    let out_dir = dir.path().join("out");
    let (code, out, err) = stdout(
        neuronc()
            .args(["run", "--reference"])
            .arg(&model)
            .arg("--input")
            .arg(format!("x={}", x.display()))
            .arg("--input")
            .arg(format!("ids={}", ids.display()))
            .arg("--output-dir")
            .arg(&out_dir),
    );
    assert_eq!(code, 0, "{err}");
    assert!(!err.contains("not given"), "{err}");
    assert!(out.contains("out_value_0.npy"), "{out}");
    let y = read_npy(&out_dir.join("out_value_0.npy")).unwrap();
    assert_eq!(
        y,
        Tensor::F32(ndarray::arr2(&[[10.5, 11.0, 12.0], [1.0, 2.0, 2.0]]).into_dyn())
    );
}

#[test]
fn run_generates_missing_inputs_and_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("tiny.json");
    std::fs::write(&model, TINY).unwrap();
    let run = |out: &Path, f64: bool| {
        let mut cmd = neuronc();
        cmd.args(["run", "--reference"])
            .arg(&model)
            .arg("--output-dir")
            .arg(out);
        if f64 {
            cmd.arg("--f64");
        }
        stdout(&mut cmd)
    };
    let (code, _, err) = run(&dir.path().join("a"), false);
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("note: input 'x' [2,3] f32 not given: generated from seed 5"),
        "{err}"
    );
    assert!(err.contains("note: input 'ids' [2] i64 not given"), "{err}");
    let (code, _, _) = run(&dir.path().join("b"), false);
    assert_eq!(code, 0);
    let a = read_npy(&dir.path().join("a/out_value_0.npy")).unwrap();
    let b = read_npy(&dir.path().join("b/out_value_0.npy")).unwrap();
    assert_eq!(a, b, "generated inputs must be deterministic");
    let (code, _, _) = run(&dir.path().join("c"), true);
    assert_eq!(code, 0);
    let c = read_npy(&dir.path().join("c/out_value_0.npy")).unwrap();
    assert!(matches!(c, Tensor::F64(_)));
    assert!(a.max_abs_diff(&c).unwrap() < 1e-6);
}

#[test]
fn run_rejects_inputs_of_the_wrong_shape_or_dtype() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("tiny.json");
    std::fs::write(&model, TINY).unwrap();
    let bad = dir.path().join("bad.npy");
    write_npy(&bad, &Tensor::F32(ndarray::arr1(&[1.0f32, 2.0]).into_dyn())).unwrap();
    let (code, _, err) = stdout(
        neuronc()
            .args(["run", "--reference"])
            .arg(&model)
            .arg(format!("--input=x={}", bad.display())),
    );
    assert_eq!(code, 1);
    assert!(
        err.contains("input 'x': expected [2,3] f32, found [2] f32"),
        "{err}"
    );
    let (code, _, err) = stdout(
        neuronc()
            .args(["run", "--reference"])
            .arg(&model)
            .arg(format!("--input=ids={}", bad.display())),
    );
    assert_eq!(code, 1);
    assert!(
        err.contains("input 'ids': expected [2] i64, found [2] f32"),
        "{err}"
    );
    let ids = dir.path().join("ids.npy");
    write_npy(&ids, &Tensor::I64(ndarray::arr1(&[9i64, 0]).into_dyn())).unwrap();
    let (code, _, err) = stdout(
        neuronc()
            .args(["run", "--reference"])
            .arg(&model)
            .arg(format!("--input=ids={}", ids.display())),
    );
    assert_eq!(code, 1);
    assert!(
        err.contains(
            "node 'emb' (index 0, op gather): gather index 9 is out of range for axis 0 of size 4"
        ),
        "{err}"
    );
}

#[test]
fn run_reference_on_the_mlp_example() {
    let dir = tempfile::tempdir().unwrap();
    let (code, _, err) = stdout(
        neuronc()
            .args(["run", "--reference"])
            .arg(examples().join("mlp.json"))
            .arg("--output-dir")
            .arg(dir.path()),
    );
    assert_eq!(code, 0, "{err}");
    let p = read_npy(&dir.path().join("p.npy")).unwrap().to_f64();
    assert_eq!(p.shape(), &[8, 10]);
    for row in p.rows() {
        assert!((row.sum() - 1.0).abs() < 1e-5);
    }
}
