//! Who released whom: each semaphore wait matched with the signal that satisfied it, and
//! the critical path those edges and the in-order streams make.
//!
//! Semaphores only count up: an instruction increments each semaphore it signals when it
//! completes, and a wait `s >= n` is released by the `n`-th signal of `s` in completion
//! order (ties in stream order, as the scheduler applies completions). The trace draws
//! these edges as flow arrows; the insights use them to name what an engine waited for.

use crate::profile::Span;
use std::collections::BTreeMap;

/// One satisfied wait: span `signaller`'s signal was the one that let span `waiter` wait
/// no longer (indices into the spans slice).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Release {
    /// The span that signalled.
    pub signaller: usize,
    /// The span that waited.
    pub waiter: usize,
    /// The semaphore.
    pub sem: u32,
    /// The count waited for.
    pub count: u32,
}

/// Every wait of every span matched with its releasing signal, in span order. Waits for
/// a count of 0, or for a count never reached in the records, have no release.
pub fn releases(all: &[Span<'_>]) -> Vec<Release> {
    // Per semaphore: (completion time, stream, span index) of each signal.
    let mut signals: BTreeMap<u32, Vec<(u64, u16, usize)>> = BTreeMap::new();
    for (i, s) in all.iter().enumerate() {
        for sem in &s.instr.signal {
            signals
                .entry(sem.0)
                .or_default()
                .push((s.record.end_ps, s.record.stream, i));
        }
    }
    for list in signals.values_mut() {
        list.sort_unstable();
    }
    let mut out = Vec::new();
    for (j, s) in all.iter().enumerate() {
        for w in &s.instr.wait {
            let Some(n) = (w.count as usize).checked_sub(1) else {
                continue;
            };
            if let Some(&(_, _, i)) = signals.get(&w.sem.0).and_then(|l| l.get(n)) {
                out.push(Release {
                    signaller: i,
                    waiter: j,
                    sem: w.sem.0,
                    count: w.count,
                });
            }
        }
    }
    out
}

/// For each span, the previous span of its stream (in instruction order), if any.
pub fn stream_predecessors(all: &[Span<'_>]) -> Vec<Option<usize>> {
    let mut by_stream: BTreeMap<u16, Vec<usize>> = BTreeMap::new();
    for (i, s) in all.iter().enumerate() {
        by_stream.entry(s.record.stream).or_default().push(i);
    }
    let mut prev = vec![None; all.len()];
    for list in by_stream.values_mut() {
        list.sort_by_key(|&i| all[i].record.index);
        for w in list.windows(2) {
            prev[w[1]] = Some(w[0]);
        }
    }
    prev
}

/// The critical path, last span first: from the span that ends last, repeatedly step to
/// whichever of its stream predecessor and its releasing signallers ended latest (the
/// one that decided its start), until a span with neither.
pub fn critical_path(all: &[Span<'_>], releases: &[Release]) -> Vec<usize> {
    let prev = stream_predecessors(all);
    let mut released_by: Vec<Vec<usize>> = vec![Vec::new(); all.len()];
    for r in releases {
        released_by[r.waiter].push(r.signaller);
    }
    let Some(mut cur) = (0..all.len()).max_by_key(|&i| (all[i].record.end_ps, i)) else {
        return Vec::new();
    };
    let mut path = vec![cur];
    // Each step moves to a span that ends no later than the current one starts, so the
    // walk ends; the bound guards against malformed records.
    while path.len() <= all.len() {
        let start = all[cur].record.start_ps;
        let next = prev[cur]
            .into_iter()
            .chain(released_by[cur].iter().copied())
            .filter(|&i| all[i].record.end_ps <= start && i != cur)
            .max_by_key(|&i| (all[i].record.end_ps, i));
        match next {
            Some(n) => {
                path.push(n);
                cur = n;
            }
            None => break,
        }
    }
    path
}
