//! DMA model: closed-form durations, engine and HBM sharing, descriptors in flight per
//! queue, the descriptor-size curve, DMA transposes, and the streaming bandwidth
//! properties. trn1: 16 DMA engines x 17 B/ns (8 partitions each), HBM 410 B/ns, 1300 ns
//! fixed latency per transfer, 4 transfers in flight per queue, and a per-descriptor
//! overhead worth 256 B: a `d`-byte descriptor (contiguous run per partition) costs the
//! engine `d + 256` bytes of time, so the engines' rate is scaled by `d / (d + 256)`
//! (2 KiB: 272 x 8/9 = 241.78 B/ns). trn2: 23 B/ns engines, HBM 362 B/ns.

/// The engines' efficiency on `d`-byte descriptors: `d / (d + 256)`.
fn eff(d: u64) -> f64 {
    d as f64 / (d + 256) as f64
}

use crate::prog_builder::*;
use neuron_isa::{Ap, ChipConfig, Dtype, Engine, HbmTensor, Op, Program, TensorId, TensorKind};

const LAT_PS: u64 = 1_300_000;

/// Asserts `a` is within `tol` ps of `b` (the fluid model rounds completions up to whole
/// picoseconds from f64 rates).
fn close(a: u64, b: u64, tol: u64) {
    assert!(
        a.abs_diff(b) <= tol,
        "{a} ps vs expected {b} ps (tolerance {tol})"
    );
}

/// Picoseconds to move `bytes` at `b_per_ns`, rounded up.
fn data_ps(bytes: u64, b_per_ns: f64) -> u64 {
    (bytes as f64 * 1000.0 / b_per_ns).ceil() as u64
}

fn u8_tensor(name: &str, bytes: u64) -> HbmTensor {
    tensor(name, TensorKind::Input, &[bytes], Dtype::U8)
}

/// HBM -> SBUF: `rows` partitions from `p0`, `cols` bytes each, from byte `off` of `t`.
fn load(t: u32, off: u64, p0: u32, rows: u32, cols: u32, sb_off: u64) -> Op {
    Op::Dma {
        dst: sb(Dtype::U8, p0, rows, sb_off, cols),
        src: Ap::hbm_rows(TensorId(t), Dtype::U8, off, rows, i64::from(cols), cols),
    }
}

fn queues(ops: Vec<Vec<Op>>, tensors: Vec<HbmTensor>) -> Program {
    program(
        ops.into_iter()
            .enumerate()
            .map(|(q, v)| (Engine::Dma(q as u8), v.into_iter().map(op).collect()))
            .collect(),
        0,
        tensors,
    )
}

#[test]
fn one_transfer_over_all_partitions_uses_all_engines() {
    let cfg = ChipConfig::trn1();
    // 128 partitions x 2048 B = 256 KiB over 16 engines: 272 x 8/9 = 241.78 B/ns (< 410
    // B/ns HBM).
    let p = queues(
        vec![vec![load(0, 0, 0, 128, 2048, 0)]],
        vec![u8_tensor("x", 1 << 18)],
    );
    let s = run_timing(&p, &cfg);
    close(
        dur(&s, 0, 0),
        LAT_PS + data_ps(262_144, 272.0 * eff(2048)),
        1,
    );
    let r = rec(&s, 0, 0);
    assert_eq!((r.hbm_read_bytes, r.hbm_write_bytes), (262_144, 0));
    assert_eq!(s.bytes.hbm_read, 262_144);
    assert_eq!(s.bytes.sbuf_write, 262_144);
    assert_eq!(s.bytes.hbm_write, 0);
}

#[test]
fn transfer_rate_follows_the_engines_its_partitions_map_to() {
    let cfg = ChipConfig::trn1();
    let t = vec![u8_tensor("x", 1 << 16)];
    // All 2 KiB descriptors (x 8/9). 8 partitions from 32: engine 4 alone, 17 B/ns.
    let s = run_timing(
        &queues(vec![vec![load(0, 0, 32, 8, 2048, 0)]], t.clone()),
        &cfg,
    );
    close(dur(&s, 0, 0), LAT_PS + data_ps(16_384, 17.0 * eff(2048)), 1);
    // 24 partitions from 64: engines 8, 9 and 10, 51 B/ns.
    let s = run_timing(
        &queues(vec![vec![load(0, 0, 64, 24, 2048, 0)]], t.clone()),
        &cfg,
    );
    close(dur(&s, 0, 0), LAT_PS + data_ps(49_152, 51.0 * eff(2048)), 1);
    // 12 partitions from 0: engine 0 carries 8 of 12, the bottleneck: 17 / (8/12) = 25.5
    // B/ns (the even-split formula bytes / (17 x 2 engines) would say 34).
    let s = run_timing(&queues(vec![vec![load(0, 0, 0, 12, 2048, 0)]], t), &cfg);
    close(dur(&s, 0, 0), LAT_PS + data_ps(24_576, 25.5 * eff(2048)), 1);
}

