//! `neuron-sim compare A B`: two runs' summaries side by side.
//!
//! Headline figures (latency, MFU, bytes, engine activity) with `B - A` deltas, then the
//! per-kernel time deltas sorted by impact (largest absolute change first; a kernel in
//! only one run counts 0 ns in the other). Rendered as an aligned table, CSV (one
//! `section,name,a,b,delta,delta_percent` row per figure) or JSON.

use crate::error::RuntimeError;
use crate::profile::summary::Summary;
use crate::report::csv_field;
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// One headline figure in both runs.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MetricDelta {
    /// The `summary.json` key (`latency_ns`, `engine_active_percent.tensor`, ...).
    pub metric: String,
    /// Its value in run A.
    pub a: f64,
    /// Its value in run B.
    pub b: f64,
    /// `b - a`.
    pub delta: f64,
    /// `100 * (b - a) / a`, `null` when `a` is 0.
    pub delta_percent: Option<f64>,
}

/// One kernel's time in both runs.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct KernelDelta {
    /// Kernel name.
    pub kernel: String,
    /// Its time in run A, ns (`null` if A has no such kernel).
    pub a_ns: Option<f64>,
    /// Its time in run B, ns (`null` if B has no such kernel).
    pub b_ns: Option<f64>,
    /// `b - a`, a missing side counting 0.
    pub delta_ns: f64,
    /// `100 * delta / a`, `null` when A has no time for it.
    pub delta_percent: Option<f64>,
}

/// Two runs compared.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Comparison {
    /// What A is (its path).
    pub a: String,
    /// What B is.
    pub b: String,
    /// Model and target of each run (`bert_layer on trn1`).
    pub runs: [String; 2],
    /// Headline figures.
    pub metrics: Vec<MetricDelta>,
    /// Kernels, largest absolute time change first.
    pub kernels: Vec<KernelDelta>,
}

fn percent_change(a: f64, b: f64) -> Option<f64> {
    (a != 0.0).then(|| 100.0 * (b - a) / a)
}

/// Reads a `summary.json`, given as the file or as the profile directory holding it.
pub fn load_summary(path: &Path) -> Result<Summary, RuntimeError> {
    let file: PathBuf = if path.is_dir() {
        path.join("summary.json")
    } else {
        path.to_path_buf()
    };
    let text = std::fs::read_to_string(&file).map_err(|e| RuntimeError::io("read", &file, e))?;
    serde_json::from_str(&text).map_err(|e| {
        RuntimeError::Profile(format!(
            "{}: not a neuron-sim summary.json: {e}",
            file.display()
        ))
    })
}

