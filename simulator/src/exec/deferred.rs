//! Deferred matmuls: TensorE's GEMMs run on a worker thread while the simulator goes on
//! executing the instructions after them, so the host's two cores overlap a layer's
//! GEMMs with its copies, activations and evictions.
//!
//! A float matmul whose destination is one contiguous FP32 run per partition (what
//! [`Memories::rows_f32_mut`] views) is executed at its start as before up to the GEMM:
//! its operands are checked and read (with their poison report), and an accumulating
//! matmul reads its destination. The GEMM itself, on those private copies, is sent to
//! the worker, and the destination region becomes *pending*. Before any later
//! instruction touches a pending region (reads or writes bytes of the same partitions
//! and row span), the region is *committed*: the worker's result is written to PSUM.
//! The run ends by committing everything. So every instruction sees exactly the bytes it
//! would have seen with the GEMM done at the matmul's start, and the outputs are
//! bit-identical to the synchronous execution (the GEMM's bits never depend on where or
//! when it runs; `matmul.rs` gives the rule).
//!
//! A chain of matmuls accumulating into the same destination stays on the worker: the
//! next one continues from the worker's buffer instead of committing and re-reading it.
//! The synchronous path reports a poisoned read when an accumulating matmul finds the
//! FP32 poison pattern (all ones) in its destination. A GEMM cannot produce that pattern
//! unless an operand or the initial destination held it (bf16/fp16/fp8 values decode to
//! FP32 NaNs whose low bits are zero, and arithmetic only returns an operand's NaN or
//! the default NaN), and that operand read was itself reported; so a chain continues on
//! the worker only while nothing in it was reported, and otherwise commits and checks
//! the destination as the synchronous path does. The reports are therefore identical.
//!
//! Deferral is used only by [`crate::Simulator`] runs on a pool of two or more threads;
//! [`crate::exec::execute`] itself stays synchronous.

use super::matmul::{block_width, gemm, moving_blocks, operands};
use super::{ExecContext, ExecError, ExecOutcome, execute};
use crate::memory::Memories;
use ndarray::{ArrayView2, ArrayViewMut2};
use neuron_isa::{Ap, Dtype, Memory, Op};
use std::collections::HashMap;
use std::sync::mpsc;

/// Where a GEMM's destination buffer starts.
enum Init {
    /// A fresh accumulation (`dst = acc`).
    Fresh,
    /// The destination's values, read at the matmul's start.
    Given(Vec<f32>),
    /// The worker's buffer of the same region, left by the previous matmul of a chain.
    Continue,
}

/// One GEMM for the worker, on private copies of its operands.
struct Job {
    region: u64,
    init: Init,
    stationary: Vec<f32>,
    moving: Vec<f32>,
    kmn: (usize, usize, usize),
    /// The width of the GEMM's column blocks, chosen on the simulator's thread (whose rayon
    /// pool may differ from the one the worker sees; any width gives the same bits).
    width: usize,
    exact_products: bool,
}

enum Msg {
    Run(Job),
    /// Send back the region's buffer (the worker forgets it).
    Take(u64, mpsc::Sender<Result<Vec<f32>, ExecError>>),
}

/// The worker's loop: runs jobs in order, keeping each pending region's buffer.
fn work(rx: mpsc::Receiver<Msg>) {
    let mut buffers: HashMap<u64, Result<Vec<f32>, ExecError>> = HashMap::new();
    for msg in rx {
        match msg {
            Msg::Run(job) => {
                let previous = buffers.remove(&job.region);
                let result = run(job, previous);
                // The region is the job's: `run` consumed the previous buffer.
                if let Some((region, r)) = result {
                    buffers.insert(region, r);
                }
            }
            Msg::Take(region, reply) => {
                let buf = buffers
                    .remove(&region)
                    .unwrap_or_else(|| Err(ExecError::new("deferred matmul result missing")));
                let _ = reply.send(buf);
            }
        }
    }
}

