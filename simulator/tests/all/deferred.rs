//! Deferred matmuls (`exec/deferred.rs`): with two or more threads the GEMMs run on a
//! worker while later instructions execute; everything observable (every output bit,
//! poisoned-read warnings, timing) must equal the synchronous run on one thread.
#![allow(clippy::unwrap_used)]

use crate::fuzz_programs;
use crate::prog_builder::*;
use neuron_isa::{
    ActFunc, ChipConfig, Dim, Dtype, Engine, Op, Operand, Program, TensorId, TensorKind,
};
use neuron_sim::{SimOptions, Simulator};

/// Runs `p` with its tensors bound to `inputs` on a pool of `threads` threads; returns
/// the run's stats (or error text) and every tensor's bytes afterwards.
fn run_on(
    p: &Program,
    cfg: &ChipConfig,
    inputs: &[(u32, Vec<u8>)],
    threads: usize,
) -> (Result<neuron_sim::RunStats, String>, Vec<Vec<u8>>) {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .unwrap();
    pool.install(|| {
        let mut sim = match Simulator::new(p, cfg, SimOptions::default()) {
            Ok(sim) => sim,
            Err(e) => return (Err(e.to_string()), Vec::new()),
        };
        // On more than one thread the inputs are bound by reference (copied on write),
        // as the runtime binds weights, and those without a poison element as
        // poison-free (so loads from them are put off): that must not change a bit
        // either.
        for (t, b) in inputs {
            let dtype = p.tensors[*t as usize].dtype;
            let bound = if threads == 1 {
                sim.write_tensor(TensorId(*t), b)
            } else if neuron_sim::numerics::is_poisoned(dtype, b) {
                sim.bind_tensor(TensorId(*t), b)
            } else {
                sim.bind_poison_free_tensor(TensorId(*t), b)
            };
            if let Err(e) = bound {
                return (Err(e.to_string()), Vec::new());
            }
        }
        let stats = sim.run().map_err(|e| e.to_string());
        let tensors = (0..p.tensors.len())
            .map(|i| sim.tensor(TensorId(i as u32)).unwrap().to_vec())
            .collect();
        (stats, tensors)
    })
}