impl Comparison {
    /// Compares run `a` (labelled `la`) with run `b`.
    pub fn new(a: &Summary, la: &str, b: &Summary, lb: &str) -> Comparison {
        let ea = &a.engine_active_percent;
        let eb = &b.engine_active_percent;
        let pairs: Vec<(&str, f64, f64)> = vec![
            ("latency_ns", a.latency_ns, b.latency_ns),
            ("cycles", a.cycles as f64, b.cycles as f64),
            ("throughput_per_s", a.throughput_per_s, b.throughput_per_s),
            ("mfu_percent", a.mfu_percent, b.mfu_percent),
            ("mbu_percent", a.mbu_percent, b.mbu_percent),
            ("flops", a.flops as f64, b.flops as f64),
            (
                "hardware_flops",
                a.hardware_flops as f64,
                b.hardware_flops as f64,
            ),
            (
                "hbm_read_bytes",
                a.hbm_read_bytes as f64,
                b.hbm_read_bytes as f64,
            ),
            (
                "hbm_write_bytes",
                a.hbm_write_bytes as f64,
                b.hbm_write_bytes as f64,
            ),
            ("spill_bytes", a.spill_bytes as f64, b.spill_bytes as f64),
            ("instructions", a.instructions as f64, b.instructions as f64),
            ("engine_active_percent.tensor", ea.tensor, eb.tensor),
            ("engine_active_percent.vector", ea.vector, eb.vector),
            ("engine_active_percent.scalar", ea.scalar, eb.scalar),
            ("engine_active_percent.gpsimd", ea.gpsimd, eb.gpsimd),
            ("engine_active_percent.dma", ea.dma, eb.dma),
            ("insights", a.insights.len() as f64, b.insights.len() as f64),
        ];
        let metrics = pairs
            .into_iter()
            .map(|(m, x, y)| MetricDelta {
                metric: m.to_string(),
                a: x,
                b: y,
                delta: y - x,
                delta_percent: percent_change(x, y),
            })
            .collect();
        let mut times: BTreeMap<&str, (Option<f64>, Option<f64>)> = BTreeMap::new();
        for k in &a.kernels {
            times.entry(k.name.as_str()).or_default().0 = Some(k.time_ns);
        }
        for k in &b.kernels {
            times.entry(k.name.as_str()).or_default().1 = Some(k.time_ns);
        }
        let mut kernels: Vec<KernelDelta> = times
            .into_iter()
            .map(|(name, (x, y))| {
                let delta = y.unwrap_or(0.0) - x.unwrap_or(0.0);
                KernelDelta {
                    kernel: name.to_string(),
                    a_ns: x,
                    b_ns: y,
                    delta_ns: delta,
                    delta_percent: x.and_then(|x| percent_change(x, x + delta)),
                }
            })
            .collect();
        kernels.sort_by(|p, q| {
            q.delta_ns
                .abs()
                .total_cmp(&p.delta_ns.abs())
                .then_with(|| p.kernel.cmp(&q.kernel))
        });
        Comparison {
            a: la.to_string(),
            b: lb.to_string(),
            runs: [
                format!("{} on {}", a.model, a.target),
                format!("{} on {}", b.model, b.target),
            ],
            metrics,
            kernels,
        }
    }

    /// CSV: a header, then one `section,name,a,b,delta,delta_percent` row per headline
    /// figure (`metric`) and per kernel (`kernel`, times in ns; a missing side is empty).
    pub fn to_csv(&self) -> String {
        let mut out = String::from("section,name,a,b,delta,delta_percent\n");
        let opt = |v: Option<f64>| v.map_or_else(String::new, |v| format!("{v}"));
        for m in &self.metrics {
            let _ = writeln!(
                out,
                "metric,{},{},{},{},{}",
                csv_field(&m.metric),
                m.a,
                m.b,
                m.delta,
                opt(m.delta_percent)
            );
        }
        for k in &self.kernels {
            let _ = writeln!(
                out,
                "kernel,{},{},{},{},{}",
                csv_field(&k.kernel),
                opt(k.a_ns),
                opt(k.b_ns),
                k.delta_ns,
                opt(k.delta_percent)
            );
        }
        out
    }

    /// An aligned text table.
    pub fn to_table(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "A: {} ({})", self.a, self.runs[0]);
        let _ = writeln!(out, "B: {} ({})", self.b, self.runs[1]);
        let pct = |p: Option<f64>| p.map_or_else(|| "-".to_string(), |p| format!("{p:+.1}%"));
        let _ = writeln!(
            out,
            "\n{:<30} {:>16} {:>16} {:>16} {:>9}",
            "metric", "A", "B", "B - A", "change"
        );
        for m in &self.metrics {
            let _ = writeln!(
                out,
                "{:<30} {:>16} {:>16} {:>16} {:>9}",
                m.metric,
                num(m.a),
                num(m.b),
                num(m.delta),
                pct(m.delta_percent)
            );
        }
        if !self.kernels.is_empty() {
            let _ = writeln!(
                out,
                "\n{:>12} {:>12} {:>12} {:>9}  kernel (largest change first)",
                "A us", "B us", "B - A us", "change"
            );
            let us = |v: Option<f64>| {
                v.map_or_else(|| "-".to_string(), |v| format!("{:.3}", v / 1000.0))
            };
            for k in &self.kernels {
                let _ = writeln!(
                    out,
                    "{:>12} {:>12} {:>12.3} {:>9}  {}",
                    us(k.a_ns),
                    us(k.b_ns),
                    k.delta_ns / 1000.0,
                    pct(k.delta_percent),
                    k.kernel
                );
            }
        }
        out
    }
}

/// A figure for the table: integers as integers, the rest with 3 decimals.
fn num(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{v:.0}")
    } else {
        format!("{v:.3}")
    }
}
