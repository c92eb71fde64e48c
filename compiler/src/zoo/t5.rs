//! T5 v1.0 (Raffel et al. 2020) encoder-decoder: shared embedding, pre-norm layers with
//! RMS layer norms and no biases, ReLU feed-forward blocks, relative position buckets
//! (bidirectional in the encoder, causal in the decoder; one bias table per stack, used by
//! every layer), cross-attention from the decoder to the encoder output, and the tied LM
//! head scaled by `d_model^-0.5`. The buckets are computed in the graph from a positions
//! vector, as Hugging Face's `_relative_position_bucket` does (see [`position_bias`]). Inputs: `input_ids` and `decoder_input_ids` `[B, S]`
//! i64. Output: the last decoder position's `logits` `[B, 1, V]`.

use serde_json::json;

use super::builder::{Builder, Init};
use super::layers::{
    Attn, attention, causal_mask, last_token, mlp, positions, query_minus_key, tied_logits,
};
use super::{Resolved, ZooError};
use crate::ir::DType;

/// One T5 size.
pub struct T5Shape {
    /// Width.
    pub hidden: usize,
    /// Heads (of 64).
    pub heads: usize,
    /// Feed-forward width.
    pub ffn: usize,
}

const BUCKETS: usize = 32;
const MAX_DISTANCE: f64 = 128.0;

/// `min(relu(x), 1)`: 1 where an integer-valued `x` is positive, else 0.
fn positive(b: &mut Builder, name: &str, x: &str) -> Result<String, ZooError> {
    let r = b.op(&format!("{name}.relu"), "relu", &[x])?;
    let one = b.scalar(&format!("{name}.one"), 1.0)?;
    b.op(name, "min", &[&r, &one])
}

/// The `[H, S, S]` relative position bias of one stack (plus the causal mask in the
/// decoder). Hugging Face's `_relative_position_bucket` written with float element-wise
/// ops only (the chip has no integer compare): comparisons of integer-valued distances
/// are `min(relu(x), 1)`, and the bucket's one-hot row is a difference of steps
/// `[x >= b] - [x >= b + 1]` (which also truncates the logarithmic buckets), so the table
/// lookup is a `[S, S, 32] x [32, H]` matmul.
fn position_bias(
    b: &mut Builder,
    p: &str,
    pos: &str,
    seq: usize,
    heads: usize,
    causal: bool,
) -> Result<String, ZooError> {
    let qmk = query_minus_key(b, p, pos, seq)?; // i - j
    let (nb, n) = if causal {
        (BUCKETS, b.op(&format!("{p}.n"), "relu", &[&qmk])?)
    } else {
        (BUCKETS / 2, b.op(&format!("{p}.n"), "abs", &[&qmk])?)
    };
    let exact = (nb / 2) as f64;
    let exact_c = b.scalar(&format!("{p}.max_exact"), exact)?;
    let room = b.op(&format!("{p}.below_exact"), "sub", &[&exact_c, &n])?;
    let small = positive(b, &format!("{p}.is_small"), &room)?;
    let one = b.scalar(&format!("{p}.one"), 1.0)?;
    let nl = b.op(&format!("{p}.n_at_least_1"), "max", &[&n, &one])?;
    let inv_exact = b.scalar(&format!("{p}.inv_max_exact"), 1.0 / exact)?;
    let ratio = b.op(&format!("{p}.ratio"), "mul", &[&nl, &inv_exact])?;
    let lg = b.op(&format!("{p}.log_ratio"), "log", &[&ratio])?;
    let k = (nb as f64 - exact) / (MAX_DISTANCE / exact).ln();
    let kc = b.scalar(&format!("{p}.log_scale"), k)?;
    let large = b.op(&format!("{p}.large_off"), "mul", &[&lg, &kc])?;
    let large = b.op(&format!("{p}.large"), "add", &[&large, &exact_c])?;
    let top = b.scalar(&format!("{p}.last_bucket"), (nb - 1) as f64)?;
    let large = b.op(&format!("{p}.large_clamped"), "min", &[&large, &top])?;
    // small * n + (1 - small) * large
    let sn = b.op(&format!("{p}.small_n"), "mul", &[&small, &n])?;
    let not_small = b.op(&format!("{p}.not_small"), "sub", &[&one, &small])?;
    let ln = b.op(&format!("{p}.large_n"), "mul", &[&not_small, &large])?;
    let mut bucket = b.op(&format!("{p}.bucket_in_half"), "add", &[&sn, &ln])?;
    if !causal {
        let kmq = b.op(&format!("{p}.kmq"), "neg", &[&qmk])?;
        let fut = positive(b, &format!("{p}.is_future"), &kmq)?;
        let half = b.scalar(&format!("{p}.half_buckets"), nb as f64)?;
        let ret = b.op(&format!("{p}.direction"), "mul", &[&fut, &half])?;
        bucket = b.op(&format!("{p}.bucket"), "add", &[&bucket, &ret])?;
    }
    // steps[b] = [bucket >= b] for b in 0..=32, via min(relu((x - b) * 1e6 + 1), 1).
    let x = b.reshape(&format!("{p}.bucket_col"), &bucket, &[seq, seq, 1])?;
    let ar = b.buffer(
        &format!("{p}.bucket_ids"),
        &[BUCKETS + 1],
        Init::Values((0..=BUCKETS).map(|i| i as f64).collect()),
    )?;
    let d = b.op(&format!("{p}.bucket_minus_id"), "sub", &[&x, &ar])?;
    let sharp = b.scalar(&format!("{p}.sharp"), 1e6)?;
    let d = b.op(&format!("{p}.sharpened"), "mul", &[&d, &sharp])?;
    let d = b.op(&format!("{p}.shifted"), "add", &[&d, &one])?;
    let steps = positive(b, &format!("{p}.steps"), &d)?;
    let lo = b.node(
        &format!("{p}.steps_lo"),
        "slice",
        &[&steps],
        json!({"starts": [0], "ends": [BUCKETS], "axes": [-1]}),
    )?;
    let hi = b.node(
        &format!("{p}.steps_hi"),
        "slice",
        &[&steps],
        json!({"starts": [1], "ends": [BUCKETS + 1], "axes": [-1]}),
    )?;
    let onehot = b.op(&format!("{p}.onehot"), "sub", &[&lo, &hi])?;
    let table = b.param(
        &format!("{p}.relative_attention_bias"),
        &[BUCKETS, heads],
        Init::Normal(0.02),
    )?;
    let bias = b.op(&format!("{p}.bias_ssh"), "matmul", &[&onehot, &table])?;
    let bias = b.transpose(&format!("{p}.bias_hss"), &bias, &[2, 0, 1])?;
    if causal {
        let mask = causal_mask(b, &format!("{p}.causal"), pos, seq)?;
        b.op(&format!("{p}.bias_masked"), "add", &[&bias, &mask])
    } else {
        Ok(bias)
    }
}

