//! Shared helpers of the benchmarks (`benches/`) and the `fidelity` harness
//! (`src/bin/fidelity.rs`, which regenerates `docs/fidelity.md`).
//!
//! Shared helpers of the benchmarks: generators of large model.json files (BERT-style
//! encoders and GPT-style decoders with seeded weights), so the benches and the
//! measurements in the closing notes need no checked-in multi-gigabyte models.

use std::fmt::Write;

/// Appends one node: name, op, inputs, output, attrs JSON suffix.
type NodeFn<'a> = dyn FnMut(&str, &str, &[&str], &str, &str) + 'a;

/// The shape of a generated transformer.
#[derive(Debug, Clone, Copy)]
pub struct Transformer {
    /// Layers.
    pub layers: usize,
    /// Hidden size.
    pub hidden: usize,
    /// Attention heads (`hidden` must be a multiple).
    pub heads: usize,
    /// Feed-forward size.
    pub ffn: usize,
    /// Sequence length.
    pub seq: usize,
    /// Batch size.
    pub batch: usize,
    /// Causal (decoder) mask and pre-norm instead of post-norm.
    pub decoder: bool,
}

impl Transformer {
    /// BERT-large: 24 layers, hidden 1024, 16 heads, seq 128.
    pub fn bert_large() -> Transformer {
        Transformer {
            layers: 24,
            hidden: 1024,
            heads: 16,
            ffn: 4096,
            seq: 128,
            batch: 1,
            decoder: false,
        }
    }

    /// A 7 B-parameter decoder: 32 layers, hidden 4096, ffn 17408 (6.71 B weights).
    pub fn decoder_7b() -> Transformer {
        Transformer {
            layers: 32,
            hidden: 4096,
            heads: 32,
            ffn: 17408,
            seq: 128,
            batch: 1,
            decoder: true,
        }
    }

    /// Weight parameters (matrices, biases and norms).
    pub fn params(&self) -> u64 {
        let (h, f) = (self.hidden as u64, self.ffn as u64);
        self.layers as u64 * (4 * h * h + 2 * h * f + 4 * h + f + h + 4 * h)
    }

