//! The `neuronc` command line. One function per subcommand; each returns a
//! [`CliError`] carrying its exit code (0 ok, 1 invalid model or failed run,
//! 2 usage error; clap's own usage errors also exit 2).

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, anyhow};
use clap::{Args, Parser, Subcommand};
use neuronc::frontend::load_model;
use neuronc::ir::{DType, Graph, Tensor, fmt_shape};
use neuronc::npy::{read_npy, sanitize_file_name, write_npy};
use neuronc::reference::{RefOptions, random_input, run_reference};

/// Compiler for model.json tensor graphs.
#[derive(Parser, Debug)]
#[command(name = "neuronc", version, about)]
struct Cli {
    /// More log output on stderr (-v info, -vv debug, -vvv trace); RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Validate a model and print every value's inferred shape and dtype.
    ///
    /// Exit status: 0 if the model is valid, 1 if it is invalid, 2 for usage errors.
    Check(CheckArgs),
    /// Evaluate a model and write its outputs as .npy files.
    ///
    /// Exit status: 0 on success, 1 if the model or an input is invalid, 2 for usage errors.
    Run(RunArgs),
    /// Compile a model to a .neff artifact and print a one-screen summary.
    ///
    /// Exit status: 0 on success, 1 if the model cannot be compiled, 2 for usage errors.
    Compile(CompileArgs),
    /// Print a .neff artifact: header, tensors, kernels and every instruction stream.
    ///
    /// Exit status: 0 on success, 1 if the file is not a valid artifact, 2 for usage errors.
    Disasm(DisasmArgs),
}

#[derive(Args, Debug)]
struct CheckArgs {
    /// The model.json file.
    model: PathBuf,
    /// Also print the graph dump (one line per node).
    #[arg(long)]
    dump: bool,
}

#[derive(Args, Debug)]
struct RunArgs {
    /// Evaluate with the reference executor (plain ndarray; the numerical oracle).
    #[arg(long)]
    reference: bool,
    /// The model.json file.
    model: PathBuf,
    /// An input as NAME=FILE.npy (repeatable). Inputs not given are drawn
    /// from the model's seeded generator.
    #[arg(long = "input", value_name = "NAME=FILE.npy")]
    inputs: Vec<String>,
    /// Directory for `<output name>.npy` files (created if missing).
    #[arg(long, value_name = "DIR", default_value = ".")]
    output_dir: PathBuf,
    /// Compute in f64 and write f64 outputs.
    #[arg(long)]
    f64: bool,
}

#[derive(Args, Debug)]
struct CompileArgs {
    /// The model.json file.
    model: PathBuf,
    /// Output artifact (default: the model file's stem with `.neff`, in the current
    /// directory).
    #[arg(short, long, value_name = "OUT.neff")]
    output: Option<PathBuf>,
    /// Target chip: `trn1`, `trn2`, or a TOML file overriding a preset.
    #[arg(long, default_value = "trn1", value_name = "trn1|trn2|FILE.toml")]
    target: String,
    /// Which fp32 ops are cast to the auto-cast type.
    #[arg(long, default_value = "matmult", value_parser = ["none", "matmult", "all"])]
    auto_cast: String,
    /// The reduced type of auto-cast.
    #[arg(long, default_value = "bf16", value_parser = ["bf16", "fp16", "fp8_e4m3", "int8"])]
    auto_cast_type: String,
    /// One kernel per op (no fusion).
    #[arg(long)]
    no_fuse: bool,
    /// Write the text form of every compiler stage into DIR (`NN-stage.txt`).
    #[arg(long, value_name = "DIR")]
    dump: Option<PathBuf>,
    /// int8 calibration data for an input, as NAME=FILE.npy (repeatable); seeded random
    /// inputs are used for inputs not given.
    #[arg(long = "calibrate", value_name = "NAME=FILE.npy")]
    calibrate: Vec<String>,
}

#[derive(Args, Debug)]
struct DisasmArgs {
    /// The .neff file.
    artifact: PathBuf,
}

/// A failure with its exit code.
struct CliError {
    code: u8,
    error: anyhow::Error,
}

