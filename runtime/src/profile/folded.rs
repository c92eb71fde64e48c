//! `flame.folded`: folded stacks, the input format of flamegraph.pl, inferno and
//! speedscope.
//!
//! One line per distinct stack, `model;kernel;engine;opcode <weight>`, where the weight
//! is the simulated time in whole nanoseconds that `engine` spent executing `opcode`
//! instructions of `kernel`. Frames never contain spaces or `;` (replaced by `_`).
//!
//! Rounding is exact per engine: each stream's busy intervals are laid end to end and
//! each instruction gets `round(end) - round(start)` of that cumulative clock, so the
//! weights of one engine add up to its busy time (the union of its instruction
//! intervals) rounded to the nearest nanosecond, with no drift however many
//! instructions there are.

use crate::error::RuntimeError;
use crate::model::Model;
use crate::profile::{Span, frame_name, ps_to_ns, spans};
use neuron_sim::RunStats;
use std::collections::BTreeMap;

/// The folded stack lines of one run, sorted, without zero-weight lines.
pub fn folded_stacks(model: &Model, stats: &RunStats) -> Result<Vec<String>, RuntimeError> {
    let program = &model.artifact().meta.program;
    let all = spans(program, stats)?;
    let mut by_stream: BTreeMap<u16, Vec<&Span<'_>>> = BTreeMap::new();
    for s in &all {
        by_stream.entry(s.record.stream).or_default().push(s);
    }
    let model_frame = frame_name(model.name());
    let mut weights: BTreeMap<String, u64> = BTreeMap::new();
    for spans in by_stream.values_mut() {
        spans.sort_by_key(|s| (s.record.start_ps, s.record.end_ps));
        // `busy` is the cumulative union length so far; `last_end` clips overlaps so an
        // instant is never counted twice.
        let mut busy: u64 = 0;
        let mut last_end: u64 = 0;
        for s in spans.iter() {
            let start = s.record.start_ps.max(last_end);
            let end = s.record.end_ps;
            let len = end.saturating_sub(start);
            last_end = last_end.max(end);
            let w = ps_to_ns(busy + len) - ps_to_ns(busy);
            busy += len;
            if w == 0 {
                continue;
            }
            let key = format!(
                "{model_frame};{};{};{}",
                frame_name(s.kernel_name()),
                s.engine.name(),
                s.instr.op.opcode()
            );
            *weights.entry(key).or_default() += w;
        }
    }
    Ok(weights
        .into_iter()
        .map(|(stack, w)| format!("{stack} {w}"))
        .collect())
}
