//! Translation of elementwise graph nodes into kernel micro-ops ([`EwOp`]s) applied to a
//! kernel's running value, and the operand table a kernel's views are collected in.

use crate::CompileError;
use crate::ir::{DType, Graph, NodeId, Op, ValueId};
use crate::kernel::{BinaryFn, EwOp, UnaryFn, View};
use neuron_isa::Dtype;

use super::rewrite::scalar_const;

/// The input views of a kernel under construction; equal views share one index.
#[derive(Debug, Clone, Default)]
pub struct Operands {
    /// The views, in first-use order.
    pub views: Vec<View>,
}

impl Operands {
    /// The index of `v`, adding it if new.
    pub fn add(&mut self, v: View) -> usize {
        if let Some(i) = self.views.iter().position(|w| *w == v) {
            return i;
        }
        self.views.push(v);
        self.views.len() - 1
    }
}

/// The chip storage type of a graph dtype (booleans are stored as `u8` 0/1).
pub fn isa_dtype(d: DType) -> Dtype {
    match d {
        DType::F32 => Dtype::F32,
        DType::Bf16 => Dtype::Bf16,
        DType::F16 => Dtype::F16,
        DType::I8 => Dtype::I8,
        DType::I32 => Dtype::I32,
        DType::I64 => Dtype::I64,
        DType::Bool => Dtype::U8,
    }
}

/// The kernel form of a one-input elementwise op.
pub fn unary_fn(op: &Op) -> Option<UnaryFn> {
    Some(match op {
        Op::Neg => UnaryFn::Neg,
        Op::Abs => UnaryFn::Abs,
        Op::Exp => UnaryFn::Exp,
        Op::Log => UnaryFn::Log,
        Op::Sqrt => UnaryFn::Sqrt,
        Op::Rsqrt => UnaryFn::Rsqrt,
        Op::Reciprocal => UnaryFn::Reciprocal,
        Op::Relu => UnaryFn::Relu,
        Op::Sigmoid => UnaryFn::Sigmoid,
        Op::Tanh => UnaryFn::Tanh,
        Op::Erf => UnaryFn::Erf,
        Op::Silu => UnaryFn::Silu,
        Op::Gelu { approximate } => UnaryFn::Gelu(*approximate),
        _ => return None,
    })
}

/// The kernel form of a two-input elementwise op.
pub fn binary_fn(op: &Op) -> Option<BinaryFn> {
    Some(match op {
        Op::Add => BinaryFn::Add,
        Op::Sub => BinaryFn::Sub,
        Op::Mul => BinaryFn::Mul,
        Op::Div => BinaryFn::Div,
        Op::Max => BinaryFn::Max,
        Op::Min => BinaryFn::Min,
        Op::Pow => BinaryFn::Pow,
        _ => return None,
    })
}

fn commutative(f: BinaryFn) -> bool {
    matches!(
        f,
        BinaryFn::Add | BinaryFn::Mul | BinaryFn::Max | BinaryFn::Min
    )
}

/// The micro-op computing elementwise node `n` from the running value `acc` (one of its
/// operands). Other operands become scalar immediates when they are scalar constants,
/// else views added to `operands` (looked up with `view_of`).
pub fn ew_op(
    g: &Graph,
    n: NodeId,
    acc: ValueId,
    operands: &mut Operands,
    view_of: &mut dyn FnMut(ValueId) -> Result<View, CompileError>,
) -> Result<EwOp, CompileError> {
    let node = g.node(n);
    let bad = || {
        CompileError::Internal(format!(
            "node '{}' (node {}) does not read the running value {acc} of its kernel",
            node.name, n.0
        ))
    };
    if let Some(u) = unary_fn(&node.op) {
        return Ok(EwOp::Unary(u));
    }
    if let Op::Cast { dtype } = node.op {
        return Ok(EwOp::Cast(isa_dtype(dtype)));
    }
    if let Some(f) = binary_fn(&node.op) {
        let (other, reversed) = if node.inputs[0] == acc {
            (node.inputs[1], false)
        } else if node.inputs[1] == acc {
            (node.inputs[0], true)
        } else {
            return Err(bad());
        };
        let reversed = reversed && !commutative(f);
        if let Some(c) = scalar_const(g, other) {
            return Ok(EwOp::Scalar {
                op: f,
                value: c as f32,
                reversed,
            });
        }
        let operand = operands.add(view_of(other)?);
        return Ok(EwOp::Tensor {
            op: f,
            operand,
            reversed,
        });
    }
    if node.op == Op::Where {
        let (c, a, b) = (node.inputs[0], node.inputs[1], node.inputs[2]);
        let (other, reversed) = if a == acc {
            (b, false)
        } else if b == acc {
            (a, true)
        } else {
            return Err(bad());
        };
        let cond = operands.add(view_of(c)?);
        let other = operands.add(view_of(other)?);
        return Ok(EwOp::Select {
            cond,
            other,
            reversed,
        });
    }
    Err(CompileError::Internal(format!(
        "node '{}' (node {}) with op {} is not elementwise",
        node.name,
        n.0,
        node.op.name()
    )))
}