    /// The model.json text (seeded weights, `normal(std 0.02)` matrices).
    pub fn model_json(&self, name: &str) -> String {
        let (b, s, h, nh, f) = (self.batch, self.seq, self.hidden, self.heads, self.ffn);
        let d = h / nh;
        let mut p = String::new();
        let mut n = String::new();
        let mut param = |name: String, shape: &[usize], init: &str| {
            let _ = write!(
                p,
                "{{\"name\":\"{name}\",\"shape\":{shape:?},\"init\":{init}}},"
            );
        };
        let normal = "{\"normal\":{\"std\":0.02}}";
        let mut node = |name: &str, op: &str, ins: &[&str], out: &str, attrs: &str| {
            let ins: Vec<String> = ins.iter().map(|i| format!("\"{i}\"")).collect();
            let _ = write!(
                n,
                "{{\"name\":\"{name}\",\"op\":\"{op}\",\"inputs\":[{}],\"outputs\":[\"{out}\"]{attrs}}},",
                ins.join(",")
            );
        };
        param("attn_scale".into(), &[], "\"ones\"");
        let mut x = "hidden".to_string();
        for l in 0..self.layers {
            let q = |s: &str| format!("l{l}_{s}");
            for w in ["q", "k", "v", "o"] {
                param(q(&format!("{w}_w")), &[h, h], normal);
                param(q(&format!("{w}_b")), &[h], "\"zeros\"");
            }
            param(q("f1_w"), &[h, f], normal);
            param(q("f1_b"), &[f], "\"zeros\"");
            param(q("f2_w"), &[f, h], normal);
            param(q("f2_b"), &[h], "\"zeros\"");
            for g in ["ln1", "ln2"] {
                param(q(&format!("{g}_g")), &[h], "\"ones\"");
                param(q(&format!("{g}_b")), &[h], "\"zeros\"");
            }
            let ln = |node: &mut NodeFn<'_>, g: &str, input: &str, out: &str| {
                node(
                    &q(g),
                    "layer_norm",
                    &[input, &q(&format!("{g}_g")), &q(&format!("{g}_b"))],
                    out,
                    ",\"attrs\":{\"axis\":-1,\"epsilon\":1e-12}",
                );
            };
            let attn_in = if self.decoder {
                ln(&mut node, "ln1", &x, &q("ln1_out"));
                q("ln1_out")
            } else {
                x.clone()
            };
            let split = format!(",\"attrs\":{{\"shape\":[{b},{s},{nh},{d}]}}");
            let perm = ",\"attrs\":{\"perm\":[0,2,1,3]}";
            for w in ["q", "k", "v"] {
                node(
                    &q(&format!("{w}_mm")),
                    "matmul",
                    &[&attn_in, &q(&format!("{w}_w"))],
                    &q(&format!("{w}_mmo")),
                    "",
                );
                node(
                    &q(&format!("{w}_add")),
                    "add",
                    &[&q(&format!("{w}_mmo")), &q(&format!("{w}_b"))],
                    &q(&format!("{w}_lin")),
                    "",
                );
                node(
                    &q(&format!("{w}_split")),
                    "reshape",
                    &[&q(&format!("{w}_lin"))],
                    &q(&format!("{w}_4d")),
                    &split,
                );
                node(
                    &q(&format!("{w}_heads")),
                    "transpose",
                    &[&q(&format!("{w}_4d"))],
                    &q(&format!("{w}_h")),
                    perm,
                );
            }
            node(
                &q("scores"),
                "matmul",
                &[&q("q_h"), &q("k_h")],
                &q("sc"),
                ",\"attrs\":{\"transpose_b\":true}",
            );
            node(&q("scale"), "mul", &[&q("sc"), "attn_scale"], &q("scs"), "");
            node(
                &q("mask"),
                "add",
                &[&q("scs"), "attention_mask"],
                &q("scm"),
                "",
            );
            node(
                &q("probs"),
                "softmax",
                &[&q("scm")],
                &q("pr"),
                ",\"attrs\":{\"axis\":-1}",
            );
            node(&q("ctx"), "matmul", &[&q("pr"), &q("v_h")], &q("ch"), "");
            node(&q("ctx_t"), "transpose", &[&q("ch")], &q("c4"), perm);
            node(
                &q("merge"),
                "reshape",
                &[&q("c4")],
                &q("c"),
                &format!(",\"attrs\":{{\"shape\":[{b},{s},{h}]}}"),
            );
            node(&q("o_mm"), "matmul", &[&q("c"), &q("o_w")], &q("o_mmo"), "");
            node(
                &q("o_add"),
                "add",
                &[&q("o_mmo"), &q("o_b")],
                &q("o_lin"),
                "",
            );
            node(&q("res1"), "add", &[&q("o_lin"), &x], &q("r1"), "");
            let ffn_in = if self.decoder {
                ln(&mut node, "ln2", &q("r1"), &q("ln2_out"));
                q("ln2_out")
            } else {
                ln(&mut node, "ln1", &q("r1"), &q("ln1_out"));
                q("ln1_out")
            };
            node(&q("f1_mm"), "matmul", &[&ffn_in, &q("f1_w")], &q("f1o"), "");
            node(&q("f1_add"), "add", &[&q("f1o"), &q("f1_b")], &q("f1l"), "");
            node(
                &q("gelu"),
                "gelu",
                &[&q("f1l")],
                &q("f1a"),
                ",\"attrs\":{\"approximate\":\"tanh\"}",
            );
            node(
                &q("f2_mm"),
                "matmul",
                &[&q("f1a"), &q("f2_w")],
                &q("f2o"),
                "",
            );
            node(&q("f2_add"), "add", &[&q("f2o"), &q("f2_b")], &q("f2l"), "");
            let res_base = if self.decoder { q("r1") } else { q("ln1_out") };
            node(&q("res2"), "add", &[&q("f2l"), &res_base], &q("r2"), "");
            if self.decoder {
                x = q("r2");
            } else {
                ln(&mut node, "ln2", &q("r2"), &q("out"));
                x = q("out");
            }
        }
        p.pop();
        n.pop();
        format!(
            "{{\"name\":\"{name}\",\"seed\":1,\"inputs\":[{{\"name\":\"hidden\",\"shape\":[{b},{s},{h}],\"dtype\":\"f32\"}},{{\"name\":\"attention_mask\",\"shape\":[{b},1,{s},{s}],\"dtype\":\"f32\"}}],\"params\":[{p}],\"nodes\":[{n}],\"outputs\":[\"{x}\"]}}\n"
        )
    }
}

