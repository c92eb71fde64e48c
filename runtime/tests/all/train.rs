//! `neuron-sim train`: the training loop with every step on the simulated chip, checked
//! step for step against the same loop on the reference executor, plus its errors.

use std::path::Path;
use std::process::Command;

use ndarray::{Array1, Array2};
use ndarray_npy::WriteNpyExt;

fn neuron_sim() -> Command {
    Command::new(env!("CARGO_BIN_EXE_neuron-sim"))
}

/// A 12-16-4 MLP (tanh, then gelu) with a batch of 8, its `training` section given.
fn model(training: &str) -> String {
    format!(
        r#"{{"name": "tiny", "seed": 3,
        "inputs": [{{"name": "x", "shape": [8, 12]}}],
        "params": [{{"name": "w1", "shape": [12, 16], "init": {{"normal": {{"std": 0.3}}}}}},
                   {{"name": "b1", "shape": [16], "init": "zeros"}},
                   {{"name": "w2", "shape": [16, 4], "init": {{"normal": {{"std": 0.3}}}}}},
                   {{"name": "b2", "shape": [4], "init": "zeros"}}],
        "nodes": [{{"name": "fc1", "op": "matmul", "inputs": ["x", "w1"], "outputs": ["h"]}},
                  {{"name": "bias1", "op": "add", "inputs": ["h", "b1"], "outputs": ["hb"]}},
                  {{"name": "act", "op": "relu", "inputs": ["hb"], "outputs": ["a"]}},
                  {{"name": "fc2", "op": "matmul", "inputs": ["a", "w2"], "outputs": ["l"]}},
                  {{"name": "bias2", "op": "add", "inputs": ["l", "b2"], "outputs": ["logits"]}}],
        "outputs": ["logits"], "training": {training}}}"#
    )
}

const ADAM_FP32: &str = r#"{"loss": {"kind": "cross_entropy", "output": "logits"},
    "labels": {"name": "y", "shape": [8], "dtype": "i64"},
    "optimizer": {"kind": "adam", "lr": 0.01}, "clip_grad_norm": 5.0, "precision": "fp32"}"#;

/// Writes the model and a 32-example data set (labels from a fixed linear rule) into `dir`.
fn setup(dir: &Path, training: &str) {
    std::fs::write(dir.join("m.json"), model(training)).unwrap();
    let x = Array2::from_shape_fn((32, 12), |(i, j)| ((i * 7 + j * 3) % 11) as f32 / 5.0 - 1.0);
    let y = Array1::from_shape_fn(32, |i| {
        let s: f32 = (0..12).map(|j| x[[i, j]] * (j as f32 - 5.5)).sum();
        (s.abs() as i64) % 4
    });
    x.write_npy(std::fs::File::create(dir.join("x.npy")).unwrap())
        .unwrap();
    y.write_npy(std::fs::File::create(dir.join("y.npy")).unwrap())
        .unwrap();
}

/// Runs `neuron-sim train` on m.json and returns (per-step losses, stdout).
fn train(dir: &Path, extra: &[&str]) -> (Vec<f64>, String) {
    let (losses, stdout, _) = train_file(dir, "m.json", &[&["--epochs", "2"], extra].concat());
    (losses, stdout)
}

/// Runs `neuron-sim train FILE` and returns (per-step losses, stdout, the per-step log).
fn train_file(dir: &Path, file: &str, extra: &[&str]) -> (Vec<f64>, String, Vec<String>) {
    let out = neuron_sim()
        .current_dir(dir)
        .args(["train", file, "--data", "x.npy", "--labels", "y.npy"])
        .args(["--log-steps"])
        .args(extra)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "{stderr}\n{stdout}");
    let log: Vec<String> = stderr
        .lines()
        .filter(|l| l.starts_with("epoch ") && l.contains(" step "))
        .map(String::from)
        .collect();
    let losses = log
        .iter()
        .filter_map(|l| l.split(" loss ").nth(1))
        .map(|v| v.split_whitespace().next().unwrap().parse().unwrap())
        .collect();
    (losses, stdout, log)
}

/// Compiles m.json's training step into `step.neff` with the library (what
/// `neuronc compile --train m.json -o step.neff` does).
fn compile_neff(dir: &Path) {
    let (_, step) = neuronc::train::load_training(&dir.join("m.json")).unwrap();
    let opts = neuronc::options::CompileOptions::default();
    let compiled = neuronc::train::compile_step(&step, &opts).unwrap();
    compiled.artifact.write(&dir.join("step.neff")).unwrap();
}

