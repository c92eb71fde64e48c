//! Training: the bundled synthetic data set, the product's MLP example trained on the
//! reference executor, the `training` section's errors, and the step graph's shape.

#![allow(clippy::unwrap_used)] // Tests may unwrap: a panic is a test failure.

use std::path::{Path, PathBuf};

use ndarray::{Array1, Array2};
use neuronc::ir::Tensor;
use neuronc::npy::{read_npy, write_npy};
use neuronc::reference::RefOptions;
use neuronc::rng::SeededRng;
use neuronc::train::{
    LoopConfig, ReferenceRunner, TrainLoadError, TrainState, TrainingSpec, build_step,
    load_training, train,
};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The synthetic 10-class data set bundled in `examples/train/`: 28x28 "images" with
/// values 0..=127 (i8), each class a random blob pattern, every example its class's pattern
/// under heavy per-pixel noise and a random brightness. Seeded with the platform-independent
/// generator, so the files are reproducible bit for bit.
pub fn synthetic_digits(n: usize, seed: u64) -> (Array2<i8>, Array1<i64>) {
    let mut rng = SeededRng::for_tensor(seed, "synthetic_digits");
    let protos: Vec<Vec<f64>> = (0..10)
        .map(|_| {
            // A few Gaussian blobs per class.
            let blobs: Vec<(f64, f64, f64)> = (0..4)
                .map(|_| {
                    (
                        rng.uniform(4.0, 24.0),
                        rng.uniform(4.0, 24.0),
                        rng.uniform(2.0, 5.0),
                    )
                })
                .collect();
            (0..784)
                .map(|i| {
                    let (r, c) = ((i / 28) as f64, (i % 28) as f64);
                    blobs
                        .iter()
                        .map(|&(br, bc, s)| {
                            (-((r - br).powi(2) + (c - bc).powi(2)) / (2.0 * s * s)).exp()
                        })
                        .sum::<f64>()
                        .min(1.0)
                })
                .collect()
        })
        .collect();
    let mut x = Array2::<i8>::zeros((n, 784));
    let mut y = Array1::<i64>::zeros(n);
    for i in 0..n {
        let class = rng.below(10) as usize;
        y[i] = class as i64;
        let brightness = rng.uniform(0.6, 1.0);
        for j in 0..784 {
            let v = 127.0 * protos[class][j] * brightness + rng.normal(0.0, 30.0);
            x[[i, j]] = v.round().clamp(0.0, 127.0) as i8;
        }
    }
    (x, y)
}

#[test]
fn bundled_training_data_is_reproducible() {
    let (x, y) = synthetic_digits(1024, 2026);
    let dir = repo().join("examples/train");
    if std::env::var_os("NEURON_REGENERATE").is_some() {
        std::fs::create_dir_all(&dir).unwrap();
        write_npy(&dir.join("x.npy"), &Tensor::I8(x.clone().into_dyn())).unwrap();
        write_npy(&dir.join("y.npy"), &Tensor::I64(y.clone().into_dyn())).unwrap();
    }
    let bx = read_npy(&dir.join("x.npy")).unwrap();
    let by = read_npy(&dir.join("y.npy")).unwrap();
    assert_eq!(
        bx,
        Tensor::I8(x.into_dyn()),
        "examples/train/x.npy drifted from its generator"
    );
    assert_eq!(by, Tensor::I64(y.clone().into_dyn()));
    // Every class is present.
    for c in 0..10 {
        assert!(y.iter().any(|&l| l == c), "class {c} missing");
    }
}

