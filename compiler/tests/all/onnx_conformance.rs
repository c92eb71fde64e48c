//! ONNX's own node conformance tests (vendored in `tests/fixtures/onnx-node/`, Apache-2.0),
//! run through the importer and the reference executor, and, for the graphs the back end
//! lowers, through compile + simulate at fp32.
//!
//! Every test whose model the importer accepts must pass in the reference executor and,
//! when it compiles, on the simulator; a model the importer rejects must be rejected with
//! a "not supported" error. The per-op table this produces is pinned in `docs/onnx.md`
//! (between the `conformance` markers): a regression changes the table and fails here.
//! Regenerate it with `NEURON_BLESS=1 cargo test -p neuronc --test all onnx_conformance`.

#![allow(clippy::unwrap_used)] // Tests may unwrap: a panic is a test failure.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use neuron_sim::SimOptions;
use neuronc::driver::compile;
use neuronc::frontend::onnx::{OnnxError, OnnxOptions, load_onnx, parse_tensor};
use neuronc::ir::{DType, Tensor};
use neuronc::reference::{RefOptions, run_reference};

use super::backend_harness::{Precision, try_simulate};

fn node_tests() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/onnx-node")
}

fn docs_onnx() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/onnx.md")
}

/// How one node test fared.
#[derive(Debug, Clone, PartialEq)]
enum Outcome {
    /// The importer rejected the model with a "not supported" error (not claimed).
    Rejected(String),
    /// Imported; reference outputs match.
    Pass { chip: Chip },
    /// Imported but wrong (or the reference failed): a bug.
    Fail(String),
}

#[derive(Debug, Clone, PartialEq)]
enum Chip {
    Pass,
    NotLowered,
    Fail(String),
}

/// ONNX's tolerance for its node tests: rtol 1e-3, atol 1e-7; integers and bools exact.
fn close(got: &Tensor, want: &Tensor, atol: f64) -> Result<(), String> {
    if got.shape() != want.shape() {
        return Err(format!(
            "shape {:?}, expected {:?}",
            got.shape(),
            want.shape()
        ));
    }
    let exact = !matches!(want.dtype(), DType::F32 | DType::F16 | DType::Bf16);
    for (i, (a, b)) in got.to_f64().iter().zip(want.to_f64().iter()).enumerate() {
        let ok = if exact {
            a == b
        } else {
            (a.is_nan() && b.is_nan()) || a == b || (a - b).abs() <= atol + 1e-3 * b.abs()
        };
        if !ok {
            return Err(format!("element {i}: got {a}, expected {b}"));
        }
    }
    Ok(())
}

fn read_pb(path: &Path) -> Tensor {
    let bytes = std::fs::read(path).unwrap();
    parse_tensor(&bytes, path.parent().unwrap(), &path.display().to_string()).unwrap()
}

