//! Whole-program properties of the back end: determinism, target dependence, summary,
//! dumps, artifact metadata, fusion's effect on HBM traffic, and errors.

#![allow(clippy::unwrap_used)] // Tests may unwrap: a panic is a test failure.

use super::backend_harness::{Precision, compile_and_check_with, load_example};
use neuron_isa::{Artifact, ChipConfig, Dtype, TensorKind};
use neuronc::driver::compile;
use neuronc::error::CompileError;
use neuronc::ir::{DType, Graph, Op};
use std::path::PathBuf;

fn small_sbuf() -> ChipConfig {
    ChipConfig::from_toml_str(
        "base = \"trn1\"\nname = \"trn1-small-sbuf\"\nsbuf_bytes_per_partition = 24576\n",
        "test",
    )
    .unwrap()
}

#[test]
fn compile_is_deterministic() {
    let g = load_example("bert_layer.json");
    let opts = Precision::Bf16.options();
    let a = compile(&g, &opts).unwrap().artifact.to_bytes().unwrap();
    let b = compile(&g, &opts).unwrap().artifact.to_bytes().unwrap();
    assert!(a == b, "two compilations differ");
    let back = Artifact::from_bytes(&a).unwrap();
    assert_eq!(back.to_bytes().unwrap(), a);
}

#[test]
fn a_different_target_gives_a_different_program() {
    let g = load_example("bert_layer.json");
    let trn1 = compile(&g, &Precision::Bf16.options()).unwrap().artifact;
    let mut opts = Precision::Bf16.options();
    opts.target = ChipConfig::trn2();
    let trn2 = compile(&g, &opts).unwrap().artifact;
    assert_ne!(trn1.meta.program.streams, trn2.meta.program.streams);
    assert_ne!(
        trn1.meta.program.kernels[0].tiling,
        trn2.meta.program.kernels[0].tiling
    );
    assert_eq!(trn2.meta.target.name, "trn2");
}

#[test]
fn a_small_sbuf_target_streams_more_and_still_matches() {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/backend/matmuls.json");
    let g = neuronc::frontend::load_model(&p).unwrap();
    let mut opts = Precision::Fp32.options();
    opts.target = small_sbuf();
    let (small, _) = compile_and_check_with(&g, opts, Precision::Fp32);
    assert!(small.summary.sbuf_peak <= 24576, "{}", small.summary);
    // A matmul whose X^T block does not fit a small SBUF at once: smaller groups, so W is
    // re-read more often, and the re-read bytes are reported.
    let big = super::backend_perf::matmul_graph(1024, 8192, 512);
    let mut opts = Precision::Bf16.options();
    let trn1 = compile(&big, &opts).unwrap().summary;
    opts.target = small_sbuf();
    let small = compile(&big, &opts).unwrap().summary;
    assert!(
        small.spill_bytes > trn1.spill_bytes && small.hbm_bytes > trn1.hbm_bytes,
        "small sbuf re-streams more: {} vs {}",
        small.spill_bytes,
        trn1.spill_bytes
    );
    assert!(small.to_string().contains("spill/re-stream"), "{small}");
}

#[test]
fn fusion_moves_at_least_30_percent_fewer_hbm_bytes_on_bert() {
    let g = load_example("bert_layer.json");
    let fused = compile(&g, &Precision::Bf16.options()).unwrap().summary;
    let mut opts = Precision::Bf16.options();
    opts.fuse = false;
    let unfused = compile(&g, &opts).unwrap().summary;
    let ratio = fused.hbm_bytes as f64 / unfused.hbm_bytes as f64;
    eprintln!(
        "bert_layer hbm bytes: fused {} unfused {} ({:.1}% fewer)",
        fused.hbm_bytes,
        unfused.hbm_bytes,
        (1.0 - ratio) * 100.0
    );
    assert!(ratio <= 0.7, "fused/unfused = {ratio}");
    assert!(fused.total_kernels() < unfused.total_kernels());
}

