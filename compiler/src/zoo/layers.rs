//! Transformer pieces shared by the families: multi-head (and grouped-query) attention with
//! optional rotary embeddings, masks and position biases, and the causal mask itself.

use serde_json::json;

use super::ZooError;
use super::builder::{Builder, Init};

/// One attention block's configuration.
pub struct Attn<'a> {
    /// Batch.
    pub batch: usize,
    /// Queries.
    pub sq: usize,
    /// Keys.
    pub sk: usize,
    /// Model width.
    pub hidden: usize,
    /// Query heads.
    pub heads: usize,
    /// Key/value heads (grouped-query attention when fewer than `heads`).
    pub kv_heads: usize,
    /// Head size.
    pub head_dim: usize,
    /// Projections have biases.
    pub bias: bool,
    /// Multiply the scores by this (T5 folds the scale into its weights: `None`).
    pub scale: Option<f64>,
    /// Additive mask or position bias, broadcast to `[B, H, Sq, Sk]` (or `[B, Hkv, G, Sq,
    /// Sk]` for grouped-query attention).
    pub bias_add: Option<&'a str>,
    /// Rotary tables `(cos, sin)`, each `[S, head_dim]`.
    pub rotary: Option<(&'a str, &'a str)>,
}

/// Rotary embedding `x * cos + rotate_half(x) * sin` on the last axis.
fn rotate(
    b: &mut Builder,
    name: &str,
    x: &str,
    d: usize,
    cos: &str,
    sin: &str,
) -> Result<String, ZooError> {
    let half = d / 2;
    let x1 = b.node(
        &format!("{name}.x1"),
        "slice",
        &[x],
        json!({"starts": [0], "ends": [half], "axes": [-1]}),
    )?;
    let x2 = b.node(
        &format!("{name}.x2"),
        "slice",
        &[x],
        json!({"starts": [half], "ends": [d], "axes": [-1]}),
    )?;
    let nx2 = b.op(&format!("{name}.neg_x2"), "neg", &[&x2])?;
    let rot = b.node(
        &format!("{name}.rot"),
        "concat",
        &[&nx2, &x1],
        json!({"axis": -1}),
    )?;
    let a = b.op(&format!("{name}.xcos"), "mul", &[x, cos])?;
    let c = b.op(&format!("{name}.rsin"), "mul", &[&rot, sin])?;
    b.op(name, "add", &[&a, &c])
}

/// Splits `[B, S, heads*D]` into heads-first `[B, H, S, D]`, or for grouped-query attention
/// `[B, Hkv, G, S, D]` (`group` = heads per kv head; 1 for the keys and values).
#[allow(clippy::too_many_arguments)]
fn split(
    b: &mut Builder,
    name: &str,
    x: &str,
    batch: usize,
    s: usize,
    kv: usize,
    group: usize,
    d: usize,
    gqa: bool,
) -> Result<String, ZooError> {
    if gqa {
        let r = b.reshape(&format!("{name}.split"), x, &[batch, s, kv, group, d])?;
        b.transpose(&format!("{name}.heads"), &r, &[0, 2, 3, 1, 4])
    } else {
        let r = b.reshape(&format!("{name}.split"), x, &[batch, s, kv * group, d])?;
        b.transpose(&format!("{name}.heads"), &r, &[0, 2, 1, 3])
    }
}

