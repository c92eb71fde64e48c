//! The command-line pieces `neuronc` and `neuron-sim` share: compile flags as clap value
//! enums, logging flags, exit statuses, the "nothing lost" rule and closed-pipe handling.
//!
//! This file is a module of both binaries (`neuron-sim` includes it by path), so the two
//! tools have the same flags, the same help text and the same errors. It is not part of
//! the `neuronc` library, which must not depend on clap or anyhow.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};

use anyhow::{Context, anyhow};
use clap::{Args, ValueEnum};
use neuron_isa::{ChipConfig, ConfigError};
use neuronc::ir::{DType, Graph, Tensor, fmt_shape};
use neuronc::options::{AutoCast, CastType, CompileOptions};

/// The exit-status section of every `--help`.
pub const EXIT_STATUS: &str = "Exit status:
  0  success
  1  bad input (model, weights, .npy, .neff or chip file) or a failed run; the message
     names the file, JSON path, node, tensor or instruction
  2  usage error: unknown flag or value, duplicated --input, an unknown --target name, or
     an output that would overwrite a file the same run reads";

/// A mistake in how the command was called: exit 2.
#[derive(Debug)]
pub struct UsageError(pub String);

impl std::fmt::Display for UsageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}

/// Standard output was closed by the reader (`neuronc check big.json | head -1`): the
/// command stops quietly with exit 0.
#[derive(Debug)]
pub struct ClosedPipe;

impl std::fmt::Display for ClosedPipe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("standard output closed")
    }
}

impl std::error::Error for ClosedPipe {}

/// Maps a write error on standard output: a closed pipe becomes [`ClosedPipe`].
pub fn stdout_error(e: std::io::Error) -> anyhow::Error {
    if e.kind() == std::io::ErrorKind::BrokenPipe {
        anyhow!(ClosedPipe)
    } else {
        anyhow!(e).context("cannot write to standard output")
    }
}

/// Writes `text` to standard output (see [`stdout_error`]).
pub fn print_out(text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes()).map_err(stdout_error)?;
    out.flush().map_err(stdout_error)
}

/// The exit code of a failed command (1 bad input, 2 usage; 0 for a closed pipe),
/// printing the message unless the pipe was closed.
pub fn report_failure(e: &anyhow::Error, usage: bool) -> u8 {
    if e.downcast_ref::<ClosedPipe>().is_some() {
        return 0;
    }
    eprintln!("error: {}", message(e));
    if usage || e.downcast_ref::<UsageError>().is_some() {
        2
    } else {
        1
    }
}

/// The error and its causes joined by `: `, skipping a cause whose text the message
/// already holds (library errors often print their source themselves), so no message
/// prints its cause twice.
pub fn message(e: &anyhow::Error) -> String {
    let mut msg = e.to_string();
    for cause in e.chain().skip(1) {
        let c = cause.to_string();
        if !msg.contains(&c) {
            msg.push_str(": ");
            msg.push_str(&c);
        }
    }
    msg
}

/// `--verbose LEVEL`.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum LevelArg {
    /// Errors only.
    Error,
    /// Warnings (the default).
    Warn,
    /// Progress of each stage (same as -v).
    Info,
    /// Details (same as -vv).
    Debug,
    /// Everything (same as -vvv).
    Trace,
}

/// Logging flags (global: they may follow the subcommand).
#[derive(Args, Debug, Default)]
pub struct LogArgs {
    /// More log output on stderr: -v info, -vv debug, -vvv trace (RUST_LOG overrides).
    #[arg(short = 'v', action = clap::ArgAction::Count, global = true)]
    pub v: u8,
    /// Log level by name (the same levels as -v); RUST_LOG overrides.
    #[arg(long, value_enum, value_name = "LEVEL", global = true)]
    pub verbose: Option<LevelArg>,
    /// Also append the log to FILE (without colour).
    #[arg(long, value_name = "FILE", global = true)]
    pub logfile: Option<PathBuf>,
}

