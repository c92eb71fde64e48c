//! Chip configurations: the `trn1` and `trn2` presets and overrides from TOML.
//!
//! Every figure comes from the reference (`docs/chip-config.md` lists each field's unit and
//! source). A TOML file names a preset in `base` and overrides any field:
//!
//! ```toml
//! base = "trn1"
//! name = "trn1-big-sbuf"
//! sbuf_bytes_per_partition = 393216
//! hbm_bandwidth_bytes_per_ns = 820.0
//! ```

use crate::dtype::Dtype;
use serde::{Deserialize, Serialize};
use std::path::Path;

/// The parameters of one simulated NeuronCore.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChipConfig {
    /// Name shown in summaries (`trn1`, `trn2`, or a user's name).
    pub name: String,
    /// NeuronCore generation: 2 (Trn1/Inf2) or 3 (Trn2). Selects generation-specific rules.
    pub generation: u32,
    /// SBUF/PSUM partitions and systolic array rows and columns.
    pub partitions: u32,
    /// TensorE clock in GHz.
    pub tensor_clock_ghz: f64,
    /// VectorE clock in GHz.
    pub vector_clock_ghz: f64,
    /// ScalarE clock in GHz.
    pub scalar_clock_ghz: f64,
    /// GpSimd clock in GHz.
    pub gpsimd_clock_ghz: f64,
    /// SBUF bytes per partition.
    pub sbuf_bytes_per_partition: u64,
    /// PSUM bytes per partition.
    pub psum_bytes_per_partition: u64,
    /// PSUM banks per partition (an accumulation group lives in one bank).
    pub psum_banks: u32,
    /// HBM capacity available to this core, bytes.
    pub hbm_bytes: u64,
    /// HBM bandwidth available to this core, bytes per ns (= GB/s).
    pub hbm_bandwidth_bytes_per_ns: f64,
    /// Number of DMA engines; each serves `partitions / dma_engines` partitions.
    pub dma_engines: u32,
    /// Number of DMA queues the program may use.
    pub dma_queues: u32,
    /// Bandwidth of one DMA engine, bytes per ns.
    pub dma_engine_bytes_per_ns: f64,
    /// Fixed latency of one DMA transfer (descriptor, sync, semaphore), ns. Paid before its
    /// data moves; overlaps the data phase of earlier transfers of the same queue.
    pub dma_fixed_latency_ns: f64,
    /// DMA instructions one queue keeps in flight (issued, not yet complete). The next
    /// transfer's fixed latency overlaps the current one's data phase.
    pub dma_queue_depth: u32,
    /// Per-descriptor setup cost of a DMA engine, in bytes of transfer time at the
    /// engine's rate: a descriptor (a contiguous run within one partition) of `d` bytes
    /// takes the engine as long as `d + this` bytes. 0 disables it.
    pub dma_descriptor_overhead_bytes: u64,
    /// Fraction of DMA throughput a transposing DMA reaches when one side is HBM.
    pub dma_transpose_hbm_efficiency: f64,
    /// Fraction of DMA throughput a transposing SBUF -> SBUF DMA reaches.
    pub dma_transpose_sbuf_efficiency: f64,
    /// Maximum stationary free size of a matmul (M).
    pub matmul_stationary_fmax: u32,
    /// Maximum moving free size of a matmul (N), one PSUM bank of FP32.
    pub matmul_moving_fmax: u32,
    /// TensorE cycle multiplier for FP32 matmuls (4: quarter rate).
    pub matmul_fp32_factor: u32,
    /// TensorE rate multiplier for FP8 matmuls (1 on trn1, 2 with double-row on trn2).
    pub matmul_fp8_speedup: u32,
    /// TensorE rate multiplier for INT8 matmuls (2 on trn1: 380 INT8 TOPS per chip).
    pub matmul_int8_speedup: u32,
    /// Minimum initiation interval of VectorE/ScalarE instructions, engine cycles.
    pub min_ii_cycles: u64,
    /// Static cost to start an SBUF/PSUM access, engine cycles.
    pub access_overhead_cycles: u64,
    /// TensorE pipeline fill latency, TensorE cycles.
    pub matmul_init_latency_cycles: u64,
    /// GpSimd start-up cost per instruction, GpSimd cycles.
    pub gpsimd_start_cycles: u64,
    /// Elements per cycle VectorE processes for bf16/fp16 in SBUF with unit stride
    /// (trn2 perf mode); 0 disables the mode.
    pub vector_bf16_perf_factor: u32,
    /// Floor of a TensorE instruction from the stationary side, TensorE cycles: a matmul
    /// costs `max(min(this, M), N)` and a transpose `max(P, min(this, F))` (the 64 of the
    /// documented formulas).
    pub matmul_stationary_min_cycles: u64,
    /// VectorE cycles per `bn_stats` triple aggregated by `bn_aggr`: the 13 of
    /// `max(MIN_II, 13 * (N / 3))`.
    pub bn_aggr_cycles_per_triple: u64,
    /// Innermost on-chip stride, in bytes, above which SBUF/PSUM bandwidth halves (the
    /// instruction's element cost doubles); 0 disables the penalty.
    pub stride_penalty_bytes: u64,
}

