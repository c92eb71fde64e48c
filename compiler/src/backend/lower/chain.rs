//! Elementwise chains on a tile: epilogues (PSUM evictions), prologues, and elementwise
//! kernels all go through [`apply`].
//!
//! Instruction selection, per [`EwOp`]:
//! - unary functions become a ScalarE `Activation`; a preceding `x * s` and/or `+ b` by a
//!   constant or a per-row column is folded into the activation's `scale` and `bias` (the
//!   activation computes `f(x * scale + bias)` in fp32, exactly what the unfused ops do);
//! - constant and per-row-column operands become a VectorE `TensorScalar` (two ops per
//!   instruction, at the cost of one);
//! - full-tile operands (residuals, bias rows) become a VectorE `TensorTensor` (reading the
//!   PSUM tile directly when it is the first op of an eviction: one PSUM plus one SBUF input
//!   costs N cycles, not 2N);
//! - `Select` becomes `Select`; `Cast` a copy into a tile of that dtype;
//! - `pow` runs on GpSimd (as on the real chip), which cannot read PSUM;
//! - a full-tile step with every operand in SBUF after an earlier VectorE step of the same
//!   chain runs on GpSimd (same ALU semantics): VectorE would pay 2N cycles for it, and the
//!   two engines then pipeline across tiles (layer norm: `* gamma` on VectorE, `+ beta` on
//!   GpSimd; a matmul eviction: the bias add reading PSUM on VectorE, the residual on
//!   GpSimd).
//!
//! Intermediates live in the `work` tile (the kernel's `act_dtype`); the last instruction
//! writes `out` directly, so the store can start from it.

use super::LowerCtx;
use crate::error::CompileError;
use crate::ir::GeluApprox;
use crate::kernel::{BinaryFn, EwOp, UnaryFn};
use neuron_isa::{ActFunc, AluOp, Ap, Dtype, Engine, Memory, Op, Operand};

/// Bytes per element of the `cast` scratch: the cast result (up to 4 bytes) and a 4-byte
/// temporary for float-to-integer truncation.
pub const CAST_BYTES: u64 = 8;

/// An operand tile loaded for the current output tile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OpTile {
    /// The operand's values for every element of the tile.
    Full(Ap),
    /// One value per row (`[P, 1]`), broadcast along the free axes.
    Column(Ap),
}

/// The tiles a chain works with.
#[derive(Debug, Clone)]
pub struct ChainTiles<'t> {
    /// Where the value starts (SBUF or PSUM).
    pub src: Ap,
    /// SBUF scratch of the kernel's intermediate dtype, same shape as `src`.
    pub work: Ap,
    /// SBUF scratch for `Cast` steps, same shape, with room for [`CAST_BYTES`] bytes per
    /// element (a cast tile and a temporary); `None` if the chain has no casts.
    pub cast: Option<Ap>,
    /// The final destination.
    pub out: Ap,
    /// Operand tiles by kernel-input index.
    pub operands: &'t [Option<OpTile>],
}

#[derive(Debug, Clone)]
enum Micro {
    Act {
        func: ActFunc,
        scale: Operand,
        bias: Option<Operand>,
    },
    Ts {
        ops: Vec<(AluOp, Operand, bool)>,
    },
    Tt {
        op: AluOp,
        other: Ap,
        cur_first: bool,
    },
    Sel {
        pred: Ap,
        other: Ap,
        cur_true: bool,
    },
    Cast(Dtype),
    Copy,
}

/// The ALU op of a binary function.
pub fn alu(op: BinaryFn) -> AluOp {
    match op {
        BinaryFn::Add => AluOp::Add,
        BinaryFn::Sub => AluOp::Sub,
        BinaryFn::Mul => AluOp::Mul,
        BinaryFn::Div => AluOp::Div,
        BinaryFn::Max => AluOp::Max,
        BinaryFn::Min => AluOp::Min,
        BinaryFn::Pow => AluOp::Pow,
    }
}

