//! `neuron-sim run` end to end on hand-built artifacts.

use crate::checks::*;
use crate::common::*;
use assert_cmd::Command;
use neuron_isa::{ChipConfig, Dtype};
use serde_json::Value;
use std::path::Path;

fn neuron_sim() -> Command {
    Command::new(env!("CARGO_BIN_EXE_neuron-sim"))
}

fn stdout_json(out: &std::process::Output) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not json ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

fn text(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

#[test]
fn run_writes_outputs_profile_and_summary() {
    let dir = tempfile::tempdir().unwrap();
    let neff = write(dir.path(), "mlp.neff", &mlp_artifact(128, 4));
    let (outs, prof) = (dir.path().join("outs"), dir.path().join("profile"));
    let out = neuron_sim()
        .arg("run")
        .arg(&neff)
        .arg("--output-dir")
        .arg(&outs)
        .arg("--profile")
        .arg(&prof)
        .assert()
        .success()
        .get_output()
        .clone();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("note: input 'x' not given: drawn from the seeded generator (seed 7)"),
        "{stderr}"
    );
    assert!(stdout.contains("model mlp on trn1"), "{stdout}");
    assert!(stdout.contains("latency"), "{stdout}");
    assert!(outs.join("y.npy").is_file());

    let (per_engine, per_kernel) = parse_folded(&text(&prof.join("flame.folded")), "mlp");
    let trace: Value = serde_json::from_str(&text(&prof.join("trace.json"))).unwrap();
    let summary: Value = serde_json::from_str(&text(&prof.join("summary.json"))).unwrap();
    let records = summary["instructions"].as_u64().unwrap() as usize;
    assert_eq!(records, 1 + 5 * 4);
    let busy = check_trace(&trace, records);
    check_svg(&text(&prof.join("flame.svg")), &["fc1", "fc1_relu", "load"]);
    check_summary(&summary, &ChipConfig::trn1(), Dtype::Bf16);
    // The folded weights of each engine add up to its busy time, as summary.json and
    // the trace's slices (independently) report it.
    for e in summary["engines"].as_array().unwrap() {
        let name = e["engine"].as_str().unwrap();
        let busy_ns = e["busy_ns"].as_u64().unwrap();
        assert_eq!(per_engine[name], busy_ns, "{name}");
        assert_eq!(busy[name], e["busy_ps"].as_u64().unwrap(), "{name}");
        assert_eq!(busy_ns, (busy[name] + 500) / 1000);
    }
    assert_eq!(per_kernel.len(), 3);
}

#[test]
fn output_names_are_sanitized() {
    let dir = tempfile::tempdir().unwrap();
    let neff = write(dir.path(), "relu.neff", &relu_artifact());
    let x = ndarray::ArrayD::from_shape_fn(vec![128, 64], |i| i[1] as f32 - 10.0);
    let xf = dir.path().join("x.npy");
    neuron_runtime::npy::write_npy(&xf, &x.clone().into()).unwrap();
    let out = neuron_sim()
        .args(["run", neff.to_str().unwrap(), "--input"])
        .arg(format!("x={}", xf.display()))
        .arg("--output-dir")
        .arg(dir.path().join("o"))
        .assert()
        .success()
        .get_output()
        .clone();
    assert!(!String::from_utf8_lossy(&out.stderr).contains("not given"));
    let y = neuron_runtime::npy::read_npy(&dir.path().join("o").join("out_y_0.npy")).unwrap();
    assert_eq!(y.as_f32().unwrap(), &x.mapv(|v| v.max(0.0)));
}

#[test]
fn json_summary_and_timing_only_latency() {
    let dir = tempfile::tempdir().unwrap();
    let neff = write(dir.path(), "mlp.neff", &mlp_artifact(256, 3));
    let full = neuron_sim()
        .args(["run", neff.to_str().unwrap(), "--json"])
        .assert()
        .success()
        .get_output()
        .clone();
    let full = stdout_json(&full);
    check_summary(&full, &ChipConfig::trn1(), Dtype::Bf16);
    assert_eq!(full["generated_inputs"][0], "x");
    assert_eq!(full["timing_only"], false);
    assert!(full["warnings"]["poisoned_reads"].is_u64());

    let outs = dir.path().join("outs");
    let fast = neuron_sim()
        .args([
            "run",
            neff.to_str().unwrap(),
            "--json",
            "--timing-only",
            "--output-dir",
        ])
        .arg(&outs)
        .assert()
        .success()
        .get_output()
        .clone();
    let stderr = String::from_utf8_lossy(&fast.stderr).to_string();
    let fast = stdout_json(&fast);
    assert_eq!(fast["timing_only"], true);
    assert_eq!(fast["latency_ns"], full["latency_ns"]);
    assert_eq!(fast["engines"], full["engines"]);
    assert!(
        stderr.contains("--timing-only computes no outputs"),
        "{stderr}"
    );
    assert!(!outs.join("y.npy").exists());
}

