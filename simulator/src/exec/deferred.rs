//! Deferred matmuls: TensorE's GEMMs run on a worker thread while the simulator goes on
//! executing the instructions after them, so the host's two cores overlap a layer's
//! GEMMs with its copies, activations and evictions.
//!
//! A float matmul whose destination is one contiguous FP32 run per partition (what
//! [`Memories::rows_f32_mut`] views) is executed at its start as before up to the GEMM:
//! its operands are checked and their raw bytes copied (with their poison report), and
//! an accumulating matmul reads its destination. Decoding the operands and the GEMM,
//! on those private copies, are sent to the worker, and the destination region becomes
//! *pending*. Before any later
//! instruction touches a pending region (reads or writes bytes of the same partitions
//! and row span), the region is *committed*: the worker's result is written to PSUM.
//! The run ends by committing everything. So every instruction sees exactly the bytes
//! it would have seen with the GEMM done at the matmul's start, and the outputs are
//! bit-identical to the synchronous execution (the GEMM's bits never depend on where or
//! when it runs; `matmul.rs` gives the rule).
//!
//! Sharing the work: a job's destination is computed by column blocks of 128 (each
//! block its own buffer), claimed one at a time by the worker and, while it waits for a
//! commit, by the simulator's thread itself; so on two cores both compute GEMMs exactly
//! when the simulator has nothing else to do, and no third thread competes with them
//! (on a pool of more threads, each block is split further across the pool). A block
//! decodes its own columns of the moving tile (the worker decodes the stationary once per
//! job). The worker publishes each job's blocks as it finishes, so a commit waits for the
//! jobs up to its region's last one, not for those queued after it; spent buffers go back
//! to the simulator's thread for reuse. A thread that runs out of work polls for a while
//! (`SPIN`) before it sleeps, and while the worker runs, instructions do not split their
//! own work across the pool (`ExecContext::may_split`): on two cores it would only
//! compete with the worker.
//!
//! Batches: continuations of a chain that are already queued when the worker starts its
//! first job join it (up to `MAX_BATCH`), and each block then runs through all of them in
//! order, instead of both threads meeting at the end of every job (a 256-column
//! continuation is two blocks of about 40 us, and the meeting cost a third of that).
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
//! Loads put off: a DMA into SBUF from an HBM tensor that no instruction of the program
//! writes, bound by [`Memories::bind_poison_free_tensor`] (the runtime checks each weight
//! once per model for the poison pattern) and read in its own dtype, is checked at issue
//! (the same errors as the copy, in the same order) and reports no poisoned read (its
//! source has none), but its bytes are copied only when a later instruction touches its
//! destination (reads or writes an overlapping row span of the same partitions; a load
//! into the same bytes lands the earlier one first). A matmul operand inside a put-off
//! load's destination is read from the load's source instead (the bytes the load would
//! put there), and the load stays put off: a layer's weights go from their bound bytes
//! straight into the GEMM jobs, never through SBUF. Loads still put off when a run ends
//! stay so (only a later run's instructions can see SBUF; they copy what they touch),
//! and all land before any tensor is bound again (`Simulator::write_tensor` and the
//! `bind_*` calls), since a load reads its source when it lands. Every instruction sees
//! the bytes it would have seen.
//!
//! Deferral is used only by [`crate::Simulator`] runs on a pool of two or more threads;
//! [`crate::exec::execute`] itself stays synchronous.

use super::matmul::{block_width_on, gemm, operands};
use super::{ExecContext, ExecError, ExecOutcome, execute};
use crate::memory::{Memories, on_chip_overlap};
use ndarray::{ArrayView2, ArrayViewMut2, s};
use neuron_isa::{Ap, Dtype, Memory, Op, Program};
use std::collections::HashMap;
use std::ops::Range;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError, mpsc};

/// Columns per block of a deferred GEMM's destination (the last block is narrower): the
/// unit of work the worker and a waiting simulator thread share.
const BLOCK_COLS: usize = 128;

/// The column ranges of the blocks of an `n`-column destination.
fn blocks_of(n: usize) -> Vec<Range<usize>> {
    (0..n.div_ceil(BLOCK_COLS).max(1))
        .map(|b| b * BLOCK_COLS..((b + 1) * BLOCK_COLS).min(n))
        .collect()
}

/// A region's value: one dense row-major `[M, columns]` buffer per column block.
type Blocks = Vec<Vec<f32>>;

/// Where a GEMM's destination buffer starts.
enum Init {
    /// A fresh accumulation (`dst = acc`) into these buffers (one per block, any
    /// length), whose contents do not matter (a GEMM with `beta = 0` never reads its
    /// destination).
    Fresh(Blocks),
    /// The destination's values (dense `[M, N]`), read at the matmul's start.
    Given(Vec<f32>),
    /// The worker's buffers of the same region, left by the previous matmul of a chain.
    Continue,
}

