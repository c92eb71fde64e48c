//! Graph passes: constant folding, movement simplification, constant gathers, gelu
//! recognition, DCE, CSE,
//! each checked for what it rewrites and that the graph still computes the same thing.
// Test helpers fail the test by panicking; `unwrap` is the assertion.
#![allow(clippy::unwrap_used)]

use ndarray::{ArrayD, IxDyn};
use neuronc::ir::{DType, GeluApprox, Graph, Op, Tensor, ValueId};
use neuronc::options::CompileOptions;
use neuronc::passes::constant_gather::ConstantGather;
use neuronc::passes::cse::CommonSubexpressions;
use neuronc::passes::dce::DeadCode;
use neuronc::passes::fold_constants::FoldConstants;
use neuronc::passes::gelu::RecognizeGelu;
use neuronc::passes::infer_shapes::InferShapes;
use neuronc::passes::simplify_movement::SimplifyMovement;
use neuronc::passes::{Pass, run_middle_end, run_to_fixpoint};
use neuronc::reference::{RefOptions, random_inputs, run_reference};

use crate::fusion::assert_close;

fn scalar(g: &mut Graph, name: &str, x: f32) -> ValueId {
    g.add_param(name, Tensor::F32(ArrayD::from_elem(IxDyn(&[]), x)))
        .unwrap()
}

/// Runs the canonicalization and cleanup passes the way the driver does.
fn canonicalize(g: &mut Graph) {
    run_to_fixpoint(
        g,
        &[
            &FoldConstants,
            &SimplifyMovement,
            &ConstantGather,
            &RecognizeGelu,
            &DeadCode,
        ],
    )
    .unwrap();
    run_to_fixpoint(g, &[&InferShapes, &DeadCode, &CommonSubexpressions]).unwrap();
    g.verify().unwrap();
}

/// Canonicalizes a copy of `g`, checks it still computes the same outputs, returns it.
fn canonical_same_result(g: &Graph) -> Graph {
    let mut c = g.clone();
    canonicalize(&mut c);
    let inputs = random_inputs(g);
    let want = run_reference(g, &inputs, RefOptions { f64: true }).unwrap();
    let got = run_reference(&c, &inputs, RefOptions { f64: true }).unwrap();
    assert_close("canonicalized graph", &want, &got, 1e-6);
    c
}

fn ops(g: &Graph) -> Vec<String> {
    g.nodes.iter().map(|n| n.op.to_string()).collect()
}

/// Which written-out gelu to build.
#[derive(Clone, Copy)]
enum Form {
    /// `0.5 * x * (1 + tanh(c * (x + 0.044715 * pow(x, 3))))`.
    TanhPow,
    /// `x * 0.5 * (1 + tanh(c * (0.044715 * x*x*x + x)))`, operands swapped.
    TanhCubed,
    /// `0.5 * x * (1 + erf(x / sqrt(2)))` with `sqrt(2)` computed by a node.
    ErfDiv,
    /// `x * (0.5 * (erf(x * 0.70710678) + 1))`.
    ErfMul,
}