#[test]
fn queues_share_engines_and_run_in_parallel_on_disjoint_ones() {
    let cfg = ChipConfig::trn1();
    let t = vec![u8_tensor("x", 1 << 18)];
    // Disjoint halves: 8 engines each = 136 x 8/9 B/ns each, both in parallel.
    let p = queues(
        vec![
            vec![load(0, 0, 0, 64, 2048, 0)],
            vec![load(0, 131_072, 64, 64, 2048, 0)],
        ],
        t.clone(),
    );
    let s = run_timing(&p, &cfg);
    close(
        dur(&s, 0, 0),
        LAT_PS + data_ps(131_072, 136.0 * eff(2048)),
        1,
    );
    close(
        dur(&s, 1, 0),
        LAT_PS + data_ps(131_072, 136.0 * eff(2048)),
        1,
    );
    // Same partitions: the 16 engines (272 x 8/9 B/ns) are split, 136 x 8/9 each.
    let p = queues(
        vec![
            vec![load(0, 0, 0, 128, 2048, 0)],
            vec![load(0, 262_144, 0, 128, 2048, 4096)],
        ],
        vec![u8_tensor("x", 1 << 19)],
    );
    let s = run_timing(&p, &cfg);
    close(
        dur(&s, 0, 0),
        LAT_PS + data_ps(262_144, 136.0 * eff(2048)),
        1,
    );
    close(
        dur(&s, 1, 0),
        LAT_PS + data_ps(262_144, 136.0 * eff(2048)),
        1,
    );
}

#[test]
fn hbm_bandwidth_is_shared_max_min_fair() {
    // HBM 100 B/ns. A: partitions 96..104 (engine 12 alone), 8 x 2125 = 17,000 B of
    // 2125 B descriptors: cap 17 x 2125 / 2381 = 15.17 B/ns. B: partitions 0..64 (engines
    // 0-7, cap 136 x 2859 / 3115 = 124.8 B/ns), 64 x 2859 = 182,976 B. Max-min fair: A
    // gets its cap, B the rest of HBM. A finishes after 17000 / 15.17 = 1120.47 ns of
    // data; HBM is saturated until B ends, at (17,000 + 182,976) / 100 = 1999.76 ns.
    let cfg = ChipConfig {
        hbm_bandwidth_bytes_per_ns: 100.0,
        ..ChipConfig::trn1()
    };
    let p = queues(
        vec![
            vec![load(0, 0, 96, 8, 2125, 0)],
            vec![load(1, 0, 0, 64, 2859, 0)],
        ],
        vec![u8_tensor("a", 17_000), u8_tensor("b", 182_976)],
    );
    let s = run_timing(&p, &cfg);
    close(rec(&s, 0, 0).end_ps, LAT_PS + 1_120_471, 2);
    close(rec(&s, 1, 0).end_ps, LAT_PS + 1_999_760, 2);
}

#[test]
fn sbuf_to_sbuf_uses_engines_but_no_hbm_bandwidth() {
    // HBM 10 B/ns. Queue 0 streams from HBM (10 B/ns, HBM-bound) for a long time, taking
    // 10 x 9/8 B/ns of engine capacity; queue 1 copies SBUF -> SBUF over the same 16
    // engines and gets the rest: (272 - 11.25) x 8/9 = 231.78 B/ns.
    let cfg = ChipConfig {
        hbm_bandwidth_bytes_per_ns: 10.0,
        ..ChipConfig::trn1()
    };
    let copy = Op::Dma {
        dst: sb(Dtype::U8, 0, 128, 100_000, 2048),
        src: sb(Dtype::U8, 0, 128, 50_000, 2048),
    };
    let p = queues(
        vec![vec![load(0, 0, 0, 128, 2048, 0)], vec![copy]],
        vec![u8_tensor("x", 1 << 18)],
    );
    let s = run_timing(&p, &cfg);
    close(
        dur(&s, 1, 0),
        LAT_PS + data_ps(262_144, (272.0 - 10.0 / eff(2048)) * eff(2048)),
        2,
    );
    assert_eq!(rec(&s, 1, 0).hbm_read_bytes, 0);
    assert_eq!(s.bytes.sbuf_read, 262_144);
    // The HBM transfer ran at 10 B/ns throughout (its cap while sharing was 10 too).
    close(dur(&s, 0, 0), LAT_PS + data_ps(262_144, 10.0), 2);
}

