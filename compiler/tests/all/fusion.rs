//! Fusion and kernel formation: golden kernel lists of the examples, `--no-fuse`, view
//! folding, HBM traffic, and the kernel interpreter against the reference executor
//! (examples and proptest-generated graphs, fused against unfused).
// Test helpers fail the test by panicking; `unwrap` is the assertion.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::path::PathBuf;

use ndarray::{ArrayD, IxDyn};
use neuron_isa::TensorKind;
use neuronc::ir::{DType, GeluApprox, Graph, Op, Tensor, ValueId};
use neuronc::kernel::interp::interpret;
use neuronc::kernel::{KernelGraph, KernelOp};
use neuronc::options::{AutoCast, CompileOptions};
use neuronc::passes::run_middle_end;
use neuronc::reference::{RefOptions, random_inputs, run_reference};
use neuronc::rng::SeededRng;
use proptest::prelude::*;

// ---------------------------------------------------------------------------------------
// Helpers shared with the other middle-end test files.

/// The graph of `examples/{name}.json`.
pub fn example(name: &str) -> Graph {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../examples")
        .join(format!("{name}.json"));
    neuronc::frontend::load_model(&path).unwrap()
}

/// Options with fusion on or off and the given auto-cast (bf16 type).
pub fn opts(fuse: bool, auto_cast: AutoCast) -> CompileOptions {
    CompileOptions {
        fuse,
        auto_cast,
        ..CompileOptions::default()
    }
}

/// Runs the middle end, collecting the dumps.
pub fn compile_with(g: &Graph, o: &CompileOptions) -> (KernelGraph, BTreeMap<String, String>) {
    let mut dumps = BTreeMap::new();
    let kg = run_middle_end(g, o, &mut |stage, text| {
        dumps.insert(stage.to_string(), text.to_string());
    })
    .unwrap();
    (kg, dumps)
}

/// Runs the middle end.
pub fn compile(g: &Graph, fuse: bool, auto_cast: AutoCast) -> KernelGraph {
    compile_with(g, &opts(fuse, auto_cast)).0
}

/// A seeded standard-normal f32 tensor.
pub fn randn(seed: u64, name: &str, shape: &[usize], std: f64) -> Tensor {
    let mut r = SeededRng::for_tensor(seed, name);
    let n: usize = shape.iter().product();
    let v: Vec<f32> = (0..n).map(|_| (r.standard_normal() * std) as f32).collect();
    Tensor::F32(ArrayD::from_shape_vec(IxDyn(shape), v).unwrap())
}

/// Asserts every output agrees within `rel` times the output's largest magnitude.
pub fn assert_close(
    what: &str,
    want: &BTreeMap<String, Tensor>,
    got: &BTreeMap<String, Tensor>,
    rel: f64,
) {
    assert_eq!(
        want.keys().collect::<Vec<_>>(),
        got.keys().collect::<Vec<_>>(),
        "{what}: output names"
    );
    for (k, w) in want {
        let d = w.max_abs_diff(&got[k]).unwrap_or(f64::INFINITY);
        let tol = rel * w.max_abs().max(1e-3);
        assert!(
            d <= tol,
            "{what}: output '{k}' differs by {d:e} (tolerance {tol:e})"
        );
    }
}

/// Compares `text` with `tests/fixtures/kernels/{name}.txt`, printing a line diff.
/// `UPDATE_GOLDEN=1` rewrites the file (review the diff before committing it).
pub fn check_golden(name: &str, text: &str) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/kernels")
        .join(format!("{name}.txt"));
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, text).unwrap();
        return;
    }
    let want = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "golden file {} is missing ({e}); run with UPDATE_GOLDEN=1 and review it",
            path.display()
        )
    });
    if want == text {
        return;
    }
    let (w, g): (Vec<&str>, Vec<&str>) = (want.lines().collect(), text.lines().collect());
    let mut diff = String::new();
    for i in 0..w.len().max(g.len()) {
        let (a, b) = (w.get(i), g.get(i));
        if a != b {
            if let Some(a) = a {
                diff.push_str(&format!("{:4} - {a}\n", i + 1));
            }
            if let Some(b) = b {
                diff.push_str(&format!("{:4} + {b}\n", i + 1));
            }
        }
    }
    panic!(
        "kernel list of {name} differs from {} (- expected, + found):\n{diff}",
        path.display()
    );
}

