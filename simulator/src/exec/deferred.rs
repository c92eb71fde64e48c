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
//! The run ends by committing everything. The worker publishes each job's result as it
//! finishes, so a commit waits for the jobs sent up to its region's last one, not for
//! the jobs queued after it; finished buffers go back to the simulator's thread for reuse. So every instruction sees exactly the bytes it
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
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError, mpsc};

/// Where a GEMM's destination buffer starts.
enum Init {
    /// A fresh accumulation (`dst = acc`) into this buffer, whose contents do not
    /// matter (a GEMM with `beta = 0` never reads its destination).
    Fresh(Vec<f32>),
    /// The destination's values, read at the matmul's start.
    Given(Vec<f32>),
    /// The worker's buffer of the same region, left by the previous matmul of a chain.
    Continue,
}

/// One GEMM for the worker, on private copies of its operands.
struct Job {
    /// The job's rank in the order jobs are sent (from 1).
    seq: u64,
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

/// What the worker has finished, shared with the simulator's thread.
#[derive(Debug, Default)]
struct Done {
    /// The `seq` of the last finished job (jobs finish in the order they were sent).
    seq: u64,
    /// Each region's buffer after its last finished job (or the error that left it
    /// unusable).
    results: HashMap<u64, Result<Vec<f32>, ExecError>>,
    /// The worker has stopped (its loop returned or unwound): nothing more will finish.
    stopped: bool,
    /// Operand buffers of finished jobs, for the simulator's thread to reuse (fresh
    /// buffers of this size would be mapped and faulted in on every matmul).
    spent: Vec<Vec<f32>>,
}

/// [`Done`] behind a lock, with the condition the simulator's thread waits on.
#[derive(Debug, Default)]
struct Shared {
    done: Mutex<Done>,
    finished: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Done> {
        // A panic while holding the lock cannot leave `Done` inconsistent (each update is
        // one insert or one assignment), so a poisoned lock is still usable.
        self.done.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Marks the worker stopped when its loop ends, even by unwinding, so that a waiting
/// commit returns an error instead of waiting forever.
struct StopGuard<'a>(&'a Shared);

impl Drop for StopGuard<'_> {
    fn drop(&mut self) {
        self.0.lock().stopped = true;
        self.0.finished.notify_all();
    }
}

/// The worker's loop: runs jobs in order and publishes each one's buffer as it finishes,
/// so a commit waits only for the jobs of its own region (and those sent before them),
/// not for jobs sent after.
fn work(rx: mpsc::Receiver<Job>, shared: &Shared) {
    let _stop = StopGuard(shared);
    for job in rx {
        let (seq, region) = (job.seq, job.region);
        let previous = match job.init {
            Init::Continue => shared.lock().results.remove(&region),
            _ => None,
        };
        let (result, spent) = run(job, previous);
        let mut done = shared.lock();
        done.results.insert(region, result);
        done.seq = seq;
        if done.spent.len() < MAX_SPENT {
            done.spent.extend(spent);
        }
        drop(done);
        shared.finished.notify_all();
    }
}

/// Spent operand buffers kept for reuse at most (a run has a few in flight at a time).
const MAX_SPENT: usize = 16;

/// Runs `job`, continuing from `previous` (the region's buffer) for [`Init::Continue`].
/// Also returns the job's operand buffers.
fn run(
    job: Job,
    previous: Option<Result<Vec<f32>, ExecError>>,
) -> (Result<Vec<f32>, ExecError>, [Vec<f32>; 2]) {
    let Job {
        kmn,
        init,
        stationary,
        moving,
        width,
        exact_products,
        ..
    } = job;
    let result = gemm_job(
        kmn,
        init,
        &stationary,
        &moving,
        width,
        exact_products,
        previous,
    );
    (result, [stationary, moving])
}

/// The GEMM of a job: `init`'s buffer `(+)= stationary^T @ moving`.
fn gemm_job(
    (k, m, n): (usize, usize, usize),
    init: Init,
    stationary: &[f32],
    moving: &[f32],
    width: usize,
    exact_products: bool,
    previous: Option<Result<Vec<f32>, ExecError>>,
) -> Result<Vec<f32>, ExecError> {
    let (mut c, accumulate) = match init {
        Init::Fresh(mut c) => {
            // No zero fill: `gemm` without accumulation overwrites every element.
            c.truncate(m * n);
            c.resize(m * n, 0.0);
            (c, false)
        }
        Init::Given(c) => (c, true),
        Init::Continue => match previous {
            Some(Ok(c)) => (c, true),
            Some(Err(e)) => return Err(e),
            None => return Err(ExecError::new("deferred matmul chain lost its buffer")),
        },
    };
    let shape_err = |e: ndarray::ShapeError| ExecError::new(format!("matmul buffers: {e}"));
    let sv = ArrayView2::from_shape((k, m), stationary).map_err(shape_err)?;
    let vblocks = moving_blocks(moving, k, n, width)?;
    let cv = ArrayViewMut2::from_shape((m, n), c.as_mut_slice()).map_err(shape_err)?;
    // The destination's poison was checked when it was read.
    gemm(&sv, vblocks, cv, width, accumulate, exact_products, false);
    Ok(c)
}

/// A destination region whose GEMM result is still on the worker.
#[derive(Debug)]
struct Pending {
    region: u64,
    /// The `seq` of the region's last job.
    seq: u64,
    dst: Ap,
    /// Nothing read by the region's chain so far was reported as poison.
    clean: bool,
}

/// The worker thread and the pending regions of one run.
#[derive(Debug, Default)]
pub(crate) struct Deferred {
    worker: Option<Worker>,
    pending: Vec<Pending>,
    next_region: u64,
    /// The `seq` of the last job sent.
    sent: u64,
    /// Buffers to reuse for the next jobs.
    free: Vec<Vec<f32>>,
}

/// The worker thread, its job queue and what it has finished.
#[derive(Debug)]
struct Worker {
    jobs: mpsc::Sender<Job>,
    shared: Arc<Shared>,
    handle: std::thread::JoinHandle<()>,
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Job {} (region {})", self.seq, self.region)
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
        let shared = &self.worker.as_ref().ok_or_else(lost)?.shared;
        let mut done = shared.lock();
        while done.seq < p.seq && !done.stopped {
            done = shared
                .finished
                .wait(done)
                .unwrap_or_else(PoisonError::into_inner);
        }
        if done.seq < p.seq {
            return Err(lost());
        }
        let c = done
            .results
            .remove(&p.region)
            .unwrap_or_else(|| Err(ExecError::new("deferred matmul result missing")))?;
        drop(done);
        let Some(mut cv) = mem.rows_f32_mut(&p.dst)? else {
            return Err(ExecError::new(format!(
                "deferred matmul dst {} is no longer viewable",
                p.dst
            )));
        };
        let (m, n) = cv.dim();
        let shape_err = |e: ndarray::ShapeError| ExecError::new(format!("matmul buffers: {e}"));
        cv.assign(&ArrayView2::from_shape((m, n), c.as_slice()).map_err(shape_err)?);
        if self.free.len() < MAX_SPENT {
            self.free.push(c);
        }
        Ok(())
    }

