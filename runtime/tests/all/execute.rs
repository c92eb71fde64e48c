//! Binding inputs and executing: outputs are right, bad inputs are refused by name.

use crate::common::*;
use ndarray::{ArrayD, IxDyn};
use neuron_isa::{Dtype, TensorId, TensorKind};
use neuron_runtime::{HostTensor, Model, RunOptions, RuntimeError, TensorDesc, seeded_input};
use neuron_sim::WarningKind;

fn arange(shape: &[usize], f: impl Fn(usize) -> f32) -> ArrayD<f32> {
    let n = shape.iter().product();
    ArrayD::from_shape_vec(IxDyn(shape), (0..n).map(f).collect()).unwrap()
}

#[test]
fn relu_outputs_are_exact() {
    let m = Model::from_artifact(relu_artifact()).unwrap();
    let x = arange(&[128, 64], |i| i as f32 * 0.25 - 1000.0);
    let mut b = m.bind();
    b.set_input("x", x.clone()).unwrap();
    let run = m.execute(&b, &RunOptions::default()).unwrap();
    let y = run.outputs["out/y:0"].as_f32().unwrap();
    assert_eq!(y, &x.mapv(|v| v.max(0.0)));
    assert!(run.stats.total_ps > 0);
    assert!(!run.timing_only);
}

#[test]
fn matmul_outputs_match_a_hand_computed_reference() {
    let (n, tiles) = (64u32, 3u32);
    let cols = (n * tiles) as usize;
    let m = Model::from_artifact(mlp_artifact(n, tiles)).unwrap();
    let x = arange(&[128, cols], |i| ((i * 37) % 101) as f32 / 50.0 - 1.0);
    let mut b = m.bind();
    b.set_input("x", x.clone()).unwrap();
    let run = m.execute(&b, &RunOptions::default()).unwrap();
    let y = run.outputs["y"].as_f32().unwrap();
    let want = mlp_expected(x.as_slice().unwrap(), cols);
    assert_eq!(y.shape(), &[128, cols]);
    let mut positive = 0;
    for (i, (&got, &want)) in y.iter().zip(&want).enumerate() {
        assert!(
            (got - want).abs() <= 1e-4 * want.abs().max(1.0),
            "y[{i}] = {got}, expected {want}"
        );
        positive += usize::from(want > 0.0);
    }
    // The data exercises both sides of the relu.
    assert!(positive > 100 && positive < 128 * cols - 100, "{positive}");
    assert_eq!(run.stats.total_flops(), 2 * 128 * 128 * cols as u64);
}

#[test]
fn timing_only_has_the_same_timing_and_no_outputs() {
    let m = Model::from_artifact(mlp_artifact(128, 4)).unwrap();
    let mut b = m.bind();
    b.generate_missing(1).unwrap();
    let full = m.execute(&b, &RunOptions::default()).unwrap();
    let opts = RunOptions {
        timing_only: true,
        ..RunOptions::default()
    };
    let fast = m.execute(&b, &opts).unwrap();
    assert_eq!(fast.stats.total_ps, full.stats.total_ps);
    assert_eq!(fast.stats.records, full.stats.records);
    assert_eq!(fast.stats.engines, full.stats.engines);
    assert!(fast.outputs.is_empty() && fast.timing_only);
    assert_eq!(full.outputs.len(), 1);
}

#[test]
fn progress_reaches_the_instruction_count() {
    let m = Model::from_artifact(mlp_artifact(64, 5)).unwrap();
    let mut b = m.bind();
    b.generate_missing(0).unwrap();
    let mut last = (0, 0);
    m.execute_with_progress(&b, &RunOptions::default(), &mut |d, t| last = (d, t))
        .unwrap();
    let count = m.artifact().meta.program.instruction_count() as u64;
    assert_eq!(last, (count, count));
}

#[test]
fn wrong_inputs_are_refused_by_name() {
    let m = Model::from_artifact(mlp_artifact(64, 1)).unwrap();
    let mut b = m.bind();
    let e = b.set_input("z", arange(&[128, 64], |_| 0.0)).unwrap_err();
    assert_eq!(
        e.to_string(),
        "unknown input 'z': the model's inputs are 'x'"
    );
    let e = b.set_input("x", arange(&[64, 128], |_| 0.0)).unwrap_err();
    assert_eq!(
        e.to_string(),
        "input 'x': expected shape [128, 64], found [64, 128]"
    );
    let e = m.execute(&b, &RunOptions::default()).unwrap_err();
    assert!(matches!(e, RuntimeError::MissingInputs(_)));
    assert!(e.to_string().contains("inputs not bound: 'x'"), "{e}");
    assert_eq!(b.missing(), vec!["x".to_string()]);
    // Integer data converts to a float input.
    b.set_input("x", ArrayD::<i32>::zeros(IxDyn(&[128, 64])))
        .unwrap();
    assert!(b.is_bound("x") && b.missing().is_empty());
}

