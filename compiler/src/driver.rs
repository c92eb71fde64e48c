//! The compiler driver: the whole pipeline in one function, [`compile`].
//!
//! `graph -> middle end -> tiling -> allocation -> lowering/scheduling -> artifact`, with the
//! text form of every stage handed to a dump callback (files `DIR/NN-stage.txt` under
//! `--dump DIR`), the ISA verifier run on every program (release builds too), the program's HBM footprint
//! checked against the target, and a
//! one-screen [`CompileSummary`].

use crate::backend::{self, tiling};
use crate::error::CompileError;
use crate::ir::Graph;
use crate::options::CompileOptions;
use crate::passes;
use neuron_isa::{Artifact, Engine, Program, TensorKind};
use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// A compiled model.
#[derive(Debug, Clone)]
pub struct Compiled {
    /// The artifact (write it with [`Artifact::write`]).
    pub artifact: Artifact,
    /// What the compilation produced, for people.
    pub summary: CompileSummary,
}

/// The one-screen summary of a compilation (its `Display` is what `neuronc compile`
/// prints).
#[derive(Debug, Clone, PartialEq)]
pub struct CompileSummary {
    /// Model name.
    pub model: String,
    /// Target name.
    pub target: String,
    /// Options as recorded in the artifact.
    pub options: BTreeMap<String, String>,
    /// Kernels per kind.
    pub kernels: BTreeMap<String, usize>,
    /// Instructions per stream, in stream order (`tensor`, `vector`, .., `dma0`, ..).
    pub instructions: Vec<(String, usize)>,
    /// Peak SBUF use, bytes per partition.
    pub sbuf_peak: u64,
    /// SBUF size, bytes per partition.
    pub sbuf_capacity: u64,
    /// Peak PSUM use, bytes per partition.
    pub psum_peak: u64,
    /// PSUM size, bytes per partition.
    pub psum_capacity: u64,
    /// HBM bytes the program's DMAs read plus write.
    pub hbm_bytes: u64,
    /// Of those, bytes re-read because operands do not fit on chip at once (spill).
    pub spill_bytes: u64,
    /// Bytes of weights in the artifact.
    pub weight_bytes: u64,
    /// Model FLOPs of one execution.
    pub model_flops: u64,
    /// Semaphores used.
    pub semaphores: u32,
    /// Wall-clock compile time.
    pub compile_time: Duration,
    /// Decisions a caller adds, one line each (e.g. a training step's keep-or-recompute
    /// plan for its activations, `neuronc::train::compile_step`).
    pub notes: Vec<String>,
}

impl CompileSummary {
    /// Total instructions.
    pub fn total_instructions(&self) -> usize {
        self.instructions.iter().map(|(_, n)| n).sum()
    }

    /// Total kernels.
    pub fn total_kernels(&self) -> usize {
        self.kernels.values().sum()
    }
}

fn human(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

impl fmt::Display for CompileSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let opts: Vec<String> = self
            .options
            .iter()
            .filter(|(k, _)| k.as_str() != "target")
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        writeln!(
            f,
            "model      {} -> target {} ({})",
            self.model,
            self.target,
            opts.join(", ")
        )?;
        let kinds: Vec<String> = self
            .kernels
            .iter()
            .map(|(k, n)| format!("{k} {n}"))
            .collect();
        writeln!(
            f,
            "kernels    {} ({})",
            self.total_kernels(),
            kinds.join(", ")
        )?;
        let (dma, compute): (Vec<_>, Vec<_>) = self
            .instructions
            .iter()
            .partition(|(e, _)| e.starts_with("dma"));
        let mut line: Vec<String> = compute.iter().map(|(e, n)| format!("{e} {n}")).collect();
        let dma_total: usize = dma.iter().map(|(_, n)| n).sum();
        if !dma.is_empty() {
            line.push(format!("dma {dma_total} over {} queues", dma.len()));
        }
        writeln!(
            f,
            "instrs     {} ({})",
            self.total_instructions(),
            line.join(", ")
        )?;
        writeln!(
            f,
            "sbuf peak  {} of {} per partition ({:.0}%)",
            human(self.sbuf_peak),
            human(self.sbuf_capacity),
            100.0 * self.sbuf_peak as f64 / self.sbuf_capacity.max(1) as f64
        )?;
        writeln!(
            f,
            "psum peak  {} of {} per partition ({:.0}%)",
            human(self.psum_peak),
            human(self.psum_capacity),
            100.0 * self.psum_peak as f64 / self.psum_capacity.max(1) as f64
        )?;
        writeln!(
            f,
            "hbm        {} moved by dma ({} spill/re-stream), {} of weights",
            human(self.hbm_bytes),
            human(self.spill_bytes),
            human(self.weight_bytes)
        )?;
        writeln!(
            f,
            "flops      {:.3} GFLOP per run, {} semaphores",
            self.model_flops as f64 / 1e9,
            self.semaphores
        )?;
        for n in &self.notes {
            writeln!(f, "note       {n}")?;
        }
        write!(
            f,
            "compiled   in {:.1} ms",
            self.compile_time.as_secs_f64() * 1e3
        )
    }
}