/// Errors reading or validating a chip configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The preset name is not known.
    #[error(
        "unknown target '{0}': expected a preset (trn1, trn2) or a chip file given by path (a .toml suffix, or a path such as ./{0})"
    )]
    UnknownPreset(String),
    /// A bare name that is not a preset but names a file or folder in the current
    /// directory: presets are taken by name and files only by path, so this is refused.
    #[error(
        "target '{0}' is ambiguous: it is not a preset (trn1, trn2) but a file or folder of that name exists; write ./{0} to use the file"
    )]
    Ambiguous(String),
    /// The file could not be read.
    #[error("cannot read chip config {path}: {cause}")]
    Io {
        /// The file.
        path: String,
        /// The cause.
        cause: std::io::Error,
    },
    /// The TOML is malformed or has a wrong field.
    #[error("invalid chip config {path}: {message}")]
    Parse {
        /// The file.
        path: String,
        /// What is wrong.
        message: String,
    },
    /// A field has a value the simulator cannot use.
    #[error("invalid chip config field `{field}`: {message}")]
    Invalid {
        /// The field.
        field: &'static str,
        /// What is wrong, with expected vs found.
        message: String,
    },
}

const KIB: u64 = 1024;
const GIB: u64 = 1024 * 1024 * 1024;

/// Largest `sbuf_bytes_per_partition` [`ChipConfig::validate`] accepts (4 MiB; 512 MiB in
/// all): a full simulation allocates the whole SBUF up front.
pub const MAX_SBUF_BYTES_PER_PARTITION: u64 = 4 * 1024 * KIB;
/// Largest `hbm_bytes` [`ChipConfig::validate`] accepts (64 GiB): bounds the host memory
/// the simulator may allocate for a program's HBM tensors.
pub const MAX_HBM_BYTES: u64 = 64 * GIB;

impl ChipConfig {
    /// NeuronCore-v2 as in a Trn1 chip (one of its two cores).
    pub fn trn1() -> ChipConfig {
        ChipConfig {
            name: "trn1".into(),
            generation: 2,
            partitions: 128,
            tensor_clock_ghz: 2.8,
            vector_clock_ghz: 1.12,
            scalar_clock_ghz: 1.4,
            gpsimd_clock_ghz: 1.4,
            sbuf_bytes_per_partition: 192 * KIB,
            psum_bytes_per_partition: 16 * KIB,
            psum_banks: 8,
            hbm_bytes: 16 * GIB,
            hbm_bandwidth_bytes_per_ns: 410.0,
            dma_engines: 16,
            dma_queues: 16,
            dma_engine_bytes_per_ns: 17.0,
            dma_fixed_latency_ns: 1300.0,
            dma_queue_depth: 4,
            dma_descriptor_overhead_bytes: 256,
            dma_transpose_hbm_efficiency: 0.9,
            dma_transpose_sbuf_efficiency: 0.5,
            matmul_stationary_fmax: 128,
            matmul_moving_fmax: 512,
            matmul_fp32_factor: 4,
            matmul_fp8_speedup: 1,
            matmul_int8_speedup: 2,
            min_ii_cycles: 64,
            access_overhead_cycles: 60,
            matmul_init_latency_cycles: 64,
            gpsimd_start_cycles: 150,
            vector_bf16_perf_factor: 0,
            matmul_stationary_min_cycles: 64,
            bn_aggr_cycles_per_triple: 13,
            stride_penalty_bytes: 16,
        }
    }

