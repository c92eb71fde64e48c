//! Regenerates `docs/fidelity.md`: published trn1/trn2 figures against the simulator's,
//! with the stock `trn1` and `trn2` presets (the same for every row; nothing is fitted).
//!
//! ```text
//! cargo run --release -p neuron-benches --bin fidelity > docs/fidelity.md
//! cargo run --release -p neuron-benches --bin fidelity -- --quick   # skip batch 16
//! ```
//!
//! Each row compiles a model with `neuronc` (default options, matmuls auto-cast to bf16)
//! and times it with `neuron-sim --timing-only`, or times a hand-built DMA program. The
//! BERT-base model.json is generated here (12 layers of `examples/bert_layer.json`'s
//! structure: hidden 768, 12 heads, ffn 3072, seq 128); a `neuronc zoo` generator will
//! replace `neuron_benches::bert_base_json`.

use neuron_benches::{QualityCase, bert_base_json, gemm_json, quality_cases, simulated_quality};
use neuron_isa::{
    Ap, ChipConfig, Dtype, Engine, HbmTensor, Instruction, Memory, Op, Program, Stream, TensorId,
    TensorKind,
};
use neuron_sim::{RunStats, SimOptions, Simulator};
use neuronc::driver::compile;
use neuronc::options::{AutoCast, CompileOptions};
use std::path::Path;
use std::process::ExitCode;
use std::time::Instant;

/// One comparison.
struct Row {
    what: String,
    target: &'static str,
    published: f64,
    simulated: f64,
    unit: &'static str,
    source: &'static str,
    note: String,
}

impl Row {
    /// simulated / published for times; published / simulated is the same check for rates.
    fn ratio(&self) -> f64 {
        self.simulated / self.published
    }
}

fn timing_only(program: &Program, cfg: &ChipConfig) -> Result<RunStats, String> {
    let opts = SimOptions {
        timing_only: true,
        ..SimOptions::default()
    };
    let t0 = Instant::now();
    let mut sim = Simulator::new(program, cfg, opts).map_err(|e| e.to_string())?;
    let t1 = Instant::now();
    let stats = sim.run().map_err(|e| e.to_string())?;
    eprintln!(
        "  simulator: load {:.3} s, run {:.3} s",
        (t1 - t0).as_secs_f64(),
        t1.elapsed().as_secs_f64()
    );
    Ok(stats)
}

/// Compiles model.json text for `cfg` and times it; returns the stats and a note with
/// the utilizations.
fn compile_and_time(
    name: &str,
    json: &str,
    cfg: &ChipConfig,
) -> Result<(RunStats, String), String> {
    let t0 = Instant::now();
    let graph =
        neuronc::frontend::parse_model(json, Path::new(".")).map_err(|e| format!("{name}: {e}"))?;
    let opts = CompileOptions {
        target: cfg.clone(),
        auto_cast: AutoCast::Matmult,
        ..CompileOptions::default()
    };
    let compiled = compile(&graph, &opts).map_err(|e| format!("{name}: {e}"))?;
    let program = &compiled.artifact.meta.program;
    let t1 = Instant::now();
    let stats = timing_only(program, cfg).map_err(|e| format!("{name}: {e}"))?;
    let t2 = Instant::now();
    let tensor_busy: u64 = stats
        .engines
        .iter()
        .filter(|e| e.engine == Engine::Tensor)
        .map(|e| e.busy_ps)
        .sum();
    let lat = stats.total_ps.max(1) as f64;
    let note = format!(
        "{} instr; TensorE busy {:.0}%, HBM {:.0}%, DMA engines {:.0}%",
        program.instruction_count(),
        100.0 * tensor_busy as f64 / lat,
        100.0 * stats.hbm_utilization(cfg),
        100.0 * stats.dma_engine_utilization(cfg),
    );
    eprintln!(
        "{name} on {}: compile {:.1} s, simulate {:.2} s ({:.0} k instr/s): {:.3} ms simulated; {note}",
        cfg.name,
        (t1 - t0).as_secs_f64(),
        (t2 - t1).as_secs_f64(),
        program.instruction_count() as f64 / (t2 - t1).as_secs_f64().max(1e-9) / 1e3,
        stats.total_ps as f64 * 1e-9,
    );
    eprintln!("  {}", descriptor_histogram(program, cfg));
    Ok((stats, note))
}

/// Where the DMA-engine time goes, by descriptor size (contiguous bytes per partition):
/// `size: share of bytes / share of engine time`, to stderr.
fn descriptor_histogram(program: &Program, cfg: &ChipConfig) -> String {
    let model = neuron_sim::dma::DmaModel::new(cfg);
    let mut buckets: std::collections::BTreeMap<u64, (u64, u64, u64)> = Default::default();
    let (mut bytes, mut eps) = (0u64, 0u64);
    for s in &program.streams {
        for i in &s.instrs {
            if let Some(plan) = neuron_sim::dma::DmaPlan::of(&i.op) {
                let b = plan.descriptor_bytes.next_power_of_two();
                let e = buckets.entry(b).or_default();
                let ps = model.engine_ps(&plan);
                e.0 += plan.bytes;
                e.1 += ps;
                e.2 += 1;
                bytes += plan.bytes;
                eps += ps;
            }
        }
    }
    let parts: Vec<String> = buckets
        .iter()
        .map(|(b, (by, ps, n))| {
            format!(
                "<={b} B: {n} DMAs, {:.0}% of bytes, {:.0}% of engine time",
                100.0 * *by as f64 / bytes.max(1) as f64,
                100.0 * *ps as f64 / eps.max(1) as f64
            )
        })
        .collect();
    format!("DMA descriptors: {}", parts.join("; "))
}

