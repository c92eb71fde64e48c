//! ViT-B/16 (Dosovitskiy et al. 2021): 16x16 patches embedded by one matmul (the patch
//! extraction is a reshape and transpose of the NCHW image, i.e. the stride-16 convolution
//! written as a GEMM), a class token, learned position embeddings, 12 pre-LN layers and a
//! 1000-class head on the class token. Input: `pixels` `[B, 3, H, W]`. Output: `logits`.

use serde_json::json;

use super::builder::{Builder, Init};
use super::layers::{Attn, attention, mlp};
use super::{Resolved, ZooError};
use crate::ir::DType;

/// Patch size.
pub const PATCH: usize = 16;

/// Builds ViT-B/16.
pub fn build(name: &str, r: &Resolved) -> Result<Builder, ZooError> {
    let (h, heads, ffn, classes) = (768, 12, 3072, 1000);
    let (bsz, (ih, iw)) = (r.batch, r.image);
    let (gh, gw) = (ih / PATCH, iw / PATCH);
    let n = gh * gw;
    let pd = 3 * PATCH * PATCH;
    let mut b = Builder::new(name);
    let x = b.input("pixels", &[bsz, 3, ih, iw], DType::F32)?;
    let x = b.reshape("patches.grid", &x, &[bsz, 3, gh, PATCH, gw, PATCH])?;
    let x = b.transpose("patches.channels_last", &x, &[0, 2, 4, 1, 3, 5])?;
    let x = b.reshape("patches.rows", &x, &[bsz, n, pd])?;
    let x = b.linear("patch_embed", &x, pd, h, true)?;
    let cls = b.param("cls_token", &[1, 1, h], Init::Normal(0.02))?;
    let ones = b.buffer("cls_broadcast", &[bsz, 1, 1], Init::Ones)?;
    let cls = b.op("cls_batch", "mul", &[&ones, &cls])?;
    let x = b.node("tokens", "concat", &[&cls, &x], json!({"axis": 1}))?;
    let pos = b.param("position_embeddings", &[1, n + 1, h], Init::Normal(0.02))?;
    let mut x = b.op("embed", "add", &[&x, &pos])?;
    let seq = n + 1;
    for l in 0..r.layers {
        let p = format!("layer{l}");
        let y = b.layer_norm(&format!("{p}.ln_before"), &x, h, 1e-12)?;
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
                kv_heads: heads,
                head_dim: h / heads,
                bias: true,
                scale: Some(0.125),
                bias_add: None,
                rotary: None,
            },
        )?;
        x = b.op(&format!("{p}.attn_residual"), "add", &[&x, &a])?;
        let y = b.layer_norm(&format!("{p}.ln_after"), &x, h, 1e-12)?;
        let f = mlp(&mut b, &format!("{p}.mlp"), &y, h, ffn, "gelu", true)?;
        x = b.op(&format!("{p}.mlp_residual"), "add", &[&x, &f])?;
    }
    let x = b.layer_norm("final_ln", &x, h, 1e-12)?;
    let c = b.node(
        "cls_out",
        "slice",
        &[&x],
        json!({"starts": [0], "ends": [1], "axes": [1]}),
    )?;
    let c = b.reshape("cls_rows", &c, &[bsz, h])?;
    let logits = b.linear("head", &c, h, classes, true)?;
    b.output(&logits);
    Ok(b)
}
