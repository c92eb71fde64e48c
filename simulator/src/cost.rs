//! The compute-engine cost model: how many engine cycles an instruction occupies its engine.
//!
//! The formulas are the documented first-order model of the NKI ISA ("Estimated
//! instruction cost", `docs/isa.md` and trainium.md section 2.3); every hardware constant
//! comes from [`ChipConfig`]. DMA transfers are not timed here: their duration depends on
//! what else is moving at the same time, see [`crate::dma`].
//!
//! Choices where the reference is silent or approximate (also listed in `docs/isa.md`):
//! - The access overhead (`access_overhead_cycles`, ~60 cycles to start an SBUF/PSUM access)
//!   is charged to every VectorE, ScalarE and GpSimd instruction, but not to TensorE: the
//!   documented matmul cost is already "the average for back-to-back matmuls", and TensorE
//!   pays its pipeline fill (`matmul_init_latency_cycles`) instead, added by the scheduler
//!   when the engine was idle before the instruction (see [`crate::sched`]).
//! - FP8 and INT8 matmuls take `ceil(cycles / speedup)`: our ISA caps K at 128, so the
//!   double-row FP8 mode of trn2 (same cycles, K = 256) is modelled as half the cycles for
//!   the same K <= 128 work.
//! - The stride penalty (innermost on-chip stride above `stride_penalty_bytes` halves the
//!   access bandwidth) doubles the element-proportional part of VectorE/ScalarE/GpSimd
//!   costs; TensorE and DMA ignore it.
//! - The trn2 VectorE perf mode (`vector_bf16_perf_factor`) divides the element count of
//!   `tensor_copy` and `tensor_scalar` on VectorE when every operand is BF16/FP16 in SBUF
//!   with unit stride. The reference quotes 4x for these two ops and 2x for others; we use
//!   the single configured factor for these two ops only (conservative).

use neuron_isa::{AluOp, Ap, ChipConfig, Dtype, Engine, Memory, Op};

/// Picoseconds taken by `cycles` cycles of a clock at `ghz`, rounded to the nearest ps
/// (at least 1 ps for a non-zero cycle count, so every instruction takes time).
pub fn cycles_to_ps(cycles: u64, ghz: f64) -> u64 {
    if cycles == 0 {
        return 0;
    }
    let ps = (cycles as f64 * 1000.0 / ghz).round();
    // `as` saturates for huge values; a config's clock is validated positive and finite.
    (ps as u64).max(1)
}

/// Cycles of a clock at `ghz` in `ps` picoseconds, rounded to the nearest cycle.
pub fn ps_to_cycles(ps: u64, ghz: f64) -> u64 {
    (ps as f64 * ghz / 1000.0).round() as u64
}

/// The input dtype class of a matmul, which selects its rate.
pub fn matmul_input_dtype(stationary: &Ap, moving: &Ap) -> Dtype {
    // The verifier requires both inputs to be FP32 if either is; when classes are mixed
    // (e.g. FP8 with BF16) the slower rate applies, so report the non-fast dtype.
    if stationary.dtype == Dtype::F32 || moving.dtype == Dtype::F32 {
        Dtype::F32
    } else if (stationary.dtype.is_fp8() && !moving.dtype.is_fp8())
        || (is_int8(stationary.dtype) && !is_int8(moving.dtype))
    {
        moving.dtype
    } else {
        stationary.dtype
    }
}

fn is_int8(d: Dtype) -> bool {
    matches!(d, Dtype::I8 | Dtype::U8)
}

/// Matmul FLOPs: `2 * K * M * N` (one multiply-add is two FLOPs).
pub fn matmul_flops(stationary: &Ap, moving: &Ap) -> u64 {
    // Saturating: verified matmuls are tiny, but this is public and must never overflow.
    2u64.saturating_mul(u64::from(stationary.partitions))
        .saturating_mul(stationary.free_elems())
        .saturating_mul(moving.free_elems())
}

/// TensorE cycles of a matmul, without the pipeline fill:
/// `max(min(floor, M), N)`, times `matmul_fp32_factor` for FP32 inputs, divided (rounding
/// up) by `matmul_fp8_speedup` / `matmul_int8_speedup` for FP8 / INT8 inputs.
pub fn matmul_cycles(cfg: &ChipConfig, stationary: &Ap, moving: &Ap) -> u64 {
    let m = stationary.free_elems();
    let n = moving.free_elems();
    let base = m.min(cfg.matmul_stationary_min_cycles).max(n);
    let dtype = matmul_input_dtype(stationary, moving);
    if dtype == Dtype::F32 {
        base.saturating_mul(u64::from(cfg.matmul_fp32_factor))
    } else if dtype.is_fp8() {
        base.div_ceil(u64::from(cfg.matmul_fp8_speedup.max(1)))
    } else if is_int8(dtype) {
        base.div_ceil(u64::from(cfg.matmul_int8_speedup.max(1)))
    } else {
        base
    }
}

/// TensorE cycles of a transpose of `src[P, F]`, without the pipeline fill:
/// `max(P, min(floor, F))`.
pub fn transpose_cycles(cfg: &ChipConfig, src: &Ap) -> u64 {
    let p = u64::from(src.partitions);
    let f = src.free_elems();
    p.max(f.min(cfg.matmul_stationary_min_cycles))
}

