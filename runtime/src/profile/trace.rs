//! `trace.json`: the run as Chrome trace events, for Perfetto (ui.perfetto.dev) and
//! chrome://tracing.
//!
//! Layout: one process (the NeuronCore) with one thread per stream, named after its
//! engine (`tensor`, `vector`, `scalar`, `gpsimd`, `dma0`, ...). Each instruction is a
//! complete (`"ph": "X"`) slice named by its opcode, with `ts` and `dur` in microseconds
//! at picosecond precision, and args `kernel`, `operands` (its disassembly, as in
//! `neuron_isa::disasm`), `bytes` (HBM bytes moved), `flops`, `index`, `wait` and
//! `signal`. Streams are in-order, so slices on
//! one thread never overlap: a DMA queue keeps several transfers in flight, so its slice
//! starts when the previous transfer of the queue ended (or at its issue, if later), and
//! the arg `issued_us` gives the issue time.
//!
//! DMA queue threads are named `dma<q> (queue q, DMA engines a-b)`: the queue and the
//! DMA engines its transfers' partitions map to (`partitions_per_dma_engine` partitions
//! each). After the streams come kernel tracks, `kernels`, `kernels 2`, ...: one slice
//! (`"cat": "kernel"`) per kernel from its first instruction's start to its last one's
//! end, on the first kernel track where it overlaps no other kernel. Flow arrows (`"ph":
//! "s"` / `"f"`, `"cat": "semaphore"`, named `s3>=2`) go from each instruction whose
//! signal released a semaphore wait to the instruction that waited (see [`super::deps`]).
//! `otherData` holds the tool, its version and the schema version.
//!
//! Two counter tracks (`"ph": "C"`):
//! - `HBM bandwidth (GB/s)`: each DMA's HBM bytes spread evenly over its duration, summed
//!   over the DMAs in flight.
//! - `SBUF occupancy (bytes)`: SBUF bytes belonging to the kernels running at that time.
//!   A kernel's footprint is the union of the SBUF bytes (per partition) its instructions
//!   touch, held from its first instruction's start to its last one's end; the counter is
//!   the size of the union of the running kernels' footprints. Instructions outside any
//!   kernel are not counted.

use crate::error::RuntimeError;
use crate::model::Model;
use crate::profile::deps::releases;
use crate::profile::{Span, spans};
use neuron_isa::disasm::instruction_text;
use neuron_isa::{Ap, Memory};
use neuron_sim::RunStats;
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};

/// Process id of the (single) NeuronCore in the trace.
const PID: u32 = 1;

/// Picoseconds to trace microseconds.
fn us(ps: u64) -> f64 {
    ps as f64 / 1e6
}

