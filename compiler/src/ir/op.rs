//! The operator set of model.json v1, with typed attributes.

use std::fmt;

use super::DType;

/// The two forms of GELU.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Default)]
pub enum GeluApprox {
    /// `x * 0.5 * (1 + erf(x / sqrt 2))`.
    #[default]
    None,
    /// `x * 0.5 * (1 + tanh(sqrt(2/pi) * (x + 0.044715 x^3)))`.
    Tanh,
}

impl GeluApprox {
    /// The model.json spelling: `none` or `tanh`.
    pub fn name(self) -> &'static str {
        match self {
            GeluApprox::None => "none",
            GeluApprox::Tanh => "tanh",
        }
    }
}

/// One operator with its typed attributes.
///
/// Attribute semantics (numpy broadcasting, negative axes counting from the
/// end, defaults) are documented in `docs/model-format.md`. Shape and dtype
/// inference lives on the op ([`Op::infer`]).
#[derive(Clone, PartialEq, Debug)]
pub enum Op {
    /// `a + b`, broadcasting.
    Add,
    /// `a - b`, broadcasting.
    Sub,
    /// `a * b`, broadcasting.
    Mul,
    /// `a / b`, broadcasting (float only).
    Div,
    /// Elementwise maximum, broadcasting.
    Max,
    /// Elementwise minimum, broadcasting.
    Min,
    /// `a ^ b`, broadcasting (float only).
    Pow,
    /// `-x`.
    Neg,
    /// `|x|`.
    Abs,
    /// `e^x`.
    Exp,
    /// Natural logarithm.
    Log,
    /// Square root.
    Sqrt,
    /// `1 / sqrt(x)`.
    Rsqrt,
    /// `1 / x`.
    Reciprocal,
    /// `max(x, 0)`.
    Relu,
    /// `1 / (1 + e^-x)`.
    Sigmoid,
    /// Hyperbolic tangent.
    Tanh,
    /// Gauss error function.
    Erf,
    /// `x * sigmoid(x)`.
    Silu,
    /// GELU in erf or tanh form.
    Gelu {
        /// Which formula.
        approximate: GeluApprox,
    },
    /// numpy matmul on rank >= 2 operands with broadcast batch dimensions.
    MatMul {
        /// Swap the last two axes of the second operand first.
        transpose_b: bool,
    },
    /// Softmax along one axis.
    Softmax {
        /// The axis (default -1).
        axis: i64,
    },
    /// ONNX LayerNormalization over axes `axis..rank`; inputs `[x, gamma?, beta?]`.
    LayerNorm {
        /// First normalized axis (default -1).
        axis: i64,
        /// Added to the variance (default 1e-5).
        epsilon: f32,
    },
    /// RMS normalization over axes `axis..rank`; inputs `[x, gamma?]`.
    RmsNorm {
        /// First normalized axis (default -1).
        axis: i64,
        /// Added to the mean square (default 1e-6).
        epsilon: f32,
    },
    /// Inference batch normalization, channel axis 1; inputs `[x, scale, bias, mean, var]`.
    BatchNorm {
        /// Added to the variance (default 1e-5).
        epsilon: f32,
    },
    /// Sum over `axes`.
    ReduceSum {
        /// Reduced axes (non-empty, distinct).
        axes: Vec<i64>,
        /// Keep reduced axes as size 1 (default true).
        keepdims: bool,
    },
    /// Mean over `axes`.
    ReduceMean {
        /// Reduced axes (non-empty, distinct).
        axes: Vec<i64>,
        /// Keep reduced axes as size 1 (default true).
        keepdims: bool,
    },
    /// Maximum over `axes`.
    ReduceMax {
        /// Reduced axes (non-empty, distinct).
        axes: Vec<i64>,
        /// Keep reduced axes as size 1 (default true).
        keepdims: bool,
    },
    /// Permutes axes: output axis `i` is input axis `perm[i]`.
    Transpose {
        /// A permutation of `0..rank`.
        perm: Vec<usize>,
    },
    /// Row-major reshape; explicit sizes, at most one -1.
    Reshape {
        /// The new shape.
        shape: Vec<i64>,
    },
    /// Concatenation of one or more inputs along `axis`.
    Concat {
        /// The axis.
        axis: i64,
    },
    /// numpy basic slicing on the listed axes.
    Slice {
        /// Sliced axes (default `0..starts.len()`).
        axes: Vec<i64>,
        /// Start per axis (negative counts from the end; clamped).
        starts: Vec<i64>,
        /// End per axis, exclusive (negative counts from the end; clamped).
        ends: Vec<i64>,
        /// Step per axis, >= 1 (default 1).
        steps: Vec<i64>,
    },
    /// `data.take(indices, axis)`; inputs `[data, indices (i32/i64)]`.
    Gather {
        /// The axis of `data` indexed (default 0).
        axis: i64,
    },
    /// `cond ? a : b`, broadcasting; inputs `[cond (bool), a, b]`.
    Where,
    /// Element type conversion (see [`Tensor::cast`](super::Tensor::cast)).
    Cast {
        /// The target dtype.
        dtype: DType,
    },
    /// 2-D convolution; inputs `[x NCHW, w OIHW, bias?]`.
    Conv2d {
        /// `[h, w]` strides (default `[1, 1]`).
        strides: [usize; 2],
        /// `[top, left, bottom, right]` zero padding (default zeros).
        pads: [usize; 4],
        /// `[h, w]` dilations (default `[1, 1]`).
        dilations: [usize; 2],
        /// Channel groups (default 1).
        groups: usize,
    },
    /// 2-D max pooling over NCHW; padding never wins.
    MaxPool2d {
        /// `[h, w]` window.
        kernel: [usize; 2],
        /// `[h, w]` strides (default `[1, 1]`).
        strides: [usize; 2],
        /// `[top, left, bottom, right]` (default zeros).
        pads: [usize; 4],
    },
    /// 2-D average pooling over NCHW.
    AvgPool2d {
        /// `[h, w]` window.
        kernel: [usize; 2],
        /// `[h, w]` strides (default `[1, 1]`).
        strides: [usize; 2],
        /// `[top, left, bottom, right]` (default zeros).
        pads: [usize; 4],
        /// Divide by the full window size even where it overlaps padding
        /// (default false: divide by the number of real elements, as ONNX).
        count_include_pad: bool,
    },
    /// Mean over all spatial axes (2..rank), keeping them as size 1.
    GlobalAvgPool,
}

