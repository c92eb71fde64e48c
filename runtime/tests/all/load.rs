//! Loading and verifying artifacts: good files load, damaged ones fail with a clear
//! message and never a panic.

use crate::common::*;
use neuron_isa::{Dtype, TensorId};
use neuron_runtime::{Model, RuntimeError};

fn load_err(bytes: &[u8]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("bad.neff");
    std::fs::write(&p, bytes).unwrap();
    let e = Model::load(&p).unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.contains("bad.neff"),
        "message does not name the file: {msg}"
    );
    msg
}

#[test]
fn loads_a_good_artifact_and_describes_it() {
    let dir = tempfile::tempdir().unwrap();
    let p = write(dir.path(), "mlp.neff", &mlp_artifact(64, 2));
    let m = Model::load(&p).unwrap();
    assert_eq!(m.name(), "mlp");
    assert_eq!(m.target().name, "trn1");
    let ins = m.inputs();
    assert_eq!(ins.len(), 1);
    assert_eq!((ins[0].name.as_str(), ins[0].dtype), ("x", Dtype::F32));
    assert_eq!(ins[0].shape, vec![128, 128]);
    let outs = m.outputs();
    assert_eq!((outs[0].name.as_str(), outs[0].id), ("y", TensorId(2)));
}

#[test]
fn truncated_file_is_refused() {
    let bytes = mlp_artifact(64, 1).to_bytes().unwrap();
    let msg = load_err(&bytes[..bytes.len() / 2]);
    assert!(msg.contains("truncated"), "{msg}");
    assert!(
        msg.contains(&format!("expected {} bytes", bytes.len())),
        "{msg}"
    );
    let msg = load_err(&bytes[..10]);
    assert!(msg.contains("truncated"), "{msg}");
    // Every prefix fails cleanly.
    for len in (0..bytes.len()).step_by(7) {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t.neff");
        std::fs::write(&p, &bytes[..len]).unwrap();
        assert!(Model::load(&p).is_err(), "prefix of {len} bytes loaded");
    }
}

#[test]
fn bit_flip_in_payload_is_a_checksum_error() {
    let mut bytes = mlp_artifact(64, 1).to_bytes().unwrap();
    let at = bytes.len() - 100;
    bytes[at] ^= 0x10;
    let msg = load_err(&bytes);
    assert!(msg.contains("checksum mismatch"), "{msg}");
    assert!(msg.contains("corrupted"), "{msg}");
}

#[test]
fn every_single_bit_flip_fails() {
    let good = relu_artifact().to_bytes().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("f.neff");
    for i in 0..good.len() {
        let mut bytes = good.clone();
        bytes[i] ^= 1 << (i % 8);
        std::fs::write(&p, &bytes).unwrap();
        assert!(Model::load(&p).is_err(), "flipping byte {i} went unnoticed");
    }
}

#[test]
fn newer_format_version_is_refused() {
    let mut bytes = relu_artifact().to_bytes().unwrap();
    bytes[8..12].copy_from_slice(&4u32.to_le_bytes());
    let msg = load_err(&bytes);
    assert!(msg.contains("format version 4 is not supported"), "{msg}");
    assert!(msg.contains("versions 1 to 3"), "{msg}");
}

#[test]
fn timing_only_load_reads_no_weight_byte() {
    let dir = tempfile::tempdir().unwrap();
    let art = mlp_artifact(64, 2);
    assert!(!art.blob.is_empty());
    let p = write(dir.path(), "mlp.neff", &art);
    // Corrupt the last weight byte: a full load refuses it, a load without weights never
    // reads it, and the program runs timing-only with the same cycles.
    let mut bytes = std::fs::read(&p).unwrap();
    *bytes.last_mut().unwrap() ^= 0x5a;
    let bad = dir.path().join("bad.neff");
    std::fs::write(&bad, &bytes).unwrap();
    assert!(Model::load(&bad).is_err());
    let light = Model::load_without_weights(&bad).unwrap();
    assert!(!light.has_weights() && light.artifact().blob.is_empty());
    let full = Model::load(&p).unwrap();
    let timing = neuron_runtime::RunOptions {
        timing_only: true,
        ..Default::default()
    };
    let run = |m: &Model, opts: &neuron_runtime::RunOptions| {
        let mut b = m.bind();
        b.generate_missing(1).unwrap();
        m.execute(&b, opts).map(|e| e.stats.total_ps)
    };
    assert_eq!(run(&light, &timing).unwrap(), run(&full, &timing).unwrap());
    let e = run(&light, &neuron_runtime::RunOptions::default()).unwrap_err();
    assert!(e.to_string().contains("without its weights"), "{e}");
}

#[test]
fn wrong_magic_is_refused() {
    let mut bytes = relu_artifact().to_bytes().unwrap();
    bytes[0] = b'X';
    let msg = load_err(&bytes);
    assert!(msg.contains("not a .neff artifact"), "{msg}");
    let msg = load_err(b"{\"nodes\": []}\n");
    assert!(
        msg.contains("truncated") || msg.contains("not a .neff"),
        "{msg}"
    );
}

#[test]
fn missing_file_names_the_path() {
    let e = Model::load(std::path::Path::new("/nonexistent/model.neff")).unwrap_err();
    let msg = e.to_string();
    assert!(msg.contains("/nonexistent/model.neff"), "{msg}");
    assert!(matches!(e, RuntimeError::Artifact { .. }));
}

#[test]
fn invalid_target_is_refused() {
    let mut a = relu_artifact();
    a.meta.target.hbm_bandwidth_bytes_per_ns = 0.0;
    let msg = Model::from_artifact(a).unwrap_err().to_string();
    assert!(msg.contains("artifact target 'trn1' is invalid"), "{msg}");
    assert!(msg.contains("hbm_bandwidth_bytes_per_ns"), "{msg}");
}

#[test]
fn programs_failing_verification_and_missing_weights_are_refused() {
    let mut a = relu_artifact();
    a.meta.program.streams[1].instrs[0].kernel = 5;
    let msg = Model::from_artifact(a).unwrap_err().to_string();
    assert!(
        msg.starts_with("invalid program in artifact: scalar instruction 0"),
        "{msg}"
    );
    assert!(msg.contains("kernel index 5 out of range"), "{msg}");

    // An ISA rule: TensorE cannot run an activation.
    let mut a = relu_artifact();
    a.meta.program.streams[1].engine = neuron_isa::Engine::Tensor;
    let msg = Model::from_artifact(a).unwrap_err().to_string();
    assert!(
        msg.contains("tensor instruction 0 (stream 1, activation)"),
        "{msg}"
    );

    let mut a = mlp_artifact(64, 1);
    a.meta.weights.clear();
    let msg = Model::from_artifact(a).unwrap_err().to_string();
    assert!(msg.contains("weight tensor 'w' (t1) has no bytes"), "{msg}");

    let mut a = relu_artifact();
    a.meta.program.tensors[1].name = "x".into();
    let msg = Model::from_artifact(a).unwrap_err().to_string();
    assert!(msg.contains("two inputs or outputs are named 'x'"), "{msg}");
}
