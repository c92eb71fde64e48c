//! Common-subexpression elimination: two nodes with the same op, the same attributes and
//! the same inputs compute the same value; later readers use the first one. The
//! duplicate is left for dead-code elimination (unless it is a graph output, whose name
//! must stay).

use std::collections::HashMap;

use super::Pass;
use super::rewrite::replace_uses;
use crate::CompileError;
use crate::ir::{Graph, ValueId};

/// The common-subexpression-elimination pass.
#[derive(Debug, Clone, Copy, Default)]
pub struct CommonSubexpressions;

impl Pass for CommonSubexpressions {
    fn name(&self) -> &str {
        "cse"
    }

    fn run(&self, g: &mut Graph) -> Result<bool, CompileError> {
        // The op's Debug form names the op and every attribute exactly (floats print
        // round-trip), so it is a sound key.
        let mut seen: HashMap<(String, Vec<ValueId>), ValueId> = HashMap::new();
        let mut changed = false;
        for i in 0..g.nodes.len() {
            let node = &g.nodes[i];
            let key = (format!("{:?}", node.op), node.inputs.clone());
            let o = node.outputs[0];
            match seen.get(&key) {
                Some(&first) if !g.is_output(o) => {
                    // Skip nodes already rewired away (no readers): nothing to do.
                    if g.nodes.iter().any(|n| n.inputs.contains(&o)) {
                        replace_uses(g, o, first);
                        changed = true;
                    }
                }
                Some(_) => {}
                None => {
                    seen.insert(key, o);
                }
            }
        }
        Ok(changed)
    }
}