/// `name [kind]` per kernel.
pub fn kinds(kg: &KernelGraph) -> Vec<&'static str> {
    kg.kernels.iter().map(|k| k.op.kind()).collect()
}

// ---------------------------------------------------------------------------------------
// Examples.

#[test]
fn mlp_fused_kernel_list() {
    let g = example("mlp");
    let kg = compile(&g, true, AutoCast::Matmult);
    check_golden("mlp", &kg.to_string());
    assert_eq!(kinds(&kg), ["matmul", "matmul", "softmax"]);
    let names: Vec<&str> = kg.kernels.iter().map(|k| k.name.as_str()).collect();
    assert_eq!(
        names,
        ["fc1+fc1_bias+act1", "fc2+fc2_bias", "temperature+probs"]
    );
}

#[test]
fn bert_fused_kernel_list() {
    let g = example("bert_layer");
    let kg = compile(&g, true, AutoCast::Matmult);
    check_golden("bert_layer", &kg.to_string());
    assert_eq!(
        kinds(&kg),
        [
            "matmul",
            "attention",
            "matmul",
            "layer_norm",
            "matmul",
            "matmul",
            "layer_norm"
        ]
    );
    // q, k and v are one merged projection (`merge_matmuls`).
    assert_eq!(
        kg.kernels[0].nodes,
        ["q_proj|k_proj|v_proj", "q_proj|k_proj|v_proj.bias"]
    );
    let ffn1 = &kg.kernels[4];
    assert_eq!(ffn1.nodes, ["ffn_in", "ffn_in_bias", "ffn_act"]);
    let out_proj = &kg.kernels[2];
    assert_eq!(
        out_proj.nodes,
        ["attn_out_proj", "attn_out_bias", "attn_residual"]
    );
}

#[test]
fn no_fuse_is_one_kernel_per_op() {
    for name in ["mlp", "bert_layer"] {
        let g = example(name);
        let (kg, dumps) = compile_with(&g, &opts(false, AutoCast::Matmult));
        let optimized_nodes = dumps["02-optimized"]
            .lines()
            .filter(|l| l.starts_with('n'))
            .count();
        assert_eq!(kg.kernels.len(), optimized_nodes, "{name}");
        assert!(kg.kernels.iter().all(|k| k.nodes.len() == 1), "{name}");
        assert!(kg.kernels.iter().all(|k| match &k.op {
            KernelOp::MatMul { epilogue, .. } => epilogue.is_empty(),
            KernelOp::Elementwise { ops, .. } => ops.len() == 1,
            KernelOp::Attention { .. } => false,
            _ => true,
        }));
        // Movement becomes copies: bert has 4 reshapes and 4 transposes.
        let copies = kinds(&kg).iter().filter(|k| **k == "copy").count();
        assert_eq!(copies, if name == "bert_layer" { 8 } else { 0 }, "{name}");
    }
}

#[test]
fn attention_reads_projections_through_views() {
    let g = example("bert_layer");
    let kg = compile(&g, true, AutoCast::Matmult);
    assert!(!kinds(&kg).contains(&"copy"), "no copy kernels:\n{kg}");
    let att = kg
        .kernels
        .iter()
        .find(|k| matches!(k.op, KernelOp::Attention { .. }))
        .unwrap();
    let KernelOp::Attention { q, k, v, prologue } = &att.op else {
        unreachable!()
    };
    assert_eq!(prologue.len(), 2, "scale and mask in the score prologue");
    // The three projections are one merged matmul (`merge_matmuls`): q, k and v are
    // column slices of its [B,S,3*H*D] result.
    for (idx, col) in [(q, 0), (k, 768), (v, 1536)] {
        let view = &att.inputs[*idx];
        let t = kg.tensor(view.tensor).unwrap();
        assert_eq!(t.name, "q_proj|k_proj|v_proj.lin");
        // [B,S,3*H*D] read as [B,H,S,D]: heads 64 apart, rows 2304 apart.
        assert_eq!(view.offset, col);
        assert_eq!(view.shape, [1, 12, 128, 64]);
        assert_eq!(view.strides, [294912, 64, 2304, 1]);
        let writer = kg
            .kernels
            .iter()
            .position(|k| k.output.tensor == view.tensor)
            .unwrap();
        assert!(matches!(kg.kernels[writer].op, KernelOp::MatMul { .. }));
    }
    // The context is written head-interleaved straight into the [B,S,H*D] tensor the
    // output projection reads (output-side folding).
    let ctx = kg.tensor(att.output.tensor).unwrap();
    assert_eq!(
        (ctx.name.as_str(), ctx.shape.as_slice()),
        ("ctx", &[1, 128, 768][..])
    );
    assert_eq!(att.output.strides, [98304, 64, 768, 1]);
    let proj = &kg.kernels[2];
    assert_eq!(proj.inputs[0].tensor, att.output.tensor);
}