/// The activation function of a unary function, or `None` for `Neg` (a multiply).
pub fn act_func(f: UnaryFn) -> Option<ActFunc> {
    Some(match f {
        UnaryFn::Neg => return None,
        UnaryFn::Abs => ActFunc::Abs,
        UnaryFn::Exp => ActFunc::Exp,
        UnaryFn::Log => ActFunc::Log,
        UnaryFn::Sqrt => ActFunc::Sqrt,
        UnaryFn::Rsqrt => ActFunc::Rsqrt,
        UnaryFn::Reciprocal => ActFunc::Reciprocal,
        UnaryFn::Relu => ActFunc::Relu,
        UnaryFn::Sigmoid => ActFunc::Sigmoid,
        UnaryFn::Tanh => ActFunc::Tanh,
        UnaryFn::Erf => ActFunc::Erf,
        UnaryFn::Silu => ActFunc::Silu,
        UnaryFn::Gelu(GeluApprox::None) => ActFunc::Gelu,
        UnaryFn::Gelu(GeluApprox::Tanh) => ActFunc::GeluTanh,
        UnaryFn::Square => ActFunc::Square,
    })
}

/// Tries to express pending scalar ops as an activation's `(scale, bias)`.
fn as_affine(p: &[(AluOp, Operand, bool)]) -> Option<(Operand, Option<Operand>)> {
    let neg = |o: &Operand| match o {
        Operand::Imm(v) => Some(Operand::Imm(-v)),
        Operand::PerPartition(_) => None,
    };
    match p {
        [] => Some((Operand::Imm(1.0), None)),
        [(AluOp::Mul, s, _)] => Some((s.clone(), None)),
        [(AluOp::Add, b, _)] => Some((Operand::Imm(1.0), Some(b.clone()))),
        [(AluOp::Sub, c, false)] => Some((Operand::Imm(1.0), Some(neg(c)?))),
        // c - x = -1 * x + c.
        [(AluOp::Sub, c, true)] => Some((Operand::Imm(-1.0), Some(c.clone()))),
        [(AluOp::Mul, s, _), (AluOp::Add, b, _)] => Some((s.clone(), Some(b.clone()))),
        [(AluOp::Mul, s, _), (AluOp::Sub, c, false)] => Some((s.clone(), Some(neg(c)?))),
        [(AluOp::Mul, s, _), (AluOp::Sub, c, true)] => Some((neg(s)?, Some(c.clone()))),
        _ => None,
    }
}

fn flush(pending: &mut Vec<(AluOp, Operand, bool)>, micros: &mut Vec<Micro>) {
    if !pending.is_empty() {
        micros.push(Micro::Ts {
            ops: std::mem::take(pending),
        });
    }
}

fn plan(
    ctx: &LowerCtx<'_>,
    ops: &[EwOp],
    operands: &[Option<OpTile>],
) -> Result<Vec<Micro>, CompileError> {
    let get = |i: usize| {
        operands
            .get(i)
            .and_then(Option::as_ref)
            .ok_or_else(|| ctx.err(format!("internal: operand {i} of the chain was not loaded")))
    };
    let full = |i: usize| match get(i)? {
        OpTile::Full(ap) => Ok(ap.clone()),
        OpTile::Column(_) => Err(ctx.err(format!("internal: operand {i} must be a full tile"))),
    };
    let mut micros = Vec::new();
    let mut pending: Vec<(AluOp, Operand, bool)> = Vec::new();
    let push_scalar = |pending: &mut Vec<_>, micros: &mut Vec<Micro>, s: (AluOp, Operand, bool)| {
        if pending.len() == 2 {
            flush(pending, micros);
        }
        pending.push(s);
    };
    for op in ops {
        match op {
            EwOp::Unary(f) => match act_func(*f) {
                None => push_scalar(
                    &mut pending,
                    &mut micros,
                    (AluOp::Mul, Operand::Imm(-1.0), false),
                ),
                Some(func) => {
                    let (scale, bias) = match as_affine(&pending) {
                        Some(sb) => {
                            pending.clear();
                            sb
                        }
                        None => {
                            flush(&mut pending, &mut micros);
                            (Operand::Imm(1.0), None)
                        }
                    };
                    micros.push(Micro::Act { func, scale, bias });
                }
            },
            EwOp::Scalar {
                op,
                value,
                reversed,
            } => push_scalar(
                &mut pending,
                &mut micros,
                (alu(*op), Operand::Imm(*value), *reversed),
            ),
            EwOp::Tensor {
                op,
                operand,
                reversed,
            } => match get(*operand)? {
                OpTile::Column(col) => push_scalar(
                    &mut pending,
                    &mut micros,
                    (alu(*op), Operand::PerPartition(col.clone()), *reversed),
                ),
                OpTile::Full(t) => {
                    flush(&mut pending, &mut micros);
                    micros.push(Micro::Tt {
                        op: alu(*op),
                        other: t.clone(),
                        cur_first: !reversed,
                    });
                }
            },
            EwOp::Select {
                cond,
                other,
                reversed,
            } => {
                flush(&mut pending, &mut micros);
                micros.push(Micro::Sel {
                    pred: full(*cond)?,
                    other: full(*other)?,
                    cur_true: !reversed,
                });
            }
            EwOp::Cast(d) => {
                flush(&mut pending, &mut micros);
                micros.push(Micro::Cast(*d));
            }
        }
    }
    flush(&mut pending, &mut micros);
    Ok(micros)
}

