//! The kernel IR: the fused graph that the back end lowers to instructions.
//!
//! A [`KernelGraph`] is a list of [`Kernel`]s in execution order over a table of
//! HBM-resident tensors ([`KTensor`]). Every value that crosses a kernel boundary lives in
//! HBM; everything inside a kernel stays on chip (SBUF/PSUM). Kernels read and write their
//! tensors through strided [`View`]s, so reshapes, transposes and slices between kernels
//! cost nothing: they become DMA access patterns.
//!
//! Invariants (checked by [`KernelGraph::verify`]):
//! - every view stays inside its tensor's storage;
//! - kernel `i` reads only tensors that are graph inputs, weights, or written by a kernel
//!   before `i`; each tensor is written by at most one kernel (outputs are written exactly
//!   once), except that several kernels may write disjoint views of one tensor (the pieces
//!   of a `concat`, each a `Copy` into a slice of the result): the tensor counts as
//!   written once the first of them has run, and the middle end emits all pieces before
//!   any reader;
//! - operand indices in a kernel's [`KernelOp`] and [`EwOp`]s refer to its `inputs`.

mod build;
mod display;
pub mod interp;
mod verify;

pub use verify::KernelVerifyError;

use crate::ir::{GeluApprox, ParamData};
use neuron_isa::{Dtype, TensorKind};
use std::fmt;

/// Index into [`KernelGraph::tensors`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KTensorId(pub u32);

impl fmt::Display for KTensorId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "T{}", self.0)
    }
}

/// A tensor in HBM.
#[derive(Debug, Clone, PartialEq)]
pub struct KTensor {
    /// Name (the graph value's name; scratch tensors may get derived names).
    pub name: String,
    /// Logical shape; storage is row-major and contiguous.
    pub shape: Vec<usize>,
    /// Storage type in HBM. Graph inputs and outputs keep their declared types; weights may
    /// be stored pre-cast (e.g. bf16 or int8) by precision assignment.
    pub dtype: Dtype,
    /// Role in the program.
    pub kind: TensorKind,
    /// Data for weights (already in `dtype`'s value set, held as f32 or int data).
    pub data: Option<ParamData>,
    /// For int8 weights: dequantization scale per output channel, so that
    /// `real = stored * scale[n]` where `n` is the index along [`KTensor::quant_axis`].
    pub quant_scale: Option<Vec<f32>>,
    /// The axis `quant_scale` indexes: the last for matmul weights `[K, N]`, 0 for
    /// convolution weights `[O, C/G, KH, KW]`. Meaningless without `quant_scale`.
    pub quant_axis: usize,
}

impl KTensor {
    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// For a quantized weight, the `quant_scale` index of storage element `i` (row-major):
    /// its coordinate along `quant_axis`. `None` if the axis is out of range.
    pub fn quant_channel(&self, i: usize) -> Option<usize> {
        let size = *self.shape.get(self.quant_axis)?;
        let inner: usize = self.shape[self.quant_axis + 1..].iter().product();
        Some((i / inner.max(1)) % size.max(1))
    }
}

/// A strided view of an HBM tensor: element `(i0, i1, ..)` is at storage element
/// `offset + sum(i_k * strides[k])`. Strides may be 0 (broadcast).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct View {
    /// The tensor viewed.
    pub tensor: KTensorId,
    /// Storage offset in elements.
    pub offset: usize,
    /// Logical shape of the view.
    pub shape: Vec<usize>,
    /// Strides in elements, one per dim.
    pub strides: Vec<isize>,
}

