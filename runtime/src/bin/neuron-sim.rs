//! `neuron-sim`: run a `.neff` (or a `model.json`, compiled in memory) on the simulated
//! NeuronCore, write its outputs and profile, and print a summary.
//!
//! Exit codes: 0 success, 1 a model, artifact, input or simulation error (the message
//! names the file), 2 a usage error.

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use neuron_isa::Artifact;
use neuron_runtime::{Model, Report, Rounding, RunOptions, Summary, write_outputs, write_profile};
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

#[path = "../../../compiler/src/cli_common.rs"]
mod cli_common;
use cli_common::{
    CompileFlags, EXIT_STATUS, LogArgs, UsageError, print_out, refuse_clobber, refuse_duplicates,
    report_failure,
};

#[derive(Parser, Debug)]
#[command(
    name = "neuron-sim",
    version,
    about = "Run programs on a simulated NeuronCore",
    after_help = concat!(
        "Exit status:\n  0 success, 1 bad input or failed run, 2 usage error\n\n",
        "Example:\n  neuron-sim run examples/bert_layer.json --profile profile/"
    )
)]
struct Cli {
    #[command(flatten)]
    log: LogArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Execute an artifact or model and print a performance summary.
    #[command(after_help = format!("{EXIT_STATUS}\n\nOutputs are written to DIR/<output name>.npy (the name's characters outside\n[A-Za-z0-9._-] become _, names that collide get -2, -3, ...); an output or profile\nfile that would replace the model or an --input file is refused.\n\nExamples:\n  neuron-sim run bert.neff --output-dir out/ --profile profile/\n  neuron-sim run examples/mlp.json -O1 --target trn2 --timing-only --json"))]
    Run(RunArgs),
}

#[derive(Args, Debug)]
struct RunArgs {
    /// A compiled ARTIFACT.neff, or a MODEL.json to compile in memory first.
    model: PathBuf,
    /// Bind input NAME to the array in FILE.npy (repeatable); inputs not given are drawn
    /// from the seeded generator.
    #[arg(long = "input", value_name = "NAME=FILE.npy")]
    inputs: Vec<String>,
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
    /// The compiler's flags: used when MODEL is a model.json (for a .neff, only --target,
    /// which must match the artifact's target).
    #[command(flatten)]
    compile: CompileFlags,
}

#[derive(ValueEnum, Clone, Copy, Debug)]
enum RoundingArg {
    /// Round to nearest, ties to even.
    Rne,
    /// Stochastic rounding, seeded.
    Stochastic,
}

fn is_model_json(path: &Path) -> bool {
    path.extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("json"))
}

/// Compiles a model.json into an artifact, in memory.
fn compile_in_memory(path: &Path, flags: &CompileFlags) -> anyhow::Result<Artifact> {
    let graph = neuronc::frontend::load_model(path)
        .with_context(|| format!("invalid model {}", path.display()))?;
    let opts = flags.options(&graph)?;
    let compiled = neuronc::driver::compile(&graph, &opts)
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
        let artifact = compile_in_memory(&args.model, &args.compile)?;
        return Ok(Model::from_artifact(artifact)?);
    }
    let c = &args.compile;
    if let Some(flag) = c.given().first() {
        return Err(UsageError(format!(
            "{flag} applies only when compiling a model.json; {} is already compiled",
            args.model.display()
        ))
        .into());
    }
    let model = Model::load(&args.model)?;
    if let Some(t) = &c.target {
        let wanted = cli_common::resolve_target(t)?;
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
    let mut specs = Vec::new();
    for spec in &args.inputs {
        let (name, file) = cli_common::split_input(spec, "--input")?;
        specs.push((name, PathBuf::from(file)));
    }
    refuse_duplicates(specs.iter().map(|(n, _)| *n), "--input")?;
    let mut read = if is_model_json(&args.model) {
        neuronc::frontend::model_files(&args.model)
    } else {
        vec![args.model.clone()]
    };
    read.extend(specs.iter().map(|(_, f)| f.clone()));
    read.extend(args.compile.files());
    // Nothing lost: no profile file may replace a file this run reads (output files are
    // checked below, once their names are known).
    if let Some(dir) = &args.profile {
        let profile: Vec<PathBuf> = ["flame.folded", "flame.svg", "trace.json", "summary.json"]
            .iter()
            .map(|f| dir.join(f))
            .collect();
        refuse_clobber(&profile, &read)?;
    }
    let model = load(args)?;
    let seed = args.seed.unwrap_or(model.artifact().meta.seed);
    if let Some(dir) = &args.output_dir {
        let names: Vec<String> = model.outputs().into_iter().map(|d| d.name).collect();
        let files: Vec<PathBuf> = neuron_isa::host::output_file_names(&names)
            .into_iter()
            .map(|f| dir.join(f))
            .collect();
        refuse_clobber(&files, &read)?;
    }
    let mut inputs = model.bind();
    for (name, file) in &specs {
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
        print_out(&format!("{}\n", report.to_json()?))
    } else {
        print_out(&report.to_string())
    }
}

fn main() -> ExitCode {
    // clap exits 0 for --help/--version and 2 for usage errors.
    let cli = Cli::parse();
    if let Err(e) = cli.log.init() {
        return ExitCode::from(report_failure(&e, false));
    }
    let result = match &cli.command {
        Command::Run(args) => run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => ExitCode::from(report_failure(&e, false)),
    }
}