#[test]
fn a_compiled_step_neff_trains_bit_identically_to_its_model_json() {
    for training in [ADAM_FP32, &ADAM_FP32.replace("fp32", "bf16_sr")] {
        let dir = tempfile::tempdir().unwrap();
        setup(dir.path(), training);
        compile_neff(dir.path());
        let flags = ["--epochs", "2", "--shuffle", "--seed", "9", "--save"];
        let (_, json_out, json_log) = train_file(
            dir.path(),
            "m.json",
            &[&flags[..], &["a.safetensors"]].concat(),
        );
        let (_, neff_out, neff_log) = train_file(
            dir.path(),
            "step.neff",
            &[&flags[..], &["b.safetensors"]].concat(),
        );
        assert_eq!(json_log.len(), 8, "{json_log:?}");
        // The per-step log prints each loss exactly (shortest round-trip f32).
        assert_eq!(json_log, neff_log, "{training}");
        let epochs = |s: &str| -> Vec<String> {
            s.lines()
                .filter(|l| l.starts_with("epoch"))
                .map(String::from)
                .collect()
        };
        assert_eq!(epochs(&json_out), epochs(&neff_out));
        let a = std::fs::read(dir.path().join("a.safetensors")).unwrap();
        let b = std::fs::read(dir.path().join("b.safetensors")).unwrap();
        assert!(a == b, "{training}: the trained weights differ");
    }
}

#[test]
fn train_refuses_inference_artifacts_and_flags_a_neff_cannot_honour() {
    let dir = tempfile::tempdir().unwrap();
    setup(dir.path(), ADAM_FP32);
    compile_neff(dir.path());
    // The same step without its training metadata (an inference artifact, or one written
    // before format version 3).
    let mut art = neuron_isa::Artifact::read(&dir.path().join("step.neff")).unwrap();
    art.meta.training = None;
    art.write(&dir.path().join("plain.neff")).unwrap();
    let run = |args: &[&str]| {
        let out = neuron_sim()
            .current_dir(dir.path())
            .args(["train"])
            .args(args)
            .args(["--data", "x.npy", "--labels", "y.npy"])
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    let (code, e) = run(&["plain.neff"]);
    assert_eq!(code, Some(1), "{e}");
    assert!(
        e.contains("plain.neff") && e.contains("not a compiled training step"),
        "{e}"
    );
    assert!(e.contains("neuronc compile --train"), "{e}");
    let (code, e) = run(&["step.neff", "--reference"]);
    assert_eq!(code, Some(2), "{e}");
    assert!(e.contains("--reference") && e.contains("model.json"), "{e}");
    let (code, e) = run(&["step.neff", "--target", "trn2"]);
    assert_eq!(code, Some(2), "{e}");
    assert!(
        e.contains("--target trn2") && e.contains("already compiled"),
        "{e}"
    );
    // A truncated artifact is refused as such.
    let bytes = std::fs::read(dir.path().join("step.neff")).unwrap();
    std::fs::write(dir.path().join("cut.neff"), &bytes[..bytes.len() - 1]).unwrap();
    let (code, e) = run(&["cut.neff"]);
    assert_eq!(code, Some(1), "{e}");
    assert!(e.contains("cut.neff") && e.contains("truncated"), "{e}");
}

#[test]
fn simulated_fp32_training_matches_the_reference_step_for_step() {
    let dir = tempfile::tempdir().unwrap();
    setup(dir.path(), ADAM_FP32);
    let (chip, stdout) = train(
        dir.path(),
        &["--save", "w.safetensors", "--profile", "prof"],
    );
    let (reference, _) = train(dir.path(), &["--reference"]);
    assert_eq!(chip.len(), 8, "2 epochs of 4 steps");
    assert_eq!(chip.len(), reference.len());
    for (i, (c, r)) in chip.iter().zip(&reference).enumerate() {
        assert!(
            (c - r).abs() <= 1e-4 * r.abs().max(1e-3),
            "step {}: chip loss {c} vs reference {r}",
            i + 1
        );
    }
    assert!(chip[7] < chip[0], "the loss must fall: {chip:?}");
    assert!(stdout.contains("us per step"), "{stdout}");
    assert!(stdout.contains("samples/s"), "{stdout}");
    assert!(stdout.contains("accuracy"), "{stdout}");
    // The last step's profile, with the training step's kernels in it.
    let summary: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("prof/summary.json")).unwrap(),
    )
    .unwrap();
    assert!(summary["latency_ns"].as_f64().unwrap() > 0.0, "{summary}");
    assert!(dir.path().join("prof/flame.svg").is_file());
    assert!(dir.path().join("prof/trace.json").is_file());
    // The saved weights load as the model's weights file.
    let bytes = std::fs::read(dir.path().join("w.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut names: Vec<String> = st.names().into_iter().map(String::from).collect();
    names.sort();
    assert_eq!(names, ["b1", "b2", "w1", "w2"]);
}

/// Trains 6 epochs of SGD with a tiny learning rate under `precision` (plus `extra` flags)
/// and returns the last epoch's mean loss.
fn last_epoch_loss(precision: &str, extra: &[&str]) -> f64 {
    let dir = tempfile::tempdir().unwrap();
    let training = format!(
        r#"{{"loss": {{"kind": "cross_entropy", "output": "logits"}},
        "labels": {{"name": "y", "shape": [8], "dtype": "i64"}},
        "optimizer": {{"kind": "sgd", "lr": 0.002}}, "precision": "{precision}"}}"#
    );
    setup(dir.path(), &training);
    let out = neuron_sim()
        .current_dir(dir.path())
        .args(["train", "m.json", "--data", "x.npy", "--labels", "y.npy"])
        .args(["--epochs", "6", "--seed", "5", "--log-steps"])
        .args(extra)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let last = stdout
        .lines()
        .rfind(|l| l.starts_with("epoch"))
        .unwrap()
        .to_string();
    last.split("loss ")
        .nth(1)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

