//! The model zoo: standard architectures at full size, generated as model.json documents
//! with seeded `init` weights (no download; the files stay small). `neuronc zoo list`
//! prints them with their parameter counts and FLOPs; `neuronc zoo get NAME` writes one.
//! One file per family; [`builder::Builder`] infers every shape with the IR's own rules
//! while the document is written, so a zoo model is valid by construction (and the tests
//! load each one through the frontend).
//!
//! Counting conventions: parameters are trained weights (embedding tables, projections,
//! norms, biases; not batch-norm running statistics, masks or position tables); FLOPs
//! are `2 x` the multiply-accumulates of matmul and conv2d nodes (the convention of the
//! published figures; element-wise work is not counted).

mod bert;
mod builder;
mod gpt2;
mod layers;
mod llama;
mod mlp;
mod resnet;
mod t5;
mod vit;

pub use builder::{Builder, Init};

/// What went wrong building a zoo model.
#[derive(Debug, thiserror::Error)]
pub enum ZooError {
    /// No such model.
    #[error("unknown zoo model '{name}' (expected one of: {known})")]
    Unknown {
        /// The name asked for.
        name: String,
        /// The valid names, comma-separated.
        known: String,
    },
    /// An option out of range for this model.
    #[error("{model}: {option} {value}: {reason}")]
    Option {
        /// The model.
        model: String,
        /// The option (`--seq`, ...).
        option: &'static str,
        /// The value given.
        value: String,
        /// What was expected.
        reason: String,
    },
    /// A tensor of the model would exceed the size limits.
    #[error("{model}: {message}")]
    Size {
        /// The model.
        model: String,
        /// Which tensor and why.
        message: String,
    },
    /// A bug in a zoo builder.
    #[error("internal zoo error: {0}")]
    Internal(String),
}

/// The sizes asked for; `None` takes the model's default.
#[derive(Clone, Debug, Default)]
pub struct ZooOptions {
    /// Batch size (default 1).
    pub batch: Option<usize>,
    /// Sequence length of text models.
    pub seq: Option<usize>,
    /// Image height and width of vision models.
    pub image: Option<(usize, usize)>,
    /// Layers (blocks per stage for ResNet), at most the architecture's own count.
    pub layers: Option<usize>,
    /// Vocabulary size override (the published one by default); tests use a small one.
    pub vocab: Option<usize>,
}

/// Options after defaults and checks.
#[derive(Clone, Debug)]
pub struct Resolved {
    /// Batch.
    pub batch: usize,
    /// Sequence length (text models).
    pub seq: usize,
    /// Image size (vision models).
    pub image: (usize, usize),
    /// Layers.
    pub layers: usize,
    /// Vocabulary override.
    pub vocab: Option<usize>,
}

/// What a model takes.
#[derive(Clone, Copy, Debug)]
enum Kind {
    /// Token sequences: default and longest length.
    Text { seq: usize, max_seq: usize },
    /// Images: smallest side, and the side must be a multiple of this.
    Image { min: usize, multiple: usize },
    /// Flat feature vectors.
    Flat,
}

/// One zoo entry.
pub struct Entry {
    /// The name for `neuronc zoo get`.
    pub name: &'static str,
    /// One line about it, with its source.
    pub summary: &'static str,
    /// The published parameter count (millions) this model is checked against.
    pub published_params_m: f64,
    kind: Kind,
    layers: usize,
}

