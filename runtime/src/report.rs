//! The run summary `neuron-sim run` prints: one screen of text, or the same as JSON.

use crate::error::RuntimeError;
use crate::profile::summary::Summary;
use serde::Serialize;
use std::fmt;

/// How many kernels the text report lists.
pub const TOP_KERNELS: usize = 10;

/// How many insights the text report lists.
pub const TOP_INSIGHTS: usize = 6;

/// What one run reports: the profile [`Summary`] plus how the run was made.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    /// The figures (also written as `summary.json`).
    #[serde(flatten)]
    pub summary: Summary,
    /// Whether numerics were skipped.
    pub timing_only: bool,
    /// Inputs drawn from the seeded generator because none was given.
    pub generated_inputs: Vec<String>,
}

impl Report {
    /// The report as pretty-printed JSON.
    pub fn to_json(&self) -> Result<String, RuntimeError> {
        serde_json::to_string_pretty(self).map_err(|e| RuntimeError::Profile(format!("json: {e}")))
    }
}

/// Quotes a CSV field when it holds a comma, a quote or a line break (RFC 4180).
pub fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

impl Report {
    /// The header of [`Report::csv_row`].
    pub fn csv_header() -> &'static str {
        "file,model,target,settings,latency_ns,cycles,throughput_per_s,flops,mfu_percent,\
         hbm_read_bytes,hbm_write_bytes,mbu_percent,tensor_active_percent,\
         vector_active_percent,scalar_active_percent,gpsimd_active_percent,\
         dma_active_percent,spill_bytes,instructions,insights"
    }

    /// One CSV row of the headline figures: `file` is the model as named on the command
    /// line, `settings` the chip overrides of the run (`k=v k=v`).
    pub fn csv_row(&self, file: &str, settings: &str) -> String {
        let s = &self.summary;
        let e = &s.engine_active_percent;
        let fields = [
            csv_field(file),
            csv_field(&s.model),
            csv_field(&s.target),
            csv_field(settings),
            format!("{:.3}", s.latency_ns),
            s.cycles.to_string(),
            format!("{:.3}", s.throughput_per_s),
            s.flops.to_string(),
            format!("{:.3}", s.mfu_percent),
            s.hbm_read_bytes.to_string(),
            s.hbm_write_bytes.to_string(),
            format!("{:.3}", s.mbu_percent),
            format!("{:.3}", e.tensor),
            format!("{:.3}", e.vector),
            format!("{:.3}", e.scalar),
            format!("{:.3}", e.gpsimd),
            format!("{:.3}", e.dma),
            s.spill_bytes.to_string(),
            s.instructions.to_string(),
            s.insights.len().to_string(),
        ];
        fields.join(",")
    }
}

