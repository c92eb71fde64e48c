//! Precision assignment per `--auto-cast` mode and cast type, weight pre-casting, and
//! int8 quantization with calibrated activation scales.
// Test helpers fail the test by panicking; `unwrap` is the assertion.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;

use neuron_isa::{Dtype, TensorKind};
use neuronc::ir::Tensor;
use neuronc::kernel::interp::{interpret, read_view};
use neuronc::kernel::{KernelGraph, KernelOp};
use neuronc::options::{AutoCast, CastType, CompileOptions};
use neuronc::passes::run_middle_end;
use neuronc::reference::{RefOptions, random_inputs, run_reference, run_reference_all};

use crate::fusion::{assert_close, example};

fn compile(name: &str, auto_cast: AutoCast, cast: CastType) -> KernelGraph {
    let o = CompileOptions {
        auto_cast,
        auto_cast_type: cast,
        ..CompileOptions::default()
    };
    run_middle_end(&example(name), &o, &mut |_, _| {}).unwrap()
}

fn is_mm(op: &KernelOp) -> bool {
    matches!(op, KernelOp::MatMul { .. } | KernelOp::Attention { .. })
}

/// The dtype of every tensor of `kind`.
fn dtypes(kg: &KernelGraph, kind: TensorKind) -> Vec<(String, Dtype)> {
    kg.tensors
        .iter()
        .filter(|t| t.kind == kind)
        .map(|t| (t.name.clone(), t.dtype))
        .collect()
}

#[test]
fn auto_cast_none_keeps_fp32() {
    let kg = compile("bert_layer", AutoCast::None, CastType::Bf16);
    for k in &kg.kernels {
        assert_eq!(
            (k.mm_dtype, k.act_dtype, k.act_scale),
            (Dtype::F32, Dtype::F32, None),
            "{}",
            k.name
        );
    }
    assert!(kg.tensors.iter().all(|t| t.dtype == Dtype::F32));
}

#[test]
fn auto_cast_matmult_casts_matmul_operands_and_weights() {
    for (cast, dt) in [
        (CastType::Bf16, Dtype::Bf16),
        (CastType::Fp16, Dtype::F16),
        (CastType::Fp8E4m3, Dtype::Fp8E4m3),
    ] {
        let kg = compile("bert_layer", AutoCast::Matmult, cast);
        for k in &kg.kernels {
            let want_mm = if is_mm(&k.op) { dt } else { Dtype::F32 };
            assert_eq!(
                (k.mm_dtype, k.act_dtype),
                (want_mm, Dtype::F32),
                "{}",
                k.name
            );
        }
        // Matmul weights are stored pre-cast; biases, norm parameters, inputs and outputs
        // keep their types.
        for (name, d) in dtypes(&kg, TensorKind::Weight) {
            let want = if name.ends_with("_w") { dt } else { Dtype::F32 };
            assert_eq!(d, want, "{name}");
        }
        for kind in [TensorKind::Input, TensorKind::Output] {
            assert!(dtypes(&kg, kind).iter().all(|(_, d)| *d == Dtype::F32));
        }
        // Scratch tensors read only as TensorE operands (the projections, the attention
        // context, the FFN activation) are stored in the operand type when it is bf16 or
        // fp16 (rounding at the store instead of at every load: same values); the rest
        // stay fp32.
        // q, k and v are one merged projection (`merge_matmuls`).
        let operand_only = ["q_proj|k_proj|v_proj.lin", "ctx", "ffn_a"];
        for (name, d) in dtypes(&kg, TensorKind::Scratch) {
            let narrow =
                operand_only.contains(&name.as_str()) && matches!(dt, Dtype::Bf16 | Dtype::F16);
            let want = if narrow { dt } else { Dtype::F32 };
            assert_eq!(d, want, "{name}");
        }
    }
}

#[test]
fn auto_cast_all_casts_intermediates_but_never_to_8_bits() {
    for (cast, mm, act) in [
        (CastType::Bf16, Dtype::Bf16, Dtype::Bf16),
        (CastType::Fp16, Dtype::F16, Dtype::F16),
        (CastType::Fp8E4m3, Dtype::Fp8E4m3, Dtype::Bf16),
    ] {
        let kg = compile("bert_layer", AutoCast::All, cast);
        for k in &kg.kernels {
            let want_mm = if is_mm(&k.op) { mm } else { Dtype::F32 };
            assert_eq!((k.mm_dtype, k.act_dtype), (want_mm, act), "{}", k.name);
        }
    }
}

#[test]
fn reduced_precision_stays_close_to_the_reference() {
    let g = example("bert_layer");
    let inputs = random_inputs(&g);
    let want = run_reference(&g, &inputs, RefOptions::default()).unwrap();
    let mut errs = BTreeMap::new();
    for (ac, cast, tol) in [
        (AutoCast::None, CastType::Bf16, 1e-5),
        (AutoCast::Matmult, CastType::Fp16, 5e-3),
        (AutoCast::Matmult, CastType::Bf16, 2e-2),
        (AutoCast::All, CastType::Bf16, 5e-2),
        (AutoCast::Matmult, CastType::Fp8E4m3, 2e-1),
        (AutoCast::Matmult, CastType::Int8, 5e-2),
    ] {
        let kg = compile("bert_layer", ac, cast);
        let got = interpret(&kg, &inputs).unwrap();
        let what = format!("{}/{}", ac.name(), cast.name());
        assert_close(&what, &want, &got, tol);
        errs.insert(
            what,
            want["layer_out"].max_abs_diff(&got["layer_out"]).unwrap(),
        );
    }
    // Coarser types really do round more: the interpreter models the precision.
    assert!(errs["none/bf16"] < errs["matmult/fp16"]);
    assert!(errs["matmult/fp16"] < errs["matmult/bf16"]);
    assert!(errs["matmult/bf16"] < errs["matmult/fp8_e4m3"]);
}