#[test]
fn integer_inputs_check_dtype_and_range() {
    let mut a = relu_artifact();
    a.meta
        .program
        .tensors
        .push(tensor("ids", TensorKind::Input, &[4], Dtype::I32));
    a.meta
        .program
        .tensors
        .push(tensor("mask", TensorKind::Input, &[4], Dtype::U8));
    let m = Model::from_artifact(a).unwrap();
    let mut b = m.bind();
    let e = b.set_input("ids", arange(&[4], |i| i as f32)).unwrap_err();
    assert_eq!(
        e.to_string(),
        "input 'ids': expected i32 data, found float32 (floats cannot bind an integer input)"
    );
    let big = ArrayD::from_shape_vec(IxDyn(&[4]), vec![1i64, 2, 1 << 40, 3]).unwrap();
    let e = b.set_input("ids", big).unwrap_err();
    assert_eq!(
        e.to_string(),
        "input 'ids': element 2 is 1099511627776, outside the i32 range"
    );
    let e = b.set_input(
        "mask",
        ArrayD::from_shape_vec(IxDyn(&[4]), vec![0i32, 1, -1, 0]).unwrap(),
    );
    assert!(
        e.unwrap_err()
            .to_string()
            .contains("element 2 is -1, outside the u8 range")
    );
    b.set_input(
        "mask",
        ArrayD::from_shape_vec(IxDyn(&[4]), vec![true, false, true, true]).unwrap(),
    )
    .unwrap();
}

#[test]
fn npy_inputs_are_read_and_checked() {
    use ndarray_npy::WriteNpyExt;
    let dir = tempfile::tempdir().unwrap();
    let m = Model::from_artifact(relu_artifact()).unwrap();
    let x64 = ArrayD::from_shape_fn(IxDyn(&[128, 64]), |i| i[1] as f64 - 31.5);
    let good = dir.path().join("x.npy");
    x64.write_npy(std::fs::File::create(&good).unwrap())
        .unwrap();
    let mut b = m.bind();
    b.set_input_npy("x", &good).unwrap();
    let run = m.execute(&b, &RunOptions::default()).unwrap();
    let y = run.outputs["out/y:0"].as_f32().unwrap();
    assert_eq!(y[[3, 0]], 0.0);
    assert_eq!(y[[3, 63]], 31.5);

    let wrong = dir.path().join("wrong.npy");
    ArrayD::<f32>::zeros(IxDyn(&[128, 63]))
        .write_npy(std::fs::File::create(&wrong).unwrap())
        .unwrap();
    let msg = b.set_input_npy("x", &wrong).unwrap_err().to_string();
    assert!(msg.contains("wrong.npy"), "{msg}");
    assert!(
        msg.contains("expected shape [128, 64], found [128, 63]"),
        "{msg}"
    );

    let junk = dir.path().join("junk.npy");
    std::fs::write(&junk, b"not numpy at all").unwrap();
    let msg = b.set_input_npy("x", &junk).unwrap_err().to_string();
    assert!(
        msg.contains("junk.npy") && msg.contains("not a .npy file"),
        "{msg}"
    );

    let c64 = dir.path().join("u16.npy");
    ArrayD::<u16>::zeros(IxDyn(&[128, 64]))
        .write_npy(std::fs::File::create(&c64).unwrap())
        .unwrap();
    let msg = b.set_input_npy("x", &c64).unwrap_err().to_string();
    assert!(msg.contains("unsupported element type '<u2'"), "{msg}");
}

#[test]
fn outputs_round_trip_through_npy() {
    let dir = tempfile::tempdir().unwrap();
    let m = Model::from_artifact(relu_artifact()).unwrap();
    let mut b = m.bind();
    b.generate_missing(3).unwrap();
    let run = m.execute(&b, &RunOptions::default()).unwrap();
    let files = neuron_runtime::write_outputs(dir.path(), &run).unwrap();
    assert_eq!(files.len(), 1);
    assert_eq!(files[0].1, dir.path().join("out_y_0.npy"));
    let back = neuron_runtime::npy::read_npy(&files[0].1).unwrap();
    assert_eq!(&back, &run.outputs["out/y:0"]);
}

