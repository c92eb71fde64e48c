//! Inference batch_norm, removed before fusion.
//!
//! `batch_norm(x, scale, bias, mean, var)` is `x * a[c] + b[c]` with
//! `a = scale / sqrt(var + eps)` and `b = bias - mean * a` along channel axis 1.
//!
//! - With constant statistics (the usual exported model) `a` and `b` are computed here, in
//!   f64 and rounded once to the storage type. If `x` is a `conv2d` read only by the
//!   batch_norm, both fold into the convolution: `w'[o] = w[o] * a[o]` and
//!   `bias'[o] = bias[o] * a[o] + b[o]`, so the batch_norm costs nothing at run time (its
//!   bias becomes the first step of the convolution's epilogue). Otherwise the node
//!   becomes `mul(x, a) -> add(., b)` with `[C, 1, .., 1]` constants: a VectorE
//!   elementwise kernel, which fusion may merge into a neighbour's epilogue.
//! - With statistics computed at run time (graph inputs), the same arithmetic is spelled
//!   out as elementwise nodes (`a = scale * rsqrt(var + eps)`, ...).
//!
//! Folding changes rounding slightly (the conv accumulates `x * (w * a)` instead of
//! `(x * w) * a`): well inside the fp32 tolerance the differential tests use.

use ndarray::{ArrayD, Axis, IxDyn};

use super::Pass;
use super::rewrite::{add_const, insert_node_before, is_const, out, replace_value, use_count};
use crate::CompileError;
use crate::ir::{DType, Graph, NodeId, Op, Tensor, ValueId};

/// The pass.
pub struct FoldBatchNorm;

impl Pass for FoldBatchNorm {
    fn name(&self) -> &str {
        "fold_batch_norm"
    }

    fn run(&self, g: &mut Graph) -> Result<bool, CompileError> {
        let mut changed = false;
        // Each rewrite may insert nodes (shifting ids), so look the next one up afresh.
        loop {
            let next = g
                .node_ids()
                .find(|&n| matches!(g.node(n).op, Op::BatchNorm { .. }));
            let Some(n) = next else { break };
            rewrite_one(g, n)?;
            changed = true;
        }
        Ok(changed)
    }
}

/// The `[C, 1, .., 1]` shape of a per-channel constant for an input of rank `rank`.
fn channel_shape(c: usize, rank: usize) -> Vec<usize> {
    let mut s = vec![1; rank.saturating_sub(1)];
    if let Some(first) = s.first_mut() {
        *first = c;
    }
    s
}

fn rewrite_one(g: &mut Graph, n: NodeId) -> Result<(), CompileError> {
    let node = g.node(n).clone();
    let Op::BatchNorm { epsilon } = node.op else {
        return Err(CompileError::Internal(
            "fold_batch_norm: not a batch_norm".into(),
        ));
    };
    let [x, scale, bias, mean, var] = node.inputs[..] else {
        return Err(CompileError::Internal(format!(
            "batch_norm node '{}' has {} inputs, expected 5",
            node.name,
            node.inputs.len()
        )));
    };
    let xv = g.value(x);
    let (rank, dtype) = (xv.shape.len(), xv.dtype);
    let c = xv.shape.get(1).copied().unwrap_or(1);
    let y = out(g, n);
    let stats = [scale, bias, mean, var];
    if !stats.iter().all(|&v| is_const(g, v)) {
        return spell_out(g, n, &node.name, x, stats, epsilon, c, rank, dtype);
    }
    let vals: Vec<Vec<f64>> = stats
        .iter()
        .map(|&v| {
            g.value(v)
                .data
                .as_ref()
                .map(|t| t.to_f64().iter().copied().collect())
                .unwrap_or_default()
        })
        .collect();
    if vals.iter().any(|v| v.len() != c) {
        return Err(CompileError::Internal(format!(
            "batch_norm node '{}': statistics are not [{c}] vectors",
            node.name
        )));
    }
    let eps = f64::from(epsilon);
    let a: Vec<f64> = (0..c)
        .map(|i| vals[0][i] / (vals[3][i] + eps).sqrt())
        .collect();
    let b: Vec<f64> = (0..c).map(|i| vals[1][i] - vals[2][i] * a[i]).collect();

    if let Some(conv) = foldable_conv(g, x) {
        let cnode = g.node(conv).clone();
        let w = cnode.inputs[1];
        let wt = g
            .value(w)
            .data
            .as_ref()
            .ok_or_else(|| CompileError::Internal("conv weight without data".into()))?;
        let wdt = wt.dtype();
        let mut wa = wt.to_f64();
        for (o, mut plane) in wa.axis_iter_mut(Axis(0)).enumerate() {
            let s = a.get(o).copied().unwrap_or(1.0);
            plane.mapv_inplace(|v| v * s);
        }
        let old_bias: Vec<f64> = match cnode.inputs.get(2) {
            Some(&bv) => g
                .value(bv)
                .data
                .as_ref()
                .map(|t| t.to_f64().iter().copied().collect())
                .unwrap_or_default(),
            None => vec![0.0; c],
        };
        let nb: Vec<f64> = (0..c)
            .map(|o| old_bias.get(o).copied().unwrap_or(0.0) * a[o] + b[o])
            .collect();
        let w_name = format!("{}.w_bn", cnode.name);
        let b_name = format!("{}.b_bn", cnode.name);
        let w_new = add_const(g, &w_name, Tensor::from_f64(wdt, wa))?;
        let b_new = add_const(
            g,
            &b_name,
            Tensor::from_f64(
                dtype,
                ArrayD::from_shape_vec(IxDyn(&[c]), nb).map_err(shape_err)?,
            ),
        )?;
        let conv_node = &mut g.nodes[conv.index()];
        conv_node.inputs.truncate(2);
        conv_node.inputs[1] = w_new;
        conv_node.inputs.push(b_new);
        if replace_value(g, y, x) {
            // The batch_norm node is now unused; dead-code elimination removes it.
            tracing::debug!(batch_norm = %node.name, conv = %cnode.name, "folded into conv");
            return Ok(());
        }
        // `x` is an internal conv result (checked above), so this cannot happen.
        return Err(CompileError::Internal(format!(
            "batch_norm node '{}': could not rewire its output",
            node.name
        )));
    }
    let shape = channel_shape(c, rank);
    let a_t = Tensor::from_f64(
        dtype,
        ArrayD::from_shape_vec(IxDyn(&shape), a).map_err(shape_err)?,
    );
    let b_t = Tensor::from_f64(
        dtype,
        ArrayD::from_shape_vec(IxDyn(&shape), b).map_err(shape_err)?,
    );
    let a_v = add_const(g, &format!("{}.scale", node.name), a_t)?;
    let b_v = add_const(g, &format!("{}.shift", node.name), b_t)?;
    let m = insert_node_before(
        g,
        n,
        &format!("{}.mul", node.name),
        Op::Mul,
        &[x, a_v],
        &format!("{}.scaled", g.value(y).name),
    )?;
    // The batch_norm moved one place down; it becomes the add (keeping its output).
    let at = NodeId(n.0 + 1);
    let bn = &mut g.nodes[at.index()];
    bn.op = Op::Add;
    bn.inputs = vec![m, b_v];
    Ok(())
}