/// Applies `ops` to `tiles.src`, leaving the result in `tiles.out`; returns the pattern
/// holding the result (`src` itself when the chain is empty and `src` already is an SBUF
/// tile of the output dtype).
pub fn apply(
    ctx: &mut LowerCtx<'_>,
    ops: &[EwOp],
    tiles: &ChainTiles<'_>,
) -> Result<Ap, CompileError> {
    let mut micros = plan(ctx, ops, tiles.operands)?;
    match micros.last() {
        None if tiles.src.mem == Memory::Sbuf && tiles.src.dtype == tiles.out.dtype => {
            return Ok(tiles.src.clone());
        }
        None => micros.push(Micro::Copy),
        Some(Micro::Cast(d)) if *d != tiles.out.dtype => micros.push(Micro::Copy),
        Some(_) => {}
    }
    let mut cur = tiles.src.clone();
    let n = micros.len();
    // VectorE steps emitted so far by this chain (see `offload` below).
    let mut vector_steps = 0usize;
    for (i, m) in micros.into_iter().enumerate() {
        let dst = if i + 1 == n {
            tiles.out.clone()
        } else if let Micro::Cast(d) = m {
            let cast = tiles
                .cast
                .as_ref()
                .ok_or_else(|| ctx.err("internal: a cast step has no scratch tile"))?;
            super::super::layout::retyped(cast, super::on_chip_dtype(d))
        } else {
            tiles.work.clone()
        };
        let uses_pow = match &m {
            Micro::Ts { ops } => ops.iter().any(|o| o.0 == AluOp::Pow),
            Micro::Tt { op, .. } => *op == AluOp::Pow,
            _ => false,
        };
        if uses_pow && cur.mem == Memory::Psum {
            // GpSimd cannot read PSUM: evict first.
            ctx.copy_on(Engine::Vector, tiles.work.clone(), cur.clone());
            cur = tiles.work.clone();
        }
        // A full-tile op with every operand in SBUF costs VectorE 2N cycles (trainium.md
        // 2.3); when VectorE already took an earlier step of this chain, GpSimd (same ALU
        // semantics, SBUF only) takes it instead, so the two engines pipeline across tiles
        // (a layer norm's `* gamma` on VectorE, `+ beta` on GpSimd).
        let offload = match &m {
            Micro::Tt { other, .. } => {
                vector_steps > 0
                    && cur.mem == Memory::Sbuf
                    && other.mem == Memory::Sbuf
                    && dst.mem == Memory::Sbuf
            }
            _ => false,
        };
        let pow_engine = if uses_pow || offload {
            Engine::GpSimd
        } else {
            Engine::Vector
        };
        if matches!(m, Micro::Ts { .. } | Micro::Tt { .. } | Micro::Sel { .. }) && !offload {
            vector_steps += 1;
        }
        match m {
            Micro::Act { func, scale, bias } => {
                ctx.push(
                    Engine::Scalar,
                    Op::Activation {
                        dst: dst.clone(),
                        src: cur,
                        func,
                        scale,
                        bias,
                        accum: None,
                    },
                );
            }
            Micro::Ts { ops } => {
                let (op0, operand0, reverse0) = ops[0].clone();
                let (op1, operand1, reverse1) =
                    ops.get(1)
                        .cloned()
                        .unwrap_or((AluOp::Bypass, Operand::Imm(0.0), false));
                ctx.push(
                    pow_engine,
                    Op::TensorScalar {
                        dst: dst.clone(),
                        src: cur,
                        op0,
                        operand0,
                        reverse0,
                        op1,
                        operand1,
                        reverse1,
                    },
                );
            }
            Micro::Tt {
                op,
                other,
                cur_first,
            } => {
                let (a, b) = if cur_first {
                    (cur, other)
                } else {
                    (other, cur)
                };
                ctx.push(
                    pow_engine,
                    Op::TensorTensor {
                        dst: dst.clone(),
                        a,
                        b,
                        op,
                    },
                );
            }
            Micro::Sel {
                pred,
                other,
                cur_true,
            } => {
                let (on_true, on_false) = if cur_true { (cur, other) } else { (other, cur) };
                ctx.push(
                    Engine::Vector,
                    Op::Select {
                        dst: dst.clone(),
                        pred,
                        on_true,
                        on_false,
                    },
                );
            }
            Micro::Cast(d) => {
                cast_step(ctx, d, &dst, cur, tiles)?;
            }
            Micro::Copy => {
                let e = ctx.evict_engine();
                ctx.copy_on(e, dst.clone(), cur);
            }
        }
        cur = dst;
    }
    Ok(cur)
}

