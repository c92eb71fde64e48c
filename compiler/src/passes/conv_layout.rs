//! Channel-major activations between convolutions (after precision assignment).
//!
//! A convolution keeps channels on partitions, so each partition's part of an NCHW
//! activation is one `H * W` plane per image: for the 14x14 and 7x7 layers of a ResNet
//! that is 392 or 98 bytes in bf16, far below the 2 KiB per partition where DMA
//! descriptors approach peak bandwidth (trainium.md section 3). A scratch tensor that is
//! only written and read by convolutions, each time as the whole `[N, C, H, W]` value,
//! is stored `[C, N, H, W]` instead: the views keep their logical shape and get permuted
//! strides, so each partition's images are adjacent and a transfer of several images is
//! one long descriptor. Graph inputs and outputs, and tensors any other kernel reads
//! (pooling merges `N * C` planes onto partitions, which needs NCHW), keep NCHW.

use crate::kernel::{KTensorId, KernelGraph, KernelOp, View};
use neuron_isa::TensorKind;

/// Row-major strides of `shape`.
fn row_major(shape: &[usize]) -> Vec<isize> {
    let mut strides = vec![0isize; shape.len()];
    let mut acc: isize = 1;
    for (s, &d) in strides.iter_mut().zip(shape).rev() {
        *s = acc;
        acc *= d as isize;
    }
    strides
}

/// Whether `v` is the whole tensor of `shape`, row-major.
fn whole(v: &View, shape: &[usize]) -> bool {
    v.offset == 0 && v.shape == shape && v.strides == row_major(shape)
}

/// Stores conv-to-conv activations channel-major; returns the tensors changed.
pub fn assign(kg: &mut KernelGraph) -> Vec<KTensorId> {
    let mut changed = Vec::new();
    for ti in 0..kg.tensors.len() {
        let id = KTensorId(ti as u32);
        let t = &kg.tensors[ti];
        let [n, c, h, w] = t.shape[..] else { continue };
        if t.kind != TensorKind::Scratch
            || n < 2
            || c < 2
            || kg.inputs.contains(&id)
            || kg.outputs.contains(&id)
        {
            continue;
        }
        let shape = t.shape.clone();
        let mut writers = 0;
        let mut readers = 0;
        let ok = kg.kernels.iter().all(|k| {
            let conv = matches!(k.op, KernelOp::Conv2d { .. });
            let mut fine = true;
            if k.output.tensor == id {
                writers += 1;
                fine &= conv && whole(&k.output, &shape);
            }
            for v in k.inputs.iter().filter(|v| v.tensor == id) {
                readers += 1;
                fine &= conv && whole(v, &shape);
            }
            fine
        });
        if !ok || writers != 1 || readers == 0 {
            continue;
        }
        let strides = vec![(h * w) as isize, (n * h * w) as isize, w as isize, 1];
        for k in &mut kg.kernels {
            if k.output.tensor == id {
                k.output.strides = strides.clone();
            }
            for v in k.inputs.iter_mut().filter(|v| v.tensor == id) {
                v.strides = strides.clone();
            }
        }
        kg.tensors[ti].shape = vec![c, n, h, w];
        changed.push(id);
    }
    changed
}
