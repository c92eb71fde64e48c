//! Typed reading of a node's `attrs` object into an [`Op`].

use std::collections::BTreeSet;

use serde_json::{Map, Value};

use super::ModelError;
use crate::ir::{DType, GeluApprox, OP_NAMES, Op};

/// Reads attributes of one node, tracking which were consumed.
struct AttrReader<'a> {
    attrs: &'a Map<String, Value>,
    op: &'a str,
    node: &'a str,
    index: usize,
    known: BTreeSet<&'static str>,
}

/// A short description of a JSON value for "found ..." messages.
pub(crate) fn describe(v: &Value) -> String {
    let s = v.to_string();
    let s = if s.chars().count() > 40 {
        format!("{}...", s.chars().take(40).collect::<String>())
    } else {
        s
    };
    let kind = match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "list",
        Value::Object(_) => "object",
    };
    format!("{kind} {s}")
}

impl<'a> AttrReader<'a> {
    fn err(&self, key: &str, message: String) -> ModelError {
        ModelError::Node {
            path: format!("nodes[{}].attrs.{key}", self.index),
            node: self.node.to_string(),
            index: self.index,
            message,
        }
    }

    fn get(&mut self, key: &'static str) -> Option<&'a Value> {
        self.known.insert(key);
        self.attrs.get(key)
    }

    fn ill_typed(&self, key: &str, expected: &str, v: &Value) -> ModelError {
        self.err(
            key,
            format!(
                "attribute '{key}' of {} must be {expected}, found {}",
                self.op,
                describe(v)
            ),
        )
    }

    fn missing(&self, key: &str, expected: &str) -> ModelError {
        ModelError::Node {
            path: format!("nodes[{}].attrs", self.index),
            node: self.node.to_string(),
            index: self.index,
            message: format!("{} requires attribute '{key}' ({expected})", self.op),
        }
    }

    fn int(&mut self, key: &'static str, default: Option<i64>) -> Result<i64, ModelError> {
        match self.get(key) {
            None => default.ok_or_else(|| self.missing(key, "an integer")),
            Some(v) => v
                .as_i64()
                .ok_or_else(|| self.ill_typed(key, "an integer", v)),
        }
    }

    fn count(&mut self, key: &'static str, default: usize) -> Result<usize, ModelError> {
        match self.get(key) {
            None => Ok(default),
            Some(v) => v
                .as_u64()
                .and_then(|x| usize::try_from(x).ok())
                .filter(|&x| x >= 1)
                .ok_or_else(|| self.ill_typed(key, "an integer >= 1", v)),
        }
    }

    fn boolean(&mut self, key: &'static str, default: bool) -> Result<bool, ModelError> {
        match self.get(key) {
            None => Ok(default),
            Some(v) => v
                .as_bool()
                .ok_or_else(|| self.ill_typed(key, "true or false", v)),
        }
    }

    fn float(&mut self, key: &'static str, default: f32) -> Result<f32, ModelError> {
        match self.get(key) {
            None => Ok(default),
            Some(v) => {
                let x = v
                    .as_f64()
                    .ok_or_else(|| self.ill_typed(key, "a number", v))?;
                let f = x as f32;
                if !f.is_finite() {
                    return Err(self.err(
                        key,
                        format!(
                            "attribute '{key}' of {} is {x}, which is not a finite f32",
                            self.op
                        ),
                    ));
                }
                Ok(f)
            }
        }
    }

    fn string(&mut self, key: &'static str) -> Result<Option<&'a str>, ModelError> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_str()
                .map(Some)
                .ok_or_else(|| self.ill_typed(key, "a string", v)),
        }
    }

    fn ints(
        &mut self,
        key: &'static str,
        default: Option<Vec<i64>>,
    ) -> Result<Vec<i64>, ModelError> {
        match self.get(key) {
            None => default.ok_or_else(|| self.missing(key, "a list of integers")),
            Some(v) => {
                let list = v
                    .as_array()
                    .ok_or_else(|| self.ill_typed(key, "a list of integers", v))?;
                list.iter()
                    .map(|x| {
                        x.as_i64()
                            .ok_or_else(|| self.ill_typed(key, "a list of integers", v))
                    })
                    .collect()
            }
        }
    }

