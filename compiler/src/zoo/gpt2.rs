//! GPT-2 (Radford et al. 2019) prefill: token and position embeddings, pre-LN decoder
//! blocks with causal self-attention and tanh-GELU feed-forward blocks, final layer norm,
//! and the next-token logits of the last position from the tied embedding matrix.
//! Input: `input_ids` `[B, S]` i64. Outputs: `logits` `[B, 1, V]`.

use serde_json::json;

use super::builder::{Builder, Init};
use super::layers::{Attn, attention, causal_mask, last_token, mlp, positions, tied_logits};
use super::{Resolved, ZooError};
use crate::ir::DType;

/// One GPT-2 size.
pub struct Gpt2Shape {
    /// Width.
    pub hidden: usize,
    /// Heads.
    pub heads: usize,
}

/// The context length (position table rows).
pub const MAX_POS: usize = 1024;

/// Builds the decoder.
pub fn build(name: &str, s: &Gpt2Shape, r: &Resolved) -> Result<Builder, ZooError> {
    let (bsz, seq, h) = (r.batch, r.seq, s.hidden);
    let vocab = r.vocab.unwrap_or(50257);
    let mut b = Builder::new(name);
    let ids = b.input("input_ids", &[bsz, seq], DType::I64)?;
    let wte = b.param("wte", &[vocab, h], Init::Normal(0.02))?;
    let wpe = b.param("wpe", &[MAX_POS, h], Init::Normal(0.01))?;
    let tok = b.node("wte_lookup", "gather", &[&wte, &ids], json!({"axis": 0}))?;
    let pos = b.node(
        "wpe_rows",
        "slice",
        &[&wpe],
        json!({"starts": [0], "ends": [seq], "axes": [0]}),
    )?;
    let mut x = b.op("embed", "add", &[&tok, &pos])?;
    let p = positions(&mut b, "positions", seq)?;
    let mask = causal_mask(&mut b, "mask", &p, seq)?;
    for l in 0..r.layers {
        let p = format!("h{l}");
        let y = b.layer_norm(&format!("{p}.ln_1"), &x, h, 1e-5)?;
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
                heads: s.heads,
                kv_heads: s.heads,
                head_dim: h / s.heads,
                bias: true,
                scale: Some(1.0 / ((h / s.heads) as f64).sqrt()),
                bias_add: Some(&mask),
                rotary: None,
            },
        )?;
        x = b.op(&format!("{p}.attn_residual"), "add", &[&x, &a])?;
        let y = b.layer_norm(&format!("{p}.ln_2"), &x, h, 1e-5)?;
        let f = mlp(&mut b, &format!("{p}.mlp"), &y, h, 4 * h, "gelu_tanh", true)?;
        x = b.op(&format!("{p}.mlp_residual"), "add", &[&x, &f])?;
    }
    let x = b.layer_norm("ln_f", &x, h, 1e-5)?;
    let last = last_token(&mut b, &x, seq)?;
    tied_logits(&mut b, &last, &wte)?;
    Ok(b)
}