impl LogArgs {
    /// Installs the log subscriber: stderr (coloured only when stderr is a terminal and
    /// NO_COLOR is unset) and, with `--logfile`, the file.
    pub fn init(&self) -> anyhow::Result<()> {
        use tracing_subscriber::prelude::*;
        let level = match (self.verbose, self.v) {
            (Some(LevelArg::Error), _) => "error",
            (Some(LevelArg::Warn), _) | (None, 0) => "warn",
            (Some(LevelArg::Info), _) | (None, 1) => "info",
            (Some(LevelArg::Debug), _) | (None, 2) => "debug",
            (Some(LevelArg::Trace), _) | (None, _) => "trace",
        };
        let filter = tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
        let colour = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
        // With -v, every span's close event prints its wall time (compile stages, weight
        // encoding, writing).
        let stderr = tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_span_events(tracing_subscriber::fmt::format::FmtSpan::CLOSE)
            .with_ansi(colour);
        let file = match &self.logfile {
            None => None,
            Some(path) => {
                let f = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .map_err(|e| anyhow!(e).context(format!("--logfile {}", path.display())))?;
                Some(
                    tracing_subscriber::fmt::layer()
                        .with_writer(std::sync::Mutex::new(f))
                        .with_ansi(false),
                )
            }
        };
        let _ = tracing_subscriber::registry()
            .with(filter)
            .with(stderr)
            .with(file)
            .try_init();
        Ok(())
    }
}

/// `--auto-cast`: which fp32 ops are cast to the auto-cast type.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum AutoCastArg {
    /// Keep everything in fp32.
    None,
    /// Cast the operands of matmuls (TensorE) only.
    Matmult,
    /// Cast the storage of all fp32 ops (statistics and accumulation stay fp32).
    All,
}

impl From<AutoCastArg> for AutoCast {
    fn from(a: AutoCastArg) -> AutoCast {
        match a {
            AutoCastArg::None => AutoCast::None,
            AutoCastArg::Matmult => AutoCast::Matmult,
            AutoCastArg::All => AutoCast::All,
        }
    }
}

/// `--auto-cast-type`: the reduced type auto-cast casts to.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum CastTypeArg {
    /// bfloat16.
    Bf16,
    /// IEEE half precision.
    Fp16,
    /// 8-bit float, 4 exponent and 3 mantissa bits.
    #[value(name = "fp8_e4m3")]
    Fp8E4m3,
    /// Symmetric int8 with int32 accumulation (calibrated with --calibrate).
    Int8,
}

impl From<CastTypeArg> for CastType {
    fn from(a: CastTypeArg) -> CastType {
        match a {
            CastTypeArg::Bf16 => CastType::Bf16,
            CastTypeArg::Fp16 => CastType::Fp16,
            CastTypeArg::Fp8E4m3 => CastType::Fp8E4m3,
            CastTypeArg::Int8 => CastType::Int8,
        }
    }
}

/// The compiler's flags, with the same names, help and errors in both tools.
#[derive(Args, Debug, Default, Clone)]
pub struct CompileFlags {
    /// Target chip: a preset by name (trn1, trn2) or a chip TOML file by path (a .toml
    /// suffix or a path such as ./mychip) [default: trn1].
    #[arg(long, value_name = "trn1|trn2|FILE.toml")]
    pub target: Option<String>,
    /// Which fp32 ops are cast to the auto-cast type [default: matmult].
    #[arg(long, value_enum, value_name = "MODE")]
    pub auto_cast: Option<AutoCastArg>,
    /// The reduced type of auto-cast [default: bf16].
    #[arg(long, value_enum, value_name = "TYPE")]
    pub auto_cast_type: Option<CastTypeArg>,
    /// Optimization level: -O1 no fusion (one kernel per op); -O2 fusion (the default);
    /// -O3 the same as -O2 (the tiling model already estimates every feasible tiling at
    /// every level).
    #[arg(short = 'O', value_name = "LEVEL", value_parser = clap::value_parser!(u8).range(1..=3))]
    pub opt_level: Option<u8>,
    /// One kernel per op, no fusion (the same as -O1).
    #[arg(long)]
    pub no_fuse: bool,
    /// Do not run the per-image stretch of a CNN depth-first over groups of images (by
    /// default the compiler does where its cost model says it pays; docs/compiler.md,
    /// Micro-batching).
    #[arg(long)]
    pub no_micro_batch: bool,
    /// int8 calibration data for an input, as NAME=FILE.npy (repeatable); seeded random
    /// inputs are used for inputs not given.
    #[arg(long = "calibrate", value_name = "NAME=FILE.npy")]
    pub calibrate: Vec<String>,
    /// Shape of an ONNX graph input, binding its symbolic dimensions, as NAME=1x128
    /// (repeatable; .onnx models only).
    #[arg(long = "input-shape", value_name = "NAME=DxD...")]
    pub input_shapes: Vec<String>,
}

