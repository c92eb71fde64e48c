//! `neuron-sim report DIR -o report.html`: one self-contained page from a profile
//! directory.
//!
//! The page is XHTML (well-formed XML, served as HTML) with no external resource: the
//! summary, the insights, the flame graph (`flame.svg` inlined, first of the page's
//! SVGs because inferno's script looks up the document's first `<svg>`), the kernels'
//! roofline and the engines' utilization over time (charts drawn by `plotters` as inline
//! SVG), and the kernel table.

use crate::compare::load_summary;
use crate::error::RuntimeError;
use crate::profile::summary::Summary;
use plotters::prelude::*;
use serde_json::Value;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

/// Time buckets of the utilization chart.
pub const UTILIZATION_BUCKETS: usize = 100;

/// Escapes text for XML content and attribute values.
fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c if c.is_control() && c != '\n' && c != '\t' => {}
            c => out.push(c),
        }
    }
    out
}

fn chart_err(e: impl std::fmt::Display) -> RuntimeError {
    RuntimeError::Profile(format!("chart: {e}"))
}

/// Reads `summary.json`, `flame.svg` and `trace.json` from `dir` and renders the page.
pub fn report_dir(dir: &Path) -> Result<String, RuntimeError> {
    let summary = load_summary(&dir.join("summary.json"))?;
    let svg_path = dir.join("flame.svg");
    let flame =
        std::fs::read_to_string(&svg_path).map_err(|e| RuntimeError::io("read", &svg_path, e))?;
    let trace_path = dir.join("trace.json");
    let trace_text = std::fs::read_to_string(&trace_path)
        .map_err(|e| RuntimeError::io("read", &trace_path, e))?;
    let trace: Value = serde_json::from_str(&trace_text).map_err(|e| {
        RuntimeError::Profile(format!("{}: not a Chrome trace: {e}", trace_path.display()))
    })?;
    render(&summary, &flame, &trace)
}

/// The page for one profile.
pub fn render(summary: &Summary, flame_svg: &str, trace: &Value) -> Result<String, RuntimeError> {
    let s = summary;
    let mut h = String::new();
    let title = format!("{} on {}", s.model, s.target);
    let _ = write!(
        h,
        "<!DOCTYPE html>\n<html xmlns=\"http://www.w3.org/1999/xhtml\" lang=\"en\">\n<head>\n\
         <meta charset=\"utf-8\"/>\n<title>neuron-sim report: {t}</title>\n<style>\n\
         body {{ font-family: sans-serif; margin: 2em; max-width: 1300px; }}\n\
         table {{ border-collapse: collapse; }}\n\
         td, th {{ border: 1px solid #ccc; padding: 2px 8px; text-align: right; }}\n\
         td.l, th.l {{ text-align: left; }}\n\
         li {{ margin-bottom: 0.6em; }}\n .ev {{ color: #444; }}\n .fix {{ color: #064; }}\n\
         </style>\n</head>\n<body>\n<h1>{t}</h1>\n\
         <p>Simulated by {tool} {ver} (schema {schema}). All times are simulated.</p>\n",
        t = esc(&title),
        tool = esc(&s.tool),
        ver = esc(&s.tool_version),
        schema = s.schema_version
    );

    // Summary.
    let e = &s.engine_active_percent;
    let rows: Vec<(&str, String, &str)> = vec![
        ("latency", format!("{:.3}", s.latency_ns / 1000.0), "us"),
        ("cycles", s.cycles.to_string(), "at the base clock"),
        (
            "throughput",
            format!("{:.1}", s.throughput_per_s),
            "inferences/s",
        ),
        ("model FLOPs", s.flops.to_string(), "FLOP"),
        ("MFU", format!("{:.2}", s.mfu_percent), "% of peak"),
        ("MBU", format!("{:.2}", s.mbu_percent), "% of HBM bandwidth"),
        ("HBM read", s.hbm_read_bytes.to_string(), "bytes"),
        ("HBM written", s.hbm_write_bytes.to_string(), "bytes"),
        ("spill", s.spill_bytes.to_string(), "bytes"),
        ("instructions", s.instructions.to_string(), ""),
        ("TensorE active", format!("{:.1}", e.tensor), "%"),
        ("VectorE active", format!("{:.1}", e.vector), "%"),
        ("ScalarE active", format!("{:.1}", e.scalar), "%"),
        ("GpSimd active", format!("{:.1}", e.gpsimd), "%"),
        ("DMA active", format!("{:.1}", e.dma), "%"),
    ];
    h.push_str("<h2>Summary</h2>\n<table id=\"summary\">\n");
    for (k, v, unit) in rows {
        let _ = writeln!(
            h,
            "<tr><th class=\"l\">{}</th><td>{}</td><td class=\"l\">{}</td></tr>",
            esc(k),
            esc(&v),
            esc(unit)
        );
    }
    h.push_str("</table>\n");

    // Insights.
    h.push_str("<h2>Insights</h2>\n");
    if s.insights.is_empty() {
        h.push_str("<p id=\"insights\">No insight: nothing crossed a threshold.</p>\n");
    } else {
        h.push_str("<ol id=\"insights\">\n");
        for i in &s.insights {
            let _ = writeln!(
                h,
                "<li><b>{}</b> <code>[{}]</code>, saves up to {:.3} us<br/>\
                 <span class=\"ev\">evidence: {}</span><br/><span class=\"fix\">fix: {}</span></li>",
                esc(&i.finding),
                i.kind.name(),
                i.saving_ns / 1000.0,
                esc(&i.evidence),
                esc(&i.action)
            );
        }
        h.push_str("</ol>\n");
    }

    // Flame graph: inferno's document without its XML prolog.
    h.push_str("<h2>Flame graph</h2>\n<div id=\"flame\">\n");
    match flame_svg.find("<svg") {
        Some(i) => h.push_str(&flame_svg[i..]),
        None => h.push_str("<p>flame.svg holds no SVG.</p>"),
    }
    h.push_str("\n</div>\n");

    h.push_str("<h2>Roofline</h2>\n<div id=\"roofline\">\n");
    h.push_str(&roofline_svg(s)?);
    h.push_str("\n</div>\n<h2>Engine utilization over time</h2>\n<div id=\"utilization\">\n");
    h.push_str(&utilization_svg(s, trace)?);
    h.push_str("\n</div>\n");

    // Kernels.
    h.push_str(
        "<h2>Kernels</h2>\n<table id=\"kernels\">\n<tr><th class=\"l\">kernel</th><th>time us</th>\
         <th>% of latency</th><th>FLOPs</th><th>HBM bytes</th><th>FLOP/B</th>\
         <th class=\"l\">roofline</th><th class=\"l\">limiter</th></tr>\n",
    );
    for k in &s.kernels {
        let _ = writeln!(
            h,
            "<tr><td class=\"l\">{}</td><td>{:.3}</td><td>{:.1}</td><td>{}</td><td>{}</td>\
             <td>{}</td><td class=\"l\">{}</td><td class=\"l\">{}</td></tr>",
            esc(&k.name),
            k.time_ns / 1000.0,
            if s.latency_ns > 0.0 {
                100.0 * k.time_ns / s.latency_ns
            } else {
                0.0
            },
            k.flops,
            k.bytes,
            k.arithmetic_intensity
                .map_or_else(|| "-".to_string(), |a| format!("{a:.1}")),
            k.bound,
            k.limiter.name()
        );
    }
    h.push_str("</table>\n</body>\n</html>\n");
    Ok(h)
}