    /// A fixed-length list of non-negative (or, with `positive`, >= 1) integers.
    fn fixed<const N: usize>(
        &mut self,
        key: &'static str,
        default: Option<[usize; N]>,
        positive: bool,
    ) -> Result<[usize; N], ModelError> {
        let expected = format!(
            "a list of {N} integers {}",
            if positive { ">= 1" } else { ">= 0" }
        );
        let Some(v) = self.get(key) else {
            return default.ok_or_else(|| self.missing(key, &expected));
        };
        let bad = || self.ill_typed(key, &expected, v);
        let list = v.as_array().ok_or_else(bad)?;
        if list.len() != N {
            return Err(bad());
        }
        let mut out = [0usize; N];
        for (o, x) in out.iter_mut().zip(list) {
            *o = x
                .as_u64()
                .and_then(|x| usize::try_from(x).ok())
                .filter(|&x| !positive || x >= 1)
                .ok_or_else(bad)?;
        }
        Ok(out)
    }

    /// Rejects attributes the op does not have.
    fn finish(self) -> Result<(), ModelError> {
        for key in self.attrs.keys() {
            if !self.known.contains(key.as_str()) {
                let expected = if self.known.is_empty() {
                    "it takes no attributes".to_string()
                } else {
                    format!(
                        "expected one of: {}",
                        self.known.iter().copied().collect::<Vec<_>>().join(", ")
                    )
                };
                return Err(self.err(
                    key,
                    format!("unknown attribute '{key}' for {} ({expected})", self.op),
                ));
            }
        }
        Ok(())
    }
}

/// Levenshtein distance, for "did you mean" hints.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, &cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != cb);
            cur.push(sub.min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}

