//! Sibling projections merged into one matmul: `x @ W_i + b_i` for `i = 1..n`, every
//! `W_i` a constant `[K, N_i]` and every `b_i` a constant `[N_i]` row, becomes one
//! `x @ [W_1 .. W_n] + [b_1 .. b_n]` followed by a column slice per projection (a view:
//! no data moves). A transformer's query, key and value projections read their shared
//! input from HBM once instead of three times, its transpose is built once, and TensorE
//! runs the three back to back in one kernel instead of waiting at two kernel
//! boundaries.
//!
//! Runs only when fusing (`--no-fuse` keeps one kernel per op). The merged nodes and
//! constants are named after the old matmuls joined by `|` (`q.mm|k.mm|v.mm`, its weight
//! `q.mm|k.mm|v.mm_w`).
//!
//! Numerics are unchanged: every output column is still the same dot product over K,
//! accumulated in the same order, plus the same bias element.

use ndarray::{Axis, concatenate};

use super::Pass;
use super::rewrite::{
    add_const, add_const_data, insert_node_before, is_const, replace_uses, use_count,
};
use crate::CompileError;
use crate::ir::{DType, Graph, NodeId, Op, ParamData, Tensor, ValueId};

/// The pass.
pub struct MergeMatmuls;

impl Pass for MergeMatmuls {
    fn name(&self) -> &str {
        "merge_matmuls"
    }

    fn run(&self, g: &mut Graph) -> Result<bool, CompileError> {
        let mut changed = false;
        // Each merge inserts nodes (shifting node ids): look the next group up afresh.
        while let Some(group) = next_group(g) {
            merge(g, &group)?;
            changed = true;
        }
        Ok(changed)
    }
}

/// One projection: the matmul node, its weight, the bias add node and its bias.
#[derive(Debug, Clone, Copy)]
struct Proj {
    mm: NodeId,
    w: ValueId,
    add: NodeId,
    bias: ValueId,
}

/// `x @ w + b` rooted at matmul node `n`, if it has that form: `w` a constant `[K, N]`,
/// the product read only by one `add` with a constant `[N]` row of the same type, whose
/// result is read (so not already merged away) and is not a graph output.
fn projection(g: &Graph, n: NodeId) -> Option<Proj> {
    let node = g.node(n);
    if node.op != (Op::MatMul { transpose_b: false }) {
        return None;
    }
    let (x, w) = (node.inputs[0], node.inputs[1]);
    let wv = g.value(w);
    if !is_const(g, w) || wv.shape.len() != 2 || g.value(x).shape.len() < 2 {
        return None;
    }
    let mm_out = *node.outputs.first()?;
    let users = g.users(mm_out);
    if users.len() != 1 || use_count(g, mm_out) != 1 {
        return None;
    }
    let add = users[0];
    let an = g.node(add);
    if an.op != Op::Add || an.inputs.len() != 2 {
        return None;
    }
    let bias = if an.inputs[0] == mm_out {
        an.inputs[1]
    } else {
        an.inputs[0]
    };
    let bv = g.value(bias);
    let out = *an.outputs.first()?;
    let ok = is_const(g, bias)
        && bv.shape == [wv.shape[1]]
        && bv.dtype == wv.dtype
        && g.value(out).shape == g.value(mm_out).shape
        && !g.is_output(out)
        && use_count(g, out) > 0;
    ok.then_some(Proj {
        mm: n,
        w,
        add,
        bias,
    })
}

/// The first group of at least two projections of one input with weights of one type and
/// one K.
fn next_group(g: &Graph) -> Option<Vec<Proj>> {
    let mut by_input: Vec<(ValueId, Vec<Proj>)> = Vec::new();
    for n in g.node_ids() {
        let Some(p) = projection(g, n) else { continue };
        let x = g.node(n).inputs[0];
        let (k, dt) = (g.value(p.w).shape[0], g.value(p.w).dtype);
        match by_input.iter_mut().find(|(v, ps)| {
            *v == x && g.value(ps[0].w).shape[0] == k && g.value(ps[0].w).dtype == dt
        }) {
            Some((_, ps)) => ps.push(p),
            None => by_input.push((x, vec![p])),
        }
    }
    by_input
        .into_iter()
        .map(|(_, ps)| ps)
        .find(|ps| ps.len() >= 2)
}

fn data(g: &Graph, v: ValueId) -> Result<ndarray::ArrayD<f64>, CompileError> {
    g.value(v)
        .data
        .as_ref()
        .map(|t| t.to_f64())
        .ok_or_else(|| CompileError::Internal("merge_matmuls: constant without data".into()))
}