/// The Chrome trace of one run of `model`.
pub fn chrome_trace(model: &Model, stats: &RunStats) -> Result<Value, RuntimeError> {
    let program = &model.artifact().meta.program;
    let all = spans(program, stats)?;
    let mut events = Vec::with_capacity(all.len() + 2 * program.streams.len() + 16);
    events.push(json!({
        "name": "process_name", "ph": "M", "pid": PID,
        "args": { "name": format!("NeuronCore: {} on {}", model.name(), model.target().name) },
    }));
    // Compute engines first, then DMA queues in number order.
    let mut order: Vec<usize> = (0..program.streams.len()).collect();
    order.sort_by_key(|&i| program.streams[i].engine);
    let dma_names = dma_queue_names(model, &all);
    for (rank, &i) in order.iter().enumerate() {
        let engine = program.streams[i].engine;
        let name = dma_names.get(&i).cloned().unwrap_or_else(|| engine.name());
        events.push(json!({
            "name": "thread_name", "ph": "M", "pid": PID, "tid": i, "args": { "name": name },
        }));
        events.push(json!({
            "name": "thread_sort_index", "ph": "M", "pid": PID, "tid": i,
            "args": { "sort_index": rank },
        }));
    }
    let mut queue_end: Vec<u64> = vec![0; program.streams.len()];
    for s in &all {
        let r = s.record;
        let shown_start = if s.engine.is_dma() {
            let prev = queue_end.get(usize::from(r.stream)).copied().unwrap_or(0);
            r.start_ps.max(prev.min(r.end_ps))
        } else {
            r.start_ps
        };
        if let Some(e) = queue_end.get_mut(usize::from(r.stream)) {
            *e = (*e).max(r.end_ps);
        }
        let wait: Vec<String> = s
            .instr
            .wait
            .iter()
            .map(|w| format!("{}>={}", w.sem, w.count))
            .collect();
        let signal: Vec<String> = s.instr.signal.iter().map(ToString::to_string).collect();
        events.push(json!({
            "name": s.instr.op.opcode(),
            "cat": if s.engine.is_dma() { "dma" } else { "compute" },
            "ph": "X",
            "pid": PID,
            "tid": r.stream,
            "ts": us(shown_start),
            "dur": us(r.end_ps.saturating_sub(shown_start)),
            "args": {
                "kernel": s.kernel_name(),
                "operands": instruction_text(program, s.instr),
                "bytes": r.hbm_read_bytes + r.hbm_write_bytes,
                "hbm_read_bytes": r.hbm_read_bytes,
                "hbm_write_bytes": r.hbm_write_bytes,
                "flops": r.flops,
                "index": r.index,
                "issued_us": us(r.start_ps),
                "wait": wait.join(" "),
                "signal": signal.join(" "),
            },
        }));
    }
    kernel_tracks(&all, program.streams.len(), &mut events);
    for (n, r) in releases(&all).iter().enumerate() {
        let (from, to) = (all[r.signaller].record, all[r.waiter].record);
        let name = format!("s{}>={}", r.sem, r.count);
        // The start binds to the signaller's slice: one picosecond before its end, inside it.
        let start = from.end_ps.saturating_sub(1).max(from.start_ps);
        events.push(json!({
            "name": name, "cat": "semaphore", "ph": "s", "id": n, "pid": PID,
            "tid": from.stream, "ts": us(start),
        }));
        events.push(json!({
            "name": name, "cat": "semaphore", "ph": "f", "bp": "e", "id": n, "pid": PID,
            "tid": to.stream, "ts": us(to.start_ps),
        }));
    }
    for (t, gbps) in hbm_bandwidth(&all) {
        events.push(json!({
            "name": "HBM bandwidth (GB/s)", "ph": "C", "pid": PID, "ts": us(t),
            "args": { "GB/s": gbps },
        }));
    }
    for (t, bytes) in sbuf_occupancy(&all) {
        events.push(json!({
            "name": "SBUF occupancy (bytes)", "ph": "C", "pid": PID, "ts": us(t),
            "args": { "bytes": bytes },
        }));
    }
    Ok(json!({
        "traceEvents": events,
        "displayTimeUnit": "ns",
        "otherData": {
            "model": model.name(),
            "target": model.target().name,
            "latency_ns": stats.total_ps as f64 / 1000.0,
            "tool": super::TOOL,
            "tool_version": super::TOOL_VERSION,
            "schema_version": super::SCHEMA_VERSION,
        },
    }))
}

