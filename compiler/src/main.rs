//! The `neuronc` command line. One function per subcommand; failures carry their exit code
//! (0 ok, 1 bad input or a failed run, 2 usage error; clap's own usage errors also exit 2).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, anyhow};
use clap::{Args, Parser, Subcommand};
use neuronc::frontend::onnx::options_from_input_shapes;
use neuronc::frontend::{load_graph, model_files, write_model_json};
use neuronc::ir::{Graph, fmt_shape};
use neuronc::npy::{output_file_names, read_npy, write_npy};
use neuronc::reference::{RefOptions, random_input, run_reference};

mod cli_common;
use cli_common::{
    CompileFlags, EXIT_STATUS, LogArgs, UsageError, conform_input, model_input, print_out,
    refuse_clobber, refuse_duplicates, report_failure, split_input,
};

/// Compiler for model.json tensor graphs.
#[derive(Parser, Debug)]
#[command(
    name = "neuronc",
    version,
    about,
    after_help = concat!(
        "Exit status:\n  0 success, 1 bad input or failed run, 2 usage error\n\n",
        "Example:\n  neuronc compile examples/mlp.json -o mlp.neff --target trn2 -O2"
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
    /// Validate a model and print every value's inferred shape and dtype.
    #[command(after_help = format!("{EXIT_STATUS}\n\nExample:\n  neuronc check examples/mlp.json --dump"))]
    Check(CheckArgs),
    /// Evaluate a model with the reference executor and write its outputs as .npy files.
    #[command(after_help = format!("{EXIT_STATUS}\n\nOutputs are written to DIR/<output name>.npy (the name's characters outside\n[A-Za-z0-9._-] become _, names that collide get -2, -3, ...); an output that would\nreplace the model, its weights or an --input file is refused.\n\nExample:\n  neuronc run --reference examples/mlp.json --input x=x.npy --output-dir ref/"))]
    Run(RunArgs),
    /// Compile a model to a .neff artifact and print a one-screen summary.
    #[command(after_help = format!("{EXIT_STATUS}\n\nExample:\n  neuronc compile examples/bert_layer.json -o bert.neff --target trn2 --auto-cast-type fp16"))]
    Compile(CompileArgs),
    /// Print a .neff artifact: header, tensors, kernels and every instruction stream.
    #[command(after_help = format!("{EXIT_STATUS}\n\nExample:\n  neuronc disasm bert.neff | less"))]
    Disasm(DisasmArgs),
    /// Standard architectures generated as model.json with seeded weights (no download).
    #[command(subcommand)]
    Zoo(ZooCommand),
    /// Import a model (e.g. an .onnx file) and write it as model.json plus a .safetensors
    /// weights file beside it.
    #[command(after_help = format!("{EXIT_STATUS}\n\nExample:\n  neuronc convert bert.onnx --input-shape input_ids=1x128 -o bert.json"))]
    Convert(ConvertArgs),
}

#[derive(Subcommand, Debug)]
enum ZooCommand {
    /// List the zoo's models with their parameter counts and FLOPs per inference.
    #[command(after_help = format!("{EXIT_STATUS}\n\nExample:\n  neuronc zoo list"))]
    List,
    /// Write one zoo model as model.json.
    #[command(after_help = format!("{EXIT_STATUS}\n\nExample:\n  neuronc zoo get bert-large --batch 4 --seq 128 -o bert-large.json"))]
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
    /// The model.json file.
    model: PathBuf,
    /// Also print the graph dump (one line per node).
    #[arg(long)]
    dump: bool,
    #[command(flatten)]
    shapes: ShapeArgs,
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
    #[command(flatten)]
    shapes: ShapeArgs,
}

#[derive(Args, Debug)]
struct CompileArgs {
    /// The model.json file.
    model: PathBuf,
    /// Output artifact (default: the model file's stem with `.neff`, in the current
    /// directory). Never one of the files the compilation reads.
    #[arg(short, long, value_name = "OUT.neff")]
    output: Option<PathBuf>,
    #[command(flatten)]
    compile: CompileFlags,
    /// Compile one training step (forward, loss, backward, optimizer update) from the
    /// model's `training` section instead of inference; its precision policy sets the
    /// auto-cast (see docs/training.md).
    #[arg(long)]
    train: bool,
    /// Write the text form of every compiler stage into DIR (`NN-stage.txt`).
    #[arg(long, value_name = "DIR")]
    dump: Option<PathBuf>,
}

