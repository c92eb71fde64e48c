//! Framework exports end to end: the ONNX-exported fixtures `bert_encoder` (word, position
//! and token-type embedding gathers, a `[CLS]` pooler) and `gpt2_block` (causal mask by
//! slice + where, GELU written out with pow/tanh, tied embedding head) compile fused and
//! unfused, and their simulated outputs match the reference executor in every precision
//! and onnxruntime's expected outputs in fp32.

#![allow(clippy::unwrap_used)] // Tests may unwrap: a panic is a test failure.

use super::backend_harness::{Precision, check, compile_and_check_on};
use super::fusion::{check_golden, compile, kinds};
use neuronc::frontend::load_model;
use neuronc::ir::{GeluApprox, Graph, Tensor};
use neuronc::kernel::{EwOp, KernelOp, UnaryFn};
use neuronc::npy::{read_npy, sanitize_file_name};
use neuronc::options::AutoCast;
use neuronc::reference::random_inputs;
use std::collections::BTreeMap;
use std::path::PathBuf;

fn dir(case: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(case)
}

fn fixture(case: &str) -> Graph {
    load_model(&dir(case).join("model.json")).unwrap()
}

/// The fixture's inputs (`inputs/<name>.npy`), by name.
fn fixture_inputs(case: &str, g: &Graph) -> BTreeMap<String, Tensor> {
    g.inputs
        .iter()
        .map(|&id| {
            let name = g.value(id).name.clone();
            let file = dir(case)
                .join("inputs")
                .join(format!("{}.npy", sanitize_file_name(&name)));
            (name, read_npy(&file).unwrap())
        })
        .collect()
}

/// onnxruntime's outputs for the fixture's inputs, flattened.
fn expected(case: &str, g: &Graph) -> BTreeMap<String, Vec<f64>> {
    g.outputs
        .iter()
        .map(|&id| {
            let name = g.value(id).name.clone();
            let file = dir(case)
                .join("expected")
                .join(format!("{}.npy", sanitize_file_name(&name)));
            let t = read_npy(&file).unwrap();
            (name, t.to_f64().iter().copied().collect())
        })
        .collect()
}

/// Compiles `case` fused and unfused in fp32 on the fixture's inputs (checked against the
/// reference and onnxruntime), and fused in bf16, fp16 and int8 on seeded inputs.
fn check_every_precision(case: &str) {
    let g = fixture(case);
    let inputs = fixture_inputs(case, &g);
    let want = expected(case, &g);
    for fuse in [true, false] {
        let mut opts = Precision::Fp32.options();
        opts.fuse = fuse;
        let (_, outs) = compile_and_check_on(&g, opts, Precision::Fp32, &inputs);
        for (name, w) in &want {
            check(
                Precision::Fp32,
                &format!("{case}/{name} fuse={fuse} vs onnxruntime"),
                &outs[name],
                w,
            );
        }
    }
    let seeded = random_inputs(&g);
    for prec in [Precision::Bf16, Precision::Fp16, Precision::Int8] {
        compile_and_check_on(&g, prec.options(), prec, &seeded);
    }
    let mut unfused = Precision::Bf16.options();
    unfused.fuse = false;
    compile_and_check_on(&g, unfused, Precision::Bf16, &seeded);
}

fn epilogue(k: &neuronc::kernel::Kernel) -> &[EwOp] {
    match &k.op {
        KernelOp::MatMul { epilogue, .. }
        | KernelOp::Norm { epilogue, .. }
        | KernelOp::Softmax { epilogue, .. }
        | KernelOp::Reduce { epilogue, .. }
        | KernelOp::Gather { epilogue, .. }
        | KernelOp::Conv2d { epilogue, .. }
        | KernelOp::Pool { epilogue, .. } => epilogue,
        KernelOp::Elementwise { ops, .. } => ops,
        KernelOp::Attention { prologue, .. } => prologue,
        KernelOp::Copy { .. } => &[],
    }
}

#[test]
fn bert_encoder_matches_reference_and_onnxruntime() {
    check_every_precision("bert_encoder");
}

#[test]
fn gpt2_block_matches_reference_and_onnxruntime() {
    check_every_precision("gpt2_block");
}

#[test]
fn bert_encoder_kernel_list() {
    let g = fixture("bert_encoder");
    let kg = compile(&g, true, AutoCast::Matmult);
    check_golden("bert_encoder", &kg.to_string());
    // Word and token-type lookups are gathers (the word gather adds the position rows and
    // the token-type rows in its epilogue); the constant position ids and the [CLS] index
    // became views: no kernel reads a constant index tensor.
    assert_eq!(
        kinds(&kg),
        [
            "gather",
            "gather",
            "layer_norm",
            "elementwise",
            "matmul",
            "attention",
            "matmul",
            "layer_norm",
            "matmul",
            "matmul",
            "layer_norm",
            "matmul"
        ],
        "\n{kg}"
    );
    let word = &kg.kernels[1];
    assert_eq!(word.nodes, ["word_gather", "add_3", "add_5"]);
    assert!(
        kg.tensors
            .iter()
            .all(|t| t.name != "position_ids" && t.name != "cls_index"),
        "\n{kg}"
    );
    // The erf gelu of the intermediate projection is one activation in its epilogue.
    assert!(kg.kernels.iter().any(|k| {
        epilogue(k).contains(&EwOp::Unary(UnaryFn::Gelu(GeluApprox::None)))
            && matches!(k.op, KernelOp::MatMul { .. })
    }));
}

#[test]
fn gpt2_block_recognizes_gelu_and_causal_attention() {
    let g = fixture("gpt2_block");
    let kg = compile(&g, true, AutoCast::Matmult);
    check_golden("gpt2_block", &kg.to_string());
    assert_eq!(
        kinds(&kg),
        [
            "gather",
            "layer_norm",
            "matmul",
            "attention",
            "matmul",
            "layer_norm",
            "matmul",
            "matmul",
            "layer_norm",
            "matmul"
        ],
        "\n{kg}"
    );
    // The written-out tanh gelu is one activation in the c_fc epilogue; no pow or tanh op
    // survives anywhere.
    let fc = kg
        .kernels
        .iter()
        .find(|k| k.nodes.first().is_some_and(|n| n == "mlp.c_fc.matmul"))
        .unwrap();
    assert_eq!(
        epilogue(fc).last(),
        Some(&EwOp::Unary(UnaryFn::Gelu(GeluApprox::Tanh)))
    );
    for k in &kg.kernels {
        for op in epilogue(k) {
            assert!(
                !matches!(
                    op,
                    EwOp::Unary(UnaryFn::Tanh)
                        | EwOp::Scalar {
                            op: neuronc::kernel::BinaryFn::Pow,
                            ..
                        }
                ),
                "kernel {} still computes {op:?}",
                k.name
            );
        }
    }
    // One attention kernel: scale and the causal `where` in its score prologue, the mask a
    // view of the `attn.bias` weight.
    let att: Vec<_> = kg
        .kernels
        .iter()
        .filter(|k| matches!(k.op, KernelOp::Attention { .. }))
        .collect();
    assert_eq!(att.len(), 1);
    let KernelOp::Attention { prologue, .. } = &att[0].op else {
        unreachable!()
    };
    assert!(
        matches!(
            prologue.as_slice(),
            [EwOp::Scalar { .. }, EwOp::Select { .. }]
        ),
        "{prologue:?}"
    );
    assert_eq!(
        att[0].nodes,
        [
            "attn_scores",
            "div_15",
            "causal_where",
            "attn_probs",
            "attn_context"
        ]
    );
}
