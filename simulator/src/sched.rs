//! The event-driven scheduler: runs every stream's in-order queue against one global clock.
//!
//! Each stream (an engine or a DMA queue) executes one instruction at a time. An
//! instruction starts at the first event time at which its stream is free and every
//! semaphore it waits for has reached its count; at its completion each semaphore it
//! signals is incremented. The loop jumps from event to event (compute completions,
//! DMA phase changes and completions), so its cost grows with the number of instructions,
//! not with simulated time. Time is integer picoseconds.
//!
//! Determinism: at one event time, completions are applied first (in stream order), then
//! starts are tried in stream order; an instruction's functional effect runs at its start,
//! so effects run in (start time, stream index) order. Timing never depends on data.
//!
//! TensorE pipeline fill: a TensorE instruction pays `matmul_init_latency_cycles` extra
//! when the engine was idle just before it (it is the stream's first instruction, or it
//! starts later than its predecessor ended). Back-to-back TensorE instructions stream
//! through the pipeline without it. This approximates "the matmul depends on a result not
//! yet available": a matmul that had to wait found the pipeline drained.

use crate::cost;
use crate::dma::{DmaModel, DmaPlan};
use crate::error::SimError;
use crate::races::RaceChecker;
use crate::stats::{ByteCounters, EngineStats, InstrRecord, RunStats, Warning, WarningKind};
use neuron_isa::{ChipConfig, Engine, Instruction, Memory, Op, Program};
use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};

/// Warnings of one kind kept in full; further ones are counted in a summary warning.
pub const MAX_WARNINGS_PER_KIND: usize = 32;

/// Instructions between two progress reports.
pub const PROGRESS_INTERVAL: u64 = 4096;

/// Runs an instruction's functional effect at its start: `(stream, index, instruction)`,
/// returning whether it read poisoned (never written) memory.
pub type ExecFn<'a> = dyn FnMut(usize, usize, &Instruction) -> Result<bool, SimError> + 'a;

/// Scheduler settings.
#[derive(Debug, Clone, Copy, Default)]
pub struct SchedOptions {
    /// Report unsynchronized conflicting on-chip accesses as warnings.
    pub check_races: bool,
}

/// An instruction a stream has issued and not yet completed.
#[derive(Debug, Clone, Copy)]
struct Running {
    /// Index into `RunStats::records`.
    record: usize,
    /// Index of the instruction in its stream.
    index: usize,
    /// Engine cycles (compute engines only; DMA busy cycles are derived from time).
    cycles: u64,
}

#[derive(Debug, Clone)]
struct StreamState {
    engine: Engine,
    clock_ghz: f64,
    /// Next instruction to issue.
    pc: usize,
    /// Issued, not yet completed, in issue order (completions come in the same order).
    running: VecDeque<Running>,
    /// How many instructions may be in flight: 1 for compute engines, `dma_queue_depth`
    /// for DMA queues.
    depth: usize,
    /// When the stream last became able to issue (0 before the first instruction): the
    /// previous instruction's end for compute engines.
    free_at: u64,
    /// End of the union of busy intervals counted so far.
    busy_until: u64,
    stats: EngineStats,
}

/// Collects warnings, keeping the first [`MAX_WARNINGS_PER_KIND`] of each kind.
#[derive(Debug, Default)]
struct Warnings {
    kept: Vec<Warning>,
    dropped: [u64; 3],
}

impl Warnings {
    fn slot(kind: WarningKind) -> usize {
        match kind {
            WarningKind::PoisonedRead => 0,
            WarningKind::Race => 1,
            WarningKind::Other => 2,
        }
    }

    fn push(&mut self, kind: WarningKind, message: String) {
        let kept = self.kept.iter().filter(|w| w.kind == kind).count();
        if kept < MAX_WARNINGS_PER_KIND {
            self.kept.push(Warning { kind, message });
        } else {
            self.dropped[Self::slot(kind)] += 1;
        }
    }

    fn finish(mut self) -> Vec<Warning> {
        for (kind, what) in [
            (WarningKind::PoisonedRead, "poisoned-read"),
            (WarningKind::Race, "race"),
            (WarningKind::Other, "other"),
        ] {
            let n = self.dropped[Self::slot(kind)];
            if n > 0 {
                self.kept.push(Warning {
                    kind,
                    message: format!("{n} more {what} warnings not shown"),
                });
            }
        }
        self.kept
    }
}