fn shape_err(e: ndarray::ShapeError) -> CompileError {
    CompileError::Internal(format!("fold_batch_norm: {e}"))
}

/// The conv2d producing `x` if its result can absorb a batch_norm: read only by it, not a
/// graph output, with constant weight (and bias).
fn foldable_conv(g: &Graph, x: ValueId) -> Option<NodeId> {
    let p = g.value(x).producer?;
    let node = g.node(p);
    let ok = matches!(node.op, Op::Conv2d { .. })
        && !g.is_output(x)
        && use_count(g, x) == 1
        && is_const(g, node.inputs[1])
        && node.inputs.get(2).is_none_or(|&b| is_const(g, b));
    ok.then_some(p)
}

/// Batch norm with run-time statistics as elementwise nodes before node `n`, which
/// becomes the final add.
#[allow(clippy::too_many_arguments)]
fn spell_out(
    g: &mut Graph,
    n: NodeId,
    name: &str,
    x: ValueId,
    [scale, bias, mean, var]: [ValueId; 4],
    epsilon: f32,
    c: usize,
    rank: usize,
    dtype: DType,
) -> Result<(), CompileError> {
    let shape: Vec<i64> = channel_shape(c, rank).iter().map(|&d| d as i64).collect();
    let eps = add_const(
        g,
        &format!("{name}.eps"),
        Tensor::from_f64(dtype, ArrayD::from_elem(IxDyn(&[]), f64::from(epsilon))),
    )?;
    let mut at = n;
    let mut ins = |g: &mut Graph, suffix: &str, op: Op, inputs: &[ValueId]| {
        let v = insert_node_before(
            g,
            at,
            &format!("{name}.{suffix}"),
            op,
            inputs,
            &format!("{name}.{suffix}"),
        );
        at = NodeId(at.0 + 1);
        v
    };
    let ve = ins(g, "var_eps", Op::Add, &[var, eps])?;
    let r = ins(g, "rstd", Op::Rsqrt, &[ve])?;
    let a = ins(g, "a", Op::Mul, &[scale, r])?;
    let ma = ins(g, "mean_a", Op::Mul, &[mean, a])?;
    let b = ins(g, "b", Op::Sub, &[bias, ma])?;
    let a4 = ins(
        g,
        "a_c",
        Op::Reshape {
            shape: shape.clone(),
        },
        &[a],
    )?;
    let b4 = ins(g, "b_c", Op::Reshape { shape }, &[b])?;
    let m = ins(g, "scaled", Op::Mul, &[x, a4])?;
    let bn = &mut g.nodes[at.index()];
    bn.op = Op::Add;
    bn.inputs = vec![m, b4];
    Ok(())
}
