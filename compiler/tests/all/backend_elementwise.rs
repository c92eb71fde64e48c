//! How elementwise kernels lay out short rows (compiler/src/backend/lower/rows.rs,
//! `packed_space`, and operands.rs, `CompactLoad`): many rows of a few elements are packed
//! several per partition, and operands that repeat along the packed rows or along the
//! columns are loaded once, compact, instead of one DMA element at a time. Structure is
//! checked, and the simulated results against the reference.

#![allow(clippy::unwrap_used)] // Tests may unwrap: a panic is a test failure.

use super::backend_harness::{Precision, compile_and_check};
use neuron_isa::{Ap, Engine, Memory, Op, Program};
use neuron_sim::dma::contiguous_run_bytes as run_bytes;
use neuronc::ir::Graph;

/// Every DMA of `p` as `(src, dst)`.
fn dmas(p: &Program) -> Vec<(&Ap, &Ap)> {
    let mut v = Vec::new();
    for s in &p.streams {
        let Engine::Dma(_) = s.engine else { continue };
        for i in &s.instrs {
            if let Op::Dma { dst, src } = &i.op {
                v.push((src, dst));
            }
        }
    }
    v
}

fn model(inputs: &[(&str, &[usize])], nodes: &str, outputs: &str) -> Graph {
    let inputs: Vec<String> = inputs
        .iter()
        .map(|(n, s)| format!(r#"{{"name": "{n}", "shape": {s:?}, "dtype": "f32"}}"#))
        .collect();
    let text = format!(
        r#"{{"name": "e", "seed": 0, "inputs": [{}], "params": [],
            "nodes": [{nodes}], "outputs": [{outputs}]}}"#,
        inputs.join(", ")
    );
    neuronc::frontend::parse_model(&text, std::path::Path::new(".")).unwrap()
}

/// T5's relative-position step function: a `[128, 128, 1]` distance minus a `[33]` row of
/// bucket ids, over `[128, 128, 33]` (132 B rows). Each store moves a partition's packed
/// rows of one column chunk in one run (20 rows, 2.6 KiB; the last chunk 8), where it was
/// one 132 B row per partition per descriptor; the distance loads one value per packed row
/// instead of one DMA element per output element; the bucket row is fetched onto one
/// partition and broadcast on chip.
#[test]
fn short_rows_pack_per_partition_and_broadcasts_load_compact() {
    let g = model(
        &[("d", &[128, 128, 1]), ("ids", &[33])],
        r#"{"name": "s", "op": "sub", "inputs": ["d", "ids"], "outputs": ["s"]},
           {"name": "r", "op": "relu", "inputs": ["s"], "outputs": ["y"]}"#,
        r#""y""#,
    );
    let (c, outs) = compile_and_check(&g, Precision::Fp32);
    assert_eq!(outs["y"].len(), 128 * 128 * 33);
    let p = &c.artifact.meta.program;
    let (mut loads, mut stores) = (0, 0);
    for (src, dst) in dmas(p) {
        if matches!(dst.mem, Memory::Hbm(_)) {
            stores += 1;
            assert_eq!(src.partitions, 128, "{src}");
            // One run per partition: all the packed rows of the column chunk.
            assert_eq!(run_bytes(dst), 4 * dst.free_elems(), "{dst}");
            assert!(
                run_bytes(dst) >= 1024,
                "a store of {} B runs: {dst}",
                run_bytes(dst)
            );
        } else if matches!(src.mem, Memory::Hbm(_)) {
            loads += 1;
            // The bucket row: 33 values onto one partition, broadcast by TensorE.
            if dst.partitions == 1 {
                assert_eq!(src.free_elems(), 33, "{src}");
                continue;
            }
            assert!(
                src.dims.iter().all(|d| d.stride != 0 || d.size == 1),
                "a load repeats elements in HBM: {src}"
            );
            // Compact: one run of distances per partition, a value per packed row of the
            // column chunk (one 4 B element per descriptor before).
            assert!(src.free_elems() >= 8, "{src}");
            assert_eq!(run_bytes(src), 4 * src.free_elems(), "{src}");
        }
    }
    assert!(stores >= 1 && loads >= 2, "{stores} stores, {loads} loads");
    // 2 MiB out in whole-partition runs: a handful of tiles, not one per 128 rows.
    assert!(stores <= 32, "{stores} stores");
}

/// Packing with a remainder and every operand class: `[4, 300, 24]` rows (two per
/// partition: 150 per batch, tiles of 128 and 22), a full operand, a bias row `[24]`, a
/// per-row column `[4, 300, 1]` and a scalar, in fp32 and with bf16 matmuls (elementwise
/// stays fp32), match the reference; the output rows go out two per partition per run.
#[test]
fn packed_rows_with_every_operand_class_match_the_reference() {
    let g = model(
        &[
            ("x", &[4, 300, 24]),
            ("y", &[4, 300, 24]),
            ("b", &[24]),
            ("c", &[4, 300, 1]),
            ("s", &[1]),
        ],
        r#"{"name": "n1", "op": "add", "inputs": ["x", "b"], "outputs": ["t1"]},
           {"name": "n2", "op": "mul", "inputs": ["t1", "c"], "outputs": ["t2"]},
           {"name": "n3", "op": "sub", "inputs": ["t2", "y"], "outputs": ["t3"]},
           {"name": "n4", "op": "max", "inputs": ["t3", "s"], "outputs": ["t4"]},
           {"name": "n5", "op": "tanh", "inputs": ["t4"], "outputs": ["o"]}"#,
        r#""o""#,
    );
    for prec in [Precision::Fp32, Precision::Bf16] {
        let (c, outs) = compile_and_check(&g, prec);
        assert_eq!(outs["o"].len(), 4 * 300 * 24);
        let p = &c.artifact.meta.program;
        let runs: Vec<u64> = dmas(p)
            .iter()
            .filter(|(_, d)| matches!(d.mem, Memory::Hbm(_)))
            .map(|(_, d)| run_bytes(d))
            .collect();
        assert!(!runs.is_empty());
        assert!(runs.iter().all(|&r| r >= 2 * 24 * 4), "store runs {runs:?}");
    }
}
