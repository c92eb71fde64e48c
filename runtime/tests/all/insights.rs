//! Each insight on a hand-built program made to trigger it, and its absence on one made
//! to avoid it.

use crate::common::*;
use neuron_isa::*;
use neuron_runtime::profile::insights::{Insight, InsightKind, Limiter};
use neuron_runtime::{Model, RunOptions, Summary};
use std::collections::BTreeMap;

/// A program under construction: one stream per engine, each signalling its own semaphore
/// (the semaphore's id is the stream's index) after every instruction.
struct P {
    streams: Vec<Stream>,
    tensors: Vec<HbmTensor>,
    kernels: Vec<KernelInfo>,
    cfg: ChipConfig,
}

impl P {
    fn new() -> P {
        P::with(ChipConfig::trn1())
    }

    fn with(cfg: ChipConfig) -> P {
        P {
            streams: Vec::new(),
            tensors: Vec::new(),
            kernels: Vec::new(),
            cfg,
        }
    }

    fn stream(&mut self, e: Engine) -> u32 {
        if let Some(i) = self.streams.iter().position(|s| s.engine == e) {
            return i as u32;
        }
        self.streams.push(Stream {
            engine: e,
            instrs: Vec::new(),
        });
        self.streams.len() as u32 - 1
    }

    /// Instructions `e` has issued so far (the count its semaphore reaches after them).
    fn issued(&mut self, e: Engine) -> u32 {
        let s = self.stream(e);
        self.streams[s as usize].instrs.len() as u32
    }

    fn input(&mut self, name: &str, rows: u64, cols: u64, kind: TensorKind) -> TensorId {
        self.tensors
            .push(tensor(name, kind, &[rows, cols], Dtype::F32));
        TensorId(self.tensors.len() as u32 - 1)
    }

    fn kernel(&mut self, name: &str, kind: &str) -> u32 {
        self.kernels.push(kernel(name, kind, 0));
        self.kernels.len() as u32 - 1
    }

    /// Appends `op` on `e` in kernel `k`, waiting until each `(engine, count)` engine has
    /// completed `count` instructions.
    fn push(&mut self, e: Engine, op: Op, k: u32, wait: &[(Engine, u32)]) {
        let waits: Vec<(u32, u32)> = wait.iter().map(|&(w, n)| (self.stream(w), n)).collect();
        let s = self.stream(e);
        self.streams[s as usize]
            .instrs
            .push(instr(op, k, &waits, &[s]));
    }

    fn model(self) -> Model {
        let flops = 0;
        let n = self.streams.len() as u32;
        let program = Program {
            streams: self.streams,
            semaphores: n,
            tensors: self.tensors,
            kernels: self.kernels,
        };
        let mut a = artifact("insights", program, flops, vec![]);
        a.meta.target = self.cfg;
        Model::from_artifact(a).unwrap()
    }
}

fn sbuf(dtype: Dtype, offset: u64, free: u32) -> Ap {
    sb(dtype, offset, free)
}

fn psum(dtype: Dtype, offset: u64, free: u32) -> Ap {
    Ap::on_chip(Memory::Psum, dtype, 0, 128, offset, free)
}

/// HBM -> SBUF load of `cols` f32 columns starting at column `col` of `t` (`[128, width]`).
fn load(t: TensorId, width: u64, col: u64, cols: u32, sb_off: u64) -> Op {
    Op::Dma {
        dst: sbuf(Dtype::F32, sb_off, cols),
        src: Ap::hbm_rows(t, Dtype::F32, col * 4, 128, width as i64, cols),
    }
}

fn matmul(n: u32, accumulate: bool, bank: u64) -> Op {
    Op::Matmul {
        dst: psum(Dtype::F32, bank * 2048, n),
        stationary: sbuf(Dtype::Bf16, 0, 128),
        moving: sbuf(Dtype::Bf16, 256, n),
        accumulate,
    }
}

fn summary(m: &Model) -> Summary {
    let mut b = m.bind();
    b.generate_missing(1).unwrap();
    let opts = RunOptions {
        timing_only: true,
        ..RunOptions::default()
    };
    let exec = m.execute(&b, &opts).unwrap();
    Summary::new(m, &exec.stats).unwrap()
}

fn find(s: &Summary, kind: InsightKind) -> Vec<&Insight> {
    s.insights.iter().filter(|i| i.kind == kind).collect()
}