/// One GEMM for the worker, on private copies of its operands.
struct Job {
    /// The job's rank in the order jobs are sent (from 1).
    seq: u64,
    region: u64,
    init: Init,
    /// The stationary and moving operands' raw bytes (dense, as `Memories::read_raw`
    /// reads them) and dtypes: the worker decodes them, off the simulator's thread.
    operands: [(Vec<u8>, Dtype); 2],
    kmn: (usize, usize, usize),
    /// The threads of the simulator's rayon pool (whose count the worker's thread may
    /// not see): above two, each block's GEMM is itself split across the pool.
    threads: usize,
    exact_products: bool,
}

/// What the worker has finished, shared with the simulator's thread.
#[derive(Default)]
struct Done {
    /// The `seq` of the last finished job (jobs finish in the order they were sent).
    seq: u64,
    /// Each region's blocks after its last finished job (or the error that left it
    /// unusable).
    results: HashMap<u64, Result<Blocks, ExecError>>,
    /// The job being run, whose blocks a waiting commit may compute.
    current: Option<Arc<Running>>,
    /// The worker has stopped (its loop returned or unwound): nothing more will finish.
    stopped: bool,
    /// Raw operand buffers of finished jobs, for the simulator's thread to reuse (fresh
    /// buffers of this size would be mapped and faulted in on every matmul).
    spent: Vec<Vec<u8>>,
}

/// [`Done`] behind a lock, with the condition the simulator's thread waits on (a job
/// started or finished).
#[derive(Default)]
struct Shared {
    done: Mutex<Done>,
    changed: Condvar,
}

/// Locks `m`. A panic while holding one of these locks cannot leave its data
/// inconsistent (each update is a few assignments), so a poisoned lock is still usable.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Done> {
        lock(&self.done)
    }
}

/// Marks the worker stopped when its loop ends, even by unwinding, so that a waiting
/// commit returns an error instead of waiting forever.
struct StopGuard<'a>(&'a Shared);

impl Drop for StopGuard<'_> {
    fn drop(&mut self) {
        self.0.lock().stopped = true;
        self.0.changed.notify_all();
    }
}

/// Spent buffers kept for reuse at most (a run has a few jobs in flight at a time).
const MAX_SPENT: usize = 32;

/// Jobs of one accumulation chain run as one batch at most (see [`work`]).
const MAX_BATCH: usize = 8;

/// The worker's loop: runs jobs in order, computing their blocks (helped by a waiting
/// commit), and publishes each one's blocks as it finishes, so a commit waits for the
/// jobs sent up to its region's last one, not for the jobs queued after it.
///
/// Jobs already queued that continue the same chain (same region, same shape) join the
/// job being started, up to [`MAX_BATCH`]: each column block then runs through all of
/// them in order (the same operations on every element as job by job) without waiting
/// at every job for the other thread's blocks.
fn work(rx: mpsc::Receiver<Job>, shared: &Shared) {
    let _stop = StopGuard(shared);
    // Decoded stationary buffers and blocks' moving scratch, reused from job to job.
    let mut decoded: Vec<Vec<f32>> = Vec::new();
    let mut scratch: Vec<Vec<f32>> = Vec::new();
    // A job received while gathering a batch that does not belong to it.
    let mut held: Option<Job> = None;
    while let Some(first) = held.take().or_else(|| next_job(&rx)) {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(j) if continues(&batch[0], &j) => batch.push(j),
                Ok(j) => {
                    held = Some(j);
                    break;
                }
                Err(_) => break,
            }
        }
        let region = batch[0].region;
        let seq = batch.last().map_or(0, |j| j.seq);
        let (kmn, threads, exact_products) =
            (batch[0].kmn, batch[0].threads, batch[0].exact_products);
        let mut spent = Vec::with_capacity(2 * batch.len());
        let mut init = None;
        let mut parts = Vec::with_capacity(batch.len());
        let mut decode_error = None;
        for job in batch {
            let [(s_raw, s_dtype), (v_raw, v_dtype)] = job.operands;
            init.get_or_insert(job.init);
            // The stationary is decoded here, once; each block decodes its own columns
            // of the moving tile (`Running::compute`), so a waiting commit shares that.
            let mut st = decoded.pop().unwrap_or_default();
            st.resize(s_raw.len() / (s_dtype.size() as usize).max(1), 0.0);
            if let Err(e) = crate::numerics::decode_slice(s_dtype, &s_raw, &mut st) {
                decode_error.get_or_insert(ExecError::new(format!("deferred matmul operand: {e}")));
            }
            spent.push(s_raw);
            parts.push(Part {
                stationary: st,
                moving: v_raw,
                dtype: v_dtype,
            });
        }
        let init = init.unwrap_or(Init::Continue);
        let previous = match init {
            Init::Continue => shared.lock().results.remove(&region),
            _ => None,
        };
        let started = match decode_error {
            Some(e) => Err(e),
            None => Running::start(
                init,
                kmn,
                threads,
                exact_products,
                parts,
                std::mem::take(&mut scratch),
                previous,
            ),
        };
        let result = match started {
            Ok(running) => {
                let running = Arc::new(running);
                shared.lock().current = Some(Arc::clone(&running));
                shared.changed.notify_all();
                while running.help() {}
                let result = running.finish();
                shared.lock().current = None;
                // The simulator's thread may still hold a clone: then the buffers are
                // simply dropped.
                if let Ok(r) = Arc::try_unwrap(running) {
                    for part in r.parts {
                        decoded.push(part.stationary);
                        spent.push(part.moving);
                    }
                    // As many as a batch decodes, so the next batch allocates none.
                    decoded.truncate(MAX_BATCH);
                    scratch = r
                        .scratch
                        .into_inner()
                        .unwrap_or_else(PoisonError::into_inner);
                }
                result
            }
            Err(e) => Err(e),
        };
        let mut done = shared.lock();
        done.results.insert(region, result);
        done.seq = seq;
        let room = MAX_SPENT.saturating_sub(done.spent.len());
        done.spent.extend(spent.into_iter().take(room));
        drop(done);
        shared.changed.notify_all();
    }
}

