//! DMA and gather: casts, partition-stride mapping, broadcast, bounds, poison.
#![allow(clippy::unwrap_used)]

use super::exec_helpers::*;
use neuron_isa::{Ap, Dim, Dtype, Op, TensorId};

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// One HBM row broadcast to 4 partitions (`partition_stride = 0`) with a cast to bf16
/// that rounds ties to even: 1 + 2^-8 -> 1.0 (0x3f80), 1 + 3 * 2^-8 -> 1 + 2^-6 (0x3f82).
#[test]
fn dma_broadcast_row_with_bf16_tie() {
    let mut m = mems(&[("row", &[3], Dtype::F32)]);
    let row = [1.0 + 2f32.powi(-8), 1.0 + 3.0 * 2f32.powi(-8), -2.0];
    m.write_tensor(TensorId(0), &f32_bytes(&row)).unwrap();
    let src = Ap::hbm_rows(TensorId(0), Dtype::F32, 0, 4, 0, 3);
    let dst = sb(Dtype::Bf16, 32, 4, 10, 3);
    let out = run(
        &mut m,
        &Op::Dma {
            dst: dst.clone(),
            src,
        },
    );
    assert!(!out.poisoned_read);
    let bits: Vec<u16> = raw(&m, &dst)
        .chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .collect();
    assert_eq!(bits, [0x3f80, 0x3f82, 0xc000].repeat(4));
    // The partitions around the destination are untouched (still poison).
    assert!(
        get(&m, &sb(Dtype::Bf16, 31, 1, 10, 3))
            .iter()
            .all(|v| v.is_nan())
    );
    assert!(
        get(&m, &sb(Dtype::Bf16, 36, 1, 10, 3))
            .iter()
            .all(|v| v.is_nan())
    );
}

/// HBM rows map onto partitions through `partition_stride`: stride 2 rows takes every
/// other row, a negative stride reverses them.
#[test]
fn dma_partition_stride_maps_rows() {
    let mut m = mems(&[("x", &[4, 2], Dtype::F32), ("y", &[4, 2], Dtype::F32)]);
    m.write_tensor(TensorId(0), &f32_bytes(&seq(8, |i| i as f32)))
        .unwrap();
    let every_other = Ap::hbm_rows(TensorId(0), Dtype::F32, 0, 2, 4, 2);
    let dst = sb(Dtype::F32, 0, 2, 0, 2);
    run(
        &mut m,
        &Op::Dma {
            dst: dst.clone(),
            src: every_other,
        },
    );
    assert_eq!(get(&m, &dst), vec![0.0, 1.0, 4.0, 5.0]);
    // SBUF -> HBM with rows reversed: row p of the view is at element 6 - 2p.
    let tile = sb(Dtype::F32, 0, 4, 64, 2);
    put(&mut m, &tile, &seq(8, |i| 10.0 + i as f32));
    let reversed = Ap::hbm_rows(TensorId(1), Dtype::F32, 24, 4, -2, 2);
    run(
        &mut m,
        &Op::Dma {
            dst: reversed,
            src: tile,
        },
    );
    let y: Vec<f32> = m
        .tensor(TensorId(1))
        .unwrap()
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    assert_eq!(y, vec![16.0, 17.0, 14.0, 15.0, 12.0, 13.0, 10.0, 11.0]);
}

/// HBM -> HBM with a transposing (strided) source view and an f32 -> fp8_e4m3 cast that
/// saturates.
#[test]
fn dma_hbm_to_hbm_strided_and_saturating() {
    let mut m = mems(&[("a", &[2, 3], Dtype::F32), ("b", &[3, 2], Dtype::Fp8E4m3)]);
    m.write_tensor(
        TensorId(0),
        &f32_bytes(&[1.0, 2.0, 3.0, 1000.0, -0.5, -1e9]),
    )
    .unwrap();
    // Column-major view of a: 3 rows of 2, row r = column r.
    let mut src = Ap::hbm_rows(TensorId(0), Dtype::F32, 0, 3, 1, 2);
    src.dims = vec![Dim { size: 2, stride: 3 }];
    let dst = hbm(1, Dtype::Fp8E4m3, 3, 2);
    run(&mut m, &Op::Dma { dst, src });
    // 1 = 0x38, 448 = 0x7e (saturated 1000), 2 = 0x40, -0.5 = 0xb0, 3 = 0x44, -448 = 0xfe.
    assert_eq!(
        m.tensor(TensorId(1)).unwrap(),
        &[0x38, 0x7e, 0x40, 0xb0, 0x44, 0xfe]
    );
}

/// int64 token ids load into int32 exactly (no FP32 round trip), and equal dtypes move bits.
#[test]
fn dma_int64_ids_and_bit_exact_copies() {
    let mut m = mems(&[("ids", &[3], Dtype::I64), ("nan", &[2], Dtype::F32)]);
    let ids: Vec<u8> = [16_777_217i64, 3, 50_000]
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    m.write_tensor(TensorId(0), &ids).unwrap();
    let dst = sb(Dtype::I32, 0, 3, 0, 1);
    run(
        &mut m,
        &Op::Dma {
            dst: dst.clone(),
            src: Ap::hbm_rows(TensorId(0), Dtype::I64, 0, 3, 1, 1),
        },
    );
    let mut v = Vec::new();
    m.read_i32(&dst, &mut v).unwrap();
    assert_eq!(v, vec![16_777_217, 3, 50_000]);
    let payload = [0x7fa0_0001u32, 0x8000_0000];
    m.write_tensor(
        TensorId(1),
        &payload
            .iter()
            .flat_map(|b| b.to_le_bytes())
            .collect::<Vec<_>>(),
    )
    .unwrap();
    let t = sb(Dtype::F32, 0, 1, 64, 2);
    run(
        &mut m,
        &Op::Dma {
            dst: t.clone(),
            src: hbm(1, Dtype::F32, 1, 2),
        },
    );
    assert_eq!(
        raw(&m, &t),
        payload
            .iter()
            .flat_map(|b| b.to_le_bytes())
            .collect::<Vec<_>>()
    );
}