fn has(s: &Summary, kind: InsightKind, kernel: Option<&str>) -> bool {
    find(s, kind)
        .iter()
        .any(|i| kernel.is_none_or(|k| i.kernel.as_deref() == Some(k)))
}

fn kinds(s: &Summary) -> Vec<&'static str> {
    s.insights.iter().map(|i| i.kind.name()).collect()
}

fn limiter(s: &Summary, kernel: &str) -> Limiter {
    s.kernels.iter().find(|k| k.name == kernel).unwrap().limiter
}

/// Two large loads over all partitions, on two queues, in kernel `load`.
fn big_loads(cfg: ChipConfig) -> Model {
    let mut p = P::with(cfg);
    let k = p.kernel("load", "dma");
    let x = p.input("x", 128, 8192, TensorKind::Input);
    for q in 0..2u8 {
        let col = u64::from(q) * 4096;
        p.push(Engine::Dma(q), load(x, 8192, col, 4096, col * 4), k, &[]);
    }
    p.model()
}

#[test]
fn hbm_bound_when_dma_engines_outrun_hbm_and_dma_bound_when_they_do_not() {
    // trn1: 16 DMA engines x 17 B/ns = 272 B/ns < 410 B/ns of HBM: the engines limit.
    let s = summary(&big_loads(ChipConfig::trn1()));
    assert_eq!(limiter(&s, "load"), Limiter::Dma, "{:?}", s.kernels);
    assert!(
        has(&s, InsightKind::DmaBound, Some("load")),
        "{:?}",
        kinds(&s)
    );
    assert!(!has(&s, InsightKind::HbmBound, None), "{:?}", kinds(&s));

    // Engines of 100 B/ns (1600 B/ns in all): now HBM is the limit.
    let fast = ChipConfig::trn1()
        .with_overrides(&[("dma_engine_bytes_per_ns", "100")])
        .unwrap();
    let s = summary(&big_loads(fast));
    assert_eq!(limiter(&s, "load"), Limiter::Hbm);
    let i = find(&s, InsightKind::HbmBound);
    assert_eq!(i.len(), 1, "{:?}", kinds(&s));
    assert!(i[0].evidence.contains("410 GB/s"), "{}", i[0].evidence);
    assert!(i[0].saving_ns > 0.0 && i[0].saving_ns <= s.latency_ns);
    assert!(!has(&s, InsightKind::DmaBound, None), "{:?}", kinds(&s));
}

/// `count` back-to-back bf16 matmuls of `n` moving columns in kernel `mm`, after a small
/// load in kernel `load`.
fn matmuls(count: u32, n: u32) -> Model {
    let mut p = P::new();
    let kl = p.kernel("load", "dma");
    let km = p.kernel("mm", "matmul");
    let x = p.input("x", 128, 512, TensorKind::Input);
    p.push(Engine::Dma(0), load(x, 512, 0, 512, 0), kl, &[]);
    for i in 0..count {
        let wait = if i == 0 {
            vec![(Engine::Dma(0), 1)]
        } else {
            vec![]
        };
        p.push(
            Engine::Tensor,
            matmul(n, false, u64::from(i % 2)),
            km,
            &wait,
        );
    }
    p.model()
}

#[test]
fn engine_bound_and_low_mfu_matmul_kernels() {
    // Full-width matmuls back to back: TensorE-bound at full rate, no low-MFU finding.
    let s = summary(&matmuls(64, 512));
    assert_eq!(limiter(&s, "mm"), Limiter::Tensor);
    let i = find(&s, InsightKind::EngineBound);
    assert_eq!(i.len(), 1, "{:?}", kinds(&s));
    assert!(i[0].finding.contains("tensor"), "{}", i[0].finding);
    assert!(!has(&s, InsightKind::LowMfu, None), "{:?}", kinds(&s));
    assert!(!has(&s, InsightKind::DmaBound, Some("mm")));

    // 16 moving columns: each matmul still costs 64 cycles (the stationary floor), so
    // TensorE is busy at a quarter of its peak.
    let s = summary(&matmuls(512, 16));
    let i = find(&s, InsightKind::LowMfu);
    assert_eq!(i.len(), 1, "{:?}", kinds(&s));
    assert_eq!(i[0].kernel.as_deref(), Some("mm"));
    assert!(i[0].finding.contains("MFU"), "{}", i[0].finding);
    assert!(i[0].saving_ns > 0.0);
}