    /// NeuronCore-v3 as in a Trn2 chip (one physical core).
    pub fn trn2() -> ChipConfig {
        ChipConfig {
            name: "trn2".into(),
            generation: 3,
            tensor_clock_ghz: 2.4,
            vector_clock_ghz: 0.96,
            scalar_clock_ghz: 1.2,
            gpsimd_clock_ghz: 1.2,
            sbuf_bytes_per_partition: 224 * KIB,
            hbm_bytes: 12 * GIB,
            hbm_bandwidth_bytes_per_ns: 362.0,
            dma_engine_bytes_per_ns: 23.0,
            matmul_fp8_speedup: 2,
            matmul_int8_speedup: 1,
            vector_bf16_perf_factor: 2,
            // Same documented cost-model constants as trn1 (trainium.md 2.3 lists one model
            // for v2 and v3).
            matmul_stationary_min_cycles: 64,
            bn_aggr_cycles_per_triple: 13,
            stride_penalty_bytes: 16,
            ..ChipConfig::trn1()
        }
    }

    /// A preset by name.
    pub fn preset(name: &str) -> Result<ChipConfig, ConfigError> {
        match name {
            "trn1" => Ok(ChipConfig::trn1()),
            "trn2" => Ok(ChipConfig::trn2()),
            _ => Err(ConfigError::UnknownPreset(name.to_string())),
        }
    }

    /// Resolves a `--target` argument. Presets are taken by name and files by path: an
    /// argument with a `.toml` suffix or a path separator (`./trn1`, `chips/a`) is a
    /// TOML file; any other is a preset name, so a file or folder named `trn1` in the
    /// current directory never replaces or breaks the `trn1` preset. A bare name that is
    /// neither a preset nor has a `.toml` suffix but exists as a file is refused as
    /// ambiguous ([`ConfigError::Ambiguous`]).
    pub fn from_target(target: &str) -> Result<ChipConfig, ConfigError> {
        let is_path = target.ends_with(".toml")
            || target.contains('/')
            || target.contains(std::path::MAIN_SEPARATOR);
        if is_path {
            return ChipConfig::from_toml_file(Path::new(target));
        }
        match ChipConfig::preset(target) {
            Ok(cfg) => Ok(cfg),
            Err(_) if Path::new(target).exists() => Err(ConfigError::Ambiguous(target.to_string())),
            Err(e) => Err(e),
        }
    }