#[test]
fn hbm_to_hbm_reads_and_writes_hbm() {
    // Spread over all engines (272 x 8/9 = 241.78 B/ns), but each byte is read and
    // written: HBM allows 410 / 2 = 205 B/ns, the bottleneck.
    let cfg = ChipConfig::trn1();
    let copy = Op::Dma {
        dst: Ap::hbm_rows(TensorId(1), Dtype::U8, 0, 128, 2048, 2048),
        src: Ap::hbm_rows(TensorId(0), Dtype::U8, 0, 128, 2048, 2048),
    };
    let p = queues(
        vec![vec![copy]],
        vec![u8_tensor("a", 1 << 18), u8_tensor("b", 1 << 18)],
    );
    let s = run_timing(&p, &cfg);
    close(dur(&s, 0, 0), LAT_PS + data_ps(262_144, 205.0), 2);
    let r = rec(&s, 0, 0);
    assert_eq!((r.hbm_read_bytes, r.hbm_write_bytes), (262_144, 262_144));
}

#[test]
fn gather_reads_one_table_row_per_partition() {
    let cfg = ChipConfig::trn1();
    let gather = Op::DmaGather {
        dst: sb(Dtype::F32, 0, 128, 0, 64),
        table: Ap::hbm_rows(TensorId(0), Dtype::F32, 0, 100, 64, 64),
        indices: sb(Dtype::I32, 0, 128, 4096, 1),
    };
    let p = queues(
        vec![vec![gather]],
        vec![tensor("table", TensorKind::Weight, &[100, 64], Dtype::F32)],
    );
    let s = run_timing(&p, &cfg);
    let r = rec(&s, 0, 0);
    assert_eq!(r.hbm_read_bytes, 128 * 64 * 4);
    // Each row is one 256 B descriptor: twice the engine time, 136 B/ns.
    close(dur(&s, 0, 0), LAT_PS + data_ps(32_768, 136.0), 1);
    assert_eq!(s.bytes.hbm_read, 32_768);
    assert_eq!(s.bytes.sbuf_read, 512);
}

/// 64 MiB from HBM to SBUF over 16 queues. SBUF (24 MiB) cannot hold it, so each queue
/// streams its 4 MiB through its own 11 KiB-per-partition region in 3 transfers of
/// 128 partitions x (11, 11, 10) KiB. Every transfer spans all 16 DMA engines.
fn stream_64mib() -> Program {
    let q_bytes: u64 = 4 << 20;
    let cols = [11 * 1024u32, 11 * 1024, 10 * 1024];
    let ops = (0..16u64)
        .map(|q| {
            let mut off = q * q_bytes;
            cols.iter()
                .map(|&c| {
                    let o = load(0, off, 0, 128, c, q * 11 * 1024);
                    off += 128 * u64::from(c);
                    o
                })
                .collect()
        })
        .collect();
    queues(ops, vec![u8_tensor("x", 64 << 20)])
}