/// Simulates `program` on `cfg`, calling `exec` at each instruction's start and `progress`
/// every [`PROGRESS_INTERVAL`] completed instructions (and once at the end).
pub fn run(
    program: &Program,
    cfg: &ChipConfig,
    opts: SchedOptions,
    exec: &mut ExecFn<'_>,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<RunStats, SimError> {
    let total = program.instruction_count() as u64;
    let mut streams: Vec<StreamState> = program
        .streams
        .iter()
        .map(|s| StreamState {
            engine: s.engine,
            clock_ghz: cfg.clock_ghz(s.engine),
            pc: 0,
            running: VecDeque::new(),
            depth: if s.engine.is_dma() {
                cfg.dma_queue_depth.max(1) as usize
            } else {
                1
            },
            free_at: 0,
            busy_until: 0,
            stats: EngineStats {
                engine: s.engine,
                instructions: 0,
                busy_ps: 0,
                busy_cycles: 0,
                wait_ps: 0,
            },
        })
        .collect();
    if streams.len() > usize::from(u16::MAX) {
        return Err(SimError::Limit(format!(
            "expected at most {} streams, found {}",
            u16::MAX,
            streams.len()
        )));
    }
    let mut sems: Vec<u64> = vec![0; program.semaphores as usize];
    let mut records: Vec<InstrRecord> = Vec::with_capacity(total.min(1 << 24) as usize);
    let mut bytes = ByteCounters::default();
    let mut flops = std::collections::BTreeMap::new();
    let mut warnings = Warnings::default();
    let mut races = opts.check_races.then(|| {
        RaceChecker::new(
            program.streams.iter().map(|s| s.engine).collect(),
            program.semaphores as usize,
        )
    });
    let mut compute_done: BinaryHeap<Reverse<(u64, usize)>> = BinaryHeap::new();
    let mut dma = DmaModel::new(cfg);
    let mut completed: Vec<usize> = Vec::new();
    let mut done: u64 = 0;
    let mut now: u64 = 0;
    let mut dma_engine_ps: u64 = 0;

    loop {
        // Start every instruction that can start at `now`, in stream order.
        for (si, st) in streams.iter_mut().enumerate() {
            while st.running.len() < st.depth {
                let Some(instr) = program.streams[si].instrs.get(st.pc) else {
                    break;
                };
                if !waits_satisfied(instr, &sems, si, st)? {
                    break;
                }
                let index = st.pc;
                let poisoned = exec(si, index, instr)?;
                if poisoned {
                    warnings.push(
                        WarningKind::PoisonedRead,
                        format!(
                            "{} instruction {} (stream {si}, {}) read memory that was never written",
                            st.engine,
                            index,
                            instr.op.opcode()
                        ),
                    );
                }
                if let Some(rc) = races.as_mut() {
                    for race in rc.on_start(si, index as u32, instr) {
                        warnings.push(WarningKind::Race, race.message);
                    }
                }
                count_bytes(&instr.op, &mut bytes);
                let mut rec = InstrRecord {
                    stream: si as u16,
                    index: index as u32,
                    start_ps: now,
                    end_ps: now,
                    kernel: instr.kernel,
                    hbm_read_bytes: 0,
                    hbm_write_bytes: 0,
                    flops: 0,
                    dma_engine_ps: 0,
                };
                let mut cycles = 0;
                if let Some(plan) = DmaPlan::of(&instr.op) {
                    rec.hbm_read_bytes = plan.hbm_read;
                    rec.hbm_write_bytes = plan.hbm_write;
                    rec.dma_engine_ps = dma.engine_ps(&plan);
                    dma_engine_ps = dma_engine_ps.saturating_add(rec.dma_engine_ps);
                    dma.start(now, si, &plan);
                } else {
                    cycles = cost::compute_cycles(cfg, st.engine, &instr.op);
                    if st.engine == Engine::Tensor && (index == 0 || now > st.free_at) {
                        cycles = cycles.saturating_add(cfg.matmul_init_latency_cycles);
                    }
                    if let Op::Matmul {
                        stationary, moving, ..
                    } = &instr.op
                    {
                        rec.flops = cost::matmul_flops(stationary, moving);
                        let sum = flops
                            .entry(cost::matmul_input_dtype(stationary, moving))
                            .or_insert(0u64);
                        *sum = sum.saturating_add(rec.flops);
                    }
                    let end = now.saturating_add(cost::cycles_to_ps(cycles, st.clock_ghz).max(1));
                    rec.end_ps = end;
                    compute_done.push(Reverse((end, si)));
                }
                st.stats.wait_ps = st.stats.wait_ps.saturating_add(now - st.free_at);
                st.free_at = now;
                st.running.push_back(Running {
                    record: records.len(),
                    index,
                    cycles,
                });
                st.pc += 1;
                records.push(rec);
            }
        }

        // Jump to the next event.
        let next_compute = compute_done.peek().map(|Reverse((t, _))| *t);
        let next = match (next_compute, dma.next_event()) {
            (Some(a), Some(b)) => a.min(b),
            (Some(a), None) => a,
            (None, Some(b)) => b,
            (None, None) => break,
        };
        now = next;
        completed.clear();
        while let Some(Reverse((t, si))) = compute_done.peek().copied() {
            if t != now {
                break;
            }
            compute_done.pop();
            completed.push(si);
        }
        dma.advance(now, &mut completed);
        completed.sort_unstable();
        for &si in &completed {
            let st = &mut streams[si];
            let was_full = st.running.len() >= st.depth;
            let Some(run) = st.running.pop_front() else {
                continue;
            };
            let instr = &program.streams[si].instrs[run.index];
            let rec = &mut records[run.record];
            rec.end_ps = now;
            // Busy time is the union of the in-flight intervals (completions are in order).
            let dur = now - rec.start_ps.max(st.busy_until.min(now));
            st.busy_until = now;
            st.stats.instructions += 1;
            // Saturating: absurd configured latencies or clocks give saturated times.
            st.stats.busy_ps = st.stats.busy_ps.saturating_add(dur);
            st.stats.busy_cycles = st.stats.busy_cycles.saturating_add(if st.engine.is_dma() {
                cost::ps_to_cycles(dur, st.clock_ghz)
            } else {
                run.cycles
            });
            if was_full {
                st.free_at = st.free_at.max(now);
            }
            for s in &instr.signal {
                if let Some(c) = sems.get_mut(s.0 as usize) {
                    *c += 1;
                }
                if let Some(rc) = races.as_mut() {
                    rc.on_signal(si, *s);
                }
            }
            done += 1;
            if done % PROGRESS_INTERVAL == 0 {
                progress(done, total);
            }
        }
    }

    if streams
        .iter()
        .enumerate()
        .any(|(si, st)| st.pc < program.streams[si].instrs.len() || !st.running.is_empty())
    {
        return Err(SimError::Deadlock(deadlock_message(
            program, &streams, &sems,
        )));
    }
    progress(done, total);
    let first = records.iter().map(|r| r.start_ps).min().unwrap_or(0);
    let last = records.iter().map(|r| r.end_ps).max().unwrap_or(0);
    Ok(RunStats {
        total_ps: last - first,
        engines: streams.into_iter().map(|s| s.stats).collect(),
        records,
        bytes,
        flops,
        warnings: warnings.finish(),
        dma_engine_ps,
    })
}

