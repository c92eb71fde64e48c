//! The `neuronc compile` and `neuronc disasm` command lines.

#![allow(clippy::unwrap_used)] // Tests may unwrap: a panic is a test failure.

use assert_cmd::Command;
use std::path::{Path, PathBuf};

fn neuronc() -> Command {
    Command::cargo_bin("neuronc").unwrap()
}

fn example(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../examples")
        .join(name)
}

fn run(cmd: &mut Command) -> (i32, String, String) {
    let out = cmd.output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn compile_writes_an_artifact_and_prints_the_summary_then_disasm_reads_it() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("mlp.neff");
    let dump = dir.path().join("dump");
    let (code, stdout, stderr) = run(neuronc().args([
        "compile",
        example("mlp.json").to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
        "--target",
        "trn2",
        "--auto-cast",
        "matmult",
        "--auto-cast-type",
        "fp16",
        "--dump",
        dump.to_str().unwrap(),
    ]));
    assert_eq!(code, 0, "{stderr}");
    for want in [
        "target trn2",
        "auto_cast_type=fp16",
        "kernels",
        "instrs",
        "sbuf peak",
        "psum peak",
        "hbm",
        "compiled   in",
        "wrote",
    ] {
        assert!(stdout.contains(want), "missing {want:?} in:\n{stdout}");
    }
    let dumped: Vec<String> = std::fs::read_dir(&dump)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        dumped.iter().any(|n| n.ends_with("-program.txt")),
        "{dumped:?}"
    );
    let art = neuron_isa::Artifact::read(&out).unwrap();
    assert_eq!(art.meta.target.name, "trn2");
    let (code, text, stderr) = run(neuronc().args(["disasm", out.to_str().unwrap()]));
    assert_eq!(code, 0, "{stderr}");
    for want in [
        "; neff format v3",
        "model 'mlp'",
        "weight t1 'w1'",
        "stream 0 tensor",
        "matmul",
        "k0 fc1",
    ] {
        assert!(text.contains(want), "missing {want:?} in disasm");
    }
}

#[test]
fn compile_errors_name_the_target_or_the_node() {
    let (code, _, stderr) = run(neuronc().args([
        "compile",
        example("mlp.json").to_str().unwrap(),
        "--target",
        "trn9",
    ]));
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("unknown target 'trn9'"), "{stderr}");
    let dir = tempfile::tempdir().unwrap();
    let (code, _, stderr) = run(neuronc()
        .current_dir(dir.path())
        .args(["compile", example("resnet_block.json").to_str().unwrap()]));
    // Convolutions lower now (the README's example); a node that cannot be lowered is
    // named by the fusion tests.
    assert_eq!(code, 0, "{stderr}");
}

#[test]
fn disasm_rejects_a_corrupted_artifact() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("m.neff");
    let (code, _, stderr) = run(neuronc().args([
        "compile",
        example("mlp.json").to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
    ]));
    assert_eq!(code, 0, "{stderr}");
    let mut bytes = std::fs::read(&out).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&out, bytes).unwrap();
    let (code, _, stderr) = run(neuronc().args(["disasm", out.to_str().unwrap()]));
    assert_eq!(code, 1);
    assert!(stderr.contains("checksum"), "{stderr}");
}

#[test]
fn compile_int8_takes_calibration_inputs() {
    let dir = tempfile::tempdir().unwrap();
    let npy = dir.path().join("x.npy");
    let x = ndarray::ArrayD::from_shape_fn(ndarray::IxDyn(&[8, 784]), |i| {
        ((i[0] * 784 + i[1]) % 17) as f32 / 4.0
    });
    neuronc::npy::write_npy(&npy, &neuronc::ir::Tensor::F32(x)).unwrap();
    let out = dir.path().join("m.neff");
    let spec = format!("x={}", npy.display());
    let (code, stdout, stderr) = run(neuronc().args([
        "compile",
        example("mlp.json").to_str().unwrap(),
        "--auto-cast-type",
        "int8",
        "--calibrate",
        &spec,
        "-o",
        out.to_str().unwrap(),
    ]));
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("auto_cast_type=int8"), "{stdout}");
    let (code, _, stderr) = run(neuronc().args([
        "compile",
        example("mlp.json").to_str().unwrap(),
        "--calibrate",
        "nope=x.npy",
    ]));
    assert_eq!(code, 2);
    assert!(stderr.contains("no input 'nope'"), "{stderr}");
}