/// Runs `job`; returns its region and buffer (or the error that left it unusable).
fn run(
    job: Job,
    previous: Option<Result<Vec<f32>, ExecError>>,
) -> Option<(u64, Result<Vec<f32>, ExecError>)> {
    let (k, m, n) = job.kmn;
    let (mut c, accumulate) = match job.init {
        Init::Fresh => (vec![0f32; m * n], false),
        Init::Given(c) => (c, true),
        Init::Continue => match previous {
            Some(Ok(c)) => (c, true),
            Some(Err(e)) => return Some((job.region, Err(e))),
            None => {
                return Some((
                    job.region,
                    Err(ExecError::new("deferred matmul chain lost its buffer")),
                ));
            }
        },
    };
    let result = (|| {
        let shape_err = |e: ndarray::ShapeError| ExecError::new(format!("matmul buffers: {e}"));
        let width = job.width;
        let sv = ArrayView2::from_shape((k, m), job.stationary.as_slice()).map_err(shape_err)?;
        let vblocks = moving_blocks(&job.moving, k, n, width)?;
        let cv = ArrayViewMut2::from_shape((m, n), c.as_mut_slice()).map_err(shape_err)?;
        // The destination's poison was checked when it was read.
        gemm(
            &sv,
            vblocks,
            cv,
            width,
            accumulate,
            job.exact_products,
            false,
        );
        Ok(())
    })();
    Some((job.region, result.map(|()| c)))
}

/// A destination region whose GEMM result is still on the worker.
#[derive(Debug)]
struct Pending {
    region: u64,
    dst: Ap,
    /// Nothing read by the region's chain so far was reported as poison.
    clean: bool,
}

/// The worker thread and the pending regions of one run.
#[derive(Debug, Default)]
pub(crate) struct Deferred {
    worker: Option<(mpsc::Sender<Msg>, std::thread::JoinHandle<()>)>,
    pending: Vec<Pending>,
    next_region: u64,
}

impl std::fmt::Debug for Msg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Msg::Run(_) => "Run",
            Msg::Take(..) => "Take",
        })
    }
}

/// Whether `a` and `b` may touch a common byte: same on-chip memory, overlapping
/// partitions and overlapping row spans (conservatively true when a span is unknown).
fn overlaps(a: &Ap, b: &Ap) -> bool {
    if a.mem != b.mem {
        return false;
    }
    let parts = |x: &Ap| {
        let lo = u64::from(x.start_partition);
        (lo, lo + u64::from(x.partitions))
    };
    let ((pa, qa), (pb, qb)) = (parts(a), parts(b));
    if qa <= pb || qb <= pa {
        return false;
    }
    match (a.row_byte_span(), b.row_byte_span()) {
        (Some((la, ha)), Some((lb, hb))) => la < hb && lb < ha,
        _ => true,
    }
}

impl Deferred {
    /// Executes `op` like [`execute`], deferring the GEMM of an eligible matmul to the
    /// worker (when the rayon pool has two or more threads) and first committing any
    /// pending region `op` touches.
    pub(crate) fn execute(
        &mut self,
        mem: &mut Memories,
        op: &Op,
        ctx: &mut ExecContext,
    ) -> Result<ExecOutcome, ExecError> {
        if let Op::Matmul {
            dst,
            stationary,
            moving,
            accumulate,
        } = op
        {
            if rayon::current_num_threads() > 1 {
                if let Some(poisoned) =
                    self.matmul(mem, dst, stationary, moving, *accumulate, ctx)?
                {
                    return Ok(ExecOutcome {
                        poisoned_read: poisoned,
                    });
                }
            }
        }
        self.commit_touched(mem, op.reads().into_iter().chain(op.writes()), None)?;
        execute(mem, op, ctx)
    }

    /// Writes every pending region's result to PSUM.
    pub(crate) fn flush(&mut self, mem: &mut Memories) -> Result<(), ExecError> {
        while let Some(p) = self.pending.pop() {
            self.commit(mem, p)?;
        }
        Ok(())
    }

