//! The `neuronc` command line. One function per subcommand; each returns a
//! [`CliError`] carrying its exit code (0 ok, 1 invalid model or failed run,
//! 2 usage error; clap's own usage errors also exit 2).

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, anyhow};
use clap::{Args, Parser, Subcommand};
use neuronc::frontend::onnx::options_from_input_shapes;
use neuronc::frontend::{load_graph, write_model_json};
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
    /// Standard architectures generated as model.json with seeded weights (no download).
    ///
    /// Exit status: 0 on success, 1 if the model cannot be generated or written, 2 for
    /// usage errors (unknown model, size out of range).
    #[command(subcommand)]
    Zoo(ZooCommand),
    /// Import a model (e.g. an .onnx file) and write it as model.json plus a .safetensors
    /// weights file beside it.
    ///
    /// Exit status: 0 on success, 1 if the model is invalid or cannot be written, 2 for
    /// usage errors.
    Convert(ConvertArgs),
}

#[derive(Subcommand, Debug)]
enum ZooCommand {
    /// List the zoo's models with their parameter counts and FLOPs per inference.
    List,
    /// Write one zoo model as model.json.
    Get(ZooGetArgs),
}

#[derive(Args, Debug)]
struct ZooGetArgs {
    /// The model (see `neuronc zoo list`).
    name: String,
    /// Batch size.
    #[arg(long)]
    batch: Option<usize>,
    /// Sequence length (text models).
    #[arg(long)]
    seq: Option<usize>,
    /// Image size HxW (vision models), e.g. 224x224.
    #[arg(long, value_name = "HxW")]
    image: Option<String>,
    /// Layers (blocks per stage for resnet50), at most the architecture's own count.
    #[arg(long)]
    layers: Option<usize>,
    /// Vocabulary size (default: the published one).
    #[arg(long)]
    vocab: Option<usize>,
    /// Output model.json.
    #[arg(short, long, value_name = "MODEL.json")]
    output: PathBuf,
}

/// Shape bindings for ONNX models with symbolic dimensions.
#[derive(Args, Debug, Default)]
struct ShapeArgs {
    /// Shape of an ONNX graph input, binding its symbolic dimensions, as NAME=1x128
    /// (repeatable; .onnx models only).
    #[arg(long = "input-shape", value_name = "NAME=DxD...")]
    input_shapes: Vec<String>,
}

#[derive(Args, Debug)]
struct ConvertArgs {
    /// The model (.onnx).
    model: PathBuf,
    /// The model.json to write; the weights go to the same stem with `.safetensors`.
    #[arg(short, long, value_name = "OUT.json")]
    output: PathBuf,
    #[command(flatten)]
    shapes: ShapeArgs,
}

#[derive(Args, Debug)]
struct CheckArgs {
    /// The model.json (or .onnx) file.
    model: PathBuf,
    #[command(flatten)]
    shapes: ShapeArgs,
    /// Also print the graph dump (one line per node).
    #[arg(long)]
    dump: bool,
}

