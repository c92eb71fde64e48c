//! Recognizes GELU written out with elementwise ops and replaces it by one `gelu` node,
//! which the chip evaluates as a single ScalarE activation:
//!
//! - tanh form: `0.5 * x * (1 + tanh(sqrt(2/pi) * (x + 0.044715 * x^3)))`, with `x^3`
//!   as `pow(x, 3)` or `x * x * x`;
//! - erf form: `0.5 * x * (1 + erf(x / sqrt(2)))`, or `erf(x * (1/sqrt(2)))`.
//!
//! Products are matched as multisets of factors (any association and operand order, so
//! `x * 0.5 * (...)`, `0.5 * x * (...)` and `x * (0.5 * (...))` all match) and sums in
//! either order; constants must agree to a relative 1e-4, so a near miss such as
//! `0.04 * x^3` is left alone. The rewritten node keeps the name of the outermost
//! multiply (the gelu's node name in kernel metadata); the inner nodes become dead and
//! dead-code elimination removes them.

use super::Pass;
use super::rewrite::{approx, out, scalar_const, use_counts};
use crate::CompileError;
use crate::ir::{GeluApprox, Graph, NodeId, Op, ValueId};

/// Relative tolerance for the constants of the written-out forms.
const TOL: f64 = 1e-4;

/// The GELU-recognition pass.
#[derive(Debug, Clone, Copy, Default)]
pub struct RecognizeGelu;

impl Pass for RecognizeGelu {
    fn name(&self) -> &str {
        "recognize-gelu"
    }

    fn run(&self, g: &mut Graph) -> Result<bool, CompileError> {
        let mut changed = false;
        // Counted once: a rewrite only changes the rewritten node's own operands.
        let uses = use_counts(g);
        for i in 0..g.nodes.len() {
            let n = NodeId(i as u32);
            if g.node(n).op != Op::Mul || uses[out(g, n).index()] == 0 {
                continue;
            }
            if let Some((x, approximate)) = match_gelu(g, out(g, n)) {
                let nm = &mut g.nodes[n.index()];
                nm.op = Op::Gelu { approximate };
                nm.inputs = vec![x];
                changed = true;
            }
        }
        Ok(changed)
    }
}

/// If `root` computes GELU of some `x` (same shape and dtype as `root`), returns `x` and
/// the form.
pub fn match_gelu(g: &Graph, root: ValueId) -> Option<(ValueId, GeluApprox)> {
    // First find the `1 + f(..)` factor, from which `x` follows; then check that the
    // whole product is exactly `0.5 * x * (1 + f(..))`.
    let factors = flatten_mul(g, root, &[]);
    for &onep in &factors {
        let Some((x, form)) = match_one_plus(g, onep) else {
            continue;
        };
        if g.value(x).shape != g.value(root).shape || g.value(x).dtype != g.value(root).dtype {
            continue;
        }
        let leaves = flatten_mul(g, root, &[x, onep]);
        let mut scale = 1.0;
        let (mut nx, mut nonep) = (0, 0);
        let mut other = false;
        for &l in &leaves {
            if l == x {
                nx += 1;
            } else if l == onep {
                nonep += 1;
            } else if let Some(c) = scalar_const(g, l) {
                scale *= c;
            } else {
                other = true;
            }
        }
        if nx == 1 && nonep == 1 && !other && approx(scale, 0.5, TOL) {
            return Some((x, form));
        }
    }
    None
}

/// The leaves of the multiply tree rooted at `v`: values not produced by `mul`, or in
/// `stop` (the root itself is always expanded).
fn flatten_mul(g: &Graph, v: ValueId, stop: &[ValueId]) -> Vec<ValueId> {
    let mut leaves = Vec::new();
    let mut stack = vec![(v, true)];
    while let Some((v, is_root)) = stack.pop() {
        match g.value(v).producer.map(|p| g.node(p)) {
            Some(node) if node.op == Op::Mul && (is_root || !stop.contains(&v)) => {
                stack.extend(node.inputs.iter().rev().map(|&i| (i, false)));
            }
            _ => leaves.push(v),
        }
        // A gelu is a handful of factors; give up on anything much larger.
        if leaves.len() + stack.len() > 64 {
            return Vec::new();
        }
    }
    leaves
}