#[test]
fn rounding_seed_and_race_flags_run() {
    let dir = tempfile::tempdir().unwrap();
    let neff = write(dir.path(), "mlp.neff", &mlp_artifact(64, 2));
    let out = neuron_sim()
        .args([
            "run",
            neff.to_str().unwrap(),
            "--rounding",
            "stochastic",
            "--seed",
            "3",
        ])
        .args(["--check-races", "--target", "trn1"])
        .assert()
        .success()
        .get_output()
        .clone();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("(seed 3)"), "{stderr}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("warnings     none"));
}

#[test]
fn damaged_artifacts_fail_with_exit_code_1() {
    let dir = tempfile::tempdir().unwrap();
    let good = mlp_artifact(64, 1).to_bytes().unwrap();
    let cases: [(&str, Vec<u8>, &str); 3] = [
        ("trunc.neff", good[..good.len() - 9].to_vec(), "truncated"),
        (
            "flip.neff",
            {
                let mut b = good.clone();
                b[200] ^= 4;
                b
            },
            "checksum mismatch",
        ),
        (
            "v9.neff",
            {
                let mut b = good.clone();
                b[8] = 9;
                b
            },
            "format version 9 is not supported",
        ),
    ];
    for (name, bytes, msg) in cases {
        let p = dir.path().join(name);
        std::fs::write(&p, bytes).unwrap();
        let out = neuron_sim()
            .args(["run", p.to_str().unwrap()])
            .assert()
            .code(1)
            .get_output()
            .clone();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.starts_with("error: "), "{stderr}");
        assert!(
            stderr.contains(name) && stderr.contains(msg),
            "{name}: {stderr}"
        );
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
}

#[test]
fn bad_inputs_and_targets_fail_with_exit_code_1() {
    let dir = tempfile::tempdir().unwrap();
    let neff = write(dir.path(), "relu.neff", &relu_artifact());
    let wrong = dir.path().join("wrong.npy");
    neuron_runtime::npy::write_npy(&wrong, &ndarray::ArrayD::<f32>::zeros(vec![2, 2]).into())
        .unwrap();
    let run = |extra: &[&str]| {
        let out = neuron_sim()
            .args(["run", neff.to_str().unwrap()])
            .args(extra)
            .assert()
            .code(1)
            .get_output()
            .clone();
        String::from_utf8_lossy(&out.stderr).to_string()
    };
    let e = run(&["--input", &format!("x={}", wrong.display())]);
    assert!(
        e.contains("wrong.npy") && e.contains("expected shape [128, 64], found [2, 2]"),
        "{e}"
    );
    let e = run(&["--input", "nope=a.npy"]);
    assert!(
        e.contains("unknown input 'nope': the model's inputs are 'x'"),
        "{e}"
    );
    let e = run(&["--input", "x=/missing/x.npy"]);
    assert!(e.contains("/missing/x.npy"), "{e}");
    let e = run(&["--target", "trn2"]);
    assert!(
        e.contains("compiled for target 'trn1', but --target asks for 'trn2'"),
        "{e}"
    );
    // An unknown target name is a usage error (exit 2; the bad-input catalog covers it).
    let e = run(&["--output-dir", "/proc/no/such/dir"]);
    assert!(e.contains("/proc/no/such/dir"), "{e}");
}

#[test]
fn usage_errors_exit_with_code_2() {
    let dir = tempfile::tempdir().unwrap();
    let neff = write(dir.path(), "relu.neff", &relu_artifact());
    let n = neff.to_str().unwrap();
    neuron_sim().assert().code(2);
    neuron_sim().arg("run").assert().code(2);
    neuron_sim()
        .args(["run", n, "--input", "x"])
        .assert()
        .code(2);
    neuron_sim()
        .args(["run", n, "--rounding", "up"])
        .assert()
        .code(2);
    neuron_sim()
        .args(["run", n, "--seed", "-1"])
        .assert()
        .code(2);
    let out = neuron_sim()
        .args(["run", n, "--auto-cast", "all"])
        .assert()
        .code(2)
        .get_output()
        .clone();
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(
        e.contains("--auto-cast applies only when compiling a model.json"),
        "{e}"
    );
    neuron_sim().args(["run", "--help"]).assert().success();
}