#[derive(Args, Debug)]
struct RunArgs {
    /// Evaluate with the reference executor (plain ndarray; the numerical oracle).
    #[arg(long)]
    reference: bool,
    /// The model.json (or .onnx) file.
    model: PathBuf,
    #[command(flatten)]
    shapes: ShapeArgs,
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
    /// The model.json (or .onnx) file.
    model: PathBuf,
    #[command(flatten)]
    shapes: ShapeArgs,
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
    /// Compile one training step (forward, loss, backward, optimizer update) from the
    /// model's `training` section instead of inference; its precision policy sets the
    /// auto-cast (see docs/training.md).
    #[arg(long)]
    train: bool,
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
        Command::Zoo(ZooCommand::List) => cmd_zoo_list(),
        Command::Zoo(ZooCommand::Get(args)) => cmd_zoo_get(args),
        Command::Convert(args) => cmd_convert(args),
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

fn load(path: &Path, shapes: &ShapeArgs) -> Result<Graph, CliError> {
    let opts =
        options_from_input_shapes(&shapes.input_shapes).map_err(|e| CliError::usage(anyhow!(e)))?;
    load_graph(path, &opts).map_err(|e| {
        CliError::invalid(anyhow!(e).context(format!("invalid model {}", path.display())))
    })
}

/// `neuronc convert MODEL.onnx -o OUT.json [--input-shape NAME=DxD]...`.
fn cmd_convert(args: &ConvertArgs) -> Result<(), CliError> {
    let g = load(&args.model, &args.shapes)?;
    write_model_json(&g, &args.output).map_err(CliError::invalid)?;
    println!(
        "wrote {} ({} nodes, {} inputs, {} params, {} outputs)",
        args.output.display(),
        g.nodes.len(),
        g.inputs.len(),
        g.params.len(),
        g.outputs.len()
    );
    Ok(())
}

/// `neuronc check MODEL.json [--dump]`.
fn cmd_check(args: &CheckArgs) -> Result<(), CliError> {
    let g = load(&args.model, &args.shapes)?;
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
    let g = load(&args.model, &args.shapes)?;
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
    let mut policy = None;
    let g = if args.train {
        let (_, step) = neuronc::train::load_training(&args.model).map_err(CliError::invalid)?;
        eprintln!(
            "note: compiling the training step of {} ({} trainable values, {}, {} precision; \
             {} bytes of forward activations kept for the backward pass, none recomputed)",
            args.model.display(),
            step.trainable_elements,
            step.spec.optimizer.name(),
            step.spec.precision.name(),
            step.saved_activation_bytes
        );
        policy = Some(step.spec.precision);
        step.graph
    } else {
        load(&args.model, &args.shapes)?
    };
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
    let (auto_cast, auto_cast_type) = match policy {
        None => (auto_cast, auto_cast_type),
        Some(neuronc::train::PrecisionPolicy::Fp32) => (AutoCast::None, auto_cast_type),
        Some(neuronc::train::PrecisionPolicy::Fp16LossScaling) => {
            (AutoCast::Matmult, CastType::Fp16)
        }
        Some(_) => (AutoCast::Matmult, CastType::Bf16),
    };
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

/// Parses `HxW` (or a single side `N` for a square image).
fn parse_image(s: &str) -> Result<(usize, usize), CliError> {
    let bad = || CliError::usage(anyhow!("--image '{s}': expected HxW, e.g. 224x224"));
    let (h, w) = s.split_once(['x', 'X']).unwrap_or((s, s));
    let h = h.trim().parse().map_err(|_| bad())?;
    let w = w.trim().parse().map_err(|_| bad())?;
    Ok((h, w))
}

/// Zoo errors: an unknown name or a size out of range is a usage error (2).
fn zoo_error(e: neuronc::zoo::ZooError) -> CliError {
    use neuronc::zoo::ZooError;
    match e {
        ZooError::Unknown { .. } | ZooError::Option { .. } | ZooError::Size { .. } => {
            CliError::usage(e)
        }
        ZooError::Internal(_) => CliError::invalid(e),
    }
}

/// `neuronc zoo list`: every model at its default sizes.
fn cmd_zoo_list() -> Result<(), CliError> {
    println!(
        "{:<12} {:>10} {:>10} {:>10}  description",
        "name", "params", "GMACs", "GFLOPs"
    );
    for e in neuronc::zoo::entries() {
        let m = e
            .build(&neuronc::zoo::ZooOptions::default())
            .map_err(zoo_error)?;
        println!(
            "{:<12} {:>9.1}M {:>10.2} {:>10.2}  {}",
            e.name,
            m.params as f64 / 1e6,
            m.macs as f64 / 1e9,
            m.flops() as f64 / 1e9,
            e.summary
        );
    }
    println!("(batch 1 at the default sequence length or 224x224; FLOPs = 2 x matmul/conv MACs)");
    Ok(())
}

/// `neuronc zoo get NAME [--batch B] [--seq S] [--image HxW] [--layers L] -o model.json`.
fn cmd_zoo_get(args: &ZooGetArgs) -> Result<(), CliError> {
    let image = args.image.as_deref().map(parse_image).transpose()?;
    let opts = neuronc::zoo::ZooOptions {
        batch: args.batch,
        seq: args.seq,
        image,
        layers: args.layers,
        vocab: args.vocab,
    };
    let m = neuronc::zoo::build(&args.name, &opts).map_err(zoo_error)?;
    std::fs::write(&args.output, m.to_json_string())
        .with_context(|| format!("cannot write {}", args.output.display()))
        .map_err(CliError::invalid)?;
    println!(
        "wrote {}: {} ({:.1}M params, {:.2} GFLOPs per inference)",
        args.output.display(),
        m.name,
        m.params as f64 / 1e6,
        m.flops() as f64 / 1e9
    );
    Ok(())
}
