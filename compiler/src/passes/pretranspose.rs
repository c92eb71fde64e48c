//! Constant weights read transposed by a matmul (`x @ W^T`: `transpose_b` with `W` a
//! constant `[N, K]`) are handed to it as `W^T`, a `[K, N]` constant whose data is a
//! transposed view of the same param (`ParamData::transposed`: nothing is read or copied
//! until the artifact encoder streams it). The matmul then loads its weight with K on
//! partitions like any other, instead of loading `[N, K]` rows and turning every 128 x 128
//! block around on TensorE; at `--auto-cast matmult` the weight is also stored in the
//! matmul's bf16 instead of the param's fp32, half the bytes to read.
//!
//! A weight that other nodes read too, an embedding table tied to the output projection
//! (GPT-2's `wte`, T5's `shared`: the gather reads rows of it), keeps its own layout for
//! them, and the artifact holds both: the compiler trades artifact and HBM bytes (the
//! table again, in the matmul's dtype) for a logits kernel that reads half the bytes and
//! does no transposes. Numerics are unchanged: a transpose moves values exactly, and each
//! output is the same dot product over K.
//!
//! Trainable params are inputs of a training step, not constants, so training is untouched.

use std::collections::BTreeMap;

use super::Pass;
use super::rewrite::{add_const_data, is_const};
use crate::CompileError;
use crate::ir::{Graph, Op, ParamData, ValueId};

/// The pass.
pub struct PretransposeWeights;

impl Pass for PretransposeWeights {
    fn name(&self) -> &str {
        "pretranspose_weights"
    }

    fn run(&self, g: &mut Graph) -> Result<bool, CompileError> {
        let mut made: BTreeMap<ValueId, ValueId> = BTreeMap::new();
        let mut changed = false;
        for i in 0..g.nodes.len() {
            let node = &g.nodes[i];
            if node.op != (Op::MatMul { transpose_b: true }) || node.inputs.len() != 2 {
                continue;
            }
            let w = node.inputs[1];
            if !is_const(g, w) || g.value(w).shape.len() != 2 {
                continue;
            }
            let wt = match made.get(&w) {
                Some(&wt) => wt,
                None => {
                    let Some(t) = g.value(w).data.as_ref().and_then(ParamData::transposed) else {
                        continue;
                    };
                    let name = format!("{}.T", g.value(w).name);
                    let wt = add_const_data(g, &name, t)?;
                    made.insert(w, wt);
                    wt
                }
            };
            let node = &mut g.nodes[i];
            node.inputs[1] = wt;
            node.op = Op::MatMul { transpose_b: false };
            changed = true;
        }
        Ok(changed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::{DType, Tensor};
    use crate::reference::{RefOptions, run_reference};
    use ndarray::{ArrayD, IxDyn};
    use std::collections::BTreeMap as Map;

    /// `y = x @ E^T` with `E` also gathered from (a tied embedding table).
    fn tied() -> Graph {
        let mut g = Graph::new("tied");
        let ids = g.add_input("ids", vec![3], DType::I64).unwrap();
        let x = g.add_input("x", vec![2, 4], DType::F32).unwrap();
        let e = ArrayD::from_shape_fn(IxDyn(&[5, 4]), |i| (i[0] * 4 + i[1]) as f32 * 0.25 - 2.0);
        let e = g.add_param("table", Tensor::F32(e)).unwrap();
        let rows = g
            .add_node("rows", Op::Gather { axis: 0 }, &[e, ids], "rows")
            .unwrap();
        let y = g
            .add_node(
                "logits",
                Op::MatMul { transpose_b: true },
                &[x, e],
                "logits",
            )
            .unwrap();
        g.outputs = vec![rows, y];
        g
    }

    #[test]
    fn a_tied_table_gets_a_transposed_copy_for_the_matmul_and_keeps_its_rows() {
        let g0 = tied();
        let mut g = g0.clone();
        assert!(PretransposeWeights.run(&mut g).unwrap());
        g.verify().unwrap();
        let mm = g.node(g.node_by_name("logits").unwrap());
        assert_eq!(mm.op, Op::MatMul { transpose_b: false });
        let wt = g.value(mm.inputs[1]);
        assert_eq!(
            (wt.name.as_str(), wt.shape.as_slice()),
            ("table.T", &[4, 5][..])
        );
        // The gather still reads the table itself.
        let gather = g.node(g.node_by_name("rows").unwrap());
        assert_eq!(g.value(gather.inputs[0]).name, "table");
        // Same results, and nothing left to do.
        let mut inputs = Map::new();
        inputs.insert(
            "ids".to_string(),
            Tensor::I64(ArrayD::from_shape_vec(IxDyn(&[3]), vec![4, 0, 2]).unwrap()),
        );
        let xs = ArrayD::from_shape_fn(IxDyn(&[2, 4]), |i| (i[0] + 2 * i[1]) as f32 - 3.0);
        inputs.insert("x".to_string(), Tensor::F32(xs));
        let before = run_reference(&g0, &inputs, RefOptions::default()).unwrap();
        let after = run_reference(&g, &inputs, RefOptions::default()).unwrap();
        assert_eq!(before, after);
        assert!(!PretransposeWeights.run(&mut g).unwrap());
    }

    #[test]
    fn activations_read_transposed_are_left_alone() {
        // `q @ k^T` of two inputs: no constant, no rewrite.
        let mut g = Graph::new("qk");
        let q = g.add_input("q", vec![2, 4], DType::F32).unwrap();
        let k = g.add_input("k", vec![3, 4], DType::F32).unwrap();
        let s = g
            .add_node(
                "scores",
                Op::MatMul { transpose_b: true },
                &[q, k],
                "scores",
            )
            .unwrap();
        g.outputs = vec![s];
        assert!(!PretransposeWeights.run(&mut g).unwrap());
    }
}
