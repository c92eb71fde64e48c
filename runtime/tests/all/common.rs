//! Hand-built artifacts: small programs whose results the tests can compute by hand.

use neuron_isa::*;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

pub fn tensor(name: &str, kind: TensorKind, shape: &[u64], dtype: Dtype) -> HbmTensor {
    HbmTensor {
        name: name.into(),
        kind,
        shape: shape.to_vec(),
        dtype,
    }
}

pub fn instr(op: Op, kernel: u32, wait: &[(u32, u32)], signal: &[u32]) -> Instruction {
    Instruction {
        op,
        wait: wait
            .iter()
            .map(|&(s, count)| SemWait {
                sem: SemId(s),
                count,
            })
            .collect(),
        signal: signal.iter().map(|&s| SemId(s)).collect(),
        kernel,
    }
}

pub fn kernel(name: &str, kind: &str, flops: u64) -> KernelInfo {
    KernelInfo {
        name: name.into(),
        kind: kind.into(),
        nodes: vec![name.into()],
        flops,
        hbm_bytes: 0,
        tiling: String::new(),
    }
}

/// An artifact for trn1 with the weights laid end to end in the blob.
pub fn artifact(
    name: &str,
    program: Program,
    model_flops: u64,
    weights: Vec<(TensorId, Vec<u8>)>,
) -> Artifact {
    let mut blob = Vec::new();
    let mut ranges = Vec::new();
    for (t, bytes) in weights {
        ranges.push(WeightRange {
            tensor: t,
            offset: blob.len() as u64,
            len: bytes.len() as u64,
        });
        blob.extend_from_slice(&bytes);
    }
    Artifact {
        meta: ArtifactMeta {
            model_name: name.into(),
            target: ChipConfig::trn1(),
            options: BTreeMap::new(),
            batch_size: 4,
            model_flops,
            seed: 7,
            index_bounds: BTreeMap::new(),
            program,
            weights: ranges,
            training: None,
            kernel_estimates_ns: Vec::new(),
        },
        blob: blob.into(),
    }
}

pub fn sb(dtype: Dtype, offset: u64, free: u32) -> Ap {
    Ap::on_chip(Memory::Sbuf, dtype, 0, 128, offset, free)
}

/// `y = relu(x)` for `x: f32[128, 64]`, the output named `out/y:0` (sanitized to
/// `out_y_0`): a load on dma0, the activation on ScalarE, a store on dma1.
pub fn relu_artifact() -> Artifact {
    let x = Ap::hbm_rows(TensorId(0), Dtype::F32, 0, 128, 64, 64);
    let y = Ap::hbm_rows(TensorId(1), Dtype::F32, 0, 128, 64, 64);
    let load = instr(
        Op::Dma {
            dst: sb(Dtype::F32, 0, 64),
            src: x,
        },
        0,
        &[],
        &[0],
    );
    let act = instr(
        Op::Activation {
            dst: sb(Dtype::F32, 1024, 64),
            src: sb(Dtype::F32, 0, 64),
            func: ActFunc::Relu,
            scale: Operand::Imm(1.0),
            bias: None,
            accum: None,
        },
        0,
        &[(0, 1)],
        &[1],
    );
    let store = instr(
        Op::Dma {
            dst: y,
            src: sb(Dtype::F32, 1024, 64),
        },
        0,
        &[(1, 1)],
        &[],
    );
    let program = Program {
        streams: vec![
            Stream {
                engine: Engine::Dma(0),
                instrs: vec![load],
            },
            Stream {
                engine: Engine::Scalar,
                instrs: vec![act],
            },
            Stream {
                engine: Engine::Dma(1),
                instrs: vec![store],
            },
        ],
        semaphores: 2,
        tensors: vec![
            tensor("x", TensorKind::Input, &[128, 64], Dtype::F32),
            tensor("out/y:0", TensorKind::Output, &[128, 64], Dtype::F32),
        ],
        kernels: vec![kernel("relu", "elementwise", 0)],
    };
    artifact("relu model", program, 0, vec![])
}

/// The weight of [`mlp_artifact`]: `w[k, m] = ((k * 3 + m) % 7 - 3) / 8`, exact in bf16.
pub fn mlp_weight() -> Vec<f32> {
    (0..128 * 128)
        .map(|i| {
            let (k, m) = (i / 128, i % 128);
            ((k * 3 + m) % 7) as f32 / 8.0 - 3.0 / 8.0
        })
        .collect()
}