/// `count` loads of `cols` f32 columns on `queues` queues, round robin.
fn loads(count: u32, cols: u32, queues: u8) -> Model {
    let mut p = P::new();
    let k = p.kernel("load", "dma");
    let width = u64::from(count * cols);
    let x = p.input("x", 128, width, TensorKind::Input);
    for i in 0..count {
        let col = u64::from(i * cols);
        let q = (i % u32::from(queues)) as u8;
        p.push(
            Engine::Dma(q),
            load(x, width, col, cols, col * 4 % 65536),
            k,
            &[],
        );
    }
    p.model()
}

#[test]
fn small_dmas_below_the_knee() {
    // 64 B per partition, far below the 256 B knee.
    let s = summary(&loads(32, 16, 4));
    let i = find(&s, InsightKind::SmallDma);
    assert_eq!(i.len(), 1, "{:?}", kinds(&s));
    assert!(
        i[0].finding.starts_with("32 of 32 DMAs"),
        "{}",
        i[0].finding
    );
    assert!(
        i[0].evidence.contains("mean 64 B per partition"),
        "{}",
        i[0].evidence
    );
    assert!(i[0].saving_ns > 0.0 && i[0].saving_ns < s.latency_ns);
    // 4 KiB per partition: at peak.
    let s = summary(&loads(4, 1024, 4));
    assert!(!has(&s, InsightKind::SmallDma, None), "{:?}", kinds(&s));
}