/// Attention from `xq` `[B, Sq, hidden]` to `xkv` `[B, Sk, hidden]` including the output
/// projection; returns `[B, Sq, hidden]`.
pub fn attention(
    b: &mut Builder,
    p: &str,
    xq: &str,
    xkv: &str,
    a: &Attn<'_>,
) -> Result<String, ZooError> {
    let (d, h, kvh) = (a.head_dim, a.heads, a.kv_heads);
    let group = h / kvh.max(1);
    let gqa = kvh != h;
    let q = b.linear(&format!("{p}.q"), xq, a.hidden, h * d, a.bias)?;
    let k = b.linear(&format!("{p}.k"), xkv, a.hidden, kvh * d, a.bias)?;
    let v = b.linear(&format!("{p}.v"), xkv, a.hidden, kvh * d, a.bias)?;
    let mut qh = split(b, &format!("{p}.q"), &q, a.batch, a.sq, kvh, group, d, gqa)?;
    let mut kh = split(b, &format!("{p}.k"), &k, a.batch, a.sk, kvh, 1, d, gqa)?;
    let vh = split(b, &format!("{p}.v"), &v, a.batch, a.sk, kvh, 1, d, gqa)?;
    if let Some((cos, sin)) = a.rotary {
        qh = rotate(b, &format!("{p}.q.rope"), &qh, d, cos, sin)?;
        kh = rotate(b, &format!("{p}.k.rope"), &kh, d, cos, sin)?;
    }
    let mut s = b.node(
        &format!("{p}.scores"),
        "matmul",
        &[&qh, &kh],
        json!({"transpose_b": true}),
    )?;
    if let Some(scale) = a.scale {
        let c = b.scalar(&format!("{p}.scale"), scale)?;
        s = b.op(&format!("{p}.scaled"), "mul", &[&s, &c])?;
    }
    if let Some(m) = a.bias_add {
        s = b.op(&format!("{p}.masked"), "add", &[&s, m])?;
    }
    let probs = b.node(&format!("{p}.probs"), "softmax", &[&s], json!({"axis": -1}))?;
    let ctx = b.op(&format!("{p}.context"), "matmul", &[&probs, &vh])?;
    let merged = if gqa {
        b.transpose(&format!("{p}.seq_first"), &ctx, &[0, 3, 1, 2, 4])?
    } else {
        b.transpose(&format!("{p}.seq_first"), &ctx, &[0, 2, 1, 3])?
    };
    let merged = b.reshape(&format!("{p}.merge"), &merged, &[a.batch, a.sq, h * d])?;
    b.linear(&format!("{p}.o"), &merged, h * d, a.hidden, a.bias)
}

/// Positions `0..n` as an f32 literal `[n]` (a small buffer; everything built from it is
/// folded to constants by the compiler).
pub fn positions(b: &mut Builder, name: &str, n: usize) -> Result<String, ZooError> {
    b.buffer(name, &[n], Init::Values((0..n).map(|i| i as f64).collect()))
}

/// `pos[Sq, 1] - pos[1, Sk]`: `i - j` for query `i` and key `j`, `[S, S]`.
pub fn query_minus_key(b: &mut Builder, p: &str, pos: &str, s: usize) -> Result<String, ZooError> {
    let col = b.reshape(&format!("{p}.pos_col"), pos, &[s, 1])?;
    let row = b.reshape(&format!("{p}.pos_row"), pos, &[1, s])?;
    b.op(&format!("{p}.rel"), "sub", &[&col, &row])
}

/// The additive causal mask `[S, S]`: 0 where key `j <= i`, at most -1e9 above the diagonal.
pub fn causal_mask(b: &mut Builder, p: &str, pos: &str, s: usize) -> Result<String, ZooError> {
    let rel = query_minus_key(b, p, pos, s)?;
    let zero = b.scalar(&format!("{p}.zero"), 0.0)?;
    let neg = b.op(&format!("{p}.future"), "min", &[&rel, &zero])?;
    let big = b.scalar(&format!("{p}.big"), 1e9)?;
    b.op(&format!("{p}.causal_mask"), "mul", &[&neg, &big])
}

/// The feed-forward block `act(x W1 + b1) W2 + b2`.
pub fn mlp(
    b: &mut Builder,
    p: &str,
    x: &str,
    hidden: usize,
    ffn: usize,
    act: &str,
    bias: bool,
) -> Result<String, ZooError> {
    let h = b.linear(&format!("{p}.fc1"), x, hidden, ffn, bias)?;
    let a = match act {
        "gelu" => b.node(
            &format!("{p}.act"),
            "gelu",
            &[&h],
            json!({"approximate": "none"}),
        )?,
        "gelu_tanh" => b.node(
            &format!("{p}.act"),
            "gelu",
            &[&h],
            json!({"approximate": "tanh"}),
        )?,
        other => b.op(&format!("{p}.act"), other, &[&h])?,
    };
    b.linear(&format!("{p}.fc2"), &a, ffn, hidden, bias)
}

/// The last position of `x` `[B, S, H]` (prefill: the next token is predicted from it),
/// as node `last_token`.
pub fn last_token(b: &mut Builder, x: &str, seq: usize) -> Result<String, ZooError> {
    b.node(
        "last_token",
        "slice",
        &[x],
        json!({"starts": [seq - 1], "ends": [seq], "axes": [1]}),
    )
}

/// Logits against a tied embedding table `[vocab, H]` (`x @ table^T`), as node `logits`,
/// marked as the model's output.
pub fn tied_logits(b: &mut Builder, x: &str, table: &str) -> Result<(), ZooError> {
    let logits = b.node(
        "logits",
        "matmul",
        &[x, table],
        json!({"transpose_b": true}),
    )?;
    b.output(&logits);
    Ok(())
}