#[test]
fn streaming_64mib_runs_at_the_documented_bottleneck() {
    // Bottleneck: min(HBM 410 B/ns, DMA aggregate 16 x 17 = 272 B/ns) = 272 B/ns: the DMA
    // engines bind on trn1, busy throughout. Each queue issues its 3 transfers at t = 0
    // (depth 4), so all latencies end at 1.3 us and the data then moves back to back: the
    // fixed latency is paid once. The engines also pay 256 B per descriptor: 16 queues x
    // 3 transfers x 128 partitions = 6144 descriptors, 1.57 MB of engine time (2.3%).
    let cfg = ChipConfig::trn1();
    let s = run_timing(&stream_64mib(), &cfg);
    let bytes = 64u64 << 20;
    let bw = cfg
        .hbm_bandwidth_bytes_per_ns
        .min(16.0 * cfg.dma_engine_bytes_per_ns);
    assert_eq!(bw, 272.0);
    let ideal_ps = bytes as f64 * 1000.0 / bw;
    let ratio = s.total_ps as f64 / ideal_ps;
    assert!(
        (1.0..1.03).contains(&ratio),
        "{} ps vs ideal {ideal_ps} ps",
        s.total_ps
    );
    // Closed form: one latency plus the engine time.
    let engine_ps = (bytes + 6144 * 256) as f64 * 1000.0 / bw;
    close(s.total_ps, LAT_PS + engine_ps.ceil() as u64, 48);
    assert_eq!(s.bytes.hbm_read, bytes);
    assert_eq!(
        s.records.iter().map(|r| r.hbm_read_bytes).sum::<u64>(),
        bytes
    );
    assert_eq!(s.records.len(), 48);
    assert_eq!(s.engines.iter().map(|e| e.instructions).sum::<u64>(), 48);
}

#[test]
fn doubling_hbm_bandwidth_halves_an_hbm_bound_program() {
    // With HBM at 100 and 200 B/ns (both below the 272 B/ns DMA aggregate) the same
    // stream is HBM-bound (the engines give 272 x 0.977 = 266 B/ns); only the 1.3 us of
    // fixed latency does not scale.
    let slow = ChipConfig {
        hbm_bandwidth_bytes_per_ns: 100.0,
        ..ChipConfig::trn1()
    };
    let fast = ChipConfig {
        hbm_bandwidth_bytes_per_ns: 200.0,
        ..ChipConfig::trn1()
    };
    let p = stream_64mib();
    let t_slow = run_timing(&p, &slow).total_ps as f64;
    let t_fast = run_timing(&p, &fast).total_ps as f64;
    let ratio = t_fast / t_slow;
    assert!((ratio - 0.5).abs() <= 0.025, "ratio {ratio}");
    // And the DMA engines, not HBM, bind on stock trn1: doubling HBM changes nothing.
    let trn1 = ChipConfig::trn1();
    let wide = ChipConfig {
        hbm_bandwidth_bytes_per_ns: 820.0,
        ..ChipConfig::trn1()
    };
    assert_eq!(
        run_timing(&p, &trn1).total_ps,
        run_timing(&p, &wide).total_ps
    );
}

/// trn2's published example (trainium.md section 3): one engine moves 32 KiB HBM -> SBUF in
/// 1,416 ns. 8 partitions x 4 KiB on engine 0 at 23 B/ns, each descriptor costing 256 B
/// more: 8 x 4352 / 23 = 1,513.7 ns of data (7% above the measurement), after the 1.3 us
/// fixed latency.
#[test]
fn one_engine_moves_32kib_at_the_published_trn2_rate() {
    let cfg = ChipConfig::trn2();
    let p = queues(
        vec![vec![load(0, 0, 0, 8, 4096, 0)]],
        vec![u8_tensor("x", 32_768)],
    );
    let s = run_timing(&p, &cfg);
    assert_eq!(data_ps(8 * 4352, 23.0), 1_513_740);
    close(dur(&s, 0, 0), LAT_PS + 1_513_740, 1);
    // The engine-time record: 8 x 4352 B at 23 B/ns on one engine.
    close(rec(&s, 0, 0).dma_engine_ps, 1_513_739, 1);
}

#[test]
fn queues_on_one_engine_share_it_round_robin() {
    // 4 queues each move 8 partitions x 4 KiB through engine 0 (partitions 0..8). 4 KiB
    // descriptors: 17 x 4096 / 4352 = 16 B/ns of engine; each queue gets 16 / 4 B/ns, so
    // all four end together after 4 x 32 KiB at 16 B/ns = 8192 ns.
    let cfg = ChipConfig::trn1();
    let ops = (0..4u64)
        .map(|q| vec![load(0, q * 32_768, 0, 8, 4096, q * 4096)])
        .collect();
    let s = run_timing(&queues(ops, vec![u8_tensor("x", 4 * 32_768)]), &cfg);
    for q in 0..4 {
        close(dur(&s, q, 0), LAT_PS + 8_192_000, 2);
    }
    // Same 4 queues on 4 different engines (partitions 0, 32, 64, 96: engines 0, 4, 8,
    // 12): 16 B/ns each, 2048 ns.
    let ops = (0..4u64)
        .map(|q| vec![load(0, q * 32_768, 32 * q as u32, 8, 4096, 0)])
        .collect();
    let s = run_timing(&queues(ops, vec![u8_tensor("x", 4 * 32_768)]), &cfg);
    for q in 0..4 {
        close(dur(&s, q, 0), LAT_PS + 2_048_000, 1);
    }
}

