//! Property-based robustness of the `.neff` container and chip configurations: arbitrary
//! and mutated bytes never make `Artifact::from_bytes` panic or allocate absurdly, decoded
//! but inconsistent metadata is rejected by `check_weights` or the verifier, and any
//! accepted chip configuration can load and run a small program.

use crate::fuzz_programs::program;
use neuron_isa::artifact::{HEADER_SIZE, MAX_ARTIFACT_BYTES};
use neuron_isa::{
    Artifact, ArtifactError, ArtifactMeta, ChipConfig, Engine, HbmTensor, Program, Rule, Stream,
    TensorId, TensorKind, WeightRange, verify_program,
};
use neuron_sim::{SimOptions, Simulator};
use proptest::prelude::*;
use std::collections::BTreeMap;
use std::panic::{AssertUnwindSafe, catch_unwind};

/// A valid artifact around a random verified-or-not program, with one weight tensor.
fn artifact(seed: u64) -> Artifact {
    let (mut p, cfg) = program(seed, true);
    let w = TensorId(p.tensors.len() as u32);
    p.tensors.push(HbmTensor {
        name: "w".into(),
        kind: TensorKind::Weight,
        shape: vec![3, 5],
        dtype: neuron_isa::Dtype::F32,
    });
    Artifact {
        meta: ArtifactMeta {
            model_name: "fuzz".into(),
            target: cfg,
            options: BTreeMap::from([("auto_cast".into(), "none".into())]),
            batch_size: 1,
            model_flops: 10,
            seed,
            index_bounds: BTreeMap::from([("ids".into(), 7)]),
            program: p,
            weights: vec![WeightRange {
                tensor: w,
                offset: 4,
                len: 60,
            }],
            training: None,
            kernel_estimates_ns: Vec::new(),
        },
        blob: (0..70).collect(),
    }
}

/// Rewrites the header's lengths and CRC so a mutated payload reaches the decoder.
fn reseal(bytes: &mut [u8], meta_len: u64) {
    if bytes.len() < HEADER_SIZE {
        return;
    }
    let payload_len = (bytes.len() - HEADER_SIZE) as u64;
    let meta_len = meta_len.min(payload_len);
    bytes[16..24].copy_from_slice(&meta_len.to_le_bytes());
    bytes[24..32].copy_from_slice(&(payload_len - meta_len).to_le_bytes());
    let crc = crc32fast::hash(&bytes[HEADER_SIZE..]);
    bytes[32..36].copy_from_slice(&crc.to_le_bytes());
}

/// Decodes `bytes`; whatever decodes must also survive the verifier and, when it passes
/// and its target is valid, a timing-only run.
fn decode_never_panics(bytes: &[u8]) -> Result<(), TestCaseError> {
    let r = catch_unwind(AssertUnwindSafe(|| {
        let Ok(art) = Artifact::from_bytes(bytes) else {
            return;
        };
        let _ = neuron_isa::disasm::disassemble(&art.meta.program);
        if art.meta.target.validate().is_err() {
            return;
        }
        if verify_program(&art.meta.program, &art.meta.target).is_ok() {
            let opts = SimOptions {
                timing_only: true,
                ..SimOptions::default()
            };
            if let Ok(mut sim) = Simulator::new(&art.meta.program, &art.meta.target, opts) {
                let _ = sim.run();
            }
        }
    }));
    prop_assert!(r.is_ok(), "decoding panicked on {} bytes", bytes.len());
    Ok(())
}

/// One edit of a byte string.
#[derive(Debug, Clone)]
enum Edit {
    Set(usize, u8),
    Truncate(usize),
    Insert(usize, Vec<u8>),
    Remove(usize, usize),
    Len(u64),
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        4 => (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Edit::Set(i, b)),
        1 => any::<usize>().prop_map(Edit::Truncate),
        1 => (any::<usize>(), prop::collection::vec(any::<u8>(), 1..9))
            .prop_map(|(i, v)| Edit::Insert(i, v)),
        1 => (any::<usize>(), 1usize..9).prop_map(|(i, n)| Edit::Remove(i, n)),
        1 => prop_oneof![
            Just(u64::MAX),
            Just(1u64 << 60),
            Just(MAX_ARTIFACT_BYTES),
            Just(0u64),
            any::<u64>()
        ]
        .prop_map(Edit::Len),
    ]
}