/// How many inputs an op takes.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Arity {
    /// Fewest inputs.
    pub min: usize,
    /// Most inputs (`None`: unbounded).
    pub max: Option<usize>,
}

impl Arity {
    const fn exactly(n: usize) -> Arity {
        Arity {
            min: n,
            max: Some(n),
        }
    }

    /// Whether `n` inputs are allowed.
    pub fn allows(self, n: usize) -> bool {
        n >= self.min && self.max.is_none_or(|m| n <= m)
    }
}

impl fmt::Display for Arity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.max {
            Some(m) if m == self.min => write!(f, "{m}"),
            Some(m) => write!(f, "{} to {m}", self.min),
            None => write!(f, "at least {}", self.min),
        }
    }
}

/// Every op name of model.json v1.
pub const OP_NAMES: &[&str] = &[
    "add",
    "sub",
    "mul",
    "div",
    "max",
    "min",
    "pow",
    "neg",
    "abs",
    "exp",
    "log",
    "sqrt",
    "rsqrt",
    "reciprocal",
    "relu",
    "sigmoid",
    "tanh",
    "erf",
    "silu",
    "gelu",
    "matmul",
    "softmax",
    "layer_norm",
    "rms_norm",
    "batch_norm",
    "reduce_sum",
    "reduce_mean",
    "reduce_max",
    "transpose",
    "reshape",
    "concat",
    "slice",
    "gather",
    "where",
    "cast",
    "conv2d",
    "max_pool2d",
    "avg_pool2d",
    "global_avg_pool",
];

