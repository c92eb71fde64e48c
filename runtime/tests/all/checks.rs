//! Parsers and consistency checks for the four profile files, shared by the library and
//! CLI tests. Each check reads the file as an outside tool would.

use neuron_isa::ChipConfig;
use serde_json::Value;
use std::collections::BTreeMap;

/// Whether `line` matches `^[^ ]+ \d+$`.
fn is_folded_line(line: &str) -> bool {
    match line.rsplit_once(' ') {
        Some((stack, w)) => {
            !stack.is_empty()
                && !stack.contains(' ')
                && !w.is_empty()
                && w.bytes().all(|b| b.is_ascii_digit())
        }
        None => false,
    }
}

/// Parses `flame.folded`: checks every line's format and its four frames, and returns
/// the weight sums per engine frame and per kernel frame.
pub fn parse_folded(
    text: &str,
    model_frame: &str,
) -> (BTreeMap<String, u64>, BTreeMap<String, u64>) {
    let mut per_engine = BTreeMap::new();
    let mut per_kernel = BTreeMap::new();
    assert!(!text.is_empty(), "empty flame.folded");
    for line in text.lines() {
        assert!(is_folded_line(line), "bad folded line: {line:?}");
        let (stack, w) = line.rsplit_once(' ').unwrap();
        let w: u64 = w.parse().unwrap();
        assert!(w > 0, "zero-weight line {line:?}");
        let frames: Vec<&str> = stack.split(';').collect();
        assert_eq!(
            frames.len(),
            4,
            "expected model;kernel;engine;opcode, found {line:?}"
        );
        assert_eq!(frames[0], model_frame, "{line:?}");
        *per_kernel.entry(frames[1].to_string()).or_default() += w;
        *per_engine.entry(frames[2].to_string()).or_default() += w;
    }
    (per_engine, per_kernel)
}

/// Checks `trace.json` and returns, per thread name, the busy time in ps recovered from
/// its slices (which must not overlap).
pub fn check_trace(trace: &Value, records: usize) -> BTreeMap<String, u64> {
    let events = trace["traceEvents"]
        .as_array()
        .expect("traceEvents is an array");
    let mut names = BTreeMap::new();
    for e in events {
        if e["ph"] == "M" && e["name"] == "thread_name" {
            let tid = e["tid"].as_u64().unwrap();
            // DMA queues are `dma0 (queue 0, DMA engines 0-15)`: keyed by the engine name.
            let full = e["args"]["name"].as_str().unwrap();
            let name = full.split(' ').next().unwrap().to_string();
            assert!(
                names.insert(tid, name).is_none(),
                "thread {tid} named twice"
            );
        }
    }
    let mut slices: BTreeMap<u64, Vec<(f64, f64)>> = BTreeMap::new();
    let mut x_count = 0;
    let mut counters: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
    for e in events {
        match e["ph"].as_str().unwrap() {
            "X" if e["cat"] == "kernel" => {
                let tid = e["tid"].as_u64().unwrap();
                assert!(names[&tid].starts_with("kernels"), "{e}");
            }
            "s" | "f" => assert_eq!(e["cat"], "semaphore", "{e}"),
            "X" => {
                x_count += 1;
                let tid = e["tid"].as_u64().unwrap();
                assert!(names.contains_key(&tid), "slice on unnamed thread {tid}");
                let ts = e["ts"].as_f64().unwrap();
                let dur = e["dur"].as_f64().unwrap();
                assert!(ts >= 0.0 && dur >= 0.0);
                let args = &e["args"];
                assert!(args["kernel"].is_string(), "{e}");
                // The disassembly starts with the opcode the slice is named after.
                let name = e["name"].as_str().unwrap();
                assert!(args["operands"].as_str().unwrap().starts_with(name), "{e}");
                assert!(args["bytes"].is_u64(), "{e}");
                slices.entry(tid).or_default().push((ts, dur));
            }
            "C" => {
                let name = e["name"].as_str().unwrap().to_string();
                let args = e["args"].as_object().unwrap();
                assert_eq!(args.len(), 1, "{e}");
                let v = args.values().next().unwrap().as_f64().unwrap();
                assert!(v >= 0.0, "negative counter {e}");
                counters
                    .entry(name)
                    .or_default()
                    .push((e["ts"].as_f64().unwrap(), v));
            }
            "M" => {}
            other => panic!("unexpected event phase {other}"),
        }
    }
    assert_eq!(x_count, records, "one slice per executed instruction");
    let mut busy = BTreeMap::new();
    for (tid, mut s) in slices {
        s.sort_by(|a, b| a.0.total_cmp(&b.0));
        for w in s.windows(2) {
            // One picosecond of slack for the decimal representation.
            assert!(
                w[0].0 + w[0].1 <= w[1].0 + 1e-6,
                "slices overlap on thread {}: {:?} then {:?}",
                names[&tid],
                w[0],
                w[1]
            );
        }
        let ps: u64 = s.iter().map(|&(_, d)| (d * 1e6).round() as u64).sum();
        busy.insert(names[&tid].clone(), ps);
    }
    for name in ["HBM bandwidth (GB/s)", "SBUF occupancy (bytes)"] {
        let c = counters
            .get(name)
            .unwrap_or_else(|| panic!("no counter track {name}"));
        assert!(
            c.windows(2).all(|w| w[0].0 <= w[1].0),
            "{name} not in time order"
        );
        assert!(c.iter().any(|&(_, v)| v > 0.0), "{name} is always zero");
        assert_eq!(c.last().unwrap().1, 0.0, "{name} does not return to zero");
    }
    busy
}

