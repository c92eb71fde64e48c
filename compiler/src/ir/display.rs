//! The stable text dump of a graph (golden tests, `--dump`).

use std::fmt;

use super::Graph;
use super::shape_infer::fmt_shape;

impl fmt::Display for Graph {
    /// One line per declaration and node:
    ///
    /// ```text
    /// graph mlp seed=7
    /// input %0 x : [8,784] f32
    /// param %1 w1 : [784,512] f32
    /// n0 fc1 = matmul[transpose_b=false](%0 x, %1 w1) : [8,512] f32 -> %3 h
    /// output %3 h
    /// ```
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "graph {} seed={}", self.name, self.seed)?;
        for &id in &self.inputs {
            let v = self.value(id);
            writeln!(
                f,
                "input {id} {} : {} {}",
                v.name,
                fmt_shape(&v.shape),
                v.dtype
            )?;
        }
        for &id in &self.params {
            let v = self.value(id);
            let data = if v.data.is_some() { "" } else { " (no data)" };
            writeln!(
                f,
                "param {id} {} : {} {}{data}",
                v.name,
                fmt_shape(&v.shape),
                v.dtype
            )?;
        }
        for (i, node) in self.nodes.iter().enumerate() {
            let args: Vec<String> = node
                .inputs
                .iter()
                .map(|&v| format!("{v} {}", self.value(v).name))
                .collect();
            let ty: Vec<String> = node
                .outputs
                .iter()
                .map(|&v| {
                    let v = self.value(v);
                    format!("{} {}", fmt_shape(&v.shape), v.dtype)
                })
                .collect();
            let outs: Vec<String> = node
                .outputs
                .iter()
                .map(|&v| format!("{v} {}", self.value(v).name))
                .collect();
            writeln!(
                f,
                "n{i} {} = {}({}) : {} -> {}",
                node.name,
                node.op,
                args.join(", "),
                ty.join(", "),
                outs.join(", ")
            )?;
        }
        for &id in &self.outputs {
            writeln!(f, "output {id} {}", self.value(id).name)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::ir::{DType, Graph, Op, Tensor};

    #[test]
    fn dump_is_stable() {
        let mut g = Graph::new("mlp");
        g.seed = 7;
        let x = g.add_input("x", [8, 4], DType::F32).unwrap();
        let b = g.add_param("b1", Tensor::zeros(DType::F32, &[4])).unwrap();
        let h = g.add_node("fc1_bias", Op::Add, &[x, b], "h1").unwrap();
        g.add_output(h).unwrap();
        assert_eq!(
            g.to_string(),
            "graph mlp seed=7\n\
             input %0 x : [8,4] f32\n\
             param %1 b1 : [4] f32\n\
             n0 fc1_bias = add(%0 x, %1 b1) : [8,4] f32 -> %2 h1\n\
             output %2 h1\n"
        );
    }
}