impl Op {
    /// The model.json name of the op, e.g. `layer_norm`.
    pub fn name(&self) -> &'static str {
        match self {
            Op::Add => "add",
            Op::Sub => "sub",
            Op::Mul => "mul",
            Op::Div => "div",
            Op::Max => "max",
            Op::Min => "min",
            Op::Pow => "pow",
            Op::Neg => "neg",
            Op::Abs => "abs",
            Op::Exp => "exp",
            Op::Log => "log",
            Op::Sqrt => "sqrt",
            Op::Rsqrt => "rsqrt",
            Op::Reciprocal => "reciprocal",
            Op::Relu => "relu",
            Op::Sigmoid => "sigmoid",
            Op::Tanh => "tanh",
            Op::Erf => "erf",
            Op::Silu => "silu",
            Op::Gelu { .. } => "gelu",
            Op::MatMul { .. } => "matmul",
            Op::Softmax { .. } => "softmax",
            Op::LayerNorm { .. } => "layer_norm",
            Op::RmsNorm { .. } => "rms_norm",
            Op::BatchNorm { .. } => "batch_norm",
            Op::ReduceSum { .. } => "reduce_sum",
            Op::ReduceMean { .. } => "reduce_mean",
            Op::ReduceMax { .. } => "reduce_max",
            Op::Transpose { .. } => "transpose",
            Op::Reshape { .. } => "reshape",
            Op::Concat { .. } => "concat",
            Op::Slice { .. } => "slice",
            Op::Gather { .. } => "gather",
            Op::Where => "where",
            Op::Cast { .. } => "cast",
            Op::Conv2d { .. } => "conv2d",
            Op::MaxPool2d { .. } => "max_pool2d",
            Op::AvgPool2d { .. } => "avg_pool2d",
            Op::GlobalAvgPool => "global_avg_pool",
        }
    }

    /// `add sub mul div max min pow`.
    pub fn is_binary_elementwise(&self) -> bool {
        matches!(
            self,
            Op::Add | Op::Sub | Op::Mul | Op::Div | Op::Max | Op::Min | Op::Pow
        )
    }

    /// The one-input elementwise ops (`neg` ... `silu`, `gelu`).
    pub fn is_unary_elementwise(&self) -> bool {
        matches!(
            self,
            Op::Neg
                | Op::Abs
                | Op::Exp
                | Op::Log
                | Op::Sqrt
                | Op::Rsqrt
                | Op::Reciprocal
                | Op::Relu
                | Op::Sigmoid
                | Op::Tanh
                | Op::Erf
                | Op::Silu
                | Op::Gelu { .. }
        )
    }

    /// Ops whose every output element depends only on the input elements at
    /// the same (broadcast) position: unary, binary, `where` and `cast`.
    pub fn is_elementwise(&self) -> bool {
        self.is_binary_elementwise()
            || self.is_unary_elementwise()
            || matches!(self, Op::Where | Op::Cast { .. })
    }

    /// Ops that only move or select elements (no arithmetic).
    pub fn is_data_movement(&self) -> bool {
        matches!(
            self,
            Op::Transpose { .. }
                | Op::Reshape { .. }
                | Op::Concat { .. }
                | Op::Slice { .. }
                | Op::Gather { .. }
        )
    }

    /// How many inputs the op takes.
    pub fn arity(&self) -> Arity {
        match self {
            _ if self.is_binary_elementwise() => Arity::exactly(2),
            _ if self.is_unary_elementwise() => Arity::exactly(1),
            Op::MatMul { .. } | Op::Gather { .. } => Arity::exactly(2),
            Op::LayerNorm { .. } => Arity {
                min: 1,
                max: Some(3),
            },
            Op::RmsNorm { .. } => Arity {
                min: 1,
                max: Some(2),
            },
            Op::BatchNorm { .. } => Arity::exactly(5),
            Op::Concat { .. } => Arity { min: 1, max: None },
            Op::Where => Arity::exactly(3),
            Op::Conv2d { .. } => Arity {
                min: 2,
                max: Some(3),
            },
            _ => Arity::exactly(1),
        }
    }

    /// Checks the number of inputs, with a message naming expected vs found.
    pub fn check_arity(&self, n: usize) -> Result<(), String> {
        let arity = self.arity();
        if arity.allows(n) {
            Ok(())
        } else {
            Err(format!(
                "{} takes {arity} input{}, found {n}",
                self.name(),
                if arity == Arity::exactly(1) { "" } else { "s" }
            ))
        }
    }

    /// The number of outputs (always 1 in v1).
    pub fn num_outputs(&self) -> usize {
        1
    }

    /// The attributes as `key=value` pairs, in a stable order (for dumps).
    pub fn attrs_string(&self) -> String {
        fn list<T: fmt::Display>(xs: &[T]) -> String {
            let items: Vec<String> = xs.iter().map(|x| x.to_string()).collect();
            format!("[{}]", items.join(","))
        }
        let parts: Vec<String> = match self {
            Op::Gelu { approximate } => vec![format!("approximate={}", approximate.name())],
            Op::MatMul { transpose_b } => vec![format!("transpose_b={transpose_b}")],
            Op::Softmax { axis } | Op::Concat { axis } | Op::Gather { axis } => {
                vec![format!("axis={axis}")]
            }
            Op::LayerNorm { axis, epsilon } | Op::RmsNorm { axis, epsilon } => {
                vec![format!("axis={axis}"), format!("epsilon={epsilon:e}")]
            }
            Op::BatchNorm { epsilon } => vec![format!("epsilon={epsilon:e}")],
            Op::ReduceSum { axes, keepdims }
            | Op::ReduceMean { axes, keepdims }
            | Op::ReduceMax { axes, keepdims } => {
                vec![
                    format!("axes={}", list(axes)),
                    format!("keepdims={keepdims}"),
                ]
            }
            Op::Transpose { perm } => vec![format!("perm={}", list(perm))],
            Op::Reshape { shape } => vec![format!("shape={}", list(shape))],
            Op::Slice {
                axes,
                starts,
                ends,
                steps,
            } => vec![
                format!("axes={}", list(axes)),
                format!("starts={}", list(starts)),
                format!("ends={}", list(ends)),
                format!("steps={}", list(steps)),
            ],
            Op::Cast { dtype } => vec![format!("dtype={dtype}")],
            Op::Conv2d {
                strides,
                pads,
                dilations,
                groups,
            } => vec![
                format!("strides={}", list(strides)),
                format!("pads={}", list(pads)),
                format!("dilations={}", list(dilations)),
                format!("groups={groups}"),
            ],
            Op::MaxPool2d {
                kernel,
                strides,
                pads,
            } => vec![
                format!("kernel={}", list(kernel)),
                format!("strides={}", list(strides)),
                format!("pads={}", list(pads)),
            ],
            Op::AvgPool2d {
                kernel,
                strides,
                pads,
                count_include_pad,
            } => vec![
                format!("kernel={}", list(kernel)),
                format!("strides={}", list(strides)),
                format!("pads={}", list(pads)),
                format!("count_include_pad={count_include_pad}"),
            ],
            _ => vec![],
        };
        parts.join(" ")
    }
}