#[test]
fn fusion_reduces_hbm_traffic() {
    for name in ["mlp", "bert_layer"] {
        let g = example(name);
        let fused = compile(&g, true, AutoCast::Matmult);
        let unfused = compile(&g, false, AutoCast::Matmult);
        let (f, u) = (fused.hbm_traffic_bytes(), unfused.hbm_traffic_bytes());
        eprintln!(
            "{name}: fused {} kernels / {f} bytes, unfused {} kernels / {u} bytes",
            fused.kernels.len(),
            unfused.kernels.len()
        );
        assert!(f < u, "{name}: fused {f} bytes, unfused {u} bytes");
        assert!(fused.kernels.len() < unfused.kernels.len());
    }
    // bert: the 12x128x128 scores and probabilities never reach HBM when fused.
    let g = example("bert_layer");
    let fused = compile(&g, true, AutoCast::Matmult);
    assert!(fused.tensors.iter().all(|t| t.shape != [1, 12, 128, 128]));
}

#[test]
fn interpreter_matches_reference_on_examples() {
    for name in ["mlp", "bert_layer"] {
        let g = example(name);
        let inputs = random_inputs(&g);
        let want = run_reference(&g, &inputs, RefOptions::default()).unwrap();
        for fuse in [true, false] {
            let kg = compile(&g, fuse, AutoCast::None);
            let got = interpret(&kg, &inputs).unwrap();
            assert_close(&format!("{name} fuse={fuse} fp32"), &want, &got, 1e-5);
            let kg = compile(&g, fuse, AutoCast::Matmult);
            let got = interpret(&kg, &inputs).unwrap();
            assert_close(&format!("{name} fuse={fuse} bf16"), &want, &got, 2e-2);
        }
    }
}

#[test]
fn resnet_block_fuses_batch_norm_residual_and_relu_into_two_conv_kernels() {
    let g = example("resnet_block");
    let kg = run_middle_end(&g, &CompileOptions::default(), &mut |_, _| {}).unwrap();
    let kinds: Vec<&str> = kg.kernels.iter().map(|k| k.op.kind()).collect();
    assert_eq!(kinds, ["conv2d", "conv2d"], "{kg}");
    // conv2 carries the folded batch_norm bias, the residual add and the relu.
    let KernelOp::Conv2d { epilogue, .. } = &kg.kernels[1].op else {
        panic!("{kg}");
    };
    assert_eq!(epilogue.len(), 3, "{kg}");
    let inputs = random_inputs(&g);
    let want = run_reference(&g, &inputs, RefOptions::default()).unwrap();
    let got = interpret(&kg, &inputs).unwrap();
    assert_close("resnet_block kernels", &want, &got, 2e-2);
}

// ---------------------------------------------------------------------------------------
// Hand-built graphs.

fn param(g: &mut Graph, name: &str, shape: &[usize], std: f64) -> ValueId {
    g.add_param(name, randn(g.seed, name, shape, std)).unwrap()
}

fn scalar(g: &mut Graph, name: &str, x: f32) -> ValueId {
    g.add_param(name, Tensor::F32(ArrayD::from_elem(IxDyn(&[]), x)))
        .unwrap()
}