impl View {
    /// The whole tensor, row-major.
    pub fn contiguous(tensor: KTensorId, shape: &[usize]) -> View {
        let mut strides = vec![0isize; shape.len()];
        let mut acc: isize = 1;
        for (s, &d) in strides.iter_mut().zip(shape).rev() {
            *s = acc;
            acc *= d as isize;
        }
        View {
            tensor,
            offset: 0,
            shape: shape.to_vec(),
            strides,
        }
    }

    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

/// An elementwise function of one value.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum UnaryFn {
    /// `-x`.
    Neg,
    /// `|x|`.
    Abs,
    /// `e^x`.
    Exp,
    /// `ln x`.
    Log,
    /// `sqrt x`.
    Sqrt,
    /// `1/sqrt x`.
    Rsqrt,
    /// `1/x`.
    Reciprocal,
    /// `max(x, 0)`.
    Relu,
    /// Logistic sigmoid.
    Sigmoid,
    /// `tanh x`.
    Tanh,
    /// `erf x`.
    Erf,
    /// `x * sigmoid(x)`.
    Silu,
    /// GELU (erf or tanh form).
    Gelu(GeluApprox),
    /// `x * x`.
    Square,
}

/// An elementwise function of two values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BinaryFn {
    /// `a + b`.
    Add,
    /// `a - b`.
    Sub,
    /// `a * b`.
    Mul,
    /// `a / b`.
    Div,
    /// `max(a, b)`.
    Max,
    /// `min(a, b)`.
    Min,
    /// `a ^ b`.
    Pow,
}

/// One step of an elementwise chain, applied to the running value `acc`.
#[derive(Debug, Clone, PartialEq)]
pub enum EwOp {
    /// `acc = f(acc)`.
    Unary(UnaryFn),
    /// `acc = acc op c` (or `c op acc` if `reversed`).
    Scalar {
        /// The operation.
        op: BinaryFn,
        /// The constant.
        value: f32,
        /// Constant on the left.
        reversed: bool,
    },
    /// `acc = acc op inputs[operand]` (or reversed), the operand broadcast (numpy rules) to
    /// the kernel's output shape: a bias row `[N]`, a per-row column `[M, 1]`, a residual of
    /// the full shape, or a scalar tensor.
    Tensor {
        /// The operation.
        op: BinaryFn,
        /// Index into the kernel's `inputs`.
        operand: usize,
        /// Operand on the left.
        reversed: bool,
    },
    /// `acc = cond != 0 ? acc : inputs[other]` (or the other way round if `reversed`),
    /// broadcasting: masks built with `where`.
    Select {
        /// Index of the boolean condition in `inputs`.
        cond: usize,
        /// Index of the other value in `inputs`.
        other: usize,
        /// `cond ? other : acc` instead.
        reversed: bool,
    },
    /// `acc = round(acc)` to the given storage type (explicit `cast` nodes; quantization).
    Cast(Dtype),
}

/// Reduction operators.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReduceFn {
    /// Sum.
    Sum,
    /// Mean.
    Mean,
    /// Maximum.
    Max,
}

/// Window geometry of a convolution or pooling kernel over NCHW (see
/// `docs/model-format.md`): output pixel `(i, j)` reads input rows
/// `i * strides[0] + p * dilations[0] - pads[0]` and columns
/// `j * strides[1] + q * dilations[1] - pads[1]`; positions outside the input are padding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    /// `[h, w]` window (kernel) size.
    pub kernel: [usize; 2],
    /// `[h, w]` strides (>= 1).
    pub strides: [usize; 2],
    /// `[top, left, bottom, right]` padding.
    pub pads: [usize; 4],
    /// `[h, w]` dilations (>= 1; always 1 for pooling).
    pub dilations: [usize; 2],
}

/// Pooling operators.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PoolFn {
    /// Maximum over the window; padding never wins.
    Max,
    /// Mean over the window.
    Avg {
        /// Divide by the full window size even where it overlaps padding (else by the
        /// number of real elements).
        count_include_pad: bool,
    },
}