#[test]
fn bf16_stochastic_rounding_beats_round_to_nearest_on_weights() {
    // A tiny learning rate: most bf16 round-to-nearest updates are lost (|lr * step| below
    // half an ulp of the weight), stochastic rounding keeps them in expectation.
    let fp32 = last_epoch_loss("fp32", &[]);
    let sr = last_epoch_loss("bf16_sr", &[]);
    let rne = last_epoch_loss("bf16_sr", &["--rounding", "rne"]);
    assert!(
        (sr - fp32).abs() < (rne - fp32).abs(),
        "stochastic rounding {sr} should track fp32 {fp32} better than round-to-nearest {rne}"
    );
}

#[test]
fn train_errors_name_the_file_and_exit_1() {
    let dir = tempfile::tempdir().unwrap();
    setup(dir.path(), ADAM_FP32);
    let bad = Array1::from_shape_fn(32, |i| (i % 7) as i64);
    bad.write_npy(std::fs::File::create(dir.path().join("bad.npy")).unwrap())
        .unwrap();
    let out = neuron_sim()
        .current_dir(dir.path())
        .args(["train", "m.json", "--data", "x.npy", "--labels", "bad.npy"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(e.contains("outside the 4 classes"), "{e}");
    let out = neuron_sim()
        .current_dir(dir.path())
        .args([
            "train", "m.json", "--data", "x.npy", "--labels", "y.npy", "--batch", "16",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(e.contains("compiled for batch 8"), "{e}");
}

#[test]
fn fp16_loss_scaling_on_the_chip_skips_overflowing_steps_until_the_scale_fits() {
    // Targets of 1000 make d(loss)/d(logits) about 62.5; times the initial scale 65,536 the
    // fp16 matmul operands of the backward pass overflow to inf, so the first steps must be
    // skipped (weights untouched) with the scale halved each time, until it fits fp16.
    let dir = tempfile::tempdir().unwrap();
    let training = r#"{"loss": {"kind": "mse", "output": "logits"},
        "labels": {"name": "t", "shape": [8, 4], "dtype": "f32"},
        "optimizer": {"kind": "adam", "lr": 0.01}, "precision": "fp16_loss_scaling"}"#;
    std::fs::write(dir.path().join("m.json"), model(training)).unwrap();
    let x = Array2::from_shape_fn((8, 12), |(i, j)| ((i * 7 + j * 3) % 11) as f32 / 5.0 - 1.0);
    x.write_npy(std::fs::File::create(dir.path().join("x.npy")).unwrap())
        .unwrap();
    Array2::from_elem((8, 4), 1000.0f32)
        .write_npy(std::fs::File::create(dir.path().join("y.npy")).unwrap())
        .unwrap();
    // One batch of 8: every step sees the same examples.
    let (losses, _, log) = train_file(dir.path(), "m.json", &["--epochs", "14"]);
    assert_eq!(losses.len(), 14, "{log:?}");
    let skipped: Vec<bool> = log.iter().map(|l| l.contains("skipped")).collect();
    let k = skipped.iter().take_while(|&&s| s).count();
    assert!(
        k >= 6,
        "65,536 / 2^k * 62.5 fits fp16 only from k = 6: {log:#?}"
    );
    assert!(
        k < 12,
        "the scale must come down to a usable value: {log:#?}"
    );
    assert!(
        skipped[k..].iter().all(|&s| !s),
        "no overflow after: {log:#?}"
    );
    assert!(losses.iter().all(|l| l.is_finite()), "{log:#?}");
    // Skipped steps leave the weights alone: the same forward pass, the same loss bits.
    assert!(
        losses[..=k].iter().all(|&l| l == losses[0]),
        "weights changed during skipped steps: {log:#?}"
    );
    assert!(
        losses[13] < losses[k],
        "the loss must fall once steps apply: {log:#?}"
    );
}

#[test]
fn bf16_gradients_match_the_f64_reference_within_the_documented_bound() {
    use ndarray::{Array, Ix2};
    use neuron_runtime::{Bindings, HostTensor, Model, RunOptions};
    use neuronc::rng::SeededRng;
    // z = x @ w, MSE against t, SGD with lr 1: w - w/next is the gradient the chip
    // computed (docs/training.md, "Precision policies": the bound below).
    let (b, k, n) = (256usize, 96usize, 24usize);
    let training = format!(
        r#"{{"loss": {{"kind": "mse", "output": "z"}},
        "labels": {{"name": "t", "shape": [{b}, {n}], "dtype": "f32"}},
        "optimizer": {{"kind": "sgd", "lr": 1.0}}, "precision": "bf16_mixed"}}"#
    );
    let m = format!(
        r#"{{"name": "linear", "seed": 11,
        "inputs": [{{"name": "x", "shape": [{b}, {k}]}}],
        "params": [{{"name": "w", "shape": [{k}, {n}], "init": {{"normal": {{"std": 0.3}}}}}}],
        "nodes": [{{"name": "fc", "op": "matmul", "inputs": ["x", "w"], "outputs": ["z"]}}],
        "outputs": ["z"], "training": {training}}}"#
    );
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("m.json"), m).unwrap();
    let (_, step) = neuronc::train::load_training(&dir.path().join("m.json")).unwrap();
    let compiled = neuronc::train::compile_step(&step, &Default::default()).unwrap();
    let model = Model::from_artifact(compiled.artifact).unwrap();
    let mut rng = SeededRng::for_tensor(5, "bf16-grad");
    let mut draw = |r: usize, c: usize| {
        Array::from_shape_fn((r, c), |_| rng.uniform(-1.0, 1.0) as f32).into_dimensionality::<Ix2>()
    };
    let x = draw(b, k).unwrap();
    let t = draw(b, n).unwrap();
    let w = step.iface.carried[0]
        .initial
        .to_f32()
        .into_dimensionality::<Ix2>()
        .unwrap();
    let mut bind = Bindings::new(&model);
    bind.set_input("x", HostTensor::F32(x.clone().into_dyn()))
        .unwrap();
    bind.set_input("t", HostTensor::F32(t.clone().into_dyn()))
        .unwrap();
    bind.set_input("w", HostTensor::F32(w.clone().into_dyn()))
        .unwrap();
    for (name, v) in step.iface.scalars(1, 1.0) {
        bind.set_input(&name, HostTensor::F32(v.to_f32())).unwrap();
    }
    let run = model.execute(&bind, &RunOptions::default()).unwrap();
    let next = run.outputs["w/next"].as_f32().unwrap().clone();
    let next = next.into_dimensionality::<Ix2>().unwrap();

    // The f64 reference gradient, and the magnitudes the bound is made of.
    let f = |a: &ndarray::Array2<f32>| a.mapv(f64::from);
    let (x, t, w) = (f(&x), f(&t), f(&w));
    let scale = 2.0 / (b * n) as f64;
    let dz = (x.dot(&w) - &t) * scale;
    let g = x.t().dot(&dz);
    let g_chip = &w - &f(&next);
    // bf16 unit roundoff u; fp32's; a product of two rounded operands is off by at most
    // 2u + u^2 relative, an fp32 sum of K terms by (K - 1) u32 of the sum of magnitudes.
    let u = 2f64.powi(-8);
    let u32_ = 2f64.powi(-24);
    let gamma = |len: usize| 2.0 * u + u * u + len as f64 * u32_;
    let e_z = x.mapv(f64::abs).dot(&w.mapv(f64::abs)) * gamma(k);
    // z - t and the scale by 2/(BN) in fp32 (each one more u32), then the error carried.
    let e_dz = &e_z * scale + dz.mapv(|v| 2.0 * u32_ * v.abs());
    let ax = x.mapv(f64::abs).reversed_axes();
    let bound = ax.dot(&(dz.mapv(f64::abs) + &e_dz)) * gamma(b)
        + ax.dot(&e_dz)
        // w - g in fp32 and its recovery as w - w/next.
        + (w.mapv(f64::abs) + g.mapv(f64::abs)) * (2.0 * u32_);
    let mut worst = 0.0f64;
    for ((i, &gc), &gr) in g_chip.indexed_iter().zip(g.iter()) {
        let (err, lim) = ((gc - gr).abs(), bound[i]);
        assert!(
            err <= lim,
            "grad w{i:?}: chip {gc} vs f64 {gr}: error {err:.3e} exceeds the bound {lim:.3e}"
        );
        worst = worst.max(err / lim);
    }
    let gmax = g.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    let emax = g_chip
        .iter()
        .zip(g.iter())
        .fold(0.0f64, |m, (a, b)| m.max((a - b).abs()));
    eprintln!(
        "bf16 gradient: max error {emax:.3e} of max |g| {gmax:.3e}; worst error/bound {worst:.3}"
    );
    // The step really computed in bf16: fp32 matmuls would be ~1000x closer.
    assert!(
        emax > 1e-4 * gmax,
        "max error {emax:.3e} is fp32-like: no bf16 cast?"
    );
}

