//! ResNet-50 v1.5 (He et al. 2016; torchvision's variant with the stride on the 3x3
//! convolution): a 7x7 stride-2 stem, 3x3 max pool, bottleneck stages of 3, 4, 6 and 3
//! blocks (1x1, 3x3, 1x1 convolutions, each followed by batch norm, with a projection
//! shortcut where the shape changes), global average pooling and a 1000-class head.
//! Input: `pixels` `[B, 3, H, W]`. Output: `logits` `[B, 1000]`.

use serde_json::json;

use super::builder::{Builder, Init};
use super::{Resolved, ZooError};
use crate::ir::DType;

/// conv (no bias) + batch norm (+ relu).
#[allow(clippy::too_many_arguments)]
fn conv_bn(
    b: &mut Builder,
    p: &str,
    x: &str,
    cin: usize,
    cout: usize,
    k: usize,
    stride: usize,
    relu: bool,
) -> Result<String, ZooError> {
    let std = (2.0 / (cin * k * k) as f64).sqrt();
    let w = b.param(
        &format!("{p}.weight"),
        &[cout, cin, k, k],
        Init::Normal(std),
    )?;
    let pad = k / 2;
    let y = b.node(
        &format!("{p}.conv"),
        "conv2d",
        &[x, &w],
        json!({"strides": [stride, stride], "pads": [pad, pad, pad, pad]}),
    )?;
    let scale = b.param(&format!("{p}.bn.scale"), &[cout], Init::Ones)?;
    let bias = b.param(&format!("{p}.bn.bias"), &[cout], Init::Zeros)?;
    let mean = b.buffer(&format!("{p}.bn.mean"), &[cout], Init::Zeros)?;
    let var = b.buffer(&format!("{p}.bn.var"), &[cout], Init::Ones)?;
    let y = b.node(
        &format!("{p}.bn"),
        "batch_norm",
        &[&y, &scale, &bias, &mean, &var],
        json!({"epsilon": 1e-5}),
    )?;
    if relu {
        b.op(&format!("{p}.relu"), "relu", &[&y])
    } else {
        Ok(y)
    }
}

/// Builds ResNet-50; `layers` limits the number of bottleneck blocks per stage.
pub fn build(name: &str, r: &Resolved) -> Result<Builder, ZooError> {
    let (bsz, (ih, iw)) = (r.batch, r.image);
    let mut b = Builder::new(name);
    let x = b.input("pixels", &[bsz, 3, ih, iw], DType::F32)?;
    let x = conv_bn(&mut b, "stem", &x, 3, 64, 7, 2, true)?;
    let mut x = b.node(
        "stem.pool",
        "max_pool2d",
        &[&x],
        json!({"kernel": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1]}),
    )?;
    let mut cin = 64;
    for (si, (&blocks, width)) in [3usize, 4, 6, 3]
        .iter()
        .zip([64usize, 128, 256, 512])
        .enumerate()
    {
        for bi in 0..blocks.min(r.layers) {
            let p = format!("layer{}.{bi}", si + 1);
            let stride = if bi == 0 && si > 0 { 2 } else { 1 };
            let out = width * 4;
            let y = conv_bn(&mut b, &format!("{p}.conv1"), &x, cin, width, 1, 1, true)?;
            let y = conv_bn(
                &mut b,
                &format!("{p}.conv2"),
                &y,
                width,
                width,
                3,
                stride,
                true,
            )?;
            let y = conv_bn(&mut b, &format!("{p}.conv3"), &y, width, out, 1, 1, false)?;
            let short = if bi == 0 {
                conv_bn(
                    &mut b,
                    &format!("{p}.downsample"),
                    &x,
                    cin,
                    out,
                    1,
                    stride,
                    false,
                )?
            } else {
                x.clone()
            };
            let s = b.op(&format!("{p}.residual"), "add", &[&y, &short])?;
            x = b.op(&format!("{p}.relu"), "relu", &[&s])?;
            cin = out;
        }
    }
    let x = b.op("pool", "global_avg_pool", &[&x])?;
    let x = b.reshape("flatten", &x, &[bsz, cin])?;
    let logits = b.linear("fc", &x, cin, 1000, true)?;
    b.output(&logits);
    Ok(b)
}
