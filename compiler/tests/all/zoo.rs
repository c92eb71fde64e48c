//! The model zoo: parameter counts and FLOPs against the published architectures, every
//! model loads through the frontend at reduced size, small ones run on the reference
//! executor, T5's relative position buckets match the published formula, and bad
//! requests are refused with clear errors.

#![allow(clippy::unwrap_used)]

use std::path::Path;

use assert_cmd::Command;
use neuronc::frontend::parse_model;
use neuronc::ir::Tensor;
use neuronc::options::CompileOptions;
use neuronc::reference::{RefOptions, random_input, run_reference_all};
use neuronc::zoo::{self, ZooError, ZooOptions};

fn small(name: &str) -> ZooOptions {
    let vision = matches!(name, "vit-b16" | "resnet50");
    ZooOptions {
        batch: Some(2),
        seq: (!vision && name != "mlp").then_some(16),
        image: vision.then_some((32, 32)),
        layers: Some(1),
        vocab: (!vision && name != "mlp").then_some(64),
    }
}

/// Published parameter counts (millions) and the tolerance the count must meet.
/// Sources: the papers and model cards named in each zoo file (BERT 110M/340M, DistilBERT
/// 66M, GPT-2 124M/355M, T5 60M/220M, ViT-B/16 86M, ResNet-50 25.6M, Llama 3.2 1B 1.23B).
const PUBLISHED: &[(&str, f64)] = &[
    ("bert-base", 110.0),
    ("bert-large", 340.0),
    ("distilbert", 66.0),
    ("gpt2", 124.0),
    ("gpt2-medium", 355.0),
    ("t5-small", 60.0),
    ("t5-base", 220.0),
    ("vit-b16", 86.0),
    ("resnet50", 25.6),
    ("llama-1b", 1230.0),
    ("mlp", 0.407),
];

#[test]
fn parameter_counts_match_the_published_architectures() {
    assert_eq!(PUBLISHED.len(), zoo::entries().len());
    for &(name, m) in PUBLISHED {
        // Parameter counts do not depend on the sequence length: build short.
        let opts = ZooOptions {
            seq: (!matches!(name, "vit-b16" | "resnet50" | "mlp")).then_some(8),
            ..ZooOptions::default()
        };
        let got = zoo::build(name, &opts).unwrap().params as f64 / 1e6;
        // The published figures are rounded (BERT-large's "340M" is 335M, T5-base's
        // "220M" is 222.9M); the exact counts below pin the rest.
        let tol = 0.02;
        assert!(
            (got - m).abs() <= tol * m + 0.001,
            "{name}: {got:.2}M parameters, published {m}M"
        );
    }
    // Exact counts where the architecture fixes every tensor.
    let exact = |n: &str| zoo::build(n, &ZooOptions::default()).unwrap().params;
    assert_eq!(exact("mlp"), 784 * 512 + 512 + 512 * 10 + 10);
    assert_eq!(exact("resnet50"), 25_557_032); // torchvision resnet50 (running stats excluded)
    assert_eq!(exact("gpt2"), 124_439_808); // Hugging Face gpt2, tied head
    assert_eq!(exact("t5-small"), 60_506_624); // Hugging Face t5-small, tied head
    assert_eq!(exact("bert-base"), 109_482_240); // Hugging Face bert-base-uncased with pooler
}

#[test]
fn flops_match_published_and_analytic_figures() {
    let macs = |n: &str, o: ZooOptions| zoo::build(n, &o).unwrap().macs as f64 / 1e9;
    // ResNet-50: 4.1 GMACs at 224x224 (He et al. 2016 table 1: "3.8 x 10^9 FLOPs" for v1;
    // torchvision's v1.5 with the stride on the 3x3 convolution: 4.09 GMACs).
    let r = macs("resnet50", ZooOptions::default());
    assert!((r - 4.09).abs() < 0.03, "resnet50 {r} GMACs");
    // ViT-B/16: 17.6 G multiply-adds at 224 (Dosovitskiy et al. table 6 counts 17.6).
    let v = macs("vit-b16", ZooOptions::default());
    assert!((v - 17.6).abs() < 0.2, "vit-b16 {v} GMACs");
    // Encoders: 12 L h^2 S (projections and FFN) + 2 L S^2 h (scores and context) + the
    // pooler; BERT-base at S = 128.
    let (l, h, s) = (12.0, 768.0, 128.0);
    let want = (12.0 * l * h * h * s + 2.0 * l * s * s * h + h * h) / 1e9;
    let b = macs("bert-base", ZooOptions::default());
    assert!((b - want).abs() < 1e-6 * want, "bert-base {b} vs {want}");
    // Batch scales work linearly; sequence length quadratically in attention.
    let b4 = macs(
        "bert-base",
        ZooOptions {
            batch: Some(4),
            ..ZooOptions::default()
        },
    );
    assert!((b4 - 4.0 * b).abs() < 1e-9 * b4);
    assert_eq!(
        zoo::build("mlp", &ZooOptions::default()).unwrap().flops(),
        2 * (784 * 512 + 512 * 10)
    );
}

