//! Constant folding: makes scalar constants recognizable so fusion can turn them into
//! immediate operands of ScalarE/VectorE instructions.
//!
//! - an elementwise op on scalar constants only (e.g. `sqrt(64)`, `1/sqrt(2)`) becomes a
//!   new constant;
//! - `cast` of a constant becomes a constant; a cast to the type a value already has is
//!   dropped;
//! - `div(x, c)` becomes `mul(x, 1/c)` (one multiply-by-immediate on the chip);
//! - `mul(mul(x, c1), c2)` becomes `mul(x, c1*c2)`;
//! - `x * 1`, `x + 0`, `x - 0` and `x / 1` become `x`.
//!
//! Rewrites keep the rewritten node's name and output value; replaced nodes are left for
//! dead-code elimination.

use super::Pass;
use super::rewrite::{
    add_const, out, replace_uses, replace_value, scalar_const, scalar_tensor, use_count, use_counts,
};
use crate::CompileError;
use crate::ir::{GeluApprox, Graph, NodeId, Op, ValueId};

/// The constant-folding pass.
#[derive(Debug, Clone, Copy, Default)]
pub struct FoldConstants;

impl Pass for FoldConstants {
    fn name(&self) -> &str {
        "fold-constants"
    }

    fn run(&self, g: &mut Graph) -> Result<bool, CompileError> {
        let mut changed = false;
        // Counted once: a rewrite at node `n` only changes the readers of `n`'s own
        // output and `n`'s operands (produced earlier), so a later node's count is still
        // exact when the loop reaches it.
        let uses = use_counts(g);
        for i in 0..g.nodes.len() {
            let n = NodeId(i as u32);
            let o = out(g, n);
            // A node nobody reads any more (replaced earlier) is left for DCE; folding it
            // again would report a change forever.
            if uses
                .get(o.index())
                .copied()
                .unwrap_or_else(|| use_count(g, o))
                == 0
            {
                continue;
            }
            changed |= fold_node(g, n)?;
        }
        Ok(changed)
    }
}

fn fold_node(g: &mut Graph, n: NodeId) -> Result<bool, CompileError> {
    let node = g.node(n).clone();
    let o = node.outputs[0];
    let out_val = g.value(o).clone();
    let consts: Vec<Option<f64>> = node.inputs.iter().map(|&v| scalar_const(g, v)).collect();

    // 1. Every operand a scalar constant: evaluate at compile time.
    if node.op.is_elementwise()
        && !matches!(node.op, Op::Where | Op::Cast { .. })
        && out_val.dtype.is_float()
        && out_val.shape.iter().product::<usize>() == 1
        && consts.iter().all(Option::is_some)
        && !g.is_output(o)
    {
        let xs: Vec<f64> = consts.iter().flatten().copied().collect();
        if let Some(y) = eval_scalar(&node.op, &xs) {
            let c = add_const(
                g,
                &out_val.name,
                scalar_tensor(y, &out_val.shape, out_val.dtype),
            )?;
            replace_uses(g, o, c);
            return Ok(true);
        }
    }

    match &node.op {
        // 2. Casts of constants and casts to the same type.
        Op::Cast { dtype } => {
            let x = node.inputs[0];
            if g.value(x).dtype == *dtype && replace_value(g, o, x) {
                return Ok(true);
            }
            if g.is_output(o) {
                return Ok(false);
            }
            if let Some(t) = g.value(x).data.as_ref().filter(|_| g.is_param(x)) {
                let t = t.cast(*dtype);
                let c = add_const(g, &out_val.name, t)?;
                replace_uses(g, o, c);
                return Ok(true);
            }
        }
        // 3. Division by a constant is a multiply by its reciprocal.
        Op::Div => {
            if let Some(c) = consts[1].filter(|&c| c != 0.0 && (1.0 / c).is_finite()) {
                let cv = g.value(node.inputs[1]).clone();
                let name = format!("{}_reciprocal", cv.name);
                let r = add_const(g, &name, scalar_tensor(1.0 / c, &cv.shape, cv.dtype))?;
                let nm = &mut g.nodes[n.index()];
                nm.op = Op::Mul;
                nm.inputs[1] = r;
                return Ok(true);
            }
        }
        _ => {}
    }

    // 4. Identities.
    {
        let x_same = |i: usize| g.value(node.inputs[i]).shape == out_val.shape;
        let identity = match node.op {
            Op::Mul if consts[1] == Some(1.0) && x_same(0) => Some(0),
            Op::Mul if consts[0] == Some(1.0) && x_same(1) => Some(1),
            Op::Add if consts[1] == Some(0.0) && x_same(0) => Some(0),
            Op::Add if consts[0] == Some(0.0) && x_same(1) => Some(1),
            Op::Sub | Op::Div
                if consts[1] == Some(if node.op == Op::Sub { 0.0 } else { 1.0 }) && x_same(0) =>
            {
                Some(0)
            }
            _ => None,
        };
        if let Some(i) = identity
            && replace_value(g, o, node.inputs[i])
        {
            return Ok(true);
        }
    }

    // 5. Chains of constant scales: (x * c1) * c2 -> x * (c1 * c2).
    if node.op == Op::Mul {
        for (ci, xi) in [(1, 0), (0, 1)] {
            let Some(c2) = consts[ci] else { continue };
            if let Some((x, c1, c1v)) = scaled_by_const(g, node.inputs[xi])
                && g.value(x).shape == out_val.shape
                && g.value(c1v).shape.len() <= out_val.shape.len()
            {
                let cv = g.value(node.inputs[ci]).clone();
                let name = format!("{}_scale", out_val.name);
                let c = add_const(g, &name, scalar_tensor(c1 * c2, &cv.shape, cv.dtype))?;
                g.nodes[n.index()].inputs = vec![x, c];
                return Ok(true);
            }
        }
    }
    Ok(false)
}

