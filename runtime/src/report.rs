//! The run summary `neuron-sim run` prints: one screen of text, or the same as JSON.

use crate::error::RuntimeError;
use crate::profile::summary::Summary;
use serde::Serialize;
use std::fmt;

/// How many kernels the text report lists.
pub const TOP_KERNELS: usize = 10;

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
                "    {:>10} {:>6} {:>12} {:>12} {:>9}  {:<13}  {:<11}  kernel",
                "time us", "%", "flops", "hbm bytes", "FLOP/B", "bound", "limited by"
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
                writeln!(
                    f,
                    "    {:>10.3} {:>6.1} {:>12} {:>12} {:>9}  {:<13}  {:<11}  {}",
                    k.time_ns / 1000.0,
                    share,
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
        Ok(())
    }
}
