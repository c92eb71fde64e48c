//! The model.json document as plain serde structs, before any checking.

use serde::Deserialize;

/// The top-level model.json object.
#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
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
#[serde(deny_unknown_fields)]
pub(crate) struct RawInput {
    pub name: String,
    pub shape: Vec<usize>,
    #[serde(default)]
    pub dtype: Option<String>,
}

/// One entry of `params`.
#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
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
#[serde(deny_unknown_fields)]
pub(crate) struct RawNode {
    pub name: String,
    pub op: String,
    pub inputs: Vec<String>,
    pub outputs: Vec<String>,
    #[serde(default)]
    pub attrs: serde_json::Map<String, serde_json::Value>,
}
