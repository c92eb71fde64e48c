//! The back end: from a [`KernelGraph`] to a NeuronCore [`Program`] and its artifact.
//!
//! Stages (the driver runs them in this order and can dump each):
//! 1. [`tiling::plan`]: a cost model over the target's SBUF/PSUM sizes, DMA and HBM
//!    bandwidths and TensorE rates picks each kernel's tile and block sizes and lists the
//!    buffers it needs ([`tiling::KernelPlan`]).
//! 2. [`alloc::allocate`]: places every kernel's buffers in SBUF and PSUM.
//! 3. [`lower_program`]: lowers kernel after kernel ([`lower`], one file per kernel kind)
//!    into per-engine instruction streams through the [`builder::Builder`], which inserts
//!    every semaphore wait from the instructions' declared reads and writes.
//! 4. [`emit::artifact`]: HBM tensor table, weight blob (rounded to each tensor's dtype),
//!    kernel metadata, header fields.
//!
//! Invariants: the program is deterministic (no hash-order or time dependence); every
//! instruction signals its own stream's semaphore; every on-chip access pattern of a
//! compute instruction starts at partition 0.

pub mod alloc;
pub mod builder;
pub mod emit;
pub mod encode;
pub mod layout;
pub mod lower;
pub mod resident;
pub mod tiling;

use crate::error::CompileError;
use crate::kernel::KernelGraph;
use alloc::Allocation;
use builder::{Builder, ResidentMode};
use lower::{Constants, LowerCtx};
use neuron_isa::{ChipConfig, Program};
use tiling::KernelPlan;

/// A lowered program and what the artifact needs besides it.
#[derive(Debug, Clone)]
pub struct Lowered {
    /// The program (streams, semaphores, tensor table, kernel metadata).
    pub program: Program,
    /// Constants added while lowering (their data goes into the weight blob).
    pub constants: Constants,
}

/// Places every kernel's buffers; an error names the kernel that does not fit.
pub fn allocate(
    kg: &KernelGraph,
    plans: &[KernelPlan],
    cfg: &ChipConfig,
) -> Result<Allocation, CompileError> {
    let _span = tracing::info_span!("allocation").entered();
    let reqs: Vec<_> = plans.iter().map(|p| p.buffers.clone()).collect();
    alloc::allocate(&reqs, cfg).map_err(|e| match kg.kernels.get(e.kernel) {
        Some(k) => lower::lowering_error(k, e.message),
        None => CompileError::Internal(e.message),
    })
}

/// The stable text form of an allocation (the `allocation` dump).
pub fn display_allocation(kg: &KernelGraph, a: &Allocation) -> String {
    let mut s = format!(
        "peak sbuf {} B/partition, peak psum {} B/partition\n",
        a.peak_sbuf, a.peak_psum
    );
    s.push_str(&format!(
        "resident region {} B/partition, {} tensors; pinned {} B/partition\n",
        a.resident.region,
        a.resident.tensors.len(),
        a.pinned_sbuf
    ));
    for (i, (k, ka)) in kg.kernels.iter().zip(&a.kernels).enumerate() {
        s.push_str(&format!(
            "k{i} {}: sbuf {} B, psum {} B\n",
            k.name, ka.sbuf_bytes, ka.psum_bytes
        ));
        for b in &ka.bufs {
            s.push_str(&format!(
                "    {:<6} {:?} @{} {} B x{}\n",
                b.name, b.mem, b.base, b.slot_bytes, b.slots
            ));
        }
    }
    s
}

/// Lowers every kernel into one program, every scratch tensor in HBM.
pub fn lower_program(
    kg: &KernelGraph,
    plans: &[KernelPlan],
    alloc: &Allocation,
    cfg: &ChipConfig,
) -> Result<Lowered, CompileError> {
    Ok(lower_with(kg, plans, alloc, cfg, ResidentMode::Off)?.0)
}