/// Kernels as points (arithmetic intensity, achieved FLOP/s) under the roofline
/// `min(peak, intensity x HBM bandwidth)`. Kernels without FLOPs or HBM bytes have no
/// place on a log-log roofline and are listed under the chart instead.
fn roofline_svg(s: &Summary) -> Result<String, RuntimeError> {
    let bw = s.hbm_bandwidth_bytes_per_ns * 1e9; // bytes per s
    let peak = s.peak_flops_per_s.max(1.0);
    let points: Vec<(String, f64, f64)> = s
        .kernels
        .iter()
        .filter_map(|k| {
            let ai = k.arithmetic_intensity?;
            (k.flops > 0 && ai > 0.0 && k.time_ns > 0.0)
                .then(|| (k.name.clone(), ai, k.flops as f64 / (k.time_ns * 1e-9)))
        })
        .collect();
    let ridge = peak / bw.max(1.0);
    let x_min = points
        .iter()
        .map(|p| p.1)
        .fold(ridge / 100.0, f64::min)
        .max(1e-6)
        / 2.0;
    let x_max = points.iter().map(|p| p.1).fold(ridge * 10.0, f64::max) * 2.0;
    let y_min = points
        .iter()
        .map(|p| p.2)
        .fold(peak / 1e4, f64::min)
        .max(1.0)
        / 2.0;
    let y_max = peak * 2.0;
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (900, 460)).into_drawing_area();
        root.fill(&WHITE).map_err(chart_err)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(
                format!(
                    "roofline: {} peak {:.2} TFLOP/s, HBM {:.0} GB/s",
                    s.peak_dtype,
                    peak / 1e12,
                    s.hbm_bandwidth_bytes_per_ns
                ),
                ("sans-serif", 16),
            )
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(70)
            .build_cartesian_2d((x_min..x_max).log_scale(), (y_min..y_max).log_scale())
            .map_err(chart_err)?;
        chart
            .configure_mesh()
            .x_desc("arithmetic intensity (FLOP per HBM byte)")
            .y_desc("achieved FLOP/s")
            .y_label_formatter(&|v| format!("{v:.0e}"))
            .x_label_formatter(&|v| format!("{v:.2}"))
            .draw()
            .map_err(chart_err)?;
        let roof: Vec<(f64, f64)> = (0..=200)
            .map(|i| {
                let x = x_min * (x_max / x_min).powf(f64::from(i) / 200.0);
                (x, (x * bw).min(peak))
            })
            .collect();
        chart
            .draw_series(LineSeries::new(roof, RED.stroke_width(2)))
            .map_err(chart_err)?;
        chart
            .draw_series(
                points
                    .iter()
                    .map(|(_, x, y)| Circle::new((*x, *y), 4, BLUE.filled())),
            )
            .map_err(chart_err)?;
        chart
            .draw_series(
                points
                    .iter()
                    .map(|(n, x, y)| Text::new(n.clone(), (*x, *y), ("sans-serif", 11))),
            )
            .map_err(chart_err)?;
        root.present().map_err(chart_err)?;
    }
    let off: Vec<String> = s
        .kernels
        .iter()
        .filter(|k| !points.iter().any(|p| p.0 == k.name))
        .map(|k| esc(&k.name))
        .collect();
    if !off.is_empty() {
        let _ = write!(
            svg,
            "\n<p>Not on the chart (no matmul FLOPs or no HBM bytes): {}</p>",
            off.join(", ")
        );
    }
    Ok(svg)
}

