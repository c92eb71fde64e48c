//! Node-by-node evaluation.

use std::collections::BTreeMap;

use ndarray::ArrayD;

use super::ops::conv::{ConvParams, conv2d};
use super::ops::elementwise::{
    binary_map, float_binary, float_unary, int_binary, int_unary, select,
};
use super::ops::layout::{concat, gather, reshape, slice, transpose};
use super::ops::matmul::matmul;
use super::ops::norm::{batch_norm, normalize, softmax};
use super::ops::pool::{PoolParams, pool2d};
use super::ops::reduce::{Reduce, global_avg_pool, reduce};
use super::value::{RVal, map_rval, round_to};
use super::{Real, RefError};
use crate::ir::shape_infer::{normalize_axis, reduce_axes, slice_plan};
use crate::ir::{DType, Graph, Op, Tensor, TensorType, fmt_shape};

/// Reference executor options.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RefOptions {
    /// Compute in f64 instead of f32. f32-typed results are then returned
    /// as [`Tensor::F64`]; bf16/f16 values are still rounded to their dtype.
    pub f64: bool,
}

/// Evaluates `graph` on `inputs` (one tensor per graph input, by name) and
/// returns the graph outputs by name.
///
/// Inputs must match the declared shape and dtype exactly (an f64 tensor is
/// accepted for an f32 input).
pub fn run_reference(
    graph: &Graph,
    inputs: &BTreeMap<String, Tensor>,
    opts: RefOptions,
) -> Result<BTreeMap<String, Tensor>, RefError> {
    let all = run_reference_all(graph, inputs, opts)?;
    Ok(graph
        .outputs
        .iter()
        .map(|&id| (graph.value(id).name.clone(), all[id.index()].clone()))
        .collect())
}

/// Like [`run_reference`], but returns every value of the graph (inputs,
/// params and all intermediates), indexed by [`ValueId`](crate::ir::ValueId).
pub fn run_reference_all(
    graph: &Graph,
    inputs: &BTreeMap<String, Tensor>,
    opts: RefOptions,
) -> Result<Vec<Tensor>, RefError> {
    graph.verify()?;
    // Each param is held once as stored and once as the executor's working copy.
    let work = if opts.f64 { 8 } else { 4 };
    let needed = graph.params.iter().fold(0u64, |acc, &id| {
        let v = graph.value(id);
        let n = v.shape.iter().product::<usize>() as u64;
        acc.saturating_add(n.saturating_mul(v.dtype.size_bytes() as u64 + work))
    });
    crate::ir::limits::check_host_memory(needed, "the params of the reference executor")?;
    check_inputs(graph, inputs)?;
    if opts.f64 {
        evaluate::<f64>(graph, inputs)
    } else {
        evaluate::<f32>(graph, inputs)
    }
}

fn check_inputs(graph: &Graph, inputs: &BTreeMap<String, Tensor>) -> Result<(), RefError> {
    for name in inputs.keys() {
        if !graph.inputs.iter().any(|&i| graph.value(i).name == *name) {
            let known: Vec<&str> = graph
                .inputs
                .iter()
                .map(|&i| graph.value(i).name.as_str())
                .collect();
            return Err(RefError::UnknownInput {
                name: name.clone(),
                known: known.join(", "),
            });
        }
    }
    for &id in &graph.inputs {
        let v = graph.value(id);
        let expected = TensorType::new(v.shape.clone(), v.dtype).to_string();
        let Some(t) = inputs.get(&v.name) else {
            return Err(RefError::MissingInput {
                name: v.name.clone(),
                expected,
            });
        };
        if t.shape() != v.shape.as_slice() || t.dtype() != v.dtype {
            return Err(RefError::InputMismatch {
                name: v.name.clone(),
                expected,
                found: format!("{} {}", fmt_shape(t.shape()), t.elem_name()),
            });
        }
    }
    Ok(())
}

