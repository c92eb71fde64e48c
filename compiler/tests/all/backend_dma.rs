//! How the back end uses the DMA queues and sizes its transfers (trainium.md section 3: 16
//! queues per core, transfers overhead-bound below 256 B per partition and near peak from
//! 2 KiB per partition).

#![allow(clippy::unwrap_used)] // Tests may unwrap: a panic is a test failure.

use super::backend_harness::{Precision, load_example};
use neuron_isa::{Engine, Memory, Op, Program, TensorKind};
use neuronc::driver::compile;

/// Bytes of the innermost contiguous run within one partition: the simulator's own
/// descriptor rule.
use neuron_sim::dma::contiguous_run_bytes as run_bytes;

/// `(queue, kernel, src, dst)` of every plain DMA of `p`.
fn dmas(p: &Program) -> Vec<(u8, u32, &neuron_isa::Ap, &neuron_isa::Ap)> {
    let mut v = Vec::new();
    for s in &p.streams {
        let Engine::Dma(q) = s.engine else { continue };
        for i in &s.instrs {
            if let Op::Dma { dst, src } = &i.op {
                v.push((q, i.kernel, src, dst));
            }
        }
    }
    v
}

fn weight_src(p: &Program, src: &neuron_isa::Ap) -> bool {
    match src.mem {
        Memory::Hbm(t) => p
            .tensors
            .get(t.0 as usize)
            .is_some_and(|t| t.kind == TensorKind::Weight),
        _ => false,
    }
}

/// The weights of bert_layer's projections are loaded whole rows at a time: every W DMA's
/// descriptor (contiguous bytes per partition) is a full row of W (768 or 3072 bf16
/// columns, 1.5 or 6 KiB), not an `n_tile` piece of it (512 columns, 1 KiB), so it sits
/// high on the DMA efficiency curve. A bias row (fp32, loaded once into one partition) is
/// the only smaller weight transfer, and it is one descriptor of 3 KiB.
#[test]
fn weight_dmas_carry_whole_rows_of_w() {
    let g = load_example("bert_layer.json");
    let c = compile(&g, &Precision::Bf16.options()).unwrap();
    let p = &c.artifact.meta.program;
    let mut w_dmas = 0;
    for (_, k, src, dst) in dmas(p) {
        if !weight_src(p, src) || dst.partitions < 64 {
            continue;
        }
        w_dmas += 1;
        let t = match src.mem {
            Memory::Hbm(t) => &p.tensors[t.0 as usize],
            _ => unreachable!(),
        };
        let row = t.shape.last().copied().unwrap() * t.dtype.size();
        assert_eq!(
            run_bytes(src),
            row,
            "kernel {k}: a load of weight '{}' ({:?}) moves runs of {} B, not whole rows of {row} B",
            t.name,
            t.shape,
            run_bytes(src)
        );
        assert!(run_bytes(src) >= 1536, "{}", t.name);
    }
    // Six weight matrices, at least one DMA each.
    assert!(w_dmas >= 6, "{w_dmas} weight DMAs");
}

/// No DMA queue carries more than its share of the bytes. Weights streamed ahead (pinned W,
/// loaded from the first instruction on) are spread over the prefetch queues: at least 3
/// queues carry them and none holds more than 1.25x an even split of the program's weight
/// bytes over them. A kernel's other transfers (activation loads, stores) are spread over
/// the remaining queues: no queue holds more of a kernel's bytes than half of them or the
/// kernel's single largest transfer, whichever is more (a transfer is never stacked onto
/// a queue that already holds its share; one 128-partition DMA uses every engine anyway),
/// and no queue mixes them with the weights (a weight behind a store would wait for
/// compute).
#[test]
fn no_queue_holds_more_than_its_share_of_the_bytes() {
    use std::collections::BTreeMap;
    let g = load_example("bert_layer.json");
    let c = compile(&g, &Precision::Bf16.options()).unwrap();
    let p = &c.artifact.meta.program;
    let mut w = BTreeMap::<u8, u64>::new();
    let mut other = BTreeMap::<(u32, u8), u64>::new();
    let mut largest = BTreeMap::<u32, u64>::new();
    for (q, k, src, dst) in dmas(p) {
        let bytes = src.bytes().max(dst.bytes());
        if weight_src(p, src) && dst.partitions >= 64 {
            *w.entry(q).or_default() += bytes;
        } else {
            *other.entry((k, q)).or_default() += bytes;
            let l = largest.entry(k).or_default();
            *l = (*l).max(bytes);
        }
    }
    let total: u64 = w.values().sum();
    assert!(total >= 13 << 20, "{total} weight bytes streamed");
    let even = total as f64 / w.len() as f64;
    let max = *w.values().max().unwrap() as f64;
    assert!(w.len() >= 3, "weights on {} queues", w.len());
    assert!(
        max <= 1.25 * even,
        "one queue holds {max} of {total} weight bytes over {} queues: {w:?}",
        w.len()
    );
    for (i, kernel) in p.kernels.iter().enumerate() {
        let mine: Vec<(u8, u64)> = other
            .iter()
            .filter(|((k, _), _)| *k as usize == i)
            .map(|((_, q), b)| (*q, *b))
            .collect();
        for (q, _) in &mine {
            assert!(
                !w.contains_key(q),
                "kernel {}: queue {q} mixes weights and other transfers",
                kernel.name
            );
        }
        let total: u64 = mine.iter().map(|x| x.1).sum();
        let max = mine.iter().map(|x| x.1).max().unwrap_or(0);
        let largest = largest.get(&(i as u32)).copied().unwrap_or(0);
        assert!(
            2 * max <= total || max <= largest,
            "kernel {}: one queue holds {max} of {total} non-weight bytes ({mine:?})",
            kernel.name
        );
    }
}