fn run_one(dir: &Path) -> Outcome {
    let model = dir.join("model.onnx");
    let data = dir.join("test_data_set_0");
    let mut g = load_onnx(&model, &OnnxOptions::default());
    if let Err(e) = &g
        && e.to_string().contains("must be a constant")
    {
        // ONNX's node tests feed shape operands (Reshape shapes, Slice bounds, axes,
        // split sizes) as graph inputs; the importer needs them constant, so the integer
        // test inputs are bound as constants and the model is imported again.
        let mut opts = OnnxOptions::default();
        let names = input_names(&model);
        for (k, name) in names.iter().enumerate() {
            let t = read_pb(&data.join(format!("input_{k}.pb")));
            if matches!(t.dtype(), DType::I64 | DType::I32) {
                opts.constant_inputs.insert(name.clone(), t);
            }
        }
        g = load_onnx(&model, &opts);
    }
    let g = match g {
        Ok(g) => g,
        Err(e @ OnnxError::Unsupported { .. }) => return Outcome::Rejected(e.to_string()),
        Err(e) if e.to_string().contains("not supported") => {
            return Outcome::Rejected(e.to_string());
        }
        Err(e) => return Outcome::Fail(format!("import: {e}")),
    };
    let names = input_names(&model);
    let mut inputs = BTreeMap::new();
    for &id in &g.inputs {
        let v = g.value(id);
        let k = names.iter().position(|n| *n == v.name).unwrap();
        let t = read_pb(&data.join(format!("input_{k}.pb")));
        let t = if t.dtype() != v.dtype {
            t.cast(v.dtype)
        } else {
            t
        };
        inputs.insert(v.name.clone(), t);
    }
    let outs = match run_reference(&g, &inputs, RefOptions::default()) {
        Ok(o) => o,
        Err(e) => return Outcome::Fail(format!("reference: {e}")),
    };
    let mut want = Vec::new();
    for (k, &id) in g.outputs.iter().enumerate() {
        let name = g.value(id).name.clone();
        let expected = read_pb(&data.join(format!("output_{k}.pb")));
        if let Err(m) = close(&outs[&name], &expected, 1e-7) {
            return Outcome::Fail(format!("output {k} '{name}': {m}"));
        }
        want.push((name, expected));
    }
    let chip = match compile(&g, &Precision::Fp32.options()) {
        Err(_) => Chip::NotLowered,
        Ok(c) => match try_simulate(&c.artifact, &inputs, SimOptions::default()) {
            Err(e) => Chip::Fail(format!("simulate: {e}")),
            Ok((got, _)) => {
                let mut r = Chip::Pass;
                for (name, expected) in &want {
                    let vals = ndarray::ArrayD::from_shape_vec(
                        expected.shape(),
                        got.get(name).cloned().unwrap_or_default(),
                    );
                    let m = match vals {
                        Ok(a) => close(&Tensor::from_f64(expected.dtype(), a), expected, 1e-5),
                        Err(e) => Err(format!("output size: {e}")),
                    };
                    if let Err(m) = m {
                        r = Chip::Fail(format!("'{name}': {m}"));
                        break;
                    }
                }
                r
            }
        },
    };
    Outcome::Pass { chip }
}

/// The model's graph input names, in order (initializers excluded).
fn input_names(model: &Path) -> Vec<String> {
    use neuronc::frontend::onnx::proto::ModelProto;
    use prost::Message;
    let m = ModelProto::decode(std::fs::read(model).unwrap().as_slice()).unwrap();
    let g = m.graph.unwrap();
    let inits: Vec<_> = g.initializer.iter().map(|t| t.name.clone()).collect();
    g.input
        .iter()
        .filter(|v| !inits.contains(&v.name))
        .map(|v| v.name.clone().unwrap_or_default())
        .collect()
}

/// op -> (test name, outcome), from the manifest (op of each test directory).
fn run_all() -> BTreeMap<String, Vec<(String, Outcome)>> {
    let manifest = std::fs::read_to_string(node_tests().join("manifest.tsv")).unwrap();
    let mut by_op: BTreeMap<String, Vec<(String, Outcome)>> = BTreeMap::new();
    for line in manifest.lines().skip(1) {
        let cols: Vec<&str> = line.split('\t').collect();
        let (op, kind, dir) = (cols[0], cols[1], cols[3]);
        let label = if kind == "expanded" {
            format!("{op} (expanded)")
        } else {
            op.to_string()
        };
        let outcome = run_one(&node_tests().join(dir));
        by_op
            .entry(label)
            .or_default()
            .push((dir.to_string(), outcome));
    }
    by_op
}