/// Writes stage dumps as `DIR/NN-stage.txt`, numbering stages in the order they arrive;
/// the first I/O error is kept and reported after the stage that caused it.
struct Dumper {
    dir: Option<PathBuf>,
    next: usize,
    error: Option<CompileError>,
}

impl Dumper {
    fn new(dir: Option<&Path>) -> Result<Dumper, CompileError> {
        if let Some(d) = dir {
            std::fs::create_dir_all(d).map_err(|e| CompileError::io(d, e))?;
        }
        Ok(Dumper {
            dir: dir.map(Path::to_path_buf),
            next: 0,
            error: None,
        })
    }

    fn dump(&mut self, stage: &str, text: &str) {
        self.dump_with(stage, || text.to_string());
    }

    /// Like [`Dumper::dump`], but builds the text only when dumping is on: text forms of
    /// large programs are never built for nothing.
    fn dump_with(&mut self, stage: &str, text: impl FnOnce() -> String) {
        let Some(dir) = &self.dir else {
            return;
        };
        let text = text();
        // Stages may arrive numbered ("03-fused"); the driver owns the numbering.
        let name = match stage.split_once('-') {
            Some((n, rest)) if n.chars().all(|c| c.is_ascii_digit()) => rest,
            _ => stage,
        };
        let path = dir.join(format!("{:02}-{name}.txt", self.next));
        self.next += 1;
        if let Err(e) = std::fs::write(&path, text) {
            self.error.get_or_insert(CompileError::io(path, e));
        }
    }

    fn check(&mut self) -> Result<(), CompileError> {
        self.error.take().map_or(Ok(()), Err)
    }
}

/// Runs the ISA verifier (the same one the runtime runs on every artifact it loads) on
/// every program the compiler emits, in release builds too: the compiler never writes a
/// program the runtime would refuse.
fn verify(program: &Program, opts: &CompileOptions) -> Result<(), CompileError> {
    neuron_isa::verify_program(program, &opts.target)
        .map_err(|e| CompileError::Verify(format!("program: {e}")))
}

/// Demotes every kernel result stored as i64 to i32, as `neuronx-cc` does by default on
/// trn1 (`--native-int64=disabled`: "int64 ops are downcast to int32", SDK compiler release
/// notes, Neuron 2.32.0). The chip's DMA reads 64-bit integers (an exact, saturating
/// integer cast) but never writes them, so an i64 result, graph outputs included, is
/// stored as i32: exact for values in the i32 range, saturated beyond it. Graph inputs and
/// weights keep i64 in HBM (read-only DMA sources).
fn demote_i64_results(kg: &mut crate::kernel::KernelGraph) {
    for t in &mut kg.tensors {
        if t.dtype == neuron_isa::Dtype::I64
            && !matches!(t.kind, TensorKind::Input | TensorKind::Weight)
        {
            t.dtype = neuron_isa::Dtype::I32;
        }
    }
}

/// Refuses a program whose HBM tensors (inputs, weights, outputs, scratch) do not fit the
/// target's HBM, with the sizes.
fn check_hbm(program: &Program, opts: &CompileOptions) -> Result<(), CompileError> {
    let need: u64 = program
        .tensors
        .iter()
        .fold(0u64, |acc, t| acc.saturating_add(t.bytes()));
    let have = opts.target.hbm_bytes;
    if need > have {
        let biggest = program.tensors.iter().max_by_key(|t| t.bytes());
        return Err(CompileError::Verify(format!(
            "the model needs {need} bytes of HBM ({}), target '{}' has {have} ({}){}",
            human(need),
            opts.target.name,
            human(have),
            biggest.map_or(String::new(), |t| format!(
                "; the largest tensor is '{}' ({})",
                t.name,
                human(t.bytes())
            ))
        )));
    }
    Ok(())
}

/// Compiles `graph` for `opts.target`.
pub fn compile(graph: &Graph, opts: &CompileOptions) -> Result<Compiled, CompileError> {
    compile_with(graph, opts, Weights::InMemory)
}

/// Compiles `graph` for `opts.target` and writes the artifact to `path`, encoding the
/// weights straight into the file ([`backend::emit::write_artifact`]): the file is
/// byte-identical to writing [`compile`]'s artifact, but the weight blob is never held in
/// memory, which saves allocating, zeroing and copying it (about 40% of a BERT-large
/// compile). What `neuronc compile` does. The summary's compile time includes the write.
pub fn compile_to_file(
    graph: &Graph,
    opts: &CompileOptions,
    path: &Path,
) -> Result<CompileSummary, CompileError> {
    compile_with(graph, opts, Weights::File(path)).map(|c| c.summary)
}

