//! The profile files, written by the library, parsed back and checked against the run.

use crate::checks::*;
use crate::common::*;
use neuron_isa::{Ap, ChipConfig, Dtype, Op, TensorId, TensorKind};
use neuron_runtime::profile::{folded, ps_to_ns};
use neuron_runtime::{Execution, Model, Report, RunOptions, Summary, write_profile};
use serde_json::Value;

fn run(m: &Model) -> Execution {
    let mut b = m.bind();
    b.generate_missing(2).unwrap();
    m.execute(&b, &RunOptions::default()).unwrap()
}

fn read_json(p: &std::path::Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

#[test]
fn profile_files_parse_and_agree_with_the_records() {
    let m = Model::from_artifact(mlp_artifact(256, 6)).unwrap();
    let exec = run(&m);
    let stats = &exec.stats;
    let dir = tempfile::tempdir().unwrap();
    let files = write_profile(&dir.path().join("prof"), &m, stats).unwrap();

    // flame.folded: weights per engine are the engines' busy times in ns.
    let text = std::fs::read_to_string(&files.folded).unwrap();
    let (per_engine, per_kernel) = parse_folded(&text, "mlp");
    for e in &stats.engines {
        assert_eq!(
            per_engine.get(&e.engine.name()).copied().unwrap_or(0),
            ps_to_ns(e.busy_ps),
            "engine {}",
            e.engine
        );
    }
    assert_eq!(per_engine.len(), stats.engines.len());
    let kernels: Vec<&String> = per_kernel.keys().collect();
    assert_eq!(kernels, vec!["fc1", "fc1_relu", "load"]);

    // trace.json: busy time per thread equals the simulator's, slice by slice.
    let trace = read_json(&files.trace);
    let busy = check_trace(&trace, stats.records.len());
    for e in &stats.engines {
        assert_eq!(busy[&e.engine.name()], e.busy_ps, "engine {}", e.engine);
    }
    let hbm = (stats.bytes.hbm_read + stats.bytes.hbm_write) as f64;
    let integral = hbm_counter_bytes(&trace);
    assert!(
        (integral - hbm).abs() <= 1e-6 * hbm,
        "counter integrates to {integral}, moved {hbm}"
    );
    let sbuf_max = trace["traceEvents"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["name"] == "SBUF occupancy (bytes)")
        .map(|e| e["args"]["bytes"].as_u64().unwrap())
        .max()
        .unwrap();
    // The footprints: x tile (bf16) and w in `load`, x, w and the f32 eviction in `fc1`,
    // the eviction and the relu result in `fc1 relu`; all live at once at most.
    let per_part = 256 * 2 + 128 * 2 + 256 * 4 + 256 * 4;
    assert!(sbuf_max <= 128 * per_part, "{sbuf_max}");
    assert!(sbuf_max >= 128 * (256 * 2 + 128 * 2), "{sbuf_max}");

    // flame.svg names the kernels.
    check_svg(
        &std::fs::read_to_string(&files.svg).unwrap(),
        &["fc1", "fc1_relu", "load", "mlp"],
    );

    // summary.json: keys and recomputed figures.
    let s = read_json(&files.summary);
    check_summary(&s, &ChipConfig::trn1(), Dtype::Bf16);
    assert_eq!(s["flops"], 2 * 128 * 128 * 256 * 6);
    assert_eq!(
        s["latency_ns"].as_f64().unwrap(),
        stats.total_ps as f64 / 1000.0
    );
    assert_eq!(s["hbm_read_bytes"], stats.bytes.hbm_read);
    let k = |name: &str| {
        s["kernels"]
            .as_array()
            .unwrap()
            .iter()
            .find(|k| k["name"] == name)
            .unwrap()
            .clone()
    };
    assert_eq!(k("fc1")["bound"], "compute-bound");
    assert_eq!(k("fc1")["bytes"], 0);
    assert_eq!(k("fc1")["flops"], 2 * 128 * 128 * 256 * 6);
    assert_eq!(k("load")["bound"], "memory-bound");
    assert_eq!(k("load")["bytes"], 128 * 256 * 6 * 4 + 128 * 128 * 2);
    assert_eq!(k("fc1 relu")["bytes"], 128 * 256 * 6 * 4);
    let dma = s["engine_active_percent"]["dma"].as_f64().unwrap();
    let dma_max = s["engines"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["engine"].as_str().unwrap().starts_with("dma"))
        .map(|e| e["active_percent"].as_f64().unwrap())
        .fold(0.0, f64::max);
    assert!(
        dma >= dma_max && dma <= 100.0,
        "dma {dma} vs busiest queue {dma_max}"
    );
}

#[test]
fn folded_weights_sum_exactly_over_many_instructions() {
    // Many short instructions: per-instruction rounding would drift; cumulative does not.
    let m = Model::from_artifact(mlp_artifact(16, 40)).unwrap();
    let exec = run(&m);
    let lines = folded::folded_stacks(&m, &exec.stats).unwrap();
    let (per_engine, _) = parse_folded(&(lines.join("\n") + "\n"), "mlp");
    for e in &exec.stats.engines {
        assert_eq!(
            per_engine[&e.engine.name()],
            ps_to_ns(e.busy_ps),
            "{}",
            e.engine
        );
    }
}

#[test]
fn frames_never_hold_spaces_or_semicolons() {
    let mut a = relu_artifact();
    a.meta.model_name = "my model;v2".into();
    a.meta.program.kernels[0].name = "a b;c".into();
    let m = Model::from_artifact(a).unwrap();
    let exec = run(&m);
    let lines = folded::folded_stacks(&m, &exec.stats).unwrap();
    assert!(!lines.is_empty());
    for l in &lines {
        assert!(l.starts_with("my_model_v2;a_b_c;"), "{l}");
    }
}

#[test]
fn spill_traffic_is_counted() {
    let mut a = relu_artifact();
    let p = &mut a.meta.program;
    p.tensors.push(tensor(
        "spill0",
        TensorKind::Scratch,
        &[128, 64],
        Dtype::F32,
    ));
    p.kernels.push(kernel("spill0", "spill", 0));
    let scratch = Ap::hbm_rows(TensorId(2), Dtype::F32, 0, 128, 64, 64);
    let save = instr(
        Op::Dma {
            dst: scratch.clone(),
            src: sb(Dtype::F32, 1024, 64),
        },
        1,
        &[(1, 1)],
        &[],
    );
    let reload = instr(
        Op::Dma {
            dst: sb(Dtype::F32, 4096, 64),
            src: scratch,
        },
        1,
        &[],
        &[],
    );
    p.streams[2].instrs.push(save);
    p.streams[2].instrs.push(reload);
    let m = Model::from_artifact(a).unwrap();
    let exec = run(&m);
    let s = Summary::new(&m, &exec.stats).unwrap();
    assert_eq!(s.spill_save_bytes, 128 * 64 * 4);
    assert_eq!(s.spill_reload_bytes, 128 * 64 * 4);
    assert_eq!(s.spill_bytes, 2 * 128 * 64 * 4);
    // Without spill kernels there is no spill traffic.
    let plain = Model::from_artifact(relu_artifact()).unwrap();
    let s = Summary::new(&plain, &run(&plain).stats).unwrap();
    assert_eq!(s.spill_bytes, 0);
}

#[test]
fn fp32_matmuls_are_measured_against_the_fp32_peak() {
    let mut a = mlp_artifact(64, 2);
    for s in &mut a.meta.program.streams {
        for i in &mut s.instrs {
            match &mut i.op {
                Op::Matmul {
                    stationary, moving, ..
                } => {
                    stationary.dtype = Dtype::F32;
                    moving.dtype = Dtype::F32;
                }
                Op::Dma { dst, .. } if dst.dtype == Dtype::Bf16 => dst.dtype = Dtype::F32,
                _ => {}
            }
        }
    }
    // f32 tiles need twice the SBUF bytes: move the weight past the wider x tile.
    for s in &mut a.meta.program.streams {
        for i in &mut s.instrs {
            let fix = |ap: &mut Ap| {
                if ap.mem == neuron_isa::Memory::Sbuf && ap.offset == 2048 {
                    ap.offset = 3072;
                }
            };
            match &mut i.op {
                Op::Matmul { stationary, .. } => fix(stationary),
                Op::Dma { dst, .. } => fix(dst),
                _ => {}
            }
        }
    }
    let m = Model::from_artifact(a).unwrap();
    let exec = run(&m);
    let s = Summary::new(&m, &exec.stats).unwrap();
    assert_eq!(s.peak_dtype, "f32");
    let v = serde_json::to_value(&s).unwrap();
    check_summary(&v, &ChipConfig::trn1(), Dtype::F32);
}

#[test]
fn report_text_lists_the_headline_figures() {
    let m = Model::from_artifact(mlp_artifact(128, 2)).unwrap();
    let exec = run(&m);
    let r = Report {
        summary: Summary::new(&m, &exec.stats).unwrap(),
        timing_only: false,
        generated_inputs: vec!["x".into()],
    };
    let text = r.to_string();
    for needle in [
        "model mlp on trn1 (batch 4)",
        "latency",
        "throughput",
        "mfu",
        "mbu",
        "tensor",
        "dma",
        "spill",
        "compute-bound",
        "memory-bound",
        "fc1 relu",
        "warnings     none",
    ] {
        assert!(text.contains(needle), "{needle:?} missing from\n{text}");
    }
    let json: Value = serde_json::from_str(&r.to_json().unwrap()).unwrap();
    assert_eq!(json["generated_inputs"][0], "x");
    assert_eq!(json["latency_ns"].as_f64().unwrap(), r.summary.latency_ns);
}

#[test]
fn trace_has_kernel_tracks_semaphore_flows_named_dma_queues_and_versions() {
    let m = Model::from_artifact(mlp_artifact(256, 3)).unwrap();
    let exec = run(&m);
    let trace = neuron_runtime::profile::trace::chrome_trace(&m, &exec.stats).unwrap();
    let events = trace["traceEvents"].as_array().unwrap();
    assert_eq!(trace["otherData"]["tool"], "neuron-sim");
    assert_eq!(trace["otherData"]["schema_version"], 2);
    assert!(trace["otherData"]["tool_version"].is_string());
    let names: Vec<&str> = events
        .iter()
        .filter(|e| e["name"] == "thread_name")
        .map(|e| e["args"]["name"].as_str().unwrap())
        .collect();
    // x tiles are [128, 256] bf16 over all 128 partitions: all 16 DMA engines.
    assert!(
        names.contains(&"dma0 (queue 0, DMA engines 0-15)"),
        "{names:?}"
    );
    assert!(names.contains(&"kernels"), "{names:?}");

    // One kernel slice per kernel, from its first instruction's start to its last end.
    let records = &exec.stats.records;
    let kernel_slices: Vec<&Value> = events.iter().filter(|e| e["cat"] == "kernel").collect();
    assert_eq!(kernel_slices.len(), 3);
    for k in &kernel_slices {
        let idx = k["args"]["index"].as_u64().unwrap() as u32;
        let start = records
            .iter()
            .filter(|r| r.kernel == idx)
            .map(|r| r.start_ps)
            .min()
            .unwrap();
        let end = records
            .iter()
            .filter(|r| r.kernel == idx)
            .map(|r| r.end_ps)
            .max()
            .unwrap();
        assert_eq!(k["ts"].as_f64().unwrap(), start as f64 / 1e6, "{k}");
        assert_eq!(
            k["dur"].as_f64().unwrap(),
            (end - start) as f64 / 1e6,
            "{k}"
        );
    }

    // Flow arrows: one start and one finish per satisfied wait, paired by id, from the
    // signaller's thread to the waiter's, forward in time.
    let waits: usize = records
        .iter()
        .map(|r| {
            let s = &m.artifact().meta.program.streams[r.stream as usize];
            s.instrs[r.index as usize]
                .wait
                .iter()
                .filter(|w| w.count > 0)
                .count()
        })
        .sum();
    let starts: Vec<&Value> = events.iter().filter(|e| e["ph"] == "s").collect();
    let finishes: Vec<&Value> = events.iter().filter(|e| e["ph"] == "f").collect();
    assert_eq!(starts.len(), waits);
    assert_eq!(finishes.len(), waits);
    for (s, f) in starts.iter().zip(&finishes) {
        assert_eq!(s["id"], f["id"]);
        assert_eq!(s["name"], f["name"]);
        assert!(
            s["ts"].as_f64().unwrap() <= f["ts"].as_f64().unwrap(),
            "{s} {f}"
        );
    }
    // The matmul of tile 2 waits for x tile 2 (s0>=2), released by dma0's 2nd load.
    let f = finishes
        .iter()
        .find(|f| f["name"] == "s0>=2" && f["tid"] == 0)
        .unwrap();
    let s = starts.iter().find(|s| s["id"] == f["id"]).unwrap();
    let dma0 = m
        .artifact()
        .meta
        .program
        .streams
        .iter()
        .position(|s| s.engine == neuron_isa::Engine::Dma(0))
        .unwrap();
    assert_eq!(s["tid"], dma0);
    // The whole trace still passes the general checks.
    check_trace(&trace, records.len());
}

#[test]
fn gpsimd_gets_a_track_when_it_runs() {
    let mut a = relu_artifact();
    let p = &mut a.meta.program;
    p.streams.push(neuron_isa::Stream {
        engine: neuron_isa::Engine::GpSimd,
        instrs: vec![instr(
            Op::Memset {
                dst: sb(Dtype::F32, 4096, 64),
                value: 0.0,
            },
            0,
            &[],
            &[],
        )],
    });
    let m = Model::from_artifact(a).unwrap();
    let exec = run(&m);
    let trace = neuron_runtime::profile::trace::chrome_trace(&m, &exec.stats).unwrap();
    let events = trace["traceEvents"].as_array().unwrap();
    let tid = events
        .iter()
        .find(|e| e["name"] == "thread_name" && e["args"]["name"] == "gpsimd")
        .unwrap()["tid"]
        .clone();
    assert!(
        events
            .iter()
            .any(|e| e["ph"] == "X" && e["tid"] == tid && e["name"] == "memset")
    );
}

#[test]
fn matmul_kernels_carry_the_tiling_models_prediction_next_to_the_simulated_time() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let g = neuronc::frontend::load_model(&root.join("examples/bert_layer.json")).unwrap();
    let c = neuronc::driver::compile(&g, &neuronc::options::CompileOptions::default()).unwrap();
    let kernels = &c.artifact.meta.program.kernels;
    let est = &c.artifact.meta.kernel_estimates_ns;
    assert_eq!(est.len(), kernels.len(), "one estimate slot per kernel");
    for (k, e) in kernels.iter().zip(est) {
        assert_eq!(k.kind == "matmul", e.is_some(), "{}: {e:?}", k.name);
    }
    // The estimate survives the artifact format.
    let back = neuron_isa::Artifact::from_bytes(&c.artifact.to_bytes().unwrap()).unwrap();
    assert_eq!(&back.meta.kernel_estimates_ns, est);

    let m = Model::from_artifact(c.artifact).unwrap();
    let opts = RunOptions {
        timing_only: true,
        ..RunOptions::default()
    };
    let mut b = m.bind();
    b.generate_missing(1).unwrap();
    let exec = m.execute(&b, &opts).unwrap();
    let s = Summary::new(&m, &exec.stats).unwrap();
    let mut matmuls = 0;
    for k in &s.kernels {
        if k.kind == "matmul" {
            matmuls += 1;
            let p = k
                .predicted_ns
                .unwrap_or_else(|| panic!("{} has no prediction", k.name));
            // The model is a model: the same order of magnitude as the simulation.
            assert!(
                p > 0.1 * k.time_ns && p < 10.0 * k.time_ns,
                "{}: predicted {p} ns, simulated {} ns",
                k.name,
                k.time_ns
            );
        } else {
            assert_eq!(k.predicted_ns, None, "{}", k.name);
        }
    }
    // The merged query/key/value projection, the output projection and the two FFN
    // matmuls.
    assert!(matmuls >= 4, "{matmuls} matmul kernels");
    let text = Report {
        summary: s,
        timing_only: true,
        generated_inputs: vec![],
    }
    .to_string();
    assert!(text.contains("predicted"), "{text}");
}