#[test]
fn the_mlp_example_trains_to_95_percent_on_the_reference() {
    let (_, step) = load_training(&repo().join("examples/mlp_train.json")).unwrap();
    let x = read_npy(&repo().join("examples/train/x.npy")).unwrap();
    let y = read_npy(&repo().join("examples/train/y.npy")).unwrap();
    let mut state = TrainState::new(&step.iface);
    let mut runner = ReferenceRunner {
        step: &step,
        opts: RefOptions::default(),
    };
    let mut losses = Vec::new();
    let cfg = LoopConfig {
        epochs: 3,
        shuffle: true,
        seed: 1,
    };
    let epochs = train(
        &step.iface,
        &mut runner,
        &mut state,
        &x,
        &y,
        cfg,
        &mut |r| losses.push(r.loss),
    )
    .unwrap();
    assert_eq!(losses.len(), 3 * 16);
    // Ten classes: the first loss is near ln 10.
    assert!((losses[0] - 10f64.ln()).abs() < 0.5, "{losses:?}");
    let last = epochs.last().unwrap();
    assert!(last.accuracy.unwrap() >= 0.95, "{epochs:?}");
    assert!(last.loss < 0.3 * losses[0], "{epochs:?}");
}

fn model_with(training: &str) -> String {
    format!(
        r#"{{"name": "t", "inputs": [{{"name": "x", "shape": [4, 3]}}],
        "params": [{{"name": "w", "shape": [3, 5], "init": {{"normal": {{"std": 0.1}}}}}},
                   {{"name": "table", "shape": [5, 5], "init": "ones"}},
                   {{"name": "ids", "shape": [4], "dtype": "i64", "value": [0, 1, 2, 3]}}],
        "nodes": [{{"name": "fc", "op": "matmul", "inputs": ["x", "w"], "outputs": ["z"]}},
                  {{"name": "emb", "op": "gather", "inputs": ["table", "ids"], "outputs": ["e"]}},
                  {{"name": "mix", "op": "add", "inputs": ["z", "e"], "outputs": ["logits"]}}],
        "outputs": ["logits"], "training": {training}}}"#
    )
}

