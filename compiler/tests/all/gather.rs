//! Gather (embedding lookup) kernels: multi-tile lookups with an epilogue, large tables,
//! gathers on an inner axis, constant indices, out-of-range indices at run time, and the
//! index bounds the artifact records for generated inputs.

#![allow(clippy::unwrap_used)] // Tests may unwrap: a panic is a test failure.

use super::backend_harness::{
    Precision, compile_and_check, compile_and_check_on, compile_and_check_with, try_simulate,
};
use super::fusion::{kinds, randn};
use ndarray::{ArrayD, IxDyn};
use neuron_sim::SimOptions;
use neuronc::driver::compile;
use neuronc::ir::{DType, Graph, Op, Tensor};
use neuronc::kernel::interp::interpret;
use neuronc::kernel::{EwOp, KernelOp};
use neuronc::options::CompileOptions;
use neuronc::passes::run_middle_end;
use neuronc::reference::random_inputs;
use std::collections::BTreeMap;

/// `y = (table[ids] + pos) * 2` with `ids` of shape `[b, s]` and `pos` `[s, h]`.
fn embedding(vocab: usize, h: usize, b: usize, s: usize, ids: DType) -> Graph {
    let mut g = Graph::new("embedding");
    let table = g
        .add_param("table", randn(1, "table", &[vocab, h], 1.0))
        .unwrap();
    let pos = g.add_param("pos", randn(2, "pos", &[s, h], 1.0)).unwrap();
    let two = g
        .add_param("two", Tensor::F32(ArrayD::from_elem(IxDyn(&[]), 2.0)))
        .unwrap();
    let ids = g.add_input("ids", [b, s], ids).unwrap();
    let e = g
        .add_node("lookup", Op::Gather { axis: 0 }, &[table, ids], "e")
        .unwrap();
    let e = g.add_node("add_pos", Op::Add, &[e, pos], "ep").unwrap();
    let y = g.add_node("scale", Op::Mul, &[e, two], "y").unwrap();
    g.add_output(y).unwrap();
    g
}

fn middle_end(g: &Graph, fuse: bool) -> neuronc::kernel::KernelGraph {
    let opts = CompileOptions {
        fuse,
        ..Precision::Fp32.options()
    };
    run_middle_end(g, &opts, &mut |_, _| {}).unwrap()
}

fn ids_tensor(shape: &[usize], values: Vec<i64>) -> Tensor {
    Tensor::I64(ArrayD::from_shape_vec(IxDyn(shape), values).unwrap())
}

#[test]
fn multi_tile_lookup_with_wide_rows_fuses_its_epilogue() {
    // 300 indices: tiles of 128, 128 and 44 rows; 700 columns: two column chunks.
    let g = embedding(500, 700, 3, 100, DType::I64);
    let kg = middle_end(&g, true);
    assert_eq!(kinds(&kg), ["gather"], "\n{kg}");
    let KernelOp::Gather { epilogue, .. } = &kg.kernels[0].op else {
        unreachable!()
    };
    assert!(matches!(
        epilogue.as_slice(),
        [EwOp::Tensor { .. }, EwOp::Scalar { .. }]
    ));
    assert_eq!(
        kinds(&middle_end(&g, false)),
        ["gather", "elementwise", "elementwise"]
    );
    let (c, _) = compile_and_check(&g, Precision::Fp32);
    let dis = neuron_isa::disasm::disassemble(&c.artifact.meta.program);
    assert_eq!(dis.matches("dma_gather").count(), 3 * 2, "{dis}");
    let mut unfused = Precision::Fp32.options();
    unfused.fuse = false;
    compile_and_check_with(&g, unfused, Precision::Fp32);
    compile_and_check(&g, Precision::Bf16);
}

#[test]
fn bert_sized_vocabulary_with_i32_ids() {
    // The table pattern has one partition per table row: no 128 limit.
    let g = embedding(30522, 16, 2, 64, DType::I32);
    let (c, _) = compile_and_check(&g, Precision::Fp32);
    assert_eq!(
        c.artifact.meta.index_bounds,
        BTreeMap::from([("ids".to_string(), 30522)])
    );
    let dis = neuron_isa::disasm::disassemble(&c.artifact.meta.program);
    assert!(dis.contains("dma_gather"), "{dis}");
}

