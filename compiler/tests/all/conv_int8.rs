//! int8 convolutions on the simulated chip: under `--auto-cast-type int8` every
//! convolution multiplies i8 by i8 on TensorE (no silent bf16 fallback), and the
//! simulator's results match the kernel interpreter, which models the same quantization
//! (per-output-channel weight scales, a calibrated per-tensor input scale, fp32 division
//! rounded to nearest even into i8), within the fp32 tolerance; against the fp32
//! reference the reduced ResNet keeps its top-1 class.

#![allow(clippy::unwrap_used)] // Tests may unwrap: a panic is a test failure.

use super::backend_harness::{Precision, check, cosine, reference, simulate};
use super::conv_chip::{conv_graph, mini_resnet};
use neuron_isa::{Dtype, Op as IsaOp, TensorKind};
use neuron_sim::SimOptions;
use neuronc::driver::{Compiled, compile};
use neuronc::ir::{Graph, Tensor};
use neuronc::kernel::KernelOp;
use neuronc::kernel::interp::interpret;
use neuronc::options::{AutoCast, CompileOptions};
use neuronc::passes::run_middle_end;
use neuronc::reference::random_inputs;
use proptest::prelude::*;
use std::collections::BTreeMap;

type Outputs = BTreeMap<String, Vec<f64>>;

/// Compiles `g` at int8, simulates it on `inputs` (race checker on) and interprets its
/// kernel graph on the same inputs.
fn simulate_and_interpret(
    g: &Graph,
    inputs: &BTreeMap<String, Tensor>,
) -> (Compiled, Outputs, Outputs) {
    simulate_and_interpret_with(g, inputs, &Precision::Int8.options())
}

/// [`simulate_and_interpret`] with explicit options.
fn simulate_and_interpret_with(
    g: &Graph,
    inputs: &BTreeMap<String, Tensor>,
    opts: &CompileOptions,
) -> (Compiled, Outputs, Outputs) {
    let opts = opts.clone();
    let c = compile(g, &opts).unwrap_or_else(|e| panic!("compile failed: {e}"));
    let sim_opts = SimOptions {
        check_races: true,
        ..SimOptions::default()
    };
    let (sim, stats) = simulate(&c.artifact, inputs, sim_opts);
    assert!(
        stats
            .warnings
            .iter()
            .all(|w| w.kind != neuron_sim::WarningKind::Race),
        "races: {:?}",
        stats.warnings
    );
    let kg = run_middle_end(g, &opts, &mut |_, _| {}).unwrap();
    let interp = interpret(&kg, inputs)
        .unwrap()
        .into_iter()
        .map(|(k, v)| (k, v.to_f64().iter().copied().collect()))
        .collect();
    (c, sim, interp)
}

/// Every matmul instruction of the program's convolution kernels multiplies i8 by i8 into
/// i32 PSUM; returns how many there are. (An int8 linear layer also issues fp32
/// transposes through the array, so only convolutions are checked.)
fn conv_matmuls_are_int8(c: &Compiled) -> usize {
    let p = &c.artifact.meta.program;
    let mut n = 0;
    for s in &p.streams {
        for i in &s.instrs {
            let Some(kernel) = p.kernels.get(i.kernel as usize) else {
                continue;
            };
            if kernel.kind != "conv2d" {
                continue;
            }
            if let IsaOp::Matmul {
                stationary,
                moving,
                dst,
                ..
            } = &i.op
            {
                let k = &kernel.name;
                assert_eq!(
                    (stationary.dtype, moving.dtype, dst.dtype),
                    (Dtype::I8, Dtype::I8, Dtype::I32),
                    "kernel {k}: a matmul that is not int8"
                );
                n += 1;
            }
        }
    }
    n
}

#[test]
fn under_int8_no_convolution_falls_back_to_bf16() {
    let g = mini_resnet(1, 32);
    let opts = Precision::Int8.options();
    let kg = run_middle_end(&g, &opts, &mut |_, _| {}).unwrap();
    let mut convs = 0;
    for k in &kg.kernels {
        let KernelOp::Conv2d { w, .. } = k.op else {
            continue;
        };
        convs += 1;
        assert_eq!(k.mm_dtype, Dtype::I8, "{} is not int8", k.name);
        assert!(k.act_scale.is_some_and(|s| s > 0.0), "{}", k.name);
        // The (batch_norm-folded) weight is stored i8 with one scale per output channel,
        // channel-last `[C/G, KH, KW, O]` (the kernel's view keeps `[O, C/G, KH, KW]`),
        // and each channel uses the full range.
        let wv = &k.inputs[w];
        let wt = kg.tensor(wv.tensor).unwrap();
        let o = wv.shape[0];
        assert_eq!(wt.dtype, Dtype::I8, "{}", wt.name);
        assert_eq!((wt.quant_axis, wt.shape[3]), (3, o), "{}", wt.name);
        assert_eq!(
            wv.strides[0], 1,
            "{}: output channels are innermost",
            wt.name
        );
        assert_eq!(wt.quant_scale.as_ref().map(Vec::len), Some(o));
        let Some(Tensor::I8(q)) = wt.data.as_deref() else {
            panic!("{} is not int8 data", wt.name)
        };
        for c in 0..o {
            let max = q.iter().skip(c).step_by(o).map(|v| v.abs()).max();
            assert_eq!(max, Some(127), "{} channel {c}", wt.name);
        }
    }
    assert_eq!(convs, 12);
    // On the chip: every matmul of every convolution is i8 x i8 into i32 PSUM (a conv
    // falling back to bf16 would issue bf16 matmuls).
    let c = compile(&g, &opts).unwrap();
    assert!(conv_matmuls_are_int8(&c) > 12);
}