/// `y = relu(w^T @ bf16(x))` for `x: f32[128, n]`, `w: bf16[128, 128]` (a weight), `y:
/// f32[128, n]`, repeated over `tiles` column tiles of `x` (`x` is `[128, n * tiles]`).
///
/// Kernel `load` loads x (dma0) and w (dma1); kernel `fc1` (matmul, no HBM traffic, so
/// compute-bound) multiplies on TensorE and evicts PSUM on VectorE; kernel `fc1 relu` (a
/// space: its frame is `fc1_relu`) applies relu on ScalarE and stores on dma2.
pub fn mlp_artifact(n: u32, tiles: u32) -> Artifact {
    let cols = u64::from(n * tiles);
    let w_bytes: Vec<u8> = mlp_weight()
        .iter()
        .flat_map(|&v| half::bf16::from_f32(v).to_le_bytes())
        .collect();
    let (xs, ws, ys, zs) = (0u64, 2048u64, 4096u64, 8192u64);
    let mut dma0 = Vec::new();
    let dma1 = vec![instr(
        Op::Dma {
            dst: sb(Dtype::Bf16, ws, 128),
            src: Ap::hbm_rows(TensorId(1), Dtype::Bf16, 0, 128, 128, 128),
        },
        2,
        &[],
        &[1],
    )];
    let mut te = Vec::new();
    let mut ve = Vec::new();
    let mut se = Vec::new();
    let mut dma2 = Vec::new();
    // Semaphores: 0 x loaded, 1 w loaded, 2 matmul done, 3 evicted, 4 relu done, 5 stored.
    for t in 0..tiles {
        let c = t + 1;
        let col = u64::from(t * n) * 4;
        // The x buffer is reused: wait until the previous matmul consumed it.
        dma0.push(instr(
            Op::Dma {
                dst: sb(Dtype::Bf16, xs, n),
                src: Ap::hbm_rows(TensorId(0), Dtype::F32, col, 128, cols as i64, n),
            },
            2,
            &[(2, t)],
            &[0],
        ));
        te.push(instr(
            Op::Matmul {
                dst: Ap::on_chip(Memory::Psum, Dtype::F32, 0, 128, 0, n),
                stationary: sb(Dtype::Bf16, ws, 128),
                moving: sb(Dtype::Bf16, xs, n),
                accumulate: false,
            },
            0,
            &[(0, c), (1, 1), (3, t)],
            &[2],
        ));
        ve.push(instr(
            Op::TensorCopy {
                dst: sb(Dtype::F32, ys, n),
                src: Ap::on_chip(Memory::Psum, Dtype::F32, 0, 128, 0, n),
            },
            0,
            &[(2, c), (4, t)],
            &[3],
        ));
        se.push(instr(
            Op::Activation {
                dst: sb(Dtype::F32, zs, n),
                src: sb(Dtype::F32, ys, n),
                func: ActFunc::Relu,
                scale: Operand::Imm(1.0),
                bias: None,
                accum: None,
            },
            1,
            &[(3, c), (5, t)],
            &[4],
        ));
        dma2.push(instr(
            Op::Dma {
                dst: Ap::hbm_rows(TensorId(2), Dtype::F32, col, 128, cols as i64, n),
                src: sb(Dtype::F32, zs, n),
            },
            1,
            &[(4, c)],
            &[5],
        ));
    }
    let flops = 2 * 128 * 128 * cols;
    let program = Program {
        streams: vec![
            Stream {
                engine: Engine::Tensor,
                instrs: te,
            },
            Stream {
                engine: Engine::Vector,
                instrs: ve,
            },
            Stream {
                engine: Engine::Scalar,
                instrs: se,
            },
            Stream {
                engine: Engine::Dma(0),
                instrs: dma0,
            },
            Stream {
                engine: Engine::Dma(1),
                instrs: dma1,
            },
            Stream {
                engine: Engine::Dma(2),
                instrs: dma2,
            },
        ],
        semaphores: 6,
        tensors: vec![
            tensor("x", TensorKind::Input, &[128, cols], Dtype::F32),
            tensor("w", TensorKind::Weight, &[128, 128], Dtype::Bf16),
            tensor("y", TensorKind::Output, &[128, cols], Dtype::F32),
        ],
        kernels: vec![
            kernel("fc1", "matmul", flops),
            kernel("fc1 relu", "elementwise", 0),
            kernel("load", "dma", 0),
        ],
    };
    artifact("mlp", program, flops, vec![(TensorId(1), w_bytes)])
}

/// The expected output of [`mlp_artifact`] for input `x` (`[128, cols]`, row-major).
pub fn mlp_expected(x: &[f32], cols: usize) -> Vec<f32> {
    let w = mlp_weight();
    let xb: Vec<f64> = x
        .iter()
        .map(|&v| f64::from(half::bf16::from_f32(v).to_f32()))
        .collect();
    let mut y = vec![0f32; 128 * cols];
    for m in 0..128 {
        for j in 0..cols {
            let s: f64 = (0..128)
                .map(|k| f64::from(w[k * 128 + m]) * xb[k * cols + j])
                .sum();
            y[m * cols + j] = s.max(0.0) as f32;
        }
    }
    y
}

pub fn write(dir: &Path, file: &str, a: &Artifact) -> PathBuf {
    let p = dir.join(file);
    a.write(&p).unwrap();
    p
}