fn table(by_op: &BTreeMap<String, Vec<(String, Outcome)>>) -> String {
    let mut s = String::from(
        "| ONNX op | tests | imported | pass (reference) | on chip (fp32) |\n|---|---|---|---|---|\n",
    );
    let (mut tt, mut ti, mut tp, mut tc) = (0, 0, 0, 0);
    for (op, tests) in by_op {
        let n = tests.len();
        let imported = tests
            .iter()
            .filter(|(_, o)| !matches!(o, Outcome::Rejected(_)))
            .count();
        let pass = tests
            .iter()
            .filter(|(_, o)| matches!(o, Outcome::Pass { .. }))
            .count();
        let chip = tests
            .iter()
            .filter(|(_, o)| matches!(o, Outcome::Pass { chip: Chip::Pass }))
            .count();
        let chip_s = if pass == 0 {
            "-".to_string()
        } else if chip == 0 {
            "not lowered".to_string()
        } else {
            format!("{chip}/{pass}")
        };
        s += &format!("| {op} | {n} | {imported} | {pass}/{imported} | {chip_s} |\n");
        (tt, ti, tp, tc) = (tt + n, ti + imported, tp + pass, tc + chip);
    }
    s += &format!("| **total** | {tt} | {ti} | {tp}/{ti} | {tc}/{tp} |\n");
    s
}

fn rejections(by_op: &BTreeMap<String, Vec<(String, Outcome)>>) -> String {
    let mut s = String::new();
    for tests in by_op.values() {
        for (dir, o) in tests {
            if let Outcome::Rejected(m) = o {
                let m = match m.split_once(" in the model: ") {
                    Some((_, ops)) => ops,
                    None => m.as_str(),
                };
                s += &format!("- `{dir}`: {}\n", m.replace('|', "/"));
            }
        }
    }
    s
}

/// Node tests that import and pass in the reference executor but fail on the simulator,
/// with the reason: back-end bugs outside the importer, reported and tracked here so that
/// any other chip failure fails the test.
/// (Empty: `test_gather_negative_indices` passes since the simulator's gather wraps
/// negative indices.)
const KNOWN_CHIP_FAILURES: &[(&str, &str)] = &[];

const BEGIN: &str =
    "<!-- conformance:begin (generated by compiler/tests/all/onnx_conformance.rs) -->\n";
const END: &str = "<!-- conformance:end -->";

#[test]
fn onnx_node_conformance() {
    let by_op = run_all();
    let failures: Vec<String> = by_op
        .values()
        .flatten()
        .filter_map(|(d, o)| match o {
            Outcome::Fail(m) => Some(format!("{d}: {m}")),
            Outcome::Pass {
                chip: Chip::Fail(m),
            } if !KNOWN_CHIP_FAILURES.iter().any(|(k, _)| k == d) => {
                Some(format!("{d} (on chip): {m}"))
            }
            _ => None,
        })
        .collect();
    for f in &failures {
        eprintln!("FAIL {f}");
    }
    let generated = format!(
        "{BEGIN}{}\nKnown failures on the simulator (back-end bugs, not importer bugs):\n\n{}\nTests the importer rejects (each with a clear \"not supported\" error):\n\n{}{END}",
        table(&by_op),
        KNOWN_CHIP_FAILURES
            .iter()
            .map(|(t, why)| format!("- `{t}`: {why}\n"))
            .collect::<String>(),
        rejections(&by_op)
    );
    let doc_path = docs_onnx();
    let doc = std::fs::read_to_string(&doc_path).unwrap_or_default();
    let (Some(b), Some(e)) = (doc.find(BEGIN), doc.find(END)) else {
        panic!("docs/onnx.md lacks the conformance markers; generated:\n{generated}");
    };
    let current = &doc[b..e + END.len()];
    if std::env::var_os("NEURON_BLESS").is_some() {
        let new = format!("{}{generated}{}", &doc[..b], &doc[e + END.len()..]);
        std::fs::write(&doc_path, new).unwrap();
    } else {
        assert!(
            failures.is_empty(),
            "{} node tests fail:\n{}",
            failures.len(),
            failures.join("\n")
        );
        assert_eq!(
            current, generated,
            "the conformance table in docs/onnx.md is out of date (regenerate with NEURON_BLESS=1)"
        );
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