/// Whether `next` continues `first`'s chain and can join its batch: it accumulates into
/// the worker's buffers of the same region, with the same shape and arithmetic.
fn continues(first: &Job, next: &Job) -> bool {
    matches!(next.init, Init::Continue)
        && next.region == first.region
        && next.kmn == first.kmn
        && next.exact_products == first.exact_products
}

/// How long a thread that runs out of work polls for more before it sleeps (spin then
/// park): a GEMM block takes tens of microseconds, and waking a sleeping thread through
/// the kernel costs a context switch on each side, several per matmul otherwise.
const SPIN: std::time::Duration = std::time::Duration::from_micros(50);

/// How long the worker polls for its next job before it sleeps: longer than [`SPIN`],
/// since the simulator's thread goes on through non-GEMM instructions (a softmax, a layer
/// norm: hundreds of microseconds) before the next matmul, and a sleeping worker starts
/// that matmul only after the kernel wakes it. The core it polls on has nothing else to
/// run (the simulator's thread has the other).
const IDLE_SPIN: std::time::Duration = std::time::Duration::from_micros(1000);

/// Polls `ready` until it returns something or [`SPIN`] has passed.
fn spin_for<T>(ready: impl FnMut() -> Option<T>) -> Option<T> {
    spin_for_at_most(SPIN, ready)
}

/// Polls `ready` until it returns something or `limit` has passed.
fn spin_for_at_most<T>(
    limit: std::time::Duration,
    mut ready: impl FnMut() -> Option<T>,
) -> Option<T> {
    let start = std::time::Instant::now();
    loop {
        if let Some(v) = ready() {
            return Some(v);
        }
        if start.elapsed() >= limit {
            return None;
        }
        for _ in 0..32 {
            std::hint::spin_loop();
        }
    }
}

/// The worker's next job: polled for a while (the simulator's thread usually sends the
/// next matmul within microseconds), then waited for; `None` once the sender is gone.
fn next_job(rx: &mpsc::Receiver<Job>) -> Option<Job> {
    let mut gone = false;
    let polled = spin_for_at_most(IDLE_SPIN, || match rx.try_recv() {
        Ok(job) => Some(Some(job)),
        Err(mpsc::TryRecvError::Empty) => None,
        Err(mpsc::TryRecvError::Disconnected) => {
            gone = true;
            Some(None)
        }
    });
    match polled {
        Some(job) => job,
        None if gone => None,
        None => rx.recv().ok(),
    }
}

/// A job being run: its column blocks are claimed one at a time by the worker and by a
/// commit waiting for it. Each block's GEMM is the module's rule on those columns
/// (`matmul.rs`), so the bits do not depend on who computes which block.
struct Running {
    kmn: (usize, usize, usize),
    cols: Vec<Range<usize>>,
    threads: usize,
    accumulate: bool,
    exact_products: bool,
    /// The batch's jobs, in order (one unless a chain's continuations were queued).
    parts: Vec<Part>,
    /// Decode buffers of the threads computing blocks (one each at a time).
    scratch: Mutex<Vec<Vec<f32>>>,
    state: Mutex<RunState>,
    all_done: Condvar,
}

/// One job of a batch: its decoded stationary (`[K, M]`) and its moving tile as the
/// simulator's thread read it (dense raw `[K, N]` bytes), decoded block by block by
/// whoever computes the block.
struct Part {
    stationary: Vec<f32>,
    moving: Vec<u8>,
    dtype: Dtype,
}

