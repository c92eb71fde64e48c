//! How reduce kernels are laid out (compiler/src/backend/lower/reduce.rs): short rows are
//! packed several per partition per DMA, and a reduction over every axis is spread over the
//! partitions. Structure is checked, and the simulated results against the reference.

#![allow(clippy::unwrap_used)] // Tests may unwrap: a panic is a test failure.

use super::backend_harness::{Precision, compile_and_check};
use neuron_isa::{Engine, Memory, Op, Program};
use neuronc::ir::Graph;

/// Bytes of the innermost contiguous run within one partition: the simulator's own
/// descriptor rule.
use neuron_sim::dma::contiguous_run_bytes as run_bytes;

/// Every HBM -> on-chip load of `p`.
fn loads(p: &Program) -> Vec<&neuron_isa::Ap> {
    let mut v = Vec::new();
    for s in &p.streams {
        let Engine::Dma(_) = s.engine else { continue };
        for i in &s.instrs {
            if let Op::Dma { dst, src } = &i.op
                && matches!(src.mem, Memory::Hbm(_))
                && dst.mem.is_on_chip()
            {
                v.push(src);
            }
        }
    }
    v
}

fn count(p: &Program, f: impl Fn(&Op) -> bool) -> usize {
    p.streams
        .iter()
        .flat_map(|s| s.instrs.iter())
        .filter(|i| f(&i.op))
        .count()
}

fn model(shape: &[usize], nodes: &str, outputs: &str) -> Graph {
    let text = format!(
        r#"{{"name": "r", "seed": 0,
            "inputs": [{{"name": "x", "shape": {shape:?}, "dtype": "f32"}}],
            "params": [], "nodes": [{nodes}], "outputs": [{outputs}]}}"#
    );
    neuronc::frontend::parse_model(&text, std::path::Path::new(".")).unwrap()
}

/// A global average pool over 7x7 planes (196 B rows, as at the end of ResNet-50) loads
/// many rows per partition per DMA: every load fills 128 partitions with runs of at least
/// 2 KiB (one row per partition per descriptor was 196 B), and one reduce instruction
/// covers each tile.
#[test]
fn global_avg_pool_packs_rows_per_partition() {
    let g = model(
        &[8, 512, 7, 7],
        r#"{"name": "pool", "op": "global_avg_pool", "inputs": ["x"], "outputs": ["y"]}"#,
        r#""y""#,
    );
    let (c, _) = compile_and_check(&g, Precision::Fp32);
    let p = &c.artifact.meta.program;
    let ls = loads(p);
    assert!(!ls.is_empty());
    for src in &ls {
        assert_eq!(src.partitions, 128, "{src}");
        assert!(
            run_bytes(src) >= 2048,
            "a load moves runs of {} B: {src}",
            run_bytes(src)
        );
    }
    let reduces = count(p, |o| matches!(o, Op::TensorReduce { .. }));
    assert_eq!(reduces, ls.len(), "one reduce per packed tile");
    assert!(
        ls.len() * 128 * 4 <= 8 * 512,
        "{} loads for 4096 rows",
        ls.len()
    );
}

/// Packing with a remainder: 770 rows of 49 elements (four rows per partition over 128 and
/// then 64 partitions, then the last two rows on one partition), with a max and a mean,
/// match the reference.
#[test]
fn packed_reduce_with_a_remainder_matches_the_reference() {
    let g = model(
        &[1, 770, 7, 7],
        r#"{"name": "m", "op": "reduce_max", "inputs": ["x"], "outputs": ["m"], "attrs": {"axes": [2, 3]}},
           {"name": "a", "op": "reduce_mean", "inputs": ["x"], "outputs": ["a"], "attrs": {"axes": [2, 3]}}"#,
        r#""m", "a""#,
    );
    let (c, outs) = compile_and_check(&g, Precision::Fp32);
    assert_eq!(outs["m"].len(), 770);
    let p = &c.artifact.meta.program;
    let runs: Vec<u64> = loads(p).iter().map(|s| run_bytes(s)).collect();
    assert!(runs.contains(&(4 * 196)), "{runs:?}");
    assert!(runs.contains(&(2 * 196)), "{runs:?}");
}

/// A sum, mean and max over every axis of a [256, 512] tensor each spread over all 128
/// partitions (one long row on one partition before), finished by a transpose onto one
/// partition and a reduce; the fp32 results stay within the reference tolerance.
#[test]
fn all_axis_reductions_use_all_partitions() {
    let g = model(
        &[256, 512],
        r#"{"name": "s", "op": "reduce_sum", "inputs": ["x"], "outputs": ["s"], "attrs": {"axes": [0, 1], "keepdims": false}},
           {"name": "a", "op": "reduce_mean", "inputs": ["x"], "outputs": ["a"], "attrs": {"axes": [0, 1]}},
           {"name": "m", "op": "reduce_max", "inputs": ["x"], "outputs": ["m"], "attrs": {"axes": [1, 0]}}"#,
        r#""s", "a", "m""#,
    );
    let (c, outs) = compile_and_check(&g, Precision::Fp32);
    assert_eq!(outs["s"].len(), 1);
    let p = &c.artifact.meta.program;
    let ls = loads(p);
    assert!(!ls.is_empty());
    for src in &ls {
        assert_eq!(src.partitions, 128, "{src}");
    }
    assert_eq!(count(p, |o| matches!(o, Op::Transpose { .. })), 3);
}