/// Trains `model` (m.json in `dir`, with x.npy and y.npy there) for 2 epochs on the chip and
/// on the reference executor; the per-step losses and the saved weights must agree at fp32
/// tolerance (every step's update is the compiled backward's gradients, so a wrong gradient
/// kernel shows in the next step's loss and in the weights).
fn chip_trains_like_the_reference(dir: &Path, params: &[&str]) {
    let (chip, _) = train(dir, &["--save", "chip.safetensors"]);
    let (reference, _) = train(dir, &["--reference", "--save", "ref.safetensors"]);
    assert_eq!(chip.len(), reference.len());
    assert!(chip.len() >= 4, "{chip:?}");
    for (i, (c, r)) in chip.iter().zip(&reference).enumerate() {
        assert!(
            (c - r).abs() <= 1e-4 * r.abs().max(1e-3),
            "step {}: chip loss {c} vs reference {r}",
            i + 1
        );
    }
    assert!(
        chip[chip.len() - 1] < chip[0],
        "the loss must fall: {chip:?}"
    );
    let a = std::fs::read(dir.join("chip.safetensors")).unwrap();
    let b = std::fs::read(dir.join("ref.safetensors")).unwrap();
    let (a, b) = (
        safetensors::SafeTensors::deserialize(&a).unwrap(),
        safetensors::SafeTensors::deserialize(&b).unwrap(),
    );
    for p in params {
        let f32s = |t: safetensors::tensor::TensorView<'_>| -> Vec<f32> {
            t.data()
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect()
        };
        let (x, y) = (f32s(a.tensor(p).unwrap()), f32s(b.tensor(p).unwrap()));
        assert_eq!(x.len(), y.len(), "{p}");
        let scale = y.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-3);
        for (i, (u, v)) in x.iter().zip(&y).enumerate() {
            assert!(
                (u - v).abs() <= 1e-4 * scale,
                "{p}[{i}]: chip {u} vs reference {v}"
            );
        }
    }
}

