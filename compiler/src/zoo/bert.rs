//! BERT (Devlin et al. 2019) and DistilBERT (Sanh et al. 2019) encoders: word, position
//! and token-type embeddings, post-LN layers with GELU feed-forward blocks, BERT's tanh
//! pooler. Inputs: `input_ids`, `token_type_ids` `[B, S]` i64 and an additive
//! `attention_mask` `[B, 1, 1, S]` (0 for real tokens, a large negative for padding).

use serde_json::json;

use super::builder::{Builder, Init};
use super::layers::{Attn, attention, mlp};
use super::{Resolved, ZooError};
use crate::ir::DType;

/// One BERT-family shape.
pub struct BertShape {
    /// Width.
    pub hidden: usize,
    /// Heads.
    pub heads: usize,
    /// Feed-forward width.
    pub ffn: usize,
    /// Position table rows (the longest sequence).
    pub max_pos: usize,
    /// BERT has token types and a pooler; DistilBERT has neither.
    pub distil: bool,
}

/// Builds the encoder.
pub fn build(name: &str, s: &BertShape, r: &Resolved) -> Result<Builder, ZooError> {
    let (bsz, seq, h) = (r.batch, r.seq, s.hidden);
    let vocab = r.vocab.unwrap_or(30522);
    let mut b = Builder::new(name);
    let ids = b.input("input_ids", &[bsz, seq], DType::I64)?;
    let types = if s.distil {
        None
    } else {
        Some(b.input("token_type_ids", &[bsz, seq], DType::I64)?)
    };
    let mask = b.input("attention_mask", &[bsz, 1, 1, seq], DType::F32)?;
    let wte = b.param("embeddings.word", &[vocab, h], Init::Normal(0.02))?;
    let wpe = b.param("embeddings.position", &[s.max_pos, h], Init::Normal(0.02))?;
    let tok = b.node(
        "embeddings.word_lookup",
        "gather",
        &[&wte, &ids],
        json!({"axis": 0}),
    )?;
    let pos = b.node(
        "embeddings.position_rows",
        "slice",
        &[&wpe],
        json!({"starts": [0], "ends": [seq], "axes": [0]}),
    )?;
    let mut x = b.op("embeddings.sum", "add", &[&tok, &pos])?;
    if let Some(types) = types {
        let tte = b.param("embeddings.token_type", &[2, h], Init::Normal(0.02))?;
        let t = b.node(
            "embeddings.type_lookup",
            "gather",
            &[&tte, &types],
            json!({"axis": 0}),
        )?;
        x = b.op("embeddings.sum_types", "add", &[&x, &t])?;
    }
    x = b.layer_norm("embeddings.ln", &x, h, 1e-12)?;
    let heads = s.heads;
    for l in 0..r.layers {
        let p = format!("layer{l}");
        let a = attention(
            &mut b,
            &format!("{p}.attn"),
            &x,
            &x,
            &Attn {
                batch: bsz,
                sq: seq,
                sk: seq,
                hidden: h,
                heads,
                kv_heads: heads,
                head_dim: h / heads,
                bias: true,
                scale: Some(1.0 / ((h / heads) as f64).sqrt()),
                bias_add: Some(&mask),
                rotary: None,
            },
        )?;
        let res = b.op(&format!("{p}.attn_residual"), "add", &[&a, &x])?;
        let y = b.layer_norm(&format!("{p}.ln1"), &res, h, 1e-12)?;
        let f = mlp(&mut b, &format!("{p}.ffn"), &y, h, s.ffn, "gelu", true)?;
        let res2 = b.op(&format!("{p}.ffn_residual"), "add", &[&f, &y])?;
        x = b.layer_norm(&format!("{p}.ln2"), &res2, h, 1e-12)?;
    }
    b.output(&x);
    if !s.distil {
        let first = b.node(
            "pooler.first_token",
            "slice",
            &[&x],
            json!({"starts": [0], "ends": [1], "axes": [1]}),
        )?;
        let first = b.reshape("pooler.rows", &first, &[bsz, h])?;
        let d = b.linear("pooler.dense", &first, h, h, true)?;
        let pooled = b.op("pooled", "tanh", &[&d])?;
        b.output(&pooled);
    }
    Ok(b)
}
