//! Compiled-code quality (issue 11): the cases of `neuron_benches::quality_cases` on trn1.
//!
//! Criterion measures wall time, which says how long `neuronc` and the timing-only
//! simulation take, not how good the compiled code is. So before timing, each case
//! prints its *simulated* figures to stderr:
//!
//! ```text
//! quality/gemm_2048_bf16: simulated 0.234 ms, MFU 81.2% of bf16 peak (target >= 80%)
//! ```
//!
//! The same figures are the "Compiled-code quality" table of `docs/fidelity.md`
//! (`cargo run --release -p neuron-benches --bin fidelity`). The benchmark then times the
//! whole compile-and-simulate of each case (`quality/<case>`). The 4096x8192x8192 GEMMs
//! and BERT-base batch 16 take seconds per iteration: run one case with
//! `cargo bench -p neuron-benches --bench quality -- gemm_2048`.

use criterion::{Criterion, criterion_group, criterion_main};
use neuron_benches::{quality_cases, simulated_quality};
use neuron_isa::ChipConfig;
use std::hint::black_box;

fn quality(c: &mut Criterion) {
    let trn1 = ChipConfig::trn1();
    let mut g = c.benchmark_group("quality");
    g.sample_size(10);
    for case in quality_cases() {
        let filter_out = std::env::args()
            .skip(1)
            .filter(|a| !a.starts_with('-'))
            .any(|f| !case.name.contains(f.as_str()));
        if filter_out {
            continue;
        }
        match simulated_quality(&case.json, &trn1) {
            Ok(q) => eprintln!(
                "quality/{}: simulated {:.3} ms, MFU {:.1}% of bf16 peak (target >= {:.0}%)",
                case.name, q.latency_ms, q.mfu_percent, case.target_percent
            ),
            Err(e) => panic!("{}: {e}", case.name),
        }
        g.bench_function(case.name, |b| {
            b.iter(|| black_box(simulated_quality(&case.json, &trn1).map(|q| q.mfu_percent)))
        });
    }
    g.finish();
}

criterion_group!(benches, quality);
criterion_main!(benches);