const ENTRIES: &[Entry] = &[
    Entry {
        name: "bert-base",
        summary: "BERT-base uncased encoder, 12x768, seq 128 (Devlin et al. 2019)",
        published_params_m: 110.0,
        kind: Kind::Text {
            seq: 128,
            max_seq: 512,
        },
        layers: 12,
    },
    Entry {
        name: "bert-large",
        summary: "BERT-large uncased encoder, 24x1024, seq 128 (Devlin et al. 2019)",
        published_params_m: 340.0,
        kind: Kind::Text {
            seq: 128,
            max_seq: 512,
        },
        layers: 24,
    },
    Entry {
        name: "distilbert",
        summary: "DistilBERT base uncased, 6x768, seq 128 (Sanh et al. 2019)",
        published_params_m: 66.0,
        kind: Kind::Text {
            seq: 128,
            max_seq: 512,
        },
        layers: 6,
    },
    Entry {
        name: "gpt2",
        summary: "GPT-2 small prefill, 12x768, seq 512 (Radford et al. 2019)",
        published_params_m: 124.0,
        kind: Kind::Text {
            seq: 512,
            max_seq: gpt2::MAX_POS,
        },
        layers: 12,
    },
    Entry {
        name: "gpt2-medium",
        summary: "GPT-2 medium prefill, 24x1024, seq 512 (Radford et al. 2019)",
        published_params_m: 355.0,
        kind: Kind::Text {
            seq: 512,
            max_seq: gpt2::MAX_POS,
        },
        layers: 24,
    },
    Entry {
        name: "t5-small",
        summary: "T5 v1.0 small encoder-decoder, 6+6x512, seq 128 (Raffel et al. 2020)",
        published_params_m: 60.0,
        kind: Kind::Text {
            seq: 128,
            max_seq: 4096,
        },
        layers: 6,
    },
    Entry {
        name: "t5-base",
        summary: "T5 v1.0 base encoder-decoder, 12+12x768, seq 128 (Raffel et al. 2020)",
        published_params_m: 220.0,
        kind: Kind::Text {
            seq: 128,
            max_seq: 4096,
        },
        layers: 12,
    },
    Entry {
        name: "vit-b16",
        summary: "ViT-B/16 image classifier, 12x768, 224x224 (Dosovitskiy et al. 2021)",
        published_params_m: 86.0,
        kind: Kind::Image {
            min: 16,
            multiple: vit::PATCH,
        },
        layers: 12,
    },
    Entry {
        name: "resnet50",
        summary: "ResNet-50 v1.5 image classifier, 224x224 (He et al. 2016)",
        published_params_m: 25.6,
        kind: Kind::Image {
            min: 32,
            multiple: 1,
        },
        layers: 6,
    },
    Entry {
        name: "llama-1b",
        summary: "Llama-3.2-1B-shaped decoder prefill: RMSNorm, SwiGLU, RoPE, GQA 32/8, seq 2048",
        published_params_m: 1236.0,
        kind: Kind::Text {
            seq: 2048,
            max_seq: llama::MAX_SEQ,
        },
        layers: 16,
    },
    Entry {
        name: "mlp",
        summary: "the seed's 784-512-10 perceptron (MNIST-shaped)",
        published_params_m: 0.407,
        kind: Kind::Flat,
        layers: 1,
    },
];

/// Largest batch the zoo generates.
pub const MAX_BATCH: usize = 4096;
/// Largest image side the zoo generates.
pub const MAX_IMAGE: usize = 4096;

/// Every zoo entry, in listing order.
pub fn entries() -> &'static [Entry] {
    ENTRIES
}

/// The valid names, comma-separated.
pub fn names() -> String {
    ENTRIES
        .iter()
        .map(|e| e.name)
        .collect::<Vec<_>>()
        .join(", ")
}

/// The entry called `name`.
pub fn entry(name: &str) -> Result<&'static Entry, ZooError> {
    ENTRIES
        .iter()
        .find(|e| e.name == name)
        .ok_or_else(|| ZooError::Unknown {
            name: name.to_string(),
            known: names(),
        })
}

/// A generated model: its model.json document and the facts `zoo list` prints.
#[derive(Debug, Clone)]
pub struct ZooModel {
    /// The zoo name.
    pub name: String,
    /// The model.json document.
    pub json: serde_json::Value,
    /// Trained parameters.
    pub params: u64,
    /// Multiply-accumulates per inference (matmul and conv2d).
    pub macs: u64,
    /// The sizes it was built at.
    pub sizes: Resolved,
}

impl ZooModel {
    /// FLOPs per inference: 2 per multiply-accumulate.
    pub fn flops(&self) -> u64 {
        2 * self.macs
    }

    /// The model.json text.
    pub fn to_json_string(&self) -> String {
        self.json.to_string()
    }
}

impl Entry {
    fn bad(&self, option: &'static str, value: impl ToString, reason: String) -> ZooError {
        ZooError::Option {
            model: self.name.to_string(),
            option,
            value: value.to_string(),
            reason,
        }
    }

    /// Whether the model takes `--seq` (a text model).
    pub fn takes_seq(&self) -> bool {
        matches!(self.kind, Kind::Text { .. })
    }

