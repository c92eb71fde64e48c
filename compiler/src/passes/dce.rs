//! Dead-code elimination: removes nodes whose results reach no graph output, and params
//! no remaining node reads. Graph inputs stay (they are the interface).

use super::Pass;
use super::rewrite::compact;
use crate::CompileError;
use crate::ir::Graph;

/// The dead-code-elimination pass.
#[derive(Debug, Clone, Copy, Default)]
pub struct DeadCode;

impl Pass for DeadCode {
    fn name(&self) -> &str {
        "dce"
    }

    fn run(&self, g: &mut Graph) -> Result<bool, CompileError> {
        let mut live = vec![false; g.values.len()];
        for &o in &g.outputs {
            live[o.index()] = true;
        }
        let mut keep = vec![false; g.nodes.len()];
        // Nodes are in topological order, so one backward sweep finds everything a live
        // value depends on.
        for (i, n) in g.nodes.iter().enumerate().rev() {
            if n.outputs.iter().any(|o| live[o.index()]) {
                keep[i] = true;
                for &v in &n.inputs {
                    live[v.index()] = true;
                }
            }
        }
        Ok(compact(g, &keep))
    }
}