impl Part {
    /// Columns `cols` of the moving `[K, N]` tile decoded into `out` (dense
    /// `[K, cols.len()]`).
    fn decode_moving(
        &self,
        (k, n): (usize, usize),
        cols: &Range<usize>,
        out: &mut Vec<f32>,
    ) -> Result<(), ExecError> {
        let esize = self.dtype.size() as usize;
        let w = cols.len();
        out.resize(k * w, 0.0);
        for (ki, row) in out.chunks_exact_mut(w.max(1)).enumerate() {
            let at = (ki * n + cols.start) * esize;
            let raw = self
                .moving
                .get(at..at + w * esize)
                .ok_or_else(|| ExecError::new("deferred matmul: moving operand too short"))?;
            crate::numerics::decode_slice(self.dtype, raw, row)
                .map_err(|e| ExecError::new(format!("deferred matmul operand: {e}")))?;
        }
        Ok(())
    }
}

struct RunState {
    /// The next block to claim.
    next: usize,
    /// Blocks computed.
    finished: usize,
    /// The destination blocks (`None` while a thread computes one).
    blocks: Vec<Option<Vec<f32>>>,
    error: Option<ExecError>,
}

/// A claimed block: on drop, its buffer goes back and it counts as finished.
struct Claim<'a> {
    run: &'a Running,
    /// The block's index and buffer, once computed.
    block: Option<(usize, Option<Vec<f32>>)>,
    result: Result<(), ExecError>,
}

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        let mut st = lock(&self.run.state);
        if let Some((b, c)) = self.block.take() {
            st.blocks[b] = c;
        }
        if let Err(e) = std::mem::replace(&mut self.result, Ok(())) {
            st.error.get_or_insert(e);
        }
        st.finished += 1;
        if st.finished == self.run.cols.len() {
            self.run.all_done.notify_all();
        }
    }
}

impl Running {
    /// A job on the decoded operands, its destination blocks set up from `init` (or the
    /// error that left them unusable).
    fn start(
        init: Init,
        kmn: (usize, usize, usize),
        threads: usize,
        exact_products: bool,
        parts: Vec<Part>,
        scratch: Vec<Vec<f32>>,
        previous: Option<Result<Blocks, ExecError>>,
    ) -> Result<Running, ExecError> {
        let (k, m, n) = kmn;
        if parts.is_empty()
            || parts.iter().any(|p| {
                p.stationary.len() != k * m || p.moving.len() != k * n * p.dtype.size() as usize
            })
        {
            return Err(ExecError::new("deferred matmul: operand size mismatch"));
        }
        let cols = blocks_of(n);
        let sized = |mut c: Vec<f32>, w: usize| {
            // No zero fill needed: a fresh GEMM overwrites every element.
            c.truncate(m * w);
            c.resize(m * w, 0.0);
            c
        };
        let (blocks, accumulate): (Blocks, bool) = match init {
            Init::Fresh(bufs) => (
                bufs.into_iter()
                    .chain(std::iter::repeat_with(Vec::new))
                    .zip(&cols)
                    .map(|(c, r)| sized(c, r.len()))
                    .collect(),
                false,
            ),
            Init::Given(c) if c.len() == m * n => (
                cols.iter()
                    .map(|r| {
                        let mut b = Vec::with_capacity(m * r.len());
                        for row in c.chunks_exact(n.max(1)) {
                            b.extend_from_slice(&row[r.clone()]);
                        }
                        b
                    })
                    .collect(),
                true,
            ),
            Init::Given(_) => {
                return Err(ExecError::new("deferred matmul: destination size mismatch"));
            }
            Init::Continue => match previous {
                Some(Ok(b)) if b.len() == cols.len() => (b, true),
                Some(Err(e)) => return Err(e),
                _ => return Err(ExecError::new("deferred matmul chain lost its buffer")),
            },
        };
        Ok(Running {
            kmn,
            threads,
            accumulate,
            exact_products,
            parts,
            scratch: Mutex::new(scratch),
            state: Mutex::new(RunState {
                next: 0,
                finished: 0,
                blocks: blocks.into_iter().map(Some).collect(),
                error: None,
            }),
            all_done: Condvar::new(),
            cols,
        })
    }

    /// Whether a block is left to claim.
    fn has_work(&self) -> bool {
        lock(&self.state).next < self.cols.len()
    }

    /// Claims and computes one block; `false` when none was left to claim.
    fn help(&self) -> bool {
        let (b, mut c) = {
            let mut st = lock(&self.state);
            if st.next >= self.cols.len() {
                return false;
            }
            let b = st.next;
            st.next += 1;
            (b, st.blocks[b].take())
        };
        // Counts the block as finished even if the GEMM unwinds, so the worker never waits
        // for it forever.
        let mut claim = Claim {
            run: self,
            block: None,
            result: Err(ExecError::new("a deferred matmul block panicked")),
        };
        claim.result = match c.as_mut() {
            Some(c) => self.compute(b, c),
            None => Err(ExecError::new("deferred matmul block missing")),
        };
        claim.block = Some((b, c));
        true
    }

