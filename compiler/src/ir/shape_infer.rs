//! Shape and dtype inference: what each op produces from what it is given.

use std::collections::BTreeSet;
use std::fmt;

use super::{DType, Op};

/// The static type of a value: shape and element type.
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub struct TensorType {
    /// Dimensions, outermost first (`[]` for a scalar).
    pub shape: Vec<usize>,
    /// Element type.
    pub dtype: DType,
}

impl TensorType {
    /// A new tensor type.
    pub fn new(shape: impl Into<Vec<usize>>, dtype: DType) -> TensorType {
        TensorType {
            shape: shape.into(),
            dtype,
        }
    }

    /// The rank.
    pub fn rank(&self) -> usize {
        self.shape.len()
    }
}

/// Formats a shape as `[8,512]` (`[]` for a scalar).
pub fn fmt_shape(shape: &[usize]) -> String {
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    format!("[{}]", dims.join(","))
}

impl fmt::Display for TensorType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", fmt_shape(&self.shape), self.dtype)
    }
}

/// The part of a node that an inference error is about.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Site {
    /// The node as a whole (e.g. operands that disagree with each other).
    Node,
    /// The input at this position.
    Input(usize),
    /// The named attribute.
    Attr(&'static str),
}

/// A shape or dtype inference failure, before node context is attached.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct ShapeError {
    /// What the error is about.
    pub site: Site,
    /// Lower-case message saying expected vs found.
    pub message: String,
}

impl fmt::Display for ShapeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

fn err<T>(site: Site, message: impl Into<String>) -> Result<T, ShapeError> {
    Err(ShapeError {
        site,
        message: message.into(),
    })
}

/// Resolves a possibly negative axis against `rank`.
pub fn normalize_axis(axis: i64, rank: usize) -> Option<usize> {
    let r = i64::try_from(rank).ok()?;
    let a = if axis < 0 { axis + r } else { axis };
    (0..r).contains(&a).then_some(a as usize)
}

fn axis_or_err(axis: i64, rank: usize, attr: &'static str) -> Result<usize, ShapeError> {
    normalize_axis(axis, rank).ok_or_else(|| ShapeError {
        site: Site::Attr(attr),
        message: if rank == 0 {
            format!("{attr} {axis} is out of range for a scalar (rank 0 has no axes)")
        } else {
            format!(
                "{attr} {axis} is out of range for rank {rank} (expected {} to {})",
                -(rank as i64),
                rank as i64 - 1
            )
        },
    })
}

/// numpy broadcasting of two shapes, or `None` if they are incompatible.
pub fn broadcast_shapes(a: &[usize], b: &[usize]) -> Option<Vec<usize>> {
    let rank = a.len().max(b.len());
    let mut out = vec![0; rank];
    for (i, o) in out.iter_mut().enumerate() {
        let da = (i + a.len()).checked_sub(rank).map_or(1, |j| a[j]);
        let db = (i + b.len()).checked_sub(rank).map_or(1, |j| b[j]);
        *o = if da == db || db == 1 {
            da
        } else if da == 1 {
            db
        } else {
            return None;
        };
    }
    Some(out)
}

/// One sliced axis after numpy normalization.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct SliceAxis {
    /// The axis (non-negative).
    pub axis: usize,
    /// First index taken.
    pub start: usize,
    /// Distance between taken indices (>= 1).
    pub step: usize,
    /// Number of indices taken (>= 1).
    pub len: usize,
}