#[test]
fn summary_names_kernels_engines_memory_hbm_and_time() {
    let c = compile(&load_example("mlp.json"), &Precision::Bf16.options()).unwrap();
    let text = c.summary.to_string();
    for want in [
        "model      mlp -> target trn1",
        "kernels    3 (matmul 2, softmax 1)",
        "tensor ",
        "vector ",
        "dma ",
        "sbuf peak",
        "psum peak",
        "hbm ",
        "compiled   in ",
    ] {
        assert!(text.contains(want), "summary lacks {want:?}:\n{text}");
    }
    assert!(text.lines().count() <= 10, "one screen:\n{text}");
    assert_eq!(
        c.summary.total_instructions(),
        c.artifact.meta.program.instruction_count()
    );
}

#[test]
fn artifact_metadata_maps_instructions_to_kernels_and_stores_rounded_weights() {
    let g = load_example("mlp.json");
    let c = compile(&g, &Precision::Bf16.options()).unwrap();
    let m = &c.artifact.meta;
    assert_eq!(m.model_name, "mlp");
    assert_eq!(m.batch_size, 8);
    assert_eq!(m.seed, g.seed);
    assert_eq!(
        m.options.get("auto_cast_type").map(String::as_str),
        Some("bf16")
    );
    assert_eq!(
        m.model_flops,
        m.program.kernels.iter().map(|k| k.flops).sum::<u64>()
    );
    assert!(
        m.program
            .kernels
            .iter()
            .any(|k| k.nodes.contains(&"fc1".to_string()))
    );
    for s in &m.program.streams {
        for i in &s.instrs {
            assert!(
                (i.kernel as usize) < m.program.kernels.len(),
                "every instruction names its kernel"
            );
        }
    }
    // w1 is stored in bf16, rounded to nearest even from the graph's f32 values.
    let (tid, t) = m
        .program
        .tensors
        .iter()
        .enumerate()
        .find(|(_, t)| t.name == "w1")
        .unwrap();
    assert_eq!((t.kind, t.dtype), (TensorKind::Weight, Dtype::Bf16));
    let bytes = c
        .artifact
        .weight_bytes(neuron_isa::TensorId(tid as u32))
        .unwrap();
    let w1 = g
        .value(g.value_by_name("w1").unwrap())
        .data
        .as_ref()
        .unwrap();
    let want = neuronc::backend::encode::encode(Dtype::Bf16, w1.to_f64().iter().copied());
    assert!(bytes == want.as_slice());
}

#[test]
fn dump_writes_every_stage_including_the_instruction_streams() {
    let dir = tempfile::tempdir().unwrap();
    let mut opts = Precision::Bf16.options();
    opts.dump_dir = Some(dir.path().to_path_buf());
    compile(&load_example("mlp.json"), &opts).unwrap();
    let mut names: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    for stage in ["tiling", "allocation", "program", "summary"] {
        assert!(
            names.iter().any(|n| n.ends_with(&format!("-{stage}.txt"))),
            "{names:?}"
        );
    }
    assert!(
        names
            .iter()
            .all(|n| n.as_bytes()[..2].iter().all(u8::is_ascii_digit)),
        "{names:?}"
    );
    let program = names.iter().find(|n| n.ends_with("-program.txt")).unwrap();
    let text = std::fs::read_to_string(dir.path().join(program)).unwrap();
    assert!(
        text.contains("matmul") && text.contains("wait(") && text.contains("k0 fc1"),
        "{text}"
    );
}

#[test]
fn a_row_too_long_for_sbuf_is_an_error_naming_the_kernel() {
    let mut g = Graph::new("toolong");
    let x = g.add_input("x", vec![4, 200_000], DType::F32).unwrap();
    let y = g
        .add_node(
            "ln_huge",
            Op::LayerNorm {
                axis: -1,
                epsilon: 1e-5,
            },
            &[x],
            "y",
        )
        .unwrap();
    g.add_output(y).unwrap();
    let err = compile(&g, &Precision::Fp32.options()).unwrap_err();
    assert!(matches!(err, CompileError::Lowering { .. }), "{err}");
    let msg = err.to_string();
    assert!(msg.contains("ln_huge") && msg.contains("sbuf"), "{msg}");
}
