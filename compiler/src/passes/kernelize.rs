//! Kernel formation: turns a [`Partition`] into a [`KernelGraph`].
//!
//! Every value a kernel reads or writes lives in an HBM tensor and is addressed through a
//! strided [`View`]. Graph inputs, params and group results get tensors of their own; a
//! reshape, transpose or slice of an HBM value becomes another view of the same tensor
//! (no kernel) whenever strides can express it. When a chain of reshapes and transposes
//! after a kernel cannot be expressed on the reader's side (e.g. merging the head axes
//! of attention's `[B,H,S,D]` output after a `[0,2,1,3]` transpose), the producing
//! kernel instead writes through the inverse view into the chain's final tensor
//! ("output-side folding"). Only when neither works is a `Copy` kernel emitted. With
//! fusion off nothing is folded: every movement node is a `Copy`.

use std::collections::{HashMap, HashSet};

use super::epilogue::{Operands, ew_op, isa_dtype};
use super::fusion::{Anchor, Group, OpClass, Partition, op_class, prologue_acc};
use super::rewrite::{Uses, out};
use crate::CompileError;
use crate::ir::shape_infer::{normalize_axis, reduce_axes, slice_plan};
use crate::ir::{Graph, NodeId, Op, ValueId};
use crate::kernel::{
    KTensor, KTensorId, Kernel, KernelGraph, KernelOp, PoolFn, ReduceFn, View, Window,
};
use neuron_isa::{Dtype, TensorKind};

/// Builds the kernel graph for `g` partitioned as `p`; `fuse` enables view folding across
/// kernels (with it off, every movement node is a copy kernel).
pub fn kernelize(g: &Graph, p: &Partition, fuse: bool) -> Result<KernelGraph, CompileError> {
    let _span = tracing::debug_span!("kernelize", fuse).entered();
    let mut b = Builder::new(g);
    if fuse {
        b.plan_output_folding(p);
    }
    for grp in &p.groups {
        b.emit_group(grp, fuse)?;
    }
    b.bind_outputs()?;
    tracing::debug!(
        kernels = b.kg.kernels.len(),
        tensors = b.kg.tensors.len(),
        "kernels formed"
    );
    Ok(b.kg)
}

/// Applies movement node `n` to a view of its input; `None` if strides cannot express it.
pub fn apply_movement(g: &Graph, n: NodeId, v: &View) -> Option<View> {
    let node = g.node(n);
    match &node.op {
        Op::Transpose { perm } => v.permuted(perm),
        Op::Reshape { .. } => v.reshaped(&g.value(out(g, n)).shape),
        Op::Slice {
            axes,
            starts,
            ends,
            steps,
        } => {
            let plan = slice_plan(&v.shape, axes, starts, ends, steps).ok()?;
            plan.iter()
                .try_fold(v.clone(), |v, s| v.sliced(s.axis, s.start, s.step, s.len))
        }
        _ => None,
    }
}

/// The inverse of transpose/reshape node `n`: a view of its input, given a view of its
/// output. `None` for other ops or inexpressible reshapes.
fn invert_movement(g: &Graph, n: NodeId, v: &View) -> Option<View> {
    let node = g.node(n);
    match &node.op {
        Op::Transpose { perm } => {
            let mut inv = vec![0; perm.len()];
            for (i, &p) in perm.iter().enumerate() {
                *inv.get_mut(p)? = i;
            }
            v.permuted(&inv)
        }
        Op::Reshape { .. } => v.reshaped(&g.value(node.inputs[0]).shape),
        _ => None,
    }
}

struct Builder<'g> {
    g: &'g Graph,
    kg: KernelGraph,
    /// Where each value can be read in HBM (`None`: on chip only, or not yet computed).
    loc: Vec<Option<View>>,
    /// Group results written through a view of a later movement result's tensor.
    redirect: HashMap<ValueId, View>,
    /// Movement nodes absorbed by output-side folding.
    folded: HashSet<NodeId>,
    names: HashSet<String>,
    /// The graph's readers, indexed once.
    uses: std::rc::Rc<Uses>,
}