/// A graph computing gelu of `matmul(x, w)` written out in `form`, with `cube_coef` in
/// place of 0.044715 (and, for erf, `1/cube_coef`-free constants).
fn written_gelu(form: Form, cube_coef: f32) -> Graph {
    let mut g = Graph::new("gelu");
    let x0 = g.add_input("x0", [4, 8], DType::F32).unwrap();
    let w = g
        .add_param("w", crate::fusion::randn(1, "w", &[8, 8], 0.5))
        .unwrap();
    let x = g
        .add_node("mm", Op::MatMul { transpose_b: false }, &[x0, w], "x")
        .unwrap();
    let half = scalar(&mut g, "half", 0.5);
    let one = scalar(&mut g, "one", 1.0);
    let y = match form {
        Form::TanhPow | Form::TanhCubed => {
            let cube = if matches!(form, Form::TanhPow) {
                let three = scalar(&mut g, "three", 3.0);
                g.add_node("cube", Op::Pow, &[x, three], "x3").unwrap()
            } else {
                let sq = g.add_node("sq", Op::Mul, &[x, x], "x2").unwrap();
                g.add_node("cube", Op::Mul, &[x, sq], "x3").unwrap()
            };
            let k = scalar(&mut g, "k", cube_coef);
            let kc = g.add_node("kc", Op::Mul, &[k, cube], "kx3").unwrap();
            let inner = if matches!(form, Form::TanhPow) {
                g.add_node("inner", Op::Add, &[x, kc], "inner").unwrap()
            } else {
                g.add_node("inner", Op::Add, &[kc, x], "inner").unwrap()
            };
            let c = scalar(&mut g, "c", (2.0f32 / std::f32::consts::PI).sqrt());
            let arg = g.add_node("arg", Op::Mul, &[c, inner], "arg").unwrap();
            let t = g.add_node("t", Op::Tanh, &[arg], "t").unwrap();
            let onep = g.add_node("onep", Op::Add, &[one, t], "onep").unwrap();
            if matches!(form, Form::TanhPow) {
                let hx = g.add_node("hx", Op::Mul, &[half, x], "hx").unwrap();
                g.add_node("gelu_out", Op::Mul, &[hx, onep], "y").unwrap()
            } else {
                let xh = g.add_node("xh", Op::Mul, &[x, half], "xh").unwrap();
                g.add_node("gelu_out", Op::Mul, &[xh, onep], "y").unwrap()
            }
        }
        Form::ErfDiv => {
            let two = scalar(&mut g, "two", 2.0);
            let s2 = g.add_node("sqrt2", Op::Sqrt, &[two], "s2").unwrap();
            let arg = g.add_node("arg", Op::Div, &[x, s2], "arg").unwrap();
            let e = g.add_node("e", Op::Erf, &[arg], "e").unwrap();
            let onep = g.add_node("onep", Op::Add, &[e, one], "onep").unwrap();
            let hx = g.add_node("hx", Op::Mul, &[half, x], "hx").unwrap();
            g.add_node("gelu_out", Op::Mul, &[hx, onep], "y").unwrap()
        }
        Form::ErfMul => {
            let r = scalar(
                &mut g,
                "r",
                std::f32::consts::FRAC_1_SQRT_2 * (cube_coef / 0.044715),
            );
            let arg = g.add_node("arg", Op::Mul, &[x, r], "arg").unwrap();
            let e = g.add_node("e", Op::Erf, &[arg], "e").unwrap();
            let onep = g.add_node("onep", Op::Add, &[e, one], "onep").unwrap();
            let ho = g.add_node("ho", Op::Mul, &[half, onep], "ho").unwrap();
            g.add_node("gelu_out", Op::Mul, &[x, ho], "y").unwrap()
        }
    };
    g.add_output(y).unwrap();
    g
}

#[test]
fn gelu_written_out_forms_are_recognized() {
    for (form, approx) in [
        (Form::TanhPow, GeluApprox::Tanh),
        (Form::TanhCubed, GeluApprox::Tanh),
        (Form::ErfDiv, GeluApprox::None),
        (Form::ErfMul, GeluApprox::None),
    ] {
        let g = written_gelu(form, 0.044715);
        let c = canonical_same_result(&g);
        assert_eq!(
            ops(&c),
            [
                "matmul[transpose_b=false]".to_string(),
                Op::Gelu {
                    approximate: approx
                }
                .to_string()
            ],
            "{c}"
        );
        // The gelu keeps the outermost multiply's name; the constants are gone.
        assert_eq!(c.nodes[1].name, "gelu_out");
        assert_eq!(c.params.len(), 1, "only the weight is left: {c}");
    }
}

#[test]
fn gelu_near_misses_are_left_alone() {
    for form in [Form::TanhPow, Form::TanhCubed, Form::ErfMul] {
        let g = written_gelu(form, 0.04);
        let c = canonical_same_result(&g);
        assert!(!ops(&c).iter().any(|o| o.starts_with("gelu")), "{c}");
    }
    // Scale 0.6 instead of 0.5.
    let mut g = written_gelu(Form::ErfDiv, 0.044715);
    let half = g.value_by_name("half").unwrap();
    g.value_mut(half).data = Some(Tensor::F32(ArrayD::from_elem(IxDyn(&[]), 0.6)).into());
    let c = canonical_same_result(&g);
    assert!(!ops(&c).iter().any(|o| o.starts_with("gelu")), "{c}");
}