/// Two chains of six accumulating 128 x 128 x 512 bf16 matmuls, one per PSUM bank,
/// evicted by ScalarE while TensorE fills the other bank, the first bank then reused by
/// a third chain; the second chain reads a moving tile with an unwritten column block,
/// so its accumulations must keep reporting poisoned reads exactly as on one thread.
#[test]
fn chains_and_evictions_match_the_synchronous_run() {
    let (k, m, n, tiles) = (128u32, 128u32, 512u32, 6u32);
    let bf16 = |seed: u64, len: usize| -> Vec<u8> {
        let mut x = vec![0f32; len];
        neuron_isa::rng::CounterRng::for_tensor(seed, "deferred").fill_standard_normal(0, &mut x);
        x.iter()
            .flat_map(|v| neuron_sim::numerics::f32_to_bf16(*v).to_le_bytes())
            .collect()
    };
    let tensors = vec![
        tensor("s", TensorKind::Input, &[128, 128 * 6], Dtype::Bf16),
        tensor("w", TensorKind::Input, &[128, 512 * 6], Dtype::Bf16),
        tensor("out", TensorKind::Output, &[128, 512 * 3], Dtype::F32),
    ];
    let s_at = |i: u32| sb(Dtype::Bf16, 0, k, u64::from(i * m * 2), m);
    let w_at = |i: u32| sb(Dtype::Bf16, 0, k, 4096 + u64::from(i * n * 2), n);
    // Loads: every stationary tile, and every moving tile but the second half of tile 3.
    let mut dma = vec![
        op(Op::Dma {
            dst: sb(Dtype::Bf16, 0, k, 0, m * tiles),
            src: hbm(0, Dtype::Bf16, 0, k, m * tiles),
        }),
        op(Op::Dma {
            dst: sb(Dtype::Bf16, 0, k, 4096, n * 3 + n / 2),
            src: {
                let mut a = hbm(1, Dtype::Bf16, 0, k, n * tiles);
                a.dims[0].size = n * 3 + n / 2;
                a
            },
        }),
        ins(
            Op::Dma {
                dst: sb(Dtype::Bf16, 0, k, 4096 + u64::from(n * 4 * 2), n * 2),
                src: {
                    let mut a = hbm(1, Dtype::Bf16, 0, k, n * tiles);
                    a.offset = u64::from(n * 4 * 2);
                    a.dims[0].size = n * 2;
                    a
                },
            },
            &[],
            &[0],
        ),
    ];
    let bank = |b: u32| ps(Dtype::F32, 0, m, u64::from(b * 2048), n);
    let chain = |b: u32, wait: &[(u32, u32)], signal: u32| {
        (0..tiles)
            .map(|i| {
                ins(
                    matmul(bank(b), s_at(i), w_at((i + b) % tiles), i > 0),
                    if i == 0 { wait } else { &[] },
                    if i == tiles - 1 {
                        std::slice::from_ref(&signal)
                    } else {
                        &[]
                    },
                )
            })
            .collect::<Vec<_>>()
    };
    let mut tensor_stream = chain(0, &[(0, 1)], 1);
    tensor_stream.extend(chain(1, &[], 2));
    tensor_stream.extend(chain(0, &[(3, 1)], 4));
    let evict = |b: u32, slot: u32, wait: u32, signal: u32| {
        ins(
            Op::Activation {
                dst: sb(Dtype::F32, 0, m, 65536 + u64::from(slot * n * 4), n),
                src: bank(b),
                func: ActFunc::Gelu,
                scale: Operand::Imm(0.5),
                bias: None,
                accum: None,
            },
            &[(wait, 1)],
            &[signal],
        )
    };
    let scalar = vec![evict(0, 0, 1, 3), evict(1, 1, 2, 5), evict(0, 2, 4, 6)];
    dma.push(ins(
        Op::Dma {
            dst: hbm(2, Dtype::F32, 0, m, n * 3),
            src: sb(Dtype::F32, 0, m, 65536, n * 3),
        },
        &[(5, 1), (6, 1)],
        &[],
    ));
    let p = program(
        vec![
            (Engine::Dma(0), dma),
            (Engine::Tensor, tensor_stream),
            (Engine::Scalar, scalar),
        ],
        7,
        tensors,
    );
    let cfg = ChipConfig::trn1();
    let inputs = vec![(0, bf16(1, 128 * 128 * 6)), (1, bf16(2, 128 * 512 * 6))];
    let one = run_on(&p, &cfg, &inputs, 1);
    let stats = one.0.as_ref().unwrap();
    assert!(
        stats.warnings.len() >= 2,
        "the unwritten moving columns are reported: {:?}",
        stats.warnings
    );
    for threads in [2, 3] {
        assert!(
            run_on(&p, &cfg, &inputs, threads) == one,
            "{threads} threads"
        );
    }
}