#[test]
fn a_conv_relu_pool_linear_net_trains_on_the_chip_like_the_reference() {
    // conv 3x3 (2 -> 4 channels, pad 1, bias) -> batch_norm (trainable scale and bias)
    // -> relu -> max_pool 2x2 -> avg_pool 2x2 stride 1 -> linear, batch 8 of 2x8x8 images.
    let m = r#"{"name": "convnet", "seed": 5,
      "inputs": [{"name": "x", "shape": [8, 2, 8, 8]}],
      "params": [{"name": "cw", "shape": [4, 2, 3, 3], "init": {"normal": {"std": 0.3}}},
                 {"name": "cb", "shape": [4], "init": "zeros"},
                 {"name": "bn_scale", "shape": [4], "init": "ones"},
                 {"name": "bn_bias", "shape": [4], "init": "zeros"},
                 {"name": "bn_mean", "shape": [4], "init": "zeros"},
                 {"name": "bn_var", "shape": [4], "init": "ones"},
                 {"name": "fw", "shape": [36, 4], "init": {"normal": {"std": 0.2}}},
                 {"name": "fb", "shape": [4], "init": "zeros"}],
      "nodes": [{"name": "conv", "op": "conv2d", "inputs": ["x", "cw", "cb"], "outputs": ["c"],
                 "attrs": {"pads": [1, 1, 1, 1]}},
                {"name": "bn", "op": "batch_norm",
                 "inputs": ["c", "bn_scale", "bn_bias", "bn_mean", "bn_var"], "outputs": ["n"]},
                {"name": "act", "op": "relu", "inputs": ["n"], "outputs": ["r"]},
                {"name": "pool", "op": "max_pool2d", "inputs": ["r"], "outputs": ["p"],
                 "attrs": {"kernel": [2, 2], "strides": [2, 2]}},
                {"name": "smooth", "op": "avg_pool2d", "inputs": ["p"], "outputs": ["q"],
                 "attrs": {"kernel": [2, 2]}},
                {"name": "flat", "op": "reshape", "inputs": ["q"], "outputs": ["f"],
                 "attrs": {"shape": [8, 36]}},
                {"name": "fc", "op": "matmul", "inputs": ["f", "fw"], "outputs": ["l"]},
                {"name": "bias", "op": "add", "inputs": ["l", "fb"], "outputs": ["logits"]}],
      "outputs": ["logits"],
      "training": {"loss": {"kind": "cross_entropy", "output": "logits"},
                   "labels": {"name": "y", "shape": [8], "dtype": "i64"},
                   "frozen": ["bn_mean", "bn_var"],
                   "optimizer": {"kind": "adam", "lr": 0.01}, "precision": "fp32"}}"#;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("m.json"), m).unwrap();
    let x = ndarray::Array4::from_shape_fn((32, 2, 8, 8), |(i, c, h, w)| {
        ((i * 5 + c * 3 + h * 7 + w * 11) % 13) as f32 / 6.0 - 1.0
    });
    let y = Array1::from_shape_fn(32, |i| (i % 4) as i64);
    x.write_npy(std::fs::File::create(dir.path().join("x.npy")).unwrap())
        .unwrap();
    y.write_npy(std::fs::File::create(dir.path().join("y.npy")).unwrap())
        .unwrap();
    chip_trains_like_the_reference(dir.path(), &["cw", "cb", "bn_scale", "bn_bias", "fw"]);
}

