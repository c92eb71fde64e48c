//! The model.json document as plain serde structs, before any checking.
//!
//! Every struct here accepts only a JSON object: serde's derived visitors would also take
//! an array of the fields in order (`["x", [2], "f32"]` for an input), skipping every
//! field-name check. Each struct derives its field handling under `remote = "Self"` (an
//! inherent `deserialize`) and [`object_only!`] implements the trait by asking for a map.

use serde::Deserialize;
use serde::de::{Deserializer, MapAccess, Visitor, value::MapAccessDeserializer};

/// Implements `Deserialize` for a `#[serde(remote = "Self")]` struct so that only a JSON
/// object is accepted; `$what` names the expected object in the error.
macro_rules! object_only {
    ($t:ident, $what:literal) => {
        impl<'de> Deserialize<'de> for $t {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                struct ObjectVisitor;
                impl<'de> Visitor<'de> for ObjectVisitor {
                    type Value = $t;
                    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                        f.write_str($what)
                    }
                    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<$t, A::Error> {
                        $t::deserialize(MapAccessDeserializer::new(map))
                    }
                }
                d.deserialize_map(ObjectVisitor)
            }
        }
    };
}

object_only!(
    RawModel,
    "a JSON object (the model must be an object with \"nodes\" and \"outputs\")"
);
object_only!(RawInput, "an input object {\"name\", \"shape\", \"dtype\"}");
object_only!(
    RawParam,
    "a param object {\"name\", \"shape\", \"dtype\", \"init\" or \"value\"}"
);
object_only!(
    RawNode,
    "a node object {\"name\", \"op\", \"inputs\", \"outputs\", \"attrs\"}"
);

/// The top-level model.json object.
#[derive(Deserialize, Debug)]
#[serde(remote = "Self", deny_unknown_fields)]
pub(crate) struct RawModel {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub seed: u64,
    #[serde(default)]
    pub inputs: Vec<RawInput>,
    #[serde(default)]
    pub params: Vec<RawParam>,
    #[serde(default)]
    pub weights: Option<String>,
    pub nodes: Vec<RawNode>,
    pub outputs: Vec<String>,
    /// The optional `training` section, parsed by [`crate::train::TrainingSpec::from_json`].
    #[serde(default)]
    #[allow(dead_code)]
    pub training: Option<serde_json::Value>,
}

/// One entry of `inputs`.
#[derive(Deserialize, Debug)]
#[serde(remote = "Self", deny_unknown_fields)]
pub(crate) struct RawInput {
    pub name: String,
    pub shape: Vec<usize>,
    #[serde(default)]
    pub dtype: Option<String>,
}

/// One entry of `params`.
#[derive(Deserialize, Debug)]
#[serde(remote = "Self", deny_unknown_fields)]
pub(crate) struct RawParam {
    pub name: String,
    pub shape: Vec<usize>,
    #[serde(default)]
    pub dtype: Option<String>,
    #[serde(default)]
    pub init: Option<RawInit>,
    #[serde(default)]
    pub value: Option<serde_json::Value>,
}

/// A param `init`: `"zeros"`, `"ones"`, `{"normal": {...}}` or `{"uniform": {...}}`.
#[derive(Deserialize, Debug, Clone, Copy)]
#[serde(rename_all = "lowercase", deny_unknown_fields)]
pub(crate) enum RawInit {
    Zeros,
    Ones,
    Normal {
        std: f64,
        #[serde(default)]
        mean: f64,
    },
    Uniform {
        low: f64,
        high: f64,
    },
}

/// One entry of `nodes`.
#[derive(Deserialize, Debug)]
#[serde(remote = "Self", deny_unknown_fields)]
pub(crate) struct RawNode {
    pub name: String,
    pub op: String,
    pub inputs: Vec<String>,
    pub outputs: Vec<String>,
    #[serde(default)]
    pub attrs: serde_json::Map<String, serde_json::Value>,
}
