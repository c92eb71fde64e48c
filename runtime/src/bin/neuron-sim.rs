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

#[path = "../../../compiler/src/cli_common.rs"]
mod cli_common;
#[path = "../cli/train.rs"]
mod train;
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
    /// Compare two profiles (directories or summary.json files): headline figures and
    /// per-kernel time deltas, largest first.
    ///
    /// Example: neuron-sim compare before/ after/summary.json --format csv
    Compare(CompareArgs),
    /// Render a --profile directory as one self-contained HTML page: summary, insights,
    /// flame graph, roofline and engine utilization over time.
    ///
    /// Example: neuron-sim report profile/ -o report.html
    Report(ReportArgs),
    /// Run zoo models (`neuronc zoo list`) on each target, timing only, and print latency,
    /// throughput, MFU, MBU and the bound engine.
    Bench(BenchArgs),
    /// Train a model.json with a `training` section, every step on the simulated chip.
    Train(train::TrainArgs),
}

#[derive(Args, Debug)]
struct ReportArgs {
    /// The profile directory (summary.json, flame.svg, trace.json).
    dir: PathBuf,
    /// The HTML file to write.
    #[arg(short, long, value_name = "FILE", default_value = "report.html")]
    output: PathBuf,
}

fn report(args: &ReportArgs) -> anyhow::Result<()> {
    let page = neuron_runtime::html::report_dir(&args.dir)?;
    std::fs::write(&args.output, page)
        .with_context(|| format!("cannot write {}", args.output.display()))?;
    eprintln!("report written to {}", args.output.display());
    Ok(())
}

#[derive(Args, Debug)]
struct CompareArgs {
    /// Run A: a --profile directory or its summary.json.
    a: PathBuf,
    /// Run B: a --profile directory or its summary.json.
    b: PathBuf,
    /// Output format.
    #[arg(long, value_enum, default_value_t = CompareFormat::Table)]
    format: CompareFormat,
}

#[derive(ValueEnum, Clone, Copy, Debug)]
enum CompareFormat {
    /// An aligned text table.
    Table,
    /// section,name,a,b,delta,delta_percent rows.
    Csv,
    /// The comparison as JSON.
    Json,
}

fn compare(args: &CompareArgs) -> anyhow::Result<()> {
    use neuron_runtime::compare::{Comparison, load_summary};
    let a = load_summary(&args.a)?;
    let b = load_summary(&args.b)?;
    let c = Comparison::new(
        &a,
        &args.a.display().to_string(),
        &b,
        &args.b.display().to_string(),
    );
    match args.format {
        CompareFormat::Table => print!("{}", c.to_table()),
        CompareFormat::Csv => print!("{}", c.to_csv()),
        CompareFormat::Json => println!("{}", serde_json::to_string_pretty(&c)?),
    }
    Ok(())
}

#[derive(Args, Debug)]
struct BenchArgs {
    /// Zoo models, comma-separated.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "bert-large,gpt2,resnet50,t5-base"
    )]
    models: Vec<String>,
    /// Targets (trn1, trn2 or .toml files), comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "trn1,trn2")]
    targets: Vec<String>,
    /// Batch sizes, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1")]
    batch: Vec<usize>,
    /// Sequence length of text models (vision models ignore it) [default: each model's own].
    #[arg(long)]
    seq: Option<usize>,
    /// Layers [default: the full architecture].
    #[arg(long)]
    layers: Option<usize>,
    /// What auto-cast casts matmuls to: bf16, fp16, fp8_e4m3 or int8.
    #[arg(long, default_value = "bf16", value_name = "TYPE")]
    auto_cast_type: String,
    /// Which fp32 ops are cast: matmult (matmul operands only) or all (also the storage
    /// of activations, e.g. a CNN's feature maps).
    #[arg(long, value_enum, default_value_t = cli_common::AutoCastArg::Matmult, value_name = "MODE")]
    auto_cast: cli_common::AutoCastArg,
    /// Do not run CNNs depth-first over groups of images (`--no-micro-batch` of `neuronc
    /// compile`).
    #[arg(long)]
    no_micro_batch: bool,
    /// Output format.
    #[arg(long, value_enum, default_value_t = BenchFormat::Table)]
    format: BenchFormat,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum BenchFormat {
    /// Aligned columns.
    Table,
    /// Comma-separated values with a header line.
    Csv,
    /// One JSON array.
    Json,
}