/// trn2's published DMA example: one engine (8 partitions) moves 32 KiB HBM -> SBUF.
/// Returns the data-phase time (duration minus the fixed latency), ns.
fn one_engine_32kib(cfg: &ChipConfig) -> Result<f64, String> {
    let op = Op::Dma {
        dst: Ap::on_chip(Memory::Sbuf, Dtype::U8, 0, 8, 0, 4096),
        src: Ap::hbm_rows(TensorId(0), Dtype::U8, 0, 8, 4096, 4096),
    };
    let program = Program {
        streams: vec![Stream {
            engine: Engine::Dma(0),
            instrs: vec![Instruction::new(op)],
        }],
        semaphores: 0,
        tensors: vec![HbmTensor {
            name: "x".into(),
            kind: TensorKind::Input,
            shape: vec![32_768],
            dtype: Dtype::U8,
        }],
        kernels: Vec::new(),
    };
    let stats = timing_only(&program, cfg)?;
    Ok(stats.total_ps as f64 / 1000.0 - cfg.dma_fixed_latency_ns)
}

fn run(quick: bool) -> Result<Vec<Row>, String> {
    let trn1 = ChipConfig::trn1();
    let trn2 = ChipConfig::trn2();
    let mut rows = Vec::new();

    rows.push(Row {
        what: "One DMA engine, 32 KiB HBM→SBUF (8 partitions × 4 KiB), data time".into(),
        target: "trn2",
        published: 1416.0,
        simulated: one_engine_32kib(&trn2)?,
        unit: "ns",
        source: "SDK `nki/get-started/about/nki-dma-overview.rst` (trainium.md §3)",
        note: "fixed 1.3 µs latency excluded on both sides".into(),
    });

    let (stats, note) = compile_and_time(
        "gemm 4096x8192x8192",
        &gemm_json(4096, 8192, 8192, "bf16"),
        &trn1,
    )?;
    rows.push(Row {
        what: "NKI matmul tutorial, 4096×8192 @ 8192×8192 bf16, latency".into(),
        target: "trn1",
        published: 6.97,
        simulated: stats.total_ps as f64 * 1e-9,
        unit: "ms",
        source: "SDK `nki/tutorials/matrix_multiplication.rst` (trainium.md §7)",
        note,
    });

    let (stats, note) = compile_and_time("bert-base b1", &bert_base_json(1, 12), &trn1)?;
    rows.push(Row {
        what: "BERT-base seq 128 batch 1, latency (one core)".into(),
        target: "trn1",
        published: 0.943,
        simulated: stats.total_ps as f64 * 1e-9,
        unit: "ms",
        source: "Neuron SDK inference performance page, trn1 BERT-base (trainium.md §7)",
        note,
    });

    if !quick {
        let (stats, note) = compile_and_time("bert-base b16", &bert_base_json(16, 12), &trn1)?;
        // Published per chip: 2 NeuronCores, each running batch 16 (data parallel).
        let per_chip = 2.0 * 16.0 / (stats.total_ps as f64 * 1e-12);
        rows.push(Row {
            what: "BERT-base seq 128 batch 16, throughput per chip (2 cores data-parallel)".into(),
            target: "trn1",
            published: 3422.0,
            simulated: per_chip,
            unit: "inf/s",
            source: "Neuron SDK inference performance page, trn1 BERT-base (trainium.md §7)",
            note: format!(
                "{:.3} ms per batch per core; {note}",
                stats.total_ps as f64 * 1e-9
            ),
        });
    }
    Ok(rows)
}

/// One compiled-code quality row: the case and its simulated figures on trn1.
struct QualityRow {
    what: &'static str,
    target_percent: f64,
    latency_ms: f64,
    mfu_percent: f64,
    instructions: usize,
}

/// The compiled-code quality cases (`neuron_benches::quality_cases`) on trn1; `quick`
/// skips BERT-base batch 16 and the fp32 GEMM.
fn quality(quick: bool) -> Result<Vec<QualityRow>, String> {
    let trn1 = ChipConfig::trn1();
    let mut out = Vec::new();
    for QualityCase {
        name,
        what,
        json,
        target_percent,
    } in quality_cases()
    {
        if quick && (name.starts_with("bert") || name.contains("f32")) {
            continue;
        }
        let t0 = Instant::now();
        let q = simulated_quality(&json, &trn1).map_err(|e| format!("{name}: {e}"))?;
        eprintln!(
            "{name}: {:.3} ms simulated, MFU {:.1}% ({:.1} s wall)",
            q.latency_ms,
            q.mfu_percent,
            t0.elapsed().as_secs_f64()
        );
        out.push(QualityRow {
            what,
            target_percent,
            latency_ms: q.latency_ms,
            mfu_percent: q.mfu_percent,
            instructions: q.instructions,
        });
    }
    Ok(out)
}