/// If `v` is `mul(x, c)` or `mul(c, x)` with a scalar constant `c`, read by nothing else,
/// returns `(x, c, the constant's id)`.
fn scaled_by_const(g: &Graph, v: ValueId) -> Option<(ValueId, f64, ValueId)> {
    let p = g.value(v).producer?;
    let node = g.node(p);
    if node.op != Op::Mul || use_count(g, v) != 1 {
        return None;
    }
    let (a, b) = (node.inputs[0], node.inputs[1]);
    match (scalar_const(g, a), scalar_const(g, b)) {
        (None, Some(c)) => Some((a, c, b)),
        (Some(c), None) => Some((b, c, a)),
        _ => None,
    }
}

/// Evaluates an elementwise op on scalars (in f64), or `None` for ops that are not
/// folded.
pub fn eval_scalar(op: &Op, xs: &[f64]) -> Option<f64> {
    let x = *xs.first()?;
    let y = match op {
        Op::Add => x + xs.get(1)?,
        Op::Sub => x - xs.get(1)?,
        Op::Mul => x * xs.get(1)?,
        Op::Div => x / xs.get(1)?,
        Op::Max => x.max(*xs.get(1)?),
        Op::Min => x.min(*xs.get(1)?),
        Op::Pow => x.powf(*xs.get(1)?),
        Op::Neg => -x,
        Op::Abs => x.abs(),
        Op::Exp => x.exp(),
        Op::Log => x.ln(),
        Op::Sqrt => x.sqrt(),
        Op::Rsqrt => 1.0 / x.sqrt(),
        Op::Reciprocal => 1.0 / x,
        Op::Relu => x.max(0.0),
        Op::Sigmoid => 1.0 / (1.0 + (-x).exp()),
        Op::Tanh => x.tanh(),
        Op::Erf => libm::erf(x),
        Op::Silu => x / (1.0 + (-x).exp()),
        Op::Gelu {
            approximate: GeluApprox::None,
        } => 0.5 * x * (1.0 + libm::erf(x / std::f64::consts::SQRT_2)),
        Op::Gelu {
            approximate: GeluApprox::Tanh,
        } => {
            let c = (2.0 / std::f64::consts::PI).sqrt();
            0.5 * x * (1.0 + (c * (x + 0.044715 * x * x * x)).tanh())
        }
        _ => return None,
    };
    y.is_finite().then_some(y)
}