    /// Reads a TOML file that names a `base` preset (default `trn1`) and overrides fields.
    pub fn from_toml_file(path: &Path) -> Result<ChipConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|cause| ConfigError::Io {
            path: path.display().to_string(),
            cause,
        })?;
        ChipConfig::from_toml_str(&text, &path.display().to_string())
    }

    /// Parses TOML text (see [`ChipConfig::from_toml_file`]); `origin` names it in errors.
    pub fn from_toml_str(text: &str, origin: &str) -> Result<ChipConfig, ConfigError> {
        let parse_err = |message: String| ConfigError::Parse {
            path: origin.to_string(),
            message,
        };
        let mut table: toml::Table = text
            .parse()
            .map_err(|e: toml::de::Error| parse_err(e.to_string().trim_end().to_string()))?;
        let base = match table.remove("base") {
            None => "trn1".to_string(),
            Some(toml::Value::String(s)) => s,
            Some(other) => {
                return Err(parse_err(format!(
                    "`base` must be a string naming a preset, found {}",
                    other.type_str()
                )));
            }
        };
        let preset = ChipConfig::preset(&base).map_err(|_| {
            parse_err(format!(
                "`base` names an unknown preset '{base}': expected \"trn1\" or \"trn2\""
            ))
        })?;
        // A file that changes fields without naming its chip is not the preset it starts
        // from: name it after both, so messages ("target 'trn1 (small.toml)' has 1048576
        // bytes of HBM") never attribute the file's figures to the preset.
        let named = table.contains_key("name") || table.is_empty();
        let mut cfg = preset.merge(table, origin)?;
        if !named {
            cfg.name = format!("{base} ({origin})");
        }
        Ok(cfg)
    }

    /// This configuration with `overrides` (`(field, value)` pairs, values in TOML syntax:
    /// `820`, `820.0`, `"my-chip"`; a bare word is taken as a string) applied, parsed and
    /// validated exactly as the same lines in a TOML file based on this configuration
    /// would be, so `--set k=v` and a TOML file holding `k = v` give the same chip.
    ///
    /// ```
    /// use neuron_isa::ChipConfig;
    /// let cfg = ChipConfig::trn1()
    ///     .with_overrides(&[("hbm_bandwidth_bytes_per_ns", "820")])
    ///     .unwrap();
    /// assert_eq!(cfg.hbm_bandwidth_bytes_per_ns, 820.0);
    /// assert!(ChipConfig::trn1().with_overrides(&[("sbuf_kib", "1")]).is_err());
    /// ```
    pub fn with_overrides<K: AsRef<str>, V: AsRef<str>>(
        &self,
        overrides: &[(K, V)],
    ) -> Result<ChipConfig, ConfigError> {
        const ORIGIN: &str = "--set";
        let mut table = toml::Table::new();
        for (k, v) in overrides {
            let (k, v) = (k.as_ref().trim(), v.as_ref().trim());
            let parse_err = |message: String| ConfigError::Parse {
                path: ORIGIN.to_string(),
                message,
            };
            if k == "base" {
                return Err(parse_err(
                    "`base` cannot be set: choose the preset with --target".into(),
                ));
            }
            // The value as TOML; a bare word (`--set name=my-chip`) is a string.
            let value = match format!("v = {v}").parse::<toml::Table>() {
                Ok(mut t) => t.remove("v"),
                Err(_) => None,
            }
            .unwrap_or_else(|| toml::Value::String(v.to_string()));
            table.insert(k.to_string(), value);
        }
        self.merge(table, ORIGIN)
    }

    /// Overrides fields of `self` with `table` and validates the result.
    fn merge(&self, table: toml::Table, origin: &str) -> Result<ChipConfig, ConfigError> {
        let parse_err = |message: String| ConfigError::Parse {
            path: origin.to_string(),
            message,
        };
        let mut merged = toml::Table::try_from(self)
            .map_err(|e| parse_err(format!("internal: cannot serialise preset: {e}")))?;
        for (k, v) in table {
            if !merged.contains_key(&k) {
                return Err(parse_err(format!("unknown field `{k}`")));
            }
            // Integers are accepted where floats are expected.
            let v = match (&merged[&k], v) {
                (toml::Value::Float(_), toml::Value::Integer(i)) => toml::Value::Float(i as f64),
                (_, v) => v,
            };
            merged.insert(k, v);
        }
        let cfg: ChipConfig = merged
            .try_into()
            .map_err(|e: toml::de::Error| parse_err(e.to_string().trim_end().to_string()))?;
        cfg.validate().map_err(|e| match e {
            ConfigError::Invalid { field, message } => {
                parse_err(format!("field `{field}`: {message}"))
            }
            other => other,
        })?;
        Ok(cfg)
    }

    /// Checks that every field is usable.
    pub fn validate(&self) -> Result<(), ConfigError> {
        fn pos(field: &'static str, v: f64) -> Result<(), ConfigError> {
            if v.is_finite() && v > 0.0 {
                Ok(())
            } else {
                Err(ConfigError::Invalid {
                    field,
                    message: format!("expected a positive finite number, found {v}"),
                })
            }
        }
        pos("tensor_clock_ghz", self.tensor_clock_ghz)?;
        pos("vector_clock_ghz", self.vector_clock_ghz)?;
        pos("scalar_clock_ghz", self.scalar_clock_ghz)?;
        pos("gpsimd_clock_ghz", self.gpsimd_clock_ghz)?;
        pos(
            "hbm_bandwidth_bytes_per_ns",
            self.hbm_bandwidth_bytes_per_ns,
        )?;
        pos("dma_engine_bytes_per_ns", self.dma_engine_bytes_per_ns)?;
        if !(self.dma_fixed_latency_ns.is_finite() && self.dma_fixed_latency_ns >= 0.0) {
            return Err(ConfigError::Invalid {
                field: "dma_fixed_latency_ns",
                message: format!(
                    "expected a non-negative finite number, found {}",
                    self.dma_fixed_latency_ns
                ),
            });
        }
        if self.partitions != 128 {
            return Err(ConfigError::Invalid {
                field: "partitions",
                message: format!(
                    "expected 128 (the ISA's partition rules assume it), found {}",
                    self.partitions
                ),
            });
        }
        let check_range = |field: &'static str, v: u64, lo: u64, hi: u64| {
            if v < lo || v > hi {
                Err(ConfigError::Invalid {
                    field,
                    message: format!("expected {lo}..={hi}, found {v}"),
                })
            } else {
                Ok(())
            }
        };
        // SBUF: at least 16 KiB, at most 4 MiB per partition (512 MiB total, about 18x
        // trn2): a full run allocates all of it up front, so an absurd but otherwise
        // well-formed value must not make the simulator allocate gigabytes.
        check_range(
            "sbuf_bytes_per_partition",
            self.sbuf_bytes_per_partition,
            16 * KIB,
            MAX_SBUF_BYTES_PER_PARTITION,
        )?;
        check_range("psum_banks", u64::from(self.psum_banks), 1, 64)?;
        check_range(
            "psum_bytes_per_partition",
            self.psum_bytes_per_partition,
            u64::from(self.psum_banks) * 2 * KIB,
            u64::from(self.psum_banks) * 2 * KIB,
        )
        .map_err(|_| ConfigError::Invalid {
            field: "psum_bytes_per_partition",
            message: format!(
                "expected psum_banks x 2048 = {} (banks hold 512 fp32), found {}",
                u64::from(self.psum_banks) * 2 * KIB,
                self.psum_bytes_per_partition
            ),
        })?;
        // HBM: the simulator allocates every tensor of a program (up to this total), so the
        // cap bounds host memory: 64 GiB, 4x trn1's 16 GiB per core.
        check_range("hbm_bytes", self.hbm_bytes, 1 << 20, MAX_HBM_BYTES)?;
        check_range("dma_engines", u64::from(self.dma_engines), 1, 128)?;
        if self.partitions % self.dma_engines != 0 {
            return Err(ConfigError::Invalid {
                field: "dma_engines",
                message: format!(
                    "expected a divisor of partitions ({}), found {}",
                    self.partitions, self.dma_engines
                ),
            });
        }
        check_range("dma_queues", u64::from(self.dma_queues), 1, 64)?;
        check_range("dma_queue_depth", u64::from(self.dma_queue_depth), 1, 64)?;
        check_range(
            "dma_descriptor_overhead_bytes",
            self.dma_descriptor_overhead_bytes,
            0,
            1 << 20,
        )?;
        for (field, v) in [
            (
                "dma_transpose_hbm_efficiency",
                self.dma_transpose_hbm_efficiency,
            ),
            (
                "dma_transpose_sbuf_efficiency",
                self.dma_transpose_sbuf_efficiency,
            ),
        ] {
            if !(v.is_finite() && v > 0.0 && v <= 1.0) {
                return Err(ConfigError::Invalid {
                    field,
                    message: format!("expected a fraction in (0, 1], found {v}"),
                });
            }
        }
        check_range(
            "matmul_stationary_fmax",
            u64::from(self.matmul_stationary_fmax),
            1,
            128,
        )?;
        check_range(
            "matmul_moving_fmax",
            u64::from(self.matmul_moving_fmax),
            1,
            512,
        )?;
        check_range(
            "matmul_fp32_factor",
            u64::from(self.matmul_fp32_factor),
            1,
            16,
        )?;
        check_range(
            "matmul_fp8_speedup",
            u64::from(self.matmul_fp8_speedup),
            1,
            4,
        )?;
        check_range(
            "matmul_int8_speedup",
            u64::from(self.matmul_int8_speedup),
            1,
            4,
        )?;
        check_range("generation", u64::from(self.generation), 2, 3)?;
        Ok(())
    }

    /// Partitions served by one DMA engine.
    pub fn partitions_per_dma_engine(&self) -> u32 {
        self.partitions / self.dma_engines
    }

    /// PSUM bytes per bank per partition (2 KiB: 512 FP32).
    pub fn psum_bank_bytes(&self) -> u64 {
        self.psum_bytes_per_partition / u64::from(self.psum_banks)
    }

    /// Clock of `engine` in GHz (DMA queues report the TensorE clock; they are timed in ns).
    pub fn clock_ghz(&self, engine: crate::Engine) -> f64 {
        match engine {
            crate::Engine::Tensor | crate::Engine::Dma(_) => self.tensor_clock_ghz,
            crate::Engine::Vector => self.vector_clock_ghz,
            crate::Engine::Scalar => self.scalar_clock_ghz,
            crate::Engine::GpSimd => self.gpsimd_clock_ghz,
        }
    }

    /// Peak TensorE throughput in FLOP/s for matmul inputs of `dtype`
    /// (2 x rows x cols x clock, divided by the FP32 factor or multiplied by the FP8/INT8
    /// speed-up).
    pub fn peak_flops(&self, dtype: Dtype) -> f64 {
        let p = f64::from(self.partitions);
        let base = 2.0 * p * p * self.tensor_clock_ghz * 1e9;
        match dtype {
            Dtype::F32 => base / f64::from(self.matmul_fp32_factor),
            Dtype::Fp8E4m3 | Dtype::Fp8E5m2 => base * f64::from(self.matmul_fp8_speedup),
            Dtype::I8 | Dtype::U8 => base * f64::from(self.matmul_int8_speedup),
            _ => base,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn invalid(text: &str) -> String {
        match ChipConfig::from_toml_str(text, "t.toml") {
            Ok(cfg) => panic!("accepted {cfg:?}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn presets_validate() {
        ChipConfig::trn1().validate().unwrap();
        ChipConfig::trn2().validate().unwrap();
    }

    /// Regression (found by the simulator's config fuzzer): a 64 MiB-per-partition SBUF
    /// (8 GiB in all) was accepted and a full simulation allocated all of it up front.
    #[test]
    fn sbuf_and_hbm_sizes_are_capped_to_bound_host_memory() {
        assert_eq!(
            invalid("sbuf_bytes_per_partition = 67108864"),
            "invalid chip config t.toml: field `sbuf_bytes_per_partition`: expected 16384..=4194304, \
             found 67108864"
        );
        assert_eq!(
            invalid("hbm_bytes = 1099511627776"),
            "invalid chip config t.toml: field `hbm_bytes`: expected 1048576..=68719476736, found \
             1099511627776"
        );
        let cfg = ChipConfig::from_toml_str(
            "sbuf_bytes_per_partition = 4194304\nhbm_bytes = 68719476736",
            "t.toml",
        )
        .unwrap();
        assert_eq!(cfg.sbuf_bytes_per_partition, MAX_SBUF_BYTES_PER_PARTITION);
        assert_eq!(cfg.hbm_bytes, MAX_HBM_BYTES);
    }

    #[test]
    fn a_file_without_a_name_is_named_after_its_base_and_path() {
        let cfg = ChipConfig::from_toml_str("hbm_bytes = 1048576", "small.toml").unwrap();
        assert_eq!(cfg.name, "trn1 (small.toml)");
        let cfg = ChipConfig::from_toml_str("base = \"trn2\"\nhbm_bytes = 1048576", "./c").unwrap();
        assert_eq!(cfg.name, "trn2 (./c)");
        // Only a base: that preset itself.
        let cfg = ChipConfig::from_toml_str("base = \"trn2\"", "./mychip").unwrap();
        assert_eq!(cfg, ChipConfig::trn2());
        let cfg = ChipConfig::from_toml_str("name = \"big\"", "t.toml").unwrap();
        assert_eq!(cfg.name, "big");
    }

    #[test]
    fn overrides_equal_the_same_toml_file() {
        let text = "base = \"trn2\"\nhbm_bandwidth_bytes_per_ns = 820\nsbuf_bytes_per_partition = 262144\nname = \"big\"";
        let from_file = ChipConfig::from_toml_str(text, "t.toml").unwrap();
        let from_set = ChipConfig::trn2()
            .with_overrides(&[
                ("hbm_bandwidth_bytes_per_ns", "820"),
                ("sbuf_bytes_per_partition", " 262144"),
                ("name", "big"),
            ])
            .unwrap();
        assert_eq!(from_set, from_file);
        assert_eq!(from_set.hbm_bandwidth_bytes_per_ns, 820.0);
        let err = |k: &str, v: &str| {
            ChipConfig::trn1()
                .with_overrides(&[(k, v)])
                .unwrap_err()
                .to_string()
        };
        assert_eq!(
            err("hbm_gbps", "1"),
            "invalid chip config --set: unknown field `hbm_gbps`"
        );
        assert_eq!(
            err("dma_engines", "0"),
            "invalid chip config --set: field `dma_engines`: expected 1..=128, found 0"
        );
        assert!(err("psum_banks", "lots").starts_with("invalid chip config --set: "));
        assert!(err("base", "trn2").contains("--target"));
    }

    #[test]
    fn presets_by_name_files_by_path() {
        let dir = std::env::temp_dir().join(format!("neuron-isa-target-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("mychip");
        std::fs::write(&file, "base = \"trn2\"\n").unwrap();
        assert_eq!(ChipConfig::from_target("trn2").unwrap(), ChipConfig::trn2());
        assert_eq!(
            ChipConfig::from_target(file.to_str().unwrap()).unwrap(),
            ChipConfig::trn2()
        );
        let e = ChipConfig::from_target("nosuchchip")
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown target 'nosuchchip'"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn bad_values_are_errors_naming_the_field() {
        assert_eq!(
            invalid("tensor_clock_ghz = nan"),
            "invalid chip config t.toml: field `tensor_clock_ghz`: expected a positive finite number, \
             found NaN"
        );
        assert_eq!(
            invalid("dma_fixed_latency_ns = -inf"),
            "invalid chip config t.toml: field `dma_fixed_latency_ns`: expected a non-negative finite \
             number, found -inf"
        );
        assert!(invalid("psum_banks = -1").starts_with("invalid chip config t.toml: "));
        assert!(invalid("generation = 4294967296").starts_with("invalid chip config t.toml: "));
        assert_eq!(
            invalid("dma_engines = 0"),
            "invalid chip config t.toml: field `dma_engines`: expected 1..=128, found 0"
        );
        assert_eq!(
            invalid("base = 3"),
            "invalid chip config t.toml: `base` must be a string naming a preset, found integer"
        );
    }
}