    /// Block `b`'s GEMMs into `c` (`[M, columns]`): the batch's jobs in order, each on
    /// its columns of the moving tile decoded here.
    fn compute(&self, b: usize, c: &mut [f32]) -> Result<(), ExecError> {
        let (k, m, n) = self.kmn;
        let r = self.cols[b].clone();
        let w = r.len();
        let shape_err = |e: ndarray::ShapeError| ExecError::new(format!("matmul buffers: {e}"));
        // On two threads the worker and the simulator's thread are the two; beyond that
        // the rest of the pool splits each block further.
        let width = if self.threads > 2 {
            block_width_on(self.threads, k, m, w)
        } else {
            w
        };
        let mut v = lock(&self.scratch).pop().unwrap_or_default();
        let mut result = Ok(());
        for (i, part) in self.parts.iter().enumerate() {
            result = part.decode_moving((k, n), &r, &mut v).and_then(|()| {
                let sv = ArrayView2::from_shape((k, m), part.stationary.as_slice())
                    .map_err(shape_err)?;
                let vv = ArrayView2::from_shape((k, w), v.as_slice()).map_err(shape_err)?;
                let vblocks = vv.axis_chunks_iter(ndarray::Axis(1), width).collect();
                let cv = ArrayViewMut2::from_shape((m, w), &mut *c).map_err(shape_err)?;
                // The destination's poison was checked when it was read; the batch's
                // later jobs continue from the earlier ones' sums.
                gemm(
                    &sv,
                    vblocks,
                    cv,
                    width,
                    self.accumulate || i > 0,
                    self.exact_products,
                    false,
                );
                Ok(())
            });
            if result.is_err() {
                break;
            }
        }
        lock(&self.scratch).push(v);
        result
    }

    /// Waits until every block is computed; returns them.
    fn finish(&self) -> Result<Blocks, ExecError> {
        // A block the simulator's thread claimed is usually done within microseconds of
        // the worker's last: polled first (see `SPIN`), so the worker does not sleep and
        // wake through the kernel before the next job on most jobs.
        let _ = spin_for(|| (lock(&self.state).finished >= self.cols.len()).then_some(()));
        let mut st = lock(&self.state);
        while st.finished < self.cols.len() {
            st = self
                .all_done
                .wait(st)
                .unwrap_or_else(PoisonError::into_inner);
        }
        if let Some(e) = st.error.take() {
            return Err(e);
        }
        st.blocks
            .iter_mut()
            .map(|b| {
                b.take()
                    .ok_or_else(|| ExecError::new("deferred matmul block missing"))
            })
            .collect()
    }
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
    /// Buffers to reuse for the next jobs' destinations.
    free: Vec<Vec<f32>>,
    /// Buffers to reuse for the next jobs' raw operands.
    free_raw: Vec<Vec<u8>>,
    /// Put-off loads, in issue order (see "Loads put off" above).
    lazy: Vec<LazyLoad>,
    /// Per HBM tensor of the program: its dtype, if no instruction writes it (`None`
    /// otherwise).
    read_only: Vec<Option<Dtype>>,
}

/// A DMA from a read-only, poison-free HBM tensor into SBUF, not yet copied.
#[derive(Debug)]
struct LazyLoad {
    dst: Ap,
    src: Ap,
}

/// The worker thread, its job queue and what it has finished.
struct Worker {
    jobs: mpsc::Sender<Job>,
    shared: Arc<Shared>,
    handle: std::thread::JoinHandle<()>,
}

impl std::fmt::Debug for Worker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker").finish_non_exhaustive()
    }
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Job {} (region {})", self.seq, self.region)
    }
}

impl Deferred {
    /// The executor of `program`'s runs: it notes which HBM tensors no instruction writes
    /// (the loads from them that may be put off).
    pub(crate) fn for_program(program: &Program) -> Deferred {
        let mut read_only: Vec<Option<Dtype>> =
            program.tensors.iter().map(|t| Some(t.dtype)).collect();
        for stream in &program.streams {
            for instr in &stream.instrs {
                for ap in instr.op.writes() {
                    if let Memory::Hbm(t) = ap.mem {
                        if let Some(r) = read_only.get_mut(t.0 as usize) {
                            *r = None;
                        }
                    }
                }
            }
        }
        let mut d = Deferred::default();
        d.read_only = read_only;
        d
    }

