//! Activation scales for int8 matmuls and convolutions from a calibration run of the
//! reference executor.
//!
//! The graph is evaluated once on the calibration inputs (`--calibrate NAME=FILE.npy`,
//! or seeded random inputs when none are given); each int8 kernel's activation operand
//! (a matmul's `a`, a convolution's `x`) is read back through the kernel's own view of it (so a folded transpose or slice sees
//! exactly the elements the kernel multiplies), and its scale is `max|a| / 127`.

use std::collections::BTreeMap;

use crate::CompileError;
use crate::ir::{Graph, Tensor};
use crate::kernel::interp::read_view;
use crate::kernel::{KernelGraph, KernelOp};
use crate::options::CompileOptions;
use crate::reference::{RefOptions, random_inputs, run_reference_all};

use super::weights::scale_for;

/// The inputs to calibrate on: the user's, or the model's seeded random inputs.
pub fn calibration_inputs(g: &Graph, opts: &CompileOptions) -> BTreeMap<String, Tensor> {
    if opts.calibration.is_empty() {
        random_inputs(g)
    } else {
        opts.calibration.clone()
    }
}

/// Per-tensor scales of the activation operand of the int8 kernels `kernels` (indices into
/// `kg.kernels`), from running `g` on `inputs`.
pub fn activation_scales(
    g: &Graph,
    kg: &KernelGraph,
    kernels: &[usize],
    inputs: &BTreeMap<String, Tensor>,
) -> Result<BTreeMap<usize, f32>, CompileError> {
    let _span = tracing::debug_span!("calibrate", kernels = kernels.len()).entered();
    let mut scales = BTreeMap::new();
    if kernels.is_empty() {
        return Ok(scales);
    }
    let values = run_reference_all(g, inputs, RefOptions::default()).map_err(|e| {
        CompileError::Precision {
            kernel: kernels
                .first()
                .and_then(|&i| kg.kernels.get(i))
                .map_or_else(String::new, |k| k.name.clone()),
            message: format!("int8 calibration run failed: {e}"),
        }
    })?;
    for &i in kernels {
        let k = kg
            .kernels
            .get(i)
            .ok_or_else(|| CompileError::Internal(format!("kernel {i} does not exist")))?;
        let a = match k.op {
            KernelOp::MatMul { a, .. } => a,
            KernelOp::Conv2d { x, .. } => x,
            _ => {
                return Err(CompileError::Precision {
                    kernel: k.name.clone(),
                    message: format!(
                        "int8 calibration expects a matmul or a convolution, found {}",
                        k.op.kind()
                    ),
                });
            }
        };
        let view = &k.inputs[a];
        let t = kg.tensor(view.tensor).ok_or_else(|| {
            CompileError::Internal(format!("kernel '{}' reads a missing tensor", k.name))
        })?;
        let v = g
            .value_by_name(&t.name)
            .ok_or_else(|| CompileError::Precision {
                kernel: k.name.clone(),
                message: format!(
                    "activation tensor '{}' is not a graph value, so it cannot be calibrated",
                    t.name
                ),
            })?;
        let flat: Vec<f64> = values[v.index()].to_f64().iter().copied().collect();
        let elems = read_view(&flat, view).map_err(|m| CompileError::Precision {
            kernel: k.name.clone(),
            message: format!("reading the calibration values of '{}': {m}", t.name),
        })?;
        let max = elems.iter().fold(0.0f64, |m, x| m.max(x.abs()));
        scales.insert(i, scale_for(max));
    }
    Ok(scales)
}