/// `1 + tanh(sqrt(2/pi) * (x + 0.044715 x^3))` or `1 + erf(x / sqrt 2)`, either order.
fn match_one_plus(g: &Graph, v: ValueId) -> Option<(ValueId, GeluApprox)> {
    let node = g.node(g.value(v).producer?);
    if node.op != Op::Add {
        return None;
    }
    let (a, b) = (node.inputs[0], node.inputs[1]);
    let f = match (scalar_const(g, a), scalar_const(g, b)) {
        (Some(c), None) if approx(c, 1.0, TOL) => b,
        (None, Some(c)) if approx(c, 1.0, TOL) => a,
        _ => return None,
    };
    let fnode = g.node(g.value(f).producer?);
    let arg = fnode.inputs[0];
    match fnode.op {
        Op::Tanh => match_tanh_arg(g, arg).map(|x| (x, GeluApprox::Tanh)),
        Op::Erf => match_erf_arg(g, arg).map(|x| (x, GeluApprox::None)),
        _ => None,
    }
}

/// `x / sqrt(2)` or a product of `x` and constants equal to `1/sqrt(2)`.
fn match_erf_arg(g: &Graph, arg: ValueId) -> Option<ValueId> {
    let node = g.node(g.value(arg).producer?);
    if node.op == Op::Div {
        let c = scalar_const(g, node.inputs[1])?;
        return approx(c, std::f64::consts::SQRT_2, TOL).then_some(node.inputs[0]);
    }
    let (x, scale) = single_leaf_times_const(g, arg)?;
    approx(scale, std::f64::consts::FRAC_1_SQRT_2, TOL).then_some(x)
}

/// `sqrt(2/pi) * (x + 0.044715 * x^3)` with the sum in either order.
fn match_tanh_arg(g: &Graph, arg: ValueId) -> Option<ValueId> {
    let (sum, scale) = single_leaf_times_const(g, arg)?;
    if !approx(scale, (2.0 / std::f64::consts::PI).sqrt(), TOL) {
        return None;
    }
    let node = g.node(g.value(sum).producer?);
    if node.op != Op::Add {
        return None;
    }
    let (p, q) = (node.inputs[0], node.inputs[1]);
    [(p, q), (q, p)]
        .into_iter()
        .find(|&(x, cube)| is_scaled_cube(g, cube, x))
        .map(|(x, _)| x)
}

/// Whether `v` is `0.044715 * x^3` (as `pow(x, 3)` or `x * x * x`, any association).
fn is_scaled_cube(g: &Graph, v: ValueId, x: ValueId) -> bool {
    let leaves = flatten_mul(g, v, &[x]);
    let mut scale = 1.0;
    let mut nx = 0;
    for &l in &leaves {
        if l == x {
            nx += 1;
        } else if let Some(c) = scalar_const(g, l) {
            scale *= c;
        } else if is_pow(g, l, x, 3.0) {
            nx += 3;
        } else {
            return false;
        }
    }
    nx == 3 && approx(scale, 0.044715, TOL)
}

/// Whether `v` is `pow(x, e)`.
fn is_pow(g: &Graph, v: ValueId, x: ValueId, e: f64) -> bool {
    let Some(p) = g.value(v).producer else {
        return false;
    };
    let node = g.node(p);
    node.op == Op::Pow && node.inputs[0] == x && scalar_const(g, node.inputs[1]) == Some(e)
}

/// If the multiply tree at `v` is one non-constant leaf times constants, returns the leaf
/// and the product of the constants. A bare value is itself times 1.
fn single_leaf_times_const(g: &Graph, v: ValueId) -> Option<(ValueId, f64)> {
    let mut leaf = None;
    let mut scale = 1.0;
    let mut several = false;
    for l in flatten_mul(g, v, &[]) {
        if let Some(c) = scalar_const(g, l) {
            scale *= c;
        } else if leaf.replace(l).is_some() {
            several = true;
        }
    }
    if !several {
        return leaf.map(|l| (l, scale));
    }
    // `x` itself may be a product: accept `mul(x, c)` / `mul(c, x)` one level deep.
    let node = g.node(g.value(v).producer?);
    let (a, b) = (node.inputs[0], node.inputs[1]);
    match (scalar_const(g, a), scalar_const(g, b)) {
        (None, Some(c)) => Some((a, c)),
        (Some(c), None) => Some((b, c)),
        _ => None,
    }
}