#[test]
fn every_zoo_model_passes_the_frontend_check_at_reduced_size() {
    for e in zoo::entries() {
        let m = zoo::build(e.name, &small(e.name)).unwrap();
        let g = parse_model(&m.to_json_string(), Path::new("."))
            .unwrap_or_else(|err| panic!("{}: {err}", e.name));
        assert_eq!(g.name, e.name);
        assert!(!g.outputs.is_empty());
    }
}

fn reference(name: &str, o: &ZooOptions) -> (neuronc::ir::Graph, Vec<Tensor>) {
    let m = zoo::build(name, o).unwrap();
    let g = parse_model(&m.to_json_string(), Path::new(".")).unwrap();
    let inputs = g
        .inputs
        .iter()
        .map(|&i| (g.value(i).name.clone(), random_input(&g, i)))
        .collect();
    let all = run_reference_all(&g, &inputs, RefOptions { f64: false }).unwrap();
    (g, all)
}

#[test]
fn small_zoo_models_run_on_the_reference_executor() {
    for name in [
        "mlp",
        "bert-base",
        "gpt2",
        "t5-small",
        "vit-b16",
        "resnet50",
    ] {
        let (g, all) = reference(name, &small(name));
        for &o in &g.outputs {
            let t = &all[o.index()];
            assert!(
                t.to_f64().iter().all(|x| x.is_finite()),
                "{name}: non-finite output"
            );
            assert!(t.max_abs() > 0.0, "{name}: all-zero output");
        }
    }
}

/// Hugging Face's `T5Attention._relative_position_bucket` (32 buckets, distance 128).
fn hf_bucket(rel: i64, bidirectional: bool) -> i64 {
    let mut nb = 32i64;
    let mut ret = 0;
    let n = if bidirectional {
        nb /= 2;
        if rel > 0 {
            ret += nb;
        }
        rel.abs()
    } else {
        (-rel).max(0)
    };
    let exact = nb / 2;
    if n < exact {
        return ret + n;
    }
    let large = exact
        + ((n as f32 / exact as f32).ln() / (128.0f32 / exact as f32).ln() * (nb - exact) as f32)
            as i64;
    ret + large.min(nb - 1)
}

#[test]
fn t5_position_buckets_match_the_published_formula() {
    let seq = 160; // past max_distance, so every branch is taken
    let o = ZooOptions {
        seq: Some(seq),
        layers: Some(1),
        vocab: Some(8),
        ..ZooOptions::default()
    };
    let m = zoo::build("t5-small", &o).unwrap();
    let g = parse_model(&m.to_json_string(), Path::new(".")).unwrap();
    let inputs = g
        .inputs
        .iter()
        .map(|&i| (g.value(i).name.clone(), random_input(&g, i)))
        .collect();
    let all = run_reference_all(&g, &inputs, RefOptions { f64: false }).unwrap();
    for (stack, bidir) in [("encoder", true), ("decoder", false)] {
        let onehot = &all[g
            .value_by_name(&format!("{stack}.position.onehot"))
            .unwrap()
            .index()];
        let v = onehot.to_f64();
        let v = v.as_slice().unwrap();
        for i in 0..seq {
            for j in 0..seq {
                let row = &v[(i * seq + j) * 32..(i * seq + j + 1) * 32];
                let want = hf_bucket(j as i64 - i as i64, bidir) as usize;
                for (b, &x) in row.iter().enumerate() {
                    assert_eq!(
                        x,
                        f64::from(u8::from(b == want)),
                        "{stack} i={i} j={j} bucket {b}"
                    );
                }
            }
        }
    }
}