#[derive(Args, Debug)]
struct DisasmArgs {
    /// The .neff file.
    artifact: PathBuf,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Err(e) = cli.log.init() {
        return ExitCode::from(report_failure(&e, false));
    }
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
        Err(e) => ExitCode::from(report_failure(&e, false)),
    }
}

fn load(path: &Path, shapes: &ShapeArgs) -> anyhow::Result<Graph> {
    let opts = options_from_input_shapes(&shapes.input_shapes).map_err(UsageError)?;
    load_graph(path, &opts)
        .map_err(|e| anyhow!(e).context(format!("invalid model {}", path.display())))
}

/// `neuronc check MODEL.json [--dump]`.
fn cmd_check(args: &CheckArgs) -> anyhow::Result<()> {
    let g = load(&args.model, &args.shapes)?;
    let width = g.values.iter().map(|v| v.name.len()).max().unwrap_or(0);
    // Written in blocks, so a closed pipe (`| head -1`) ends the command quietly.
    let mut out = String::new();
    for id in g.value_ids() {
        let v = g.value(id);
        let origin = match v.producer {
            Some(n) => format!("{n} {} ({})", g.node(n).name, g.node(n).op.name()),
            None if g.is_param(id) => "param".to_string(),
            None => "input".to_string(),
        };
        let tag = if g.is_output(id) { "  [output]" } else { "" };
        writeln!(
            out,
            "{:<5} {:<width$} : {:<16} {:<5} {origin}{tag}",
            id.to_string(),
            v.name,
            fmt_shape(&v.shape),
            v.dtype.name()
        )?;
        if out.len() > 1 << 16 {
            print_out(&out)?;
            out.clear();
        }
    }
    if args.dump {
        write!(out, "{g}")?;
    }
    writeln!(
        out,
        "ok: model '{}' is valid: {} nodes, {} inputs, {} params, {} outputs",
        g.name,
        g.nodes.len(),
        g.inputs.len(),
        g.params.len(),
        g.outputs.len()
    )?;
    print_out(&out)
}

