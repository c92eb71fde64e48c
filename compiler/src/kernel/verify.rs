//! The kernel IR verifier, run between passes in debug builds and tests.

use super::{EwOp, KTensorId, Kernel, KernelGraph, KernelOp, View};
use neuron_isa::{Dtype, TensorKind};

/// A broken kernel-graph invariant.
#[derive(Debug, thiserror::Error)]
#[error("kernel {index} '{kernel}': {message}")]
pub struct KernelVerifyError {
    /// Kernel index (or `usize::MAX` for graph-level problems).
    pub index: usize,
    /// Kernel name.
    pub kernel: String,
    /// What is wrong.
    pub message: String,
}

fn check_view(g: &KernelGraph, v: &View, what: &str) -> Result<(), String> {
    let t = g
        .tensor(v.tensor)
        .ok_or_else(|| format!("{what} names tensor {} which does not exist", v.tensor))?;
    if v.shape.len() != v.strides.len() {
        return Err(format!(
            "{what} has {} dims but {} strides",
            v.shape.len(),
            v.strides.len()
        ));
    }
    if v.shape.contains(&0) {
        return Ok(());
    }
    let mut lo = v.offset as i128;
    let mut hi = v.offset as i128;
    for (&d, &s) in v.shape.iter().zip(&v.strides) {
        let reach = (d as i128 - 1) * s as i128;
        if reach < 0 {
            lo += reach;
        } else {
            hi += reach;
        }
    }
    let n = t.numel() as i128;
    if lo < 0 || hi >= n {
        return Err(format!(
            "{what} reaches elements {lo}..={hi} of tensor {} '{}' which has {n}",
            v.tensor, t.name
        ));
    }
    Ok(())
}

fn operand_indices(op: &KernelOp) -> Vec<usize> {
    fn ew(ops: &[EwOp], out: &mut Vec<usize>) {
        for o in ops {
            match o {
                EwOp::Tensor { operand, .. } => out.push(*operand),
                EwOp::Select { cond, other, .. } => {
                    out.push(*cond);
                    out.push(*other);
                }
                EwOp::Unary(_) | EwOp::Scalar { .. } | EwOp::Cast(_) => {}
            }
        }
    }
    let mut v = Vec::new();
    match op {
        KernelOp::MatMul { a, b, epilogue, .. } => {
            v.extend([*a, *b]);
            ew(epilogue, &mut v);
        }
        KernelOp::Norm {
            x,
            gamma,
            beta,
            epilogue,
            ..
        } => {
            v.push(*x);
            v.extend(gamma.iter().chain(beta.iter()).copied());
            ew(epilogue, &mut v);
        }
        KernelOp::Softmax {
            x,
            prologue,
            epilogue,
        } => {
            v.push(*x);
            ew(prologue, &mut v);
            ew(epilogue, &mut v);
        }
        KernelOp::Attention {
            q,
            k,
            v: vv,
            prologue,
        } => {
            v.extend([*q, *k, *vv]);
            ew(prologue, &mut v);
        }
        KernelOp::Elementwise { x, ops } => {
            v.push(*x);
            ew(ops, &mut v);
        }
        KernelOp::Reduce { x, epilogue, .. } => {
            v.push(*x);
            ew(epilogue, &mut v);
        }
        KernelOp::Gather {
            table,
            indices,
            epilogue,
        } => {
            v.extend([*table, *indices]);
            ew(epilogue, &mut v);
        }
        KernelOp::Conv2d { x, w, epilogue, .. } => {
            v.extend([*x, *w]);
            ew(epilogue, &mut v);
        }
        KernelOp::Pool { x, epilogue, .. } => {
            v.push(*x);
            ew(epilogue, &mut v);
        }
        KernelOp::Copy { x } => v.push(*x),
    }
    v
}

fn check_kernel(g: &KernelGraph, k: &Kernel, written: &[bool]) -> Result<(), String> {
    for (i, v) in k.inputs.iter().enumerate() {
        check_view(g, v, &format!("input {i}"))?;
        let t = &g.tensors[v.tensor.0 as usize];
        let available = matches!(t.kind, TensorKind::Input | TensorKind::Weight)
            || written[v.tensor.0 as usize];
        if !available {
            return Err(format!(
                "input {i} reads tensor {} '{}' before any kernel writes it",
                v.tensor, t.name
            ));
        }
    }
    check_view(g, &k.output, "output")?;
    for idx in operand_indices(&k.op) {
        if idx >= k.inputs.len() {
            return Err(format!(
                "operand index {idx} out of range: the kernel has {} inputs",
                k.inputs.len()
            ));
        }
    }
    if let KernelOp::Gather { table, indices, .. } = &k.op {
        check_gather(g, k, &k.inputs[*table], &k.inputs[*indices])?;
    }
    Ok(())
}

/// A gather reads integer indices and produces `indices.shape ++ table.shape[1..]`.
fn check_gather(g: &KernelGraph, k: &Kernel, table: &View, indices: &View) -> Result<(), String> {
    let dtype = g.tensors[indices.tensor.0 as usize].dtype;
    if !matches!(dtype, Dtype::I32 | Dtype::I64) {
        return Err(format!("gather indices must be i32 or i64, found {dtype}"));
    }
    let Some((_, row)) = table.shape.split_first() else {
        return Err("gather table has rank 0, expected at least 1".into());
    };
    let want: Vec<usize> = indices.shape.iter().chain(row).copied().collect();
    if k.output.shape != want {
        return Err(format!(
            "gather output has shape {:?}, expected {want:?} (indices {:?} then table rows {row:?})",
            k.output.shape, indices.shape
        ));
    }
    Ok(())
}

pub(super) fn verify(g: &KernelGraph) -> Result<(), KernelVerifyError> {
    let graph_err = |message: String| KernelVerifyError {
        index: usize::MAX,
        kernel: String::from("<graph>"),
        message,
    };
    let mut written = vec![false; g.tensors.len()];
    for (i, k) in g.kernels.iter().enumerate() {
        check_kernel(g, k, &written).map_err(|message| KernelVerifyError {
            index: i,
            kernel: k.name.clone(),
            message,
        })?;
        let out = k.output.tensor.0 as usize;
        let t = &g.tensors[out];
        if matches!(t.kind, TensorKind::Input | TensorKind::Weight) {
            return Err(KernelVerifyError {
                index: i,
                kernel: k.name.clone(),
                message: format!("writes {} tensor '{}'", kind_name(t.kind), t.name),
            });
        }
        written[out] = true;
    }
    for &o in &g.outputs {
        let Some(t) = g.tensor(o) else {
            return Err(graph_err(format!("output {o} does not exist")));
        };
        if !written[o.0 as usize] && !matches!(t.kind, TensorKind::Input | TensorKind::Weight) {
            return Err(graph_err(format!(
                "output {o} '{}' is never written",
                t.name
            )));
        }
    }
    let _ = KTensorId(0);
    Ok(())
}

fn kind_name(k: TensorKind) -> &'static str {
    match k {
        TensorKind::Input => "input",
        TensorKind::Output => "output",
        TensorKind::Weight => "weight",
        TensorKind::Scratch => "scratch",
    }
}