    /// Commits the pending regions (other than `keep`) that any of `aps` touches.
    fn commit_touched<'a>(
        &mut self,
        mem: &mut Memories,
        aps: impl Iterator<Item = &'a Ap>,
        keep: Option<u64>,
    ) -> Result<(), ExecError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        for ap in aps.filter(|ap| !matches!(ap.mem, Memory::Hbm(_))) {
            let mut i = 0;
            while i < self.pending.len() {
                let p = &self.pending[i];
                if Some(p.region) != keep && overlaps(ap, &p.dst) {
                    let p = self.pending.remove(i);
                    self.commit(mem, p)?;
                } else {
                    i += 1;
                }
            }
        }
        Ok(())
    }

    /// Fetches `p`'s result from the worker and writes it to its destination.
    fn commit(&mut self, mem: &mut Memories, p: Pending) -> Result<(), ExecError> {
        let lost = || ExecError::new("the deferred matmul worker stopped");
        let (tx, _) = self.worker.as_ref().ok_or_else(lost)?;
        let (reply, result) = mpsc::channel();
        tx.send(Msg::Take(p.region, reply)).map_err(|_| lost())?;
        let c = result.recv().map_err(|_| lost())??;
        let Some(mut cv) = mem.rows_f32_mut(&p.dst)? else {
            return Err(ExecError::new(format!(
                "deferred matmul dst {} is no longer viewable",
                p.dst
            )));
        };
        let (m, n) = cv.dim();
        let shape_err = |e: ndarray::ShapeError| ExecError::new(format!("matmul buffers: {e}"));
        cv.assign(&ArrayView2::from_shape((m, n), c.as_slice()).map_err(shape_err)?);
        Ok(())
    }

    /// The deferred form of `matmul::matmul`: `None` when the matmul does not qualify
    /// (int8, or a destination that is not one FP32 run per partition), and nothing was
    /// done.
    fn matmul(
        &mut self,
        mem: &mut Memories,
        dst: &Ap,
        stationary: &Ap,
        moving: &Ap,
        accumulate: bool,
        ctx: &mut ExecContext,
    ) -> Result<Option<bool>, ExecError> {
        let (k, m, n, int8) = operands(dst, stationary, moving)?;
        if int8 || dst.mem != Memory::Psum || dst.dtype != Dtype::F32 {
            return Ok(None);
        }
        // Continue a chain: accumulating into exactly the last pending destination.
        let chain = self
            .pending
            .last()
            .filter(|p| accumulate && p.clean && p.dst == *dst)
            .map(|p| p.region);
        self.commit_touched(mem, [stationary, moving, dst].into_iter(), chain)?;
        // The synchronous path's errors, in its order.
        mem.check(stationary)?;
        mem.check(moving)?;
        if chain.is_none() && mem.rows_f32_mut(dst)?.is_none() {
            return Ok(None);
        }
        let width = block_width(k, m, n);
        let mut s = ctx.take();
        let mut poisoned = mem.read_f32(stationary, &mut s)?;
        let mut mv = ctx.take();
        poisoned |= mem.read_f32(moving, &mut mv)?;
        let (region, init) = match chain {
            Some(region) => (region, Init::Continue),
            None => {
                let region = self.next_region;
                self.next_region += 1;
                let init = if accumulate {
                    let mut c = Vec::new();
                    poisoned |= mem.read_f32(dst, &mut c)?;
                    Init::Given(c)
                } else {
                    Init::Fresh
                };
                self.pending.push(Pending {
                    region,
                    dst: dst.clone(),
                    clean: true,
                });
                (region, init)
            }
        };
        if let Some(p) = self.pending.last_mut() {
            p.clean &= !poisoned;
        }
        let job = Job {
            region,
            init,
            stationary: s,
            moving: mv,
            kmn: (k, m, n),
            width,
            exact_products: stationary.dtype != Dtype::F32 && moving.dtype != Dtype::F32,
        };
        let (tx, _) = self.worker.get_or_insert_with(|| {
            let (tx, rx) = mpsc::channel();
            (tx, std::thread::spawn(move || work(rx)))
        });
        tx.send(Msg::Run(job))
            .map_err(|_| ExecError::new("the deferred matmul worker stopped"))?;
        Ok(Some(poisoned))
    }
}

impl Drop for Deferred {
    fn drop(&mut self) {
        if let Some((tx, handle)) = self.worker.take() {
            drop(tx);
            let _ = handle.join();
        }
    }
}