/// Thread names of the DMA queues that ran transfers: `dma0 (queue 0, DMA engines 0-15)`.
fn dma_queue_names(model: &Model, all: &[Span<'_>]) -> BTreeMap<usize, String> {
    let cfg = model.target();
    let ppe = cfg.partitions_per_dma_engine().max(1);
    let mut range: BTreeMap<usize, (u32, u32)> = BTreeMap::new();
    for s in all.iter().filter(|s| s.engine.is_dma()) {
        let (lo, hi) = match &s.instr.op {
            neuron_isa::Op::Dma { dst, src } => {
                let side = if dst.mem.is_on_chip() {
                    Some(dst)
                } else if src.mem.is_on_chip() {
                    Some(src)
                } else {
                    None
                };
                match side {
                    Some(a) if a.partitions > 0 => (
                        a.start_partition / ppe,
                        a.start_partition.saturating_add(a.partitions - 1) / ppe,
                    ),
                    // HBM -> HBM: spread over every engine.
                    _ => (0, cfg.dma_engines.saturating_sub(1)),
                }
            }
            neuron_isa::Op::DmaGather { dst, .. } if dst.partitions > 0 => (
                dst.start_partition / ppe,
                dst.start_partition.saturating_add(dst.partitions - 1) / ppe,
            ),
            _ => continue,
        };
        let e = range
            .entry(usize::from(s.record.stream))
            .or_insert((lo, hi));
        e.0 = e.0.min(lo);
        e.1 = e.1.max(hi);
    }
    range
        .into_iter()
        .filter_map(|(i, (lo, hi))| {
            let engine = all
                .iter()
                .find(|s| usize::from(s.record.stream) == i)?
                .engine;
            let neuron_isa::Engine::Dma(q) = engine else {
                return None;
            };
            let engines = if lo == hi {
                format!("DMA engine {lo}")
            } else {
                format!("DMA engines {lo}-{hi}")
            };
            Some((i, format!("{} (queue {q}, {engines})", engine.name())))
        })
        .collect()
}

/// One slice per kernel over its instructions' span, on the first `kernels` track
/// (thread ids after the streams') where it overlaps no other kernel.
fn kernel_tracks(all: &[Span<'_>], streams: usize, events: &mut Vec<Value>) {
    let mut spans: BTreeMap<u32, (u64, u64, &str, &str)> = BTreeMap::new();
    for s in all {
        let Some(k) = s.kernel else { continue };
        let e = spans.entry(s.record.kernel).or_insert((
            s.record.start_ps,
            s.record.end_ps,
            k.name.as_str(),
            k.kind.as_str(),
        ));
        e.0 = e.0.min(s.record.start_ps);
        e.1 = e.1.max(s.record.end_ps);
    }
    let mut order: Vec<(u64, u64, u32, &str, &str)> = spans
        .into_iter()
        .map(|(k, (a, b, n, kind))| (a, b, k, n, kind))
        .collect();
    order.sort_unstable();
    // End time of the last slice on each lane.
    let mut lanes: Vec<u64> = Vec::new();
    for (start, end, k, name, kind) in order {
        let lane = match lanes.iter().position(|&e| e <= start) {
            Some(l) => l,
            None => {
                lanes.push(0);
                let l = lanes.len() - 1;
                let tid = streams + l;
                let label = if l == 0 {
                    "kernels".to_string()
                } else {
                    format!("kernels {}", l + 1)
                };
                events.push(json!({
                    "name": "thread_name", "ph": "M", "pid": PID, "tid": tid,
                    "args": { "name": label },
                }));
                events.push(json!({
                    "name": "thread_sort_index", "ph": "M", "pid": PID, "tid": tid,
                    "args": { "sort_index": tid },
                }));
                l
            }
        };
        lanes[lane] = end;
        events.push(json!({
            "name": name, "cat": "kernel", "ph": "X", "pid": PID, "tid": streams + lane,
            "ts": us(start), "dur": us(end - start),
            "args": { "kernel": name, "kind": kind, "index": k },
        }));
    }
}

/// Steps of the HBM bandwidth counter: (time ps, GB/s from then on).
fn hbm_bandwidth(all: &[Span<'_>]) -> Vec<(u64, f64)> {
    // Per time: (rate change, change in the number of DMAs in flight).
    let mut changes: BTreeMap<u64, (f64, i64)> = BTreeMap::new();
    for s in all.iter().filter(|s| s.engine.is_dma()) {
        let r = s.record;
        let bytes = r.hbm_read_bytes + r.hbm_write_bytes;
        let dur = r.end_ps.saturating_sub(r.start_ps);
        if bytes == 0 || dur == 0 {
            continue;
        }
        // bytes per ps x 1000 = bytes per ns = GB/s.
        let rate = bytes as f64 * 1000.0 / dur as f64;
        let e = changes.entry(r.start_ps).or_default();
        e.0 += rate;
        e.1 += 1;
        let e = changes.entry(r.end_ps).or_default();
        e.0 -= rate;
        e.1 -= 1;
    }
    let mut out = Vec::with_capacity(changes.len() + 1);
    let (mut rate, mut live) = (0.0f64, 0i64);
    if changes.first_key_value().is_some_and(|(&t, _)| t > 0) {
        out.push((0, 0.0));
    }
    for (t, (dr, dl)) in changes {
        rate += dr;
        live += dl;
        // Exactly zero when nothing is in flight, whatever the float sums left over.
        if live == 0 {
            rate = 0.0;
        }
        out.push((t, rate.max(0.0)));
    }
    out
}

/// SBUF rectangle: partitions `[p0, p1)`, bytes `[b0, b1)` within each.
type Rect = (u32, u32, u64, u64);

fn sbuf_rect(ap: &Ap) -> Option<Rect> {
    if ap.mem != Memory::Sbuf {
        return None;
    }
    let (lo, hi) = ap.row_byte_span()?;
    Some((
        ap.start_partition,
        ap.start_partition.saturating_add(ap.partitions),
        lo.max(0) as u64,
        hi.max(0) as u64,
    ))
}

/// Bytes covered by the union of `rects`.
fn union_area(rects: &[&Rect]) -> u64 {
    let mut edges: BTreeSet<u32> = BTreeSet::new();
    for r in rects {
        edges.insert(r.0);
        edges.insert(r.1);
    }
    let edges: Vec<u32> = edges.into_iter().collect();
    let mut total = 0;
    // Between consecutive partition edges every partition has the same byte intervals.
    for w in edges.windows(2) {
        let (p0, p1) = (w[0], w[1]);
        let intervals: Vec<(u64, u64)> = rects
            .iter()
            .filter(|r| r.0 <= p0 && p1 <= r.1 && r.2 < r.3)
            .map(|r| (r.2, r.3))
            .collect();
        total += u64::from(p1 - p0) * super::union_length(intervals);
    }
    total
}

/// Steps of the SBUF occupancy counter: (time ps, bytes from then on).
fn sbuf_occupancy(all: &[Span<'_>]) -> Vec<(u64, u64)> {
    struct Footprint {
        start: u64,
        end: u64,
        rects: BTreeSet<Rect>,
    }
    let mut kernels: BTreeMap<u32, Footprint> = BTreeMap::new();
    for s in all {
        if s.kernel.is_none() {
            continue;
        }
        let f = kernels.entry(s.record.kernel).or_insert_with(|| Footprint {
            start: s.record.start_ps,
            end: s.record.end_ps,
            rects: BTreeSet::new(),
        });
        f.start = f.start.min(s.record.start_ps);
        f.end = f.end.max(s.record.end_ps);
        let op = &s.instr.op;
        for ap in op.reads().into_iter().chain(op.writes()) {
            f.rects.extend(sbuf_rect(ap));
        }
    }
    let mut times: BTreeSet<u64> = BTreeSet::new();
    for f in kernels.values() {
        times.insert(f.start);
        times.insert(f.end);
    }
    let mut out = Vec::with_capacity(times.len() + 1);
    if times.first().is_some_and(|&t| t > 0) {
        out.push((0, 0));
    }
    let mut last = None;
    for t in times {
        let live: Vec<&Rect> = kernels
            .values()
            .filter(|f| f.start <= t && t < f.end)
            .flat_map(|f| f.rects.iter())
            .collect();
        let bytes = union_area(&live);
        if last != Some(bytes) {
            out.push((t, bytes));
            last = Some(bytes);
        }
    }
    out
}
