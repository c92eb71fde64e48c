//! Shared helpers of the benchmarks (`benches/`) and the `fidelity` harness
//! (`src/bin/fidelity.rs`, which regenerates `docs/fidelity.md`).

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