#[test]
fn dma_engine_time_counts_the_per_descriptor_overhead() {
    // 256 loads of 64 B per partition on all 16 queues: each descriptor costs 256 B of
    // engine time on top of its 64 B (chip-config.md), so the engines, not the bytes,
    // set the pace. Counting bytes at full rate alone would put the busiest engine near
    // a fifth of the kernel's time; the simulator's own engine time puts it near all of it.
    let s = summary(&loads(256, 16, 16));
    let i = find(&s, InsightKind::DmaBound);
    assert_eq!(i.len(), 1, "{:?}", kinds(&s));
    let e = &i[0].evidence;
    let pct: f64 = e
        .split("the busiest DMA engine needs ")
        .nth(1)
        .and_then(|r| r.split('%').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no engine share in {e}"));
    assert!((75.0..=101.0).contains(&pct), "{e}");
}

#[test]
fn serialized_queue_versus_spread_queues() {
    let s = summary(&loads(8, 512, 1));
    let i = find(&s, InsightKind::SerializedQueue);
    assert_eq!(i.len(), 1, "{:?}", kinds(&s));
    assert!(i[0].finding.contains("queue dma0"), "{}", i[0].finding);
    assert!(i[0].saving_ns > 0.0);
    let s = summary(&loads(8, 512, 8));
    assert!(
        !has(&s, InsightKind::SerializedQueue, None),
        "{:?}",
        kinds(&s)
    );
}

/// Loads the same `[128, 512]` input `times` times, on one queue.
fn reloads(times: u32) -> Model {
    let mut p = P::new();
    let k = p.kernel("load", "dma");
    let x = p.input("x", 128, 512, TensorKind::Input);
    for i in 0..times {
        p.push(
            Engine::Dma((i % 2) as u8),
            load(x, 512, 0, 512, u64::from(i % 2) * 2048),
            k,
            &[],
        );
    }
    p.model()
}

#[test]
fn tensors_reloaded_more_than_twice() {
    let s = summary(&reloads(4));
    let i = find(&s, InsightKind::RepeatedReload);
    assert_eq!(i.len(), 1, "{:?}", kinds(&s));
    assert!(i[0].finding.contains("`x`"), "{}", i[0].finding);
    assert!(i[0].finding.contains("4.0 times"), "{}", i[0].finding);
    // Three extra loads of 256 KiB at 410 B/ns.
    let extra = 3.0 * 128.0 * 512.0 * 4.0;
    assert!(
        (i[0].saving_ns - extra / 410.0).abs() < 1e-6,
        "{}",
        i[0].saving_ns
    );
    // Loaded once and reloaded once: fine.
    let s = summary(&reloads(2));
    assert!(
        !has(&s, InsightKind::RepeatedReload, None),
        "{:?}",
        kinds(&s)
    );
}

/// Loads `inputs` `[128, 512]` inputs, then a spill kernel saves one tile to a scratch
/// tensor and reloads it.
fn spills(inputs: u32) -> Model {
    let mut p = P::new();
    let k = p.kernel("load", "dma");
    let ks = p.kernel("spill0", "spill");
    for i in 0..inputs {
        let x = p.input(&format!("x{i}"), 128, 512, TensorKind::Input);
        p.push(Engine::Dma(0), load(x, 512, 0, 512, 0), k, &[]);
    }
    let scratch = p.input("spill", 128, 512, TensorKind::Scratch);
    let n = p.issued(Engine::Dma(0));
    p.push(
        Engine::Dma(1),
        Op::Dma {
            dst: Ap::hbm_rows(scratch, Dtype::F32, 0, 128, 512, 512),
            src: sbuf(Dtype::F32, 0, 512),
        },
        ks,
        &[(Engine::Dma(0), n)],
    );
    p.push(Engine::Dma(1), load(scratch, 512, 0, 512, 4096), ks, &[]);
    p.model()
}

#[test]
fn spill_reload_share_of_hbm_reads() {
    // Reload 256 KiB of 512 KiB read: 50%.
    let s = summary(&spills(1));
    assert_eq!(s.spill_reload_bytes, 128 * 512 * 4);
    let i = find(&s, InsightKind::SpillReload);
    assert_eq!(i.len(), 1, "{:?}", kinds(&s));
    assert!(i[0].finding.contains("50%"), "{}", i[0].finding);
    // 1 of 5 tiles read: 20%, below the 25% threshold.
    let s = summary(&spills(4));
    assert!(!has(&s, InsightKind::SpillReload, None), "{:?}", kinds(&s));
}

/// Matmul groups of `per_group` accumulating matmuls, each group evicted by VectorE
/// before the next group may overwrite the (single) PSUM bank.
fn evictions(groups: u32, per_group: u32) -> Model {
    let mut p = P::new();
    let km = p.kernel("mm", "matmul");
    for g in 0..groups {
        for j in 0..per_group {
            let wait = if g > 0 && j == 0 {
                vec![(Engine::Vector, g)]
            } else {
                vec![]
            };
            p.push(Engine::Tensor, matmul(512, j > 0, 0), km, &wait);
        }
        p.push(
            Engine::Vector,
            Op::TensorCopy {
                dst: sbuf(Dtype::F32, 8192, 512),
                src: psum(Dtype::F32, 0, 512),
            },
            km,
            &[(Engine::Tensor, (g + 1) * per_group)],
        );
    }
    p.model()
}

#[test]
fn psum_evictions_on_the_critical_path() {
    // One matmul per eviction, and TensorE waits for each: evictions are half the path.
    let s = summary(&evictions(16, 1));
    let i = find(&s, InsightKind::PsumEvictionCriticalPath);
    assert_eq!(i.len(), 1, "{:?}", kinds(&s));
    assert!(
        i[0].finding.starts_with("16 PSUM evictions"),
        "{}",
        i[0].finding
    );
    assert!(i[0].evidence.contains("16 on vector"), "{}", i[0].evidence);
    // The same TensorE waits, named after the semaphore VectorE signals.
    let t = find(&s, InsightKind::TensorIdleOnSemaphore);
    assert_eq!(t.len(), 1, "{:?}", kinds(&s));
    assert!(
        t[0].evidence.contains("signalled mostly by vector"),
        "{}",
        t[0].evidence
    );
    // Accumulate 64 matmuls per eviction: one eviction, a sliver of the path.
    let s = summary(&evictions(1, 64));
    assert!(
        !has(&s, InsightKind::PsumEvictionCriticalPath, None),
        "{:?}",
        kinds(&s)
    );
}

/// Each matmul waits for its own load on dma0, and each load (single buffer) for the
/// previous matmul.
fn unprefetched(tiles: u32) -> Model {
    let mut p = P::new();
    let k = p.kernel("mm", "matmul");
    let x = p.input("x", 128, u64::from(tiles) * 512, TensorKind::Input);
    let width = u64::from(tiles) * 512;
    for t in 0..tiles {
        p.push(
            Engine::Dma(0),
            load(x, width, u64::from(t) * 512, 512, 4096),
            k,
            &[(Engine::Tensor, t)],
        );
        p.push(
            Engine::Tensor,
            matmul(512, false, 0),
            k,
            &[(Engine::Dma(0), t + 1)],
        );
    }
    p.model()
}

#[test]
fn tensor_idle_on_a_named_semaphore() {
    let m = unprefetched(8);
    let dma_sem = m
        .artifact()
        .meta
        .program
        .streams
        .iter()
        .position(|s| s.engine == Engine::Dma(0))
        .unwrap();
    let s = summary(&m);
    let i = find(&s, InsightKind::TensorIdleOnSemaphore);
    assert_eq!(i.len(), 1, "{:?}", kinds(&s));
    assert!(
        i[0].finding.ends_with(&format!("semaphore s{dma_sem}")),
        "{}",
        i[0].finding
    );
    assert!(
        i[0].evidence.contains("by dma0 in kernel `mm`"),
        "{}",
        i[0].evidence
    );
    assert!(i[0].action.starts_with("prefetch"), "{}", i[0].action);
    // TensorE waits only for the first load, under 5% of a long run.
    let s = summary(&matmuls(256, 512));
    assert!(
        !has(&s, InsightKind::TensorIdleOnSemaphore, None),
        "{:?}",
        kinds(&s)
    );
}

/// `transposes` 128x128 transposes and `mms` full matmuls on TensorE.
fn transposes(transposes: u32, mms: u32) -> Model {
    let mut p = P::new();
    let k = p.kernel("mm", "matmul");
    for _ in 0..transposes {
        p.push(
            Engine::Tensor,
            Op::Transpose {
                dst: psum(Dtype::Bf16, 4096, 128),
                src: sbuf(Dtype::Bf16, 0, 128),
            },
            k,
            &[],
        );
    }
    for _ in 0..mms {
        p.push(Engine::Tensor, matmul(512, false, 0), k, &[]);
    }
    p.model()
}

#[test]
fn transposes_above_ten_percent_of_tensor_time() {
    let s = summary(&transposes(32, 8));
    let i = find(&s, InsightKind::TransposeShare);
    assert_eq!(i.len(), 1, "{:?}", kinds(&s));
    assert!(
        i[0].evidence.starts_with("32 transposes"),
        "{}",
        i[0].evidence
    );
    let s = summary(&transposes(1, 64));
    assert!(
        !has(&s, InsightKind::TransposeShare, None),
        "{:?}",
        kinds(&s)
    );
}

#[test]
fn insights_are_sorted_by_saving_and_serialized_by_kind_name() {
    let s = summary(&evictions(16, 1));
    assert!(s.insights.len() >= 2);
    for w in s.insights.windows(2) {
        assert!(w[0].saving_ns >= w[1].saving_ns);
    }
    let v: serde_json::Value = serde_json::to_value(&s).unwrap();
    let names: BTreeMap<String, ()> = v["insights"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| (i["kind"].as_str().unwrap().to_string(), ()))
        .collect();
    assert!(
        names.contains_key("psum_eviction_critical_path"),
        "{names:?}"
    );
    assert_eq!(v["schema_version"], 2);
    assert_eq!(v["tool"], "neuron-sim");
}

#[test]
fn the_cli_prints_the_insights_of_the_json_summary() {
    let dir = tempfile::tempdir().unwrap();
    let neff = write(dir.path(), "mlp.neff", &mlp_artifact(256, 3));
    let run = |extra: &[&str]| {
        let out = assert_cmd::Command::new(env!("CARGO_BIN_EXE_neuron-sim"))
            .arg("run")
            .arg(&neff)
            .arg("--timing-only")
            .args(extra)
            .assert()
            .success()
            .get_output()
            .clone();
        String::from_utf8(out.stdout).unwrap()
    };
    let json: serde_json::Value = serde_json::from_str(&run(&["--json"])).unwrap();
    let insights = json["insights"].as_array().unwrap();
    assert!(!insights.is_empty());
    let text = run(&[]);
    assert!(
        text.contains("insights     (largest estimated saving first)"),
        "{text}"
    );
    for (n, i) in insights.iter().take(6).enumerate() {
        let line = format!(
            "{}. [{}] {}",
            n + 1,
            i["kind"].as_str().unwrap(),
            i["finding"].as_str().unwrap()
        );
        assert!(text.contains(&line), "{line} not in {text}");
        assert!(text.contains(i["action"].as_str().unwrap()), "{text}");
    }
}