#[test]
fn int8_quantizes_weights_per_channel_and_calibrates_activations() {
    let g = example("mlp");
    let kg = compile("mlp", AutoCast::Matmult, CastType::Int8);
    let mm: Vec<_> = kg.kernels.iter().filter(|k| is_mm(&k.op)).collect();
    assert_eq!(mm.len(), 2);
    let inputs = random_inputs(&g);
    let values = run_reference_all(&g, &inputs, RefOptions::default()).unwrap();
    for k in mm {
        assert_eq!(k.mm_dtype, Dtype::I8, "{}", k.name);
        let KernelOp::MatMul { a, b, .. } = k.op else {
            unreachable!()
        };
        // Weight: int8 data, one scale per output channel = max|w[:, n]| / 127.
        let w = kg.tensor(k.inputs[b].tensor).unwrap();
        assert_eq!(w.dtype, Dtype::I8);
        let Some(Tensor::I8(q)) = w.data.as_deref() else {
            panic!("{} is not int8", w.name)
        };
        let scales = w.quant_scale.as_ref().unwrap();
        assert_eq!(scales.len(), *w.shape.last().unwrap());
        let orig = g
            .value(g.value_by_name(&w.name).unwrap())
            .data
            .as_ref()
            .unwrap()
            .to_f64();
        let n = scales.len();
        for (c, &s) in scales.iter().enumerate() {
            let max = orig
                .iter()
                .skip(c)
                .step_by(n)
                .fold(0.0f64, |m, x| m.max(x.abs()));
            assert!(
                (f64::from(s) - max / 127.0).abs() <= 1e-6 * max,
                "channel {c}"
            );
        }
        assert!(q.iter().all(|&v| v >= -127));
        assert!(q.iter().any(|&v| v.abs() == 127));
        // Activation: max|a| / 127 over the calibration run (seeded random inputs).
        let at = kg.tensor(k.inputs[a].tensor).unwrap();
        let av = values[g.value_by_name(&at.name).unwrap().index()].to_f64();
        let flat: Vec<f64> = av.iter().copied().collect();
        let seen = read_view(&flat, &k.inputs[a]).unwrap();
        let max = seen.iter().fold(0.0f64, |m, x| m.max(x.abs()));
        let s = f64::from(k.act_scale.unwrap());
        assert!(
            (s - max / 127.0).abs() <= 1e-6 * max,
            "{}: {s} vs {}",
            k.name,
            max / 127.0
        );
    }
    // Non-matmul kernels have no activation scale.
    assert!(
        kg.kernels
            .iter()
            .filter(|k| !is_mm(&k.op))
            .all(|k| k.act_scale.is_none())
    );
}

#[test]
fn int8_calibration_uses_the_given_inputs() {
    let g = example("mlp");
    let mut calib = random_inputs(&g);
    let x = calib["x"].to_f64().mapv(|v| (v * 3.0) as f32);
    calib.insert("x".into(), Tensor::F32(x));
    let scale_of = |calibration: BTreeMap<String, Tensor>| {
        let o = CompileOptions {
            auto_cast_type: CastType::Int8,
            calibration,
            ..CompileOptions::default()
        };
        let kg = run_middle_end(&g, &o, &mut |_, _| {}).unwrap();
        kg.kernels[0].act_scale.unwrap()
    };
    let (base, tripled) = (scale_of(BTreeMap::new()), scale_of(calib));
    assert!(
        (f64::from(tripled) / f64::from(base) - 3.0).abs() < 1e-5,
        "{base} {tripled}"
    );
}

#[test]
fn int8_attention_and_activation_matmuls_use_bf16() {
    let kg = compile("bert_layer", AutoCast::Matmult, CastType::Int8);
    for k in &kg.kernels {
        match k.op {
            KernelOp::Attention { .. } => {
                assert_eq!((k.mm_dtype, k.act_scale), (Dtype::Bf16, None));
            }
            KernelOp::MatMul { .. } => {
                assert_eq!(k.mm_dtype, Dtype::I8, "{}", k.name);
                assert!(k.act_scale.is_some_and(|s| s > 0.0));
            }
            _ => assert_eq!(k.mm_dtype, Dtype::F32),
        }
    }
    // int8 under `all` still keeps elementwise work in bf16.
    let kg = compile("bert_layer", AutoCast::All, CastType::Int8);
    assert!(kg.kernels.iter().all(|k| k.act_dtype == Dtype::Bf16));
}

#[test]
fn int8_with_bad_calibration_inputs_names_the_kernel() {
    let g = example("mlp");
    let mut calibration = BTreeMap::new();
    calibration.insert(
        "y".to_string(),
        Tensor::zeros(neuronc::ir::DType::F32, &[8, 784]),
    );
    let o = CompileOptions {
        auto_cast_type: CastType::Int8,
        calibration,
        ..CompileOptions::default()
    };
    let err = run_middle_end(&g, &o, &mut |_, _| {}).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.starts_with("precision assignment for kernel 'fc1+fc1_bias+act1': int8 calibration"),
        "{msg}"
    );
    assert!(msg.contains("'y'"), "{msg}");
}