#[test]
fn an_embedding_model_trains_its_table_on_the_chip_like_the_reference() {
    // ids [8, 6] -> gather from a trainable [20, 8] table -> slice of the positions 1..5
    // -> mean over positions -> linear: the table's gradient is the one-hot matmul.
    let m = r#"{"name": "embed", "seed": 7,
      "inputs": [{"name": "x", "shape": [8, 6], "dtype": "i64"}],
      "params": [{"name": "table", "shape": [20, 8], "init": {"normal": {"std": 0.5}}},
                 {"name": "w", "shape": [8, 4], "init": {"normal": {"std": 0.3}}}],
      "nodes": [{"name": "emb", "op": "gather", "inputs": ["table", "x"], "outputs": ["e"]},
                {"name": "mid", "op": "slice", "inputs": ["e"], "outputs": ["s"],
                 "attrs": {"axes": [1], "starts": [1], "ends": [5]}},
                {"name": "pool", "op": "reduce_mean", "inputs": ["s"], "outputs": ["p"],
                 "attrs": {"axes": [1], "keepdims": false}},
                {"name": "fc", "op": "matmul", "inputs": ["p", "w"], "outputs": ["logits"]}],
      "outputs": ["logits"],
      "training": {"loss": {"kind": "cross_entropy", "output": "logits"},
                   "labels": {"name": "y", "shape": [8], "dtype": "i64"},
                   "optimizer": {"kind": "adam", "lr": 0.05}, "precision": "fp32"}}"#;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("m.json"), m).unwrap();
    let x = Array2::from_shape_fn((32, 6), |(i, j)| ((i * 3 + j * 7) % 20) as i64);
    let y = Array1::from_shape_fn(32, |i| ((i * 3 + 7) % 20 % 4) as i64);
    x.write_npy(std::fs::File::create(dir.path().join("x.npy")).unwrap())
        .unwrap();
    y.write_npy(std::fs::File::create(dir.path().join("y.npy")).unwrap())
        .unwrap();
    chip_trains_like_the_reference(dir.path(), &["table", "w"]);
}
