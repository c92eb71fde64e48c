//! The profiler: turns a run's records into the files of a profile directory.
//!
//! Every file is derived from the same data, the simulator's [`RunStats`] resolved
//! against the program ([`Span`]): which engine ran each instruction, for which kernel,
//! when, moving how many HBM bytes. `docs/profiling.md` explains how to read each file.
//!
//! - [`folded`]: `flame.folded`, folded stacks `model;kernel;engine;opcode <ns>`.
//! - [`svg`]: `flame.svg`, the same stacks rendered by inferno.
//! - [`trace`]: `trace.json`, Chrome trace events for Perfetto / chrome://tracing.
//! - [`summary`]: `summary.json`, latency, MFU, MBU, engine activity, per-kernel
//!   roofline figures and [`insights`] (what to fix).
//! - [`deps`]: which signal released each semaphore wait, and the critical path.

pub mod deps;
pub mod folded;
pub mod insights;
pub mod summary;
pub mod svg;
pub mod trace;

use crate::error::RuntimeError;
use crate::model::Model;
use neuron_isa::{Engine, Instruction, KernelInfo, NO_KERNEL, Program};
use neuron_sim::{InstrRecord, RunStats};
use std::path::{Path, PathBuf};

/// The tool named in `trace.json` and `summary.json`.
pub const TOOL: &str = "neuron-sim";
/// The tool's version (the workspace version).
pub const TOOL_VERSION: &str = env!("CARGO_PKG_VERSION");
/// Version of the layout of `summary.json` and `trace.json`: 2 added `insights`,
/// `limiter`, the kernel track and the semaphore flow arrows.
pub const SCHEMA_VERSION: u32 = 2;

/// Frame name of instructions that belong to no kernel.
pub const NO_KERNEL_NAME: &str = "no_kernel";

/// One executed instruction resolved against its program.
#[derive(Debug, Clone, Copy)]
pub struct Span<'a> {
    /// The simulator's record.
    pub record: &'a InstrRecord,
    /// The engine (or DMA queue) of the record's stream.
    pub engine: Engine,
    /// The instruction.
    pub instr: &'a Instruction,
    /// The kernel, if the instruction belongs to one.
    pub kernel: Option<&'a KernelInfo>,
}

impl Span<'_> {
    /// The kernel's name, or [`NO_KERNEL_NAME`].
    pub fn kernel_name(&self) -> &str {
        self.kernel.map_or(NO_KERNEL_NAME, |k| k.name.as_str())
    }
}

/// Resolves every record of `stats` against `program`, in the records' order.
///
/// A record naming a stream or instruction the program does not have is an error: the
/// stats belong to another program.
pub fn spans<'a>(program: &'a Program, stats: &'a RunStats) -> Result<Vec<Span<'a>>, RuntimeError> {
    stats
        .records
        .iter()
        .map(|r| {
            let stream = program.streams.get(usize::from(r.stream));
            let instr = stream.and_then(|s| s.instrs.get(r.index as usize));
            match (stream, instr) {
                (Some(s), Some(instr)) => Ok(Span {
                    record: r,
                    engine: s.engine,
                    instr,
                    kernel: if r.kernel == NO_KERNEL {
                        None
                    } else {
                        program.kernels.get(r.kernel as usize)
                    },
                }),
                _ => Err(RuntimeError::Program(format!(
                    "run record names stream {} instruction {}, which the program does not have",
                    r.stream, r.index
                ))),
            }
        })
        .collect()
}

/// Length of the union of `[start, end)` intervals, in the intervals' unit.
pub(crate) fn union_length(mut intervals: Vec<(u64, u64)>) -> u64 {
    intervals.sort_unstable();
    let mut total = 0;
    let mut cur: Option<(u64, u64)> = None;
    for (s, e) in intervals {
        match cur {
            Some((cs, ce)) if s <= ce => cur = Some((cs, ce.max(e))),
            Some((cs, ce)) => {
                total += ce - cs;
                cur = Some((s, e));
            }
            None => cur = Some((s, e)),
        }
    }
    total + cur.map_or(0, |(s, e)| e - s)
}

/// Picoseconds to whole nanoseconds, rounding halves up.
pub fn ps_to_ns(ps: u64) -> u64 {
    ps.saturating_add(500) / 1000
}

/// Replaces what folded stacks cannot hold in a frame (spaces, `;`, control characters)
/// with `_`.
pub fn frame_name(s: &str) -> String {
    let out: String = s
        .chars()
        .map(|c| {
            if c.is_whitespace() || c == ';' || c.is_control() {
                '_'
            } else {
                c
            }
        })
        .collect();
    if out.is_empty() { "_".into() } else { out }
}

/// The files [`write_profile`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProfileFiles {
    /// `flame.folded`.
    pub folded: PathBuf,
    /// `flame.svg`.
    pub svg: PathBuf,
    /// `trace.json`.
    pub trace: PathBuf,
    /// `summary.json`.
    pub summary: PathBuf,
}

fn write_file(path: &Path, bytes: &[u8]) -> Result<(), RuntimeError> {
    std::fs::write(path, bytes).map_err(|e| RuntimeError::io("write", path, e))
}

/// JSON text of `v`: indented for people, or compact (traces of large models run to
/// hundreds of MB, and Perfetto loads smaller files faster).
fn to_json(v: &impl serde::Serialize, pretty: bool) -> Result<Vec<u8>, RuntimeError> {
    let encoded = if pretty {
        serde_json::to_vec_pretty(v)
    } else {
        serde_json::to_vec(v)
    };
    let mut s = encoded.map_err(|e| RuntimeError::Profile(format!("json: {e}")))?;
    s.push(b'\n');
    Ok(s)
}

/// Writes `flame.folded`, `flame.svg`, `trace.json` and `summary.json` for one run of
/// `model` into `dir` (created if needed).
pub fn write_profile(
    dir: &Path,
    model: &Model,
    stats: &RunStats,
) -> Result<ProfileFiles, RuntimeError> {
    let _span = tracing::info_span!("profile", dir = %dir.display()).entered();
    std::fs::create_dir_all(dir).map_err(|e| RuntimeError::io("create directory", dir, e))?;
    let files = ProfileFiles {
        folded: dir.join("flame.folded"),
        svg: dir.join("flame.svg"),
        trace: dir.join("trace.json"),
        summary: dir.join("summary.json"),
    };
    let lines = folded::folded_stacks(model, stats)?;
    let mut text = lines.join("\n");
    if !text.is_empty() {
        text.push('\n');
    }
    write_file(&files.folded, text.as_bytes())?;
    write_file(&files.svg, &svg::flame_svg(model, stats, &lines)?)?;
    write_file(
        &files.trace,
        &to_json(&trace::chrome_trace(model, stats)?, false)?,
    )?;
    write_file(
        &files.summary,
        &to_json(&summary::Summary::new(model, stats)?, true)?,
    )?;
    Ok(files)
}