/// The engines' busy share per time bucket, from the trace's instruction slices: for
/// each engine kind (`dma` is the union over queues) the fraction of each bucket during
/// which it was executing.
pub fn utilization(trace: &Value, latency_ns: f64, buckets: usize) -> BTreeMap<String, Vec<f64>> {
    let mut names: BTreeMap<u64, String> = BTreeMap::new();
    let empty = Vec::new();
    let events = trace["traceEvents"].as_array().unwrap_or(&empty);
    for e in events {
        if e["ph"] == "M" && e["name"] == "thread_name" {
            if let (Some(tid), Some(n)) = (e["tid"].as_u64(), e["args"]["name"].as_str()) {
                let engine = n.split(' ').next().unwrap_or(n);
                let kind = if engine.starts_with("dma") {
                    "dma"
                } else {
                    engine
                };
                names.insert(tid, kind.to_string());
            }
        }
    }
    // Intervals per engine kind, ns.
    let mut intervals: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
    for e in events {
        if e["ph"] != "X" || e["cat"] == "kernel" {
            continue;
        }
        let (Some(tid), Some(ts), Some(dur)) =
            (e["tid"].as_u64(), e["ts"].as_f64(), e["dur"].as_f64())
        else {
            continue;
        };
        if let Some(kind) = names.get(&tid) {
            intervals
                .entry(kind.clone())
                .or_default()
                .push((ts * 1000.0, (ts + dur) * 1000.0));
        }
    }
    let width = if latency_ns > 0.0 {
        latency_ns / buckets as f64
    } else {
        1.0
    };
    let mut out = BTreeMap::new();
    for (kind, mut iv) in intervals {
        iv.sort_by(|a, b| a.0.total_cmp(&b.0));
        // Union first, so overlapping DMA queues count once.
        let mut merged: Vec<(f64, f64)> = Vec::new();
        for (s, e) in iv {
            match merged.last_mut() {
                Some(last) if s <= last.1 => last.1 = last.1.max(e),
                _ => merged.push((s, e)),
            }
        }
        let mut busy = vec![0.0; buckets];
        for (s, e) in merged {
            let first = ((s / width) as usize).min(buckets.saturating_sub(1));
            let last = ((e / width) as usize).min(buckets.saturating_sub(1));
            for (b, v) in busy.iter_mut().enumerate().take(last + 1).skip(first) {
                let lo = b as f64 * width;
                let hi = lo + width;
                *v += (e.min(hi) - s.max(lo)).max(0.0);
            }
        }
        out.insert(
            kind,
            busy.into_iter()
                .map(|b| (100.0 * b / width).min(100.0))
                .collect(),
        );
    }
    out
}

fn utilization_svg(s: &Summary, trace: &Value) -> Result<String, RuntimeError> {
    let util = utilization(trace, s.latency_ns, UTILIZATION_BUCKETS);
    let width_us = s.latency_ns / 1000.0 / UTILIZATION_BUCKETS as f64;
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (900, 360)).into_drawing_area();
        root.fill(&WHITE).map_err(chart_err)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(
                format!("busy share per {width_us:.3} us bucket"),
                ("sans-serif", 16),
            )
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(50)
            .build_cartesian_2d(0.0..(s.latency_ns / 1000.0).max(1e-3), 0.0..105.0)
            .map_err(chart_err)?;
        chart
            .configure_mesh()
            .x_desc("simulated time (us)")
            .y_desc("busy %")
            .draw()
            .map_err(chart_err)?;
        let colors = [
            ("tensor", RED),
            ("vector", BLUE),
            ("scalar", GREEN),
            ("gpsimd", MAGENTA),
            ("dma", BLACK),
        ];
        for (kind, color) in colors {
            let Some(v) = util.get(kind) else { continue };
            let pts: Vec<(f64, f64)> = v
                .iter()
                .enumerate()
                .map(|(i, p)| ((i as f64 + 0.5) * width_us, *p))
                .collect();
            chart
                .draw_series(LineSeries::new(pts, color.stroke_width(2)))
                .map_err(chart_err)?
                .label(kind)
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 16, y)], color.stroke_width(2))
                });
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()
            .map_err(chart_err)?;
        root.present().map_err(chart_err)?;
    }
    Ok(svg)
}