/// Normalizes slice attributes against `shape` with numpy semantics: negative
/// starts/ends count from the end, both are clamped to `[0, dim]`, steps >= 1.
///
/// A slice that selects no elements is an error (tensors are never empty).
pub fn slice_plan(
    shape: &[usize],
    axes: &[i64],
    starts: &[i64],
    ends: &[i64],
    steps: &[i64],
) -> Result<Vec<SliceAxis>, ShapeError> {
    let n = starts.len();
    if ends.len() != n {
        return err(
            Site::Attr("ends"),
            format!("ends has {} entries but starts has {n}", ends.len()),
        );
    }
    if !axes.is_empty() && axes.len() != n {
        return err(
            Site::Attr("axes"),
            format!("axes has {} entries but starts has {n}", axes.len()),
        );
    }
    if !steps.is_empty() && steps.len() != n {
        return err(
            Site::Attr("steps"),
            format!("steps has {} entries but starts has {n}", steps.len()),
        );
    }
    let mut seen = BTreeSet::new();
    let mut plan = Vec::with_capacity(n);
    for i in 0..n {
        let axis = if axes.is_empty() {
            if i >= shape.len() {
                return err(
                    Site::Attr("starts"),
                    format!(
                        "starts has {n} entries but the input has rank {}",
                        shape.len()
                    ),
                );
            }
            i
        } else {
            axis_or_err(axes[i], shape.len(), "axes")?
        };
        if !seen.insert(axis) {
            return err(Site::Attr("axes"), format!("axis {axis} is listed twice"));
        }
        let step = if steps.is_empty() { 1 } else { steps[i] };
        if step < 1 {
            return err(
                Site::Attr("steps"),
                format!("steps[{i}] is {step}, expected >= 1"),
            );
        }
        let dim = shape[axis] as i128;
        let clamp = |v: i64| -> i128 {
            let v = v as i128;
            let v = if v < 0 { v + dim } else { v };
            v.clamp(0, dim)
        };
        let (s, e) = (clamp(starts[i]), clamp(ends[i]));
        if s >= dim {
            return err(
                Site::Attr("starts"),
                format!(
                    "starts[{i}] = {} is out of range for axis {axis} of size {dim}",
                    starts[i]
                ),
            );
        }
        if e <= s {
            return err(
                Site::Attr("ends"),
                format!(
                    "slice selects no elements on axis {axis} of size {dim} (start {}, end {}): ends[{i}] must be after starts[{i}]",
                    starts[i], ends[i]
                ),
            );
        }
        let step_i = step as i128;
        let len = (e - s + step_i - 1) / step_i;
        plan.push(SliceAxis {
            axis,
            start: s as usize,
            step: step as usize,
            len: len as usize,
        });
    }
    Ok(plan)
}

/// Resolves `reshape`'s target shape against an element count.
pub fn reshape_target(
    shape: &[i64],
    numel: usize,
    from: &[usize],
) -> Result<Vec<usize>, ShapeError> {
    let mut infer_at = None;
    let mut known: usize = 1;
    let mut out = Vec::with_capacity(shape.len());
    for (i, &d) in shape.iter().enumerate() {
        if d == -1 {
            if infer_at.is_some() {
                return err(Site::Attr("shape"), "shape has more than one -1");
            }
            infer_at = Some(i);
            out.push(1);
        } else if d < 1 {
            return err(
                Site::Attr("shape"),
                format!("shape[{i}] is {d}, expected a size >= 1 or -1"),
            );
        } else {
            let d = usize::try_from(d).map_err(|_| ShapeError {
                site: Site::Attr("shape"),
                message: format!("shape[{i}] = {d} is too large"),
            })?;
            known = known.checked_mul(d).ok_or_else(|| ShapeError {
                site: Site::Attr("shape"),
                message: "shape has too many elements".to_string(),
            })?;
            out.push(d);
        }
    }
    let mismatch = || ShapeError {
        site: Site::Attr("shape"),
        message: format!(
            "cannot reshape {} ({numel} elements) to [{}]",
            fmt_shape(from),
            shape
                .iter()
                .map(|d| d.to_string())
                .collect::<Vec<_>>()
                .join(",")
        ),
    };
    match infer_at {
        Some(i) => {
            if numel % known != 0 {
                return Err(mismatch());
            }
            out[i] = numel / known;
        }
        None if known != numel => return Err(mismatch()),
        None => {}
    }
    Ok(out)
}