#[test]
fn gather_on_an_inner_axis_of_a_computed_table_reads_permuted_views() {
    // `tanh(x)[:, ids]`, then relu: a gather kernel over a permuted view of a table an
    // earlier kernel writes (the gather waits for its stores).
    let mut g = Graph::new("inner");
    let x = g.add_input("x", [4, 10, 6], DType::F32).unwrap();
    let ids = g.add_input("ids", [2, 3], DType::I32).unwrap();
    let t = g.add_node("table", Op::Tanh, &[x], "t").unwrap();
    let e = g
        .add_node("pick", Op::Gather { axis: -2 }, &[t, ids], "e")
        .unwrap();
    let y = g.add_node("act", Op::Relu, &[e], "y").unwrap();
    g.add_output(y).unwrap();
    let kg = middle_end(&g, true);
    assert_eq!(kinds(&kg), ["elementwise", "gather"], "\n{kg}");
    let table = &kg.kernels[1].inputs[0];
    assert_eq!(
        (table.shape.as_slice(), table.strides.as_slice()),
        ([10, 4, 6].as_slice(), [6, 60, 1].as_slice())
    );
    assert_eq!(kg.kernels[1].output.shape, [2, 3, 4, 6]);
    compile_and_check(&g, Precision::Fp32);
    let mut unfused = Precision::Fp32.options();
    unfused.fuse = false;
    compile_and_check_with(&g, unfused, Precision::Fp32);
}

#[test]
fn constant_indices_become_views_unless_they_jump() {
    let build = |ids: Vec<i64>| {
        let mut g = Graph::new("const_ids");
        let x = g.add_input("x", [5, 3, 4], DType::F32).unwrap();
        let n = ids.len();
        let ids = g.add_param("ids", ids_tensor(&[1, n], ids)).unwrap();
        let e = g
            .add_node("pick", Op::Gather { axis: 1 }, &[x, ids], "e")
            .unwrap();
        let y = g.add_node("act", Op::Exp, &[e], "y").unwrap();
        g.add_output(y).unwrap();
        g
    };
    // [0, 2] (and -1 = 2 as the last) steps evenly: a strided view read by the exp.
    for ids in [vec![0, 2], vec![1], vec![-3, -2, -1]] {
        let g = build(ids.clone());
        let kg = middle_end(&g, true);
        assert_eq!(kinds(&kg), ["elementwise"], "{ids:?}\n{kg}");
        assert!(kg.tensors.iter().all(|t| t.name != "ids"));
        compile_and_check(&g, Precision::Fp32);
    }
    // [2, 0, 1] does not: a gather kernel reads the constant indices from a weight.
    let g = build(vec![2, 0, 1]);
    let kg = middle_end(&g, true);
    assert_eq!(kinds(&kg), ["gather"], "\n{kg}");
    compile_and_check(&g, Precision::Fp32);
    let mut unfused = Precision::Fp32.options();
    unfused.fuse = false;
    compile_and_check_with(&g, unfused, Precision::Fp32);
}

#[test]
fn an_out_of_range_index_stops_the_run_naming_it() {
    let g = embedding(30, 8, 1, 4, DType::I64);
    let c = compile(&g, &Precision::Fp32.options()).unwrap();
    let mut inputs = BTreeMap::new();
    inputs.insert("ids".to_string(), ids_tensor(&[1, 4], vec![3, 29, 30, 0]));
    let err = try_simulate(&c.artifact, &inputs, SimOptions::default()).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("dma_gather")
            && msg.contains("gather index 30 at partition 2 out of range: the table has 30 rows"),
        "{msg}"
    );
    // Ids below -rows are out of range on the chip, in the kernel interpreter and in the
    // reference alike; -rows..0 count from the end (see `negative ids` below).
    inputs.insert("ids".to_string(), ids_tensor(&[1, 4], vec![0, -31, 1, 2]));
    let msg = try_simulate(&c.artifact, &inputs, SimOptions::default())
        .unwrap_err()
        .to_string();
    assert!(msg.contains("gather index -31 at partition 1"), "{msg}");
    let msg = interpret(&middle_end(&g, true), &inputs)
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("gather index -31 out of range: the table has 30 rows"),
        "{msg}"
    );
    // Negative ids count from the end on the chip, as in the reference.
    inputs.insert("ids".to_string(), ids_tensor(&[1, 4], vec![0, -2, 1, -30]));
    compile_and_check_on(&g, Precision::Fp32.options(), Precision::Fp32, &inputs);
    // Valid ids at the edges of the table run.
    inputs.insert("ids".to_string(), ids_tensor(&[1, 4], vec![29, 0, 29, 0]));
    compile_and_check_on(&g, Precision::Fp32.options(), Precision::Fp32, &inputs);
}