fn quality_markdown(rows: &[QualityRow]) -> String {
    let peak = ChipConfig::trn1().peak_flops(Dtype::Bf16) * 1e-12;
    let mut out = format!(
        "\n## Compiled-code quality (trn1)\n\n\
         MFU = model FLOPs / (TensorE bf16 peak {peak:.2} TFLOP/s × simulated latency), one\n\
         NeuronCore, default compile options (fp32 matmul inputs auto-cast to bf16). The\n\
         same cases are the criterion benchmarks `cargo bench -p neuron-benches --bench\n\
         quality`, which print these MFUs before timing the compile and simulation.\n\n\
         | case | target MFU | simulated latency | simulated MFU | meets target | instructions |\n\
         |---|---|---|---|---|---|\n",
    );
    for r in rows {
        out.push_str(&format!(
            "| {} | >= {:.0}% | {:.3} ms | {:.1}% | {} | {} |\n",
            r.what,
            r.target_percent,
            r.latency_ms,
            r.mfu_percent,
            if r.mfu_percent >= r.target_percent {
                "yes"
            } else {
                "**no**"
            },
            r.instructions
        ));
    }
    out
}

fn markdown(rows: &[Row]) -> String {
    let mut out = String::new();
    out.push_str(
        "# Fidelity: published figures against the simulator\n\n\
         Generated by `cargo run --release -p neuron-benches --bin fidelity > docs/fidelity.md`\n\
         (`benches/src/bin/fidelity.rs`); do not edit by hand. Every row uses the stock\n\
         `trn1` or `trn2` preset (`isa/src/config.rs`, sources in `chip-config.md`);\n\
         nothing is fitted per row. Models are compiled by `neuronc` with default options\n\
         (matmuls auto-cast to bf16) and timed with `--timing-only`. A row passes when the\n\
         simulated figure is within 25% of the published one.\n\n",
    );
    out.push_str("| figure | target | published | simulated | sim / published | within 25% | source | notes |\n");
    out.push_str("|---|---|---|---|---|---|---|---|\n");
    for r in rows {
        let ratio = r.ratio();
        let ok = (0.75..=1.25).contains(&ratio);
        out.push_str(&format!(
            "| {} | {} | {} {} | {} {} | {:.2} | {} | {} | {} |\n",
            r.what,
            r.target,
            fmt(r.published),
            r.unit,
            fmt(r.simulated),
            r.unit,
            ratio,
            if ok { "yes" } else { "**no**" },
            r.source,
            r.note
        ));
    }
    out.push_str(
        "\nThe BERT-base model is the 12-layer encoder (hidden 768, 12 heads, ffn 3072,\n\
         seq 128) without the embedding lookup and pooler, generated by\n\
         `bert_base_json` in the harness. Published throughput is per trn1 chip, 2\n\
         NeuronCores each running batch 16; the simulator runs one core.\n\n\
         The DMA parameters are chosen from the documentation, not from these rows\n\
         (`chip-config.md`, \"DMA engine bandwidth\"); the notes say what bound each\n\
         model. At batch 1 compiled BERT-base is bound by the weight stream (170 MB of\n\
         bf16 through an SBUF ring ahead of the kernels that need them, in 1.5 KiB,\n\
         4.5 KiB and 6 KiB descriptors for the 768-, 2304- and 3072-column W): the\n\
         activations no longer round-trip HBM between kernels (`docs/compiler.md`,\n\
         \"Activations kept in SBUF between kernels\"; they were ~85 MB and 1.254 ms\n\
         before), and weights laid out for longer descriptors would save at most\n\
         ~60 us more. At batch 16 nothing fits the resident region; the matmuls with\n\
         a bias (+ activation) epilogue compute their output transposed so that one\n\
         ScalarE activation per accumulator evicts it (8.089 ms before), and the\n\
         simulated throughput is now above the published one by 24%, inside the\n\
         bound but at its edge: the real chip runs neuronx-cc's code at about 42% MFU\n\
         (issue 11), ours reaches 52%. The harness prints a descriptor-size\n\
         histogram per model to stderr.\n",
    );
    out
}

fn fmt(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.3}")
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let quick = match args.as_slice() {
        [] => false,
        [a] if a == "--quick" => true,
        _ => {
            eprintln!("usage: fidelity [--quick]");
            return ExitCode::from(2);
        }
    };
    match run(quick).and_then(|rows| Ok((rows, quality(quick)?))) {
        Ok((rows, q)) => {
            print!("{}{}", markdown(&rows), quality_markdown(&q));
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(1)
        }
    }
}