/// Loads from poison-free weights are put off until something touches their
/// destination: a load overwriting part of an earlier one lands after it, a copy reading
/// across both sees both, one nothing reads until the end lands by then, and a tensor
/// with a poison element is loaded at issue (and reported). Every output bit and warning
/// equals the synchronous run, and the outputs are the values the loads put there.
#[test]
fn put_off_loads_land_in_order_before_anything_reads_them() {
    let bf16 = |seed: u64| -> Vec<u8> {
        (0..128 * 256u32)
            .flat_map(|i| {
                let v = ((i as u64 * 2654435761 + seed) % 1000) as f32 / 37.0 - 13.0;
                neuron_sim::numerics::f32_to_bf16(v).to_le_bytes()
            })
            .collect()
    };
    let cols = |t: u32, c0: u32, n: u32, width: u32| {
        let mut a = hbm(t, Dtype::Bf16, 0, 128, width);
        a.offset = u64::from(c0 * 2);
        a.dims[0].size = n;
        a
    };
    let tensors = vec![
        tensor("w", TensorKind::Input, &[128, 256], Dtype::Bf16),
        tensor("w2", TensorKind::Input, &[128, 256], Dtype::Bf16),
        tensor("poisoned", TensorKind::Input, &[128, 256], Dtype::Bf16),
        tensor("out", TensorKind::Output, &[128, 768], Dtype::Bf16),
    ];
    let loads = vec![
        // A: w's 256 columns at byte 0; then w2's first 128 over A's second half.
        op(Op::Dma {
            dst: sb(Dtype::Bf16, 0, 128, 0, 256),
            src: cols(0, 0, 256, 256),
        }),
        ins(
            Op::Dma {
                dst: sb(Dtype::Bf16, 0, 128, 256, 128),
                src: cols(1, 0, 128, 256),
            },
            &[],
            &[0],
        ),
        // B: w2's last 128 columns, read only by the final store.
        ins(
            Op::Dma {
                dst: sb(Dtype::Bf16, 0, 128, 8192, 128),
                src: cols(1, 128, 128, 256),
            },
            &[],
            &[1],
        ),
        // P: the tensor with a poison element (loaded at issue, reported).
        ins(
            Op::Dma {
                dst: sb(Dtype::Bf16, 0, 128, 12288, 256),
                src: cols(2, 0, 256, 256),
            },
            &[],
            &[1],
        ),
    ];
    // C: A's columns 64..192, across both loads.
    let vector = vec![ins(
        Op::TensorCopy {
            dst: sb(Dtype::Bf16, 0, 128, 16384, 128),
            src: sb(Dtype::Bf16, 0, 128, 128, 128),
        },
        &[(0, 1)],
        &[2],
    )];
    let out = |c0: u32, n: u32| {
        let mut a = hbm(3, Dtype::Bf16, 0, 128, 768);
        a.offset = u64::from(c0 * 2);
        a.dims[0].size = n;
        a
    };
    let stores = vec![
        ins(
            Op::Dma {
                dst: out(0, 256),
                src: sb(Dtype::Bf16, 0, 128, 0, 256),
            },
            &[(2, 1), (1, 2)],
            &[],
        ),
        op(Op::Dma {
            dst: out(256, 128),
            src: sb(Dtype::Bf16, 0, 128, 8192, 128),
        }),
        op(Op::Dma {
            dst: out(384, 128),
            src: sb(Dtype::Bf16, 0, 128, 16384, 128),
        }),
        op(Op::Dma {
            dst: out(512, 256),
            src: sb(Dtype::Bf16, 0, 128, 12288, 256),
        }),
    ];
    let p = program(
        vec![
            (Engine::Dma(0), loads),
            (Engine::Vector, vector),
            (Engine::Dma(1), stores),
        ],
        3,
        tensors,
    );
    let cfg = ChipConfig::trn1();
    let mut poisoned = bf16(3);
    poisoned[2 * 1000..2 * 1000 + 2].copy_from_slice(&[0xff, 0xff]);
    let inputs = vec![(0, bf16(1)), (1, bf16(2)), (2, poisoned.clone())];
    let one = run_on(&p, &cfg, &inputs, 1);
    let stats = one.0.as_ref().unwrap();
    assert_eq!(stats.warnings.len(), 2, "{:?}", stats.warnings);
    let (w, w2) = (&inputs[0].1, &inputs[1].1);
    let got = &one.1[3];
    for r in 0..128usize {
        let row =
            |b: &[u8], c0: usize, n: usize| b[(r * 256 + c0) * 2..(r * 256 + c0 + n) * 2].to_vec();
        let want = [
            row(w, 0, 128),
            row(w2, 0, 128),
            row(w2, 128, 128),
            row(w, 64, 64),
            row(w2, 0, 64),
            row(&poisoned, 0, 256),
        ]
        .concat();
        assert!(got[r * 1536..(r + 1) * 1536] == want[..], "row {r}");
    }
    for threads in [2, 3] {
        assert!(
            run_on(&p, &cfg, &inputs, threads) == one,
            "{threads} threads"
        );
    }
}