    /// Applies defaults and checks every size before anything is built.
    pub fn resolve(&self, o: &ZooOptions) -> Result<Resolved, ZooError> {
        let batch = o.batch.unwrap_or(1);
        if !(1..=MAX_BATCH).contains(&batch) {
            return Err(self.bad("--batch", batch, format!("expected 1 to {MAX_BATCH}")));
        }
        let layers = o.layers.unwrap_or(self.layers);
        if !(1..=self.layers).contains(&layers) {
            return Err(self.bad(
                "--layers",
                layers,
                format!(
                    "expected 1 to {} (the architecture's own count)",
                    self.layers
                ),
            ));
        }
        if let Some(v) = o.vocab
            && v == 0
        {
            return Err(self.bad("--vocab", v, "expected at least 1".into()));
        }
        let (mut seq, mut image) = (0, (0, 0));
        match self.kind {
            Kind::Text { seq: d, max_seq } => {
                if o.image.is_some() {
                    return Err(self.bad(
                        "--image",
                        "",
                        "a text model takes --seq, not --image".into(),
                    ));
                }
                seq = o.seq.unwrap_or(d);
                if !(1..=max_seq).contains(&seq) {
                    return Err(self.bad("--seq", seq, format!("expected 1 to {max_seq}")));
                }
            }
            Kind::Image { min, multiple } => {
                if o.seq.is_some() {
                    return Err(self.bad(
                        "--seq",
                        "",
                        "a vision model takes --image HxW, not --seq".into(),
                    ));
                }
                image = o.image.unwrap_or((224, 224));
                for side in [image.0, image.1] {
                    if side < min || side > MAX_IMAGE || side % multiple != 0 {
                        return Err(self.bad(
                            "--image",
                            format!("{}x{}", image.0, image.1),
                            format!("each side must be {min} to {MAX_IMAGE} and a multiple of {multiple}"),
                        ));
                    }
                }
            }
            Kind::Flat => {
                if o.seq.is_some() || o.image.is_some() {
                    return Err(self.bad("--seq/--image", "", "the mlp takes only --batch".into()));
                }
            }
        }
        Ok(Resolved {
            batch,
            seq,
            image,
            layers,
            vocab: o.vocab,
        })
    }

    /// Builds the model at the given sizes.
    pub fn build(&self, o: &ZooOptions) -> Result<ZooModel, ZooError> {
        let r = self.resolve(o)?;
        let n = self.name;
        let b = match n {
            "bert-base" => bert::build(
                n,
                &bert::BertShape {
                    hidden: 768,
                    heads: 12,
                    ffn: 3072,
                    max_pos: 512,
                    distil: false,
                },
                &r,
            ),
            "bert-large" => bert::build(
                n,
                &bert::BertShape {
                    hidden: 1024,
                    heads: 16,
                    ffn: 4096,
                    max_pos: 512,
                    distil: false,
                },
                &r,
            ),
            "distilbert" => bert::build(
                n,
                &bert::BertShape {
                    hidden: 768,
                    heads: 12,
                    ffn: 3072,
                    max_pos: 512,
                    distil: true,
                },
                &r,
            ),
            "gpt2" => gpt2::build(
                n,
                &gpt2::Gpt2Shape {
                    hidden: 768,
                    heads: 12,
                },
                &r,
            ),
            "gpt2-medium" => gpt2::build(
                n,
                &gpt2::Gpt2Shape {
                    hidden: 1024,
                    heads: 16,
                },
                &r,
            ),
            "t5-small" => t5::build(
                n,
                &t5::T5Shape {
                    hidden: 512,
                    heads: 8,
                    ffn: 2048,
                },
                &r,
            ),
            "t5-base" => t5::build(
                n,
                &t5::T5Shape {
                    hidden: 768,
                    heads: 12,
                    ffn: 3072,
                },
                &r,
            ),
            "vit-b16" => vit::build(n, &r),
            "resnet50" => resnet::build(n, &r),
            "llama-1b" => llama::build(n, &r),
            "mlp" => mlp::build(n, &r),
            other => return Err(ZooError::Internal(format!("no builder for '{other}'"))),
        }?;
        let (params, macs) = (b.param_count, b.macs);
        Ok(ZooModel {
            name: n.to_string(),
            json: b.finish(0),
            params,
            macs,
            sizes: r,
        })
    }
}

/// Builds zoo model `name` at the given sizes.
pub fn build(name: &str, o: &ZooOptions) -> Result<ZooModel, ZooError> {
    entry(name)?.build(o)
}