impl CompileFlags {
    /// The flags that were given, by name (for refusing them when nothing is compiled).
    pub fn given(&self) -> Vec<&'static str> {
        let mut v = Vec::new();
        if self.auto_cast.is_some() {
            v.push("--auto-cast");
        }
        if self.auto_cast_type.is_some() {
            v.push("--auto-cast-type");
        }
        if self.opt_level.is_some() {
            v.push("-O");
        }
        if self.no_fuse {
            v.push("--no-fuse");
        }
        if self.no_micro_batch {
            v.push("--no-micro-batch");
        }
        if !self.calibrate.is_empty() {
            v.push("--calibrate");
        }
        if !self.input_shapes.is_empty() {
            v.push("--input-shape");
        }
        v
    }

    /// The files these flags make the run read (chip file, calibration arrays).
    pub fn files(&self) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = self
            .calibrate
            .iter()
            .filter_map(|s| s.split_once('=').map(|(_, f)| PathBuf::from(f)))
            .collect();
        if let Some(t) = self.target.as_ref().filter(|t| target_is_path(t)) {
            v.push(PathBuf::from(t));
        }
        v
    }

    /// The compile options for `g` (reads the chip file and the calibration arrays).
    pub fn options(&self, g: &Graph) -> anyhow::Result<CompileOptions> {
        let mut opts = CompileOptions::default();
        if let Some(t) = &self.target {
            opts.target = resolve_target(t)?;
        }
        if let Some(a) = self.auto_cast {
            opts.auto_cast = a.into();
        }
        if let Some(t) = self.auto_cast_type {
            opts.auto_cast_type = t.into();
        }
        opts.fuse = !self.no_fuse && self.opt_level.unwrap_or(2) >= 2;
        opts.micro_batch = !self.no_micro_batch;
        let mut seen = BTreeMap::new();
        for spec in &self.calibrate {
            let (name, file) = split_input(spec, "--calibrate")?;
            let (shape, dtype) = model_input(g, name, "--calibrate")?;
            if seen.insert(name.to_string(), ()).is_some() {
                return Err(anyhow!(UsageError(format!(
                    "--calibrate '{name}' is given twice"
                ))));
            }
            let t = neuronc::npy::read_npy(Path::new(file))
                .map_err(|e| anyhow!(e).context(format!("calibration input '{name}'")))?;
            let t = conform_input(name, t, &shape, dtype).with_context(|| file.to_string())?;
            opts.calibration.insert(name.to_string(), t);
        }
        Ok(opts)
    }
}

/// Whether a `--target` argument names a file (see [`ChipConfig::from_target`]).
pub fn target_is_path(t: &str) -> bool {
    t.ends_with(".toml") || t.contains('/') || t.contains(std::path::MAIN_SEPARATOR)
}

/// Resolves `--target`: an unknown or ambiguous name is a usage error (exit 2), a chip file
/// that cannot be read or is invalid is bad input (exit 1); both name the argument.
pub fn resolve_target(t: &str) -> anyhow::Result<ChipConfig> {
    ChipConfig::from_target(t).map_err(|e| match e {
        ConfigError::UnknownPreset(_) | ConfigError::Ambiguous(_) => {
            anyhow!(UsageError(format!("--target: {e}")))
        }
        other => anyhow!(other),
    })
}