impl fmt::Display for Op {
    /// `name` or `name[attr=value ...]`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let attrs = self.attrs_string();
        if attrs.is_empty() {
            f.write_str(self.name())
        } else {
            write!(f, "{}[{attrs}]", self.name())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arity_messages() {
        assert!(Op::Add.check_arity(2).is_ok());
        assert_eq!(
            Op::Add.check_arity(1).unwrap_err(),
            "add takes 2 inputs, found 1"
        );
        assert_eq!(
            Op::Relu.check_arity(2).unwrap_err(),
            "relu takes 1 input, found 2"
        );
        let ln = Op::LayerNorm {
            axis: -1,
            epsilon: 1e-5,
        };
        assert!(ln.check_arity(3).is_ok());
        assert_eq!(
            ln.check_arity(4).unwrap_err(),
            "layer_norm takes 1 to 3 inputs, found 4"
        );
        assert!(Op::Concat { axis: 0 }.check_arity(5).is_ok());
    }

    #[test]
    fn display() {
        assert_eq!(Op::Add.to_string(), "add");
        assert_eq!(
            Op::Gelu {
                approximate: GeluApprox::Tanh
            }
            .to_string(),
            "gelu[approximate=tanh]"
        );
        assert!(Op::Where.is_elementwise());
        assert!(!Op::MatMul { transpose_b: false }.is_elementwise());
        assert_eq!(OP_NAMES.len(), 39);
    }
}