/// Compiles `graph` but leaves the artifact's weight blob empty (the weight ranges are
/// laid out as usual): for a timing-only run, which reads no weight byte, so no seeded
/// weight is drawn and none is encoded.
pub fn compile_without_weights(
    graph: &Graph,
    opts: &CompileOptions,
) -> Result<Compiled, CompileError> {
    compile_with(graph, opts, Weights::Omit)
}

/// Where [`compile_with`] puts the weights.
enum Weights<'a> {
    /// In the artifact's blob.
    InMemory,
    /// Nowhere (the blob is left empty).
    Omit,
    /// Encoded into this `.neff` file, which the artifact is written to (its returned
    /// blob is empty).
    File(&'a Path),
}

fn compile_with(
    graph: &Graph,
    opts: &CompileOptions,
    weights: Weights<'_>,
) -> Result<Compiled, CompileError> {
    let _span =
        tracing::info_span!("compile", model = %graph.name, target = %opts.target.name).entered();
    let start = Instant::now();
    let cfg = &opts.target;
    let mut dumper = Dumper::new(opts.dump_dir.as_deref())?;
    // One span per stage: `-v` prints each one's wall time when it closes.
    let stage = |name: &'static str| tracing::info_span!("stage", name).entered();
    let mut kg = {
        let _s = stage("middle_end");
        passes::run_middle_end_with(graph, opts, opts.dump_dir.is_some(), &mut |stage, text| {
            dumper.dump(stage, text)
        })?
    };
    dumper.check()?;
    demote_i64_results(&mut kg);
    let plans = {
        let _s = stage("tiling");
        tiling::plan(&kg, cfg)?
    };
    dumper.dump_with("tiling", || tiling::display(&kg, &plans));
    let alloc = {
        let _s = stage("allocation");
        backend::allocate(&kg, &plans, cfg)?
    };
    let (lowered, alloc) = {
        let _s = stage("lowering");
        backend::lower_program_resident(&kg, &plans, alloc, cfg)?
    };
    dumper.dump_with("allocation", || backend::display_allocation(&kg, &alloc));
    dumper.dump_with("program", || {
        neuron_isa::disasm::disassemble(&lowered.program)
    });
    dumper.check()?;
    check_hbm(&lowered.program, opts)?;
    verify(&lowered.program, opts)?;
    let spill_bytes = plans.iter().map(|p| p.restream_bytes).sum();
    // Bounds come from the graph as given (before canonicalization), exactly as
    // `reference::random_inputs` computes them, so generated inputs agree.
    let bounds = crate::reference::index_bounds(graph);
    let _s = stage("emit");
    let mut artifact = backend::emit::artifact_with(
        &kg,
        lowered.program,
        &lowered.constants,
        opts,
        bounds,
        matches!(weights, Weights::InMemory),
    )?;
    // Program kernel i is kernel graph kernel i, planned by plans[i].
    artifact.meta.kernel_estimates_ns = plans.iter().map(|p| p.tiling.estimate_ns()).collect();
    if let Weights::File(path) = weights {
        backend::emit::write_artifact(&kg, &lowered.constants, &artifact.meta, path)?;
    }
    drop(_s);
    let summary = summarize(&artifact, &alloc, spill_bytes, start.elapsed());
    dumper.dump("summary", &summary.to_string());
    dumper.check()?;
    Ok(Compiled { artifact, summary })
}

fn summarize(
    art: &Artifact,
    alloc: &backend::alloc::Allocation,
    spill_bytes: u64,
    time: Duration,
) -> CompileSummary {
    let p = &art.meta.program;
    let cfg = &art.meta.target;
    let mut kernels = BTreeMap::new();
    for k in &p.kernels {
        *kernels.entry(k.kind.clone()).or_insert(0) += 1;
    }
    let mut streams: Vec<(Engine, usize)> = p
        .streams
        .iter()
        .map(|s| (s.engine, s.instrs.len()))
        .collect();
    streams.sort_by_key(|(e, _)| *e);
    CompileSummary {
        model: art.meta.model_name.clone(),
        target: cfg.name.clone(),
        options: art.meta.options.clone(),
        kernels,
        instructions: streams.into_iter().map(|(e, n)| (e.name(), n)).collect(),
        sbuf_peak: alloc.peak_sbuf,
        sbuf_capacity: cfg.sbuf_bytes_per_partition,
        psum_peak: alloc.peak_psum,
        psum_capacity: cfg.psum_bytes_per_partition,
        hbm_bytes: p.kernels.iter().map(|k| k.hbm_bytes).sum(),
        spill_bytes,
        weight_bytes: p
            .tensors
            .iter()
            .filter(|t| t.kind == TensorKind::Weight)
            .map(|t| t.bytes())
            .sum(),
        model_flops: art.meta.model_flops,
        semaphores: p.semaphores,
        compile_time: time,
        notes: Vec::new(),
    }
}