#[test]
fn small_descriptors_are_overhead_bound() {
    // 128 partitions x d bytes over all 16 engines: descriptors of d bytes cost
    // (d + 256) / d times their bytes of engine time, so the rate is 272 d / (d + 256).
    let cfg = ChipConfig::trn1();
    let t = vec![u8_tensor("x", 1 << 19)];
    for (d, rate) in [
        (64u32, 272.0 / 5.0),
        (128, 272.0 / 3.0),
        (256, 136.0),
        (1024, 217.6),
        (2048, 272.0 * 8.0 / 9.0),
        (4096, 256.0),
    ] {
        let s = run_timing(
            &queues(vec![vec![load(0, 0, 0, 128, d, 0)]], t.clone()),
            &cfg,
        );
        let bytes = 128 * u64::from(d);
        close(dur(&s, 0, 0), LAT_PS + data_ps(bytes, rate), 1);
        // Engine time = bytes x penalty / 17 B/ns, summed over engines; utilization over
        // the run is that over 16 engines x the run time.
        let engine_ps = bytes as f64 * (272.0 / rate) * 1000.0 / 17.0;
        close(rec(&s, 0, 0).dma_engine_ps, engine_ps.round() as u64, 1);
        assert_eq!(s.dma_engine_ps, rec(&s, 0, 0).dma_engine_ps);
        let util = s.dma_engine_utilization(&cfg);
        let want = engine_ps / (16.0 * s.total_ps as f64);
        assert!((util - want).abs() < 1e-6 * want, "{util} vs {want}");
    }
    // A descriptor is a contiguous run: 2 KiB per partition read as 8 runs of 256 B
    // (HBM rows 512 B apart) moves at 136 B/ns, not 241.78.
    let strided = Op::Dma {
        dst: sb(Dtype::U8, 0, 128, 0, 2048),
        src: Ap {
            dims: vec![
                neuron_isa::Dim {
                    size: 8,
                    stride: 512,
                },
                neuron_isa::Dim {
                    size: 256,
                    stride: 1,
                },
            ],
            ..Ap::hbm_rows(TensorId(0), Dtype::U8, 0, 128, 4096, 2048)
        },
    };
    let s = run_timing(&queues(vec![vec![strided]], t), &cfg);
    close(dur(&s, 0, 0), LAT_PS + data_ps(262_144, 136.0), 1);
}

#[test]
fn hbm_binds_when_engines_outrun_it() {
    // trn2: 16 x 23 = 368 B/ns of engines against 362 B/ns of HBM. With 32 KiB per
    // partition the engines give 368 x 32768 / 33024 = 365.1 B/ns, so a full-width load
    // is HBM-bound at 362 B/ns, and its engine utilization stays below 100%.
    let cfg = ChipConfig::trn2();
    let p = queues(
        vec![vec![load(0, 0, 0, 128, 32_768, 0)]],
        vec![u8_tensor("x", 1 << 22)],
    );
    let s = run_timing(&p, &cfg);
    close(dur(&s, 0, 0), LAT_PS + data_ps(1 << 22, 362.0), 1);
    let data = data_ps(1 << 22, 362.0) as f64;
    let hbm = s.hbm_utilization(&cfg) * s.total_ps as f64 / data;
    let eng = s.dma_engine_utilization(&cfg) * s.total_ps as f64 / data;
    assert!((hbm - 1.0).abs() < 1e-5, "HBM busy {hbm} of the data phase");
    let want = 362.0 / (368.0 * eff(32_768));
    assert!((eng - want).abs() < 1e-5, "engines {eng} vs {want}");
    // 4 KiB per partition: the engines (346.4 B/ns) bind instead.
    let p = queues(
        vec![vec![load(0, 0, 0, 128, 4096, 0)]],
        vec![u8_tensor("x", 1 << 19)],
    );
    let s = run_timing(&p, &cfg);
    close(
        dur(&s, 0, 0),
        LAT_PS + data_ps(524_288, 368.0 * eff(4096)),
        1,
    );
}