/// Resolves reduction axes: valid, distinct, non-empty; returned sorted.
pub fn reduce_axes(axes: &[i64], rank: usize) -> Result<Vec<usize>, ShapeError> {
    if axes.is_empty() {
        return err(
            Site::Attr("axes"),
            "axes is empty, expected at least one axis",
        );
    }
    let mut set = BTreeSet::new();
    for &a in axes {
        let n = axis_or_err(a, rank, "axes")?;
        if !set.insert(n) {
            return err(Site::Attr("axes"), format!("axis {a} is listed twice"));
        }
    }
    Ok(set.into_iter().collect())
}

/// Output spatial size of a windowed op, or `None` if the window does not fit.
pub fn window_out(
    input: usize,
    pad_lo: usize,
    pad_hi: usize,
    kernel: usize,
    dilation: usize,
    stride: usize,
) -> Option<usize> {
    let padded = input as u128 + pad_lo as u128 + pad_hi as u128;
    let eff = (kernel as u128 - 1) * dilation as u128 + 1;
    if eff > padded || stride == 0 {
        return None;
    }
    usize::try_from((padded - eff) / stride as u128 + 1).ok()
}

fn need_float(t: &TensorType, i: usize, op: &str) -> Result<(), ShapeError> {
    if t.dtype.is_float() {
        Ok(())
    } else {
        err(
            Site::Input(i),
            format!(
                "{op} needs a float input (f32, bf16 or f16), found {}",
                t.dtype
            ),
        )
    }
}

fn need_rank(
    t: &TensorType,
    i: usize,
    op: &str,
    rank: usize,
    what: &str,
) -> Result<(), ShapeError> {
    if t.rank() == rank {
        Ok(())
    } else {
        err(
            Site::Input(i),
            format!(
                "{op} expects input {i} ({what}) of rank {rank}, found shape {}",
                fmt_shape(&t.shape)
            ),
        )
    }
}

fn same_dtype(ins: &[TensorType], idx: &[usize], op: &str) -> Result<(), ShapeError> {
    let first = ins[idx[0]].dtype;
    for &i in &idx[1..] {
        if ins[i].dtype != first {
            return err(
                Site::Input(i),
                format!(
                    "{op} needs matching dtypes: input {} is {first}, input {i} is {}",
                    idx[0], ins[i].dtype
                ),
            );
        }
    }
    Ok(())
}

fn exact_shape(t: &TensorType, i: usize, want: &[usize], what: &str) -> Result<(), ShapeError> {
    if t.shape == want {
        Ok(())
    } else {
        err(
            Site::Input(i),
            format!(
                "{what} (input {i}) has shape {}, expected {}",
                fmt_shape(&t.shape),
                fmt_shape(want)
            ),
        )
    }
}