/// `neuronc run --reference MODEL.json [--input NAME=FILE.npy]... [--output-dir DIR] [--f64]`.
fn cmd_run(args: &RunArgs) -> anyhow::Result<()> {
    if !args.reference {
        return Err(anyhow!(UsageError(
            "neuronc run evaluates with the reference executor only: pass --reference (to run on the simulated chip, use neuron-sim run)".into()
        )));
    }
    let g = load(&args.model, &args.shapes)?;
    let mut specs = Vec::new();
    for spec in &args.inputs {
        let (name, file) = split_input(spec, "--input")?;
        model_input(&g, name, "--input")?;
        specs.push((name, file));
    }
    refuse_duplicates(specs.iter().map(|(n, _)| *n), "--input")?;
    // Nothing lost: decide every output file first and refuse any that is an input.
    let mut out_names: Vec<&str> = Vec::new();
    for &id in &g.outputs {
        let name = g.value(id).name.as_str();
        if !out_names.contains(&name) {
            out_names.push(name);
        }
    }
    let files: Vec<PathBuf> = output_file_names(&out_names)
        .into_iter()
        .map(|f| args.output_dir.join(f))
        .collect();
    let mut read = model_files(&args.model);
    read.extend(specs.iter().map(|(_, f)| PathBuf::from(f)));
    refuse_clobber(&files, &read)?;
    let mut inputs = BTreeMap::new();
    for (name, file) in specs {
        let t =
            read_npy(Path::new(file)).map_err(|e| anyhow!(e).context(format!("input '{name}'")))?;
        let (shape, dtype) = model_input(&g, name, "--input")?;
        let t = conform_input(name, t, &shape, dtype).with_context(|| file.to_string())?;
        inputs.insert(name.to_string(), t);
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
    let outputs = run_reference(&g, &inputs, RefOptions { f64: args.f64 })?;
    std::fs::create_dir_all(&args.output_dir).with_context(|| {
        format!(
            "cannot create output directory {}",
            args.output_dir.display()
        )
    })?;
    let mut report = String::new();
    for (name, path) in out_names.iter().zip(&files) {
        let t = outputs
            .get(*name)
            .ok_or_else(|| anyhow!("the reference executor returned no output '{name}'"))?;
        write_npy(path, t)?;
        writeln!(
            report,
            "wrote {} : {} {} (max |x| = {:.6e})",
            path.display(),
            fmt_shape(t.shape()),
            t.elem_name(),
            t.max_abs()
        )?;
    }
    print_out(&report)
}

/// `neuronc compile MODEL.json [-o OUT.neff] [--target ..] [--auto-cast ..]
/// [--auto-cast-type ..] [-O1|-O2|-O3] [--no-fuse] [--dump DIR] [--calibrate NAME=FILE.npy]...`.
fn cmd_compile(args: &CompileArgs) -> anyhow::Result<()> {
    let out = args.output.clone().unwrap_or_else(|| {
        let stem = args
            .model
            .file_stem()
            .map_or_else(|| "model".into(), |s| s.to_string_lossy().into_owned());
        PathBuf::from(format!("{stem}.neff"))
    });
    let mut read = model_files(&args.model);
    read.extend(args.compile.files());
    refuse_clobber(std::slice::from_ref(&out), &read)?;
    let train_step = if args.train {
        let (_, step) = neuronc::train::load_training(&args.model)?;
        eprintln!(
            "note: compiling the training step of {} ({} trainable values, {}, {} precision; \
             {} bytes of forward activations read by the backward pass)",
            args.model.display(),
            step.iface.trainable_elements,
            step.iface.spec.optimizer.name(),
            step.iface.spec.precision.name(),
            step.iface.saved_activation_bytes
        );
        Some(step)
    } else {
        None
    };
    let loaded;
    let g = match &train_step {
        Some(step) => &step.graph,
        None => {
            let shapes = ShapeArgs {
                input_shapes: args.compile.input_shapes.clone(),
            };
            loaded = load(&args.model, &shapes)?;
            &loaded
        }
    };
    let mut opts = args.compile.options(g)?;
    opts.dump_dir = args.dump.clone();
    if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create directory {}", dir.display()))?;
    }
    let spinner = progress_spinner(&format!("compiling {}", args.model.display()));
    // A training step's artifact also carries the loop's interface and initial state, and
    // its precision policy sets the auto-cast (compiled in memory, then written); a model's
    // weights are encoded straight into the output file.
    let cannot = || format!("cannot compile {}", args.model.display());
    let summary = match &train_step {
        Some(step) => neuronc::train::compile_step(step, &opts)
            .map_err(|e| anyhow!(e).context(cannot()))
            .and_then(|c| {
                let _s = tracing::info_span!("write", path = %out.display()).entered();
                c.artifact.write(&out)?;
                Ok(c.summary)
            }),
        None => neuronc::driver::compile_to_file(g, &opts, &out)
            .map_err(|e| anyhow!(e).context(cannot())),
    };
    if let Some(s) = spinner {
        s.finish_and_clear();
    }
    let summary = summary?;
    let size = std::fs::metadata(&out).map(|m| m.len()).unwrap_or(0);
    print_out(&format!(
        "{}\nwrote {} ({size} bytes)\n",
        summary,
        out.display()
    ))
}