/// GPT-2 attention: one fused QKV projection sliced into q, k, v; a causal mask sliced
/// from a `[1,1,16,16]` bool param and applied with `where`; scale by division.
fn gpt2_attention(s: usize, h: usize, d: usize) -> Graph {
    let e = h * d;
    let mut g = Graph::new("gpt2_attn");
    g.seed = 3;
    let x = g.add_input("x", [1, s, e], DType::F32).unwrap();
    let w = param(&mut g, "c_attn_w", &[e, 3 * e], 0.2);
    let b = param(&mut g, "c_attn_b", &[3 * e], 0.1);
    let mm = g
        .add_node(
            "c_attn",
            Op::MatMul { transpose_b: false },
            &[x, w],
            "qkv_mm",
        )
        .unwrap();
    let qkv = g.add_node("c_attn_bias", Op::Add, &[mm, b], "qkv").unwrap();
    let mut heads = Vec::new();
    for (i, n) in ["q", "k", "v"].iter().enumerate() {
        let sl = Op::Slice {
            axes: vec![2],
            starts: vec![(i * e) as i64],
            ends: vec![((i + 1) * e) as i64],
            steps: vec![],
        };
        let t = g
            .add_node(format!("{n}_slice"), sl, &[qkv], format!("{n}_flat"))
            .unwrap();
        let shape = vec![1, s as i64, h as i64, d as i64];
        let r = g
            .add_node(
                format!("{n}_split"),
                Op::Reshape { shape },
                &[t],
                format!("{n}_4d"),
            )
            .unwrap();
        let perm = if *n == "k" {
            vec![0, 2, 3, 1]
        } else {
            vec![0, 2, 1, 3]
        };
        heads.push(
            g.add_node(
                format!("{n}_perm"),
                Op::Transpose { perm },
                &[r],
                format!("{n}_h"),
            )
            .unwrap(),
        );
    }
    let scores = g
        .add_node(
            "qk",
            Op::MatMul { transpose_b: false },
            &[heads[0], heads[1]],
            "scores",
        )
        .unwrap();
    let sq = scalar(&mut g, "sqrt_d", (d as f32).sqrt());
    let scaled = g
        .add_node("scale", Op::Div, &[scores, sq], "scaled")
        .unwrap();
    let mut causal = vec![false; 16 * 16];
    for i in 0..16 {
        for j in 0..=i {
            causal[i * 16 + j] = true;
        }
    }
    let bias = g
        .add_param(
            "causal",
            Tensor::Bool(ArrayD::from_shape_vec(IxDyn(&[1, 1, 16, 16]), causal).unwrap()),
        )
        .unwrap();
    let sl = Op::Slice {
        axes: vec![2, 3],
        starts: vec![0, 0],
        ends: vec![s as i64, s as i64],
        steps: vec![],
    };
    let mask = g.add_node("mask_slice", sl, &[bias], "mask").unwrap();
    let neg = scalar(&mut g, "masked_bias", -1e4);
    let masked = g
        .add_node("apply_causal", Op::Where, &[mask, scaled, neg], "masked")
        .unwrap();
    let probs = g
        .add_node("softmax", Op::Softmax { axis: -1 }, &[masked], "probs")
        .unwrap();
    let ctx = g
        .add_node(
            "pv",
            Op::MatMul { transpose_b: false },
            &[probs, heads[2]],
            "ctx_h",
        )
        .unwrap();
    let t = g
        .add_node(
            "merge_perm",
            Op::Transpose {
                perm: vec![0, 2, 1, 3],
            },
            &[ctx],
            "ctx_t",
        )
        .unwrap();
    let m = g
        .add_node(
            "merge",
            Op::Reshape {
                shape: vec![1, s as i64, e as i64],
            },
            &[t],
            "ctx",
        )
        .unwrap();
    let wp = param(&mut g, "c_proj_w", &[e, e], 0.2);
    let y = g
        .add_node("c_proj", Op::MatMul { transpose_b: false }, &[m, wp], "y")
        .unwrap();
    g.add_output(y).unwrap();
    g
}