    /// Puts off `dma dst, src` if it loads SBUF from a read-only HBM tensor bound as
    /// poison-free, in the tensor's dtype: its errors are checked now (the same checks, in
    /// the same order, as the copy's), its poison report is known (none), and the copy
    /// itself waits until an instruction touches `dst` (or a commit has nothing else to
    /// do, or the run ends). `None` when the DMA does not qualify.
    fn put_off(
        &mut self,
        mem: &mut Memories,
        dst: &Ap,
        src: &Ap,
    ) -> Result<Option<ExecOutcome>, ExecError> {
        let Memory::Hbm(t) = src.mem else {
            return Ok(None);
        };
        let dtype = self.read_only.get(t.0 as usize).copied().flatten();
        if dst.mem != Memory::Sbuf
            || dtype != Some(src.dtype)
            || dst.dtype != src.dtype
            || !mem.bound_poison_free(t)
        {
            return Ok(None);
        }
        super::same_shape("dst", dst, "src", src)?;
        mem.check_access(dst)?;
        mem.check_access(src)?;
        // An earlier load into the same bytes lands first.
        self.materialize_touched(mem, std::iter::once(dst))?;
        self.commit_touched(mem, std::iter::once(dst), None)?;
        self.lazy.push(LazyLoad {
            dst: dst.clone(),
            src: src.clone(),
        });
        Ok(Some(ExecOutcome {
            poisoned_read: false,
        }))
    }