/// What a kernel computes. Operands are indices into [`Kernel::inputs`]. Unless stated,
/// the kernel's output has the output view's shape, and `epilogue` is applied elementwise
/// to the result before it is stored.
#[derive(Debug, Clone, PartialEq)]
pub enum KernelOp {
    /// `out = epilogue(a @ b)` with numpy matmul semantics (batch dims broadcast), `b`'s
    /// last two axes swapped first if `transpose_b`. `a` and `b` are stored in
    /// `Kernel::mm_dtype` for the multiply; accumulation is fp32 (int32 for int8).
    MatMul {
        /// Left operand `[.., M, K]`.
        a: usize,
        /// Right operand `[.., K, N]` (`[.., N, K]` if `transpose_b`).
        b: usize,
        /// Swap `b`'s last two axes.
        transpose_b: bool,
        /// Applied to each output element.
        epilogue: Vec<EwOp>,
    },
    /// Layer norm over the last `norm_size` elements of each row (ONNX semantics), or RMS
    /// norm if `rms`; then `* gamma + beta` (broadcast over rows) and the epilogue.
    Norm {
        /// Input.
        x: usize,
        /// Optional scale, broadcast to the normalized axes.
        gamma: Option<usize>,
        /// Optional shift (layer norm only).
        beta: Option<usize>,
        /// Epsilon added to the variance (mean square for RMS).
        epsilon: f32,
        /// RMS norm instead of layer norm.
        rms: bool,
        /// Number of trailing elements normalized together (product of the normalized axes).
        norm_size: usize,
        /// Applied after the affine transform.
        epilogue: Vec<EwOp>,
    },
    /// `out = epilogue(softmax(prologue(x)))` over the last axis, where the prologue
    /// typically scales and adds a mask.
    Softmax {
        /// Input.
        x: usize,
        /// Elementwise ops applied to `x` before the softmax.
        prologue: Vec<EwOp>,
        /// Applied after.
        epilogue: Vec<EwOp>,
    },
    /// Fused attention: `out = softmax(prologue(q @ k^T)) @ v` per batch/head, where `q` is
    /// `[.., Sq, D]`, `k` is `[.., Sk, D]`, `v` is `[.., Sk, Dv]`. The score matrix never
    /// leaves the chip. The prologue holds the scale and the mask add.
    Attention {
        /// Queries.
        q: usize,
        /// Keys (rows are keys).
        k: usize,
        /// Values.
        v: usize,
        /// Elementwise ops on the scores before the softmax.
        prologue: Vec<EwOp>,
    },
    /// `out = chain(inputs[x])`: a chain of elementwise ops.
    Elementwise {
        /// The starting value.
        x: usize,
        /// The chain.
        ops: Vec<EwOp>,
    },
    /// Reduction over `axes` of the input (sorted, non-negative), keeping them as size 1.
    Reduce {
        /// Input.
        x: usize,
        /// The reduction.
        op: ReduceFn,
        /// Reduced axes of the input.
        axes: Vec<usize>,
        /// Applied after.
        epilogue: Vec<EwOp>,
    },
    /// Embedding lookup: `out[i.., r..] = epilogue(table[indices[i..], r..])`. The table's
    /// first axis is the one indexed (a gather on another axis is handed over with the
    /// table and output views permuted so that it comes first); the output has shape
    /// `indices.shape ++ table.shape[1..]`. Indices are integers in `0..table.shape[0]`;
    /// one outside that range is an execution error.
    Gather {
        /// The table `[rows, ..]`.
        table: usize,
        /// The integer row indices (any shape).
        indices: usize,
        /// Applied to each gathered element.
        epilogue: Vec<EwOp>,
    },
    /// `out = epilogue(conv2d(x, w))` over NCHW `x` and OIHW `w` with `groups` channel
    /// groups (ONNX semantics, zero padding); the output is `[N, O, OH, OW]`. `x` and `w`
    /// are rounded to `Kernel::mm_dtype` for the multiply; accumulation is fp32. A bias
    /// or a folded batch_norm is an `Add` of a `[O, 1, 1]` operand in the epilogue.
    Conv2d {
        /// Input `[N, C, H, W]`.
        x: usize,
        /// Weights `[O, C / groups, KH, KW]`.
        w: usize,
        /// Channel groups.
        groups: usize,
        /// Window geometry (`kernel` is `[KH, KW]`).
        window: Window,
        /// Applied to each output element.
        epilogue: Vec<EwOp>,
    },
    /// `out = epilogue(pool(x))` over the spatial axes of NCHW `x`.
    Pool {
        /// Input `[N, C, H, W]`.
        x: usize,
        /// The pooling operator.
        op: PoolFn,
        /// Window geometry.
        window: Window,
        /// Applied to each output element.
        epilogue: Vec<EwOp>,
    },
    /// `out = inputs[x]`, a pure copy through strided views (transposes, slices and
    /// reshapes that could not be folded into a neighbour, concat pieces, casts).
    Copy {
        /// Input.
        x: usize,
    },
}

