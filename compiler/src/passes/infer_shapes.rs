//! Shape inference: re-derives every node's output type from its inputs with the op's
//! own rule ([`Op::infer`](crate::ir::Op::infer)), after rewrites have replaced operands.
//! A rewrite that changes a type is a bug unless inference agrees, so this pass both
//! refreshes and checks.

use super::Pass;
use crate::CompileError;
use crate::ir::{Graph, GraphError, TensorType};

/// The shape-inference pass.
#[derive(Debug, Clone, Copy, Default)]
pub struct InferShapes;

impl Pass for InferShapes {
    fn name(&self) -> &str {
        "infer-shapes"
    }

    fn run(&self, g: &mut Graph) -> Result<bool, CompileError> {
        let mut changed = false;
        for index in 0..g.nodes.len() {
            let node = &g.nodes[index];
            let types: Vec<TensorType> = node.inputs.iter().map(|&v| g.ty(v)).collect();
            let inferred = node.op.infer(&types).map_err(|e| GraphError::Node {
                node: node.name.clone(),
                index,
                op: node.op.name(),
                site: e.site,
                message: e.message,
            })?;
            let outputs = node.outputs.clone();
            for (o, t) in outputs.into_iter().zip(inferred) {
                let v = g.value_mut(o);
                if v.shape != t.shape || v.dtype != t.dtype {
                    v.shape = t.shape;
                    v.dtype = t.dtype;
                    changed = true;
                }
            }
        }
        Ok(changed)
    }
}