/// `v` with an SI prefix and two decimals (`1.23 MB`); below 1000 as a
/// whole number (`0 B`).
fn si(v: f64, unit: &str) -> String {
    if v < 1e3 {
        return format!("{v:.0} {unit}");
    }
    let (scaled, prefix) = if v >= 1e12 {
        (v / 1e12, "T")
    } else if v >= 1e9 {
        (v / 1e9, "G")
    } else if v >= 1e6 {
        (v / 1e6, "M")
    } else {
        (v / 1e3, "k")
    };
    format!("{scaled:.2} {prefix}{unit}")
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = &self.summary;
        writeln!(
            f,
            "model {} on {} (batch {})",
            s.model, s.target, s.batch_size
        )?;
        if self.timing_only {
            writeln!(f, "  timing only: numerics skipped, no outputs computed")?;
        }
        writeln!(
            f,
            "  latency      {:.3} us ({} cycles at {} GHz)",
            s.latency_ns / 1000.0,
            s.cycles,
            s.base_clock_ghz
        )?;
        writeln!(f, "  throughput   {:.1} inferences/s", s.throughput_per_s)?;
        writeln!(
            f,
            "  flops        {} model, {} executed on TensorE",
            si(s.flops as f64, "FLOP"),
            si(s.hardware_flops as f64, "FLOP")
        )?;
        writeln!(
            f,
            "  mfu          {:.2} % of {} peak ({})",
            s.mfu_percent,
            s.peak_dtype,
            si(s.peak_flops_per_s, "FLOP/s")
        )?;
        writeln!(
            f,
            "  hbm          {} read, {} written",
            si(s.hbm_read_bytes as f64, "B"),
            si(s.hbm_write_bytes as f64, "B")
        )?;
        writeln!(
            f,
            "  mbu          {:.2} % of {:.0} GB/s",
            s.mbu_percent, s.hbm_bandwidth_bytes_per_ns
        )?;
        writeln!(
            f,
            "  dma engines  {:.2} % busy at full rate",
            s.dma_engine_utilization_percent
        )?;
        let e = &s.engine_active_percent;
        writeln!(
            f,
            "  active       tensor {:.1} %, vector {:.1} %, scalar {:.1} %, gpsimd {:.1} %, dma {:.1} %",
            e.tensor, e.vector, e.scalar, e.gpsimd, e.dma
        )?;
        writeln!(
            f,
            "  spill        {} ({} saved, {} reloaded)",
            si(s.spill_bytes as f64, "B"),
            si(s.spill_save_bytes as f64, "B"),
            si(s.spill_reload_bytes as f64, "B")
        )?;
        if !s.kernels.is_empty() {
            writeln!(
                f,
                "  top kernels by time (ridge point {:.0} FLOP/B):",
                s.ridge_point_flops_per_byte
            )?;
            writeln!(
                f,
                "    {:>10} {:>6} {:>10} {:>12} {:>12} {:>9}  {:<13}  {:<11}  kernel",
                "time us", "%", "predicted", "flops", "hbm bytes", "FLOP/B", "bound", "limited by"
            )?;
            for k in s.kernels.iter().take(TOP_KERNELS) {
                let share = if s.latency_ns > 0.0 {
                    100.0 * k.time_ns / s.latency_ns
                } else {
                    0.0
                };
                let ai = k
                    .arithmetic_intensity
                    .map_or_else(|| "-".to_string(), |a| format!("{a:.1}"));
                let predicted = k
                    .predicted_ns
                    .map_or_else(|| "-".to_string(), |p| format!("{:.3}", p / 1000.0));
                writeln!(
                    f,
                    "    {:>10.3} {:>6.1} {:>10} {:>12} {:>12} {:>9}  {:<13}  {:<11}  {}",
                    k.time_ns / 1000.0,
                    share,
                    predicted,
                    k.flops,
                    k.bytes,
                    ai,
                    k.bound.to_string(),
                    k.limited_by,
                    k.name
                )?;
            }
            if s.kernels.len() > TOP_KERNELS {
                writeln!(f, "    ... {} more kernels", s.kernels.len() - TOP_KERNELS)?;
            }
        }
        let w = &s.warnings;
        if w.poisoned_reads + w.races + w.other == 0 {
            writeln!(f, "  warnings     none")?;
        } else {
            writeln!(
                f,
                "  warnings     {} poisoned reads, {} races, {} other",
                w.poisoned_reads, w.races, w.other
            )?;
            for m in w.messages.iter().take(5) {
                writeln!(f, "    {m}")?;
            }
        }
        if s.insights.is_empty() {
            writeln!(f, "  insights     none")?;
        } else {
            writeln!(f, "  insights     (largest estimated saving first)")?;
            for (i, ins) in s.insights.iter().take(TOP_INSIGHTS).enumerate() {
                writeln!(f, "    {}. {ins}", i + 1)?;
            }
            if s.insights.len() > TOP_INSIGHTS {
                writeln!(
                    f,
                    "    ... {} more in summary.json (--profile DIR) or --json",
                    s.insights.len() - TOP_INSIGHTS
                )?;
            }
        }
        Ok(())
    }
}
