//! A whole program: per-engine instruction streams, the HBM tensor table, semaphores and
//! the metadata that maps instructions back to kernels and graph nodes.

use crate::dtype::Dtype;
use crate::instr::{Engine, Instruction};
use serde::{Deserialize, Serialize};

/// What an HBM tensor holds, and who provides it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum TensorKind {
    /// A graph input, bound by the runtime before execution.
    Input,
    /// A graph output, read by the runtime after execution.
    Output,
    /// Constant data (weights) loaded from the artifact.
    Weight,
    /// Intermediate data the program writes and reads (e.g. values between kernels, spills).
    Scratch,
}

/// One tensor in device HBM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HbmTensor {
    /// Name (graph value name for inputs, outputs and weights).
    pub name: String,
    /// Role.
    pub kind: TensorKind,
    /// Logical shape (row-major).
    pub shape: Vec<u64>,
    /// Element type as stored in HBM.
    pub dtype: Dtype,
}

impl HbmTensor {
    /// Number of elements (saturating at `u64::MAX` for absurd, unverified shapes).
    pub fn elems(&self) -> u64 {
        self.shape
            .iter()
            .fold(1u64, |acc, &d| acc.saturating_mul(d))
    }

    /// Size in bytes (saturating at `u64::MAX` for absurd, unverified shapes).
    pub fn bytes(&self) -> u64 {
        self.elems().saturating_mul(self.dtype.size())
    }
}

/// One engine's in-order instruction stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Stream {
    /// The engine (or DMA queue) that runs it.
    pub engine: Engine,
    /// Instructions in program order.
    pub instrs: Vec<Instruction>,
}

/// What the compiler knows about one kernel; instructions point here by index.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct KernelInfo {
    /// Kernel name, unique in the program (e.g. `fc1+bias+gelu`).
    pub name: String,
    /// Kind of kernel (`matmul`, `layer_norm`, `softmax`, `attention`, `elementwise`, ...).
    pub kind: String,
    /// Graph node names fused into this kernel.
    pub nodes: Vec<String>,
    /// Model FLOPs of the kernel (2 per multiply-add for matmuls).
    pub flops: u64,
    /// HBM bytes the kernel is planned to read plus write.
    pub hbm_bytes: u64,
    /// Tiling summary, free text for people (e.g. `m128 n512 k128, double-buffered`).
    pub tiling: String,
}

/// A complete program for one NeuronCore.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Program {
    /// Instruction streams, at most one per engine.
    pub streams: Vec<Stream>,
    /// Number of semaphores used (ids `0..semaphores`).
    pub semaphores: u32,
    /// The HBM tensor table; [`crate::TensorId`] indexes it.
    pub tensors: Vec<HbmTensor>,
    /// Kernel metadata; [`Instruction::kernel`] indexes it.
    pub kernels: Vec<KernelInfo>,
}

impl Program {
    /// Total number of instructions over all streams.
    pub fn instruction_count(&self) -> usize {
        self.streams.iter().map(|s| s.instrs.len()).sum()
    }

    /// The stream of `engine`, if any.
    pub fn stream(&self, engine: Engine) -> Option<&Stream> {
        self.streams.iter().find(|s| s.engine == engine)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Regression (found by the program fuzzer): `bytes()` of a tensor whose shape overflows
    /// 64 bits panicked in the disassembler and in `Artifact::check_weights`.
    #[test]
    fn sizes_of_absurd_shapes_saturate() {
        let t = HbmTensor {
            name: "t".into(),
            kind: TensorKind::Weight,
            shape: vec![u64::MAX / 2, 3],
            dtype: Dtype::F32,
        };
        assert_eq!(t.elems(), u64::MAX);
        assert_eq!(t.bytes(), u64::MAX);
        let t = HbmTensor {
            shape: vec![1 << 40, 1 << 30],
            ..t
        };
        assert_eq!(t.elems(), u64::MAX);
        let t = HbmTensor {
            shape: vec![3, 5],
            ..t
        };
        assert_eq!((t.elems(), t.bytes()), (15, 60));
    }
}