fn evaluate<F: Real>(
    graph: &Graph,
    inputs: &BTreeMap<String, Tensor>,
) -> Result<Vec<Tensor>, RefError> {
    let mut vals: Vec<Option<RVal<F>>> = vec![None; graph.values.len()];
    for &id in &graph.inputs {
        let v = graph.value(id);
        if let Some(t) = inputs.get(&v.name) {
            vals[id.index()] = Some(RVal::from_tensor(t));
        }
    }
    for &id in &graph.params {
        let v = graph.value(id);
        let t = v.data.as_ref().ok_or_else(|| RefError::NoParamData {
            name: v.name.clone(),
            id: id.to_string(),
        })?;
        vals[id.index()] = Some(RVal::from_tensor(t));
    }
    for (index, node) in graph.nodes.iter().enumerate() {
        let fail = |message: String| RefError::Node {
            node: node.name.clone(),
            index,
            op: node.op.name(),
            message,
        };
        let args: Vec<&RVal<F>> = node
            .inputs
            .iter()
            .map(|&i| {
                vals[i.index()]
                    .as_ref()
                    .ok_or_else(|| fail(format!("input {i} has no value")))
            })
            .collect::<Result<_, _>>()?;
        let out = graph.value(node.outputs[0]);
        tracing::trace!(node = %node.name, op = node.op.name(), "evaluate");
        let result = eval_node(&node.op, &args, &out.shape, out.dtype).map_err(fail)?;
        let result = match result {
            RVal::F(a) if matches!(out.dtype, DType::Bf16 | DType::F16) => {
                RVal::F(a.mapv(|x| round_to(x, out.dtype)))
            }
            r => r,
        };
        if result.shape() != out.shape.as_slice() {
            return Err(fail(format!(
                "produced shape {}, expected {}",
                fmt_shape(result.shape()),
                fmt_shape(&out.shape)
            )));
        }
        vals[node.outputs[0].index()] = Some(result);
    }
    graph
        .value_ids()
        .map(|id| {
            let v = graph.value(id);
            vals[id.index()]
                .as_ref()
                .map(|r| r.to_tensor(v.dtype))
                .ok_or_else(|| {
                    RefError::Graph(crate::ir::GraphError::Invariant(format!(
                        "value {id} '{}' was never computed",
                        v.name
                    )))
                })
        })
        .collect()
}

fn float<F>(v: &RVal<F>) -> Result<&ArrayD<F>, String> {
    match v {
        RVal::F(a) => Ok(a),
        _ => Err("expected a float operand".into()),
    }
}

fn axis(a: i64, rank: usize) -> Result<usize, String> {
    normalize_axis(a, rank).ok_or_else(|| format!("axis {a} out of range for rank {rank}"))
}

/// One float op of the reference executor on f64 operands, without a graph: what an error
/// analysis needs (e.g. a convolution of `|x|` by `|w|`, the same loops as the op's own).
/// `out_shape` is the result's shape as shape inference gives it.
pub fn eval_op_f64(
    op: &Op,
    args: &[ArrayD<f64>],
    out_shape: &[usize],
) -> Result<ArrayD<f64>, String> {
    let vals: Vec<RVal<f64>> = args.iter().map(|a| RVal::F(a.clone())).collect();
    let refs: Vec<&RVal<f64>> = vals.iter().collect();
    match eval_node(op, &refs, out_shape, DType::F32)? {
        RVal::F(a) => Ok(a),
        _ => Err(format!("{} does not give a float result", op.name())),
    }
}