/// The integral of the HBM bandwidth counter, in bytes.
pub fn hbm_counter_bytes(trace: &Value) -> f64 {
    let mut pts: Vec<(f64, f64)> = trace["traceEvents"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["ph"] == "C" && e["name"] == "HBM bandwidth (GB/s)")
        .map(|e| {
            (
                e["ts"].as_f64().unwrap(),
                e["args"]["GB/s"].as_f64().unwrap(),
            )
        })
        .collect();
    pts.sort_by(|a, b| a.0.total_cmp(&b.0));
    // GB/s x us = 1e3 bytes.
    pts.windows(2)
        .map(|w| w[0].1 * (w[1].0 - w[0].0) * 1e3)
        .sum()
}

/// Checks that `flame.svg` is well-formed XML with an `svg` root naming every frame in
/// `names`.
pub fn check_svg(text: &str, names: &[&str]) {
    use quick_xml::Reader;
    use quick_xml::events::Event;
    let mut reader = Reader::from_str(text);
    reader.config_mut().check_end_names = true;
    let mut depth = 0i32;
    let mut root = None;
    loop {
        match reader.read_event() {
            Ok(Event::Start(e)) => {
                if root.is_none() {
                    root = Some(String::from_utf8_lossy(e.name().as_ref()).to_string());
                }
                depth += 1;
            }
            Ok(Event::End(_)) => depth -= 1,
            Ok(Event::Empty(e)) if root.is_none() => {
                root = Some(String::from_utf8_lossy(e.name().as_ref()).to_string());
            }
            Ok(Event::Eof) => break,
            Ok(_) => {}
            Err(e) => panic!(
                "flame.svg is not well-formed at {}: {e}",
                reader.buffer_position()
            ),
        }
    }
    assert_eq!(depth, 0, "unclosed elements in flame.svg");
    assert_eq!(root.as_deref(), Some("svg"));
    for n in names {
        assert!(text.contains(n), "flame.svg does not name {n}");
    }
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9 * a.abs().max(b.abs()).max(1e-9)
}

/// Checks `summary.json`'s keys and recomputes its derived figures from its raw ones and
/// the chip's peaks.
pub fn check_summary(s: &Value, cfg: &ChipConfig, peak_dtype: neuron_isa::Dtype) {
    for key in [
        "latency_ns",
        "flops",
        "mfu_percent",
        "hbm_read_bytes",
        "hbm_write_bytes",
        "mbu_percent",
        "engine_active_percent",
        "kernels",
    ] {
        assert!(s.get(key).is_some(), "summary.json lacks {key}");
    }
    for key in ["tensor", "vector", "scalar", "gpsimd", "dma"] {
        let v = s["engine_active_percent"][key].as_f64().unwrap();
        assert!((0.0..=100.0).contains(&v), "{key} active {v}");
    }
    let latency_ns = s["latency_ns"].as_f64().unwrap();
    assert!(latency_ns > 0.0);
    let flops = s["flops"].as_u64().unwrap() as f64;
    let peak = cfg.peak_flops(peak_dtype);
    assert!(close(s["peak_flops_per_s"].as_f64().unwrap(), peak));
    let mfu = 100.0 * flops / (peak * latency_ns * 1e-9);
    assert!(
        close(s["mfu_percent"].as_f64().unwrap(), mfu),
        "mfu {} vs {mfu}",
        s["mfu_percent"]
    );
    let bytes =
        (s["hbm_read_bytes"].as_u64().unwrap() + s["hbm_write_bytes"].as_u64().unwrap()) as f64;
    let mbu = 100.0 * bytes / (latency_ns * cfg.hbm_bandwidth_bytes_per_ns);
    assert!(
        close(s["mbu_percent"].as_f64().unwrap(), mbu),
        "mbu {} vs {mbu}",
        s["mbu_percent"]
    );
    let batch = s["batch_size"].as_u64().unwrap() as f64;
    assert!(close(
        s["throughput_per_s"].as_f64().unwrap(),
        batch / (latency_ns * 1e-9)
    ));
    // Engine activity agrees with the per-stream busy times.
    let engines = s["engines"].as_array().unwrap();
    for e in engines {
        let name = e["engine"].as_str().unwrap();
        let busy = e["busy_ps"].as_u64().unwrap() as f64;
        assert!(close(
            e["active_percent"].as_f64().unwrap(),
            100.0 * busy / (latency_ns * 1e3)
        ));
        if !name.starts_with("dma") {
            let agg = s["engine_active_percent"][name].as_f64().unwrap();
            assert!(close(agg, 100.0 * busy / (latency_ns * 1e3)), "{name}");
        }
    }
    // Kernels partition the records: their flops and bytes add up to the totals.
    let kernels = s["kernels"].as_array().unwrap();
    let ridge = peak / (cfg.hbm_bandwidth_bytes_per_ns * 1e9);
    assert!(close(
        s["ridge_point_flops_per_byte"].as_f64().unwrap(),
        ridge
    ));
    let (mut kf, mut kb) = (0, 0);
    for k in kernels {
        let (f, b) = (k["flops"].as_u64().unwrap(), k["bytes"].as_u64().unwrap());
        kf += f;
        kb += b;
        let t = k["time_ns"].as_f64().unwrap();
        assert!(t > 0.0 && t <= latency_ns, "{k}");
        let want = if b > 0 && (f as f64) / (b as f64) < ridge {
            "memory-bound"
        } else {
            "compute-bound"
        };
        assert_eq!(k["bound"], want, "{k}");
        assert!(k["name"].is_string());
    }
    assert_eq!(kf, s["hardware_flops"].as_u64().unwrap());
    assert_eq!(kb as f64, bytes);
    let times: Vec<f64> = kernels
        .iter()
        .map(|k| k["time_ns"].as_f64().unwrap())
        .collect();
    assert!(
        times.windows(2).all(|w| w[0] >= w[1]),
        "kernels not longest first"
    );
}