/// Loads still put off when a run ends stay so: the next run's instructions see their
/// bytes, and binding the weight again first lands them with the old bytes. A matmul
/// reading inside a put-off load reads the weight itself. Three runs of one simulator
/// (store the SBUF tile, then load it, then a matmul from it), rebinding the weight
/// before the second: outputs and warnings equal the synchronous runs'.
#[test]
fn put_off_loads_survive_runs_and_land_before_a_rebind() {
    let bf16 = |seed: u64| -> Vec<u8> {
        (0..128 * 128u32)
            .flat_map(|i| {
                let v = ((u64::from(i) * 2654435761 + seed * 31) % 500) as f32 / 64.0 - 3.0;
                neuron_sim::numerics::f32_to_bf16(v).to_le_bytes()
            })
            .collect()
    };
    let tensors = vec![
        tensor("w", TensorKind::Input, &[128, 128], Dtype::Bf16),
        tensor("seen", TensorKind::Output, &[128, 128], Dtype::Bf16),
        tensor("prod", TensorKind::Output, &[128, 64], Dtype::F32),
    ];
    let tile = sb(Dtype::Bf16, 0, 128, 0, 128);
    let dma = vec![
        ins(
            Op::Dma {
                dst: hbm(1, Dtype::Bf16, 0, 128, 128),
                src: tile.clone(),
            },
            &[],
            &[0],
        ),
        ins(
            Op::Dma {
                dst: tile.clone(),
                src: hbm(0, Dtype::Bf16, 0, 128, 128),
            },
            &[(0, 1)],
            &[1],
        ),
        ins(
            Op::Dma {
                dst: hbm(2, Dtype::F32, 0, 128, 64),
                src: sb(Dtype::F32, 0, 128, 8192, 64),
            },
            &[(3, 1)],
            &[],
        ),
    ];
    let pe = vec![ins(
        matmul(
            ps(Dtype::F32, 0, 128, 0, 64),
            tile.clone(),
            sb(Dtype::Bf16, 0, 128, 64, 64),
            false,
        ),
        &[(1, 1)],
        &[2],
    )];
    let act = vec![ins(
        Op::Activation {
            dst: sb(Dtype::F32, 0, 128, 8192, 64),
            src: ps(Dtype::F32, 0, 128, 0, 64),
            func: ActFunc::Identity,
            scale: Operand::Imm(1.0),
            bias: None,
            accum: None,
        },
        &[(2, 1)],
        &[3],
    )];
    let p = program(
        vec![
            (Engine::Dma(0), dma),
            (Engine::Tensor, pe),
            (Engine::Scalar, act),
        ],
        4,
        tensors,
    );
    let cfg = ChipConfig::trn1();
    let (w1, w2) = (bf16(1), bf16(2));
    let runs = |threads: usize| {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        pool.install(|| {
            let mut sim = Simulator::new(&p, &cfg, SimOptions::default()).unwrap();
            let mut seen = Vec::new();
            for (i, w) in [&w1, &w2, &w2].into_iter().enumerate() {
                if i < 2 {
                    sim.bind_poison_free_tensor(TensorId(0), w).unwrap();
                }
                let stats = sim.run().unwrap();
                seen.push((
                    stats.warnings.len(),
                    sim.tensor(TensorId(1)).unwrap().to_vec(),
                    sim.tensor(TensorId(2)).unwrap().to_vec(),
                ));
            }
            seen
        })
    };
    let one = runs(1);
    // Run 1 stores the unwritten tile (reported); run 2 sees w1, loaded by run 1 even
    // though w was bound to w2 before it; run 3 sees w2.
    assert!(one[0].0 > 0);
    assert_eq!((one[1].0, &one[1].1), (0, &w1));
    assert_eq!((one[2].0, &one[2].1), (0, &w2));
    assert!(one[0].2 != one[1].2, "the products follow the weight");
    assert!(one[1].2 == one[2].2, "runs 2 and 3 multiply by w2");
    for threads in [2, 3] {
        assert!(runs(threads) == one, "{threads} threads");
    }
}

