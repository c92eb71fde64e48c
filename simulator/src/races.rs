//! Race detection: on-chip accesses from different engines that no semaphore chain orders.
//!
//! Happens-before is the transitive closure of two kinds of edges, both "end -> start":
//! program order within a stream (an instruction starts after its predecessor ends) and
//! semaphores (an instruction that waits for `sem >= c` starts after the instructions
//! whose completions produced the first `c` signals of `sem` in this run). Each started
//! instruction gets a vector clock (one entry per stream: how many of that stream's
//! instructions happen before it, itself included); instruction `(a, i)` happens before
//! `b` iff `vc_b[a] > i`.
//!
//! Checks run at each instruction's start, in the simulator's global start order: every
//! instruction already started on another stream and not ordered before the new one is
//! concurrent with it (it started no later, so the new one cannot be ordered before it).
//! Two concurrent instructions race when they touch overlapping SBUF or PSUM bytes and at
//! least one writes. Overlap is tested on bounding boxes (partition range x byte range
//! within a partition), so interleaved strided patterns that never share a byte can be
//! reported (conservative). HBM accesses are not checked.
//!
//! Cost bound: each stream keeps the accesses of its last [`RACE_WINDOW`] instructions;
//! an unordered pair further apart than that in the earlier stream is not reported.

use neuron_isa::{Ap, Engine, Instruction, Memory, SemId};
use std::collections::VecDeque;

/// Instructions per stream whose accesses are kept for race checks.
pub const RACE_WINDOW: usize = 512;

/// One on-chip access of an instruction, as a bounding box.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Access {
    psum: bool,
    write: bool,
    part_lo: u32,
    part_hi: u32,
    byte_lo: i64,
    byte_hi: i64,
}

impl Access {
    fn of(ap: &Ap, write: bool) -> Option<Access> {
        let psum = match ap.mem {
            Memory::Sbuf => false,
            Memory::Psum => true,
            Memory::Hbm(_) => return None,
        };
        let (byte_lo, byte_hi) = ap.row_byte_span()?;
        if ap.partitions == 0 {
            return None;
        }
        Some(Access {
            psum,
            write,
            part_lo: ap.start_partition,
            part_hi: ap.start_partition.saturating_add(ap.partitions),
            byte_lo,
            byte_hi,
        })
    }

    fn conflicts(&self, other: &Access) -> bool {
        self.psum == other.psum
            && (self.write || other.write)
            && self.part_lo < other.part_hi
            && other.part_lo < self.part_hi
            && self.byte_lo < other.byte_hi
            && other.byte_lo < self.byte_hi
    }

    fn describe(&self) -> String {
        format!(
            "{} {} partitions {}..{} bytes {}..{}",
            if self.write { "writes" } else { "reads" },
            if self.psum { "psum" } else { "sbuf" },
            self.part_lo,
            self.part_hi,
            self.byte_lo,
            self.byte_hi
        )
    }
}

/// The accesses of one started instruction.
#[derive(Debug, Clone)]
struct Entry {
    index: u32,
    accesses: Vec<Access>,
}

/// A race found between two instructions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Race {
    /// The human-readable description naming both instructions.
    pub message: String,
}

/// Vector clocks and recent accesses of every stream.
#[derive(Debug, Clone)]
pub struct RaceChecker {
    engines: Vec<Engine>,
    /// Vector clock of the latest started instruction of each stream.
    current: Vec<Vec<u32>>,
    /// Per semaphore: the join of the clocks of the instructions behind its first k+1
    /// signals, at index k.
    signals: Vec<Vec<Vec<u32>>>,
    history: Vec<VecDeque<Entry>>,
}

impl RaceChecker {
    /// A checker for streams running on `engines` with `semaphores` semaphores.
    pub fn new(engines: Vec<Engine>, semaphores: usize) -> RaceChecker {
        let n = engines.len();
        RaceChecker {
            current: vec![vec![0; n]; n],
            signals: vec![Vec::new(); semaphores],
            history: vec![VecDeque::new(); n],
            engines,
        }
    }

    /// Records the start of instruction `index` of `stream`, returning the races it forms
    /// with already-started instructions of other streams.
    pub fn on_start(&mut self, stream: usize, index: u32, instr: &Instruction) -> Vec<Race> {
        let n = self.engines.len();
        let mut vc = self
            .current
            .get(stream)
            .cloned()
            .unwrap_or_else(|| vec![0; n]);
        for w in &instr.wait {
            if w.count == 0 {
                continue;
            }
            let k = w.count as usize - 1;
            if let Some(src) = self.signals.get(w.sem.0 as usize).and_then(|s| s.get(k)) {
                for (a, b) in vc.iter_mut().zip(src) {
                    *a = (*a).max(*b);
                }
            }
        }
        if let Some(own) = vc.get_mut(stream) {
            *own = index + 1;
        }
        let accesses: Vec<Access> = instr
            .op
            .reads()
            .into_iter()
            .filter_map(|ap| Access::of(ap, false))
            .chain(
                instr
                    .op
                    .writes()
                    .into_iter()
                    .filter_map(|ap| Access::of(ap, true)),
            )
            .collect();
        let mut races = Vec::new();
        if !accesses.is_empty() {
            for (other, hist) in self.history.iter().enumerate() {
                if other == stream {
                    continue;
                }
                let ordered_upto = vc.get(other).copied().unwrap_or(0);
                // History is in index order: scan the unordered suffix only.
                for e in hist.iter().rev() {
                    if e.index < ordered_upto {
                        break;
                    }
                    if let Some((mine, theirs)) = accesses
                        .iter()
                        .find_map(|m| e.accesses.iter().find(|t| m.conflicts(t)).map(|t| (m, t)))
                    {
                        races.push(Race {
                            message: format!(
                                "race: {} instruction {} (stream {}) {} while {} instruction {} \
                                 (stream {}) {}, with no semaphore ordering them",
                                self.engine_name(other),
                                e.index,
                                other,
                                theirs.describe(),
                                self.engine_name(stream),
                                index,
                                stream,
                                mine.describe()
                            ),
                        });
                    }
                }
            }
            if let Some(hist) = self.history.get_mut(stream) {
                if hist.len() >= RACE_WINDOW {
                    hist.pop_front();
                }
                hist.push_back(Entry { index, accesses });
            }
        }
        if let Some(cur) = self.current.get_mut(stream) {
            *cur = vc;
        }
        races
    }

    /// Records that the latest started instruction of `stream` completed and signalled
    /// `sem`.
    pub fn on_signal(&mut self, stream: usize, sem: SemId) {
        let Some(vc) = self.current.get(stream) else {
            return;
        };
        let Some(list) = self.signals.get_mut(sem.0 as usize) else {
            return;
        };
        let joined = match list.last() {
            Some(prev) => prev.iter().zip(vc).map(|(a, b)| (*a).max(*b)).collect(),
            None => vc.clone(),
        };
        list.push(joined);
    }

    fn engine_name(&self, stream: usize) -> String {
        self.engines
            .get(stream)
            .map_or_else(|| "?".to_string(), |e| e.name())
    }
}