#[test]
fn a_queue_overlaps_the_next_latency_with_the_current_data() {
    // One queue, three 256 KiB transfers of 2 KiB descriptors (D = 1084.235 ns each at
    // 241.78 B/ns).
    let d = data_ps(262_144, 272.0 * eff(2048));
    assert_eq!(d, 1_084_236);
    let ops = |_: ()| {
        vec![
            (0..3u64)
                .map(|i| load(0, i * 262_144, 0, 128, 2048, i * 2048))
                .collect(),
        ]
    };
    let t = || vec![u8_tensor("x", 3 * 262_144)];
    // Depth 4: all three issue at 0; their latencies end together and the data phases
    // follow each other: ends at L + D, L + 2D, L + 3D.
    let s = run_timing(&queues(ops(()), t()), &ChipConfig::trn1());
    for i in 0..3u32 {
        assert_eq!(rec(&s, 0, i).start_ps, 0);
        close(rec(&s, 0, i).end_ps, LAT_PS + u64::from(i + 1) * d, 2);
    }
    // Busy time is the union of the in-flight intervals, not their sum.
    close(s.engines[0].busy_ps, LAT_PS + 3 * d, 2);
    // Depth 2: the third issues when the first completes (L + D); its latency ends at
    // 2L + D, after the second's data (L + 2D, since D < L), so it ends at 2L + 2D.
    let cfg = ChipConfig {
        dma_queue_depth: 2,
        ..ChipConfig::trn1()
    };
    let s = run_timing(&queues(ops(()), t()), &cfg);
    close(rec(&s, 0, 1).end_ps, LAT_PS + 2 * d, 2);
    assert_eq!(rec(&s, 0, 2).start_ps, rec(&s, 0, 0).end_ps);
    close(rec(&s, 0, 2).end_ps, 2 * LAT_PS + 2 * d, 2);
    // Depth 1 (the old in-order model): each pays L + D in turn.
    let cfg = ChipConfig {
        dma_queue_depth: 1,
        ..ChipConfig::trn1()
    };
    let s = run_timing(&queues(ops(()), t()), &cfg);
    close(s.total_ps, 3 * (LAT_PS + d), 4);
}

#[test]
fn dma_transposes_run_at_their_documented_fraction() {
    let cfg = ChipConfig::trn1();
    // HBM [512, 128] f32 read column-wise into SBUF [128 partitions, 512]: a 4-byte
    // transpose whose SBUF runs are 2 KiB: 90% of 272 x 8/9 = 217.6 B/ns.
    let tr = Op::Dma {
        dst: sb(Dtype::F32, 0, 128, 0, 512),
        src: Ap {
            dims: vec![neuron_isa::Dim {
                size: 512,
                stride: 128,
            }],
            ..Ap::hbm_rows(TensorId(0), Dtype::F32, 0, 128, 1, 512)
        },
    };
    let p = queues(
        vec![vec![tr]],
        vec![tensor("x", TensorKind::Input, &[512, 128], Dtype::F32)],
    );
    let s = run_timing(&p, &cfg);
    close(dur(&s, 0, 0), LAT_PS + data_ps(262_144, 217.6), 1);
    // SBUF -> SBUF transpose of the same shape: 50%, 120.89 B/ns.
    let tr = Op::Dma {
        dst: sb(Dtype::F32, 0, 128, 0, 512),
        src: Ap {
            dims: vec![neuron_isa::Dim {
                size: 512,
                stride: 0,
            }],
            ..sb(Dtype::F32, 0, 128, 4096, 512)
        },
    };
    let plan = neuron_sim::dma::DmaPlan::of(&tr).expect("dma");
    assert!(!plan.transpose, "a broadcast is not a transpose");
    let tr = Op::Dma {
        dst: sb(Dtype::F32, 0, 128, 0, 512),
        src: Ap {
            dims: vec![
                neuron_isa::Dim { size: 4, stride: 1 },
                neuron_isa::Dim {
                    size: 128,
                    stride: 4,
                },
            ],
            ..sb(Dtype::F32, 0, 128, 4096, 512)
        },
    };
    let plan = neuron_sim::dma::DmaPlan::of(&tr).expect("dma");
    assert!(plan.transpose && plan.descriptor_bytes == 2048, "{plan:?}");
    let s = run_timing(&queues(vec![vec![tr]], vec![]), &cfg);
    close(
        dur(&s, 0, 0),
        LAT_PS + data_ps(262_144, 0.5 * 272.0 * eff(2048)),
        1,
    );
    // A 1-byte element-strided copy is no transpose: one-byte descriptors, 1/257 rate.
    let strided = Op::Dma {
        dst: sb(Dtype::U8, 0, 128, 0, 64),
        src: Ap {
            dims: vec![neuron_isa::Dim {
                size: 64,
                stride: 2,
            }],
            ..sb(Dtype::U8, 0, 128, 4096, 64)
        },
    };
    let s = run_timing(&queues(vec![vec![strided]], vec![]), &cfg);
    close(dur(&s, 0, 0), LAT_PS + data_ps(8192, 272.0 / 257.0), 1);
}