/// Random loads from poison-free weights (put off on two threads) into random SBUF
/// ranges, mixed with copies between SBUF ranges, matmuls reading random ranges (read
/// from a put-off load's source when inside one), stores to a scratch tensor and loads
/// back from it (never put off: the program writes it), without any synchronization
/// (whatever the schedule's order, it is the same on every thread count), and a final
/// store of the whole SBUF area: every bit equals the synchronous run.
#[test]
fn random_put_off_loads_match_the_synchronous_run() {
    let (width, area) = (512u32, 4096u32);
    let weights: Vec<Vec<u8>> = (0..3u64)
        .map(|seed| {
            (0..128 * width)
                .flat_map(|i| {
                    let v = ((u64::from(i) * 2654435761 + seed * 977) % 2000) as f32 / 51.0;
                    neuron_sim::numerics::f32_to_bf16(v - 19.0).to_le_bytes()
                })
                .collect()
        })
        .collect();
    let mut tensors: Vec<_> = (0..3)
        .map(|i| {
            tensor(
                &format!("w{i}"),
                TensorKind::Input,
                &[128, 512],
                Dtype::Bf16,
            )
        })
        .collect();
    tensors.push(tensor(
        "scratch",
        TensorKind::Output,
        &[128, 512],
        Dtype::Bf16,
    ));
    tensors.push(tensor(
        "dump",
        TensorKind::Output,
        &[128, 4096],
        Dtype::Bf16,
    ));
    let inputs: Vec<(u32, Vec<u8>)> = weights
        .iter()
        .enumerate()
        .map(|(i, w)| (i as u32, w.clone()))
        .collect();
    let cfg = ChipConfig::trn1();
    for seed in 0..40u64 {
        let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        let mut next = |n: u32| -> u32 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state % u64::from(n)) as u32
        };
        let hbm_cols = |t: u32, p0: u32, np: u32, c0: u32, n: u32| {
            let mut a = hbm(t, Dtype::Bf16, u64::from(p0), np, width);
            a.offset += u64::from(c0 * 2);
            a.dims[0].size = n;
            a
        };
        let (mut dma, mut vector, mut pe) = (Vec::new(), Vec::new(), Vec::new());
        // Loads from partition 0: (partitions, first element, elements, elements per
        // contiguous run of the source).
        let mut loads: Vec<(u32, u32, u32, u32)> = Vec::new();
        for _ in 0..24 {
            if next(5) == 0 {
                // A matmul from two random ranges of all partitions (inside a put-off
                // load, across two, or outside any), its product cast back into the
                // area by a copy.
                let (mut k, m, n) = (128, 1 + next(128), 1 + next(128));
                let mut at = [next(area - m), next(area - n)];
                // Often inside an earlier load from partition 0 (one operand or both).
                if let Some(&(np, lat, len, run)) = loads.get(next(loads.len() as u32 + 1) as usize)
                {
                    k = 1 + next(np);
                    for (a, w) in at.iter_mut().zip([m, n]) {
                        if w <= run && next(4) != 0 {
                            // Within one run of the load's source.
                            *a = lat + next(len / run) * run + next(run - w + 1);
                        } else if w <= len && next(2) == 0 {
                            *a = lat + next(len - w + 1);
                        }
                    }
                }
                let bank = ps(Dtype::F32, 0, m, 0, n);
                pe.push(op(matmul(
                    bank.clone(),
                    sb(Dtype::Bf16, 0, k, u64::from(at[0] * 2), m),
                    sb(Dtype::Bf16, 0, k, u64::from(at[1] * 2), n),
                    false,
                )));
                vector.push(op(Op::TensorCopy {
                    dst: sb(Dtype::Bf16, 0, m, u64::from(next(area - n) * 2), n),
                    src: bank,
                }));
                continue;
            }
            // Partition ranges the verifier accepts: up to 32 from a multiple of 32, up
            // to 64 from 0 or 64, more from 0.
            let (p0, np) = match next(3) {
                0 => (32 * next(4), 1 + next(32)),
                1 => (64 * next(2), 33 + next(32)),
                _ => (0, 65 + next(64)),
            };
            let n = 1 + next(200);
            let at = next(area - n);
            let dst = sb(Dtype::Bf16, p0, np, u64::from(at * 2), n);
            match next(4) {
                0 | 1 => {
                    let t = next(3);
                    let two_dims = n % 2 == 0 && next(2) == 0;
                    if p0 == 0 {
                        loads.push((np, at, n, if two_dims { n / 2 } else { n }));
                    }
                    let src = if two_dims {
                        // Two column blocks of each row, half a row apart (a source of
                        // two dims, as a weight loaded by K-chunks is).
                        let h = n / 2;
                        let mut a = hbm_cols(t, p0, np, next(width / 2 - h + 1), h);
                        a.dims.insert(
                            0,
                            Dim {
                                size: 2,
                                stride: i64::from(width / 2),
                            },
                        );
                        a
                    } else {
                        hbm_cols(t, p0, np, next(width - n), n)
                    };
                    dma.push(op(Op::Dma { dst, src }))
                }
                2 => vector.push(op(Op::TensorCopy {
                    dst,
                    src: sb(Dtype::Bf16, p0, np, u64::from(next(area - n) * 2), n),
                })),
                _ => {
                    let c0 = next(width - n);
                    if next(2) == 0 {
                        dma.push(op(Op::Dma {
                            dst: hbm_cols(3, p0, np, c0, n),
                            src: dst,
                        }));
                    } else {
                        dma.push(op(Op::Dma {
                            dst,
                            src: hbm_cols(3, p0, np, c0, n),
                        }));
                    }
                }
            }
        }
        dma.push(op(Op::Dma {
            dst: hbm(4, Dtype::Bf16, 0, 128, area),
            src: sb(Dtype::Bf16, 0, 128, 0, area),
        }));
        let p = program(
            vec![
                (Engine::Dma(0), dma),
                (Engine::Vector, vector),
                (Engine::Tensor, pe),
            ],
            1,
            tensors.clone(),
        );
        let one = run_on(&p, &cfg, &inputs, 1);
        assert!(one.0.is_ok(), "seed {seed}: {:?}", one.0);
        assert!(run_on(&p, &cfg, &inputs, 2) == one, "seed {seed}");
    }
}

