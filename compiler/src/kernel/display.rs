//! Stable text form of the kernel IR, for `--dump` and golden tests.

use super::{EwOp, KernelGraph, KernelOp, View};
use std::fmt;

impl fmt::Display for View {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.tensor)?;
        if self.offset != 0 {
            write!(f, "+{}", self.offset)?;
        }
        write!(f, "{:?}/{:?}", self.shape, self.strides)
    }
}

fn ew_list(ops: &[EwOp]) -> String {
    ops.iter()
        .map(|o| match o {
            EwOp::Unary(u) => format!("{u:?}").to_lowercase(),
            EwOp::Scalar {
                op,
                value,
                reversed,
            } => format!("{}{:?}({value})", if *reversed { "r" } else { "" }, op).to_lowercase(),
            EwOp::Tensor {
                op,
                operand,
                reversed,
            } => {
                format!("{}{:?}(in{operand})", if *reversed { "r" } else { "" }, op).to_lowercase()
            }
            EwOp::Select {
                cond,
                other,
                reversed,
            } => format!(
                "select(in{cond}, {}in{other})",
                if *reversed { "" } else { "else " }
            ),
            EwOp::Cast(d) => format!("cast({d})"),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

impl fmt::Display for KernelGraph {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "kernel graph {}", self.name)?;
        for (i, t) in self.tensors.iter().enumerate() {
            writeln!(
                f,
                "  T{i} {:?} '{}' {:?} {}{}",
                t.kind,
                t.name,
                t.shape,
                t.dtype,
                if t.quant_scale.is_some() {
                    " (int8, per-channel scales)"
                } else {
                    ""
                }
            )?;
        }
        for (i, k) in self.kernels.iter().enumerate() {
            writeln!(
                f,
                "k{i} {} [{}] mm={} act={}{}",
                k.name,
                k.op.kind(),
                k.mm_dtype,
                k.act_dtype,
                k.act_scale
                    .map(|s| format!(" act_scale={s}"))
                    .unwrap_or_default()
            )?;
            for (j, v) in k.inputs.iter().enumerate() {
                writeln!(f, "    in{j} = {v}")?;
            }
            writeln!(f, "    out = {}", k.output)?;
            let body = match &k.op {
                KernelOp::MatMul {
                    a,
                    b,
                    transpose_b,
                    epilogue,
                } => format!(
                    "matmul(in{a}, in{b}{}) then [{}]",
                    if *transpose_b { "^T" } else { "" },
                    ew_list(epilogue)
                ),
                KernelOp::Norm {
                    x,
                    gamma,
                    beta,
                    epsilon,
                    rms,
                    norm_size,
                    epilogue,
                } => format!(
                    "{}(in{x}, gamma={:?}, beta={:?}, eps={epsilon}, size={norm_size}) then [{}]",
                    if *rms { "rms_norm" } else { "layer_norm" },
                    gamma,
                    beta,
                    ew_list(epilogue)
                ),
                KernelOp::Softmax {
                    x,
                    prologue,
                    epilogue,
                } => format!(
                    "softmax([{}](in{x})) then [{}]",
                    ew_list(prologue),
                    ew_list(epilogue)
                ),
                KernelOp::Attention { q, k, v, prologue } => format!(
                    "attention(q=in{q}, k=in{k}, v=in{v}, scores=[{}])",
                    ew_list(prologue)
                ),
                KernelOp::Elementwise { x, ops } => format!("in{x} then [{}]", ew_list(ops)),
                KernelOp::Reduce {
                    x,
                    op,
                    axes,
                    epilogue,
                } => format!(
                    "reduce_{op:?}(in{x}, axes={axes:?}) then [{}]",
                    ew_list(epilogue)
                )
                .to_lowercase(),
                KernelOp::Gather {
                    table,
                    indices,
                    epilogue,
                } => format!(
                    "gather(in{table}, rows=in{indices}) then [{}]",
                    ew_list(epilogue)
                ),
                KernelOp::Conv2d {
                    x,
                    w,
                    groups,
                    window,
                    epilogue,
                } => format!(
                    "conv2d(in{x}, in{w}, groups={groups}, {}) then [{}]",
                    window_text(window),
                    ew_list(epilogue)
                ),
                KernelOp::Pool {
                    x,
                    op,
                    window,
                    epilogue,
                } => format!(
                    "{}(in{x}, {}) then [{}]",
                    match op {
                        crate::kernel::PoolFn::Max => "max_pool".to_string(),
                        crate::kernel::PoolFn::Avg { count_include_pad } =>
                            format!("avg_pool(count_include_pad={count_include_pad})"),
                    },
                    window_text(window),
                    ew_list(epilogue)
                ),
                KernelOp::Copy { x } => format!("copy(in{x})"),
            };
            writeln!(f, "    {body}  ; nodes {}", k.nodes.join(","))?;
        }
        Ok(())
    }
}

fn window_text(w: &crate::kernel::Window) -> String {
    format!(
        "kernel={:?} strides={:?} pads={:?} dilations={:?}",
        w.kernel, w.strides, w.pads, w.dilations
    )
}