#[test]
fn dma_from_unwritten_memory_is_reported() {
    let mut m = mems(&[("out", &[2, 4], Dtype::Bf16)]);
    let tile = sb(Dtype::Bf16, 0, 2, 0, 4);
    let out = run(
        &mut m,
        &Op::Dma {
            dst: hbm(0, Dtype::Bf16, 2, 4),
            src: tile.clone(),
        },
    );
    assert!(out.poisoned_read);
    put(&mut m, &tile, &[0.0; 8]);
    assert!(
        !run(
            &mut m,
            &Op::Dma {
                dst: hbm(0, Dtype::Bf16, 2, 4),
                src: tile
            }
        )
        .poisoned_read
    );
    assert_eq!(m.tensor(TensorId(0)).unwrap(), &[0u8; 16]);
}

#[test]
fn dma_out_of_bounds_is_an_error_not_a_panic() {
    let mut m = mems(&[("x", &[2, 4], Dtype::F32)]);
    let e = run_err(
        &mut m,
        &Op::Dma {
            dst: sb(Dtype::F32, 0, 3, 0, 4),
            src: hbm(0, Dtype::F32, 3, 4),
        },
    );
    assert_eq!(
        e.message,
        "access pattern t0:f32@0[3x4][4]: touches bytes 0..48 of tensor t0, outside 0..32"
    );
    let e = run_err(
        &mut m,
        &Op::Dma {
            dst: sb(Dtype::F32, 0, 2, 0, 3),
            src: hbm(0, Dtype::F32, 2, 4),
        },
    );
    assert!(e.message.contains("is [2, 3] but src"), "{e}");
}

fn gather(dst: Ap, table: Ap, indices: Ap) -> Op {
    Op::DmaGather {
        dst,
        table,
        indices,
    }
}

/// An embedding lookup: rows 3, 0, 3 of a 4 x 2 table, cast to bf16.
#[test]
fn gather_rows_by_index() {
    let mut m = mems(&[("emb", &[4, 2], Dtype::F32)]);
    m.write_tensor(
        TensorId(0),
        &f32_bytes(&[0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5]),
    )
    .unwrap();
    let idx = sb(Dtype::I32, 0, 3, 0, 1);
    m.write_i32(&idx, &[3, 0, 3]).unwrap();
    let dst = sb(Dtype::Bf16, 0, 3, 64, 2);
    let out = run(&mut m, &gather(dst.clone(), hbm(0, Dtype::F32, 4, 2), idx));
    assert!(!out.poisoned_read);
    assert_eq!(get(&m, &dst), vec![3.0, 3.5, 0.0, 0.5, 3.0, 3.5]);
}

#[test]
fn gather_index_out_of_range_names_index_and_rows() {
    let mut m = mems(&[("emb", &[4, 2], Dtype::F32)]);
    let idx = sb(Dtype::I32, 0, 2, 0, 1);
    m.write_i32(&idx, &[1, 4]).unwrap();
    let table = hbm(0, Dtype::F32, 4, 2);
    let e = run_err(
        &mut m,
        &gather(sb(Dtype::F32, 0, 2, 64, 2), table.clone(), idx.clone()),
    );
    assert_eq!(
        e.message,
        "gather index 4 at partition 1 out of range: the table has 4 rows (expected -4 to 3)"
    );
    m.write_i32(&idx, &[-7, 0]).unwrap();
    let e = run_err(
        &mut m,
        &gather(sb(Dtype::F32, 0, 2, 64, 2), table.clone(), idx),
    );
    assert_eq!(
        e.message,
        "gather index -7 at partition 0 out of range: the table has 4 rows (expected -4 to 3)"
    );
    // Indices nobody wrote read as -1 (poison), which counts from the end: the run
    // reports a poisoned read rather than failing.
    let out = run(
        &mut m,
        &gather(
            sb(Dtype::F32, 0, 2, 64, 2),
            table,
            sb(Dtype::I32, 0, 2, 128, 1),
        ),
    );
    assert!(out.poisoned_read);
}

/// A table of more than 128 rows (its `partitions` is the row count): only the picked
/// rows are read.
#[test]
fn gather_from_a_large_table() {
    let mut m = mems(&[("emb", &[1000, 3], Dtype::F32)]);
    m.write_tensor(TensorId(0), &f32_bytes(&seq(3000, |i| i as f32)))
        .unwrap();
    let idx = sb(Dtype::I32, 0, 2, 0, 1);
    m.write_i32(&idx, &[999, 500]).unwrap();
    let dst = sb(Dtype::F32, 0, 2, 64, 3);
    run(
        &mut m,
        &gather(dst.clone(), hbm(0, Dtype::F32, 1000, 3), idx.clone()),
    );
    assert_eq!(
        get(&m, &dst),
        vec![2997.0, 2998.0, 2999.0, 1500.0, 1501.0, 1502.0]
    );
    m.write_i32(&idx, &[1000, 0]).unwrap();
    let e = run_err(&mut m, &gather(dst, hbm(0, Dtype::F32, 1000, 3), idx));
    assert_eq!(
        e.message,
        "gather index 1000 at partition 0 out of range: the table has 1000 rows (expected -1000 to 999)"
    );
}