    /// A buffer for a job (contents unspecified): a committed result or a finished job's
    /// operand, else the context's.
    fn take(&mut self, ctx: &mut ExecContext) -> Vec<f32> {
        if self.free.is_empty() {
            if let Some(w) = &self.worker {
                self.free.append(&mut w.shared.lock().spent);
            }
        }
        self.free.pop().unwrap_or_else(|| ctx.take())
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
        let mut s = self.take(ctx);
        let mut poisoned = mem.read_f32(stationary, &mut s)?;
        let mut mv = self.take(ctx);
        poisoned |= mem.read_f32(moving, &mut mv)?;
        let (region, init) = match chain {
            Some(region) => (region, Init::Continue),
            None => {
                let region = self.next_region;
                self.next_region += 1;
                let init = if accumulate {
                    let mut c = self.take(ctx);
                    poisoned |= mem.read_f32(dst, &mut c)?;
                    Init::Given(c)
                } else {
                    Init::Fresh(self.take(ctx))
                };
                self.pending.push(Pending {
                    region,
                    seq: 0,
                    dst: dst.clone(),
                    clean: true,
                });
                (region, init)
            }
        };
        self.sent += 1;
        let seq = self.sent;
        if let Some(p) = self.pending.last_mut() {
            p.clean &= !poisoned;
            p.seq = seq;
        }
        let job = Job {
            seq,
            region,
            init,
            stationary: s,
            moving: mv,
            kmn: (k, m, n),
            width,
            exact_products: stationary.dtype != Dtype::F32 && moving.dtype != Dtype::F32,
        };
        let worker = self.worker.get_or_insert_with(|| {
            let (jobs, rx) = mpsc::channel();
            let shared = Arc::new(Shared::default());
            let theirs = Arc::clone(&shared);
            let handle = std::thread::spawn(move || work(rx, &theirs));
            Worker {
                jobs,
                shared,
                handle,
            }
        });
        worker
            .jobs
            .send(job)
            .map_err(|_| ExecError::new("the deferred matmul worker stopped"))?;
        Ok(Some(poisoned))
    }
}

impl Drop for Deferred {
    fn drop(&mut self) {
        if let Some(w) = self.worker.take() {
            drop(w.jobs);
            let _ = w.handle.join();
        }
    }
}