#[test]
fn seeded_inputs_match_the_compiler_reference_generator() {
    // The same name, seed and shape in a graph and in an artifact give the same numbers.
    let mut g = neuronc::ir::Graph::new("g");
    g.seed = 11;
    let fx = g
        .add_input("x", vec![3, 5], neuronc::ir::DType::F32)
        .unwrap();
    let ix = g
        .add_input("ids", vec![7], neuronc::ir::DType::I64)
        .unwrap();
    let bx = g
        .add_input("mask", vec![9], neuronc::ir::DType::Bool)
        .unwrap();
    let desc = |name: &str, shape: Vec<u64>, dtype| TensorDesc {
        id: TensorId(0),
        name: name.into(),
        shape,
        dtype,
    };
    let ours = seeded_input(&desc("x", vec![3, 5], Dtype::F32), 11, None);
    let theirs = neuronc::reference::random_input(&g, fx).to_f32();
    assert_eq!(ours.as_f32().unwrap(), &theirs);
    let ours = seeded_input(&desc("ids", vec![7], Dtype::I64), 11, None);
    let theirs = neuronc::reference::random_input(&g, ix).to_i64();
    assert_eq!(ours.as_i64().unwrap(), &theirs);
    let ours = seeded_input(&desc("mask", vec![9], Dtype::U8), 11, None);
    let theirs = neuronc::reference::random_input(&g, bx).to_i64();
    assert_eq!(ours.as_i64().unwrap(), &theirs);
    // A bound from the artifact caps integer draws.
    let HostTensor::I64(ids) = seeded_input(&desc("ids", vec![1000], Dtype::I32), 1, Some(3))
    else {
        panic!("integer inputs are drawn as i64")
    };
    assert!(ids.iter().all(|&v| (0..3).contains(&v)));
    assert!((0..3).all(|v| ids.iter().any(|&x| x == v)));
}

#[test]
fn generated_inputs_are_deterministic_per_seed() {
    let m = Model::from_artifact(relu_artifact()).unwrap();
    let run = |seed| {
        let mut b = m.bind();
        assert_eq!(b.generate_missing(seed).unwrap(), vec!["x".to_string()]);
        assert!(b.generate_missing(seed).unwrap().is_empty());
        m.execute(&b, &RunOptions::default()).unwrap().outputs["out/y:0"].clone()
    };
    assert_eq!(run(5), run(5));
    assert_ne!(run(5), run(6));
}

#[test]
fn reading_unwritten_memory_is_a_warning() {
    let mut a = relu_artifact();
    // The activation reads SBUF bytes nothing wrote.
    if let neuron_isa::Op::Activation { src, .. } = &mut a.meta.program.streams[1].instrs[0].op {
        src.offset = 8192;
    }
    let m = Model::from_artifact(a).unwrap();
    let mut b = m.bind();
    b.generate_missing(0).unwrap();
    let run = m.execute(&b, &RunOptions::default()).unwrap();
    assert!(
        run.stats
            .warnings
            .iter()
            .any(|w| w.kind == WarningKind::PoisonedRead),
        "{:?}",
        run.stats.warnings
    );
    let s = neuron_runtime::Summary::new(&m, &run.stats).unwrap();
    assert!(s.warnings.poisoned_reads >= 1);
    assert!(!s.warnings.messages.is_empty());
}

/// Weights are checked once per model for poison elements; a clean one is bound as
/// poison-free (its loads may be put off), one holding the all-ones pattern is not, and
/// its load is still reported, with the same outputs and warnings on 1 and 2 threads.
#[test]
fn a_poison_element_in_a_weight_is_reported_on_every_thread_count() {
    let run = |poison: bool, threads: usize| {
        let mut a = mlp_artifact(64, 2);
        if poison {
            let w = a.meta.weights[0].offset as usize;
            a.blob.to_mut()[w + 6..w + 8].copy_from_slice(&[0xff, 0xff]);
        }
        let m = Model::from_artifact(a).unwrap();
        let mut b = m.bind();
        b.generate_missing(3).unwrap();
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        let run = pool.install(|| m.execute(&b, &RunOptions::default()).unwrap());
        let poisoned = run
            .stats
            .warnings
            .iter()
            .filter(|w| w.kind == WarningKind::PoisonedRead)
            .count();
        let bits: Vec<Vec<u32>> = run
            .outputs
            .values()
            .map(|t| match t {
                HostTensor::F32(x) => x.iter().map(|v| v.to_bits()).collect(),
                other => panic!("unexpected output {other:?}"),
            })
            .collect();
        (poisoned, bits, run.stats.total_ps)
    };
    for poison in [false, true] {
        let one = run(poison, 1);
        assert_eq!(one.0 > 0, poison, "poison {poison}: {} reports", one.0);
        assert!(run(poison, 2) == one, "poison {poison}: 2 threads differ");
    }
}