#[test]
fn gpt2_causal_attention_is_one_kernel_without_copies() {
    let g = gpt2_attention(8, 2, 4);
    let kg = compile(&g, true, AutoCast::None);
    assert_eq!(kinds(&kg), ["matmul", "attention", "matmul"], "\n{kg}");
    let KernelOp::Attention { prologue, .. } = &kg.kernels[1].op else {
        unreachable!()
    };
    assert_eq!(
        format!("{prologue:?}").matches("Select").count(),
        1,
        "{prologue:?}"
    );
    assert!(
        format!("{prologue:?}").contains("Scalar { op: Mul, value: 0.5"),
        "{prologue:?}"
    );
    // q, k, v are strided views of the one QKV tensor, at offsets 0, E, 2E.
    let offs: Vec<usize> = kg.kernels[1].inputs[..3].iter().map(|v| v.offset).collect();
    assert_eq!(offs, [0, 8, 16]);
    let inputs = random_inputs(&g);
    let want = run_reference(&g, &inputs, RefOptions::default()).unwrap();
    for fuse in [true, false] {
        let kg = compile(&g, fuse, AutoCast::None);
        assert_close(
            &format!("gpt2 fuse={fuse}"),
            &want,
            &interpret(&kg, &inputs).unwrap(),
            1e-5,
        );
    }
    // A boolean mask operand does not keep the attention in fp32.
    let kg = compile(&g, true, AutoCast::Matmult);
    assert_eq!(kg.kernels[1].mm_dtype, neuron_isa::Dtype::Bf16);
    assert_close("gpt2 bf16", &want, &interpret(&kg, &inputs).unwrap(), 2e-2);
}

#[test]
fn concat_pieces_write_disjoint_views() {
    let mut g = Graph::new("cat");
    let x = g.add_input("x", [4, 6], DType::F32).unwrap();
    let w1 = param(&mut g, "w1", &[6, 3], 1.0);
    let w2 = param(&mut g, "w2", &[6, 5], 1.0);
    let a = g
        .add_node("mm1", Op::MatMul { transpose_b: false }, &[x, w1], "a")
        .unwrap();
    let b = g
        .add_node("mm2", Op::MatMul { transpose_b: false }, &[x, w2], "b")
        .unwrap();
    let c = g
        .add_node("cat", Op::Concat { axis: 1 }, &[a, b], "c")
        .unwrap();
    let r = g.add_node("act", Op::Relu, &[c], "y").unwrap();
    g.add_output(r).unwrap();
    let kg = compile(&g, true, AutoCast::None);
    assert_eq!(
        kinds(&kg),
        ["matmul", "matmul", "copy", "copy", "elementwise"]
    );
    let (p0, p1) = (&kg.kernels[2].output, &kg.kernels[3].output);
    assert_eq!(p0.tensor, p1.tensor);
    assert_eq!(
        (p0.offset, p1.offset, p0.shape.clone(), p1.shape.clone()),
        (0, 3, vec![4, 3], vec![4, 5])
    );
    let inputs = random_inputs(&g);
    let want = run_reference(&g, &inputs, RefOptions::default()).unwrap();
    assert_close("concat", &want, &interpret(&kg, &inputs).unwrap(), 1e-6);
}

#[test]
fn output_transpose_is_written_in_place_and_inner_axis_softmax_is_a_view() {
    let mut g = Graph::new("views");
    let x = g.add_input("x", [3, 4], DType::F32).unwrap();
    let w = param(&mut g, "w", &[4, 5], 1.0);
    let h = g
        .add_node("mm", Op::MatMul { transpose_b: false }, &[x, w], "h")
        .unwrap();
    let t = g
        .add_node("tr", Op::Transpose { perm: vec![1, 0] }, &[h], "ht")
        .unwrap();
    g.add_output(t).unwrap();
    let s = g
        .add_node("sm", Op::Softmax { axis: 0 }, &[x], "s")
        .unwrap();
    let r = g
        .add_node(
            "rs",
            Op::ReduceSum {
                axes: vec![1],
                keepdims: false,
            },
            &[s],
            "r",
        )
        .unwrap();
    g.add_output(r).unwrap();
    let kg = compile(&g, true, AutoCast::None);
    assert_eq!(kinds(&kg), ["matmul", "softmax", "reduce"], "\n{kg}");
    // The matmul writes its [3,5] result transposed into the [5,3] output tensor.
    let out = &kg.kernels[0].output;
    assert_eq!(kg.tensor(out.tensor).unwrap().kind, TensorKind::Output);
    assert_eq!(out.strides, [1, 3]);
    assert_eq!(
        kg.kernels[1].inputs[0].strides,
        [1, 4],
        "softmax over axis 0 as a view"
    );
    assert_eq!(
        kg.kernels[2].output.shape,
        [3, 1],
        "reduce keeps its axis in the view"
    );
    let inputs = random_inputs(&g);
    let want = run_reference(&g, &inputs, RefOptions::default()).unwrap();
    for fuse in [true, false] {
        let kg = compile(&g, fuse, AutoCast::None);
        assert_close(
            &format!("views fuse={fuse}"),
            &want,
            &interpret(&kg, &inputs).unwrap(),
            1e-6,
        );
    }
}

