//! `neuron-sim compare`: known deltas between two summaries, in every format.

use crate::common::*;
use assert_cmd::Command;
use neuron_runtime::compare::{Comparison, load_summary};
use neuron_runtime::{Model, RunOptions, Summary};
use serde_json::Value;
use std::path::Path;

fn summary() -> Summary {
    let m = Model::from_artifact(mlp_artifact(256, 2)).unwrap();
    let mut b = m.bind();
    b.generate_missing(1).unwrap();
    let exec = m.execute(&b, &RunOptions::default()).unwrap();
    Summary::new(&m, &exec.stats).unwrap()
}

/// A and B: B is 1000 ns faster, reads 4096 more bytes, `fc1` takes 300 ns less, `load`
/// 50 ns more, and `gone` only exists in A (500 ns).
fn pair(dir: &Path) -> (Summary, Summary) {
    let mut a = summary();
    let mut gone = a.kernels[0].clone();
    gone.name = "gone".into();
    gone.time_ns = 500.0;
    a.kernels.push(gone);
    let mut b = summary();
    b.kernels.retain(|k| k.name != "gone");
    b.latency_ns = a.latency_ns - 1000.0;
    b.hbm_read_bytes = a.hbm_read_bytes + 4096;
    for k in &mut b.kernels {
        match k.name.as_str() {
            "fc1" => k.time_ns -= 300.0,
            "load" => k.time_ns += 50.0,
            _ => {}
        }
    }
    std::fs::create_dir_all(dir.join("a")).unwrap();
    std::fs::write(
        dir.join("a/summary.json"),
        serde_json::to_string(&a).unwrap(),
    )
    .unwrap();
    std::fs::write(dir.join("b.json"), serde_json::to_string(&b).unwrap()).unwrap();
    (a, b)
}

#[test]
fn deltas_are_exact_and_kernels_sorted_by_impact() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = pair(dir.path());
    // Directories and files load the same summaries.
    // (JSON numbers round-trip to within an ulp.)
    let la = load_summary(&dir.path().join("a")).unwrap();
    let lb = load_summary(&dir.path().join("b.json")).unwrap();
    assert!((la.latency_ns - a.latency_ns).abs() < 1e-9);
    assert!((lb.latency_ns - b.latency_ns).abs() < 1e-9);
    assert_eq!(la.kernels.len(), 4);
    assert_eq!(la.insights.len(), a.insights.len());
    let c = Comparison::new(&a, "a", &b, "b");
    let m = |name: &str| c.metrics.iter().find(|m| m.metric == name).unwrap();
    assert_eq!(m("latency_ns").delta, -1000.0);
    assert_eq!(
        m("latency_ns").delta_percent.unwrap(),
        -100_000.0 / a.latency_ns
    );
    assert_eq!(m("hbm_read_bytes").delta, 4096.0);
    assert_eq!(m("flops").delta, 0.0);
    let names: Vec<&str> = c.kernels.iter().map(|k| k.kernel.as_str()).collect();
    assert_eq!(names, ["gone", "fc1", "load", "fc1 relu"]);
    assert_eq!(c.kernels[0].delta_ns, -500.0);
    assert_eq!(c.kernels[0].b_ns, None);
    assert_eq!(c.kernels[1].delta_ns, -300.0);
    assert_eq!(c.kernels[2].delta_ns, 50.0);
    assert_eq!(c.kernels[3].delta_ns, 0.0);
}

fn neuron_sim() -> Command {
    Command::new(env!("CARGO_BIN_EXE_neuron-sim"))
}

#[test]
fn cli_prints_table_csv_and_json() {
    let dir = tempfile::tempdir().unwrap();
    pair(dir.path());
    let (a, b) = (dir.path().join("a"), dir.path().join("b.json"));
    let out = |format: &str| {
        let o = neuron_sim()
            .arg("compare")
            .arg(&a)
            .arg(&b)
            .args(["--format", format])
            .assert()
            .success()
            .get_output()
            .clone();
        String::from_utf8(o.stdout).unwrap()
    };
    let json: Value = serde_json::from_str(&out("json")).unwrap();
    assert_eq!(json["kernels"][0]["kernel"], "gone");
    let close = |v: &Value, want: f64| (v.as_f64().unwrap() - want).abs() < 1e-6;
    assert!(close(&json["kernels"][1]["delta_ns"], -300.0), "{json}");
    assert_eq!(json["metrics"][0]["metric"], "latency_ns");
    assert!(close(&json["metrics"][0]["delta"], -1000.0), "{json}");

    let csv = out("csv");
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines[0], "section,name,a,b,delta,delta_percent");
    assert!(lines[1].starts_with("metric,latency_ns,"), "{}", lines[1]);
    assert!(csv.contains("\nkernel,gone,500,,-500,-100\n"), "{csv}");

    let table = out("table");
    assert!(table.contains("latency_ns"), "{table}");
    let fc1 = table.lines().find(|l| l.ends_with("  fc1")).unwrap();
    assert!(fc1.contains("-0.300"), "{fc1}");

    // A missing or malformed file: exit 1, naming the file.
    std::fs::write(dir.path().join("bad.json"), "{\"model\": 1}").unwrap();
    for bad in ["missing.json", "bad.json"] {
        let o = neuron_sim()
            .arg("compare")
            .arg(&a)
            .arg(dir.path().join(bad))
            .assert()
            .code(1)
            .get_output()
            .clone();
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains(bad), "{err}");
    }
}
