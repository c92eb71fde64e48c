//! `neuron-sim bench`: zoo models on each target, timing only.

use assert_cmd::Command;
use serde_json::Value;

fn neuron_sim() -> Command {
    Command::new(env!("CARGO_BIN_EXE_neuron-sim"))
}

#[test]
fn bench_runs_zoo_models_on_each_target() {
    let out = neuron_sim()
        .args([
            "bench",
            "--models",
            "mlp,distilbert",
            "--layers",
            "1",
            "--seq",
            "16",
        ])
        .args([
            "--targets",
            "trn1,trn2",
            "--batch",
            "1,4",
            "--format",
            "json",
        ])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Not a terminal: no progress bar on stderr.
    assert!(!String::from_utf8_lossy(&out.stderr).contains("bench ["));
    let rows: Value = serde_json::from_slice(&out.stdout).unwrap();
    let rows = rows.as_array().unwrap();
    assert_eq!(rows.len(), 2 * 2 * 2);
    for r in rows {
        assert!(r["error"].is_null(), "{r}");
        assert!(r["latency_us"].as_f64().unwrap() > 0.0, "{r}");
        assert!(r["mfu_percent"].as_f64().unwrap() > 0.0, "{r}");
        assert!(r["mbu_percent"].as_f64().unwrap() > 0.0, "{r}");
        assert!(
            ["tensor", "vector", "scalar", "gpsimd", "dma"].contains(&r["bound"].as_str().unwrap())
        );
    }
    // Batch 4 does four times the work of batch 1; trn2 is a different chip.
    let find = |m: &str, t: &str, b: u64| {
        rows.iter()
            .find(|r| r["model"] == m && r["target"] == t && r["batch"] == b)
            .unwrap()
            .clone()
    };
    let (b1, b4) = (find("distilbert", "trn1", 1), find("distilbert", "trn1", 4));
    let g = |r: &Value, k: &str| r[k].as_f64().unwrap();
    assert!((g(&b4, "gflops") - 4.0 * g(&b1, "gflops")).abs() < 1e-3 * g(&b4, "gflops"));
    assert_ne!(
        g(&b1, "latency_us"),
        g(&find("distilbert", "trn2", 1), "latency_us")
    );

    let out = neuron_sim()
        .args([
            "bench",
            "--models",
            "mlp",
            "--targets",
            "trn1",
            "--format",
            "csv",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.starts_with("model,target,batch,seq,latency_us"),
        "{text}"
    );
    assert!(
        text.lines().nth(1).unwrap().starts_with("mlp,trn1,1,"),
        "{text}"
    );
}

#[test]
fn bench_refuses_bad_requests_before_running() {
    for (args, want) in [
        (
            vec!["--models", "bert-huge"],
            "unknown zoo model 'bert-huge'",
        ),
        (
            vec!["--models", "gpt2", "--seq", "5000"],
            "--seq 5000: expected 1 to 1024",
        ),
        (vec!["--models", "mlp", "--batch", "0"], "--batch 0"),
        (
            vec!["--models", "mlp", "--targets", "trn9"],
            "--targets trn9",
        ),
    ] {
        let out = neuron_sim().arg("bench").args(&args).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(want), "{args:?}: {err}");
        assert_ne!(out.status.code(), Some(0), "{args:?}");
    }
    let out = neuron_sim()
        .args(["bench", "--models", "resnet-51"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("resnet50"));
}