#[test]
fn a_casting_dma_moves_the_larger_side() {
    // bf16 in HBM -> f32 in SBUF, 128 x 1024 elements: 256 KiB read, 512 KiB written; the
    // engines move 512 KiB at the 2 KiB descriptors of the shorter (source) side: 241.78
    // B/ns.
    let cfg = ChipConfig::trn1();
    let cast = Op::Dma {
        dst: sb(Dtype::F32, 0, 128, 0, 1024),
        src: Ap::hbm_rows(TensorId(0), Dtype::Bf16, 0, 128, 1024, 1024),
    };
    let p = queues(
        vec![vec![cast]],
        vec![tensor("x", TensorKind::Input, &[128, 1024], Dtype::Bf16)],
    );
    let s = run_timing(&p, &cfg);
    close(
        dur(&s, 0, 0),
        LAT_PS + data_ps(524_288, 272.0 * eff(2048)),
        1,
    );
    assert_eq!(rec(&s, 0, 0).hbm_read_bytes, 262_144);
}

mod properties {
    use super::*;
    use proptest::prelude::*;

    /// A legal on-chip partition range: (start, count).
    fn partition_range() -> impl Strategy<Value = (u32, u32)> {
        prop_oneof![
            Just((0u32, 128u32)),
            (0u32..2).prop_map(|h| (h * 64, 64)),
            (0u32..4, 1u32..=32).prop_map(|(q, n)| (q * 32, n)),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Random HBM -> SBUF transfers on up to 4 queues: each transfer takes at least its
        /// latency plus its bytes at its best possible rate, the whole run takes at least
        /// the latency plus all bytes at the tighter of HBM and DMA aggregate bandwidth,
        /// and two runs agree.
        #[test]
        fn dma_durations_respect_every_bandwidth_limit(
            transfers in prop::collection::vec((0u8..4, partition_range(), 1u32..4096), 1..12),
            hbm in prop_oneof![Just(50.0f64), Just(410.0)],
        ) {
            let cfg = ChipConfig { hbm_bandwidth_bytes_per_ns: hbm, ..ChipConfig::trn1() };
            let mut ops: Vec<Vec<Op>> = vec![Vec::new(); 4];
            let mut total: u64 = 0;
            for &(q, (p0, np), cols) in &transfers {
                ops[q as usize].push(load(0, 0, p0, np, cols, 0));
                total += u64::from(np) * u64::from(cols);
            }
            let p = queues(ops.clone(), vec![u8_tensor("x", 128 * 4096)]);
            let s = run_timing(&p, &cfg);
            for r in &s.records {
                let Op::Dma { dst, .. } = &ops[r.stream as usize][r.index as usize] else {
                    unreachable!()
                };
                let bytes = dst.bytes();
                // Best case: every engine the partitions touch, but never beyond HBM.
                let engines = dst.partitions.div_ceil(8).max(1);
                let cap = (f64::from(engines) * 17.0).min(hbm);
                let floor = LAT_PS + (bytes as f64 * 1000.0 / cap).floor() as u64;
                prop_assert!(r.duration_ps() + 2 >= floor, "{r:?} faster than {floor}");
                prop_assert_eq!(r.hbm_read_bytes, bytes);
            }
            let bound = LAT_PS + (total as f64 * 1000.0 / hbm.min(272.0)).floor() as u64;
            prop_assert!(s.total_ps + 2 >= bound);
            prop_assert_eq!(s.bytes.hbm_read, total);
            prop_assert_eq!(&s, &run_timing(&p, &cfg));
        }
    }
}
