//! Micro-batching (`passes/micro_batch.rs`): a CNN's per-image stretch run depth-first
//! over groups of images gives the results of the unsplit compile, and the cost model
//! splits only where it says it pays.

#![allow(clippy::unwrap_used)] // Tests may unwrap: a panic is a test failure.

use super::backend_harness::{Precision, compile_and_check_with};
use super::conv_chip::bottleneck;
use neuronc::ir::{DType, Graph, Op};
use neuronc::options::{AutoCast, CompileOptions};
use neuronc::passes::micro_batch::{self, Split};

/// Two bottleneck blocks over `[batch, 32, size, size]` images, then global average
/// pooling (the rest of the graph the split's result feeds).
fn two_blocks(batch: usize, size: usize) -> Graph {
    let mut g = Graph::new("two_blocks");
    g.seed = 3;
    let x = g
        .add_input("x", [batch, 32, size, size], DType::F32)
        .unwrap();
    let b1 = bottleneck(&mut g, "b1", x, 32, 16, 64, 1);
    let b2 = bottleneck(&mut g, "b2", b1, 64, 16, 64, 1);
    let gap = g.add_node("gap", Op::GlobalAvgPool, &[b2], "gap").unwrap();
    g.add_output(gap).unwrap();
    g
}

fn opts(prec: Precision, all: bool) -> CompileOptions {
    let mut o = prec.options();
    if all {
        o.auto_cast = AutoCast::All;
    }
    assert!(o.micro_batch, "on by default");
    o
}

/// `g` after the middle end's canonical and optimizing passes (what the split sees).
fn optimized(g: &Graph) -> Graph {
    use neuronc::passes::*;
    let mut g = g.clone();
    run_to_fixpoint(
        &mut g,
        &[
            &fold_constants::FoldConstants,
            &fold_batch_norm::FoldBatchNorm,
            &simplify_movement::SimplifyMovement,
            &dce::DeadCode,
        ],
    )
    .unwrap();
    run_to_fixpoint(&mut g, &[&infer_shapes::InferShapes, &dce::DeadCode]).unwrap();
    g
}

/// Outputs of compiling `g` (split or not) with `o`, simulated, checked against the
/// reference within `prec`'s tolerance.
fn run(g: &Graph, o: CompileOptions, prec: Precision) -> Vec<f64> {
    let (_, outs) = compile_and_check_with(g, o, prec);
    outs.into_values().next().unwrap()
}

#[test]
fn micro_batched_bottlenecks_give_the_bits_of_the_unsplit_compile_and_match_the_reference() {
    let g = two_blocks(4, 16);
    let opt = optimized(&g);
    // The whole two-block stretch (every node but the pool), in groups of two images.
    let pool = opt
        .nodes
        .iter()
        .position(|n| matches!(n.op, Op::GlobalAvgPool))
        .unwrap();
    let split = Split {
        start: 0,
        nodes: pool,
        group: 2,
        gain_ns: 0.0,
    };
    let h = micro_batch::apply(&opt, split).unwrap();
    // Each node of the stretch twice, one slice per group, one concatenation.
    assert_eq!(h.nodes.len(), 2 * pool + 3 + (opt.nodes.len() - pool));
    let concat = h
        .nodes
        .iter()
        .filter(|n| matches!(n.op, Op::Concat { .. }))
        .count();
    assert_eq!(concat, 1);
    // Weights are shared by reference, not copied: the same params.
    assert_eq!(h.params.len(), opt.params.len());
    for (prec, all) in [(Precision::Fp32, false), (Precision::Bf16, true)] {
        let mut o = opts(prec, all);
        o.micro_batch = false;
        let whole = run(&g, o.clone(), prec);
        let split = run(&h, o, prec);
        let same = whole
            .iter()
            .zip(&split)
            .all(|(a, b)| a.to_bits() == b.to_bits());
        assert!(same, "{prec:?}: split {split:?} vs whole {whole:?}");
    }
}

#[test]
fn the_cost_model_splits_resnet50_layers_1_to_3_in_pairs_at_batch_16_and_not_at_batch_1_or_with_less_sbuf()
 {
    let graph = |batch| {
        let m = neuronc::zoo::build(
            "resnet50",
            &neuronc::zoo::ZooOptions {
                batch: Some(batch),
                ..Default::default()
            },
        )
        .unwrap();
        optimized(
            &neuronc::frontend::parse_model(&m.to_json_string(), std::path::Path::new("."))
                .unwrap(),
        )
    };
    let g = graph(16);
    let o = opts(Precision::Bf16, true);
    let s = micro_batch::choose(&g, &o).expect("a split at batch 16 under all on trn1");
    // The max pool through layer 3's second block in pairs of images: every map of the
    // stretch fits the largest resident region (half of SBUF) for two images at a time
    // (a 256-channel 56x56 map is 25 KiB per partition; four images' would not fit two at
    // a time), and layer 4's weights cost more to re-read than its small maps save.
    assert_eq!(s.group, 2, "{s:?}");
    let names: Vec<&str> = g.nodes[s.start..s.nodes]
        .iter()
        .map(|n| n.name.as_str())
        .collect();
    for n in [
        "layer1.0.conv1.conv",
        "layer2.0.conv1.conv",
        "layer2.3.conv3.conv",
        "layer3.1.conv3.conv",
    ] {
        assert!(names.contains(&n), "{names:?}");
    }
    let outside = ["stem.conv", "layer3.2", "layer4"];
    assert!(
        !names
            .iter()
            .any(|n| outside.iter().any(|o| n.starts_with(o))),
        "{names:?}"
    );
    // The middle end emits layer 2 once per pair of images.
    let kg = neuronc::passes::run_middle_end(&g, &o, &mut |_, _| {}).unwrap();
    let groups = kg
        .kernels
        .iter()
        .filter(|k| k.name.starts_with("layer2.1.conv1.conv."))
        .count();
    assert_eq!(groups, 8);
    // Off when asked, and never at batch 1.
    let mut off = o.clone();
    off.micro_batch = false;
    let kg = neuronc::passes::run_middle_end(&g, &off, &mut |_, _| {}).unwrap();
    assert!(!kg.kernels.iter().any(|k| k.name.contains(".mb")));
    assert!(micro_batch::candidates(&graph(1), &o).is_empty());
    // A chip with a quarter of the SBUF: the groups' maps no longer fit the region.
    let mut small = o.clone();
    small.target.sbuf_bytes_per_partition /= 4;
    assert_ne!(micro_batch::choose(&g, &small), Some(s));
    // Under matmult the block outputs stay fp32 (twice the bytes): groups of two images.
    let mm = micro_batch::choose(&g, &opts(Precision::Bf16, false)).expect("a split under matmult");
    assert_eq!(mm.group, 2, "{mm:?}");
}