/// Builds the typed [`Op`] for node `index` from its op name and attributes.
pub(crate) fn parse_op(
    op: &str,
    attrs: &Map<String, Value>,
    node: &str,
    index: usize,
) -> Result<Op, ModelError> {
    let Some(&op_name) = OP_NAMES.iter().find(|&&n| n == op) else {
        let hint = OP_NAMES
            .iter()
            .map(|n| (edit_distance(op, n), n))
            .min()
            .filter(|(d, _)| *d <= 2)
            .map(|(_, n)| format!("did you mean '{n}'? "))
            .unwrap_or_default();
        return Err(ModelError::Node {
            path: format!("nodes[{index}].op"),
            node: node.to_string(),
            index,
            message: format!(
                "unknown op '{op}' ({hint}expected one of: {})",
                OP_NAMES.join(", ")
            ),
        });
    };
    let mut r = AttrReader {
        attrs,
        op: op_name,
        node,
        index,
        known: BTreeSet::new(),
    };
    let reduce = |r: &mut AttrReader| -> Result<(Vec<i64>, bool), ModelError> {
        Ok((r.ints("axes", None)?, r.boolean("keepdims", true)?))
    };
    let parsed = match op_name {
        "add" => Op::Add,
        "sub" => Op::Sub,
        "mul" => Op::Mul,
        "div" => Op::Div,
        "max" => Op::Max,
        "min" => Op::Min,
        "pow" => Op::Pow,
        "neg" => Op::Neg,
        "abs" => Op::Abs,
        "exp" => Op::Exp,
        "log" => Op::Log,
        "sqrt" => Op::Sqrt,
        "rsqrt" => Op::Rsqrt,
        "reciprocal" => Op::Reciprocal,
        "relu" => Op::Relu,
        "sigmoid" => Op::Sigmoid,
        "tanh" => Op::Tanh,
        "erf" => Op::Erf,
        "silu" => Op::Silu,
        "gelu" => {
            let approximate = match r.string("approximate")? {
                None | Some("none") => GeluApprox::None,
                Some("tanh") => GeluApprox::Tanh,
                Some(other) => {
                    return Err(r.err(
                        "approximate",
                        format!(
                            "attribute 'approximate' of gelu must be \"none\" or \"tanh\", found \"{other}\""
                        ),
                    ));
                }
            };
            Op::Gelu { approximate }
        }
        "matmul" => Op::MatMul {
            transpose_b: r.boolean("transpose_b", false)?,
        },
        "softmax" => Op::Softmax {
            axis: r.int("axis", Some(-1))?,
        },
        "layer_norm" => Op::LayerNorm {
            axis: r.int("axis", Some(-1))?,
            epsilon: r.float("epsilon", 1e-5)?,
        },
        "rms_norm" => Op::RmsNorm {
            axis: r.int("axis", Some(-1))?,
            epsilon: r.float("epsilon", 1e-6)?,
        },
        "batch_norm" => Op::BatchNorm {
            epsilon: r.float("epsilon", 1e-5)?,
        },
        "reduce_sum" => {
            let (axes, keepdims) = reduce(&mut r)?;
            Op::ReduceSum { axes, keepdims }
        }
        "reduce_mean" => {
            let (axes, keepdims) = reduce(&mut r)?;
            Op::ReduceMean { axes, keepdims }
        }
        "reduce_max" => {
            let (axes, keepdims) = reduce(&mut r)?;
            Op::ReduceMax { axes, keepdims }
        }
        "transpose" => {
            let perm = r.ints("perm", None)?;
            let perm = perm
                .iter()
                .map(|&p| usize::try_from(p))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|_| {
                    r.err(
                        "perm",
                        format!(
                            "perm {perm:?} has a negative entry, expected a permutation of 0..rank"
                        ),
                    )
                })?;
            Op::Transpose { perm }
        }
        "reshape" => Op::Reshape {
            shape: r.ints("shape", None)?,
        },
        "concat" => Op::Concat {
            axis: r.int("axis", None)?,
        },
        "slice" => Op::Slice {
            starts: r.ints("starts", None)?,
            ends: r.ints("ends", None)?,
            axes: r.ints("axes", Some(vec![]))?,
            steps: r.ints("steps", Some(vec![]))?,
        },
        "gather" => Op::Gather {
            axis: r.int("axis", Some(0))?,
        },
        "where" => Op::Where,
        "cast" => {
            let Some(name) = r.string("dtype")? else {
                return Err(r.missing("dtype", "a dtype name"));
            };
            let dtype: DType = name.parse().map_err(|e| r.err("dtype", format!("{e}")))?;
            Op::Cast { dtype }
        }
        "conv2d" => Op::Conv2d {
            strides: r.fixed("strides", Some([1, 1]), true)?,
            pads: r.fixed("pads", Some([0, 0, 0, 0]), false)?,
            dilations: r.fixed("dilations", Some([1, 1]), true)?,
            groups: r.count("groups", 1)?,
        },
        "max_pool2d" => Op::MaxPool2d {
            kernel: r.fixed("kernel", None, true)?,
            strides: r.fixed("strides", Some([1, 1]), true)?,
            pads: r.fixed("pads", Some([0, 0, 0, 0]), false)?,
        },
        "avg_pool2d" => Op::AvgPool2d {
            kernel: r.fixed("kernel", None, true)?,
            strides: r.fixed("strides", Some([1, 1]), true)?,
            pads: r.fixed("pads", Some([0, 0, 0, 0]), false)?,
            count_include_pad: r.boolean("count_include_pad", false)?,
        },
        "global_avg_pool" => Op::GlobalAvgPool,
        other => {
            return Err(r.err("", format!("op '{other}' has no attribute parser")));
        }
    };
    r.finish()?;
    Ok(parsed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distances() {
        assert_eq!(edit_distance("gelu", "gelu"), 0);
        assert_eq!(edit_distance("gelu2", "gelu"), 1);
        assert_eq!(edit_distance("matmal", "matmul"), 1);
    }
}