/// Engine cycles `op` occupies `engine` (VectorE, ScalarE, GpSimd or TensorE), excluding
/// TensorE's pipeline fill. Returns 0 for DMA ops, which [`crate::dma`] times.
pub fn compute_cycles(cfg: &ChipConfig, engine: Engine, op: &Op) -> u64 {
    let min_ii = cfg.min_ii_cycles;
    match op {
        Op::Dma { .. } | Op::DmaGather { .. } => 0,
        Op::Matmul {
            stationary, moving, ..
        } => matmul_cycles(cfg, stationary, moving),
        Op::Transpose { src, .. } => transpose_cycles(cfg, src),
        _ => {
            let (elem_cycles, floor) = element_cycles(cfg, engine, op);
            // The stride penalty scales only the element-proportional part.
            let elem_cycles = if stride_penalised(cfg, op) {
                elem_cycles.saturating_mul(2)
            } else {
                elem_cycles
            };
            let mut cycles = match floor {
                Floor::MinIi => elem_cycles.max(min_ii),
                Floor::None => elem_cycles,
            };
            match op {
                // Saturating: the cycle constants accept any u64 (docs/chip-config.md).
                Op::Activation { accum: Some(_), .. } => cycles = cycles.saturating_add(min_ii),
                Op::Iota { .. } => cycles = cycles.saturating_add(cfg.gpsimd_start_cycles),
                _ if engine == Engine::GpSimd => {
                    cycles = cycles.saturating_add(cfg.gpsimd_start_cycles)
                }
                _ => {}
            }
            cycles.saturating_add(cfg.access_overhead_cycles)
        }
    }
}

/// Whether the documented formula takes `max(MIN_II, ..)` of the element cost.
enum Floor {
    MinIi,
    None,
}

/// The element-proportional cycles of a VectorE/ScalarE/GpSimd op and its floor rule.
fn element_cycles(cfg: &ChipConfig, engine: Engine, op: &Op) -> (u64, Floor) {
    match op {
        Op::Activation { src, .. } => (src.free_elems(), Floor::MinIi),
        Op::TensorScalar { dst, src, .. } => (
            perf_mode(cfg, engine, op, src.free_elems().max(dst.free_elems())),
            Floor::MinIi,
        ),
        Op::TensorCopy { dst, src } => (
            perf_mode(cfg, engine, op, src.free_elems().max(dst.free_elems())),
            Floor::MinIi,
        ),
        Op::TensorTensor { dst, a, b, op: alu } => {
            let n = dst.free_elems();
            let one_psum = (a.mem == Memory::Psum) != (b.mem == Memory::Psum);
            let bf16_fast = [dst, a, b]
                .iter()
                .all(|ap| ap.mem == Memory::Sbuf && ap.dtype == Dtype::Bf16 && ap.is_unit_stride())
                && matches!(alu, AluOp::Add | AluOp::Mul | AluOp::Sub);
            if one_psum || bf16_fast {
                (n, Floor::MinIi)
            } else {
                (n.saturating_mul(2), Floor::MinIi)
            }
        }
        Op::Select {
            dst,
            on_true,
            on_false,
            ..
        } => {
            // As tensor_copy_predicated: N when one data operand is in PSUM, 2N otherwise.
            let n = dst.free_elems();
            if on_true.mem == Memory::Psum || on_false.mem == Memory::Psum {
                (n, Floor::MinIi)
            } else {
                (n.saturating_mul(2), Floor::MinIi)
            }
        }
        Op::TensorReduce { dst, src, op, .. } => {
            let n = src.free_elems();
            let halved = src.dtype == Dtype::Bf16
                && dst.dtype == Dtype::Bf16
                && matches!(op, AluOp::Add | AluOp::Max);
            (if halved { n / 2 } else { n }, Floor::None)
        }
        Op::BnStats { src, .. } => (src.free_elems(), Floor::MinIi),
        Op::BnAggr { src, .. } => (
            cfg.bn_aggr_cycles_per_triple
                .saturating_mul(src.free_elems() / 3),
            Floor::MinIi,
        ),
        Op::Memset { dst, value } => {
            let n = dst.free_elems();
            let halved = *value == 0.0 && matches!(dst.dtype, Dtype::Bf16 | Dtype::F16);
            (if halved { n / 2 } else { n }, Floor::MinIi)
        }
        // iota: GPSIMD_START + N; the start cost is added by the caller.
        Op::Iota { dst, .. } => (dst.free_elems(), Floor::None),
        Op::Dma { .. } | Op::DmaGather { .. } | Op::Matmul { .. } | Op::Transpose { .. } => {
            (0, Floor::None)
        }
    }
}

/// Applies the trn2 VectorE BF16/FP16 perf mode to `n` elements when it is enabled and
/// every operand qualifies.
fn perf_mode(cfg: &ChipConfig, engine: Engine, op: &Op, n: u64) -> u64 {
    let factor = u64::from(cfg.vector_bf16_perf_factor);
    if engine != Engine::Vector || factor <= 1 {
        return n;
    }
    let qualifies = |ap: &Ap| {
        ap.mem == Memory::Sbuf
            && matches!(ap.dtype, Dtype::Bf16 | Dtype::F16)
            && ap.is_unit_stride()
    };
    let mut all = op.reads().into_iter().chain(op.writes());
    if all.all(qualifies) {
        n.div_ceil(factor)
    } else {
        n
    }
}

/// Whether any on-chip operand's innermost stride exceeds `stride_penalty_bytes`.
fn stride_penalised(cfg: &ChipConfig, op: &Op) -> bool {
    if cfg.stride_penalty_bytes == 0 {
        return false;
    }
    let strided = |ap: &Ap| {
        ap.mem.is_on_chip()
            && ap.dims.last().is_some_and(|d| {
                d.size > 1
                    && d.stride.unsigned_abs().saturating_mul(ap.dtype.size())
                        > cfg.stride_penalty_bytes
            })
    };
    op.reads().into_iter().chain(op.writes()).any(strided)
}