#[derive(Args, Debug)]
struct RunArgs {
    /// A compiled ARTIFACT.neff, or a MODEL.json or MODEL.onnx to compile in memory first.
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
    /// Override a chip field as the same line of a --target TOML file would, for the
    /// compile and the run (repeatable): --set hbm_bandwidth_bytes_per_ns=820.
    #[arg(long = "set", value_name = "FIELD=VALUE", value_parser = parse_set)]
    sets: Vec<(String, String)>,
    /// How to print the summary: text, json (as --json) or csv (a header and one row).
    #[arg(long, value_enum, value_name = "FORMAT")]
    format: Option<FormatArg>,
    /// With --format csv: append the row to FILE, writing the header only when FILE is
    /// new or empty, so a shell loop over --set values builds one table.
    #[arg(long, value_name = "FILE")]
    append: Option<PathBuf>,
    #[command(flatten)]
    compile: CompileFlags,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum FormatArg {
    /// One screen of text.
    Text,
    /// The summary as JSON.
    Json,
    /// Comma-separated values: a header line and one row.
    Csv,
}

fn parse_set(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() && !v.trim().is_empty() => {
            Ok((k.trim().to_string(), v.trim().to_string()))
        }
        _ => Err(format!(
            "expected FIELD=VALUE (a chip config field, e.g. hbm_bandwidth_bytes_per_ns=820), found '{s}'"
        )),
    }
}

/// `cfg` with the `--set` overrides applied (a bad override is a usage error).
fn apply_sets(cfg: &ChipConfig, sets: &[(String, String)]) -> anyhow::Result<ChipConfig> {
    if sets.is_empty() {
        return Ok(cfg.clone());
    }
    cfg.with_overrides(sets)
        .map_err(|e| UsageError(e.to_string()).into())
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

fn is_model_json(path: &Path) -> bool {
    path.extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("json"))
        || neuronc::frontend::onnx::is_onnx_path(path)
}