/// Whether every wait of `instr` is satisfied; an unknown semaphore is an error.
fn waits_satisfied(
    instr: &Instruction,
    sems: &[u64],
    si: usize,
    st: &StreamState,
) -> Result<bool, SimError> {
    for w in &instr.wait {
        let Some(&count) = sems.get(w.sem.0 as usize) else {
            return Err(SimError::Illegal(format!(
                "{} instruction {} (stream {si}) waits on semaphore {}: expected an id below {}",
                st.engine,
                st.pc,
                w.sem,
                sems.len()
            )));
        };
        if count < u64::from(w.count) {
            return Ok(false);
        }
    }
    for s in &instr.signal {
        if s.0 as usize >= sems.len() {
            return Err(SimError::Illegal(format!(
                "{} instruction {} (stream {si}) signals semaphore {}: expected an id below {}",
                st.engine,
                st.pc,
                s,
                sems.len()
            )));
        }
    }
    Ok(true)
}

/// Adds the bytes each access pattern of `op` reads and writes to its memory's counters.
fn count_bytes(op: &Op, bytes: &mut ByteCounters) {
    let mut add = |mem: Memory, n: u64, write: bool| match (mem, write) {
        (Memory::Hbm(_), false) => bytes.hbm_read += n,
        (Memory::Hbm(_), true) => bytes.hbm_write += n,
        (Memory::Sbuf, false) => bytes.sbuf_read += n,
        (Memory::Sbuf, true) => bytes.sbuf_write += n,
        (Memory::Psum, false) => bytes.psum_read += n,
        (Memory::Psum, true) => bytes.psum_write += n,
    };
    match op {
        Op::DmaGather {
            dst,
            table,
            indices,
        } => {
            // The table pattern spans every row; only one row per destination partition is
            // read.
            add(indices.mem, indices.bytes(), false);
            add(
                table.mem,
                u64::from(dst.partitions) * table.bytes_per_partition(),
                false,
            );
            add(dst.mem, dst.bytes(), true);
        }
        _ => {
            for ap in op.reads() {
                add(ap.mem, ap.bytes(), false);
            }
            for ap in op.writes() {
                add(ap.mem, ap.bytes(), true);
            }
        }
    }
}

/// Names each blocked stream, its instruction and the waits that cannot be satisfied.
fn deadlock_message(program: &Program, streams: &[StreamState], sems: &[u64]) -> String {
    let mut parts = Vec::new();
    for (si, st) in streams.iter().enumerate() {
        let Some(instr) = program.streams[si].instrs.get(st.pc) else {
            continue;
        };
        let waits: Vec<String> = instr
            .wait
            .iter()
            .filter_map(|w| {
                let cur = sems.get(w.sem.0 as usize).copied().unwrap_or(0);
                (cur < u64::from(w.count))
                    .then(|| format!("{} >= {} (current count {cur})", w.sem, w.count))
            })
            .collect();
        parts.push(format!(
            "{} instruction {} (stream {si}, {}) waits for {}",
            st.engine,
            st.pc,
            instr.op.opcode(),
            waits.join(" and ")
        ));
    }
    format!(
        "{} of {} streams can never finish: {}",
        parts.len(),
        streams.len(),
        parts.join("; ")
    )
}