#[test]
fn constants_fold_into_scales() {
    let mut g = Graph::new("consts");
    let x = g.add_input("x", [2, 3], DType::F32).unwrap();
    let d = scalar(&mut g, "d", 64.0);
    let sd = g.add_node("sqrt_d", Op::Sqrt, &[d], "sd").unwrap();
    let a = g.add_node("scale", Op::Div, &[x, sd], "a").unwrap();
    let two = scalar(&mut g, "two", 2.0);
    let b = g.add_node("again", Op::Mul, &[a, two], "b").unwrap();
    let one = scalar(&mut g, "one", 1.0);
    let c = g.add_node("ident", Op::Mul, &[b, one], "c").unwrap();
    let c32 = g
        .add_node("same_cast", Op::Cast { dtype: DType::F32 }, &[c], "c32")
        .unwrap();
    g.add_output(c32).unwrap();
    let out = canonical_same_result(&g);
    // div by sqrt(64) then *2 then *1 and a no-op cast: one multiply by 0.25.
    assert_eq!(ops(&out), ["mul"], "{out}");
    let k = out.nodes[0].inputs[1];
    assert_eq!(
        out.value(k).data.as_ref().unwrap().to_f64().iter().next(),
        Some(&0.25)
    );
    // The multiply's result took over the output's name.
    assert_eq!(out.value(out.outputs[0]).name, "c32");
}

#[test]
fn movement_chains_collapse() {
    let mut g = Graph::new("moves");
    let x = g.add_input("x", [2, 3, 4], DType::F32).unwrap();
    let t1 = g
        .add_node(
            "t1",
            Op::Transpose {
                perm: vec![1, 0, 2],
            },
            &[x],
            "t1",
        )
        .unwrap();
    let t2 = g
        .add_node(
            "t2",
            Op::Transpose {
                perm: vec![1, 0, 2],
            },
            &[t1],
            "t2",
        )
        .unwrap();
    let r1 = g
        .add_node("r1", Op::Reshape { shape: vec![6, 4] }, &[t2], "r1")
        .unwrap();
    let r2 = g
        .add_node("r2", Op::Reshape { shape: vec![24] }, &[r1], "r2")
        .unwrap();
    let r3 = g
        .add_node("r3", Op::Reshape { shape: vec![2, 12] }, &[r2], "r3")
        .unwrap();
    let e = g.add_node("e", Op::Exp, &[r3], "y").unwrap();
    g.add_output(e).unwrap();
    let out = canonical_same_result(&g);
    assert_eq!(ops(&out), ["reshape[shape=[2,12]]", "exp"], "{out}");
    assert_eq!(out.nodes[0].inputs, [out.inputs[0]]);
}

#[test]
fn constant_gathers_become_slices() {
    let mut g = Graph::new("gathers");
    let x = g.add_input("x", [2, 8, 4], DType::F32).unwrap();
    let table = g
        .add_param("table", crate::fusion::randn(1, "table", &[16, 4], 1.0))
        .unwrap();
    let i64s = |shape: &[usize], v: Vec<i64>| {
        Tensor::I64(ArrayD::from_shape_vec(IxDyn(shape), v).unwrap())
    };
    let pos_ids = g
        .add_param("pos_ids", i64s(&[1, 8], (0..8).collect()))
        .unwrap();
    let cls = g.add_param("cls", i64s(&[], vec![-8])).unwrap();
    let odd = g.add_param("odd", i64s(&[2], vec![5, 2])).unwrap();
    let pos = g
        .add_node("pos", Op::Gather { axis: 0 }, &[table, pos_ids], "pos")
        .unwrap();
    let first = g
        .add_node("first", Op::Gather { axis: 1 }, &[x, cls], "first")
        .unwrap();
    let picked = g
        .add_node("picked", Op::Gather { axis: 0 }, &[table, odd], "picked")
        .unwrap();
    for v in [pos, first, picked] {
        g.add_output(v).unwrap();
    }
    let out = canonical_same_result(&g);
    // Rows 0..8 of the table, reshaped to the ids' [1, 8]; element 0 (= -8) of axis 1,
    // reshaped to drop it; [5, 2] steps backwards and stays a gather.
    assert_eq!(
        ops(&out),
        [
            "slice[axes=[0] starts=[0] ends=[8] steps=[1]]",
            "reshape[shape=[1,8,4]]",
            "slice[axes=[1] starts=[0] ends=[1] steps=[1]]",
            "reshape[shape=[2,4]]",
            "gather[axis=0]",
        ],
        "{out}"
    );
    let names: Vec<&str> = out.nodes.iter().map(|n| n.name.as_str()).collect();
    assert_eq!(names, ["pos.rows", "pos", "first.rows", "first", "picked"]);
    assert!(out.value_by_name("pos_ids").is_none() && out.value_by_name("cls").is_none());
}