#[test]
fn reduced_zoo_models_compile_for_trn1_and_trn2() {
    for e in zoo::entries() {
        if e.name == "resnet50" {
            continue; // conv2d, pooling and batch_norm lowering land with the conv branch
        }
        let mut o = small(e.name);
        o.batch = Some(1);
        let m = zoo::build(e.name, &o).unwrap();
        let g = parse_model(&m.to_json_string(), Path::new(".")).unwrap();
        let targets: &[&str] = if e.name == "llama-1b" {
            &["trn2"]
        } else {
            &["trn1", "trn2"]
        };
        for t in targets {
            let opts = CompileOptions {
                target: neuron_isa::ChipConfig::from_target(t).unwrap(),
                ..CompileOptions::default()
            };
            neuronc::driver::compile(&g, &opts)
                .unwrap_or_else(|err| panic!("{} on {t}: {err}", e.name));
        }
    }
}

#[test]
fn bad_zoo_requests_are_refused_with_clear_errors() {
    let err = zoo::build("bert-huge", &ZooOptions::default()).unwrap_err();
    assert!(matches!(err, ZooError::Unknown { .. }));
    let msg = err.to_string();
    assert!(
        msg.contains("unknown zoo model 'bert-huge'") && msg.contains("bert-base, bert-large"),
        "{msg}"
    );
    let case = |name: &str, o: ZooOptions, want: &str| {
        let msg = zoo::build(name, &o).unwrap_err().to_string();
        assert!(msg.contains(want), "{name}: {msg}");
    };
    case(
        "gpt2",
        ZooOptions {
            seq: Some(4096),
            ..ZooOptions::default()
        },
        "gpt2: --seq 4096: expected 1 to 1024",
    );
    case(
        "llama-1b",
        ZooOptions {
            seq: Some(100_000),
            ..ZooOptions::default()
        },
        "expected 1 to 8192",
    );
    case(
        "bert-base",
        ZooOptions {
            batch: Some(0),
            ..ZooOptions::default()
        },
        "--batch 0: expected 1 to 4096",
    );
    case(
        "bert-base",
        ZooOptions {
            layers: Some(13),
            ..ZooOptions::default()
        },
        "--layers 13: expected 1 to 12",
    );
    case(
        "vit-b16",
        ZooOptions {
            image: Some((225, 224)),
            ..ZooOptions::default()
        },
        "multiple of 16",
    );
    case(
        "resnet50",
        ZooOptions {
            seq: Some(8),
            ..ZooOptions::default()
        },
        "takes --image HxW",
    );
    case(
        "bert-base",
        ZooOptions {
            image: Some((8, 8)),
            ..ZooOptions::default()
        },
        "takes --seq",
    );
    // Sizes inside each option's range whose tensors would pass the element limit.
    case(
        "bert-large",
        ZooOptions {
            batch: Some(4096),
            seq: Some(512),
            ..ZooOptions::default()
        },
        "more than the limit",
    );
}

fn neuronc() -> Command {
    Command::cargo_bin("neuronc").unwrap()
}

#[test]
fn zoo_cli_lists_writes_and_refuses() {
    let out = neuronc().args(["zoo", "list"]).output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    let text = String::from_utf8_lossy(&out.stdout);
    for e in zoo::entries() {
        assert!(text.contains(e.name), "{text}");
    }
    assert!(
        text.contains("resnet50") && text.contains("25.6M") && text.contains("8.18"),
        "{text}"
    );

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.json");
    let out = neuronc()
        .args([
            "zoo",
            "get",
            "distilbert",
            "--layers",
            "1",
            "--seq",
            "8",
            "--vocab",
            "32",
            "-o",
        ])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = neuronc().arg("check").arg(&path).output().unwrap();
    assert_eq!(out.status.code(), Some(0));

    let out = neuronc()
        .args(["zoo", "get", "resnet-51", "-o"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("unknown zoo model 'resnet-51'") && err.contains("resnet50"),
        "{err}"
    );
    let out = neuronc()
        .args(["zoo", "get", "vit-b16", "--image", "big", "-o"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("expected HxW"));
}