// ---------------------------------------------------------------------------------------
// Property tests: each fused kernel kind against its unfused composition and the
// reference, on random small shapes (fp32, tight tolerance).

/// Fused and unfused interpretation both match the reference executor.
fn check_all_ways(g: &Graph, expect_kind: &str) -> Result<(), TestCaseError> {
    let inputs = random_inputs(g);
    let want = run_reference(g, &inputs, RefOptions::default()).unwrap();
    let fused = compile(g, true, AutoCast::None);
    let unfused = compile(g, false, AutoCast::None);
    prop_assert!(
        kinds(&fused).contains(&expect_kind),
        "expected a {expect_kind} kernel:\n{fused}"
    );
    prop_assert!(fused.kernels.len() < unfused.kernels.len());
    let f = interpret(&fused, &inputs).unwrap();
    let u = interpret(&unfused, &inputs).unwrap();
    for (k, w) in &want {
        let tol = 1e-5 * w.max_abs().max(1.0);
        let (df, du) = (
            w.max_abs_diff(&f[k]).unwrap(),
            w.max_abs_diff(&u[k]).unwrap(),
        );
        prop_assert!(df <= tol, "fused '{k}' off by {df:e}");
        prop_assert!(du <= tol, "unfused '{k}' off by {du:e}");
        prop_assert!(f[k].max_abs_diff(&u[k]).unwrap() <= tol);
    }
    Ok(())
}

fn matmul_bias_gelu(batch: usize, m: usize, k: usize, n: usize, tanh: bool, seed: u64) -> Graph {
    let mut g = Graph::new("mm_bias_gelu");
    g.seed = seed;
    let x = g.add_input("x", [batch, m, k], DType::F32).unwrap();
    let w = param(&mut g, "w", &[k, n], 0.5);
    let b = param(&mut g, "b", &[n], 0.5);
    let h = g
        .add_node("mm", Op::MatMul { transpose_b: false }, &[x, w], "h")
        .unwrap();
    let hb = g.add_node("bias", Op::Add, &[b, h], "hb").unwrap();
    let approximate = if tanh {
        GeluApprox::Tanh
    } else {
        GeluApprox::None
    };
    let y = g
        .add_node("act", Op::Gelu { approximate }, &[hb], "y")
        .unwrap();
    g.add_output(y).unwrap();
    g
}

fn layer_norm_residual(rows: usize, n: usize, rms: bool, seed: u64) -> Graph {
    let mut g = Graph::new("norm");
    g.seed = seed;
    let x = g.add_input("x", [rows, n], DType::F32).unwrap();
    let r = g.add_input("res", [rows, n], DType::F32).unwrap();
    let s = g.add_node("residual", Op::Add, &[x, r], "s").unwrap();
    let gamma = param(&mut g, "gamma", &[n], 1.0);
    let y = if rms {
        g.add_node(
            "norm",
            Op::RmsNorm {
                axis: -1,
                epsilon: 1e-6,
            },
            &[s, gamma],
            "y",
        )
    } else {
        let beta = param(&mut g, "beta", &[n], 1.0);
        g.add_node(
            "norm",
            Op::LayerNorm {
                axis: -1,
                epsilon: 1e-5,
            },
            &[s, gamma, beta],
            "y",
        )
    }
    .unwrap();
    let two = scalar(&mut g, "two", 2.0);
    let z = g.add_node("post", Op::Mul, &[y, two], "z").unwrap();
    g.add_output(z).unwrap();
    g
}