/// Compiles a model.json into an artifact, in memory.
/// Without `weights` (a timing-only run) no weight is drawn or encoded.
fn compile_in_memory(
    path: &Path,
    flags: &CompileFlags,
    sets: &[(String, String)],
    weights: bool,
) -> anyhow::Result<Artifact> {
    let onnx_opts = neuronc::frontend::onnx::options_from_input_shapes(&flags.input_shapes)
        .map_err(UsageError)?;
    let graph = neuronc::frontend::load_graph(path, &onnx_opts)
        .with_context(|| format!("invalid model {}", path.display()))?;
    let mut opts = flags.options(&graph)?;
    opts.target = apply_sets(&opts.target, sets)?;
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
        let artifact =
            compile_in_memory(&args.model, &args.compile, &args.sets, !args.timing_only)?;
        return Ok(if args.timing_only {
            Model::from_program(artifact)?
        } else {
            Model::from_artifact(artifact)?
        });
    }
    let c = &args.compile;
    if let Some(flag) = c.given().first() {
        return Err(UsageError(format!(
            "{flag} applies only when compiling a model.json; {} is already compiled",
            args.model.display()
        ))
        .into());
    }
    let mut model = if args.timing_only {
        Model::load_without_weights(&args.model)?
    } else {
        Model::load(&args.model)?
    };
    if !args.sets.is_empty() {
        // The program stays as compiled; the run uses the overridden chip (re-verified:
        // a smaller SBUF may no longer hold it).
        let mut artifact = model.artifact().clone();
        artifact.meta.target = apply_sets(&artifact.meta.target, &args.sets)?;
        model = if args.timing_only {
            Model::from_program(artifact)
        } else {
            Model::from_artifact(artifact)
        }
        .with_context(|| format!("{} with --set", args.model.display()))?;
    }
    if let Some(t) = &c.target {
        let wanted = cli_common::resolve_target(t)?;
        let wanted = apply_sets(&wanted, &args.sets)?;
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
    if args.append.is_some() && args.format != Some(FormatArg::Csv) {
        return Err(UsageError("--append needs --format csv".into()).into());
    }
    refuse_duplicates(args.inputs.iter().map(|(n, _)| n.as_str()), "--input")?;
    let mut read = if is_model_json(&args.model) {
        neuronc::frontend::model_files(&args.model)
    } else {
        vec![args.model.clone()]
    };
    read.extend(args.inputs.iter().map(|(_, f)| f.clone()));
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
    for (name, file) in &args.inputs {
        // Name the input as `neuronc run` does ("input 'x': x.npy: ..."), once.
        inputs.set_input_npy(name, file).map_err(|e| {
            let tag = format!("input '{name}'");
            if e.to_string().contains(&tag) {
                anyhow::Error::new(e)
            } else {
                anyhow::Error::new(e).context(tag)
            }
        })?;
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
    let format = match (args.format, args.json) {
        (Some(f), _) => f,
        (None, true) => FormatArg::Json,
        (None, false) => FormatArg::Text,
    };
    let settings: Vec<String> = args.sets.iter().map(|(k, v)| format!("{k}={v}")).collect();
    match (format, &args.append) {
        (FormatArg::Csv, Some(file)) => {
            let mut f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(file)
                .with_context(|| format!("cannot open {} to append", file.display()))?;
            let empty = f
                .metadata()
                .with_context(|| format!("cannot read {}", file.display()))?
                .len()
                == 0;
            let mut text = String::new();
            if empty {
                text.push_str(Report::csv_header());
                text.push('\n');
            }
            text.push_str(&report.csv_row(&args.model.display().to_string(), &settings.join(" ")));
            text.push('\n');
            use std::io::Write;
            f.write_all(text.as_bytes())
                .with_context(|| format!("cannot write {}", file.display()))?;
            eprintln!("row appended to {}", file.display());
        }
        (FormatArg::Csv, None) => {
            println!("{}", Report::csv_header());
            println!(
                "{}",
                report.csv_row(&args.model.display().to_string(), &settings.join(" "))
            );
        }
        (FormatArg::Json, _) => print_out(&format!("{}\n", report.to_json()?))?,
        (FormatArg::Text, _) => print_out(&report.to_string())?,
    }
    Ok(())
}

/// One row of `neuron-sim bench`.
#[derive(serde::Serialize)]
struct BenchRow {
    model: String,
    target: String,
    batch: usize,
    seq: usize,
    latency_us: f64,
    throughput_per_s: f64,
    mfu_percent: f64,
    mbu_percent: f64,
    bound: String,
    gflops: f64,
    error: Option<String>,
}

/// The engine kind busiest over the run: the one the latency is bound by.
fn bound_engine(s: &Summary) -> String {
    let e = &s.engine_active_percent;
    [
        ("tensor", e.tensor),
        ("vector", e.vector),
        ("scalar", e.scalar),
        ("gpsimd", e.gpsimd),
        ("dma", e.dma),
    ]
    .into_iter()
    .fold(("-", -1.0), |a, b| if b.1 > a.1 { b } else { a })
    .0
    .to_string()
}

/// Builds, compiles and runs one zoo model on one target, timing only.
fn bench_one(
    name: &str,
    target: &ChipConfig,
    batch: usize,
    args: &BenchArgs,
    cast: neuronc::options::CastType,
) -> anyhow::Result<(usize, Summary)> {
    let e = neuronc::zoo::entry(name).map_err(|e| UsageError(e.to_string()))?;
    let opts = neuronc::zoo::ZooOptions {
        batch: Some(batch),
        seq: args.seq.filter(|_| e.takes_seq()),
        layers: args.layers,
        ..Default::default()
    };
    let m = e.build(&opts).map_err(|e| UsageError(e.to_string()))?;
    let graph = neuronc::frontend::parse_model(&m.to_json_string(), Path::new("."))
        .with_context(|| format!("zoo model {name}"))?;
    let copts = neuronc::options::CompileOptions {
        target: target.clone(),
        auto_cast: args.auto_cast.into(),
        auto_cast_type: cast,
        micro_batch: !args.no_micro_batch,
        ..Default::default()
    };
    let compiled = neuronc::driver::compile(&graph, &copts)
        .with_context(|| format!("cannot compile {name} for {}", target.name))?;
    let model = Model::from_artifact(compiled.artifact)?;
    let mut inputs = model.bind();
    let seed = model.artifact().meta.seed;
    inputs.generate_missing(seed)?;
    let ropts = RunOptions {
        timing_only: true,
        rounding: Rounding::Rne,
        seed,
        check_races: false,
    };
    let exec = model.execute(&inputs, &ropts)?;
    Ok((m.sizes.seq, Summary::new(&model, &exec.stats)?))
}

fn bench(args: &BenchArgs) -> anyhow::Result<()> {
    let cast = neuronc::options::CastType::parse(&args.auto_cast_type).ok_or_else(|| {
        UsageError(format!(
            "--auto-cast-type: expected bf16, fp16, fp8_e4m3 or int8, found '{}'",
            args.auto_cast_type
        ))
    })?;
    // Check every name, target and size before the first (slow) run.
    let mut targets = Vec::new();
    for t in &args.targets {
        targets.push(ChipConfig::from_target(t).with_context(|| format!("--targets {t}"))?);
    }
    for m in &args.models {
        let e = neuronc::zoo::entry(m).map_err(|e| UsageError(format!("--models: {e}")))?;
        for &b in &args.batch {
            let o = neuronc::zoo::ZooOptions {
                batch: Some(b),
                seq: args.seq.filter(|_| e.takes_seq()),
                layers: args.layers,
                ..Default::default()
            };
            e.resolve(&o).map_err(|e| UsageError(e.to_string()))?;
        }
    }
    let jobs: Vec<(&String, &ChipConfig, usize)> = args
        .models
        .iter()
        .flat_map(|m| {
            targets
                .iter()
                .flat_map(move |t| args.batch.iter().map(move |&b| (m, t, b)))
        })
        .collect();
    let bar = std::io::stderr().is_terminal().then(|| {
        let bar = ProgressBar::new(jobs.len() as u64);
        if let Ok(style) =
            ProgressStyle::with_template("{spinner} bench [{bar:30}] {pos}/{len} {msg}")
        {
            bar.set_style(style.progress_chars("=> "));
        }
        bar
    });
    let mut rows = Vec::new();
    for (m, t, b) in jobs {
        if let Some(bar) = &bar {
            bar.set_message(format!("{m} on {} batch {b}", t.name));
        }
        let row = match bench_one(m, t, b, args, cast) {
            Ok((seq, s)) => BenchRow {
                model: m.clone(),
                target: t.name.clone(),
                batch: b,
                seq,
                latency_us: s.latency_ns / 1e3,
                throughput_per_s: s.throughput_per_s,
                mfu_percent: s.mfu_percent,
                mbu_percent: s.mbu_percent,
                bound: bound_engine(&s),
                gflops: s.flops as f64 / 1e9,
                error: None,
            },
            Err(e) => BenchRow {
                model: m.clone(),
                target: t.name.clone(),
                batch: b,
                seq: 0,
                latency_us: 0.0,
                throughput_per_s: 0.0,
                mfu_percent: 0.0,
                mbu_percent: 0.0,
                bound: "-".into(),
                gflops: 0.0,
                error: Some(format!("{e:#}")),
            },
        };
        rows.push(row);
        if let Some(bar) = &bar {
            bar.inc(1);
        }
    }
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    match args.format {
        BenchFormat::Json => println!("{}", serde_json::to_string_pretty(&rows)?),
        BenchFormat::Csv => {
            println!(
                "model,target,batch,seq,latency_us,throughput_per_s,mfu_percent,mbu_percent,bound,gflops,error"
            );
            for r in &rows {
                println!(
                    "{},{},{},{},{:.3},{:.2},{:.2},{:.2},{},{:.3},{}",
                    r.model,
                    r.target,
                    r.batch,
                    r.seq,
                    r.latency_us,
                    r.throughput_per_s,
                    r.mfu_percent,
                    r.mbu_percent,
                    r.bound,
                    r.gflops,
                    r.error.as_deref().unwrap_or("").replace([',', '\n'], ";")
                );
            }
        }
        BenchFormat::Table => {
            println!(
                "{:<12} {:<6} {:>5} {:>5} {:>12} {:>12} {:>7} {:>7}  {:<7}",
                "model", "target", "batch", "seq", "latency us", "inf/s", "MFU %", "MBU %", "bound"
            );
            for r in &rows {
                match &r.error {
                    None => println!(
                        "{:<12} {:<6} {:>5} {:>5} {:>12.1} {:>12.1} {:>7.1} {:>7.1}  {:<7}",
                        r.model,
                        r.target,
                        r.batch,
                        // Vision models and the mlp have no sequence length.
                        if r.seq == 0 {
                            "-".to_string()
                        } else {
                            r.seq.to_string()
                        },
                        r.latency_us,
                        r.throughput_per_s,
                        r.mfu_percent,
                        r.mbu_percent,
                        r.bound
                    ),
                    Some(e) => println!(
                        "{:<12} {:<6} {:>5}  failed: {e}",
                        r.model, r.target, r.batch
                    ),
                }
            }
        }
    }
    let failed = rows.iter().filter(|r| r.error.is_some()).count();
    if failed > 0 {
        bail!("{failed} of {} runs failed (see the table)", rows.len());
    }
    Ok(())
}

fn main() -> ExitCode {
    // clap exits 0 for --help/--version and 2 for usage errors.
    let cli = Cli::parse();
    if let Err(e) = cli.log.init() {
        return ExitCode::from(report_failure(&e, false));
    }
    let result = match &cli.command {
        Command::Run(args) => run(args),
        Command::Compare(args) => compare(args),
        Command::Report(args) => report(args),
        Command::Bench(args) => bench(args),
        Command::Train(args) => train::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => ExitCode::from(report_failure(&e, false)),
    }
}