impl Op {
    /// Infers the output types from the input types, checking arity, dtypes,
    /// shapes and attributes against each other.
    ///
    /// Element-count limits are not checked here (see [`crate::ir::limits`]).
    pub fn infer(&self, ins: &[TensorType]) -> Result<Vec<TensorType>, ShapeError> {
        self.check_arity(ins.len()).map_err(|message| ShapeError {
            site: Site::Node,
            message,
        })?;
        let name = self.name();
        let out = match self {
            _ if self.is_binary_elementwise() => {
                same_dtype(ins, &[0, 1], name)?;
                let dt = ins[0].dtype;
                let float_only = matches!(self, Op::Div | Op::Pow);
                if dt == DType::Bool || (float_only && !dt.is_float()) {
                    return err(
                        Site::Input(0),
                        format!(
                            "{name} needs {} inputs, found {dt}",
                            if float_only { "float" } else { "numeric" }
                        ),
                    );
                }
                let shape =
                    broadcast_shapes(&ins[0].shape, &ins[1].shape).ok_or_else(|| ShapeError {
                        site: Site::Node,
                        message: format!(
                            "shapes {} and {} do not broadcast",
                            fmt_shape(&ins[0].shape),
                            fmt_shape(&ins[1].shape)
                        ),
                    })?;
                TensorType::new(shape, dt)
            }
            Op::Neg | Op::Abs | Op::Relu => {
                if ins[0].dtype == DType::Bool {
                    return err(
                        Site::Input(0),
                        format!("{name} needs a numeric input, found bool"),
                    );
                }
                ins[0].clone()
            }
            _ if self.is_unary_elementwise() => {
                need_float(&ins[0], 0, name)?;
                ins[0].clone()
            }
            Op::MatMul { transpose_b } => {
                let (a, b) = (&ins[0], &ins[1]);
                need_float(a, 0, name)?;
                same_dtype(ins, &[0, 1], name)?;
                for (i, t) in [a, b].into_iter().enumerate() {
                    if t.rank() < 2 {
                        return err(
                            Site::Input(i),
                            format!(
                                "matmul needs operands of rank >= 2, input {i} has shape {}",
                                fmt_shape(&t.shape)
                            ),
                        );
                    }
                }
                let (ra, rb) = (a.rank(), b.rank());
                let (m, k) = (a.shape[ra - 2], a.shape[ra - 1]);
                let (k2, n) = if *transpose_b {
                    (b.shape[rb - 1], b.shape[rb - 2])
                } else {
                    (b.shape[rb - 2], b.shape[rb - 1])
                };
                if k != k2 {
                    return err(
                        Site::Node,
                        format!(
                            "matmul inner dimensions differ: {} x {}{} ({k} vs {k2})",
                            fmt_shape(&a.shape),
                            fmt_shape(&b.shape),
                            if *transpose_b {
                                " with transpose_b"
                            } else {
                                ""
                            }
                        ),
                    );
                }
                let mut shape = broadcast_shapes(&a.shape[..ra - 2], &b.shape[..rb - 2])
                    .ok_or_else(|| ShapeError {
                        site: Site::Node,
                        message: format!(
                            "matmul batch dimensions of {} and {} do not broadcast",
                            fmt_shape(&a.shape),
                            fmt_shape(&b.shape)
                        ),
                    })?;
                shape.extend([m, n]);
                TensorType::new(shape, a.dtype)
            }
            Op::Softmax { axis } => {
                need_float(&ins[0], 0, name)?;
                axis_or_err(*axis, ins[0].rank(), "axis")?;
                ins[0].clone()
            }
            Op::LayerNorm { axis, epsilon } | Op::RmsNorm { axis, epsilon } => {
                let x = &ins[0];
                need_float(x, 0, name)?;
                check_epsilon(*epsilon)?;
                let a = axis_or_err(*axis, x.rank(), "axis")?;
                let norm_shape = &x.shape[a..];
                let labels = ["x", "gamma", "beta"];
                for (i, t) in ins.iter().enumerate().skip(1) {
                    same_dtype(ins, &[0, i], name)?;
                    exact_shape(t, i, norm_shape, labels[i])?;
                }
                x.clone()
            }
            Op::BatchNorm { epsilon } => {
                let x = &ins[0];
                need_float(x, 0, name)?;
                check_epsilon(*epsilon)?;
                if x.rank() < 2 {
                    return err(
                        Site::Input(0),
                        format!(
                            "batch_norm needs x of rank >= 2 (channel axis 1), found shape {}",
                            fmt_shape(&x.shape)
                        ),
                    );
                }
                let c = [x.shape[1]];
                let labels = ["x", "scale", "bias", "mean", "var"];
                for (i, t) in ins.iter().enumerate().skip(1) {
                    same_dtype(ins, &[0, i], name)?;
                    exact_shape(t, i, &c, labels[i])?;
                }
                x.clone()
            }
            Op::ReduceSum { axes, keepdims }
            | Op::ReduceMean { axes, keepdims }
            | Op::ReduceMax { axes, keepdims } => {
                need_float(&ins[0], 0, name)?;
                let axes = reduce_axes(axes, ins[0].rank())?;
                let shape = ins[0]
                    .shape
                    .iter()
                    .enumerate()
                    .filter_map(|(i, &d)| match (axes.contains(&i), keepdims) {
                        (false, _) => Some(d),
                        (true, true) => Some(1),
                        (true, false) => None,
                    })
                    .collect::<Vec<_>>();
                TensorType::new(shape, ins[0].dtype)
            }
            Op::Transpose { perm } => {
                let x = &ins[0];
                let mut seen = vec![false; x.rank()];
                let ok = perm.len() == x.rank()
                    && perm
                        .iter()
                        .all(|&p| p < seen.len() && !std::mem::replace(&mut seen[p], true));
                if !ok {
                    return err(
                        Site::Attr("perm"),
                        format!(
                            "perm {:?} is not a permutation of 0..{} for input shape {}",
                            perm,
                            x.rank(),
                            fmt_shape(&x.shape)
                        ),
                    );
                }
                TensorType::new(
                    perm.iter().map(|&p| x.shape[p]).collect::<Vec<_>>(),
                    x.dtype,
                )
            }
            Op::Reshape { shape } => {
                let x = &ins[0];
                let numel = x.shape.iter().product();
                TensorType::new(reshape_target(shape, numel, &x.shape)?, x.dtype)
            }
            Op::Concat { axis } => {
                let first = &ins[0];
                let a = axis_or_err(*axis, first.rank(), "axis")?;
                let idx: Vec<usize> = (0..ins.len()).collect();
                same_dtype(ins, &idx, name)?;
                let mut shape = first.shape.clone();
                for (i, t) in ins.iter().enumerate().skip(1) {
                    let fits = t.rank() == first.rank()
                        && t.shape
                            .iter()
                            .zip(&first.shape)
                            .enumerate()
                            .all(|(j, (x, y))| j == a || x == y);
                    if !fits {
                        return err(
                            Site::Input(i),
                            format!(
                                "concat on axis {a}: input {i} has shape {}, which does not match input 0 shape {} outside axis {a}",
                                fmt_shape(&t.shape),
                                fmt_shape(&first.shape)
                            ),
                        );
                    }
                    shape[a] = shape[a].checked_add(t.shape[a]).ok_or_else(|| ShapeError {
                        site: Site::Node,
                        message: "concat result is too large".to_string(),
                    })?;
                }
                TensorType::new(shape, first.dtype)
            }
            Op::Slice {
                axes,
                starts,
                ends,
                steps,
            } => {
                let x = &ins[0];
                let plan = slice_plan(&x.shape, axes, starts, ends, steps)?;
                let mut shape = x.shape.clone();
                for p in plan {
                    shape[p.axis] = p.len;
                }
                TensorType::new(shape, x.dtype)
            }
            Op::Gather { axis } => {
                let (data, idx) = (&ins[0], &ins[1]);
                let a = axis_or_err(*axis, data.rank(), "axis")?;
                if !matches!(idx.dtype, DType::I32 | DType::I64) {
                    return err(
                        Site::Input(1),
                        format!("gather indices must be i32 or i64, found {}", idx.dtype),
                    );
                }
                let mut shape = data.shape[..a].to_vec();
                shape.extend_from_slice(&idx.shape);
                shape.extend_from_slice(&data.shape[a + 1..]);
                TensorType::new(shape, data.dtype)
            }
            Op::Where => {
                if ins[0].dtype != DType::Bool {
                    return err(
                        Site::Input(0),
                        format!("where condition must be bool, found {}", ins[0].dtype),
                    );
                }
                same_dtype(ins, &[1, 2], name)?;
                let shape = broadcast_shapes(&ins[0].shape, &ins[1].shape)
                    .and_then(|s| broadcast_shapes(&s, &ins[2].shape))
                    .ok_or_else(|| ShapeError {
                        site: Site::Node,
                        message: format!(
                            "shapes {}, {} and {} do not broadcast",
                            fmt_shape(&ins[0].shape),
                            fmt_shape(&ins[1].shape),
                            fmt_shape(&ins[2].shape)
                        ),
                    })?;
                TensorType::new(shape, ins[1].dtype)
            }
            Op::Cast { dtype } => TensorType::new(ins[0].shape.clone(), *dtype),
            Op::Conv2d {
                strides,
                pads,
                dilations,
                groups,
            } => {
                let (x, w) = (&ins[0], &ins[1]);
                need_float(x, 0, name)?;
                need_rank(x, 0, name, 4, "x, NCHW")?;
                need_rank(w, 1, name, 4, "w, OIHW")?;
                let idx: Vec<usize> = (0..ins.len()).collect();
                same_dtype(ins, &idx, name)?;
                check_positive(strides, "strides")?;
                check_positive(dilations, "dilations")?;
                if *groups == 0 {
                    return err(Site::Attr("groups"), "groups is 0, expected >= 1");
                }
                let (n, c, h, wd) = (x.shape[0], x.shape[1], x.shape[2], x.shape[3]);
                let (o, ci, kh, kw) = (w.shape[0], w.shape[1], w.shape[2], w.shape[3]);
                if c % groups != 0 || o % groups != 0 {
                    return err(
                        Site::Attr("groups"),
                        format!(
                            "groups {groups} must divide input channels {c} and output channels {o}"
                        ),
                    );
                }
                if ci * groups != c {
                    return err(
                        Site::Input(1),
                        format!(
                            "conv2d weight {} expects {} input channels per group, but x {} has {c} channels in {groups} group(s) ({} per group)",
                            fmt_shape(&w.shape),
                            ci,
                            fmt_shape(&x.shape),
                            c / groups
                        ),
                    );
                }
                if let Some(b) = ins.get(2) {
                    exact_shape(b, 2, &[o], "bias")?;
                }
                let oh = window_out(h, pads[0], pads[2], kh, dilations[0], strides[0]);
                let ow = window_out(wd, pads[1], pads[3], kw, dilations[1], strides[1]);
                match (oh, ow) {
                    (Some(oh), Some(ow)) => TensorType::new(vec![n, o, oh, ow], x.dtype),
                    _ => {
                        return err(
                            Site::Node,
                            format!(
                                "conv2d kernel {kh}x{kw} (dilations {:?}) does not fit input {} with pads {:?}",
                                dilations,
                                fmt_shape(&x.shape),
                                pads
                            ),
                        );
                    }
                }
            }
            Op::MaxPool2d {
                kernel,
                strides,
                pads,
            }
            | Op::AvgPool2d {
                kernel,
                strides,
                pads,
                ..
            } => {
                let x = &ins[0];
                need_float(x, 0, name)?;
                need_rank(x, 0, name, 4, "x, NCHW")?;
                check_positive(kernel, "kernel")?;
                check_positive(strides, "strides")?;
                if pads[0] >= kernel[0]
                    || pads[2] >= kernel[0]
                    || pads[1] >= kernel[1]
                    || pads[3] >= kernel[1]
                {
                    return err(
                        Site::Attr("pads"),
                        format!("pads {pads:?} must be smaller than the kernel {kernel:?}"),
                    );
                }
                let oh = window_out(x.shape[2], pads[0], pads[2], kernel[0], 1, strides[0]);
                let ow = window_out(x.shape[3], pads[1], pads[3], kernel[1], 1, strides[1]);
                match (oh, ow) {
                    (Some(oh), Some(ow)) => {
                        TensorType::new(vec![x.shape[0], x.shape[1], oh, ow], x.dtype)
                    }
                    _ => {
                        return err(
                            Site::Attr("kernel"),
                            format!(
                                "kernel {kernel:?} does not fit input {} with pads {pads:?}",
                                fmt_shape(&x.shape)
                            ),
                        );
                    }
                }
            }
            Op::GlobalAvgPool => {
                let x = &ins[0];
                need_float(x, 0, name)?;
                if x.rank() < 3 {
                    return err(
                        Site::Input(0),
                        format!(
                            "global_avg_pool needs x of rank >= 3 (N, C, spatial...), found shape {}",
                            fmt_shape(&x.shape)
                        ),
                    );
                }
                let mut shape = x.shape.clone();
                for d in &mut shape[2..] {
                    *d = 1;
                }
                TensorType::new(shape, x.dtype)
            }
            // Every unary and binary op was handled by the guards above.
            Op::Add
            | Op::Sub
            | Op::Mul
            | Op::Div
            | Op::Max
            | Op::Min
            | Op::Pow
            | Op::Exp
            | Op::Log
            | Op::Sqrt
            | Op::Rsqrt
            | Op::Reciprocal
            | Op::Sigmoid
            | Op::Tanh
            | Op::Erf
            | Op::Silu
            | Op::Gelu { .. } => {
                need_float(&ins[0], 0, name)?;
                ins[0].clone()
            }
        };
        Ok(vec![out])
    }
}