fn ts(dst: Ap, src: Ap, op0: AluOp, v0: f32, op1: AluOp, v1: f32) -> Op {
    Op::TensorScalar {
        dst,
        src,
        op0,
        operand0: Operand::Imm(v0),
        reverse0: false,
        op1,
        operand1: Operand::Imm(v1),
        reverse1: false,
    }
}

/// One `Cast` step with the graph's `cast` semantics (the kernel interpreter's
/// `cast_to`): floats round to nearest even (the write does it), booleans are `x != 0`, and
/// integers truncate toward zero and saturate. The hardware write rounds to nearest, so
/// truncation corrects the rounded value `y` by one toward zero where rounding went away
/// from zero: `y - sign(x) * [(y - x) * x > 0]`.
fn cast_step(
    ctx: &mut LowerCtx<'_>,
    d: Dtype,
    dst: &Ap,
    cur: Ap,
    tiles: &ChainTiles<'_>,
) -> Result<(), CompileError> {
    match d {
        Dtype::U8 => {
            ctx.push(
                Engine::Vector,
                ts(dst.clone(), cur, AluOp::IsNe, 0.0, AluOp::Bypass, 0.0),
            );
        }
        Dtype::I8 | Dtype::I32 | Dtype::I64 => {
            let cast = tiles
                .cast
                .as_ref()
                .ok_or_else(|| ctx.err("internal: an integer cast has no scratch tile"))?;
            let mut cur = cur;
            if cur.mem == Memory::Psum || (cur.offset == dst.offset && cur.mem == dst.mem) {
                ctx.copy_on(Engine::Vector, tiles.work.clone(), cur);
                cur = tiles.work.clone();
            }
            let tmp = Ap {
                dtype: Dtype::F32,
                offset: cast.offset + cast.free_elems() * 4,
                ..cast.clone()
            };
            let y = dst.clone();
            let tt = |dst: &Ap, a: &Ap, b: &Ap, op: AluOp| Op::TensorTensor {
                dst: dst.clone(),
                a: a.clone(),
                b: b.clone(),
                op,
            };
            ctx.copy_on(Engine::Vector, y.clone(), cur.clone());
            ctx.push(Engine::Vector, tt(&tmp, &y, &cur, AluOp::Sub));
            ctx.push(Engine::Vector, tt(&tmp, &tmp, &cur, AluOp::Mul));
            ctx.push(
                Engine::Vector,
                ts(
                    tmp.clone(),
                    tmp.clone(),
                    AluOp::IsGt,
                    0.0,
                    AluOp::Bypass,
                    0.0,
                ),
            );
            let sign = tiles.work.clone();
            ctx.push(
                Engine::Scalar,
                Op::Activation {
                    dst: sign.clone(),
                    src: cur,
                    func: ActFunc::Sign,
                    scale: Operand::Imm(1.0),
                    bias: None,
                    accum: None,
                },
            );
            ctx.push(Engine::Vector, tt(&tmp, &tmp, &sign, AluOp::Mul));
            ctx.push(Engine::Vector, tt(dst, &y, &tmp, AluOp::Sub));
        }
        _ => {
            let e = ctx.evict_engine();
            ctx.copy_on(e, dst.clone(), cur);
        }
    }
    Ok(())
}

/// Whether `ops` contains a `Cast` step (the caller then provides a cast scratch tile).
pub fn has_cast(ops: &[EwOp]) -> bool {
    ops.iter().any(|o| matches!(o, EwOp::Cast(_)))
}

/// Whether kernel input `i` is read by a `Select` of `ops` (and so must be loaded as a full
/// tile: the select instruction has no broadcast operand form).
pub fn selected(ops: &[EwOp], i: usize) -> bool {
    ops.iter()
        .any(|o| matches!(o, EwOp::Select { cond, other, .. } if *cond == i || *other == i))
}