    /// Copies the put-off loads whose destination any of `aps` touches, in issue order.
    fn materialize_touched<'a>(
        &mut self,
        mem: &mut Memories,
        aps: impl Iterator<Item = &'a Ap>,
    ) -> Result<(), ExecError> {
        if self.lazy.is_empty() {
            return Ok(());
        }
        let aps: Vec<&Ap> = aps.filter(|ap| ap.mem == Memory::Sbuf).collect();
        let mut i = 0;
        while i < self.lazy.len() {
            if aps.iter().any(|ap| on_chip_overlap(ap, &self.lazy[i].dst)) {
                let l = self.lazy.remove(i);
                materialize(mem, &l)?;
            } else {
                i += 1;
            }
        }
        Ok(())
    }

    /// Executes `op` like [`execute`], deferring the GEMM of an eligible matmul to the
    /// worker and putting off an eligible load (when the rayon pool has two or more
    /// threads), and first committing any pending region and copying any put-off load
    /// `op` touches.
    pub(crate) fn execute(
        &mut self,
        mem: &mut Memories,
        op: &Op,
        ctx: &mut ExecContext,
    ) -> Result<ExecOutcome, ExecError> {
        if let Op::Dma { dst, src } = op {
            if rayon::current_num_threads() > 1 {
                if let Some(outcome) = self.put_off(mem, dst, src)? {
                    return Ok(outcome);
                }
            }
        }
        if let Op::Matmul {
            dst,
            stationary,
            moving,
            accumulate,
        } = op
        {
            if rayon::current_num_threads() > 1 {
                // An operand inside a put-off load is read from the load's source (the
                // bytes the load would put there), and the load stays put off.
                let sources = (self.lazy_source(stationary), self.lazy_source(moving));
                let in_sbuf = [
                    sources.0.is_none().then_some(stationary),
                    sources.1.is_none().then_some(moving),
                ];
                self.materialize_touched(
                    mem,
                    std::iter::once(dst).chain(in_sbuf.into_iter().flatten()),
                )?;
                if let Some(poisoned) =
                    self.matmul(mem, dst, (stationary, moving), *accumulate, ctx, &sources)?
                {
                    return Ok(ExecOutcome {
                        poisoned_read: poisoned,
                    });
                }
            }
        }
        let touched: Vec<&Ap> = op.reads().into_iter().chain(op.writes()).collect();
        self.materialize_touched(mem, touched.iter().copied())?;
        self.commit_touched(mem, touched.iter().copied(), None)?;
        // Once the worker runs, its GEMMs keep a core of the pool busy.
        ctx.worker_busy = self.worker.is_some();
        execute(mem, op, ctx)
    }

    /// The HBM pattern holding the bytes `ap` reads, if `ap` lies inside a put-off
    /// load's destination: `ap` and the destination one contiguous run per partition in
    /// the same dtype, `ap` a whole number of elements into it, and the elements it reads
    /// within one contiguous run of the load's source (whose dims may be any, the
    /// innermost of unit stride).
    fn lazy_source(&self, ap: &Ap) -> Option<Ap> {
        let run = |x: &Ap| match x.dims.as_slice() {
            [d] if d.stride == 1 => Some(i128::from(d.size)),
            _ => None,
        };
        let n = run(ap)?;
        let esize = i128::from(ap.dtype.size());
        self.lazy.iter().find_map(|l| {
            let (d, s) = (&l.dst, &l.src);
            let nd = run(d)?;
            let dp = i128::from(ap.start_partition) - i128::from(d.start_partition);
            let doff = i128::from(ap.offset) - i128::from(d.offset);
            let inside = ap.mem == d.mem
                && ap.dtype == d.dtype
                && dp >= 0
                && dp + i128::from(ap.partitions) <= i128::from(d.partitions)
                && doff >= 0
                && doff % esize == 0
                && doff + n * esize <= nd * esize;
            if !inside {
                return None;
            }
            // The first element's position in the source's dims (row-major), and the
            // elements left in its innermost run.
            let inner = s.dims.last().filter(|d| d.stride == 1)?;
            let mut rest = doff / esize;
            let mut elems: i128 = 0;
            for dim in s.dims.iter().rev() {
                let size = i128::from(dim.size).max(1);
                elems += (rest % size) * i128::from(dim.stride);
                rest /= size;
            }
            if (doff / esize) % i128::from(inner.size).max(1) + n > i128::from(inner.size) {
                return None;
            }
            let offset =
                i128::from(s.offset) + dp * i128::from(s.partition_stride) * esize + elems * esize;
            Some(Ap {
                offset: u64::try_from(offset).ok()?,
                partitions: ap.partitions,
                dims: ap.dims.clone(),
                ..s.clone()
            })
        })
    }

    /// Copies every put-off load, in issue order: before a tensor is bound again (a
    /// load reads its source when it lands).
    pub(crate) fn land_loads(&mut self, mem: &mut Memories) -> Result<(), ExecError> {
        for l in std::mem::take(&mut self.lazy) {
            materialize(mem, &l)?;
        }
        Ok(())
    }

    /// Writes every pending region's result to PSUM. Put-off loads stay put off: SBUF is
    /// seen only by the instructions of a later run, which copy them as they touch them
    /// (and [`Deferred::land_loads`] copies them before any tensor is bound again).
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
                if Some(p.region) != keep && on_chip_overlap(ap, &p.dst) {
                    let p = self.pending.remove(i);
                    self.commit(mem, p)?;
                } else {
                    i += 1;
                }
            }
        }
        Ok(())
    }

    /// Fetches `p`'s result from the worker and writes it to its destination. While the
    /// worker is still on the jobs `p` needs, this thread computes blocks of the job being
    /// run instead of waiting idle.
    fn commit(&mut self, mem: &mut Memories, p: Pending) -> Result<(), ExecError> {
        let lost = || ExecError::new("the deferred matmul worker stopped");
        let shared = &self.worker.as_ref().ok_or_else(lost)?.shared;
        let mut done = shared.lock();
        // Polled before each sleep (see `SPIN`).
        let mut polled = false;
        while done.seq < p.seq && !done.stopped {
            // The job being run is at most `p`'s last one: jobs run in order.
            match done.current.clone().filter(|r| r.has_work()) {
                Some(running) => {
                    drop(done);
                    running.help();
                    // A new wait: polled again before sleeping.
                    polled = false;
                    done = shared.lock();
                }
                None if !polled => {
                    polled = true;
                    drop(done);
                    let seq = p.seq;
                    let _ = spin_for(|| {
                        let d = shared.lock();
                        (d.seq >= seq
                            || d.stopped
                            || d.current.as_ref().is_some_and(|r| r.has_work()))
                        .then_some(())
                    });
                    done = shared.lock();
                }
                None => {
                    done = shared
                        .changed
                        .wait(done)
                        .unwrap_or_else(PoisonError::into_inner)
                }
            }
        }
        if done.seq < p.seq {
            return Err(lost());
        }
        let blocks = done
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
        let cols = blocks_of(n);
        if cols.len() != blocks.len() {
            return Err(ExecError::new(
                "deferred matmul result has the wrong blocks",
            ));
        }
        for (r, c) in cols.into_iter().zip(&blocks) {
            let w = r.len();
            let block = ArrayView2::from_shape((m, w), c.as_slice()).map_err(shape_err)?;
            let mut dst = cv.slice_mut(s![.., r]);
            // Each partition's row is one contiguous run: copied as slices (ndarray's
            // `assign` went element by element).
            for (mut d, b) in dst.rows_mut().into_iter().zip(block.rows()) {
                match (d.as_slice_mut(), b.as_slice()) {
                    (Some(d), Some(b)) => d.copy_from_slice(b),
                    _ => d.assign(&b),
                }
            }
        }
        let room = MAX_SPENT.saturating_sub(self.free.len());
        self.free.extend(blocks.into_iter().take(room));
        Ok(())
    }

    /// A destination buffer for a job (contents unspecified): a committed result, else
    /// the context's.
    fn take(&mut self, ctx: &mut ExecContext) -> Vec<f32> {
        self.free.pop().unwrap_or_else(|| ctx.take())
    }

    /// A raw operand buffer for a job (contents unspecified): a finished job's.
    fn take_raw(&mut self) -> Vec<u8> {
        if self.free_raw.is_empty() {
            if let Some(w) = &self.worker {
                self.free_raw.append(&mut w.shared.lock().spent);
            }
        }
        self.free_raw.pop().unwrap_or_default()
    }

    /// The deferred form of `matmul::matmul`: `None` when the matmul does not qualify
    /// (int8, or a destination that is not one FP32 run per partition), and nothing was
    /// done.
    fn matmul(
        &mut self,
        mem: &mut Memories,
        dst: &Ap,
        (stationary, moving): (&Ap, &Ap),
        accumulate: bool,
        ctx: &mut ExecContext,
        sources: &(Option<Ap>, Option<Ap>),
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
        // The operands' bytes now (later instructions may overwrite them), with the
        // same poison report as decoding them here; the worker decodes them.
        // (An operand read from a put-off load's source, a poison-free weight, needs no
        // poison scan.)
        let read = |ap: &Ap, source: &Option<Ap>, buf: &mut Vec<u8>| match source {
            Some(src) => mem.read_raw_poison_free(src, buf).map(|()| false),
            None => mem.read_raw(ap, buf),
        };
        let mut s = self.take_raw();
        let mut poisoned = read(stationary, &sources.0, &mut s)?;
        let mut mv = self.take_raw();
        poisoned |= read(moving, &sources.1, &mut mv)?;
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
                    Init::Fresh(blocks_of(n).iter().map(|_| self.take(ctx)).collect())
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
            operands: [(s, stationary.dtype), (mv, moving.dtype)],
            kmn: (k, m, n),
            threads: rayon::current_num_threads(),
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

/// Copies a put-off load: what `dma` does for it (the raw copy; its poison report was
/// made when it was put off).
fn materialize(mem: &mut Memories, l: &LazyLoad) -> Result<(), ExecError> {
    if mem.copy_raw(&l.dst, &l.src, false)?.is_none() {
        let mut raw = Vec::new();
        mem.read_raw(&l.src, &mut raw)?;
        mem.write_raw(&l.dst, &raw)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// bf16 values (exact in f32) and their raw bytes.
    fn bf16_tile(seed: u64, len: usize) -> (Vec<f32>, Vec<u8>) {
        let mut x = vec![0f32; len];
        neuron_isa::rng::CounterRng::for_tensor(seed, "batch").fill_standard_normal(0, &mut x);
        let bits: Vec<u16> = x.iter().map(|v| crate::numerics::f32_to_bf16(*v)).collect();
        let vals = bits
            .iter()
            .map(|&b| crate::numerics::bf16_to_f32(b))
            .collect();
        (vals, bits.iter().flat_map(|b| b.to_le_bytes()).collect())
    }

    /// Continuations queued behind the first job of a chain run as one batch, a job of
    /// another region queued behind them is held for the next round, and a later
    /// continuation picks the chain up again: every block gets the bits of the module
    /// rule applied matmul by matmul (`acc` from +0 over `k` in order, then `dst + acc`).
    #[test]
    fn queued_continuations_batch_with_the_bits_of_job_by_job() {
        let (k, m, n) = (128usize, 16usize, 300usize);
        let (tx, rx) = mpsc::channel();
        // (region, stationary, moving) of jobs 1..=7: five of region 7, one of region 8,
        // one more of region 7.
        let regions = [7u64, 7, 7, 7, 7, 8, 7];
        let tiles: Vec<_> = (0..regions.len() as u64)
            .map(|j| (bf16_tile(2 * j, k * m), bf16_tile(2 * j + 1, k * n)))
            .collect();
        for (j, (&region, ((_, s_raw), (_, v_raw)))) in regions.iter().zip(&tiles).enumerate() {
            let init = if j == 0 || j == 5 {
                Init::Fresh(Vec::new())
            } else {
                Init::Continue
            };
            let job = Job {
                seq: j as u64 + 1,
                region,
                init,
                operands: [(s_raw.clone(), Dtype::Bf16), (v_raw.clone(), Dtype::Bf16)],
                kmn: (k, m, n),
                threads: 1,
                exact_products: true,
            };
            tx.send(job).unwrap();
        }
        drop(tx);
        let shared = Shared::default();
        work(rx, &shared);
        let mut done = shared.lock();
        assert_eq!(done.seq, 7);
        assert!(done.stopped);
        // The rule, job by job.
        let rule = |jobs: &[usize]| {
            let mut c = vec![0f32; m * n];
            for (i, &j) in jobs.iter().enumerate() {
                let ((s, _), (v, _)) = &tiles[j];
                for (mi, row) in c.chunks_exact_mut(n).enumerate() {
                    for (ni, o) in row.iter_mut().enumerate() {
                        let mut acc = 0f32;
                        for ki in 0..k {
                            acc += s[ki * m + mi] * v[ki * n + ni];
                        }
                        *o = if i == 0 { 0.0 } else { *o } + acc;
                    }
                }
            }
            c
        };
        for (region, jobs) in [(7u64, vec![0, 1, 2, 3, 4, 6]), (8, vec![5])] {
            let want = rule(&jobs);
            let blocks = done.results.remove(&region).unwrap().unwrap();
            let cols = blocks_of(n);
            assert_eq!(blocks.len(), cols.len());
            for (r, b) in cols.iter().zip(&blocks) {
                for mi in 0..m {
                    for (j, ni) in r.clone().enumerate() {
                        assert_eq!(
                            b[mi * r.len() + j].to_bits(),
                            want[mi * n + ni].to_bits(),
                            "region {region} [{mi}, {ni}]"
                        );
                    }
                }
            }
        }
    }
}
