//! `neuron-sim`: run a `.neff` (or a `model.json`, compiled in memory) on the simulated
//! NeuronCore, write its outputs and profile, and print a summary.
//!
//! Exit codes: 0 success, 1 a model, artifact, input or simulation error (the message
//! names the file), 2 a usage error.

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use neuron_isa::{Artifact, ChipConfig};
use neuron_runtime::{Model, Report, Rounding, RunOptions, Summary, write_outputs, write_profile};
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

#[derive(Parser, Debug)]
#[command(
    name = "neuron-sim",
    version,
    about = "Run programs on a simulated NeuronCore"
)]
struct Cli {
    /// More log output on stderr (-v info, -vv debug, -vvv trace); RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Execute an artifact or model and print a performance summary.
    Run(RunArgs),
}

#[derive(Args, Debug)]
struct RunArgs {
    /// A compiled ARTIFACT.neff, or a MODEL.json to compile in memory first.
    model: PathBuf,
    /// Bind input NAME to the array in FILE.npy (repeatable); inputs not given are drawn
    /// from the seeded generator.
    #[arg(long = "input", value_name = "NAME=FILE.npy", value_parser = parse_input)]
    inputs: Vec<(String, PathBuf)>,
    /// Write each output to `DIR/<output name>.npy`.
    #[arg(long, value_name = "DIR")]
    output_dir: Option<PathBuf>,
    /// Write flame.folded, flame.svg, trace.json and summary.json to DIR.
    #[arg(long, value_name = "DIR")]
    profile: Option<PathBuf>,
    /// Skip numerics: same instructions, same timing, much faster; no outputs.
    #[arg(long)]
    timing_only: bool,
    /// How writes round to narrow float types.
    #[arg(long, value_enum, default_value_t = RoundingArg::Rne)]
    rounding: RoundingArg,
    /// Seed of stochastic rounding and of generated inputs [default: the model's seed].
    #[arg(long, value_name = "N")]
    seed: Option<u64>,
    /// Print the summary as JSON on stdout.
    #[arg(long)]
    json: bool,
    /// Look for unsynchronized SBUF/PSUM accesses between engines (slower).
    #[arg(long)]
    check_races: bool,
    #[command(flatten)]
    compile: CompileFlags,
}

/// The compiler's flags, used only when the model is a model.json.
#[derive(Args, Debug, Default)]
struct CompileFlags {
    /// Chip to compile for: trn1, trn2 or a .toml file (for a .neff: must match its target).
    #[arg(long, value_name = "TARGET")]
    target: Option<String>,
    /// Which fp32 ops to cast: none, matmult or all (model.json only).
    #[arg(long, value_name = "MODE")]
    auto_cast: Option<String>,
    /// What auto-cast casts to: bf16, fp16, fp8_e4m3 or int8 (model.json only).
    #[arg(long, value_name = "TYPE")]
    auto_cast_type: Option<String>,
    /// One kernel per op, no fusion (model.json only).
    #[arg(long)]
    no_fuse: bool,
}

#[derive(ValueEnum, Clone, Copy, Debug)]
enum RoundingArg {
    /// Round to nearest, ties to even.
    Rne,
    /// Stochastic rounding, seeded.
    Stochastic,
}

fn parse_input(s: &str) -> Result<(String, PathBuf), String> {
    match s.split_once('=') {
        Some((name, file)) if !name.is_empty() && !file.is_empty() => {
            Ok((name.to_string(), PathBuf::from(file)))
        }
        _ => Err(format!("expected NAME=FILE.npy, found '{s}'")),
    }
}

/// A mistake in how the command was called (exit code 2).
#[derive(Debug)]
struct UsageError(String);

impl std::fmt::Display for UsageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}

fn is_model_json(path: &Path) -> bool {
    path.extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("json"))
}

/// Compiles a model.json into an artifact, in memory.
/// Without `weights` (a timing-only run) no weight is drawn or encoded.
fn compile_in_memory(path: &Path, flags: &CompileFlags, weights: bool) -> anyhow::Result<Artifact> {
    use neuronc::options::{AutoCast, CastType, CompileOptions};
    let mut opts = CompileOptions::default();
    if let Some(t) = &flags.target {
        opts.target = ChipConfig::from_target(t).with_context(|| format!("--target {t}"))?;
    }
    if let Some(m) = &flags.auto_cast {
        opts.auto_cast = AutoCast::parse(m).ok_or_else(|| {
            UsageError(format!(
                "--auto-cast: expected none, matmult or all, found '{m}'"
            ))
        })?;
    }
    if let Some(t) = &flags.auto_cast_type {
        opts.auto_cast_type = CastType::parse(t).ok_or_else(|| {
            UsageError(format!(
                "--auto-cast-type: expected bf16, fp16, fp8_e4m3 or int8, found '{t}'"
            ))
        })?;
    }
    opts.fuse = !flags.no_fuse;
    let graph = neuronc::frontend::load_model(path)
        .with_context(|| format!("invalid model {}", path.display()))?;
    let compiled = if weights {
        neuronc::driver::compile(&graph, &opts)
    } else {
        neuronc::driver::compile_without_weights(&graph, &opts)
    }
    .with_context(|| format!("cannot compile {}", path.display()))?;
    tracing::info!(summary = %compiled.summary, "compiled in memory");
    eprintln!(
        "note: compiled {} in memory for {} ({} kernels, {} instructions)",
        path.display(),
        compiled.artifact.meta.target.name,
        compiled.summary.total_kernels(),
        compiled.summary.total_instructions()
    );
    Ok(compiled.artifact)
}