/// The group's weights side by side: by reference when they are float params (a seeded
/// BERT-large's Q/K/V weights are never drawn here, the artifact encoder streams them
/// from the parts), else concatenated.
fn weights(g: &Graph, group: &[Proj], dtype: DType) -> Result<ParamData, CompileError> {
    let parts: Option<Vec<ParamData>> = group.iter().map(|p| g.value(p.w).data.clone()).collect();
    if let Some(cat) = parts.and_then(|ps| ParamData::concat_columns(&ps, dtype)) {
        return Ok(cat);
    }
    let internal = |e: ndarray::ShapeError| CompileError::Internal(format!("merge_matmuls: {e}"));
    let ws = group
        .iter()
        .map(|p| data(g, p.w))
        .collect::<Result<Vec<_>, _>>()?;
    let views: Vec<_> = ws.iter().map(|a| a.view()).collect();
    // Row-major storage (`concatenate` along columns may return another memory order,
    // which every later reader of the weight would walk element by element).
    let w_cat = concatenate(Axis(1), &views)
        .map_err(internal)?
        .as_standard_layout()
        .into_owned();
    Ok(Tensor::from_f64(dtype, w_cat).into())
}

fn merge(g: &mut Graph, group: &[Proj]) -> Result<(), CompileError> {
    let internal = |e: ndarray::ShapeError| CompileError::Internal(format!("merge_matmuls: {e}"));
    let first = group[0];
    let x = g.node(first.mm).inputs[0];
    let dtype = g.value(first.w).dtype;
    let bs = group
        .iter()
        .map(|p| data(g, p.bias))
        .collect::<Result<Vec<_>, _>>()?;
    let w_cat = weights(g, group, dtype)?;
    let views: Vec<_> = bs.iter().map(|a| a.view()).collect();
    let b_cat = concatenate(Axis(0), &views).map_err(internal)?;
    let names: Vec<String> = group.iter().map(|p| g.node(p.mm).name.clone()).collect();
    let base = names.join("|");
    let w_v = add_const_data(g, &format!("{base}_w"), w_cat)?;
    let b_v = add_const(g, &format!("{base}_b"), Tensor::from_f64(dtype, b_cat))?;
    let outs: Vec<ValueId> = group.iter().map(|p| g.node(p.add).outputs[0]).collect();
    // Everything goes just before the earliest matmul of the group: `x` and the constants
    // are available there, and every reader of a projection comes later.
    let mut at = group.iter().map(|p| p.mm).min().unwrap_or(first.mm);
    let mm = insert_node_before(
        g,
        at,
        &base,
        Op::MatMul { transpose_b: false },
        &[x, w_v],
        &format!("{base}.mm"),
    )?;
    at = NodeId(at.0 + 1);
    let lin = insert_node_before(
        g,
        at,
        &format!("{base}.bias"),
        Op::Add,
        &[mm, b_v],
        &format!("{base}.lin"),
    )?;
    at = NodeId(at.0 + 1);
    let axis = g.value(lin).shape.len() as i64 - 1;
    let mut col = 0i64;
    for (p, old) in group.iter().zip(outs) {
        let n = g.value(p.w).shape[1] as i64;
        let name = g.value(old).name.clone();
        let s = insert_node_before(
            g,
            at,
            &format!("{name}.slice"),
            Op::Slice {
                axes: vec![axis],
                starts: vec![col],
                ends: vec![col + n],
                steps: vec![1],
            },
            &[lin],
            &format!("{name}.cols"),
        )?;
        at = NodeId(at.0 + 1);
        // The old matmul and add are now unread: dead-code elimination removes them.
        replace_uses(g, old, s);
        col += n;
    }
    tracing::debug!(merged = %base, "sibling projections merged");
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::ir::DType;
    use ndarray::{ArrayD, IxDyn};

    fn konst(shape: &[usize], seed: f64) -> Tensor {
        let n: usize = shape.iter().product();
        let v: Vec<f64> = (0..n).map(|i| ((i as f64 + seed) * 0.37).sin()).collect();
        Tensor::from_f64(DType::F32, ArrayD::from_shape_vec(IxDyn(shape), v).unwrap())
    }

    /// x -> three `x @ W + b` projections (two sharing K = 8, one `[8, 3]`), plus a
    /// projection of another input that must stay alone.
    fn graph() -> Graph {
        let mut g = Graph::new("qkv");
        let x = g.add_input("x", vec![2, 4, 8], DType::F32).unwrap();
        let y = g.add_input("y", vec![4, 8], DType::F32).unwrap();
        let mut outs = Vec::new();
        for (i, n) in [5usize, 5, 3].into_iter().enumerate() {
            let w = g
                .add_param(format!("w{i}"), konst(&[8, n], i as f64))
                .unwrap();
            let b = g
                .add_param(format!("b{i}"), konst(&[n], 10.0 + i as f64))
                .unwrap();
            let mm = g
                .add_node(
                    format!("mm{i}"),
                    Op::MatMul { transpose_b: false },
                    &[x, w],
                    format!("p{i}"),
                )
                .unwrap();
            // The second projection adds its bias on the left.
            let ins = if i == 1 { [b, mm] } else { [mm, b] };
            let lin = g
                .add_node(format!("add{i}"), Op::Add, &ins, format!("l{i}"))
                .unwrap();
            let r = g
                .add_node(format!("relu{i}"), Op::Relu, &[lin], format!("o{i}"))
                .unwrap();
            outs.push(r);
        }
        let w = g.add_param("wy", konst(&[8, 5], 7.0)).unwrap();
        let b = g.add_param("by", konst(&[5], 8.0)).unwrap();
        let mm = g
            .add_node("mmy", Op::MatMul { transpose_b: false }, &[y, w], "py")
            .unwrap();
        let lin = g.add_node("addy", Op::Add, &[mm, b], "ly").unwrap();
        outs.push(g.add_node("reluy", Op::Relu, &[lin], "oy").unwrap());
        for o in outs {
            g.add_output(o).unwrap();
        }
        g
    }

    #[test]
    fn merges_the_projections_of_one_input_and_keeps_the_values() {
        let g0 = graph();
        let mut g = g0.clone();
        assert!(MergeMatmuls.run(&mut g).unwrap());
        g.verify().unwrap();
        super::super::run_pass(&mut g, &super::super::dce::DeadCode).unwrap();
        let matmuls: Vec<_> = g
            .node_ids()
            .filter(|&n| matches!(g.node(n).op, Op::MatMul { .. }))
            .map(|n| g.value(g.node(n).inputs[1]).shape.clone())
            .collect();
        assert_eq!(
            matmuls,
            vec![vec![8, 13], vec![8, 5]],
            "one merged, y alone"
        );
        // The merged weight is stored row-major (readers take it as a slice).
        let w = g
            .node_ids()
            .find(|&n| g.node(n).name == "mm0|mm1|mm2")
            .map(|n| g.node(n).inputs[1])
            .unwrap();
        let Some(Tensor::F32(a)) = g.value(w).data.as_ref().map(|d| d.tensor().clone()) else {
            panic!("merged weight is not f32 data")
        };
        assert!(a.is_standard_layout());
        // A second run finds nothing left to merge.
        assert!(!MergeMatmuls.run(&mut g).unwrap());
        assert_same_outputs(&g0, &g);
    }

    fn assert_same_outputs(g0: &Graph, g: &Graph) {
        use crate::reference::{RefOptions, random_inputs, run_reference};
        let inputs = random_inputs(g0);
        let want = run_reference(g0, &inputs, RefOptions::default()).unwrap();
        let got = run_reference(g, &inputs, RefOptions::default()).unwrap();
        for (name, w) in &want {
            let gt = &got[name];
            assert_eq!(gt.shape(), w.shape(), "{name}");
            assert_eq!(gt.to_f64(), w.to_f64(), "{name}: bit-identical values");
        }
    }

    #[test]
    fn seeded_weights_are_merged_by_reference_without_drawing_them() {
        use crate::ir::InitSpec;
        let spec = InitSpec::Normal {
            mean: 0.0,
            std: 0.02,
        };
        let mut g0 = Graph::new("qkv");
        let x = g0.add_input("x", vec![4, 8], DType::Bf16).unwrap();
        let mut ws = Vec::new();
        for i in 0..3 {
            let name = format!("w{i}");
            let w = ParamData::seeded(spec, 3, &name, &[8, 6], DType::Bf16).unwrap();
            ws.push(w.clone());
            let w = g0
                .add_param_decl(name, vec![8, 6], DType::Bf16, Some(w))
                .unwrap();
            let b = g0
                .add_param(format!("b{i}"), Tensor::zeros(DType::Bf16, &[6]))
                .unwrap();
            let mm = g0
                .add_node(
                    format!("mm{i}"),
                    Op::MatMul { transpose_b: false },
                    &[x, w],
                    format!("p{i}"),
                )
                .unwrap();
            let lin = g0
                .add_node(format!("add{i}"), Op::Add, &[mm, b], format!("l{i}"))
                .unwrap();
            let r = g0
                .add_node(format!("relu{i}"), Op::Relu, &[lin], format!("o{i}"))
                .unwrap();
            g0.add_output(r).unwrap();
        }
        let mut g = g0.clone();
        assert!(MergeMatmuls.run(&mut g).unwrap());
        let w = g.value_by_name("mm0|mm1|mm2_w").unwrap();
        let data = g.value(w).data.clone().unwrap();
        assert_eq!(
            (data.shape(), data.dtype()),
            (&[8usize, 18][..], DType::Bf16)
        );
        assert!(!data.is_materialized() && ws.iter().all(|w| !w.is_materialized()));
        assert_same_outputs(&g0, &g);
    }
}