impl KernelOp {
    /// Short kind name for summaries and metadata.
    pub fn kind(&self) -> &'static str {
        match self {
            KernelOp::MatMul { .. } => "matmul",
            KernelOp::Norm { rms: false, .. } => "layer_norm",
            KernelOp::Norm { rms: true, .. } => "rms_norm",
            KernelOp::Softmax { .. } => "softmax",
            KernelOp::Attention { .. } => "attention",
            KernelOp::Elementwise { .. } => "elementwise",
            KernelOp::Reduce { .. } => "reduce",
            KernelOp::Gather { .. } => "gather",
            KernelOp::Conv2d { .. } => "conv2d",
            KernelOp::Pool {
                op: PoolFn::Max, ..
            } => "max_pool2d",
            KernelOp::Pool { .. } => "avg_pool2d",
            KernelOp::Copy { .. } => "copy",
        }
    }
}

/// One kernel: reads its input views from HBM, computes on chip, writes its output view.
#[derive(Debug, Clone, PartialEq)]
pub struct Kernel {
    /// Unique name, e.g. `fc1+fc1_bias+act1`.
    pub name: String,
    /// Graph nodes fused into it, in graph order.
    pub nodes: Vec<String>,
    /// What it computes.
    pub op: KernelOp,
    /// Input views.
    pub inputs: Vec<View>,
    /// Output view (its shape is the kernel's output shape).
    pub output: View,
    /// Storage type of matmul operands on chip (bf16/fp16/fp8/int8/f32).
    pub mm_dtype: Dtype,
    /// Storage type of elementwise intermediates on chip (f32, or the auto-cast type under
    /// `--auto-cast all`). Statistics and accumulators are always f32.
    pub act_dtype: Dtype,
    /// int8 only: per-tensor scale of the activation operand `a` (`real = q * scale`).
    pub act_scale: Option<f32>,
    /// Model FLOPs (2 per multiply-add for matmuls, 1 per elementwise op).
    pub flops: u64,
}

/// The fused graph: kernels in execution order over HBM tensors.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct KernelGraph {
    /// Model name.
    pub name: String,
    /// Seed of the model (for generated inputs).
    pub seed: u64,
    /// HBM tensors.
    pub tensors: Vec<KTensor>,
    /// Kernels in execution order.
    pub kernels: Vec<Kernel>,
    /// Graph inputs, in declaration order.
    pub inputs: Vec<KTensorId>,
    /// Graph outputs, in declaration order.
    pub outputs: Vec<KTensorId>,
}

impl KernelGraph {
    /// The tensor with this id.
    pub fn tensor(&self, id: KTensorId) -> Option<&KTensor> {
        self.tensors.get(id.0 as usize)
    }

    /// Adds a tensor and returns its id.
    pub fn add_tensor(&mut self, t: KTensor) -> KTensorId {
        self.tensors.push(t);
        KTensorId((self.tensors.len() - 1) as u32)
    }

    /// Checks the invariants listed in the module docs.
    pub fn verify(&self) -> Result<(), KernelVerifyError> {
        verify::verify(self)
    }
}