impl CliError {
    /// The model or its data is invalid, or the run failed: exit 1.
    fn invalid(error: impl Into<anyhow::Error>) -> CliError {
        CliError {
            code: 1,
            error: error.into(),
        }
    }

    /// The command line is wrong: exit 2.
    fn usage(error: impl Into<anyhow::Error>) -> CliError {
        CliError {
            code: 2,
            error: error.into(),
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing(cli.verbose);
    let result = match &cli.command {
        Command::Check(args) => cmd_check(args),
        Command::Run(args) => cmd_run(args),
        Command::Compile(args) => cmd_compile(args),
        Command::Disasm(args) => cmd_disasm(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {:#}", e.error);
            ExitCode::from(e.code)
        }
    }
}

fn init_tracing(verbose: u8) {
    let level = match verbose {
        0 => "warn",
        1 => "info",
        2 => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    // With -v, every span's close event prints its wall time (compile stages, weight
    // encoding, writing).
    let _ = tracing_subscriber::fmt()
        .with_span_events(tracing_subscriber::fmt::format::FmtSpan::CLOSE)
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

fn load(path: &Path) -> Result<Graph, CliError> {
    load_model(path).map_err(|e| {
        CliError::invalid(anyhow!(e).context(format!("invalid model {}", path.display())))
    })
}

/// `neuronc check MODEL.json [--dump]`.
fn cmd_check(args: &CheckArgs) -> Result<(), CliError> {
    let g = load(&args.model)?;
    let width = g.values.iter().map(|v| v.name.len()).max().unwrap_or(0);
    for id in g.value_ids() {
        let v = g.value(id);
        let origin = match v.producer {
            Some(n) => format!("{n} {} ({})", g.node(n).name, g.node(n).op.name()),
            None if g.is_param(id) => "param".to_string(),
            None => "input".to_string(),
        };
        let out = if g.is_output(id) { "  [output]" } else { "" };
        println!(
            "{:<5} {:<width$} : {:<16} {:<5} {origin}{out}",
            id.to_string(),
            v.name,
            fmt_shape(&v.shape),
            v.dtype.name()
        );
    }
    if args.dump {
        print!("{g}");
    }
    println!(
        "ok: model '{}' is valid: {} nodes, {} inputs, {} params, {} outputs",
        g.name,
        g.nodes.len(),
        g.inputs.len(),
        g.params.len(),
        g.outputs.len()
    );
    Ok(())
}

/// Converts a user-supplied tensor to the declared dtype when only the width
/// differs (f64 npy for an f32 input, i64 for i32); refuses other mismatches.
fn conform_input(name: &str, t: Tensor, shape: &[usize], dtype: DType) -> Result<Tensor, CliError> {
    let declared = format!("{} {dtype}", fmt_shape(shape));
    let found = format!("{} {}", fmt_shape(t.shape()), t.elem_name());
    if t.shape() != shape {
        return Err(CliError::invalid(anyhow!(
            "input '{name}': expected {declared}, found {found}"
        )));
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
        (false, d) => d.is_int() && t.dtype().is_int(),
    };
    if !ok {
        return Err(CliError::invalid(anyhow!(
            "input '{name}': expected {declared}, found {found}"
        )));
    }
    if t.dtype() == dtype && !matches!(t, Tensor::F64(_)) {
        return Ok(t);
    }
    let cast = t.cast(dtype);
    if dtype.is_int() && cast.to_i64() != t.to_i64() {
        return Err(CliError::invalid(anyhow!(
            "input '{name}': values of {found} do not fit the declared {declared}"
        )));
    }
    Ok(cast)
}

/// `neuronc run --reference MODEL.json [--input NAME=FILE.npy]... [--output-dir DIR] [--f64]`.
fn cmd_run(args: &RunArgs) -> Result<(), CliError> {
    if !args.reference {
        return Err(CliError::usage(anyhow!(
            "only the reference executor is available: pass --reference"
        )));
    }
    let g = load(&args.model)?;
    let mut inputs = BTreeMap::new();
    for spec in &args.inputs {
        let Some((name, file)) = spec.split_once('=') else {
            return Err(CliError::usage(anyhow!(
                "--input '{spec}': expected NAME=FILE.npy"
            )));
        };
        let Some(id) = g.inputs.iter().copied().find(|&i| g.value(i).name == name) else {
            let known: Vec<&str> = g.inputs.iter().map(|&i| g.value(i).name.as_str()).collect();
            return Err(CliError::usage(anyhow!(
                "--input '{spec}': the model has no input '{name}' (its inputs are: {})",
                known.join(", ")
            )));
        };
        if inputs.contains_key(name) {
            return Err(CliError::usage(anyhow!("--input '{name}' is given twice")));
        }
        let t = read_npy(Path::new(file))
            .map_err(|e| CliError::invalid(anyhow!(e).context(format!("input '{name}'"))))?;
        let v = g.value(id);
        inputs.insert(name.to_string(), conform_input(name, t, &v.shape, v.dtype)?);
    }
    for &id in &g.inputs {
        let v = g.value(id);
        if !inputs.contains_key(&v.name) {
            eprintln!(
                "note: input '{}' {} {} not given: generated from seed {} (see docs/model-format.md)",
                v.name,
                fmt_shape(&v.shape),
                v.dtype,
                g.seed
            );
            inputs.insert(v.name.clone(), random_input(&g, id));
        }
    }
    let outputs =
        run_reference(&g, &inputs, RefOptions { f64: args.f64 }).map_err(CliError::invalid)?;
    std::fs::create_dir_all(&args.output_dir)
        .with_context(|| {
            format!(
                "cannot create output directory {}",
                args.output_dir.display()
            )
        })
        .map_err(CliError::invalid)?;
    let mut used = HashSet::new();
    for &id in &g.outputs {
        let name = &g.value(id).name;
        let t = &outputs[name];
        let mut file = sanitize_file_name(name);
        let mut k = 2;
        while !used.insert(file.clone()) {
            file = format!("{}_{k}", sanitize_file_name(name));
            k += 1;
        }
        let path = args.output_dir.join(format!("{file}.npy"));
        write_npy(&path, t).map_err(CliError::invalid)?;
        println!(
            "wrote {} : {} {} (max |x| = {:.6e})",
            path.display(),
            fmt_shape(t.shape()),
            t.elem_name(),
            t.max_abs()
        );
    }
    Ok(())
}

/// `neuronc compile MODEL.json [-o OUT.neff] [--target ..] [--auto-cast ..]
/// [--auto-cast-type ..] [--no-fuse] [--dump DIR] [--calibrate NAME=FILE.npy]...`.
fn cmd_compile(args: &CompileArgs) -> Result<(), CliError> {
    use neuronc::options::{AutoCast, CastType, CompileOptions};
    let g = load(&args.model)?;
    let target = neuron_isa::ChipConfig::from_target(&args.target).map_err(CliError::usage)?;
    let auto_cast = AutoCast::parse(&args.auto_cast).ok_or_else(|| {
        CliError::usage(anyhow!(
            "--auto-cast '{}': expected none, matmult or all",
            args.auto_cast
        ))
    })?;
    let auto_cast_type = CastType::parse(&args.auto_cast_type).ok_or_else(|| {
        CliError::usage(anyhow!(
            "--auto-cast-type '{}': expected bf16, fp16, fp8_e4m3 or int8",
            args.auto_cast_type
        ))
    })?;
    let mut calibration = BTreeMap::new();
    for spec in &args.calibrate {
        let Some((name, file)) = spec.split_once('=') else {
            return Err(CliError::usage(anyhow!(
                "--calibrate '{spec}': expected NAME=FILE.npy"
            )));
        };
        let Some(id) = g.inputs.iter().copied().find(|&i| g.value(i).name == name) else {
            return Err(CliError::usage(anyhow!(
                "--calibrate '{spec}': the model has no input '{name}'"
            )));
        };
        let t = read_npy(Path::new(file)).map_err(|e| {
            CliError::invalid(anyhow!(e).context(format!("calibration input '{name}'")))
        })?;
        let v = g.value(id);
        calibration.insert(name.to_string(), conform_input(name, t, &v.shape, v.dtype)?);
    }
    let opts = CompileOptions {
        target,
        auto_cast,
        auto_cast_type,
        fuse: !args.no_fuse,
        dump_dir: args.dump.clone(),
        calibration,
    };
    let spinner = progress_spinner(&format!("compiling {}", args.model.display()));
    let compiled = neuronc::driver::compile(&g, &opts);
    if let Some(s) = spinner {
        s.finish_and_clear();
    }
    let compiled = compiled.map_err(|e| {
        CliError::invalid(anyhow!(e).context(format!("cannot compile {}", args.model.display())))
    })?;
    let out = args.output.clone().unwrap_or_else(|| {
        let stem = args
            .model
            .file_stem()
            .map_or_else(|| "model".into(), |s| s.to_string_lossy().into_owned());
        PathBuf::from(format!("{stem}.neff"))
    });
    {
        let _s = tracing::info_span!("write", path = %out.display()).entered();
        compiled.artifact.write(&out).map_err(CliError::invalid)?;
    }
    println!("{}", compiled.summary);
    let size = std::fs::metadata(&out).map(|m| m.len()).unwrap_or(0);
    println!("wrote {} ({size} bytes)", out.display());
    Ok(())
}

/// A spinner with the elapsed time on stderr while long work runs, only when stderr is a
/// terminal (never in pipes, logs or tests).
fn progress_spinner(message: &str) -> Option<indicatif::ProgressBar> {
    use std::io::IsTerminal;
    if !std::io::stderr().is_terminal() {
        return None;
    }
    let bar = indicatif::ProgressBar::new_spinner();
    if let Ok(style) = indicatif::ProgressStyle::with_template("{spinner} {msg} ({elapsed})") {
        bar.set_style(style);
    }
    bar.set_message(message.to_string());
    bar.enable_steady_tick(std::time::Duration::from_millis(100));
    Some(bar)
}

/// `neuronc disasm FILE.neff`: header fields, weights and the program's text form.
fn cmd_disasm(args: &DisasmArgs) -> Result<(), CliError> {
    use neuron_isa::artifact::HEADER_SIZE;
    let bytes = std::fs::read(&args.artifact)
        .with_context(|| format!("cannot read {}", args.artifact.display()))
        .map_err(CliError::invalid)?;
    let art = neuron_isa::Artifact::from_bytes(&bytes).map_err(|e| {
        CliError::invalid(
            anyhow!(e).context(format!("invalid artifact {}", args.artifact.display())),
        )
    })?;
    let word = |at: usize| {
        bytes
            .get(at..at + 4)
            .map_or(0, |b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    };
    let version = word(8);
    let crc = if version == 1 {
        format!("crc32 {:#010x}", word(32))
    } else {
        format!(
            "crc32 metadata {:#010x}, weights {:#010x}",
            word(32),
            word(36)
        )
    };
    let m = &art.meta;
    println!(
        "; neff format v{version}: {} bytes (header {HEADER_SIZE}, metadata {}, weights {}), {crc}",
        bytes.len(),
        bytes.len() - HEADER_SIZE - art.blob.len(),
        art.blob.len()
    );
    let opts: Vec<String> = m.options.iter().map(|(k, v)| format!("{k}={v}")).collect();
    println!(
        "; model '{}', target {}, options [{}], batch {}, {} model flops, seed {}",
        m.model_name,
        m.target.name,
        opts.join(", "),
        m.batch_size,
        m.model_flops,
        m.seed
    );
    for w in &m.weights {
        let name = m
            .program
            .tensors
            .get(w.tensor.0 as usize)
            .map_or("?", |t| t.name.as_str());
        println!(
            "; weight {} '{name}' at blob offset {} ({} bytes)",
            w.tensor, w.offset, w.len
        );
    }
    for (k, v) in &m.index_bounds {
        println!("; input '{k}' indexes rows below {v}");
    }
    // Write the (possibly long) listing in one go; a closed pipe (`| head`) is not an error.
    let listing = neuron_isa::disasm::disassemble(&m.program);
    match std::io::Write::write_all(&mut std::io::stdout().lock(), listing.as_bytes()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(CliError::invalid(e)),
        _ => Ok(()),
    }
}