/// Builds the encoder-decoder.
pub fn build(name: &str, s: &T5Shape, r: &Resolved) -> Result<Builder, ZooError> {
    let (bsz, seq, h) = (r.batch, r.seq, s.hidden);
    let vocab = r.vocab.unwrap_or(32128);
    let mut b = Builder::new(name);
    let ids = b.input("input_ids", &[bsz, seq], DType::I64)?;
    let dec_ids = b.input("decoder_input_ids", &[bsz, seq], DType::I64)?;
    let shared = b.param("shared", &[vocab, h], Init::Normal(1.0))?;
    let pos = positions(&mut b, "positions", seq)?;
    let attn = |bias_add| Attn {
        batch: bsz,
        sq: seq,
        sk: seq,
        hidden: h,
        heads: s.heads,
        kv_heads: s.heads,
        head_dim: 64,
        bias: false,
        scale: None,
        bias_add,
        rotary: None,
    };
    // Encoder.
    let enc_bias = position_bias(&mut b, "encoder.position", &pos, seq, s.heads, false)?;
    let mut x = b.node(
        "encoder.embed",
        "gather",
        &[&shared, &ids],
        json!({"axis": 0}),
    )?;
    for l in 0..r.layers {
        let p = format!("encoder.{l}");
        let y = b.rms_norm(&format!("{p}.ln_attn"), &x, h, 1e-6)?;
        let a = attention(
            &mut b,
            &format!("{p}.self"),
            &y,
            &y,
            &attn(Some(enc_bias.as_str())),
        )?;
        x = b.op(&format!("{p}.attn_residual"), "add", &[&x, &a])?;
        let y = b.rms_norm(&format!("{p}.ln_ffn"), &x, h, 1e-6)?;
        let f = mlp(&mut b, &format!("{p}.ffn"), &y, h, s.ffn, "relu", false)?;
        x = b.op(&format!("{p}.ffn_residual"), "add", &[&x, &f])?;
    }
    let enc = b.rms_norm("encoder.final_ln", &x, h, 1e-6)?;
    // Decoder.
    let dec_bias = position_bias(&mut b, "decoder.position", &pos, seq, s.heads, true)?;
    let mut x = b.node(
        "decoder.embed",
        "gather",
        &[&shared, &dec_ids],
        json!({"axis": 0}),
    )?;
    for l in 0..r.layers {
        let p = format!("decoder.{l}");
        let y = b.rms_norm(&format!("{p}.ln_self"), &x, h, 1e-6)?;
        let a = attention(
            &mut b,
            &format!("{p}.self"),
            &y,
            &y,
            &attn(Some(dec_bias.as_str())),
        )?;
        x = b.op(&format!("{p}.self_residual"), "add", &[&x, &a])?;
        let y = b.rms_norm(&format!("{p}.ln_cross"), &x, h, 1e-6)?;
        let a = attention(&mut b, &format!("{p}.cross"), &y, &enc, &attn(None))?;
        x = b.op(&format!("{p}.cross_residual"), "add", &[&x, &a])?;
        let y = b.rms_norm(&format!("{p}.ln_ffn"), &x, h, 1e-6)?;
        let f = mlp(&mut b, &format!("{p}.ffn"), &y, h, s.ffn, "relu", false)?;
        x = b.op(&format!("{p}.ffn_residual"), "add", &[&x, &f])?;
    }
    let x = b.rms_norm("decoder.final_ln", &x, h, 1e-6)?;
    let last = last_token(&mut b, &x, seq)?;
    let sc = b.scalar("lm_scale", 1.0 / (h as f64).sqrt())?;
    let last = b.op("last_token_scaled", "mul", &[&last, &sc])?;
    tied_logits(&mut b, &last, &shared)?;
    Ok(b)
}