#[test]
fn artifacts_record_index_bounds_of_gathered_inputs() {
    let mut g = Graph::new("bounds");
    let small = g
        .add_param("small", randn(3, "small", &[7, 4], 1.0))
        .unwrap();
    let big = g.add_param("big", randn(4, "big", &[50, 4], 1.0)).unwrap();
    let ids = g.add_input("ids", [6], DType::I64).unwrap();
    let other = g.add_input("other", [6], DType::I32).unwrap();
    let a = g
        .add_node("a", Op::Gather { axis: 0 }, &[small, ids], "ga")
        .unwrap();
    let b = g
        .add_node("b", Op::Gather { axis: 0 }, &[big, ids], "gb")
        .unwrap();
    let s = g.add_node("s", Op::Add, &[a, b], "s").unwrap();
    let o = g
        .add_node("c", Op::Cast { dtype: DType::F32 }, &[other], "oc")
        .unwrap();
    g.add_output(s).unwrap();
    g.add_output(o).unwrap();
    let (c, _) = compile_and_check(&g, Precision::Fp32);
    // The smallest table bounds `ids`; `other` indexes nothing and gets no bound.
    assert_eq!(
        c.artifact.meta.index_bounds,
        BTreeMap::from([("ids".to_string(), 7)])
    );
    assert!(
        random_inputs(&g)["ids"]
            .to_f64()
            .iter()
            .all(|&i| (0.0..7.0).contains(&i))
    );
}

/// An i64 result (here a `where` on int64 operands, as ONNX's `test_where_long_example`)
/// is stored as i32, as neuronx-cc downcasts int64 on trn1: the chip's DMA never writes
/// 64-bit integers. The values come back exact; the inputs stay i64 in HBM.
#[test]
fn i64_results_are_stored_as_i32() {
    let mut g = Graph::new("where_i64");
    let c = g.add_input("c", [2, 3], DType::Bool).unwrap();
    let x = g.add_input("x", [2, 3], DType::I64).unwrap();
    let y = g.add_input("y", [2, 3], DType::I64).unwrap();
    let z = g.add_node("w", Op::Where, &[c, x, y], "z").unwrap();
    g.add_output(z).unwrap();
    let c = compile(&g, &Precision::Fp32.options()).unwrap();
    let p = &c.artifact.meta.program;
    let dtype = |n: &str| p.tensors.iter().find(|t| t.name == n).unwrap().dtype;
    assert_eq!(dtype("z"), neuron_isa::Dtype::I32);
    assert_eq!(dtype("x"), neuron_isa::Dtype::I64);
    let cond = Tensor::Bool(
        ArrayD::from_shape_vec(IxDyn(&[2, 3]), vec![true, false, true, false, false, true])
            .unwrap(),
    );
    let inputs = BTreeMap::from([
        ("c".to_string(), cond),
        (
            "x".to_string(),
            ids_tensor(&[2, 3], vec![1, -2, 3, 4, 5, 1 << 20]),
        ),
        (
            "y".to_string(),
            ids_tensor(&[2, 3], vec![9, -8, 7, -(1 << 22), 5, 0]),
        ),
    ]);
    let (got, _) = try_simulate(&c.artifact, &inputs, SimOptions::default()).unwrap();
    assert_eq!(got["z"], vec![1.0, -8.0, 3.0, -4194304.0, 5.0, 1048576.0]);
}