/// `atol 1e-5 + rtol 1e-4` against the interpreter, relative to the output's scale (the
/// chip dequantizes the exact i32 sum in fp32, the interpreter in f64).
fn assert_matches_interpreter(name: &str, got: &[f64], want: &[f64], rtol: f64) {
    let scale = want.iter().fold(0.0f64, |m, x| m.max(x.abs()));
    for (i, (a, b)) in got.iter().zip(want).enumerate() {
        assert!(
            (a - b).abs() <= 1e-5 + rtol * scale,
            "{name}[{i}]: simulator {a}, interpreter {b} (scale {scale})"
        );
    }
}

#[test]
fn reduced_resnet_int8_matches_the_interpreter_and_keeps_the_top1_class() {
    let batch = 8;
    let g = mini_resnet(batch, 32);
    let inputs = random_inputs(&g);
    let (c, sim, interp) = simulate_and_interpret(&g, &inputs);
    conv_matmuls_are_int8(&c);
    let want = reference(&g, &inputs);
    let (got, exact, fp32) = (&sim["logits"], &interp["logits"], &want["logits"]);
    // Layer after layer a last-ulp difference of the fp32 dequantization can move an
    // activation across a rounding boundary of the next quantization: one step of that
    // layer's scale. Hence 1e-3 of the logits' scale rather than the fp32 tolerance.
    assert_matches_interpreter("logits", got, exact, 1e-3);
    check(Precision::Int8, "logits", got, fp32);
    let top1 = |v: &[f64], b: usize| {
        let row = &v[b * 10..(b + 1) * 10];
        (0..10).max_by(|&i, &j| row[i].total_cmp(&row[j])).unwrap()
    };
    let agree = (0..batch)
        .filter(|&b| top1(got, b) == top1(fp32, b))
        .count();
    let scale = fp32.iter().fold(0.0f64, |m, x| m.max(x.abs()));
    let maxerr = got
        .iter()
        .zip(fp32)
        .fold(0.0f64, |m, (a, b)| m.max((a - b).abs()));
    eprintln!(
        "reduced ResNet int8 vs fp32: top-1 {agree}/{batch}, max error {maxerr:.4} (logit scale {scale:.4}), cosine {:.5}",
        cosine(got, fp32)
    );
    assert!(agree >= batch - 1, "top-1 agreement {agree}/{batch}");
    assert!(maxerr <= 0.1 * scale, "max error {maxerr} vs scale {scale}");
}

#[test]
fn under_auto_cast_all_int8_convs_read_bf16_maps_and_match_the_interpreter() {
    let g = mini_resnet(2, 32);
    let opts = CompileOptions {
        auto_cast: AutoCast::All,
        ..Precision::Int8.options()
    };
    let kg = run_middle_end(&g, &opts, &mut |_, _| {}).unwrap();
    // A map between convolutions is stored in the elementwise type (bf16): the int8 conv
    // reading it quantizes what it loads either way.
    let bf16_inputs = kg
        .kernels
        .iter()
        .filter_map(|k| match k.op {
            KernelOp::Conv2d { x, .. } => kg.tensor(k.inputs[x].tensor),
            _ => None,
        })
        .filter(|t| t.kind == TensorKind::Scratch && t.dtype == Dtype::Bf16)
        .count();
    assert!(bf16_inputs >= 6, "{bf16_inputs} conv inputs stored bf16");
    let inputs = random_inputs(&g);
    let (c, sim, interp) = simulate_and_interpret_with(&g, &inputs, &opts);
    assert!(conv_matmuls_are_int8(&c) > 0);
    // The epilogues run in bf16 here, and the chip's eviction adds the bias in the same
    // instruction as the dequantization (one bf16 rounding where the interpreter rounds
    // twice): the bf16 tolerance of the harness, 2e-2 of the scale.
    assert_matches_interpreter("logits", &sim["logits"], &interp["logits"], 2e-2);
    check(
        Precision::Int8,
        "logits",
        &sim["logits"],
        &reference(&g, &inputs)["logits"],
    );
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 10, ..ProptestConfig::default() })]

    #[test]
    fn int8_conv_on_chip_matches_the_interpreter(
        n in 1usize..3,
        cpg in 1usize..6,
        opg in 1usize..6,
        groups_kind in 0usize..3,
        h in 3usize..11,
        w in 3usize..11,
        kh in 1usize..4,
        kw in 1usize..4,
        sh in 1usize..3,
        sw in 1usize..3,
        pads in proptest::array::uniform4(0usize..3),
        dh in 1usize..3,
        dw in 1usize..3,
        seed in 0u64..1000,
    ) {
        let (cin, cout, groups) = match groups_kind {
            0 => (cpg, opg, 1),
            1 => (2 * cpg, 2 * opg, 2),
            _ => (3, 3 * opg, 3),
        };
        if let Some(g) = conv_graph(
            n, cin, cout, [h, w], [kh, kw], [sh, sw], pads, [dh, dw], groups, seed,
        ) {
            let inputs = random_inputs(&g);
            let (c, sim, interp) = simulate_and_interpret(&g, &inputs);
            prop_assert!(conv_matmuls_are_int8(&c) > 0);
            // One conv: its input quantizes to the same i8 values on both sides, so only
            // the fp32 dequantization differs.
            assert_matches_interpreter("y", &sim["y"], &interp["y"], 1e-5);
            let want = reference(&g, &inputs);
            check(Precision::Int8, "y", &sim["y"], &want["y"]);
        }
    }
}
