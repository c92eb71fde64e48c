//! `neuron-sim run --set` (chip overrides without a TOML file) and `--format csv`.

use crate::common::*;
use assert_cmd::Command;
use serde_json::Value;
use std::path::{Path, PathBuf};

fn neuron_sim() -> Command {
    Command::new(env!("CARGO_BIN_EXE_neuron-sim"))
}

fn example(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../examples")
        .join(name)
}

fn run_json(args: &[&str]) -> Value {
    let out = neuron_sim()
        .args(args)
        .args(["--json", "--timing-only"])
        .assert()
        .success()
        .get_output()
        .clone();
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn set_gives_the_timing_of_the_same_toml_file_bit_for_bit() {
    let dir = tempfile::tempdir().unwrap();
    let toml = dir.path().join("big.toml");
    std::fs::write(
        &toml,
        "base = \"trn1\"\nhbm_bandwidth_bytes_per_ns = 200\nsbuf_bytes_per_partition = 262144\n",
    )
    .unwrap();
    let mlp = example("mlp.json");
    let mlp = mlp.to_str().unwrap();
    let file = run_json(&["run", mlp, "--target", toml.to_str().unwrap()]);
    let set = run_json(&[
        "run",
        mlp,
        "--set",
        "hbm_bandwidth_bytes_per_ns=200",
        "--set",
        "sbuf_bytes_per_partition=262144",
    ]);
    let base = run_json(&["run", mlp]);
    for key in [
        "latency_ns",
        "cycles",
        "engines",
        "kernels",
        "hbm_bandwidth_bytes_per_ns",
    ] {
        assert_eq!(set[key], file[key], "{key}");
    }
    assert_eq!(set["hbm_bandwidth_bytes_per_ns"], 200.0);
    assert_ne!(
        set["latency_ns"], base["latency_ns"],
        "the override changed nothing"
    );

    // On a compiled .neff the program stays, the chip changes.
    let neff = write(dir.path(), "mlp.neff", &mlp_artifact(256, 6));
    let neff = neff.to_str().unwrap();
    let slow = run_json(&["run", neff, "--set", "hbm_bandwidth_bytes_per_ns=50"]);
    let fast = run_json(&["run", neff]);
    assert!(
        slow["latency_ns"].as_f64().unwrap() > fast["latency_ns"].as_f64().unwrap(),
        "{} vs {}",
        slow["latency_ns"],
        fast["latency_ns"]
    );
}

#[test]
fn bad_set_values_are_usage_errors_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let neff = write(dir.path(), "mlp.neff", &mlp_artifact(64, 1));
    for (arg, want) in [
        ("hbm_gbps=1", "unknown field `hbm_gbps`"),
        ("dma_engines=0", "`dma_engines`: expected 1..=128, found 0"),
        ("hbm_bandwidth_bytes_per_ns", "expected FIELD=VALUE"),
    ] {
        let out = neuron_sim()
            .args(["run", neff.to_str().unwrap(), "--set", arg])
            .assert()
            .code(2)
            .get_output()
            .clone();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(want), "{arg}: {err}");
    }
}

#[test]
fn csv_rows_append_under_one_header() {
    let dir = tempfile::tempdir().unwrap();
    let neff = write(dir.path(), "mlp.neff", &mlp_artifact(256, 4));
    let table = dir.path().join("sweep.csv");
    for bw in ["100", "200", "410"] {
        neuron_sim()
            .args([
                "run",
                neff.to_str().unwrap(),
                "--timing-only",
                "--format",
                "csv",
            ])
            .args(["--set", &format!("hbm_bandwidth_bytes_per_ns={bw}")])
            .arg("--append")
            .arg(&table)
            .assert()
            .success();
    }
    let text = std::fs::read_to_string(&table).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 4, "{text}");
    let header: Vec<&str> = lines[0].split(',').collect();
    assert_eq!(header[0], "file");
    let col = |name: &str| header.iter().position(|h| *h == name).unwrap();
    let latency: Vec<f64> = lines[1..]
        .iter()
        .map(|l| {
            l.split(',')
                .nth(col("latency_ns"))
                .unwrap()
                .parse()
                .unwrap()
        })
        .collect();
    assert!(
        latency[0] > latency[1] && latency[1] > latency[2],
        "{latency:?}"
    );
    assert_eq!(
        lines[1].split(',').nth(col("settings")).unwrap(),
        "hbm_bandwidth_bytes_per_ns=100"
    );
    for l in &lines[1..] {
        assert_eq!(l.split(',').count(), header.len(), "{l}");
    }

    // Without --append: header and row on stdout.
    let out = neuron_sim()
        .args([
            "run",
            neff.to_str().unwrap(),
            "--timing-only",
            "--format",
            "csv",
        ])
        .assert()
        .success()
        .get_output()
        .clone();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(stdout.lines().count(), 2, "{stdout}");
    assert_eq!(stdout.lines().next().unwrap(), lines[0]);
    // --append without csv is a usage error.
    neuron_sim()
        .args(["run", neff.to_str().unwrap(), "--append"])
        .arg(&table)
        .assert()
        .code(2);
}

/// An architect's sweep: faster DMA engines, each time with the program compiled for them,
/// never give a slower BERT layer. (The matmul tiling once sized W's ring slots for chunks
/// of 5 of 6 k-tiles at 33 B/ns, so W no longer fit whole, lost its prefetch behind the
/// previous kernels and the layer got 5% slower than at 17 B/ns.)
#[test]
fn faster_dma_engines_never_make_the_bert_layer_slower() {
    let layer = example("bert_layer.json");
    let layer = layer.to_str().unwrap();
    let latency: Vec<f64> = ["17", "25", "33", "50"]
        .iter()
        .map(|r| {
            let set = format!("dma_engine_bytes_per_ns={r}");
            run_json(&["run", layer, "--set", &set])["latency_ns"]
                .as_f64()
                .unwrap()
        })
        .collect();
    assert!(latency.windows(2).all(|w| w[1] <= w[0]), "{latency:?}");
    assert!(latency[2] < 0.95 * latency[0], "{latency:?}");
}