fn apply(bytes: &mut Vec<u8>, e: &Edit, meta_field: bool) {
    let n = bytes.len().max(1);
    match e {
        Edit::Set(i, b) => {
            if let Some(x) = bytes.get_mut(i % n) {
                *x = *b;
            }
        }
        Edit::Truncate(i) => bytes.truncate(i % n),
        Edit::Insert(i, v) => {
            let at = i % (bytes.len() + 1);
            bytes.splice(at..at, v.iter().copied());
        }
        Edit::Remove(i, k) => {
            let at = i % n;
            let end = (at + k).min(bytes.len());
            if at < end {
                bytes.drain(at..end);
            }
        }
        Edit::Len(v) => {
            if bytes.len() >= HEADER_SIZE {
                let at = if meta_field { 16 } else { 24 };
                bytes[at..at + 8].copy_from_slice(&v.to_le_bytes());
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    /// Arbitrary bytes, with or without a valid magic and header, are refused cleanly.
    #[test]
    fn arbitrary_bytes_never_panic(
        body in prop::collection::vec(any::<u8>(), 0..400),
        magic in any::<bool>(),
        seal in any::<bool>(),
        meta_len in 0u64..400,
    ) {
        let mut bytes = body;
        if magic && bytes.len() >= HEADER_SIZE {
            bytes[..8].copy_from_slice(&neuron_isa::artifact::MAGIC);
            bytes[8..12].copy_from_slice(&1u32.to_le_bytes());
            bytes[12..16].copy_from_slice(&(HEADER_SIZE as u32).to_le_bytes());
            bytes[36..HEADER_SIZE].fill(0);
            if seal {
                reseal(&mut bytes, meta_len);
            }
        }
        decode_never_panics(&bytes)?;
    }

    /// Edits of a valid artifact (bytes, truncations, insertions, removals, length fields),
    /// with the checksum left stale or recomputed, never panic; a valid artifact
    /// round-trips.
    #[test]
    fn mutated_artifacts_never_panic(
        seed in any::<u64>(),
        edits in prop::collection::vec((edit(), any::<bool>()), 1..6),
        reseal_crc in any::<bool>(),
    ) {
        let art = artifact(seed);
        let good = art.to_bytes().unwrap();
        let back = Artifact::from_bytes(&good).unwrap();
        prop_assert_eq!(back.to_bytes().unwrap(), good.clone());
        let meta_len = u64::from_le_bytes(good[16..24].try_into().unwrap());
        let mut bytes = good;
        for (e, meta_field) in &edits {
            apply(&mut bytes, e, *meta_field);
        }
        let length_edit = edits.iter().any(|(e, _)| matches!(e, Edit::Len(_)));
        if reseal_crc && !length_edit {
            reseal(&mut bytes, meta_len);
        }
        decode_never_panics(&bytes)?;
    }
}

#[test]
fn header_claiming_huge_lengths_is_refused_before_allocating() {
    let good = artifact(1).to_bytes().unwrap();
    for (at, v) in [
        (16, 1u64 << 60),
        (24, 1u64 << 60),
        (16, u64::MAX),
        (24, u64::MAX),
    ] {
        let mut b = good.clone();
        b[at..at + 8].copy_from_slice(&v.to_le_bytes());
        let e = Artifact::from_bytes(&b).unwrap_err();
        assert!(
            matches!(e, ArtifactError::BadHeader(_)),
            "length {v} at {at}: {e}"
        );
        assert!(e.to_string().contains("exceeds the"), "{e}");
    }
}

/// Regression: a tensor whose shape overflows 64-bit byte counts made `HbmTensor::bytes`
/// (used by `check_weights` and the disassembler) panic on decoded metadata.
#[test]
fn weight_of_overflowing_tensor_is_rejected_not_panicking() {
    let mut art = artifact(2);
    let w = art.meta.weights[0].tensor;
    art.meta.program.tensors[w.0 as usize].shape = vec![u64::MAX / 2, 3];
    let bytes = art.to_bytes().unwrap();
    let e = Artifact::from_bytes(&bytes).unwrap_err();
    assert_eq!(
        e.to_string(),
        format!(
            "weight range for tensor {w} is invalid: tensor 'w' needs {} bytes, range has 60",
            u64::MAX
        )
    );
    let text = neuron_isa::disasm::disassemble(&art.meta.program);
    assert!(text.contains(&format!("{} bytes", u64::MAX)), "{text}");
}

/// Decodable but inconsistent metadata is rejected by `check_weights` or the verifier.
#[test]
fn inconsistent_metadata_is_rejected() {
    let base = artifact(3);
    let w = base.meta.weights[0].tensor;

    let mut a = base.clone();
    a.meta.weights[0].offset = 20;
    let e = Artifact::from_bytes(&a.to_bytes().unwrap()).unwrap_err();
    assert_eq!(
        e.to_string(),
        format!(
            "weight range for tensor {w} is invalid: bytes 20..80 fall outside the 70-byte blob"
        )
    );

    let mut a = base.clone();
    a.meta.weights[0].offset = u64::MAX;
    let e = a.check_weights().unwrap_err();
    assert!(
        e.to_string().contains("fall outside the 70-byte blob"),
        "{e}"
    );

    let mut a = base.clone();
    a.meta.weights.push(a.meta.weights[0]);
    let e = Artifact::from_bytes(&a.to_bytes().unwrap()).unwrap_err();
    assert_eq!(
        e.to_string(),
        format!(
            "weight range for tensor {w} is invalid: the tensor has more than one weight range \
             (expected at most one)"
        )
    );

    let mut a = base.clone();
    a.meta.weights[0].tensor = TensorId(999);
    let e = a.check_weights().unwrap_err();
    assert!(e.to_string().contains("no such tensor"), "{e}");

    let cfg = ChipConfig::trn1();
    let memset = neuron_isa::Instruction {
        kernel: 5,
        ..neuron_isa::Instruction::new(neuron_isa::Op::Memset {
            dst: neuron_isa::Ap::on_chip(
                neuron_isa::Memory::Sbuf,
                neuron_isa::Dtype::F32,
                0,
                1,
                0,
                1,
            ),
            value: 0.0,
        })
    };
    let p = Program {
        streams: vec![Stream {
            engine: Engine::Vector,
            instrs: vec![memset.clone()],
        }],
        ..Program::default()
    };
    let e = verify_program(&p, &cfg).unwrap_err();
    assert_eq!(e.rule, Rule::Kernel);
    let mut ok = memset;
    ok.kernel = neuron_isa::NO_KERNEL;
    let p = Program {
        streams: vec![
            Stream {
                engine: Engine::Vector,
                instrs: vec![ok.clone()],
            },
            Stream {
                engine: Engine::Vector,
                instrs: vec![ok],
            },
        ],
        ..Program::default()
    };
    let e = verify_program(&p, &cfg).unwrap_err();
    assert_eq!(e.rule, Rule::OneStreamPerEngine);
    assert_eq!(
        e.to_string(),
        "vector stream 1: rule one-stream-per-engine: engine vector already has stream 0"
    );
}

/// Every field of a chip configuration, with the TOML kind of its value.
const FIELDS: [(&str, char); 35] = [
    ("name", 's'),
    ("generation", 'i'),
    ("partitions", 'i'),
    ("tensor_clock_ghz", 'f'),
    ("vector_clock_ghz", 'f'),
    ("scalar_clock_ghz", 'f'),
    ("gpsimd_clock_ghz", 'f'),
    ("sbuf_bytes_per_partition", 'i'),
    ("psum_bytes_per_partition", 'i'),
    ("psum_banks", 'i'),
    ("hbm_bytes", 'i'),
    ("hbm_bandwidth_bytes_per_ns", 'f'),
    ("dma_engines", 'i'),
    ("dma_queues", 'i'),
    ("dma_engine_bytes_per_ns", 'f'),
    ("dma_fixed_latency_ns", 'f'),
    ("dma_queue_depth", 'i'),
    ("dma_descriptor_overhead_bytes", 'i'),
    ("dma_transpose_hbm_efficiency", 'f'),
    ("dma_transpose_sbuf_efficiency", 'f'),
    ("matmul_stationary_fmax", 'i'),
    ("matmul_moving_fmax", 'i'),
    ("matmul_fp32_factor", 'i'),
    ("matmul_fp8_speedup", 'i'),
    ("matmul_int8_speedup", 'i'),
    ("min_ii_cycles", 'i'),
    ("access_overhead_cycles", 'i'),
    ("matmul_init_latency_cycles", 'i'),
    ("gpsimd_start_cycles", 'i'),
    ("vector_bf16_perf_factor", 'i'),
    ("matmul_stationary_min_cycles", 'i'),
    ("bn_aggr_cycles_per_triple", 'i'),
    ("stride_penalty_bytes", 'i'),
    ("base", 's'),
    ("bogus_field", 'i'),
];

/// A TOML value, usually of the field's kind with an extreme or plausible value.
fn toml_value(kind: char) -> impl Strategy<Value = String> {
    let int = prop_oneof![
        Just("0".to_string()),
        Just("1".to_string()),
        Just("-1".to_string()),
        Just("9223372036854775807".to_string()),
        Just("-9223372036854775808".to_string()),
        Just("4294967295".to_string()),
        Just("4294967296".to_string()),
        Just("67108864".to_string()),
        Just("1099511627776".to_string()),
        (0u64..100_000).prop_map(|v| v.to_string()),
        (0u32..9).prop_map(|s| (1u64 << (s * 7)).to_string()),
    ];
    let float = prop_oneof![
        Just("inf".to_string()),
        Just("-inf".to_string()),
        Just("nan".to_string()),
        Just("0.0".to_string()),
        Just("-0.0".to_string()),
        Just("1e-300".to_string()),
        Just("5e-324".to_string()),
        Just("1e300".to_string()),
        Just("1.7976931348623157e308".to_string()),
        (1e-6f64..1e6).prop_map(|v| format!("{v:e}")),
    ];
    let other = prop_oneof![
        Just("\"trn1\"".to_string()),
        Just("\"trn2\"".to_string()),
        Just("\"trn9\"".to_string()),
        Just("true".to_string()),
        Just("[1, 2]".to_string()),
        Just("{ a = 1 }".to_string()),
        Just("\"\"".to_string()),
        "[a-z0-9 =\\[\\]\"'.{}#-]{0,12}",
    ];
    match kind {
        'i' => prop_oneof![6 => int.clone(), 2 => float.clone(), 1 => other.clone()].boxed(),
        'f' => prop_oneof![3 => float, 3 => int, 1 => other].boxed(),
        _ => prop_oneof![1 => float, 1 => int, 4 => other].boxed(),
    }
}

fn toml_line() -> impl Strategy<Value = String> {
    (0..FIELDS.len()).prop_flat_map(|i| {
        let (name, kind) = FIELDS[i];
        toml_value(kind).prop_map(move |v| format!("{name} = {v}"))
    })
}

/// A small legal program touching every engine: load, matmul, evict, scalar op, store.
fn small_program() -> Program {
    use crate::prog_builder::*;
    use neuron_isa::{ActFunc, Dtype::*, Op, Operand};
    let load = |dst, src| Op::Dma { dst, src };
    program(
        vec![
            (
                Engine::Dma(0),
                vec![
                    ins(
                        load(sb(Bf16, 0, 64, 0, 64), hbm(0, Bf16, 0, 64, 64)),
                        &[],
                        &[0],
                    ),
                    ins(
                        load(hbm(1, F32, 0, 64, 64), sb(F32, 0, 64, 1024, 64)),
                        &[(2, 1)],
                        &[0],
                    ),
                ],
            ),
            (
                Engine::Tensor,
                vec![ins(
                    matmul(
                        ps(F32, 0, 64, 0, 64),
                        sb(Bf16, 0, 64, 0, 64),
                        sb(Bf16, 0, 64, 0, 64),
                        false,
                    ),
                    &[(0, 1)],
                    &[1],
                )],
            ),
            (
                Engine::Scalar,
                vec![ins(
                    Op::Activation {
                        dst: sb(F32, 0, 64, 1024, 64),
                        src: ps(F32, 0, 64, 0, 64),
                        func: ActFunc::Gelu,
                        scale: Operand::Imm(1.0),
                        bias: None,
                        accum: Some(sb(F32, 0, 64, 2048, 1)),
                    },
                    &[(1, 1)],
                    &[2],
                )],
            ),
            (
                Engine::GpSimd,
                vec![op(Op::Iota {
                    dst: sb(I32, 64, 64, 0, 8),
                    offset: 0,
                    channel_multiplier: 1,
                    steps: vec![1],
                })],
            ),
            (
                Engine::Vector,
                vec![op(Op::BnStats {
                    dst: sb(F32, 64, 64, 4096, 6),
                    src: sb(F32, 64, 64, 8192, 512),
                })],
            ),
        ],
        3,
        vec![
            tensor("x", TensorKind::Input, &[64, 64], Bf16),
            tensor("y", TensorKind::Output, &[64, 64], F32),
        ],
    )
}

/// Loads and runs `p` on `cfg` (full and timing-only); returns the outcome of each run.
fn run_both(p: &Program, cfg: &ChipConfig) -> Vec<Result<u64, String>> {
    [false, true]
        .into_iter()
        .map(|timing_only| {
            let opts = SimOptions {
                timing_only,
                ..SimOptions::default()
            };
            let mut sim = Simulator::new(p, cfg, opts).map_err(|e| e.to_string())?;
            for (i, t) in p.tensors.iter().enumerate() {
                sim.write_tensor(TensorId(i as u32), &vec![0x3c; t.bytes() as usize])
                    .map_err(|e| e.to_string())?;
            }
            sim.run().map(|s| s.total_ps).map_err(|e| e.to_string())
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    /// Random TOML never panics the parser; an accepted config validates and runs a small
    /// program (full and timing-only, same time) without panicking.
    #[test]
    fn random_chip_configs_never_panic(
        lines in prop::collection::vec(toml_line(), 0..8),
        garbage in prop::option::weighted(0.1, "[ -~\n]{0,40}"),
    ) {
        let mut text = lines.join("\n");
        if let Some(g) = garbage {
            text.push('\n');
            text.push_str(&g);
        }
        let parsed = catch_unwind(|| ChipConfig::from_toml_str(&text, "fuzz.toml"));
        prop_assert!(parsed.is_ok(), "from_toml_str panicked on:\n{text}");
        let Ok(Ok(cfg)) = parsed else { return Ok(()) };
        prop_assert!(cfg.validate().is_ok(), "accepted but invalid:\n{text}");
        // Bounded memory: whatever is accepted allocates at most 1 GiB of on-chip memory.
        prop_assert!(
            cfg.sbuf_bytes_per_partition * u64::from(cfg.partitions) <= 1 << 30,
            "accepted an sbuf of {} bytes per partition", cfg.sbuf_bytes_per_partition
        );
        let p = small_program();
        let runs = catch_unwind(AssertUnwindSafe(|| run_both(&p, &cfg)));
        prop_assert!(runs.is_ok(), "simulator panicked with config:\n{text}");
        let runs = runs.unwrap();
        if let (Ok(full), Ok(timing)) = (&runs[0], &runs[1]) {
            prop_assert_eq!(full, timing, "full vs timing-only with:\n{}", text);
        }
    }
}

#[test]
fn small_program_runs_on_both_presets() {
    for cfg in [ChipConfig::trn1(), ChipConfig::trn2()] {
        let runs = run_both(&small_program(), &cfg);
        assert!(runs.iter().all(Result::is_ok), "{runs:?}");
    }
}

/// Regression (found by `mutated_artifacts_never_panic` and the config fuzzer): a DMA
/// latency of 1e300 ns saturates to `u64::MAX` ps, and `now + latency` in the DMA model
/// overflowed (a panic in debug builds). Extreme values now give saturated times.
#[test]
fn extreme_dma_latency_saturates_instead_of_overflowing() {
    let cfg = ChipConfig {
        dma_fixed_latency_ns: 1e300,
        ..ChipConfig::trn1()
    };
    let runs = run_both(&small_program(), &cfg);
    assert_eq!(runs, vec![Ok(u64::MAX), Ok(u64::MAX)]);
}

/// Regression: cycle constants accept any u64; the GpSimd start cost was added without
/// saturation.
#[test]
fn extreme_cycle_constants_saturate_instead_of_overflowing() {
    let cfg = ChipConfig {
        gpsimd_start_cycles: u64::MAX,
        access_overhead_cycles: u64::MAX,
        min_ii_cycles: u64::MAX,
        gpsimd_clock_ghz: 1e-300,
        ..ChipConfig::trn1()
    };
    let runs = run_both(&small_program(), &cfg);
    assert_eq!(runs, vec![Ok(u64::MAX), Ok(u64::MAX)]);
}
