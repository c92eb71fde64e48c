//! A Llama-style decoder with the shape of Llama 3.2 1B (Meta 2024): RMSNorm, SwiGLU
//! feed-forward blocks, rotary position embeddings (theta 500000, without Llama 3.1's
//! long-context frequency scaling) on heads of 64 and grouped-query attention (32 query
//! heads sharing 8 key/value heads, as a `[B, 8, 4, S, 64]` query against `[B, 8, 1, S,
//! 64]` keys), tied embeddings. The rotary cos/sin tables are `[S, 32]` literals
//! duplicated to `[S, 64]` in the graph. Input: `input_ids` `[B, S]` i64. Output: the
//! last position's `logits` `[B, 1, V]`.

use serde_json::json;

use super::builder::{Builder, Init};
use super::layers::{Attn, attention, causal_mask, last_token, positions, tied_logits};
use super::{Resolved, ZooError};
use crate::ir::DType;

/// Longest sequence the zoo builds for this model.
pub const MAX_SEQ: usize = 8192;

/// Builds the decoder.
pub fn build(name: &str, r: &Resolved) -> Result<Builder, ZooError> {
    let (h, heads, kv_heads, hd, ffn) = (2048, 32, 8, 64, 8192);
    let theta = 500_000f64;
    let (bsz, seq) = (r.batch, r.seq);
    let vocab = r.vocab.unwrap_or(128_256);
    let mut b = Builder::new(name);
    let ids = b.input("input_ids", &[bsz, seq], DType::I64)?;
    let emb = b.param("embed_tokens", &[vocab, h], Init::Normal(0.02))?;
    let mut x = b.node("embed", "gather", &[&emb, &ids], json!({"axis": 0}))?;
    let half = hd / 2;
    let (mut cos, mut sin) = (
        Vec::with_capacity(seq * half),
        Vec::with_capacity(seq * half),
    );
    for p in 0..seq {
        for i in 0..half {
            let angle = p as f64 * theta.powf(-((2 * i) as f64) / hd as f64);
            cos.push(angle.cos());
            sin.push(angle.sin());
        }
    }
    let c = b.buffer("rope.cos_half", &[seq, half], Init::Values(cos))?;
    let s = b.buffer("rope.sin_half", &[seq, half], Init::Values(sin))?;
    let c = b.node("rope.cos", "concat", &[&c, &c], json!({"axis": -1}))?;
    let s = b.node("rope.sin", "concat", &[&s, &s], json!({"axis": -1}))?;
    let pos = positions(&mut b, "positions", seq)?;
    let mask = causal_mask(&mut b, "mask", &pos, seq)?;
    for l in 0..r.layers {
        let p = format!("layers.{l}");
        let y = b.rms_norm(&format!("{p}.input_norm"), &x, h, 1e-5)?;
        let a = attention(
            &mut b,
            &format!("{p}.attn"),
            &y,
            &y,
            &Attn {
                batch: bsz,
                sq: seq,
                sk: seq,
                hidden: h,
                heads,
                kv_heads,
                head_dim: hd,
                bias: false,
                scale: Some(0.125),
                bias_add: Some(&mask),
                rotary: Some((&c, &s)),
            },
        )?;
        x = b.op(&format!("{p}.attn_residual"), "add", &[&x, &a])?;
        let y = b.rms_norm(&format!("{p}.post_attention_norm"), &x, h, 1e-5)?;
        let g = b.linear(&format!("{p}.mlp.gate"), &y, h, ffn, false)?;
        let u = b.linear(&format!("{p}.mlp.up"), &y, h, ffn, false)?;
        let g = b.op(&format!("{p}.mlp.silu"), "silu", &[&g])?;
        let gu = b.op(&format!("{p}.mlp.gated"), "mul", &[&g, &u])?;
        let d = b.linear(&format!("{p}.mlp.down"), &gu, ffn, h, false)?;
        x = b.op(&format!("{p}.mlp_residual"), "add", &[&x, &d])?;
    }
    let x = b.rms_norm("norm", &x, h, 1e-5)?;
    let last = last_token(&mut b, &x, seq)?;
    tied_logits(&mut b, &last, &emb)?;
    Ok(b)
}