fn load_err(training: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("m.json");
    std::fs::write(&p, model_with(training)).unwrap();
    match load_training(&p) {
        Ok(_) => panic!("accepted {training}"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn training_section_errors_name_the_field() {
    let ok_labels = r#""labels": {"name": "y", "shape": [4], "dtype": "i64"}"#;
    let cases = [
        (
            format!(r#"{{"loss": {{"kind": "cross_entropy", "output": "nope"}}, {ok_labels}, "optimizer": {{"kind": "sgd", "lr": 0.1}}}}"#),
            vec!["training.loss.output", "'nope' is not a graph output", "logits"],
        ),
        (
            format!(r#"{{"loss": {{"kind": "cross_entropy", "output": "logits"}}, {ok_labels}, "optimizer": {{"kind": "sgd", "lr": 0}}, "trainable": ["w"]}}"#),
            vec!["training.optimizer.lr", "positive", "found 0"],
        ),
        (
            format!(r#"{{"loss": {{"kind": "cross_entropy", "output": "logits"}}, {ok_labels}, "optimizer": {{"kind": "adam", "lr": -1}}, "trainable": ["w"]}}"#),
            vec!["training.optimizer.lr", "found -1"],
        ),
        (
            r#"{"loss": {"kind": "cross_entropy", "output": "logits"}, "labels": {"name": "y", "shape": [4, 5], "dtype": "i64"}, "optimizer": {"kind": "sgd", "lr": 0.1}, "trainable": ["w"]}"#.to_string(),
            vec!["training.labels.shape", "expected [4]", "found [4, 5]"],
        ),
        (
            format!(r#"{{"loss": {{"kind": "mse", "output": "logits"}}, {ok_labels}, "optimizer": {{"kind": "sgd", "lr": 0.1}}, "trainable": ["w"]}}"#),
            vec!["training.labels.dtype", "mse needs f32 targets"],
        ),
        (
            format!(r#"{{"loss": {{"kind": "cross_entropy", "output": "logits"}}, {ok_labels}, "optimizer": {{"kind": "sgd", "lr": 0.1}}, "trainable": ["ids"]}}"#),
            vec!["training.trainable[0]", "'ids' is i64, not a float param"],
        ),
        (
            format!(r#"{{"loss": {{"kind": "cross_entropy", "output": "logits"}}, {ok_labels}, "optimizer": {{"kind": "lamb", "lr": 0.1}}}}"#),
            vec!["training.optimizer", "lamb"],
        ),
        (
            format!(r#"{{"loss": {{"kind": "cross_entropy", "output": "logits"}}, {ok_labels}, "optimizer": {{"kind": "adam", "betas": [0.9, 1.5]}}, "trainable": ["w"]}}"#),
            vec!["training.optimizer.betas[1]", "[0, 1)", "1.5"],
        ),
        (
            format!(r#"{{"loss": {{"kind": "cross_entropy", "output": "logits"}}, {ok_labels}, "optimizer": {{"kind": "sgd", "lr": 0.1}}, "trainable": ["w"], "clip_grad_norm": -1}}"#),
            vec!["training.clip_grad_norm", "found -1"],
        ),
    ];
    for (training, wants) in cases {
        let msg = load_err(&training);
        for w in wants {
            assert!(msg.contains(w), "{training}\n -> {msg}\n missing '{w}'");
        }
        assert!(msg.contains("m.json"), "{msg}");
    }
}

#[test]
fn labels_out_of_range_or_misshapen_are_refused_before_training() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("m.json");
    std::fs::write(
        &p,
        model_with(
            r#"{"loss": {"kind": "cross_entropy", "output": "logits"}, "labels": {"name": "y", "shape": [4]}, "optimizer": {"kind": "sgd", "lr": 0.1}, "trainable": ["w"]}"#,
        ),
    )
    .unwrap();
    let (_, step) = load_training(&p).unwrap();
    let x = Tensor::F32(ndarray::ArrayD::zeros(ndarray::IxDyn(&[8, 3])));
    let bad = Tensor::I64(ndarray::arr1(&[0i64, 1, 2, 3, 4, 5, 9, 1]).into_dyn());
    let e = neuronc::train::check_data(&step.iface, &x, &bad)
        .unwrap_err()
        .to_string();
    assert!(e.contains("element 5 is 5, outside the 5 classes"), "{e}");
    let short = Tensor::I64(ndarray::arr1(&[0i64, 1]).into_dyn());
    let e = neuronc::train::check_data(&step.iface, &x, &short)
        .unwrap_err()
        .to_string();
    assert!(e.contains("labels: expected shape [8]"), "{e}");
    let wide = Tensor::F32(ndarray::ArrayD::zeros(ndarray::IxDyn(&[8, 4])));
    let e = neuronc::train::check_data(&step.iface, &wide, &bad)
        .unwrap_err()
        .to_string();
    assert!(e.contains("data: expected shape [N, 3]"), "{e}");
}

#[test]
fn a_model_without_training_section_says_so() {
    let e = load_training(&repo().join("examples/mlp.json")).unwrap_err();
    assert!(matches!(e, TrainLoadError::NoTraining { .. }), "{e}");
    assert!(e.to_string().contains("no `training` section"), "{e}");
}

#[test]
fn the_step_graph_carries_params_and_adam_state() {
    let (graph, step) = load_training(&repo().join("examples/mlp_train.json")).unwrap();
    let names: Vec<&str> = step.iface.carried.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "w1",
            "b1",
            "w2",
            "b2",
            "w1/adam_m",
            "w1/adam_v",
            "b1/adam_m",
            "b1/adam_v",
            "w2/adam_m",
            "w2/adam_v",
            "b2/adam_m",
            "b2/adam_v"
        ]
    );
    let g = &step.graph;
    for c in &step.iface.carried {
        let i = g.value_by_name(&c.name).unwrap();
        let o = g.value_by_name(&c.next).unwrap();
        assert!(g.is_input(i) && g.is_output(o), "{}", c.name);
        assert_eq!(g.value(i).shape, g.value(o).shape);
    }
    // The forward graph is untouched; the step has no param left for the trained weights.
    assert!(graph.value_by_name("w1").is_some_and(|w| graph.is_param(w)));
    assert!(!g.params.iter().any(|&p| g.value(p).name == "w1"));
    // Prefix patterns and frozen params.
    let mut spec = step.iface.spec.clone();
    spec.trainable = Some(vec!["w*".into(), "b1".into()]);
    spec.frozen = vec!["w2".into()];
    let names: Vec<String> = spec
        .resolve(&graph)
        .unwrap()
        .trainable
        .iter()
        .map(|&p| graph.value(p).name.clone())
        .collect();
    assert_eq!(names, ["w1", "b1"]);
    spec.frozen = vec!["nothing*".into()];
    let e = spec.resolve(&graph).unwrap_err().to_string();
    assert!(
        e.contains("training.frozen[0]") && e.contains("matches no param"),
        "{e}"
    );
    // The spec round-trips through serde.
    let doc: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(repo().join("examples/mlp_train.json")).unwrap(),
    )
    .unwrap();
    let spec = TrainingSpec::from_json(&doc["training"]).unwrap();
    assert_eq!(spec, step.iface.spec);
    assert!(build_step(&graph, &spec).is_ok());
}

#[test]
fn neuronc_compiles_a_training_step_to_an_artifact() {
    use assert_cmd::Command;
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("step.neff");
    let run = Command::cargo_bin("neuronc")
        .unwrap()
        .args(["compile", "--train"])
        .arg(repo().join("examples/mlp_train.json"))
        .arg("-o")
        .arg(&out)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "{stderr}");
    assert!(stderr.contains("training step"), "{stderr}");
    assert!(stderr.contains("fp32 precision"), "{stderr}");
    let art = neuron_isa::Artifact::from_bytes(&std::fs::read(&out).unwrap()).unwrap();
    let names: Vec<&str> = art
        .meta
        .program
        .tensors
        .iter()
        .map(|t| t.name.as_str())
        .collect();
    for want in [
        "w1",
        "w1/next",
        "w1/adam_m",
        "train/loss",
        "train/step_size",
        "labels",
    ] {
        assert!(names.contains(&want), "{want} not among {names:?}");
    }
    // The artifact carries the loop's interface: the same one the model.json builds,
    // initial weights included, bit for bit.
    let iface = neuronc::train::interface_from_artifact(&art).unwrap();
    let (_, step) = neuronc::train::load_training(&repo().join("examples/mlp_train.json")).unwrap();
    assert_eq!(iface.spec, step.iface.spec);
    assert_eq!(iface.data_inputs, step.iface.data_inputs);
    assert_eq!(iface.labels, step.iface.labels);
    assert_eq!(iface.output, step.iface.output);
    assert_eq!(iface.carried.len(), step.iface.carried.len());
    for (a, b) in iface.carried.iter().zip(&step.iface.carried) {
        assert_eq!(
            (&a.name, &a.next, a.is_param),
            (&b.name, &b.next, b.is_param)
        );
        let bits = |t: &neuronc::ir::Tensor| t.to_f32().mapv(f32::to_bits);
        assert_eq!(bits(&a.initial), bits(&b.initial), "{}", a.name);
    }
    // Without a training section, --train says what is missing.
    let run = Command::cargo_bin("neuronc")
        .unwrap()
        .args(["compile", "--train"])
        .arg(repo().join("examples/mlp.json"))
        .arg("-o")
        .arg(dir.path().join("x.neff"))
        .output()
        .unwrap();
    assert_eq!(run.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&run.stderr).contains("no `training` section"));
}

/// A step that does no arithmetic: it records the loss scale it is given, reports a
/// non-finite gradient on the chosen steps, and returns `w + 1` as `w/next`, so the carried
/// `w` counts the updates the loop applied.
struct ScriptedRunner {
    overflow_at: std::collections::BTreeSet<u64>,
    scales: Vec<f32>,
}

impl neuronc::train::StepRunner for ScriptedRunner {
    fn run_step(
        &mut self,
        inputs: &std::collections::BTreeMap<String, Tensor>,
    ) -> Result<std::collections::BTreeMap<String, Tensor>, String> {
        use neuronc::train::{GRAD_SQ, LOSS, LOSS_SCALE};
        let one = |v: f32| Tensor::F32(ndarray::ArrayD::from_elem(vec![1], v));
        self.scales
            .push(inputs[LOSS_SCALE].to_f32().iter().next().copied().unwrap());
        let step = self.scales.len() as u64;
        let grad_sq = if self.overflow_at.contains(&step) {
            f32::INFINITY
        } else {
            1.0
        };
        let w = inputs["w"].to_f32().mapv(|v| v + 1.0);
        Ok([
            (LOSS.to_string(), one(0.5)),
            (GRAD_SQ.to_string(), one(grad_sq)),
            (
                "z".to_string(),
                Tensor::zeros(neuronc::ir::DType::F32, &[2, 1]),
            ),
            ("w/next".to_string(), Tensor::F32(w)),
        ]
        .into())
    }
}

#[test]
fn dynamic_loss_scaling_skips_overflow_steps_halves_and_grows_the_scale() {
    use neuronc::ir::DType;
    use neuronc::train::{
        Carried, INITIAL_LOSS_SCALE, IoValue, LOSS_SCALE_GROWTH_INTERVAL, StepInterface,
    };
    let io = |name: &str| IoValue {
        name: name.into(),
        shape: vec![2, 1],
        dtype: DType::F32,
    };
    let spec = |precision: &str| {
        TrainingSpec::from_json(&serde_json::json!({
            "loss": {"kind": "mse", "output": "z"},
            "labels": {"name": "t", "shape": [2, 1], "dtype": "f32"},
            "optimizer": {"kind": "sgd", "lr": 0.1}, "precision": precision}))
        .unwrap()
    };
    let iface = |precision: &str| StepInterface {
        spec: spec(precision),
        data_inputs: vec![io("x")],
        labels: io("t"),
        output: io("z"),
        carried: vec![Carried {
            name: "w".into(),
            next: "w/next".into(),
            initial: Tensor::zeros(DType::F32, &[1]),
            is_param: true,
        }],
        trainable_elements: 1,
        saved_activation_bytes: 0,
    };
    let x = Tensor::zeros(DType::F32, &[2, 1]);
    let run = |iface: &StepInterface, steps: usize, overflow_at: &[u64]| {
        let mut runner = ScriptedRunner {
            overflow_at: overflow_at.iter().copied().collect(),
            scales: vec![],
        };
        let mut state = TrainState::new(iface);
        let mut skipped = vec![];
        // One batch per epoch: `steps` epochs are `steps` steps.
        let cfg = LoopConfig {
            epochs: steps,
            shuffle: false,
            seed: 0,
        };
        train(iface, &mut runner, &mut state, &x, &x, cfg, &mut |r| {
            if r.skipped {
                skipped.push(r.step);
            }
        })
        .unwrap();
        let w = state.values["w"].to_f32().iter().next().copied().unwrap();
        (runner.scales, skipped, w, state.loss_scale)
    };

    let n = LOSS_SCALE_GROWTH_INTERVAL as usize;
    let fp16 = iface("fp16_loss_scaling");
    // Overflows at steps 1 and 2, then at step 500 (which resets the clean-step count).
    let steps = 500 + n + 2;
    let (scales, skipped, w, last) = run(&fp16, steps, &[1, 2, 500]);
    assert_eq!(
        skipped,
        [1, 2, 500],
        "exactly the overflow steps are skipped"
    );
    assert_eq!(
        w,
        (steps - 3) as f32,
        "a skipped step leaves the weights alone"
    );
    let s0 = INITIAL_LOSS_SCALE;
    assert_eq!(s0, 65536.0);
    assert_eq!(scales[0], s0);
    assert_eq!(scales[1], s0 / 2.0, "halved after the overflow at step 1");
    assert_eq!(scales[2], s0 / 4.0, "halved again after step 2");
    assert!(scales[2..500].iter().all(|&s| s == s0 / 4.0), "steady");
    // Steps 501..=500+n are the first n clean steps since the last overflow.
    assert_eq!(
        scales[500],
        s0 / 8.0,
        "halved after the overflow at step 500"
    );
    assert_eq!(
        scales[500 + n - 1],
        s0 / 8.0,
        "not grown before {n} clean steps (the 1,500 clean steps before step 500 do not count)"
    );
    assert_eq!(scales[500 + n], s0 / 4.0, "doubled after {n} clean steps");
    assert_eq!(scales[500 + n + 1], s0 / 4.0);
    assert_eq!(last, s0 / 4.0);

    // Without loss scaling the scale is 1 and a non-finite gradient is not skipped.
    let (scales, skipped, w, _) = run(&iface("fp32"), 3, &[2]);
    assert_eq!(scales, [1.0, 1.0, 1.0]);
    assert!(skipped.is_empty());
    assert_eq!(w, 3.0);
}

#[test]
fn a_small_hbm_recomputes_cheap_activations_with_the_same_results() {
    use neuronc::train::{apply_plan, compile_step, plan_activations};
    let dir = tempfile::tempdir().unwrap();
    let m = r#"{"name": "gelu_mlp", "seed": 3,
        "inputs": [{"name": "x", "shape": [8, 12]}],
        "params": [{"name": "w1", "shape": [12, 16], "init": {"normal": {"std": 0.3}}},
                   {"name": "b1", "shape": [16], "init": {"normal": {"std": 0.1}}},
                   {"name": "w2", "shape": [16, 4], "init": {"normal": {"std": 0.3}}}],
        "nodes": [{"name": "fc1", "op": "matmul", "inputs": ["x", "w1"], "outputs": ["h"]},
                  {"name": "bias1", "op": "add", "inputs": ["h", "b1"], "outputs": ["hb"]},
                  {"name": "act", "op": "gelu", "inputs": ["hb"], "outputs": ["a"]},
                  {"name": "fc2", "op": "matmul", "inputs": ["a", "w2"], "outputs": ["logits"]}],
        "outputs": ["logits"],
        "training": {"loss": {"kind": "cross_entropy", "output": "logits"},
                     "labels": {"name": "y", "shape": [8], "dtype": "i64"},
                     "optimizer": {"kind": "adam", "lr": 0.01}, "precision": "fp32"}}"#;
    let path = dir.path().join("m.json");
    std::fs::write(&path, m).unwrap();
    let (_, step) = load_training(&path).unwrap();
    // trn1's 16 GiB holds everything: nothing is recomputed, and the summary says so.
    let trn1 = neuron_isa::ChipConfig::trn1();
    let keep = plan_activations(&step, trn1.hbm_bytes);
    assert!(keep.recomputed.is_empty(), "{keep}");
    assert_eq!(keep.kept_bytes, step.iface.saved_activation_bytes);
    let compiled = compile_step(&step, &Default::default()).unwrap();
    let summary = compiled.summary.to_string();
    assert!(summary.contains("none recomputed"), "{summary}");

    // An HBM one byte short of holding the state and every saved activation: the gelu
    // output `a` (its input `hb` is kept for gelu's own backward) is recomputed instead.
    let fixed = keep.budget_bytes.abs_diff(trn1.hbm_bytes);
    let small = fixed + keep.kept_bytes - 1;
    let plan = plan_activations(&step, small);
    assert_eq!(plan.recomputed, ["a"], "{plan}");
    assert_eq!(plan.recomputed_bytes, 8 * 16 * 4);
    assert_eq!(plan.kept_bytes, keep.kept_bytes - plan.recomputed_bytes);
    assert!(plan.kept_bytes <= plan.budget_bytes, "{plan}");
    let g = apply_plan(&step, &plan).unwrap();
    let copy = g.value_by_name("a/recompute").unwrap();
    let producer = g.value(copy).producer.unwrap();
    assert!(
        producer.index() >= step.forward_nodes,
        "recomputed in the backward pass"
    );
    // No backward node reads the forward `a` any more.
    let a = g.value_by_name("a").unwrap();
    for n in &g.nodes[step.forward_nodes..] {
        assert!(!n.inputs.contains(&a), "{} still reads a", n.name);
    }
    // Recomputation is exact: the same outputs, bit for bit.
    let mut inputs: std::collections::BTreeMap<String, Tensor> = step
        .iface
        .carried
        .iter()
        .map(|c| (c.name.clone(), c.initial.clone()))
        .collect();
    inputs.extend(step.iface.scalars(1, 1.0));
    let x = ndarray::Array2::from_shape_fn((8, 12), |(i, j)| ((i * 5 + j) % 7) as f32 / 3.0 - 1.0);
    inputs.insert("x".into(), Tensor::F32(x.into_dyn()));
    let y = ndarray::Array1::from_shape_fn(8, |i| (i % 4) as i64);
    inputs.insert("y".into(), Tensor::I64(y.into_dyn()));
    let opts = RefOptions { f64: false };
    let want = neuronc::reference::run_reference(&step.graph, &inputs, opts).unwrap();
    let got = neuronc::reference::run_reference(&g, &inputs, opts).unwrap();
    assert_eq!(want.len(), got.len());
    for (name, w) in &want {
        let bits = |t: &Tensor| t.to_f32().mapv(f32::to_bits);
        assert_eq!(bits(w), bits(&got[name]), "{name}");
    }
    // The rewritten step compiles like any other.
    assert!(neuronc::driver::compile(&g, &Default::default()).is_ok());
}

/// A reduced ResNet-50 (conv, batch_norm, max/global-avg pooling) and a reduced BERT with
/// trainable embeddings (gather tables, the position slice) build and compile a training
/// step: every op on their paths has a gradient that lowers.
#[test]
fn reduced_resnet_and_bert_with_trainable_embeddings_compile_a_training_step() {
    use neuronc::zoo::{self, ZooOptions};
    let cases = [
        (
            "resnet50",
            ZooOptions {
                batch: Some(2),
                image: Some((32, 32)),
                layers: Some(1),
                ..ZooOptions::default()
            },
            "stem.weight",
        ),
        (
            "bert-base",
            ZooOptions {
                batch: Some(2),
                seq: Some(16),
                layers: Some(1),
                vocab: Some(64),
                ..ZooOptions::default()
            },
            "embeddings.word",
        ),
    ];
    for (name, o, probe) in cases {
        let m = zoo::build(name, &o).unwrap();
        let g = neuronc::frontend::parse_model(&m.to_json_string(), Path::new(".")).unwrap();
        let out = g.value(g.outputs[0]).clone();
        let spec = if name == "resnet50" {
            serde_json::json!({"loss": {"kind": "cross_entropy", "output": out.name},
                "labels": {"name": "target", "shape": [out.shape[0]], "dtype": "i64"},
                "optimizer": {"kind": "sgd", "lr": 0.01}, "precision": "fp32"})
        } else {
            serde_json::json!({"loss": {"kind": "mse", "output": out.name},
                "labels": {"name": "target", "shape": out.shape, "dtype": "f32"},
                "optimizer": {"kind": "adamw", "lr": 1e-4}, "precision": "bf16_mixed"})
        };
        let spec = TrainingSpec::from_json(&spec).unwrap();
        let step = build_step(&g, &spec).unwrap_or_else(|e| panic!("{name}: {e}"));
        let next = neuronc::train::next_name(probe);
        assert!(
            step.graph.value_by_name(&next).is_some(),
            "{name}: no updated '{probe}'"
        );
        let compiled = neuronc::train::compile_step(&step, &Default::default())
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(
            compiled.summary.to_string().contains("activations"),
            "{name}: {}",
            compiled.summary
        );
    }
}
