//! `flame.svg`: the folded stacks rendered as an interactive flame graph by inferno.
//!
//! Frame widths are simulated nanoseconds. No frame is pruned for being narrow, so every
//! kernel that ran for at least a nanosecond is named in the file (hover text and
//! search work on it even when its box is too thin to label).

use crate::error::RuntimeError;
use crate::model::Model;
use inferno::flamegraph::{self, Options};
use neuron_sim::RunStats;

/// Renders `lines` (from [`super::folded::folded_stacks`]) as an SVG document.
///
/// With no lines (nothing ran) the document is inferno's "no valid input" picture.
pub fn flame_svg(
    model: &Model,
    stats: &RunStats,
    lines: &[String],
) -> Result<Vec<u8>, RuntimeError> {
    let mut opt = Options::default();
    opt.title = format!("{} on {}", model.name(), model.target().name);
    opt.subtitle = Some(format!(
        "simulated latency {:.3} us; widths are busy time per engine, all engines stacked",
        stats.total_ns() / 1000.0
    ));
    opt.count_name = "ns".into();
    opt.name_type = "Frame:".into();
    opt.min_width = 0.0;
    // Colours from a hash of the frame name: the same kernel has the same colour in
    // every run.
    opt.hash = true;
    opt.deterministic = true;
    let mut out = Vec::new();
    let r = flamegraph::from_lines(&mut opt, lines.iter().map(String::as_str), &mut out);
    match r {
        Ok(()) => Ok(out),
        Err(_) if lines.is_empty() => Ok(out),
        Err(e) => Err(RuntimeError::Profile(format!("flame graph: {e}"))),
    }
}