/// Splits `NAME=FILE.npy`.
pub fn split_input<'a>(spec: &'a str, flag: &str) -> anyhow::Result<(&'a str, &'a str)> {
    match spec.split_once('=') {
        Some((n, f)) if !n.is_empty() && !f.is_empty() => Ok((n, f)),
        _ => Err(anyhow!(UsageError(format!(
            "{flag} '{spec}': expected NAME=FILE.npy"
        )))),
    }
}

/// The declared shape and dtype of graph input `name`, or a usage error listing the inputs.
pub fn model_input(g: &Graph, name: &str, flag: &str) -> anyhow::Result<(Vec<usize>, DType)> {
    match g.inputs.iter().find(|&&i| g.value(i).name == name) {
        Some(&id) => Ok((g.value(id).shape.clone(), g.value(id).dtype)),
        None => {
            let known: Vec<&str> = g.inputs.iter().map(|&i| g.value(i).name.as_str()).collect();
            Err(anyhow!(UsageError(format!(
                "{flag} '{name}': the model has no input '{name}' (its inputs are: {})",
                if known.is_empty() {
                    "none".to_string()
                } else {
                    known.join(", ")
                }
            ))))
        }
    }
}

/// Converts a user-supplied tensor to the declared dtype when only the width differs (f64
/// npy for an f32 input, i64 for i32); refuses other mismatches.
pub fn conform_input(
    name: &str,
    t: Tensor,
    shape: &[usize],
    dtype: DType,
) -> anyhow::Result<Tensor> {
    let declared = format!("{} {dtype}", fmt_shape(shape));
    let found = format!("{} {}", fmt_shape(t.shape()), t.elem_name());
    if t.shape() != shape {
        return Err(anyhow!(
            "input '{name}': expected {declared}, found {found}"
        ));
    }
    let is_float = |t: &Tensor| {
        matches!(
            t,
            Tensor::F32(_) | Tensor::F64(_) | Tensor::Bf16(_) | Tensor::F16(_)
        )
    };
    let ok = match (is_float(&t), dtype) {
        (true, d) => d.is_float(),
        (false, DType::Bool) => t.dtype() == DType::Bool,
        // Integer and boolean data convert to float inputs (as in neuron-sim).
        (false, d) if d.is_float() => true,
        (false, d) => d.is_int() && t.dtype().is_int(),
    };
    if !ok {
        return Err(anyhow!(
            "input '{name}': expected {declared}, found {found}"
        ));
    }
    if t.dtype() == dtype && !matches!(t, Tensor::F64(_)) {
        return Ok(t);
    }
    let cast = t.cast(dtype);
    if dtype.is_int() && cast.to_i64() != t.to_i64() {
        return Err(anyhow!(
            "input '{name}': values of {found} do not fit the declared {declared}"
        ));
    }
    Ok(cast)
}

/// Refuses to run when an output would be written over a file the run reads (the model,
/// its weights, `--input`/`--calibrate` arrays, the chip file): a usage error naming both.
pub fn refuse_clobber(outputs: &[PathBuf], inputs: &[PathBuf]) -> anyhow::Result<()> {
    match neuron_isa::host::find_clobber(outputs, inputs) {
        None => Ok(()),
        Some((out, input)) => Err(anyhow!(UsageError(format!(
            "refusing to write {}: it is {}, an input of this run (nothing was written; choose another output path or directory)",
            out.display(),
            input.display()
        )))),
    }
}

/// Refuses a name given twice to `flag`.
pub fn refuse_duplicates<'a>(
    names: impl IntoIterator<Item = &'a str>,
    flag: &str,
) -> anyhow::Result<()> {
    let mut seen = std::collections::BTreeSet::new();
    for n in names {
        if !seen.insert(n) {
            return Err(anyhow!(UsageError(format!("{flag} '{n}' is given twice"))));
        }
    }
    Ok(())
}