fn example(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../examples")
        .join(name)
}

#[test]
fn readme_command_compiles_bert_layer_and_writes_the_profile() {
    let dir = tempfile::tempdir().unwrap();
    let prof = dir.path().join("profile");
    let bert = example("bert_layer.json");
    let out = neuron_sim()
        .arg("run")
        .arg(&bert)
        .arg("--profile")
        .arg(&prof)
        .assert()
        .success()
        .get_output()
        .clone();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("model bert_layer on trn1"), "{stdout}");
    let summary: Value = serde_json::from_str(&text(&prof.join("summary.json"))).unwrap();
    let records = summary["instructions"].as_u64().unwrap() as usize;
    let trace: Value = serde_json::from_str(&text(&prof.join("trace.json"))).unwrap();
    let busy = check_trace(&trace, records);
    let (per_engine, per_kernel) = parse_folded(&text(&prof.join("flame.folded")), "bert_layer");
    for e in summary["engines"].as_array().unwrap() {
        let name = e["engine"].as_str().unwrap();
        assert_eq!(per_engine[name], e["busy_ns"].as_u64().unwrap(), "{name}");
        assert_eq!(busy[name], e["busy_ps"].as_u64().unwrap(), "{name}");
    }
    let kernels: Vec<&str> = per_kernel.keys().map(String::as_str).collect();
    check_svg(&text(&prof.join("flame.svg")), &kernels);
    let peak = Dtype::from_name(summary["peak_dtype"].as_str().unwrap()).unwrap();
    check_summary(&summary, &ChipConfig::trn1(), peak);
    assert!(summary["mfu_percent"].as_f64().unwrap() > 0.0);
    assert!(summary["kernels"].as_array().unwrap().len() >= 5);

    // Timing-only gives the same simulated latency as the full run.
    let fast = neuron_sim()
        .arg("run")
        .arg(&bert)
        .args(["--timing-only", "--json"])
        .assert()
        .success()
        .get_output()
        .clone();
    let fast = stdout_json(&fast);
    assert_eq!(fast["latency_ns"], summary["latency_ns"]);
    assert_eq!(fast["engines"], summary["engines"]);
}

#[test]
fn compiler_flags_reach_the_compiler() {
    let mlp = example("mlp.json");
    let run = |extra: &[&str]| {
        let out = neuron_sim()
            .arg("run")
            .arg(&mlp)
            .args(["--json", "--timing-only"])
            .args(extra)
            .assert()
            .success()
            .get_output()
            .clone();
        stdout_json(&out)
    };
    let default = run(&[]);
    assert_eq!(default["target"], "trn1");
    assert_eq!(default["peak_dtype"], "bf16");
    let fp32 = run(&["--auto-cast", "none", "--target", "trn2"]);
    assert_eq!(fp32["target"], "trn2");
    assert_eq!(fp32["peak_dtype"], "f32");
    check_summary(&fp32, &ChipConfig::trn2(), Dtype::F32);
    let unfused = run(&["--no-fuse"]);
    assert!(
        unfused["kernels"].as_array().unwrap().len() > default["kernels"].as_array().unwrap().len()
    );
    let out = neuron_sim()
        .arg("run")
        .arg(&mlp)
        .args(["--auto-cast", "some"])
        .assert()
        .code(2)
        .get_output()
        .clone();
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(
        e.contains("invalid value 'some' for '--auto-cast <MODE>'")
            && e.contains("[possible values: none, matmult, all]"),
        "{e}"
    );
}

#[test]
fn a_missing_model_json_names_the_file() {
    let out = neuron_sim()
        .args(["run", "/no/such/model.json"])
        .assert()
        .code(1)
        .get_output()
        .clone();
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(e.contains("/no/such/model.json"), "{e}");
    // A model.json with an error names the file and what is wrong.
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.json");
    std::fs::write(&bad, "{\"nodes\": [").unwrap();
    let out = neuron_sim()
        .arg("run")
        .arg(&bad)
        .assert()
        .code(1)
        .get_output()
        .clone();
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(
        e.contains("bad.json") && e.contains("malformed json"),
        "{e}"
    );
}