/// `neuronc disasm FILE.neff`: header fields, weights and the program's text form.
fn cmd_disasm(args: &DisasmArgs) -> anyhow::Result<()> {
    use neuron_isa::artifact::HEADER_SIZE;
    let bytes = std::fs::read(&args.artifact)
        .with_context(|| format!("cannot read {}", args.artifact.display()))?;
    let art = neuron_isa::Artifact::from_bytes(&bytes)
        .map_err(|e| anyhow!(e).context(format!("invalid artifact {}", args.artifact.display())))?;
    let mut out = String::new();
    let word = |at: usize| {
        bytes
            .get(at..at + 4)
            .map_or(0, |b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    };
    // The file's own format version: v1 has one checksum, v2 and v3 one for metadata and one for
    // weights.
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
    writeln!(
        out,
        "; neff format v{version}: {} bytes (header {HEADER_SIZE}, metadata {}, weights {}), {crc}",
        bytes.len(),
        bytes.len() - HEADER_SIZE - art.blob.len(),
        art.blob.len()
    )?;
    let opts: Vec<String> = m.options.iter().map(|(k, v)| format!("{k}={v}")).collect();
    writeln!(
        out,
        "; model '{}', target {}, options [{}], batch {}, {} model flops, seed {}",
        m.model_name,
        m.target.name,
        opts.join(", "),
        m.batch_size,
        m.model_flops,
        m.seed
    )?;
    for w in &m.weights {
        let name = m
            .program
            .tensors
            .get(w.tensor.0 as usize)
            .map_or("?", |t| t.name.as_str());
        writeln!(
            out,
            "; weight {} '{name}' at blob offset {} ({} bytes)",
            w.tensor, w.offset, w.len
        )?;
    }
    for (k, v) in &m.index_bounds {
        writeln!(out, "; input '{k}' indexes rows below {v}")?;
    }
    print_out(&out)?;
    // The (possibly long) listing in one go; a closed pipe (`| head`) ends quietly.
    print_out(&neuron_isa::disasm::disassemble(&m.program))
}

/// A spinner on stderr while a long step runs, only when stderr is a terminal.
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

/// `neuronc convert MODEL.onnx -o OUT.json [--input-shape NAME=DxD]...`.
fn cmd_convert(args: &ConvertArgs) -> anyhow::Result<()> {
    let mut read = model_files(&args.model);
    read.push(args.model.clone());
    refuse_clobber(std::slice::from_ref(&args.output), &read)?;
    let g = load(&args.model, &args.shapes)?;
    write_model_json(&g, &args.output)?;
    print_out(&format!(
        "wrote {} ({} nodes, {} inputs, {} params, {} outputs)\n",
        args.output.display(),
        g.nodes.len(),
        g.inputs.len(),
        g.params.len(),
        g.outputs.len()
    ))
}

/// A zoo error: unknown names and out-of-range sizes are usage errors (exit 2).
fn zoo_error(e: neuronc::zoo::ZooError) -> anyhow::Error {
    use neuronc::zoo::ZooError;
    match e {
        ZooError::Unknown { .. } | ZooError::Option { .. } | ZooError::Size { .. } => {
            UsageError(e.to_string()).into()
        }
        ZooError::Internal(_) => anyhow!(e),
    }
}

/// `neuronc zoo list`.
fn cmd_zoo_list() -> anyhow::Result<()> {
    let mut out = format!(
        "{:<12} {:>10} {:>10} {:>10}  description\n",
        "name", "params", "GMACs", "GFLOPs"
    );
    for e in neuronc::zoo::entries() {
        let m = e
            .build(&neuronc::zoo::ZooOptions::default())
            .map_err(zoo_error)?;
        let _ = writeln!(
            out,
            "{:<12} {:>9.1}M {:>10.2} {:>10.2}  {}",
            e.name,
            m.params as f64 / 1e6,
            m.macs as f64 / 1e9,
            m.flops() as f64 / 1e9,
            e.summary
        );
    }
    out.push_str(
        "(batch 1 at the default sequence length or 224x224; FLOPs = 2 x matmul/conv MACs)\n",
    );
    print_out(&out)
}

/// `neuronc zoo get NAME [--batch B] [--seq S] [--image HxW] [--layers L] -o MODEL.json`.
fn cmd_zoo_get(args: &ZooGetArgs) -> anyhow::Result<()> {
    let image = match args.image.as_deref() {
        None => None,
        Some(s) => {
            let bad = || UsageError(format!("--image '{s}': expected HxW, e.g. 224x224"));
            let (h, w) = s.split_once(['x', 'X']).unwrap_or((s, s));
            Some((
                h.trim().parse().map_err(|_| bad())?,
                w.trim().parse().map_err(|_| bad())?,
            ))
        }
    };
    let opts = neuronc::zoo::ZooOptions {
        batch: args.batch,
        seq: args.seq,
        image,
        layers: args.layers,
        vocab: args.vocab,
    };
    let m = neuronc::zoo::build(&args.name, &opts).map_err(zoo_error)?;
    std::fs::write(&args.output, m.to_json_string())
        .with_context(|| format!("cannot write {}", args.output.display()))?;
    print_out(&format!(
        "wrote {}: {} ({:.1}M params, {:.2} GFLOPs per inference)\n",
        args.output.display(),
        m.name,
        m.params as f64 / 1e6,
        m.flops() as f64 / 1e9
    ))
}