#[test]
fn dce_removes_unreachable_nodes_and_params() {
    let mut g = Graph::new("dead");
    let x = g.add_input("x", [4], DType::F32).unwrap();
    let unused = g.add_input("unused", [4], DType::F32).unwrap();
    let w = g.add_param("w", Tensor::zeros(DType::F32, &[4])).unwrap();
    let a = g.add_node("dead1", Op::Add, &[x, w], "a").unwrap();
    g.add_node("dead2", Op::Exp, &[a], "b").unwrap();
    g.add_node("dead3", Op::Neg, &[unused], "c").unwrap();
    let y = g.add_node("live", Op::Relu, &[x], "y").unwrap();
    g.add_output(y).unwrap();
    let mut c = g.clone();
    assert!(DeadCode.run(&mut c).unwrap());
    c.verify().unwrap();
    assert_eq!(c.nodes.len(), 1);
    assert_eq!(c.nodes[0].name, "live");
    assert!(c.params.is_empty(), "unread param removed");
    assert_eq!(c.inputs.len(), 2, "inputs are the interface and stay");
    assert_eq!(c.values.len(), 3);
    assert!(!DeadCode.run(&mut c).unwrap(), "a second run finds nothing");
}

#[test]
fn cse_merges_identical_nodes() {
    let mut g = Graph::new("cse");
    let x = g.add_input("x", [4, 4], DType::F32).unwrap();
    let a1 = g
        .add_node("a1", Op::Transpose { perm: vec![1, 0] }, &[x], "a1")
        .unwrap();
    let a2 = g
        .add_node("a2", Op::Transpose { perm: vec![1, 0] }, &[x], "a2")
        .unwrap();
    let e1 = g.add_node("e1", Op::Exp, &[a1], "e1").unwrap();
    let e2 = g.add_node("e2", Op::Exp, &[a2], "e2").unwrap();
    // Same op, different attributes: not merged.
    let s1 = g
        .add_node("s1", Op::Softmax { axis: 0 }, &[e1], "s1")
        .unwrap();
    let s2 = g
        .add_node("s2", Op::Softmax { axis: 1 }, &[e2], "s2")
        .unwrap();
    let y = g.add_node("sum", Op::Add, &[s1, s2], "y").unwrap();
    g.add_output(y).unwrap();
    let out = canonical_same_result(&g);
    let names: Vec<&str> = out.nodes.iter().map(|n| n.name.as_str()).collect();
    assert_eq!(names, ["a1", "e1", "s1", "s2", "sum"], "{out}");
    assert_eq!(out.nodes[3].inputs, [out.nodes[1].outputs[0]]);
}

#[test]
fn every_stage_is_dumped_in_order() {
    let g = crate::fusion::example("mlp");
    let mut stages = Vec::new();
    run_middle_end(&g, &CompileOptions::default(), &mut |stage, text| {
        assert!(!text.is_empty(), "{stage}");
        stages.push(stage.to_string());
    })
    .unwrap();
    assert_eq!(
        stages,
        [
            "00-graph",
            "01-canonical",
            "02-optimized",
            "03-fused",
            "04-kernels",
            "05-precision"
        ]
    );
}

/// A deliberately wrong pass: turns the first `exp` into a `reshape` that changes the
/// shape, without updating the output value's type.
#[cfg(debug_assertions)]
struct BreakShapes;

#[cfg(debug_assertions)]
impl Pass for BreakShapes {
    fn name(&self) -> &str {
        "break-shapes"
    }

    fn run(&self, g: &mut Graph) -> Result<bool, neuronc::CompileError> {
        let n = g.nodes.iter_mut().find(|n| n.op == Op::Exp).unwrap();
        n.op = Op::Reshape { shape: vec![-1] };
        Ok(true)
    }
}

/// The per-pass verifier runs in debug builds only (`passes::run_pass`), so this test is
/// compiled only there: in a release test run the broken graph would go unchecked by design.
#[test]
#[cfg(debug_assertions)]
fn the_verifier_catches_a_broken_pass_at_the_pass() {
    let mut g = Graph::new("broken");
    let x = g.add_input("x", [2, 3], DType::F32).unwrap();
    let y = g.add_node("e", Op::Exp, &[x], "y").unwrap();
    g.add_output(y).unwrap();
    let err = neuronc::passes::run_pass(&mut g, &BreakShapes).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.starts_with("verification failed: graph after pass 'break-shapes': "),
        "{msg}"
    );
}