impl<'g> Builder<'g> {
    fn new(g: &'g Graph) -> Builder<'g> {
        let mut b = Builder {
            g,
            kg: KernelGraph {
                name: g.name.clone(),
                seed: g.seed,
                ..KernelGraph::default()
            },
            loc: vec![None; g.values.len()],
            redirect: HashMap::new(),
            folded: HashSet::new(),
            names: HashSet::new(),
            uses: std::rc::Rc::new(Uses::new(g)),
        };
        for &v in &g.inputs {
            let t = b.new_tensor(v, TensorKind::Input);
            b.kg.inputs.push(t);
        }
        // Params get their tensors on first use: a scalar constant consumed as an
        // immediate operand never needs one.
        b
    }

    /// A new tensor holding value `v`, readable from now on as a contiguous view.
    fn new_tensor(&mut self, v: ValueId, kind: TensorKind) -> KTensorId {
        let val = self.g.value(v);
        let id = self.kg.add_tensor(KTensor {
            name: val.name.clone(),
            shape: val.shape.clone(),
            dtype: isa_dtype(val.dtype),
            kind,
            data: None,
            quant_scale: None,
            quant_axis: 0,
        });
        self.loc[v.index()] = Some(View::contiguous(id, &val.shape));
        id
    }

    /// A tensor for a kernel result: an output if the graph returns it, else scratch.
    fn result_tensor(&mut self, v: ValueId) -> KTensorId {
        let kind = if self.g.is_output(v) {
            TensorKind::Output
        } else {
            TensorKind::Scratch
        };
        self.new_tensor(v, kind)
    }

    fn view(&mut self, v: ValueId) -> Result<View, CompileError> {
        if self.loc[v.index()].is_none() && self.g.is_param(v) {
            let t = self.new_tensor(v, TensorKind::Weight);
            self.kg.tensors[t.0 as usize].data = self.g.value(v).data.clone();
        }
        self.loc[v.index()].clone().ok_or_else(|| {
            CompileError::Internal(format!(
                "value '{}' is read by a kernel but is not in HBM",
                self.g.value(v).name
            ))
        })
    }

    /// Output-side folding: for each group result read only by a chain of transposes and
    /// reshapes that readers cannot see through (or that ends in a graph output), make the
    /// group write straight into the chain's final tensor.
    fn plan_output_folding(&mut self, p: &Partition) {
        let g = self.g;
        let uses = std::rc::Rc::clone(&self.uses);
        for grp in &p.groups {
            if let Anchor::Node(n) = grp.anchor
                && matches!(op_class(&g.node(n).op), OpClass::Movement | OpClass::Concat)
            {
                continue;
            }
            let root = grp.root(g);
            if g.is_output(root) {
                continue;
            }
            let mut chain = Vec::new();
            let mut cur = root;
            while !g.is_output(cur) {
                let [u] = uses.users(cur) else { break };
                if !matches!(g.node(*u).op, Op::Transpose { .. } | Op::Reshape { .. })
                    || g.node(*u).inputs.len() != 1
                {
                    break;
                }
                chain.push(*u);
                cur = out(g, *u);
            }
            if chain.is_empty() {
                continue;
            }
            let probe = KTensorId(u32::MAX);
            let forward_ok = chain
                .iter()
                .try_fold(View::contiguous(probe, &g.value(root).shape), |v, &n| {
                    apply_movement(g, n, &v)
                })
                .is_some();
            if forward_ok && !g.is_output(cur) {
                continue;
            }
            let inverse = chain
                .iter()
                .rev()
                .try_fold(View::contiguous(probe, &g.value(cur).shape), |v, &n| {
                    invert_movement(g, n, &v)
                });
            let Some(mut v) = inverse else { continue };
            let t = self.result_tensor(cur);
            v.tensor = t;
            tracing::debug!(
                from = %g.value(root).name,
                into = %g.value(cur).name,
                "output-side view folding"
            );
            self.redirect.insert(root, v);
            self.folded.extend(chain);
        }
        self.plan_concat_folding(p);
    }

    /// Concatenation folding: each piece of a concat on the leading axis that is a group's
    /// result read only by the concat is written by its group straight into its slice of
    /// the concat's tensor,
    /// so the concat copies only the other pieces (none for the micro-batched stretch of
    /// `micro_batch.rs`, whose groups' results are concatenated on the batch axis).
    fn plan_concat_folding(&mut self, p: &Partition) {
        let g = self.g;
        let uses = std::rc::Rc::clone(&self.uses);
        let roots: HashSet<ValueId> = p
            .groups
            .iter()
            .filter(|grp| {
                !matches!(grp.anchor, Anchor::Node(n)
                    if matches!(op_class(&g.node(n).op), OpClass::Movement | OpClass::Concat))
            })
            .map(|grp| grp.root(g))
            .collect();
        for grp in &p.groups {
            let Anchor::Node(n) = grp.anchor else {
                continue;
            };
            let node = g.node(n);
            let o = out(g, n);
            let shape = g.value(o).shape.clone();
            let (Op::Concat { axis }, false) = (&node.op, g.is_output(o)) else {
                continue;
            };
            // On the leading axis only: each piece is then a contiguous block of the
            // result (an offset), which every lowering writes as it writes a tensor.
            if normalize_axis(*axis, shape.len()) != Some(0) {
                continue;
            }
            let axis = 0;
            let fold: Vec<bool> = node
                .inputs
                .iter()
                .map(|&v| {
                    roots.contains(&v)
                        && !g.is_output(v)
                        && !self.redirect.contains_key(&v)
                        && uses.users(v) == [n]
                        && node.inputs.iter().filter(|&&i| i == v).count() == 1
                })
                .collect();
            if !fold.contains(&true) {
                continue;
            }
            let whole = View::contiguous(self.result_tensor(o), &shape);
            let mut start = 0;
            for (&piece, &f) in node.inputs.iter().zip(&fold) {
                let len = g.value(piece).shape[axis];
                if f && let Some(v) = whole.sliced(axis, start, 1, len) {
                    self.redirect.insert(piece, v);
                }
                start += len;
            }
        }
    }

    fn unique_name(&mut self, base: String) -> String {
        let mut name = base.clone();
        let mut i = 1;
        while !self.names.insert(name.clone()) {
            name = format!("{base}#{i}");
            i += 1;
        }
        name
    }

    fn push_kernel(
        &mut self,
        nodes: &[NodeId],
        op: KernelOp,
        operands: Operands,
        output: View,
        flops: u64,
    ) {
        let names: Vec<String> = nodes.iter().map(|&n| self.g.node(n).name.clone()).collect();
        // A kernel fusing many nodes is named by its first and last ones (the full list is
        // in `nodes`): names appear in every report and listing, so they stay bounded.
        let joined = if names.len() > 8 {
            format!(
                "{}+{}+...+{} ({} nodes)",
                names[0],
                names[1],
                names[names.len() - 1],
                names.len()
            )
        } else {
            names.join("+")
        };
        let name = self.unique_name(joined);
        self.kg.kernels.push(Kernel {
            name,
            nodes: names,
            op,
            inputs: operands.views,
            output,
            mm_dtype: Dtype::F32,
            act_dtype: Dtype::F32,
            act_scale: None,
            flops,
        });
    }

    /// The view a group writes its result `root` through: the planned output-side fold,
    /// or a new tensor of its own.
    fn result_view(&mut self, root: ValueId) -> View {
        if let Some(v) = self.redirect.get(&root) {
            return v.clone();
        }
        let t = self.result_tensor(root);
        View::contiguous(t, &self.g.value(root).shape)
    }

    /// Micro-ops for `chain`, starting from the running value `acc`.
    fn chain_ops(
        &mut self,
        chain: &[NodeId],
        mut acc: ValueId,
        operands: &mut Operands,
    ) -> Result<Vec<crate::kernel::EwOp>, CompileError> {
        let g = self.g;
        let mut ops = Vec::with_capacity(chain.len());
        for &n in chain {
            let op = ew_op(g, n, acc, operands, &mut |v| self.view(v))?;
            ops.push(op);
            acc = out(g, n);
        }
        Ok(ops)
    }

    fn emit_group(&mut self, grp: &Group, fuse: bool) -> Result<(), CompileError> {
        let g = self.g;
        let nodes = grp.nodes();
        let root = grp.root(g);
        let numel = |v: ValueId| g.value(v).shape.iter().product::<usize>() as u64;
        let n = match grp.anchor {
            Anchor::Attention { qk, softmax, pv } => {
                return self.emit_attention(grp, qk, softmax, pv);
            }
            Anchor::Node(n) => n,
        };
        let node = g.node(n);
        let mut operands = Operands::default();
        let epi_flops = grp.epilogue.len() as u64 * numel(root);
        let (op, output, flops) = match op_class(&node.op) {
            OpClass::Movement => return self.emit_movement(n, fuse),
            OpClass::Concat => return self.emit_concat(n),
            OpClass::Unsupported => {
                return Err(CompileError::unsupported(
                    &node.name,
                    n.index(),
                    node.op.name(),
                    "no kernel lowering",
                ));
            }
            OpClass::MatMul => {
                let transpose_b = matches!(node.op, Op::MatMul { transpose_b: true });
                let a = operands.add(self.view(node.inputs[0])?);
                let b = operands.add(self.view(node.inputs[1])?);
                let epilogue = self.chain_ops(&grp.epilogue, out(g, n), &mut operands)?;
                let k = g.value(node.inputs[0]).shape.last().copied().unwrap_or(1) as u64;
                let flops = 2 * k * numel(out(g, n)) + epi_flops;
                let op = KernelOp::MatMul {
                    a,
                    b,
                    transpose_b,
                    epilogue,
                };
                (op, self.result_view(root), flops)
            }
            OpClass::Norm => {
                let (axis, epsilon, rms) = match node.op {
                    Op::LayerNorm { axis, epsilon } => (axis, epsilon, false),
                    Op::RmsNorm { axis, epsilon } => (axis, epsilon, true),
                    _ => return Err(CompileError::Internal("norm class without norm op".into())),
                };
                let shape = &g.value(node.inputs[0]).shape;
                let axis = normalize_axis(axis, shape.len()).ok_or_else(|| {
                    CompileError::Internal(format!("node '{}': bad norm axis", node.name))
                })?;
                let norm_size = shape[axis..].iter().product();
                let x = operands.add(self.view(node.inputs[0])?);
                let gamma = match node.inputs.get(1) {
                    Some(&v) => Some(operands.add(self.view(v)?)),
                    None => None,
                };
                let beta = match node.inputs.get(2) {
                    Some(&v) => Some(operands.add(self.view(v)?)),
                    None => None,
                };
                let epilogue = self.chain_ops(&grp.epilogue, out(g, n), &mut operands)?;
                let op = KernelOp::Norm {
                    x,
                    gamma,
                    beta,
                    epsilon,
                    rms,
                    norm_size,
                    epilogue,
                };
                (op, self.result_view(root), 8 * numel(out(g, n)) + epi_flops)
            }
            OpClass::Softmax => {
                let shape = &g.value(node.inputs[0]).shape;
                let rank = shape.len();
                let axis = match node.op {
                    Op::Softmax { axis } => normalize_axis(axis, rank),
                    _ => None,
                }
                .ok_or_else(|| {
                    CompileError::Internal(format!("node '{}': bad softmax axis", node.name))
                })?;
                // The kernel normalizes the last axis; an inner axis is moved last by
                // permuting both views (free: strides only).
                let mut perm: Vec<usize> = (0..rank).filter(|&a| a != axis).collect();
                perm.push(axis);
                let x0 = match grp.prologue.first() {
                    Some(&p) => prologue_acc(g, &self.uses, p).ok_or_else(|| {
                        CompileError::Internal(format!(
                            "softmax prologue node '{}' has no running operand",
                            g.node(p).name
                        ))
                    })?,
                    None => node.inputs[0],
                };
                let xv = self.view(x0)?.permuted(&perm).ok_or_else(|| {
                    CompileError::Internal(format!("node '{}': bad permutation", node.name))
                })?;
                let x = operands.add(xv);
                let prologue = self.chain_ops(&grp.prologue, x0, &mut operands)?;
                let epilogue = self.chain_ops(&grp.epilogue, out(g, n), &mut operands)?;
                let output = self.result_view(root).permuted(&perm).ok_or_else(|| {
                    CompileError::Internal(format!("node '{}': bad permutation", node.name))
                })?;
                let flops = (5 + grp.prologue.len() as u64) * numel(out(g, n)) + epi_flops;
                let op = KernelOp::Softmax {
                    x,
                    prologue,
                    epilogue,
                };
                (op, output, flops)
            }
            OpClass::Reduce => {
                let rank = g.value(node.inputs[0]).shape.len();
                // global_avg_pool is a mean over the spatial axes, keeping them.
                let spatial: Vec<i64> = (2..rank as i64).collect();
                let (rop, axes, keepdims) = match &node.op {
                    Op::ReduceSum { axes, keepdims } => (ReduceFn::Sum, axes, *keepdims),
                    Op::ReduceMean { axes, keepdims } => (ReduceFn::Mean, axes, *keepdims),
                    Op::ReduceMax { axes, keepdims } => (ReduceFn::Max, axes, *keepdims),
                    Op::GlobalAvgPool => (ReduceFn::Mean, &spatial, true),
                    _ => return Err(CompileError::Internal("reduce class without reduce".into())),
                };
                let axes = reduce_axes(axes, rank).map_err(|e| {
                    CompileError::Internal(format!("node '{}': {}", node.name, e.message))
                })?;
                let x = operands.add(self.view(node.inputs[0])?);
                let epilogue = self.chain_ops(&grp.epilogue, out(g, n), &mut operands)?;
                let mut output = self.result_view(root);
                if !keepdims {
                    output = output.with_unit_axes(&axes);
                }
                let op = KernelOp::Reduce {
                    x,
                    op: rop,
                    axes,
                    epilogue,
                };
                (op, output, numel(node.inputs[0]) + epi_flops)
            }
            OpClass::Conv => {
                let Op::Conv2d {
                    strides,
                    pads,
                    dilations,
                    groups,
                } = node.op
                else {
                    return Err(CompileError::Internal("conv class without conv2d".into()));
                };
                let ws = g.value(node.inputs[1]).shape.clone();
                if ws.len() != 4 {
                    return Err(CompileError::Internal(format!(
                        "conv2d node '{}': weight of rank {}",
                        node.name,
                        ws.len()
                    )));
                }
                let x = operands.add(self.view(node.inputs[0])?);
                let w = operands.add(self.view(node.inputs[1])?);
                // A bias `[O]` is the first step of the epilogue, seen as `[O, 1, 1]` so
                // that it broadcasts along the output channels of `[N, O, OH, OW]`.
                let mut epilogue = Vec::new();
                if let Some(&bias) = node.inputs.get(2) {
                    let bv = self.view(bias)?.reshaped(&[ws[0], 1, 1]).ok_or_else(|| {
                        CompileError::Internal(format!(
                            "conv2d node '{}': bias is not a [O] vector",
                            node.name
                        ))
                    })?;
                    epilogue.push(crate::kernel::EwOp::Tensor {
                        op: crate::kernel::BinaryFn::Add,
                        operand: operands.add(bv),
                        reversed: false,
                    });
                }
                epilogue.extend(self.chain_ops(&grp.epilogue, out(g, n), &mut operands)?);
                let macs = (ws[1] * ws[2] * ws[3]) as u64;
                let flops = 2 * macs * numel(out(g, n))
                    + (epilogue.len() as u64).saturating_sub(grp.epilogue.len() as u64)
                        * numel(out(g, n))
                    + epi_flops;
                let op = KernelOp::Conv2d {
                    x,
                    w,
                    groups,
                    window: Window {
                        kernel: [ws[2], ws[3]],
                        strides,
                        pads,
                        dilations,
                    },
                    epilogue,
                };
                (op, self.result_view(root), flops)
            }
            OpClass::Pool => {
                let (pf, kernel, strides, pads) = match node.op {
                    Op::MaxPool2d {
                        kernel,
                        strides,
                        pads,
                    } => (PoolFn::Max, kernel, strides, pads),
                    Op::AvgPool2d {
                        kernel,
                        strides,
                        pads,
                        count_include_pad,
                    } => (PoolFn::Avg { count_include_pad }, kernel, strides, pads),
                    _ => return Err(CompileError::Internal("pool class without pool".into())),
                };
                let x = operands.add(self.view(node.inputs[0])?);
                let epilogue = self.chain_ops(&grp.epilogue, out(g, n), &mut operands)?;
                let flops = (kernel[0] * kernel[1]) as u64 * numel(out(g, n)) + epi_flops;
                let op = KernelOp::Pool {
                    x,
                    op: pf,
                    window: Window {
                        kernel,
                        strides,
                        pads,
                        dilations: [1, 1],
                    },
                    epilogue,
                };
                (op, self.result_view(root), flops)
            }
            OpClass::Gather => {
                let rank = g.value(node.inputs[0]).shape.len();
                let r = g.value(node.inputs[1]).shape.len();
                let bad = |what: &str| {
                    CompileError::Internal(format!("gather node '{}': {what}", node.name))
                };
                let axis = match node.op {
                    Op::Gather { axis } => normalize_axis(axis, rank),
                    _ => None,
                }
                .ok_or_else(|| bad("bad axis"))?;
                // The kernel indexes the table's first axis. Another axis is moved first
                // by permuting the table's view, and the output (graph axes `data[..axis]
                // ++ indices ++ data[axis+1..]`) is seen as `indices ++ data[..axis] ++
                // data[axis+1..]`: strides only, no copies.
                let tperm: Vec<usize> = std::iter::once(axis)
                    .chain((0..rank).filter(|&i| i != axis))
                    .collect();
                let operm: Vec<usize> = (axis..axis + r)
                    .chain(0..axis)
                    .chain(axis + r..rank + r - 1)
                    .collect();
                let table_view = self
                    .view(node.inputs[0])?
                    .permuted(&tperm)
                    .ok_or_else(|| bad("bad table permutation"))?;
                let table = operands.add(table_view);
                let indices = operands.add(self.view(node.inputs[1])?);
                let epilogue = self.chain_ops(&grp.epilogue, out(g, n), &mut operands)?;
                let output = self
                    .result_view(root)
                    .permuted(&operm)
                    .ok_or_else(|| bad("bad output permutation"))?;
                let op = KernelOp::Gather {
                    table,
                    indices,
                    epilogue,
                };
                (op, output, epi_flops)
            }
            OpClass::Elementwise => {
                let ins = &node.inputs;
                let xv = match node.op {
                    Op::Where => ins[1],
                    _ if ins.len() == 2
                        && super::rewrite::scalar_const(g, ins[0]).is_some()
                        && super::rewrite::scalar_const(g, ins[1]).is_none() =>
                    {
                        ins[1]
                    }
                    _ => ins[0],
                };
                let out_shape = &g.value(out(g, n)).shape;
                let x_view = self.view(xv)?.broadcast_to(out_shape).ok_or_else(|| {
                    CompileError::Internal(format!(
                        "node '{}': operand does not broadcast to the result",
                        node.name
                    ))
                })?;
                let x = operands.add(x_view);
                let mut chain = vec![n];
                chain.extend(&grp.epilogue);
                let ops = self.chain_ops(&chain, xv, &mut operands)?;
                let flops = ops.len() as u64 * numel(root);
                (
                    KernelOp::Elementwise { x, ops },
                    self.result_view(root),
                    flops,
                )
            }
        };
        self.push_kernel(&nodes, op, operands, output, flops);
        Ok(())
    }

    fn emit_attention(
        &mut self,
        grp: &Group,
        qk: NodeId,
        softmax: NodeId,
        pv: NodeId,
    ) -> Result<(), CompileError> {
        let g = self.g;
        let (qk_node, pv_node) = (g.node(qk), g.node(pv));
        let out_shape = g.value(out(g, pv)).shape.clone();
        let scores_shape = g.value(out(g, qk)).shape.clone();
        // Matmul operands have rank >= 2 (shape inference checks it); the scores may have
        // fewer batch axes than the output if `v` brings more.
        let (r, rs) = (out_shape.len(), scores_shape.len());
        if r < 2 || rs < 2 {
            return Err(CompileError::Internal(format!(
                "attention '{}': operands of rank < 2",
                g.node(softmax).name
            )));
        }
        let batch = &out_shape[..r - 2];
        let (sq, sk, dv) = (scores_shape[rs - 2], scores_shape[rs - 1], out_shape[r - 1]);
        let d = g
            .value(qk_node.inputs[0])
            .shape
            .last()
            .copied()
            .unwrap_or(1);
        let fail = |what: &str| {
            CompileError::Internal(format!(
                "attention '{}': {what} view does not fit",
                g.node(softmax).name
            ))
        };
        let with_batch = |m: usize, n: usize| {
            let mut s = batch.to_vec();
            s.extend([m, n]);
            s
        };
        let q = self.view(qk_node.inputs[0])?;
        let mut k = self.view(qk_node.inputs[1])?;
        // Keys must be rows: a `k^T` operand (no transpose_b) is viewed transposed back.
        if !matches!(qk_node.op, Op::MatMul { transpose_b: true }) {
            k = k.swap_last_two().ok_or_else(|| fail("k"))?;
        }
        let mut v = self.view(pv_node.inputs[1])?;
        if matches!(pv_node.op, Op::MatMul { transpose_b: true }) {
            v = v.swap_last_two().ok_or_else(|| fail("v"))?;
        }
        let q = q
            .broadcast_to(&with_batch(sq, d))
            .ok_or_else(|| fail("q"))?;
        let k = k
            .broadcast_to(&with_batch(sk, d))
            .ok_or_else(|| fail("k"))?;
        let v = v
            .broadcast_to(&with_batch(sk, dv))
            .ok_or_else(|| fail("v"))?;
        let mut operands = Operands::default();
        let (q, k, v) = (operands.add(q), operands.add(k), operands.add(v));
        let prologue = self.chain_ops(&grp.prologue, out(g, qk), &mut operands)?;
        let root = grp.root(g);
        let output = self.result_view(root);
        let b: u64 = batch.iter().product::<usize>() as u64;
        let (sq, sk, d, dv) = (sq as u64, sk as u64, d as u64, dv as u64);
        let flops = b * sq * sk * (2 * d + 2 * dv + 5 + grp.prologue.len() as u64);
        let op = KernelOp::Attention { q, k, v, prologue };
        self.push_kernel(&grp.nodes(), op, operands, output, flops);
        Ok(())
    }

    fn emit_movement(&mut self, n: NodeId, fuse: bool) -> Result<(), CompileError> {
        if self.folded.contains(&n) {
            return Ok(());
        }
        let g = self.g;
        let (x, o) = (g.node(n).inputs[0], out(g, n));
        let src = self.view(x)?;
        let target = apply_movement(g, n, &src);
        if fuse
            && !g.is_output(o)
            && let Some(t) = &target
        {
            self.loc[o.index()] = Some(t.clone());
            return Ok(());
        }
        let t = self.result_tensor(o);
        let dst = View::contiguous(t, &g.value(o).shape);
        let mut operands = Operands::default();
        let output = match target {
            Some(v) => {
                operands.add(v);
                dst
            }
            None => {
                // A reshape of a view strides cannot express: copy the elements in
                // row-major order, which is what a reshape means.
                let shape = src.shape.clone();
                operands.add(src);
                dst.reshaped(&shape).ok_or_else(|| {
                    CompileError::Internal(format!(
                        "node '{}': contiguous reshape failed",
                        g.node(n).name
                    ))
                })?
            }
        };
        self.push_kernel(&[n], KernelOp::Copy { x: 0 }, operands, output, 0);
        Ok(())
    }

    fn emit_concat(&mut self, n: NodeId) -> Result<(), CompileError> {
        let g = self.g;
        let node = g.node(n);
        let o = out(g, n);
        let shape = g.value(o).shape.clone();
        let axis = match node.op {
            Op::Concat { axis } => normalize_axis(axis, shape.len()),
            _ => None,
        }
        .ok_or_else(|| CompileError::Internal(format!("node '{}': bad concat", node.name)))?;
        // A concat with folded pieces got its tensor when they were planned.
        let t = match &self.loc[o.index()] {
            Some(v) => v.tensor,
            None => self.result_tensor(o),
        };
        let whole = View::contiguous(t, &shape);
        let mut start = 0;
        for &piece in &node.inputs {
            let len = g.value(piece).shape[axis];
            if self.redirect.get(&piece).is_some_and(|v| v.tensor == t) {
                start += len;
                continue;
            }
            let dst = whole.sliced(axis, start, 1, len).ok_or_else(|| {
                CompileError::Internal(format!("node '{}': concat piece out of range", node.name))
            })?;
            let mut operands = Operands::default();
            operands.add(self.view(piece)?);
            self.push_kernel(&[n], KernelOp::Copy { x: 0 }, operands, dst, 0);
            start += len;
        }
        Ok(())
    }

    /// Lists the graph outputs; an output only visible as a view of another tensor (or an
    /// input returned under a new name) gets a copy into a tensor of its own.
    fn bind_outputs(&mut self) -> Result<(), CompileError> {
        let g = self.g;
        for &o in &g.outputs {
            let v = self.view(o)?;
            let name = &g.value(o).name;
            let t = &self.kg.tensors[v.tensor.0 as usize];
            if t.name == *name && v.is_whole_contiguous(t.numel()) {
                self.kg.outputs.push(v.tensor);
                continue;
            }
            let t = self.new_tensor(o, TensorKind::Output);
            let mut operands = Operands::default();
            operands.add(v);
            let output = View::contiguous(t, &g.value(o).shape);
            let kname = self.unique_name(format!("{name}.copy"));
            self.kg.kernels.push(Kernel {
                name: kname,
                nodes: Vec::new(),
                op: KernelOp::Copy { x: 0 },
                inputs: operands.views,
                output,
                mm_dtype: Dtype::F32,
                act_dtype: Dtype::F32,
                act_scale: None,
                flops: 0,
            });
            self.kg.outputs.push(t);
        }
        Ok(())
    }
}