/// Loads the model named on the command line: a .neff, or a model.json compiled first.
fn load(args: &RunArgs) -> anyhow::Result<Model> {
    if is_model_json(&args.model) {
        // A timing-only run reads no weight byte: none is drawn, encoded or loaded.
        let artifact = compile_in_memory(&args.model, &args.compile, !args.timing_only)?;
        return Ok(if args.timing_only {
            Model::from_program(artifact)?
        } else {
            Model::from_artifact(artifact)?
        });
    }
    let c = &args.compile;
    for (given, flag) in [
        (c.auto_cast.is_some(), "--auto-cast"),
        (c.auto_cast_type.is_some(), "--auto-cast-type"),
        (c.no_fuse, "--no-fuse"),
    ] {
        if given {
            return Err(UsageError(format!(
                "{flag} applies only when compiling a model.json; {} is already compiled",
                args.model.display()
            ))
            .into());
        }
    }
    let model = if args.timing_only {
        Model::load_without_weights(&args.model)?
    } else {
        Model::load(&args.model)?
    };
    if let Some(t) = &c.target {
        let wanted = ChipConfig::from_target(t).with_context(|| format!("--target {t}"))?;
        if &wanted != model.target() {
            bail!(
                "{} was compiled for target '{}', but --target asks for '{}': recompile it for that target",
                args.model.display(),
                model.target().name,
                wanted.name
            );
        }
    }
    Ok(model)
}

/// A progress bar on stderr, shown only when stderr is a terminal and the run has lasted
/// long enough to be worth watching.
struct Progress {
    enabled: bool,
    started: Instant,
    bar: Option<ProgressBar>,
}

impl Progress {
    const DELAY: Duration = Duration::from_millis(500);

    fn new() -> Progress {
        Progress {
            enabled: std::io::stderr().is_terminal(),
            started: Instant::now(),
            bar: None,
        }
    }

    fn update(&mut self, done: u64, total: u64) {
        if !self.enabled {
            return;
        }
        if self.bar.is_none() && self.started.elapsed() >= Self::DELAY {
            let bar = ProgressBar::new(total);
            if let Ok(style) = ProgressStyle::with_template(
                "{spinner} simulating [{bar:40}] {pos}/{len} instructions ({eta})",
            ) {
                bar.set_style(style.progress_chars("=> "));
            }
            self.bar = Some(bar);
        }
        if let Some(bar) = &self.bar {
            bar.set_position(done);
        }
    }

    fn finish(self) {
        if let Some(bar) = self.bar {
            bar.finish_and_clear();
        }
    }
}

fn run(args: &RunArgs) -> anyhow::Result<()> {
    let model = load(args)?;
    let seed = args.seed.unwrap_or(model.artifact().meta.seed);
    let mut inputs = model.bind();
    for (name, file) in &args.inputs {
        inputs.set_input_npy(name, file)?;
    }
    let generated = inputs.generate_missing(seed)?;
    for name in &generated {
        eprintln!("note: input '{name}' not given: drawn from the seeded generator (seed {seed})");
    }
    let opts = RunOptions {
        timing_only: args.timing_only,
        rounding: match args.rounding {
            RoundingArg::Rne => Rounding::Rne,
            RoundingArg::Stochastic => Rounding::Stochastic,
        },
        seed,
        check_races: args.check_races,
    };
    let mut progress = Progress::new();
    let result = model.execute_with_progress(&inputs, &opts, &mut |d, t| progress.update(d, t));
    progress.finish();
    let exec = result?;

    if let Some(dir) = &args.output_dir {
        if exec.timing_only {
            eprintln!(
                "note: --timing-only computes no outputs; nothing written to {}",
                dir.display()
            );
        } else {
            for (name, file) in write_outputs(dir, &exec)? {
                tracing::info!(output = %name, file = %file.display(), "output written");
            }
        }
    }
    if let Some(dir) = &args.profile {
        write_profile(dir, &model, &exec.stats)?;
        eprintln!(
            "profile written to {} (flame.folded, flame.svg, trace.json, summary.json)",
            dir.display()
        );
    }
    let report = Report {
        summary: Summary::new(&model, &exec.stats)?,
        timing_only: exec.timing_only,
        generated_inputs: generated,
    };
    if args.json {
        println!("{}", report.to_json()?);
    } else {
        print!("{report}");
    }
    Ok(())
}

fn main() -> ExitCode {
    // clap exits 0 for --help/--version and 2 for usage errors.
    let cli = Cli::parse();
    let level = match cli.verbose {
        0 => "warn",
        1 => "info",
        2 => "debug",
        _ => "trace",
    };
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level)),
        )
        .init();
    let result = match &cli.command {
        Command::Run(args) => run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            if e.downcast_ref::<UsageError>().is_some() {
                ExitCode::from(2)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}