/// Lowers every kernel into one program, keeping in SBUF the scratch tensors that fit
/// ([`resident`]): lowers once with all of them in HBM, noting their accesses, then, when
/// some can stay on chip, allocates the kernels' buffers below their region and lowers
/// again. Returns the program and the allocation it uses (`alloc`, allocated for all of
/// SBUF, when nothing stays on chip).
pub fn lower_program_resident(
    kg: &KernelGraph,
    plans: &[KernelPlan],
    alloc: Allocation,
    cfg: &ChipConfig,
) -> Result<(Lowered, Allocation), CompileError> {
    let (first, mode) = lower_with(
        kg,
        plans,
        &alloc,
        cfg,
        ResidentMode::Probe(Default::default()),
    )?;
    let ResidentMode::Probe(probe) = mode else {
        return Ok((first, alloc));
    };
    // Every budget under which the kernels still fit below the region is a candidate, and
    // so is keeping every scratch tensor in HBM; the cheapest by the estimate wins, a
    // smaller region (or none) only when it is cheaper by the margin.
    let work = resident::Work::of(&first.program, cfg);
    let est = |r: &resident::Residency, a: &Allocation| {
        resident::estimate_ns(kg, plans, &work, r, a, cfg)
    };
    let none = est(&resident::Residency::default(), &alloc);
    tracing::debug!(est_us = none / 1e3, "resident tensors: all in HBM");
    let mut chosen: Option<(resident::Residency, Allocation, f64)> = None;
    for cap in resident::budgets(cfg) {
        let residency = resident::plan(kg, &probe, &first.program.tensors, cfg, cap);
        if residency.tensors.is_empty() {
            break;
        }
        let mut below = cfg.clone();
        below.sbuf_bytes_per_partition -= residency.region;
        let Ok(a) = allocate(kg, plans, &below) else {
            tracing::debug!(
                cap,
                "resident tensors: the kernels do not fit below their region"
            );
            continue;
        };
        let ns = est(&residency, &a);
        tracing::debug!(
            cap,
            region = residency.region,
            tensors = residency.tensors.len(),
            pinned = a.pinned_sbuf,
            est_us = ns / 1e3,
            "resident tensors: candidate budget"
        );
        let keep = 1.0 - resident::SMALLER_REGION_MARGIN;
        if chosen.as_ref().is_none_or(|c| ns < c.2 * keep) {
            chosen = Some((residency, a, ns));
        }
    }
    let chosen = chosen
        .filter(|c| none >= c.2 * (1.0 - resident::SMALLER_REGION_MARGIN))
        .map(|(r, a, _)| (r, a));
    let Some((residency, mut alloc2)) = chosen else {
        return Ok((first, alloc));
    };
    let mode = ResidentMode::On {
        residency: residency.clone(),
        broken: None,
    };
    let (second, mode) = lower_with(kg, plans, &alloc2, cfg, mode)?;
    if let ResidentMode::On {
        broken: Some(why), ..
    } = mode
    {
        tracing::debug!("resident tensors: {why}; all stay in HBM");
        return Ok((first, alloc));
    }
    alloc2.resident = residency;
    Ok((second, alloc2))
}

/// Lowers every kernel with scratch tensors treated as `mode` says; returns the mode with
/// what it noted.
fn lower_with(
    kg: &KernelGraph,
    plans: &[KernelPlan],
    alloc: &Allocation,
    cfg: &ChipConfig,
    mode: ResidentMode,
) -> Result<(Lowered, ResidentMode), CompileError> {
    let _span = tracing::info_span!("lowering", kernels = kg.kernels.len()).entered();
    let mut tensors = emit::tensor_table(kg);
    let mut b = Builder::new(cfg, &tensors, alloc.pinned_sbuf > 0);
    b.set_resident(mode);
    let mut consts = Constants {
        first: tensors.len() as u32,
        tensors: Vec::new(),
    };
    for (i, k) in kg.kernels.iter().enumerate() {
        let (Some(plan), Some(bufs)) = (plans.get(i), alloc.kernels.get(i)) else {
            return Err(lower::lowering_error(
                k,
                "internal: kernel has no plan or allocation",
            ));
        };
        b.set_kernel(i as u32);
        let mut ctx = LowerCtx {
            cfg,
            kg,
            kernel: k,
            index: i,
            plan,
            bufs,
            b: &mut b,
            consts: &mut consts,
            evict_rr: 0,
        };
        lower::lower_kernel(&mut ctx)?;
    }
    let kernels = emit::kernel_infos(kg, plans, |k| b.kernel_hbm_bytes(k));
    tensors.extend(consts.tensors.iter().map(|(t, _)| t.clone()));
    let mode = b.take_resident();
    let (streams, semaphores) = b.finish();
    Ok((
        Lowered {
            program: Program {
                streams,
                semaphores,
                tensors,
                kernels,
            },
            constants: consts,
        },
        mode,
    ))
}