/// BERT-base encoder: `layers` layers of `examples/bert_layer.json`'s structure (hidden
/// 768, 12 heads of 64, ffn 3072, exact gelu, post-LN), seq 128, `batch` sequences.
pub fn bert_base_json(batch: usize, layers: usize) -> String {
    let (s, h, nh, dh, ff) = (128, 768, 12, 64, 3072);
    let mut params = Vec::new();
    let mut nodes = Vec::new();
    let normal = |n: String, shape: &str| {
        format!(r#"{{"name": "{n}", "shape": {shape}, "init": {{"normal": {{"std": 0.02}}}}}}"#)
    };
    let konst = |n: String, shape: &str, init: &str| {
        format!(r#"{{"name": "{n}", "shape": {shape}, "init": "{init}"}}"#)
    };
    let node = |n: String, op: &str, ins: &[String], out: String, attrs: &str| {
        let ins: Vec<String> = ins.iter().map(|i| format!("\"{i}\"")).collect();
        let attrs = if attrs.is_empty() {
            String::new()
        } else {
            format!(r#", "attrs": {{{attrs}}}"#)
        };
        format!(
            r#"{{"name": "{n}", "op": "{op}", "inputs": [{}], "outputs": ["{out}"]{attrs}}}"#,
            ins.join(", ")
        )
    };
    params.push(format!(
        r#"{{"name": "attn_scale", "shape": [], "value": {}}}"#,
        1.0 / (dh as f64).sqrt()
    ));
    let hh = format!("[{h}, {h}]");
    let hv = format!("[{h}]");
    let mut x = "hidden".to_string();
    for l in 0..layers {
        let p = |n: &str| format!("l{l}_{n}");
        for w in ["q", "k", "v"] {
            params.push(normal(p(&format!("{w}_w")), &hh));
            params.push(konst(p(&format!("{w}_b")), &hv, "zeros"));
            nodes.push(node(
                p(&format!("{w}_proj")),
                "matmul",
                &[x.clone(), p(&format!("{w}_w"))],
                p(&format!("{w}_mm")),
                "",
            ));
            nodes.push(node(
                p(&format!("{w}_bias")),
                "add",
                &[p(&format!("{w}_mm")), p(&format!("{w}_b"))],
                p(&format!("{w}_lin")),
                "",
            ));
            nodes.push(node(
                p(&format!("{w}_split")),
                "reshape",
                &[p(&format!("{w}_lin"))],
                p(&format!("{w}_4d")),
                &format!(r#""shape": [{batch}, {s}, {nh}, {dh}]"#),
            ));
            nodes.push(node(
                p(&format!("{w}_heads_first")),
                "transpose",
                &[p(&format!("{w}_4d"))],
                p(&format!("{w}_heads")),
                r#""perm": [0, 2, 1, 3]"#,
            ));
        }
        params.push(normal(p("attn_out_w"), &hh));
        params.push(konst(p("attn_out_b"), &hv, "zeros"));
        params.push(konst(p("ln1_gamma"), &hv, "ones"));
        params.push(konst(p("ln1_beta"), &hv, "zeros"));
        params.push(normal(p("ffn_in_w"), &format!("[{h}, {ff}]")));
        params.push(konst(p("ffn_in_b"), &format!("[{ff}]"), "zeros"));
        params.push(normal(p("ffn_out_w"), &format!("[{ff}, {h}]")));
        params.push(konst(p("ffn_out_b"), &hv, "zeros"));
        params.push(konst(p("ln2_gamma"), &hv, "ones"));
        params.push(konst(p("ln2_beta"), &hv, "zeros"));
        let n = |a: &str, op: &str, ins: &[String], out: &str, attrs: &str| {
            node(p(a), op, ins, p(out), attrs)
        };
        nodes.push(n(
            "scores",
            "matmul",
            &[p("q_heads"), p("k_heads")],
            "scores_raw",
            r#""transpose_b": true"#,
        ));
        nodes.push(n(
            "scale_scores",
            "mul",
            &[p("scores_raw"), "attn_scale".into()],
            "scores_scaled",
            "",
        ));
        nodes.push(n(
            "apply_mask",
            "add",
            &[p("scores_scaled"), "attention_mask".into()],
            "scores_masked",
            "",
        ));
        nodes.push(n(
            "attn_probs",
            "softmax",
            &[p("scores_masked")],
            "probs",
            r#""axis": -1"#,
        ));
        nodes.push(n(
            "context",
            "matmul",
            &[p("probs"), p("v_heads")],
            "ctx_heads",
            "",
        ));
        nodes.push(n(
            "context_seq_first",
            "transpose",
            &[p("ctx_heads")],
            "ctx_4d",
            r#""perm": [0, 2, 1, 3]"#,
        ));
        nodes.push(n(
            "merge_heads",
            "reshape",
            &[p("ctx_4d")],
            "ctx",
            &format!(r#""shape": [{batch}, {s}, {h}]"#),
        ));
        nodes.push(n(
            "attn_out_proj",
            "matmul",
            &[p("ctx"), p("attn_out_w")],
            "attn_mm",
            "",
        ));
        nodes.push(n(
            "attn_out_bias",
            "add",
            &[p("attn_mm"), p("attn_out_b")],
            "attn_out",
            "",
        ));
        nodes.push(n(
            "attn_residual",
            "add",
            &[p("attn_out"), x.clone()],
            "attn_res",
            "",
        ));
        nodes.push(n(
            "ln1",
            "layer_norm",
            &[p("attn_res"), p("ln1_gamma"), p("ln1_beta")],
            "ln1_out",
            r#""axis": -1, "epsilon": 1e-12"#,
        ));
        nodes.push(n(
            "ffn_in",
            "matmul",
            &[p("ln1_out"), p("ffn_in_w")],
            "ffn_mm1",
            "",
        ));
        nodes.push(n(
            "ffn_in_bias",
            "add",
            &[p("ffn_mm1"), p("ffn_in_b")],
            "ffn_h",
            "",
        ));
        nodes.push(n(
            "ffn_act",
            "gelu",
            &[p("ffn_h")],
            "ffn_a",
            r#""approximate": "none""#,
        ));
        nodes.push(n(
            "ffn_out",
            "matmul",
            &[p("ffn_a"), p("ffn_out_w")],
            "ffn_mm2",
            "",
        ));
        nodes.push(n(
            "ffn_out_bias",
            "add",
            &[p("ffn_mm2"), p("ffn_out_b")],
            "ffn_o",
            "",
        ));
        nodes.push(n(
            "ffn_residual",
            "add",
            &[p("ffn_o"), p("ln1_out")],
            "ffn_res",
            "",
        ));
        nodes.push(n(
            "ln2",
            "layer_norm",
            &[p("ffn_res"), p("ln2_gamma"), p("ln2_beta")],
            "layer_out",
            r#""axis": -1, "epsilon": 1e-12"#,
        ));
        x = p("layer_out");
    }
    format!(
        r#"{{"name": "bert_base", "seed": 42,
  "inputs": [{{"name": "hidden", "shape": [{batch}, {s}, {h}], "dtype": "f32"}},
             {{"name": "attention_mask", "shape": [{batch}, 1, 1, {s}], "dtype": "f32"}}],
  "params": [{}],
  "nodes": [{}],
  "outputs": ["{x}"]}}"#,
        params.join(",\n    "),
        nodes.join(",\n    ")
    )
}

/// A matmul `[m, k] @ [k, n]` with both operands as inputs of `dtype` (`"bf16"` or
/// `"f32"`; f32 operands are auto-cast to bf16 by the default compile options).
pub fn gemm_json(m: usize, k: usize, n: usize, dtype: &str) -> String {
    format!(
        r#"{{"name": "gemm", "seed": 1,
  "inputs": [{{"name": "a", "shape": [{m}, {k}], "dtype": "{dtype}"}},
             {{"name": "b", "shape": [{k}, {n}], "dtype": "{dtype}"}}],
  "params": [],
  "nodes": [{{"name": "mm", "op": "matmul", "inputs": ["a", "b"], "outputs": ["y"]}}],
  "outputs": ["y"]}}"#
    )
}

/// One compiled-code quality case of issue 11: a model compiled for trn1 with the default
/// options (matmuls auto-cast to bf16), whose simulated MFU is compared with a target.
pub struct QualityCase {
    /// Short name (also the criterion benchmark id).
    pub name: &'static str,
    /// What it is, for tables.
    pub what: &'static str,
    /// The model.json.
    pub json: String,
    /// Target MFU, percent of TensorE's bf16 peak.
    pub target_percent: f64,
}

/// The cases: 4096x8192x8192 GEMM with bf16 inputs (>= 88%) and fp32 inputs auto-cast
/// (>= 85%), 2048^3 bf16 (>= 80%), BERT-base seq 128 batch 16 (>= 50%).
pub fn quality_cases() -> Vec<QualityCase> {
    vec![
        QualityCase {
            name: "gemm_4096x8192x8192_bf16",
            what: "GEMM 4096×8192 @ 8192×8192, bf16 inputs",
            json: gemm_json(4096, 8192, 8192, "bf16"),
            target_percent: 88.0,
        },
        QualityCase {
            name: "gemm_4096x8192x8192_f32_autocast",
            what: "GEMM 4096×8192 @ 8192×8192, fp32 inputs auto-cast to bf16",
            json: gemm_json(4096, 8192, 8192, "f32"),
            target_percent: 85.0,
        },
        QualityCase {
            name: "gemm_2048_bf16",
            what: "GEMM 2048×2048 @ 2048×2048, bf16 inputs",
            json: gemm_json(2048, 2048, 2048, "bf16"),
            target_percent: 80.0,
        },
        QualityCase {
            name: "bert_base_seq128_b16",
            what: "BERT-base seq 128 batch 16 (12 layers)",
            json: bert_base_json(16, 12),
            target_percent: 50.0,
        },
    ]
}

/// A compiled model's simulated figures.
#[derive(Debug, Clone, Copy)]
pub struct Quality {
    /// Simulated latency, ms.
    pub latency_ms: f64,
    /// Model FLOPs over (bf16 TensorE peak x latency), percent.
    pub mfu_percent: f64,
    /// Instructions in the program.
    pub instructions: usize,
}

/// Compiles model.json text for `cfg` (default options: matmuls auto-cast to bf16) and
/// simulates it timing-only; the MFU is against `cfg`'s bf16 TensorE peak.
pub fn simulated_quality(json: &str, cfg: &neuron_isa::ChipConfig) -> Result<Quality, String> {
    let graph = neuronc::frontend::parse_model(json, std::path::Path::new("."))
        .map_err(|e| e.to_string())?;
    let opts = neuronc::options::CompileOptions {
        target: cfg.clone(),
        auto_cast: neuronc::options::AutoCast::Matmult,
        ..neuronc::options::CompileOptions::default()
    };
    let compiled = neuronc::driver::compile(&graph, &opts).map_err(|e| e.to_string())?;
    let meta = &compiled.artifact.meta;
    let sim_opts = neuron_sim::SimOptions {
        timing_only: true,
        ..neuron_sim::SimOptions::default()
    };
    let mut sim =
        neuron_sim::Simulator::new(&meta.program, cfg, sim_opts).map_err(|e| e.to_string())?;
    let stats = sim.run().map_err(|e| e.to_string())?;
    let secs = stats.total_ps.max(1) as f64 * 1e-12;
    Ok(Quality {
        latency_ms: secs * 1e3,
        mfu_percent: 100.0 * meta.model_flops as f64
            / (cfg.peak_flops(neuron_isa::Dtype::Bf16) * secs),
        instructions: meta.program.instruction_count(),
    })
}