/// Random programs (the robustness fuzzer's generator: every op, odd patterns, PSUM
/// overlaps, poison) leave every tensor, warning and time exactly as on one thread.
#[test]
fn random_programs_match_the_synchronous_run() {
    let mut ran = 0;
    for seed in 0..160u64 {
        let (p, cfg) = fuzz_programs::program(seed.wrapping_mul(0x9e37_79b9), true);
        if neuron_isa::verify_program(&p, &cfg).is_err() {
            continue;
        }
        let inputs: Vec<(u32, Vec<u8>)> = p
            .tensors
            .iter()
            .enumerate()
            .filter_map(|(i, t)| {
                fuzz_programs::tensor_bytes(t, seed ^ i as u64).map(|b| (i as u32, b))
            })
            .collect();
        let one = run_on(&p, &cfg, &inputs, 1);
        assert!(run_on(&p, &cfg, &inputs, 2) == one, "seed {seed}");
        ran += usize::from(one.0.is_ok());
    }
    assert!(ran > 20, "only {ran} programs ran");
}

/// Deferred GEMMs are computed by column blocks of 128 shared between the worker and a
/// waiting commit: destinations of one block, several, and a narrower last block; a
/// fresh matmul, one accumulating onto a committed destination, a chain continuing on
/// the worker, both banks in flight at once; bf16 operands (the fast GEMM) and f32 ones
/// (the unfused kernel). Every output bit equals the synchronous run.
#[test]
fn column_blocks_match_the_synchronous_run() {
    let (k, m) = (96u32, 112u32);
    for dtype in [Dtype::Bf16, Dtype::F32] {
        for n in [64u32, 200, 512] {
            let size = dtype.size();
            let tensors = vec![
                tensor(
                    "s",
                    TensorKind::Input,
                    &[u64::from(k), u64::from(m) * 4],
                    dtype,
                ),
                tensor(
                    "v",
                    TensorKind::Input,
                    &[u64::from(k), u64::from(n) * 4],
                    dtype,
                ),
                tensor(
                    "out",
                    TensorKind::Output,
                    &[u64::from(m), u64::from(n) * 2],
                    Dtype::F32,
                ),
            ];
            let s_at = |i: u32| sb(dtype, 0, k, u64::from(i * m) * size, m);
            let v_at = |i: u32| sb(dtype, 0, k, 8192 + u64::from(i * n) * size, n);
            let bank = |b: u32| ps(Dtype::F32, 0, m, u64::from(b * 2048), n);
            let dma = vec![
                ins(
                    Op::Dma {
                        dst: sb(dtype, 0, k, 0, m * 4),
                        src: hbm(0, dtype, 0, k, m * 4),
                    },
                    &[],
                    &[0],
                ),
                ins(
                    Op::Dma {
                        dst: sb(dtype, 0, k, 8192, n * 4),
                        src: hbm(1, dtype, 0, k, n * 4),
                    },
                    &[],
                    &[0],
                ),
                ins(
                    Op::Dma {
                        dst: hbm(2, Dtype::F32, 0, m, n * 2),
                        src: sb(Dtype::F32, 0, m, 65536, n * 2),
                    },
                    &[(2, 1)],
                    &[],
                ),
            ];
            let tensor_stream = vec![
                // Fresh into bank 0, fresh into bank 1 (bank 0 still pending), then bank
                // 0 again accumulating (not the last pending: read and committed first),
                // continued by a chain; bank 1 accumulates once more at the end.
                ins(matmul(bank(0), s_at(0), v_at(0), false), &[(0, 2)], &[]),
                op(matmul(bank(1), s_at(1), v_at(1), false)),
                op(matmul(bank(0), s_at(2), v_at(2), true)),
                op(matmul(bank(0), s_at(3), v_at(3), true)),
                op(matmul(bank(0), s_at(0), v_at(1), true)),
                ins(matmul(bank(1), s_at(2), v_at(0), true), &[], &[1]),
            ];
            let evict = |b: u32, signal: &[u32]| {
                ins(
                    Op::Activation {
                        dst: sb(Dtype::F32, 0, m, 65536 + u64::from(b * n * 4), n),
                        src: bank(b),
                        func: ActFunc::Identity,
                        scale: Operand::Imm(1.0),
                        bias: None,
                        accum: None,
                    },
                    if b == 0 { &[(1, 1)] } else { &[] },
                    signal,
                )
            };
            let scalar = vec![evict(0, &[]), evict(1, &[2])];
            let p = program(
                vec![
                    (Engine::Dma(0), dma),
                    (Engine::Tensor, tensor_stream),
                    (Engine::Scalar, scalar),
                ],
                3,
                tensors,
            );
            let cfg = ChipConfig::trn1();
            let bytes = |seed: u64, len: usize| -> Vec<u8> {
                let mut x = vec![0f32; len];
                neuron_isa::rng::CounterRng::for_tensor(seed, "blocks")
                    .fill_standard_normal(0, &mut x);
                match dtype {
                    Dtype::F32 => x.iter().flat_map(|v| v.to_le_bytes()).collect(),
                    _ => x
                        .iter()
                        .flat_map(|v| neuron_sim::numerics::f32_to_bf16(*v).to_le_bytes())
                        .collect(),
                }
            };
            let (k, m, n) = (k as usize, m as usize, n as usize);
            let inputs = vec![(0, bytes(1, k * m * 4)), (1, bytes(2, k * n * 4))];
            let one = run_on(&p, &cfg, &inputs, 1);
            let stats = one.0.as_ref().unwrap();
            assert!(stats.warnings.is_empty(), "{:?}", stats.warnings);
            // The result is not trivially zero or poison.
            let out = &one.1[2];
            assert!(
                out.chunks_exact(4)
                    .any(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]) > 1.0)
            );
            for threads in [2, 3] {
                assert!(
                    run_on(&p, &cfg, &inputs, threads) == one,
                    "{dtype} n {n}: {threads} threads"
                );
            }
        }
    }
}