fn check_epsilon(epsilon: f32) -> Result<(), ShapeError> {
    if epsilon.is_finite() && epsilon >= 0.0 {
        Ok(())
    } else {
        err(
            Site::Attr("epsilon"),
            format!("epsilon is {epsilon}, expected a finite value >= 0"),
        )
    }
}

fn check_positive(xs: &[usize], attr: &'static str) -> Result<(), ShapeError> {
    if xs.contains(&0) {
        err(
            Site::Attr(attr),
            format!("{attr} {xs:?} has a 0, expected every entry >= 1"),
        )
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(shape: &[usize]) -> TensorType {
        TensorType::new(shape.to_vec(), DType::F32)
    }

    #[test]
    fn broadcasting() {
        assert_eq!(broadcast_shapes(&[8, 1, 3], &[4, 1]), Some(vec![8, 4, 3]));
        assert_eq!(broadcast_shapes(&[], &[2]), Some(vec![2]));
        assert_eq!(broadcast_shapes(&[3], &[4]), None);
    }

    #[test]
    fn matmul_batches() {
        let op = Op::MatMul { transpose_b: false };
        let out = op.infer(&[f(&[2, 1, 3, 4]), f(&[5, 4, 6])]).unwrap();
        assert_eq!(out[0].shape, vec![2, 5, 3, 6]);
        let op = Op::MatMul { transpose_b: true };
        let out = op.infer(&[f(&[3, 4]), f(&[6, 4])]).unwrap();
        assert_eq!(out[0].shape, vec![3, 6]);
        let e = op.infer(&[f(&[3, 4]), f(&[4, 6])]).unwrap_err();
        assert!(e.message.contains("[3,4] x [4,6]"), "{}", e.message);
    }

    #[test]
    fn slices() {
        let p = slice_plan(&[10], &[0], &[-3], &[i64::MAX], &[]).unwrap();
        assert_eq!(
            p[0],
            SliceAxis {
                axis: 0,
                start: 7,
                step: 1,
                len: 3
            }
        );
        let p = slice_plan(&[10], &[], &[1], &[10], &[4]).unwrap();
        assert_eq!(p[0].len, 3);
        assert!(slice_plan(&[10], &[0], &[10], &[12], &[]).is_err());
        assert!(slice_plan(&[10], &[0], &[5], &[2], &[]).is_err());
        assert!(slice_plan(&[10], &[0], &[0], &[2], &[0]).is_err());
    }

    #[test]
    fn reshapes() {
        assert_eq!(reshape_target(&[2, -1], 12, &[12]).unwrap(), vec![2, 6]);
        assert!(reshape_target(&[5, -1], 12, &[12]).is_err());
        assert!(reshape_target(&[-1, -1], 12, &[12]).is_err());
        assert!(reshape_target(&[0, 12], 12, &[12]).is_err());
    }

    #[test]
    fn conv_shapes() {
        let op = Op::Conv2d {
            strides: [2, 2],
            pads: [1, 1, 1, 1],
            dilations: [1, 1],
            groups: 2,
        };
        let out = op
            .infer(&[f(&[1, 4, 7, 7]), f(&[6, 2, 3, 3]), f(&[6])])
            .unwrap();
        assert_eq!(out[0].shape, vec![1, 6, 4, 4]);
        assert_eq!(window_out(5, 0, 0, 7, 1, 1), None);
    }
}