fn softmax_scale_mask(b: usize, s: usize, t: usize, seed: u64) -> Graph {
    let mut g = Graph::new("softmax");
    g.seed = seed;
    let x = g.add_input("x", [b, s, t], DType::F32).unwrap();
    let mask = g.add_input("mask", [b, 1, t], DType::F32).unwrap();
    let c = scalar(&mut g, "c", 0.3);
    let xs = g.add_node("scale", Op::Mul, &[c, x], "xs").unwrap();
    let xm = g.add_node("mask_add", Op::Add, &[xs, mask], "xm").unwrap();
    let y = g
        .add_node("sm", Op::Softmax { axis: -1 }, &[xm], "y")
        .unwrap();
    g.add_output(y).unwrap();
    g
}

fn attention(b: usize, h: usize, s: usize, d: usize, transpose_b: bool, seed: u64) -> Graph {
    let mut g = Graph::new("attention");
    g.seed = seed;
    let e = h * d;
    let q = g.add_input("q", [b, s, e], DType::F32).unwrap();
    let k = g.add_input("k", [b, s, e], DType::F32).unwrap();
    let v = g.add_input("v", [b, h, s, d], DType::F32).unwrap();
    let heads = |g: &mut Graph, x: ValueId, n: &str, perm: Vec<usize>| {
        let shape = vec![b as i64, s as i64, h as i64, d as i64];
        let r = g
            .add_node(
                format!("{n}_split"),
                Op::Reshape { shape },
                &[x],
                format!("{n}4"),
            )
            .unwrap();
        g.add_node(
            format!("{n}_perm"),
            Op::Transpose { perm },
            &[r],
            format!("{n}h"),
        )
        .unwrap()
    };
    let qh = heads(&mut g, q, "q", vec![0, 2, 1, 3]);
    let kh = heads(
        &mut g,
        k,
        "k",
        if transpose_b {
            vec![0, 2, 1, 3]
        } else {
            vec![0, 2, 3, 1]
        },
    );
    let sc = g
        .add_node("qk", Op::MatMul { transpose_b }, &[qh, kh], "scores")
        .unwrap();
    let c = scalar(&mut g, "scale", 1.0 / (d as f32).sqrt());
    let ss = g.add_node("scale_mul", Op::Mul, &[sc, c], "ss").unwrap();
    let p = g
        .add_node("sm", Op::Softmax { axis: -1 }, &[ss], "p")
        .unwrap();
    let o = g
        .add_node("pv", Op::MatMul { transpose_b: false }, &[p, v], "o")
        .unwrap();
    g.add_output(o).unwrap();
    g
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 12, ..ProptestConfig::default() })]

    #[test]
    fn fused_matmul_bias_gelu(batch in 1usize..3, m in 1usize..9, k in 1usize..17, n in 1usize..9, tanh: bool, seed in 0u64..1000) {
        let g = matmul_bias_gelu(batch, m, k, n, tanh, seed);
        check_all_ways(&g, "matmul")?;
        let kg = compile(&g, true, AutoCast::None);
        prop_assert_eq!(kg.kernels.len(), 1);
    }

    #[test]
    fn fused_norm(rows in 1usize..9, n in 1usize..33, rms: bool, seed in 0u64..1000) {
        let g = layer_norm_residual(rows, n, rms, seed);
        check_all_ways(&g, if rms { "rms_norm" } else { "layer_norm" })?;
    }

    #[test]
    fn fused_softmax_scale_mask(b in 1usize..3, s in 1usize..7, t in 1usize..17, seed in 0u64..1000) {
        let g = softmax_scale_mask(b, s, t, seed);
        check_all_ways(&g, "softmax")?;
        let kg = compile(&g, true, AutoCast::None);
        prop_assert_eq!(kg.kernels.len(), 1);
    }

    #[test]
    fn fused_attention(b in 1usize..3, h in 1usize..4, s in 1usize..9, d in 1usize..9, tb: bool, seed in 0u64..1000) {
        let g = attention(b, h, s, d, tb, seed);
        check_all_ways(&g, "attention")?;
        let kg = compile(&g, true, AutoCast::None);
        prop_assert_eq!(kinds(&kg), vec!["attention"]);
    }
}
