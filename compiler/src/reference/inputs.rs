//! Deterministic generated inputs for graph inputs the user did not supply.

use std::collections::BTreeMap;

use ndarray::{ArrayD, IxDyn};

use crate::ir::limits::checked_numel;
use crate::ir::shape_infer::normalize_axis;
use crate::ir::{DType, Graph, Op, Tensor, ValueId};
use crate::rng::SeededRng;

/// Number of distinct values drawn for integer inputs that index no gather.
pub use neuron_isa::host::INT_INPUT_RANGE;

/// The smallest indexed-axis size over the gathers using `id` as indices, if any: the
/// exclusive upper bound of valid values for it.
pub fn index_bound(graph: &Graph, id: ValueId) -> Option<u64> {
    graph
        .nodes
        .iter()
        .filter_map(|n| match n.op {
            Op::Gather { axis } if n.inputs.get(1) == Some(&id) => {
                let data = graph.value(n.inputs[0]);
                normalize_axis(axis, data.shape.len()).map(|a| data.shape[a] as u64)
            }
            _ => None,
        })
        .min()
}

/// [`index_bound`] of every integer graph input that indexes a gather, by name. Compiled
/// artifacts record these (`ArtifactMeta::index_bounds`) so that the runtime draws the
/// same generated inputs as [`random_inputs`].
pub fn index_bounds(graph: &Graph) -> BTreeMap<String, u64> {
    graph
        .inputs
        .iter()
        .filter(|&&id| !graph.value(id).dtype.is_float() && graph.value(id).dtype != DType::Bool)
        .filter_map(|&id| Some((graph.value(id).name.clone(), index_bound(graph, id)?)))
        .collect()
}

/// The exclusive upper bound for values of integer input `id`: its [`index_bound`], else
/// [`INT_INPUT_RANGE`].
fn int_bound(graph: &Graph, id: ValueId) -> u64 {
    index_bound(graph, id).unwrap_or(INT_INPUT_RANGE)
}

/// Generates one tensor for the single input `id`.
pub fn random_input(graph: &Graph, id: ValueId) -> Tensor {
    let v = graph.value(id);
    let mut rng = SeededRng::for_tensor(graph.seed, &v.name);
    // Shapes in a graph were checked against the limits when it was built.
    let n = checked_numel(&v.shape).unwrap_or(0);
    let values: Vec<f64> = match v.dtype {
        d if d.is_float() => (0..n).map(|_| rng.standard_normal()).collect(),
        DType::Bool => (0..n)
            .map(|_| if rng.uniform01() < 0.5 { 1.0 } else { 0.0 })
            .collect(),
        _ => {
            let bound = int_bound(graph, id);
            (0..n).map(|_| rng.below(bound) as f64).collect()
        }
    };
    let a = ArrayD::from_shape_vec(IxDyn(&v.shape), values)
        .unwrap_or_else(|_| ArrayD::zeros(IxDyn(&v.shape)));
    Tensor::from_f64(v.dtype, a)
}

/// Deterministic inputs for every graph input, keyed by name.
///
/// Each input `x` is drawn from [`SeededRng::for_tensor`]`(graph.seed, "x")`
/// in row-major order: floats are standard normal N(0, 1) (rounded to the
/// dtype); integers are uniform in `[0, rows)` where `rows` is the smallest
/// indexed-axis size of the gathers using the input as indices, else
/// uniform in `[0, 8)`; bools are `u < 0.5` for uniform `u` in `[0, 1)`.
pub fn random_inputs(graph: &Graph) -> BTreeMap<String, Tensor> {
    graph
        .inputs
        .iter()
        .map(|&id| (graph.value(id).name.clone(), random_input(graph, id)))
        .collect()
}
