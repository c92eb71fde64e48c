//! Compile options, as given on the `neuronc compile` command line.

use crate::ir::Tensor;
use neuron_isa::{ChipConfig, Dtype};
use std::collections::BTreeMap;
use std::path::PathBuf;

/// Which fp32 ops are cast to the `auto_cast_type` (neuronx-cc `--auto-cast`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AutoCast {
    /// Keep everything in fp32.
    None,
    /// Cast only the operands of ops that run on TensorE (matmuls).
    #[default]
    Matmult,
    /// Cast all fp32 ops' storage (statistics and accumulations stay fp32).
    All,
}

impl AutoCast {
    /// Parses `none`, `matmult` or `all`.
    pub fn parse(s: &str) -> Option<AutoCast> {
        match s {
            "none" => Some(AutoCast::None),
            "matmult" => Some(AutoCast::Matmult),
            "all" => Some(AutoCast::All),
            _ => None,
        }
    }

    /// The command-line spelling.
    pub fn name(self) -> &'static str {
        match self {
            AutoCast::None => "none",
            AutoCast::Matmult => "matmult",
            AutoCast::All => "all",
        }
    }
}

/// The reduced type auto-cast casts to (neuronx-cc `--auto-cast-type`, plus int8).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CastType {
    /// bfloat16.
    #[default]
    Bf16,
    /// IEEE half.
    Fp16,
    /// 8-bit float e4m3.
    Fp8E4m3,
    /// Symmetric int8 (weights per output channel, activations per tensor), int32
    /// accumulation, dequantization folded into the PSUM eviction.
    Int8,
}

impl CastType {
    /// Parses `bf16`, `fp16`, `fp8_e4m3` or `int8`.
    pub fn parse(s: &str) -> Option<CastType> {
        match s {
            "bf16" => Some(CastType::Bf16),
            "fp16" => Some(CastType::Fp16),
            "fp8_e4m3" => Some(CastType::Fp8E4m3),
            "int8" => Some(CastType::Int8),
            _ => None,
        }
    }

    /// The command-line spelling.
    pub fn name(self) -> &'static str {
        match self {
            CastType::Bf16 => "bf16",
            CastType::Fp16 => "fp16",
            CastType::Fp8E4m3 => "fp8_e4m3",
            CastType::Int8 => "int8",
        }
    }

    /// The ISA storage type.
    pub fn dtype(self) -> Dtype {
        match self {
            CastType::Bf16 => Dtype::Bf16,
            CastType::Fp16 => Dtype::F16,
            CastType::Fp8E4m3 => Dtype::Fp8E4m3,
            CastType::Int8 => Dtype::I8,
        }
    }
}

/// Everything that steers a compilation.
#[derive(Debug, Clone)]
pub struct CompileOptions {
    /// The chip to compile for; tile sizes and schedules depend on it.
    pub target: ChipConfig,
    /// Which ops are cast.
    pub auto_cast: AutoCast,
    /// What they are cast to.
    pub auto_cast_type: CastType,
    /// Fuse ops into kernels (`--no-fuse` turns it off: one kernel per op).
    pub fuse: bool,
    /// Split a CNN's per-image stretch into groups of images run one after the other
    /// (`passes/micro_batch.rs`) where its cost model says it pays (on by default;
    /// `--no-micro-batch` turns it off).
    pub micro_batch: bool,
    /// Write a readable dump after every stage into this directory.
    pub dump_dir: Option<PathBuf>,
    /// Calibration inputs for int8 (`--calibrate NAME=FILE.npy`); seeded random inputs run
    /// through the reference executor when empty.
    pub calibration: BTreeMap<String, Tensor>,
}

impl Default for CompileOptions {
    fn default() -> Self {
        CompileOptions {
            target: ChipConfig::trn1(),
            auto_cast: AutoCast::default(),
            auto_cast_type: CastType::default(),
            fuse: true,
            micro_batch: true,
            dump_dir: None,
            calibration: BTreeMap::new(),
        }
    }
}

impl CompileOptions {
    /// The options as `key = value` strings, recorded in the artifact.
    pub fn to_map(&self) -> BTreeMap<String, String> {
        let mut m = BTreeMap::new();
        m.insert("target".into(), self.target.name.clone());
        m.insert("auto_cast".into(), self.auto_cast.name().into());
        m.insert("auto_cast_type".into(), self.auto_cast_type.name().into());
        m.insert("fuse".into(), self.fuse.to_string());
        if !self.micro_batch {
            m.insert("micro_batch".into(), "false".into());
        }
        m
    }

    /// The dtype matmul operands are stored in under these options.
    pub fn matmul_dtype(&self) -> Dtype {
        match self.auto_cast {
            AutoCast::None => Dtype::F32,
            AutoCast::Matmult | AutoCast::All => self.auto_cast_type.dtype(),
        }
    }
}
