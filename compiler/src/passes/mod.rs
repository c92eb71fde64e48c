//! The middle end: from a verified [`Graph`] to a verified [`KernelGraph`].
//!
//! Graph passes are small structs behind the [`Pass`] trait, one per file, run in the
//! order written in [`run_middle_end`]; the graph verifier runs after each of them in
//! debug builds and tests, so a pass that breaks an invariant is caught at the pass.
//! Then [`fusion`] partitions the nodes into groups, [`kernelize`] turns each group into
//! a [`Kernel`](crate::kernel::Kernel) reading and writing strided HBM views, and
//! [`precision`] chooses the on-chip storage types. Every stage's text form goes to the
//! `dump` callback (`neuronc compile --dump DIR` writes them to files).

pub mod attention;
pub mod constant_gather;
pub mod conv_layout;
pub mod cse;
pub mod dce;
pub mod epilogue;
pub mod fold_batch_norm;
pub mod fold_constants;
pub mod fusion;
pub mod gelu;
pub mod infer_shapes;
pub mod kernelize;
pub mod merge_matmuls;
pub mod micro_batch;
pub mod precision;
pub mod pretranspose;
pub mod rewrite;
pub mod simplify_movement;

use crate::CompileError;
use crate::ir::Graph;
use crate::kernel::KernelGraph;
use crate::options::CompileOptions;

/// A graph-to-graph rewrite.
pub trait Pass {
    /// Short name, used in spans, dumps and verifier errors.
    fn name(&self) -> &str;
    /// Rewrites `g` in place; returns whether anything changed.
    fn run(&self, g: &mut Graph) -> Result<bool, CompileError>;
}

/// How many times a group of passes is repeated at most while any of them still changes
/// the graph (each rewrite shrinks the graph, so this is only a guard).
const MAX_ROUNDS: usize = 16;

/// Compiles a graph down to kernels: canonicalize, shape inference, DCE and CSE, fusion
/// and kernel formation, precision assignment. `dump(stage, text)` receives the text form
/// after each stage (`00-graph` .. `05-precision`).
pub fn run_middle_end(
    graph: &Graph,
    opts: &CompileOptions,
    dump: &mut dyn FnMut(&str, &str),
) -> Result<KernelGraph, CompileError> {
    run_middle_end_with(graph, opts, true, dump)
}

/// [`run_middle_end`], building the text forms for `dump` only when `dumps` is true (text
/// forms of large graphs are not built for nothing).
pub fn run_middle_end_with(
    graph: &Graph,
    opts: &CompileOptions,
    dumps: bool,
    dump: &mut dyn FnMut(&str, &str),
) -> Result<KernelGraph, CompileError> {
    let mut dump = |stage: &str, text: &dyn Fn() -> String| {
        if dumps {
            dump(stage, &text());
        }
    };
    let _span = tracing::info_span!("middle_end", model = %graph.name).entered();
    graph
        .verify()
        .map_err(|e| CompileError::Verify(format!("input graph: {e}")))?;
    let mut g = graph.clone();
    dump("00-graph", &|| g.to_string());
    run_to_fixpoint(
        &mut g,
        &[
            &fold_constants::FoldConstants,
            &fold_batch_norm::FoldBatchNorm,
            &simplify_movement::SimplifyMovement,
            &constant_gather::ConstantGather,
            &gelu::RecognizeGelu,
            &dce::DeadCode,
        ],
    )?;
    dump("01-canonical", &|| g.to_string());
    run_to_fixpoint(
        &mut g,
        &[
            &infer_shapes::InferShapes,
            &dce::DeadCode,
            &cse::CommonSubexpressions,
            &pretranspose::PretransposeWeights,
        ],
    )?;
    if opts.fuse {
        // Merging sibling projections is a fusion decision: `--no-fuse` keeps one kernel
        // per op.
        run_to_fixpoint(&mut g, &[&merge_matmuls::MergeMatmuls, &dce::DeadCode])?;
    }
    dump("02-optimized", &|| g.to_string());
    if opts.fuse
        && opts.micro_batch
        && let Some(split) = micro_batch::run(&mut g, opts)
    {
        // Depth-first over the batch for the per-image stretch (`micro_batch.rs`).
        tracing::debug!(?split, "micro-batched");
        dump("02-micro-batched", &|| g.to_string());
    }
    let partition = fusion::partition(&g, opts.fuse)?;
    dump("03-fused", &|| partition.display(&g));
    let mut kg = kernelize::kernelize(&g, &partition, opts.fuse)?;
    verify_kernels(&kg, "kernelize")?;
    dump("04-kernels", &|| kg.to_string());
    precision::assign(&g, &mut kg, opts)?;
    verify_kernels(&kg, "precision")?;
    dump("05-precision", &|| kg.to_string());
    if !conv_layout::assign(&mut kg).is_empty() {
        verify_kernels(&kg, "conv layout")?;
    }
    Ok(kg)
}

/// Runs `passes` in order, repeatedly, until none changes the graph.
pub fn run_to_fixpoint(g: &mut Graph, passes: &[&dyn Pass]) -> Result<(), CompileError> {
    for _ in 0..MAX_ROUNDS {
        let mut changed = false;
        for p in passes {
            changed |= run_pass(g, *p)?;
        }
        if !changed {
            return Ok(());
        }
    }
    Ok(())
}

/// Runs one pass inside a tracing span, then the verifier (debug builds and tests).
pub fn run_pass(g: &mut Graph, pass: &dyn Pass) -> Result<bool, CompileError> {
    let _span = tracing::debug_span!("pass", name = pass.name()).entered();
    let changed = pass.run(g)?;
    tracing::debug!(changed, nodes = g.nodes.len(), "pass done");
    if changed && cfg!(debug_assertions) {
        g.verify().map_err(|e| {
            CompileError::Verify(format!("graph after pass '{}': {e}", pass.name()))
        })?;
    }
    Ok(changed)
}

/// Checks the kernel-graph invariants after `stage` (debug builds and tests; the back
/// end relies on them, so they are cheap enough to keep in release too).
fn verify_kernels(kg: &KernelGraph, stage: &str) -> Result<(), CompileError> {
    kg.verify()
        .map_err(|e| CompileError::Verify(format!("kernel graph after {stage}: {e}")))
}