fn eval_node<F: Real>(
    op: &Op,
    args: &[&RVal<F>],
    out_shape: &[usize],
    out_dtype: DType,
) -> Result<RVal<F>, String> {
    if let Some(f) = float_binary::<F>(op) {
        return match (args[0], args[1]) {
            (RVal::F(a), RVal::F(b)) => Ok(RVal::F(binary_map(a, b, out_shape, f)?)),
            (a, b) => {
                let g = int_binary(op).ok_or("integer operands need add, sub, mul, max or min")?;
                let (Some(ai), Some(bi)) = (a.ints(), b.ints()) else {
                    return Err("operands must both be numeric".into());
                };
                let r = Tensor::I64(binary_map(&ai, &bi, out_shape, g)?).cast(out_dtype);
                Ok(RVal::from_tensor(&r))
            }
        };
    }
    if let Some(f) = float_unary::<F>(op) {
        return match args[0] {
            RVal::F(a) => Ok(RVal::F(a.mapv(f))),
            v => {
                let g = int_unary(op).ok_or("this op needs a float operand")?;
                let ai = v.ints().ok_or("operand must be numeric")?;
                Ok(RVal::from_tensor(&Tensor::I64(ai.mapv(g)).cast(out_dtype)))
            }
        };
    }
    Ok(match op {
        Op::MatMul { transpose_b } => RVal::F(matmul(
            float(args[0])?,
            float(args[1])?,
            *transpose_b,
            out_shape,
        )?),
        Op::Softmax { axis: a } => {
            let x = float(args[0])?;
            RVal::F(softmax(x, axis(*a, x.ndim())?))
        }
        Op::LayerNorm { axis: a, epsilon } | Op::RmsNorm { axis: a, epsilon } => {
            let x = float(args[0])?;
            let gamma = args.get(1).map(|v| float(v)).transpose()?;
            let beta = args.get(2).map(|v| float(v)).transpose()?;
            let rms = matches!(op, Op::RmsNorm { .. });
            RVal::F(normalize(
                x,
                axis(*a, x.ndim())?,
                *epsilon,
                gamma,
                beta,
                rms,
            )?)
        }
        Op::BatchNorm { epsilon } => {
            let p = [
                float(args[1])?,
                float(args[2])?,
                float(args[3])?,
                float(args[4])?,
            ];
            RVal::F(batch_norm(float(args[0])?, p, *epsilon)?)
        }
        Op::ReduceSum { axes, keepdims }
        | Op::ReduceMean { axes, keepdims }
        | Op::ReduceMax { axes, keepdims } => {
            let x = float(args[0])?;
            let axes = reduce_axes(axes, x.ndim()).map_err(|e| e.message)?;
            let kind = match op {
                Op::ReduceSum { .. } => Reduce::Sum,
                Op::ReduceMean { .. } => Reduce::Mean,
                _ => Reduce::Max,
            };
            RVal::F(reduce(x, &axes, *keepdims, kind))
        }
        Op::GlobalAvgPool => RVal::F(global_avg_pool(float(args[0])?)),
        Op::Transpose { perm } => map_rval!(args[0], a => transpose(a, perm)),
        Op::Reshape { .. } => map_rval!(args[0], a => reshape(a, out_shape)?),
        Op::Concat { axis: a } => {
            let ax = axis(*a, args[0].shape().len())?;
            macro_rules! cat {
                ($variant:ident) => {{
                    let parts = args
                        .iter()
                        .map(|v| match v {
                            RVal::$variant(x) => Ok(x),
                            _ => Err("concat operands have different dtypes".to_string()),
                        })
                        .collect::<Result<Vec<_>, _>>()?;
                    RVal::$variant(concat(&parts, ax)?)
                }};
            }
            match args[0] {
                RVal::F(_) => cat!(F),
                RVal::I8(_) => cat!(I8),
                RVal::I32(_) => cat!(I32),
                RVal::I64(_) => cat!(I64),
                RVal::Bool(_) => cat!(Bool),
            }
        }
        Op::Slice {
            axes,
            starts,
            ends,
            steps,
        } => {
            let plan =
                slice_plan(args[0].shape(), axes, starts, ends, steps).map_err(|e| e.message)?;
            map_rval!(args[0], a => slice(a, &plan))
        }
        Op::Gather { axis: a } => {
            let ax = axis(*a, args[0].shape().len())?;
            let idx = args[1].ints().ok_or("gather indices must be integers")?;
            map_rval!(args[0], d => gather(d, &idx, ax)?)
        }
        Op::Where => {
            let RVal::Bool(c) = args[0] else {
                return Err("where condition must be bool".into());
            };
            match (args[1], args[2]) {
                (RVal::F(a), RVal::F(b)) => RVal::F(select(c, a, b, out_shape)?),
                (RVal::I8(a), RVal::I8(b)) => RVal::I8(select(c, a, b, out_shape)?),
                (RVal::I32(a), RVal::I32(b)) => RVal::I32(select(c, a, b, out_shape)?),
                (RVal::I64(a), RVal::I64(b)) => RVal::I64(select(c, a, b, out_shape)?),
                (RVal::Bool(a), RVal::Bool(b)) => RVal::Bool(select(c, a, b, out_shape)?),
                _ => return Err("where branches have different dtypes".into()),
            }
        }
        Op::Cast { dtype } => cast(args[0], *dtype),
        Op::Conv2d {
            strides,
            pads,
            dilations,
            groups,
        } => {
            let bias = args.get(2).map(|v| float(v)).transpose()?;
            let p = ConvParams {
                strides: *strides,
                pads: *pads,
                dilations: *dilations,
                groups: *groups,
            };
            RVal::F(conv2d(
                float(args[0])?,
                float(args[1])?,
                bias,
                p,
                out_shape,
            )?)
        }
        Op::MaxPool2d {
            kernel,
            strides,
            pads,
        } => {
            let p = PoolParams {
                kernel: *kernel,
                strides: *strides,
                pads: *pads,
                avg_count_include_pad: None,
            };
            RVal::F(pool2d(float(args[0])?, p, out_shape)?)
        }
        Op::AvgPool2d {
            kernel,
            strides,
            pads,
            count_include_pad,
        } => {
            let p = PoolParams {
                kernel: *kernel,
                strides: *strides,
                pads: *pads,
                avg_count_include_pad: Some(*count_include_pad),
            };
            RVal::F(pool2d(float(args[0])?, p, out_shape)?)
        }
        other => {
            return Err(format!(
                "op {} has no reference implementation",
                other.name()
            ));
        }
    })
}

/// [`Tensor::cast`] semantics; floats go through f64 (exact for f32/bf16/f16)
/// and are then rounded to the target float dtype.
fn cast<F: Real>(v: &RVal<F>, dtype: DType) -> RVal<F> {
    let t = match v {
        RVal::F(a) => Tensor::F64(a.mapv(F::to_f64)),
        other => other.to_tensor(DType::I64),
    };
    if dtype.is_float() {
        // Keep f32 results at compute precision in f64 mode: f32 -> f32 is exact.
        let a = t.to_f64().mapv(|x| round_to(F::from_f64(x), dtype));
        RVal::F(a)
    } else {
        RVal::from_tensor(&t.cast(dtype))
    }
}