#[test]
fn bindings_of_another_model_are_refused() {
    let a = Model::from_artifact(relu_artifact()).unwrap();
    let b = Model::from_artifact(relu_artifact()).unwrap();
    let mut inputs = a.bind();
    inputs.generate_missing(0).unwrap();
    let e = b.execute(&inputs, &RunOptions::default()).unwrap_err();
    assert!(e.to_string().contains("different model"), "{e}");
}

#[test]
fn compiled_embedding_lookups_draw_the_reference_inputs_and_reject_bad_ids() {
    use neuronc::options::{AutoCast, CompileOptions};
    use neuronc::reference::{RefOptions, random_inputs, run_reference};
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../compiler/tests/fixtures/bert_encoder/model.json");
    let g = neuronc::frontend::load_model(&path).unwrap();
    let opts = CompileOptions {
        auto_cast: AutoCast::None,
        ..CompileOptions::default()
    };
    let m = Model::from_artifact(neuronc::driver::compile(&g, &opts).unwrap().artifact).unwrap();
    let bounds = &m.artifact().meta.index_bounds;
    assert_eq!(bounds.get("input_ids"), Some(&30));
    assert_eq!(bounds.get("token_type_ids"), Some(&2));
    // Generated ids stay inside the tables and equal the reference executor's, so the
    // simulated outputs match the reference on them.
    let mut b = m.bind();
    b.generate_missing(g.seed).unwrap();
    let run = m.execute(&b, &RunOptions::default()).unwrap();
    let want = run_reference(&g, &random_inputs(&g), RefOptions::default()).unwrap();
    for (name, w) in &want {
        let got = run.outputs[name].to_f64_vec();
        let w: Vec<f64> = w.to_f64().iter().copied().collect();
        assert_eq!(got.len(), w.len(), "{name}");
        for (i, (a, e)) in got.iter().zip(&w).enumerate() {
            assert!(
                (a - e).abs() <= 1e-5 + 1e-4 * e.abs(),
                "{name}[{i}]: {a} vs {e}"
            );
        }
    }
    // An id outside the vocabulary stops the run, naming it.
    let mut ids: Vec<i64> = (0..16).collect();
    ids[5] = 30;
    b.set_input(
        "input_ids",
        ArrayD::from_shape_vec(IxDyn(&[2, 8]), ids).unwrap(),
    )
    .unwrap();
    let e = m.execute(&b, &RunOptions::default()).unwrap_err();
    assert!(
        e.to_string()
            .contains("gather index 30 at partition 5 out of range: the table has 30 rows"),
        "{e}"
    );
}

#[test]
fn functional_bf16_layer_is_bit_identical_across_thread_counts() {
    // The BERT-base layer at bf16 has matmuls large enough to be split across threads:
    // outputs and cycles must be the same bits with 1 and 3 threads.
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/bert_layer.json");
    let g = neuronc::frontend::load_model(&path).unwrap();
    let opts = neuronc::options::CompileOptions {
        auto_cast: neuronc::options::AutoCast::Matmult,
        auto_cast_type: neuronc::options::CastType::Bf16,
        ..Default::default()
    };
    let m = Model::from_artifact(neuronc::driver::compile(&g, &opts).unwrap().artifact).unwrap();
    let mut inputs = m.bind();
    inputs.generate_missing(1).unwrap();
    let run = |threads: usize| {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        pool.install(|| m.execute(&inputs, &RunOptions::default()).unwrap())
    };
    let (one, three) = (run(1), run(3));
    assert_eq!(one.stats.total_ps, three.stats.total_ps);
    assert!(!one.outputs.is_empty());
    for (name, a) in &one.outputs {
        let (HostTensor::F32(a), Some(HostTensor::F32(b))) = (a, three.outputs.get(name)) else {
            panic!("output {name} is not f32 in both runs");
        };
        let bits = |x: &ArrayD<f32>| x.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(a), bits(b), "output {name}");
    }
}
