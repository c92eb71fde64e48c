//! The chip's memories (SBUF, PSUM and the HBM tensors of a program) and the access paths
//! engines use: reading an access pattern into a dense FP32 buffer and writing one back
//! with rounding, or copying raw bytes for bit-exact moves.
//!
//! Layout: SBUF and PSUM are flat byte vectors, partition-major (`partition * bytes per
//! partition + offset`); each HBM tensor is its own byte vector, so an access pattern
//! can never reach a neighbouring tensor. Every byte starts as 0xFF (poison: a NaN in
//! every float type, -1 in signed integers) so reads of unwritten memory show up. An HBM
//! tensor's vector is allocated on first access (poisoned then), or from the bytes bound
//! to it, so binding weights does not poison them first.
//!
//! A dense buffer is row-major `[P x N]`: partition outermost, then the free dimensions
//! outermost first. Each access pattern is resolved once into a `View`: strides in
//! bytes, size-1 dimensions dropped and contiguous dimensions merged, and every byte it
//! can touch checked to lie inside its buffer (in 128-bit arithmetic, so absurd sizes or
//! strides give an error, never an overflow). Inner loops then work on whole contiguous
//! runs (one bounds check per run, decoded by the vectorisable slice functions of
//! [`crate::numerics`]); only strided innermost dimensions go element by element.

use crate::error::SimError;
use crate::exec::ExecError;
use crate::numerics::{self, Rounder};
use neuron_isa::verify::MAX_AP_ELEMS;
use neuron_isa::{Ap, ChipConfig, Dtype, MAX_FREE_DIMS, Memory, Program, TensorId};

/// The byte every memory starts as.
pub const POISON_BYTE: u8 = 0xff;

/// SBUF, PSUM and HBM of one simulated NeuronCore. HBM tensors bound by reference
/// ([`Memories::bind_tensor`], the artifact's weights) are borrowed for `'w`.
#[derive(Debug, Clone)]
pub struct Memories<'w> {
    partitions: usize,
    sbuf_per_partition: usize,
    psum_per_partition: usize,
    sbuf: Vec<u8>,
    psum: Vec<u8>,
    /// The chunks of SBUF and PSUM written since they were poisoned (see [`Written`]).
    written: [Written; 2],
    hbm: Vec<HbmBuf<'w>>,
    names: Vec<String>,
}

/// Bytes per chunk of a partition's row in [`Written`].
const WRITTEN_CHUNK: usize = 4096;

/// Which chunks ([`WRITTEN_CHUNK`] bytes of one partition's row) of an on-chip memory
/// any write has touched since the buffer was poisoned: when the buffer is recycled
/// ([`RECYCLED`]), only those are poisoned again (the others still are). Every path that
/// writes SBUF or PSUM marks its pattern first ([`Memories::mark_written`]).
#[derive(Debug, Clone)]
struct Written {
    /// Bytes per partition of the memory.
    per_partition: usize,
    /// Chunks per partition (the last may be short).
    chunks: usize,
    /// `partition * chunks + chunk`.
    bits: Vec<bool>,
}

impl Written {
    fn new(partitions: usize, per_partition: usize) -> Written {
        let chunks = per_partition.div_ceil(WRITTEN_CHUNK);
        Written {
            per_partition,
            chunks,
            bits: vec![false; partitions * chunks],
        }
    }

    /// Marks the chunks `ap` (on this memory) can touch.
    fn mark(&mut self, ap: &Ap) {
        if self.chunks == 0 {
            return;
        }
        let partitions = self.bits.len() / self.chunks;
        let p0 = (ap.start_partition as usize).min(partitions);
        let p1 = (p0 + ap.partitions as usize).min(partitions);
        let (c0, c1) = match ap.row_byte_span() {
            Some((lo, hi)) => {
                let lo = usize::try_from(lo.max(0))
                    .unwrap_or(0)
                    .min(self.per_partition);
                let hi = usize::try_from(hi.max(0))
                    .unwrap_or(0)
                    .min(self.per_partition);
                (lo / WRITTEN_CHUNK, hi.div_ceil(WRITTEN_CHUNK))
            }
            None => (0, self.chunks),
        };
        for p in p0..p1 {
            self.bits[p * self.chunks + c0..p * self.chunks + c1.max(c0)].fill(true);
        }
    }
}

/// One HBM tensor's bytes, allocated (poisoned) on first access: a tensor bound in full
/// by [`Memories::write_tensor`] (inputs) is copied in without being poisoned first, one
/// bound by [`Memories::bind_tensor`] (weights) is read where it lies until an
/// instruction first writes it (copy on write), and one no instruction touches (a
/// scratch tensor kept in SBUF) costs nothing. Every read still sees poison where
/// nothing was written.
#[derive(Debug, Clone)]
struct HbmBuf<'w> {
    len: usize,
    bytes: std::sync::OnceLock<Vec<u8>>,
    /// Bytes bound by reference, in place of `bytes` until the first write.
    shared: Option<&'w [u8]>,
    /// `shared` holds no poison element of the tensor's dtype
    /// ([`Memories::bind_poison_free_tensor`]).
    poison_free: bool,
}

impl HbmBuf<'_> {
    fn get(&self) -> &[u8] {
        if let Some(s) = self.shared {
            return s;
        }
        self.bytes.get_or_init(|| vec![POISON_BYTE; self.len])
    }

    fn get_mut(&mut self) -> &mut [u8] {
        if let Some(s) = self.shared.take() {
            self.bytes = std::sync::OnceLock::from(copied_vec(s));
        }
        if self.bytes.get().is_none() {
            self.bytes = std::sync::OnceLock::from(vec![POISON_BYTE; self.len]);
        }
        match self.bytes.get_mut() {
            Some(v) => v,
            None => &mut [],
        }
    }
}

/// An access pattern resolved against its buffer: up to five strided dimensions
/// (partition and four free), in bytes, with size-1 dimensions dropped and contiguous
/// neighbours merged. The last dimension is the innermost run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct View {
    /// Element size in bytes.
    esize: usize,
    /// Byte offset of the first element in the buffer.
    base: usize,
    /// Outer dimensions `(size, byte stride)`, outermost first, padded with `(1, 0)`.
    outer: [(usize, isize); 4],
    /// Elements in the innermost run.
    inner_n: usize,
    /// Byte stride of the innermost run.
    inner_stride: isize,
}

impl View {
    /// Total elements.
    fn elems(&self) -> usize {
        self.outer.iter().map(|d| d.0).product::<usize>() * self.inner_n
    }

    /// Whether each run is one contiguous byte range.
    fn runs_contiguous(&self) -> bool {
        self.inner_n == 1 || self.inner_stride == self.esize as isize
    }

    /// Calls `f(first dense element index, byte offset of the run's first element)` for
    /// every innermost run, in dense (row-major) order.
    #[inline]
    fn for_each_run(&self, mut f: impl FnMut(usize, usize)) {
        let [(n0, s0), (n1, s1), (n2, s2), (n3, s3)] = self.outer;
        let base = self.base as isize;
        let mut k = 0;
        for a in 0..n0 as isize {
            let pa = base + a * s0;
            for b in 0..n1 as isize {
                let pb = pa + b * s1;
                for c in 0..n2 as isize {
                    let pc = pb + c * s2;
                    for d in 0..n3 as isize {
                        // In range: `Memories::view` checked every reachable byte.
                        f(k, (pc + d * s3) as usize);
                        k += self.inner_n;
                    }
                }
            }
        }
    }
}

fn err(message: String) -> ExecError {
    ExecError { message }
}

/// Pairs the destination runs (`dst_starts`, `dst_run` bytes each) with the source runs
/// (`src_starts`, `src_run` bytes each) holding the same dense bytes, in dense order:
/// calls `f(dst offset, src offset, bytes)` for each piece where a run of either side
/// begins or ends (every piece is whole elements). Both sides hold the same byte count.
fn copy_pieces(
    dst_starts: &[usize],
    src_starts: &[usize],
    dst_run: usize,
    src_run: usize,
    mut f: impl FnMut(usize, usize, usize),
) {
    // Source run `i`, `at` bytes into it.
    let (mut i, mut at) = (0, 0);
    for &start in dst_starts {
        let mut done = 0;
        while done < dst_run {
            let Some(&from) = src_starts.get(i) else {
                return;
            };
            let take = (dst_run - done).min(src_run - at);
            f(start + done, from + at, take);
            done += take;
            at += take;
            if at == src_run {
                (i, at) = (i + 1, 0);
            }
        }
    }
}

/// The pieces of [`copy_pieces`] from `from` into the on-chip memory `out`
/// (`per_partition` bytes per partition), the partitions split across the rayon pool:
/// every piece lies in one partition, and each partition's pieces are copied in their
/// dense order, so the bytes are those of the sequential copy. Returns whether a source
/// element was poison.
fn copy_by_partitions(
    out: &mut [u8],
    per_partition: usize,
    from: &[u8],
    dtype: Dtype,
    (dst_starts, src_starts, dst_run, src_run): (&[usize], &[usize], usize, usize),
) -> bool {
    use rayon::prelude::*;
    let mut pieces = Vec::with_capacity(dst_starts.len());
    copy_pieces(dst_starts, src_starts, dst_run, src_run, |d, s, len| {
        pieces.push((d, s, len));
    });
    // Stable: a partition's pieces keep their order (a pattern may write a byte twice).
    pieces.sort_by_key(|&(d, _, _)| d / per_partition);
    out.par_chunks_mut(per_partition)
        .enumerate()
        .map(|(p, part)| {
            let lo = pieces.partition_point(|&(d, _, _)| d / per_partition < p);
            let hi = pieces.partition_point(|&(d, _, _)| d / per_partition <= p);
            let base = p * per_partition;
            let mut poisoned = false;
            for &(d, s, len) in &pieces[lo..hi] {
                let bytes = &from[s..s + len];
                poisoned |= numerics::is_poisoned(dtype, bytes);
                part[d - base..d - base + len].copy_from_slice(bytes);
            }
            poisoned
        })
        .reduce(|| false, |a, b| a | b)
}

/// Copies `n` elements of `E` bytes, `stride` bytes apart from `start`, into `out`.
fn gather<const E: usize>(mem: &[u8], start: usize, stride: isize, out: &mut [u8]) {
    for (j, o) in out.chunks_exact_mut(E).enumerate() {
        let s = (start as isize + j as isize * stride) as usize;
        o.copy_from_slice(&mem[s..s + E]);
    }
}

/// Copies the elements of `data` (`E` bytes each) to `stride` bytes apart from `start`.
fn scatter<const E: usize>(mem: &mut [u8], start: usize, stride: isize, data: &[u8]) {
    for (j, d) in data.chunks_exact(E).enumerate() {
        let s = (start as isize + j as isize * stride) as usize;
        mem[s..s + E].copy_from_slice(d);
    }
}

fn gather_any(esize: usize, mem: &[u8], start: usize, stride: isize, out: &mut [u8]) {
    match esize {
        1 => gather::<1>(mem, start, stride, out),
        2 => gather::<2>(mem, start, stride, out),
        4 => gather::<4>(mem, start, stride, out),
        _ => gather::<8>(mem, start, stride, out),
    }
}

fn scatter_any(esize: usize, mem: &mut [u8], start: usize, stride: isize, data: &[u8]) {
    match esize {
        1 => scatter::<1>(mem, start, stride, data),
        2 => scatter::<2>(mem, start, stride, data),
        4 => scatter::<4>(mem, start, stride, data),
        _ => scatter::<8>(mem, start, stride, data),
    }
}

/// Whether two patterns may touch a common byte of an on-chip memory: the same SBUF or
/// PSUM, overlapping partitions and overlapping row byte spans (the same in every
/// partition; conservatively true when a span is unknown). False for different
/// memories; not meaningful for two HBM patterns (their rows are not partitions).
pub(crate) fn on_chip_overlap(a: &Ap, b: &Ap) -> bool {
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

/// A poisoned (all 0xFF) byte vector, refusing sizes the allocator cannot give: the
/// on-chip buffer of a dropped [`Memories`] when one of the right size is at hand
/// ([`recycled`]), else a fresh one.
fn poisoned_vec(len: usize, per_partition: usize, what: &str) -> Result<Vec<u8>, SimError> {
    poisoned_vec_from(&RECYCLED, len, per_partition, what)
}

/// [`poisoned_vec`] recycling from `pool`: a recycled buffer of the same layout (bytes per
/// partition) with a record of what was written is poisoned again only there.
fn poisoned_vec_from(
    pool: &Recycled,
    len: usize,
    per_partition: usize,
    what: &str,
) -> Result<Vec<u8>, SimError> {
    if let Some(r) = recycled(pool, len) {
        let mut v = r.bytes;
        match r
            .written
            .filter(|w| v.len() == len && w.per_partition == per_partition)
        {
            Some(w) => refill_written(&mut v, &w),
            None => {
                v.truncate(len);
                let kept = v.len();
                v.resize(len, POISON_BYTE);
                fill_poison(&mut v[..kept]);
            }
        }
        return Ok(v);
    }
    let mut v = Vec::new();
    v.try_reserve_exact(len)
        .map_err(|e| SimError::Limit(format!("cannot allocate {len} bytes for {what}: {e}")))?;
    // Filled across the rayon pool when large, so both cores fault in and write the
    // fresh pages: zeroed pages (not yet touched), then one `fill` (a memset) per block
    // on whichever thread takes it. (Extending from a parallel iterator of single bytes
    // went element by element: several times slower than one thread's memset.)
    if len >= PARALLEL_FILL && rayon::current_num_threads() > 1 {
        // `vec![0; len]` takes zeroed pages from the allocator without writing them (the
        // reservation above has just shown that `len` bytes can be had).
        drop(v);
        let mut v = vec![0u8; len];
        fill_poison(&mut v);
        return Ok(v);
    } else {
        v.resize(len, POISON_BYTE);
    }
    Ok(v)
}

/// Poisons again the chunks of `bytes` (partition rows of `w.per_partition` bytes) that
/// `w` records as written. On the calling thread: split across the rayon pool, it woke
/// the pool's threads at the start of every run, and their idle spinning (`sched_yield`)
/// then competed with the simulator's thread and the GEMM worker for the cores (on the
/// BERT-base layer, 93 -> 23 context switches per run without the split, same wall time).
fn refill_written(bytes: &mut [u8], w: &Written) {
    if w.per_partition == 0 || w.chunks == 0 {
        return;
    }
    bytes
        .chunks_mut(w.per_partition)
        .zip(w.bits.chunks(w.chunks))
        .for_each(|(row, marks)| {
            let len = row.len();
            for (c, _) in marks.iter().enumerate().filter(|(_, m)| **m) {
                let lo = c * WRITTEN_CHUNK;
                row[lo..(lo + WRITTEN_CHUNK).min(len)].fill(POISON_BYTE);
            }
        });
}

/// Sets every byte of `bytes` to [`POISON_BYTE`], across the rayon pool when large.
fn fill_poison(bytes: &mut [u8]) {
    if bytes.len() >= PARALLEL_FILL && rayon::current_num_threads() > 1 {
        use rayon::prelude::*;
        bytes
            .par_chunks_mut(PARALLEL_FILL)
            .for_each(|c| c.fill(POISON_BYTE));
    } else {
        bytes.fill(POISON_BYTE);
    }
}

/// SBUF and PSUM buffers of dropped [`Memories`], for the next ones to reuse: a model
/// simulated again (the runtime's repeated runs, a benchmark, a sweep) then poisons
/// buffers it already has in one pass, instead of the allocator zeroing fresh ones
/// (with glibc, a freed buffer of this size returns to the heap, and a "zeroed"
/// allocation from there is one more memset) and poisoning them again: about 1.3 ms of
/// a 25 ms BERT-base layer. At most [`RECYCLED_MAX`] buffers of at least
/// [`PARALLEL_FILL`] bytes are kept, the largest ones, so a process holds at most one
/// simulator's on-chip memories after its last run.
static RECYCLED: Recycled = std::sync::Mutex::new(Vec::new());

/// A pool of byte buffers (see [`RECYCLED`]).
type Recycled = std::sync::Mutex<Vec<Recyclable>>;

/// A buffer in [`RECYCLED`], with the record of what its last owner wrote (all other
/// bytes are poison).
struct Recyclable {
    bytes: Vec<u8>,
    written: Option<Written>,
}

/// Buffers [`RECYCLED`] keeps: one SBUF and one PSUM.
const RECYCLED_MAX: usize = 2;

/// A recycled buffer for `len` bytes: the smallest that can hold them without being
/// more than twice as large (its length and contents are unspecified).
fn recycled(pool: &Recycled, len: usize) -> Option<Recyclable> {
    if len < PARALLEL_FILL {
        return None;
    }
    let mut pool = pool
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let i = pool
        .iter()
        .enumerate()
        .filter(|(_, r)| r.bytes.capacity() >= len && r.bytes.capacity() / 2 <= len)
        .min_by_key(|(_, r)| r.bytes.capacity())
        .map(|(i, _)| i)?;
    Some(pool.swap_remove(i))
}

/// Keeps `v` for a later [`recycled`] if it is among the largest [`RECYCLED_MAX`].
fn recycle(pool: &Recycled, v: Recyclable) {
    if v.bytes.capacity() < PARALLEL_FILL {
        return;
    }
    let mut pool = pool
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    pool.push(v);
    if pool.len() > RECYCLED_MAX {
        pool.sort_by_key(|r| std::cmp::Reverse(r.bytes.capacity()));
        // Dropped after the lock is released.
        let smallest = pool.split_off(RECYCLED_MAX);
        drop(pool);
        drop(smallest);
    }
}

impl Drop for Memories<'_> {
    fn drop(&mut self) {
        let empty = || Written::new(0, 0);
        let [sbuf, psum] = std::mem::replace(&mut self.written, [empty(), empty()]);
        recycle(
            &RECYCLED,
            Recyclable {
                bytes: std::mem::take(&mut self.sbuf),
                written: Some(sbuf),
            },
        );
        recycle(
            &RECYCLED,
            Recyclable {
                bytes: std::mem::take(&mut self.psum),
                written: Some(psum),
            },
        );
    }
}

/// Bytes from which a fresh buffer is filled across threads.
const PARALLEL_FILL: usize = 1 << 20;

/// A copy of `bytes`, made across the rayon pool when large (see [`poisoned_vec`]).
fn copied_vec(bytes: &[u8]) -> Vec<u8> {
    if bytes.len() >= PARALLEL_FILL && rayon::current_num_threads() > 1 {
        use rayon::prelude::*;
        // Zeroed pages, untouched until each block's copy writes them.
        let mut v = vec![0u8; bytes.len()];
        v.par_chunks_mut(PARALLEL_FILL)
            .zip(bytes.par_chunks(PARALLEL_FILL))
            .for_each(|(d, s)| d.copy_from_slice(s));
        v
    } else {
        bytes.to_vec()
    }
}

/// The bytes per partition of `mem` that `program` can touch: the end of the furthest
/// row any of its access patterns reaches (0 if none touches `mem`). Patterns whose span
/// does not fit in 64 bits count as reaching everything; the verifier refuses them anyway.
fn footprint(program: &Program, mem: Memory) -> u64 {
    let mut end: u64 = 0;
    for stream in &program.streams {
        for instr in &stream.instrs {
            let op = &instr.op;
            for ap in op.reads().into_iter().chain(op.writes()) {
                if ap.mem != mem {
                    continue;
                }
                let hi = match ap.row_byte_span() {
                    Some((_, hi)) => u64::try_from(hi).unwrap_or(0),
                    None if ap.free_elems() == 0 => 0,
                    None => u64::MAX,
                };
                end = end.max(hi);
            }
        }
    }
    end
}

impl<'w> Memories<'w> {
    /// Allocates poisoned SBUF, PSUM (the chip's full sizes) and one buffer per HBM tensor
    /// of `program`. Fails if the tensors need more than `cfg.hbm_bytes` in total (checked
    /// before allocating).
    pub fn new(cfg: &ChipConfig, program: &Program) -> Result<Memories<'w>, SimError> {
        Memories::allocate(
            cfg,
            program,
            (cfg.sbuf_bytes_per_partition, cfg.psum_bytes_per_partition),
        )
    }

    /// Like [`Memories::new`], but SBUF and PSUM hold only the bytes per partition that the
    /// program's own instructions can reach (the end of the furthest row any of its access
    /// patterns touches). Executing those instructions behaves exactly as with full-size
    /// memories (every access lies below that end and unwritten bytes are still poisoned),
    /// and a small program does not pay for poisoning the whole 24 MiB SBUF. Executing any
    /// other instruction may fail with an out-of-bounds error.
    pub fn for_program(cfg: &ChipConfig, program: &Program) -> Result<Memories<'w>, SimError> {
        Memories::allocate(
            cfg,
            program,
            (
                footprint(program, Memory::Sbuf).min(cfg.sbuf_bytes_per_partition),
                footprint(program, Memory::Psum).min(cfg.psum_bytes_per_partition),
            ),
        )
    }

    fn allocate(
        cfg: &ChipConfig,
        program: &Program,
        on_chip: (u64, u64),
    ) -> Result<Memories<'w>, SimError> {
        let mut sizes = Vec::with_capacity(program.tensors.len());
        let mut total: u64 = 0;
        for (i, t) in program.tensors.iter().enumerate() {
            let bytes = t
                .shape
                .iter()
                .try_fold(t.dtype.size(), |acc, &d| acc.checked_mul(d))
                .ok_or_else(|| SimError::Tensor {
                    tensor: TensorId(i as u32),
                    name: t.name.clone(),
                    message: format!(
                        "shape {:?} of {} overflows 64-bit byte counts",
                        t.shape, t.dtype
                    ),
                })?;
            total = total.saturating_add(bytes);
            sizes.push(bytes);
        }
        if total > cfg.hbm_bytes {
            return Err(SimError::Limit(format!(
                "hbm tensors need {total} bytes in total, the chip ({}) has {} bytes",
                cfg.name, cfg.hbm_bytes
            )));
        }
        let to_usize = |v: u64, what: &str| {
            usize::try_from(v).map_err(|_| {
                SimError::Limit(format!("{what}: {v} bytes exceed the host's address space"))
            })
        };
        let partitions = cfg.partitions as usize;
        let sbuf_pp = to_usize(on_chip.0, "sbuf")?;
        let psum_pp = to_usize(on_chip.1, "psum")?;
        let sbuf_len = sbuf_pp.checked_mul(partitions).ok_or_else(|| {
            SimError::Limit("sbuf size overflows the host's address space".into())
        })?;
        let psum_len = psum_pp.checked_mul(partitions).ok_or_else(|| {
            SimError::Limit("psum size overflows the host's address space".into())
        })?;
        let mut hbm = Vec::with_capacity(sizes.len());
        for (t, &bytes) in program.tensors.iter().zip(&sizes) {
            let len = to_usize(bytes, &format!("hbm tensor '{}'", t.name))?;
            hbm.push(HbmBuf {
                len,
                bytes: std::sync::OnceLock::new(),
                shared: None,
                poison_free: false,
            });
        }
        Ok(Memories {
            partitions,
            sbuf_per_partition: sbuf_pp,
            psum_per_partition: psum_pp,
            sbuf: poisoned_vec(sbuf_len, sbuf_pp, "sbuf")?,
            psum: poisoned_vec(psum_len, psum_pp, "psum")?,
            written: [
                Written::new(partitions, sbuf_pp),
                Written::new(partitions, psum_pp),
            ],
            hbm,
            names: program.tensors.iter().map(|t| t.name.clone()).collect(),
        })
    }

    fn tensor_error(&self, t: TensorId, message: String) -> SimError {
        SimError::Tensor {
            tensor: t,
            name: self
                .names
                .get(t.0 as usize)
                .cloned()
                .unwrap_or_else(|| "?".into()),
            message,
        }
    }

    /// Replaces the contents of HBM tensor `t` with a copy of `bytes`, which must be
    /// exactly its size.
    pub fn write_tensor(&mut self, t: TensorId, bytes: &[u8]) -> Result<(), SimError> {
        let buf = self.bound(t, bytes.len())?;
        buf.shared = None;
        buf.poison_free = false;
        match buf.bytes.get_mut() {
            Some(v) => v.copy_from_slice(bytes),
            None => buf.bytes = std::sync::OnceLock::from(copied_vec(bytes)),
        }
        Ok(())
    }

    /// Binds HBM tensor `t` to `bytes` (exactly its size) by reference: reads see them
    /// where they lie, and the first instruction that writes the tensor copies them
    /// first, so `bytes` never change. What a run reads and writes is exactly what it
    /// would be after [`Memories::write_tensor`], without copying a weight that is only
    /// read.
    pub fn bind_tensor(&mut self, t: TensorId, bytes: &'w [u8]) -> Result<(), SimError> {
        let buf = self.bound(t, bytes.len())?;
        buf.bytes = std::sync::OnceLock::new();
        buf.shared = Some(bytes);
        buf.poison_free = false;
        Ok(())
    }

    /// [`Memories::bind_tensor`] for bytes the caller has checked to hold no poison
    /// element of the tensor's dtype (`!numerics::is_poisoned(dtype, bytes)`; the runtime
    /// checks each weight once per model). A DMA from such a tensor then knows its poison
    /// report without reading, which lets the simulator put the copy off (see
    /// `exec/deferred.rs`). Debug builds check the claim.
    pub fn bind_poison_free_tensor(
        &mut self,
        t: TensorId,
        dtype: Dtype,
        bytes: &'w [u8],
    ) -> Result<(), SimError> {
        debug_assert!(
            !numerics::is_poisoned(dtype, bytes),
            "tensor {t} bound as poison-free holds a poison element"
        );
        self.bind_tensor(t, bytes)?;
        self.bound(t, bytes.len())?.poison_free = true;
        Ok(())
    }

    /// Whether HBM tensor `t` is still read in place from bytes bound by
    /// [`Memories::bind_poison_free_tensor`] (no instruction has written it).
    pub(crate) fn bound_poison_free(&self, t: TensorId) -> bool {
        self.hbm
            .get(t.0 as usize)
            .is_some_and(|b| b.poison_free && b.shared.is_some())
    }

    /// Records that `ap` is about to be written (see [`Written`]); every write to SBUF or
    /// PSUM calls this first.
    fn mark_written(&mut self, ap: &Ap) {
        match ap.mem {
            Memory::Sbuf => self.written[0].mark(ap),
            Memory::Psum => self.written[1].mark(ap),
            Memory::Hbm(_) => {}
        }
    }

    /// Checks `ap` as every access does (bounds, sizes), without touching a byte: the
    /// error a read or write of `ap` would return first.
    pub(crate) fn check_access(&self, ap: &Ap) -> Result<(), ExecError> {
        self.view(ap).map(|_| ())
    }

    /// Tensor `t`'s buffer, checked to hold `len` bytes.
    fn bound(&mut self, t: TensorId, len: usize) -> Result<&mut HbmBuf<'w>, SimError> {
        let i = t.0 as usize;
        match self.hbm.get(i).map(|b| b.len) {
            None => {
                let count = self.hbm.len();
                Err(self.tensor_error(t, format!("unknown tensor: the program has {count}")))
            }
            Some(expected) if expected != len => {
                Err(self.tensor_error(t, format!("expected {expected} bytes, found {len}")))
            }
            // In range: found just above.
            Some(_) => Ok(&mut self.hbm[i]),
        }
    }

    /// The bytes of HBM tensor `t`.
    pub fn tensor(&self, t: TensorId) -> Result<&[u8], SimError> {
        self.hbm.get(t.0 as usize).map(HbmBuf::get).ok_or_else(|| {
            self.tensor_error(
                t,
                format!("unknown tensor: the program has {}", self.hbm.len()),
            )
        })
    }

    /// The whole SBUF, partition-major.
    pub fn sbuf(&self) -> &[u8] {
        &self.sbuf
    }

    /// The whole PSUM, partition-major.
    pub fn psum(&self) -> &[u8] {
        &self.psum
    }

    /// Bytes per partition of an on-chip memory (0 for HBM).
    pub fn bytes_per_partition(&self, mem: Memory) -> usize {
        match mem {
            Memory::Sbuf => self.sbuf_per_partition,
            Memory::Psum => self.psum_per_partition,
            Memory::Hbm(_) => 0,
        }
    }

    fn buffer(&self, mem: Memory) -> Result<&[u8], ExecError> {
        match mem {
            Memory::Sbuf => Ok(&self.sbuf),
            Memory::Psum => Ok(&self.psum),
            Memory::Hbm(t) => self.hbm.get(t.0 as usize).map(HbmBuf::get).ok_or_else(|| {
                err(format!(
                    "unknown hbm tensor {t}: the program has {}",
                    self.hbm.len()
                ))
            }),
        }
    }

    fn buffer_mut(&mut self, mem: Memory) -> Result<&mut [u8], ExecError> {
        let count = self.hbm.len();
        match mem {
            Memory::Sbuf => Ok(&mut self.sbuf),
            Memory::Psum => Ok(&mut self.psum),
            Memory::Hbm(t) => self
                .hbm
                .get_mut(t.0 as usize)
                .map(HbmBuf::get_mut)
                .ok_or_else(|| err(format!("unknown hbm tensor {t}: the program has {count}"))),
        }
    }

    /// Resolves `ap`, checking that every byte it touches is inside its memory (per
    /// partition on chip, per tensor in HBM) and that it is not too large to simulate.
    fn view(&self, ap: &Ap) -> Result<View, ExecError> {
        if ap.dims.len() > MAX_FREE_DIMS {
            return Err(err(format!(
                "access pattern {ap}: expected at most {MAX_FREE_DIMS} free dims, found {}",
                ap.dims.len()
            )));
        }
        if ap.partitions == 0 || ap.dims.iter().any(|d| d.size == 0) {
            return Err(err(format!(
                "access pattern {ap}: partitions and dim sizes must be >= 1"
            )));
        }
        let elems = ap.dims.iter().fold(u128::from(ap.partitions), |acc, d| {
            acc.saturating_mul(u128::from(d.size))
        });
        if elems > u128::from(MAX_AP_ELEMS) {
            return Err(err(format!(
                "access pattern {ap}: {elems} elements exceed the simulator's limit of {MAX_AP_ELEMS}"
            )));
        }
        let esize = ap.dtype.size() as i128;
        // Free dims in bytes; a size-1 dim never moves, so its stride is irrelevant.
        let free: Vec<(i128, i128)> = ap
            .dims
            .iter()
            .map(|d| {
                (
                    i128::from(d.size),
                    if d.size == 1 {
                        0
                    } else {
                        i128::from(d.stride) * esize
                    },
                )
            })
            .collect();
        let (mut lo, mut hi) = (0i128, 0i128);
        for &(n, s) in &free {
            let reach = (n - 1) * s;
            if reach < 0 {
                lo += reach;
            } else {
                hi += reach;
            }
        }
        let offset = i128::from(ap.offset);
        let parts = i128::from(ap.partitions);
        let buf_len = self.buffer(ap.mem)?.len() as i128;
        let (first, part_stride) = match ap.mem {
            Memory::Sbuf | Memory::Psum => {
                let pp = self.bytes_per_partition(ap.mem) as i128;
                if ap.partition_stride != 1 {
                    return Err(err(format!(
                        "access pattern {ap}: on-chip partition_stride must be 1, found {}",
                        ap.partition_stride
                    )));
                }
                let end = u64::from(ap.start_partition) + u64::from(ap.partitions);
                if end > self.partitions as u64 {
                    return Err(err(format!(
                        "access pattern {ap}: partitions {}..{end} exceed the {} partitions",
                        ap.start_partition, self.partitions
                    )));
                }
                if offset + lo < 0 || offset + hi + esize > pp {
                    return Err(err(format!(
                        "access pattern {ap}: touches bytes {}..{} of each partition, outside 0..{pp}",
                        offset + lo,
                        offset + hi + esize
                    )));
                }
                (i128::from(ap.start_partition) * pp + offset, pp)
            }
            Memory::Hbm(t) => {
                let row = if ap.partitions == 1 {
                    0
                } else {
                    i128::from(ap.partition_stride) * esize
                };
                let reach = (parts - 1) * row;
                let (rlo, rhi) = if reach < 0 { (reach, 0) } else { (0, reach) };
                if offset + lo + rlo < 0 || offset + hi + rhi + esize > buf_len {
                    return Err(err(format!(
                        "access pattern {ap}: touches bytes {}..{} of tensor {t}, outside 0..{buf_len}",
                        offset + lo + rlo,
                        offset + hi + rhi + esize
                    )));
                }
                (offset, row)
            }
        };
        // All dims, outermost first: drop size-1 dims, merge contiguous neighbours.
        let mut dims: Vec<(i128, i128)> = Vec::with_capacity(5);
        for (n, s) in std::iter::once((parts, part_stride)).chain(free) {
            if n == 1 {
                continue;
            }
            match dims.last_mut() {
                Some(last) if last.1 == s * n => *last = (last.0 * n, s),
                _ => dims.push((n, s)),
            }
        }
        let (inner_n, inner_stride) = dims.pop().unwrap_or((1, esize));
        let mut outer = [(1usize, 0isize); 4];
        let pad = 4 - dims.len();
        for (slot, &(n, s)) in outer[pad..].iter_mut().zip(&dims) {
            // Both fit: sizes are bounded by MAX_AP_ELEMS and strides by the buffer length.
            *slot = (n as usize, s as isize);
        }
        Ok(View {
            esize: esize as usize,
            base: first as usize,
            outer,
            inner_n: inner_n as usize,
            inner_stride: inner_stride as isize,
        })
    }

    /// Checks that `ap` can be accessed (the errors of [`Memories::read_f32`] without
    /// reading).
    pub(crate) fn check(&self, ap: &Ap) -> Result<(), ExecError> {
        self.view(ap).map(|_| ())
    }

    /// Reads `ap` into `out` as a dense row-major `[P x N]` FP32 buffer (resized to fit).
    /// Returns whether any float element read was the poison pattern.
    pub fn read_f32(&self, ap: &Ap, out: &mut Vec<f32>) -> Result<bool, ExecError> {
        let view = self.view(ap)?;
        let mem = self.buffer(ap.mem)?;
        // No clear: the runs below overwrite every element, so a reused buffer of the
        // right length needs no zero-filling pass.
        out.resize(view.elems(), 0.0);
        let (n, e, dtype) = (view.inner_n, view.esize, ap.dtype);
        let mut poisoned = false;
        let mut scratch = Vec::new();
        let mut result = Ok(());
        if view.runs_contiguous() {
            view.for_each_run(|k, start| {
                let bytes = &mem[start..start + n * e];
                poisoned |= numerics::is_poisoned(dtype, bytes);
                if let Err(e) = numerics::decode_slice(dtype, bytes, &mut out[k..k + n]) {
                    result = Err(e);
                }
            });
        } else {
            scratch.resize(n * e, 0);
            view.for_each_run(|k, start| {
                gather_any(e, mem, start, view.inner_stride, &mut scratch);
                poisoned |= numerics::is_poisoned(dtype, &scratch);
                if let Err(e) = numerics::decode_slice(dtype, &scratch, &mut out[k..k + n]) {
                    result = Err(e);
                }
            });
        }
        result.map_err(|e| err(format!("reading {ap}: {e}")))?;
        Ok(poisoned)
    }

    /// Writes the dense row-major `[P x N]` buffer `data` to `ap`, rounding to its dtype
    /// with `rounder`. `data` must hold exactly the pattern's element count.
    pub fn write_f32(
        &mut self,
        ap: &Ap,
        data: &[f32],
        rounder: &mut Rounder,
    ) -> Result<(), ExecError> {
        let view = self.view(ap)?;
        if data.len() != view.elems() {
            return Err(err(format!(
                "writing {ap}: expected {} values, found {}",
                view.elems(),
                data.len()
            )));
        }
        self.mark_written(ap);
        let mem = self.buffer_mut(ap.mem)?;
        let (n, e, dtype) = (view.inner_n, view.esize, ap.dtype);
        let mut result = Ok(());
        if view.runs_contiguous() {
            view.for_each_run(|k, start| {
                let bytes = &mut mem[start..start + n * e];
                if let Err(e) = numerics::encode_slice(dtype, &data[k..k + n], bytes, rounder) {
                    result = Err(e);
                }
            });
        } else {
            let mut scratch = vec![0u8; n * e];
            view.for_each_run(|k, start| {
                if let Err(e) =
                    numerics::encode_slice(dtype, &data[k..k + n], &mut scratch, rounder)
                {
                    result = Err(e);
                }
                scatter_any(e, mem, start, view.inner_stride, &scratch);
            });
        }
        result.map_err(|e| err(format!("writing {ap}: {e}")))
    }

    /// The elements of an on-chip FP32 pattern that is one contiguous run per partition,
    /// as a mutable `[P, N]` view of the memory itself (rows `bytes per partition` apart),
    /// so that an engine can accumulate into it in place: writing FP32 elements through it
    /// stores exactly what [`Memories::write_f32`] would (FP32 is stored as is, and no
    /// rounding state is consumed). `None` when the pattern has another shape or dtype, is
    /// in HBM, or the host cannot view the bytes as `f32` (a big-endian host, a buffer
    /// not 4-byte aligned); callers then take the general path.
    pub(crate) fn rows_f32_mut(
        &mut self,
        ap: &Ap,
    ) -> Result<Option<ndarray::ArrayViewMut2<'_, f32>>, ExecError> {
        if ap.dtype != Dtype::F32 || matches!(ap.mem, Memory::Hbm(_)) || cfg!(target_endian = "big")
        {
            return Ok(None);
        }
        let view = self.view(ap)?;
        let (m, n) = (
            ap.partitions as usize,
            view.elems() / (ap.partitions as usize).max(1),
        );
        let trivial = |dims: &[(usize, isize)]| dims.iter().all(|d| d.0 == 1);
        let row_bytes = if !view.runs_contiguous() {
            None
        } else if view.inner_n == m * n && trivial(&view.outer) {
            // One run: a single partition, or rows that exactly tile the memory.
            Some(n * 4)
        } else if view.inner_n == n && trivial(&view.outer[..3]) && view.outer[3].0 == m {
            usize::try_from(view.outer[3].1).ok()
        } else {
            None
        };
        let Some(row_bytes) = row_bytes.filter(|r| r % 4 == 0 && view.base % 4 == 0) else {
            return Ok(None);
        };
        self.mark_written(ap);
        let buf = self.buffer_mut(ap.mem)?;
        let len = buf.len() & !3;
        let Ok(words) = bytemuck::try_cast_slice_mut::<u8, f32>(&mut buf[..len]) else {
            return Ok(None);
        };
        let shape = ndarray::ShapeBuilder::strides((m, n), (row_bytes / 4, 1));
        // In range: `view` checked every byte the pattern touches.
        Ok(ndarray::ArrayViewMut2::from_shape(shape, &mut words[view.base / 4..]).ok())
    }

    /// Reads the raw bytes of `ap` into `out`, densely (`P x N` elements of its dtype).
    /// Returns whether any float element was the poison pattern.
    pub fn read_raw(&self, ap: &Ap, out: &mut Vec<u8>) -> Result<bool, ExecError> {
        self.read_raw_bytes(ap, out)?;
        Ok(numerics::is_poisoned(ap.dtype, out))
    }

    /// [`Memories::read_raw`] from an HBM tensor bound by
    /// [`Memories::bind_poison_free_tensor`], in its dtype: no poison scan (none can be
    /// found; debug builds check).
    pub(crate) fn read_raw_poison_free(&self, ap: &Ap, out: &mut Vec<u8>) -> Result<(), ExecError> {
        debug_assert!(matches!(ap.mem, Memory::Hbm(t) if self.bound_poison_free(t)));
        self.read_raw_bytes(ap, out)?;
        debug_assert!(!numerics::is_poisoned(ap.dtype, out));
        Ok(())
    }

    /// The dense raw bytes of `ap` into `out`.
    fn read_raw_bytes(&self, ap: &Ap, out: &mut Vec<u8>) -> Result<(), ExecError> {
        let view = self.view(ap)?;
        let mem = self.buffer(ap.mem)?;
        let (n, e) = (view.inner_n, view.esize);
        if view.runs_contiguous() {
            // Runs come in dense order: appended, with no zero-filling pass first.
            out.clear();
            out.reserve(view.elems() * e);
            view.for_each_run(|_, start| out.extend_from_slice(&mem[start..start + n * e]));
        } else {
            out.resize(view.elems() * e, 0);
            view.for_each_run(|k, start| {
                gather_any(
                    e,
                    mem,
                    start,
                    view.inner_stride,
                    &mut out[k * e..(k + n) * e],
                );
            });
        }
        Ok(())
    }

    /// Copies the bytes of `src` to `dst` (same dtype, same element count) directly,
    /// without a dense intermediate, when both are made of contiguous runs (of any
    /// lengths: a run of one side may span several of the other's) and they are in
    /// different memories or in byte ranges of one memory that do not overlap: exactly
    /// what [`Memories::read_raw`] then [`Memories::write_raw`] do. Returns whether an
    /// element read was poison, or `None` (nothing done) when the patterns do not
    /// qualify. A large copy between memories is split by partitions across the rayon
    /// pool when `split` (the same bytes either way).
    pub(crate) fn copy_raw(
        &mut self,
        dst: &Ap,
        src: &Ap,
        split: bool,
    ) -> Result<Option<bool>, ExecError> {
        let (vd, vs) = (self.view(dst)?, self.view(src)?);
        if dst.dtype != src.dtype
            || vd.elems() != vs.elems()
            || vd.inner_n == 0
            || vs.inner_n == 0
            || !vd.runs_contiguous()
            || !vs.runs_contiguous()
        {
            return Ok(None);
        }
        let mut starts = Vec::with_capacity(vs.elems() / vs.inner_n);
        vs.for_each_run(|_, start| starts.push(start));
        let (src_run, dst_run) = (vs.inner_n * vs.esize, vd.inner_n * vd.esize);
        if dst.mem == src.mem {
            let mut dst_starts = Vec::with_capacity(vd.elems() / vd.inner_n);
            vd.for_each_run(|_, start| dst_starts.push(start));
            let span = |starts: &[usize], run: usize| {
                let lo = starts.iter().copied().min().unwrap_or(0);
                (lo, starts.iter().copied().max().unwrap_or(0) + run)
            };
            let ((sl, sh), (dl, dh)) = (span(&starts, src_run), span(&dst_starts, dst_run));
            // On chip, partitions interleave the flat spans of any two patterns; their
            // bytes are disjoint when their partitions or their row spans are.
            if sl < dh && dl < sh && (!dst.mem.is_on_chip() || on_chip_overlap(dst, src)) {
                return Ok(None);
            }
            self.mark_written(dst);
            let buf = self.buffer_mut(dst.mem)?;
            let mut poisoned = false;
            copy_pieces(&dst_starts, &starts, dst_run, src_run, |d, s, len| {
                poisoned |= numerics::is_poisoned(src.dtype, &buf[s..s + len]);
                buf.copy_within(s..s + len, d);
            });
            return Ok(Some(poisoned));
        }
        // The destination is moved out while the source is read, then put back.
        self.mark_written(dst);
        let mut out = match dst.mem {
            Memory::Sbuf => std::mem::take(&mut self.sbuf),
            Memory::Psum => std::mem::take(&mut self.psum),
            Memory::Hbm(t) => {
                let Some(buf) = self.hbm.get_mut(t.0 as usize) else {
                    return Ok(None);
                };
                buf.get_mut();
                std::mem::take(&mut buf.bytes)
                    .into_inner()
                    .unwrap_or_default()
            }
        };
        let mut poisoned = false;
        let per_partition = self.bytes_per_partition(dst.mem);
        if let Ok(from) = self.buffer(src.mem) {
            let mut dst_starts = Vec::with_capacity(vd.elems() / vd.inner_n);
            vd.for_each_run(|_, start| dst_starts.push(start));
            let bytes = vd.elems() * vd.esize;
            if bytes >= PARALLEL_FILL && per_partition > 0 && split {
                poisoned = copy_by_partitions(
                    &mut out,
                    per_partition,
                    from,
                    src.dtype,
                    (&dst_starts, &starts, dst_run, src_run),
                );
            } else {
                copy_pieces(&dst_starts, &starts, dst_run, src_run, |d, s, len| {
                    let bytes = &from[s..s + len];
                    poisoned |= numerics::is_poisoned(src.dtype, bytes);
                    out[d..d + len].copy_from_slice(bytes);
                });
            }
        }
        match dst.mem {
            Memory::Sbuf => self.sbuf = out,
            Memory::Psum => self.psum = out,
            Memory::Hbm(t) => {
                if let Some(buf) = self.hbm.get_mut(t.0 as usize) {
                    buf.bytes = std::sync::OnceLock::from(out);
                }
            }
        }
        Ok(Some(poisoned))
    }

    /// Writes dense raw bytes (`P x N` elements of `ap.dtype`) to `ap`, bit for bit.
    pub fn write_raw(&mut self, ap: &Ap, data: &[u8]) -> Result<(), ExecError> {
        let view = self.view(ap)?;
        let (n, e) = (view.inner_n, view.esize);
        if data.len() != view.elems() * e {
            return Err(err(format!(
                "writing {ap}: expected {} bytes, found {}",
                view.elems() * e,
                data.len()
            )));
        }
        self.mark_written(ap);
        let mem = self.buffer_mut(ap.mem)?;
        if view.runs_contiguous() {
            view.for_each_run(|k, start| {
                mem[start..start + n * e].copy_from_slice(&data[k * e..(k + n) * e]);
            });
        } else {
            view.for_each_run(|k, start| {
                scatter_any(e, mem, start, view.inner_stride, &data[k * e..(k + n) * e]);
            });
        }
        Ok(())
    }

    /// Reads an `i32` access pattern exactly (no FP32 round trip), densely.
    pub fn read_i32(&self, ap: &Ap, out: &mut Vec<i32>) -> Result<(), ExecError> {
        if ap.dtype != Dtype::I32 {
            return Err(err(format!(
                "reading {ap} as i32: expected dtype i32, found {}",
                ap.dtype
            )));
        }
        let mut raw = Vec::new();
        self.read_raw(ap, &mut raw)?;
        out.clear();
        out.extend(
            raw.chunks_exact(4)
                .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]])),
        );
        Ok(())
    }

    /// Writes dense `i32` values to an `i32` access pattern exactly.
    pub fn write_i32(&mut self, ap: &Ap, data: &[i32]) -> Result<(), ExecError> {
        if ap.dtype != Dtype::I32 {
            return Err(err(format!(
                "writing {ap} as i32: expected dtype i32, found {}",
                ap.dtype
            )));
        }
        let raw: Vec<u8> = data.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.write_raw(ap, &raw)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use neuron_isa::{Dim, HbmTensor, TensorKind};

    /// A buffer with no record of what was written (poisoned again in full).
    fn plain(bytes: Vec<u8>) -> Recyclable {
        Recyclable {
            bytes,
            written: None,
        }
    }

    #[test]
    fn recycled_buffers_come_back_poisoned_and_only_the_largest_are_kept() {
        let pool = Recycled::default();
        let junk = |len: usize| (0..len).map(|i| (i % 251) as u8).collect::<Vec<u8>>();
        let big = junk(3 * PARALLEL_FILL);
        let at = big.as_ptr();
        recycle(&pool, plain(big));
        // Too small to be worth keeping.
        recycle(&pool, plain(junk(PARALLEL_FILL / 2)));
        assert_eq!(pool.lock().unwrap().len(), 1);
        // More than twice the size asked for: not used.
        let fresh = poisoned_vec_from(&pool, PARALLEL_FILL, 4096, "t").unwrap();
        assert_ne!(fresh.as_ptr(), at);
        // Shorter and longer than the recycled buffer's length, within its capacity.
        for len in [2 * PARALLEL_FILL + 3, 3 * PARALLEL_FILL] {
            let v = poisoned_vec_from(&pool, len, 4096, "t").unwrap();
            assert_eq!(v.as_ptr(), at, "{len} bytes reuse the buffer");
            assert_eq!(v.len(), len);
            assert!(
                v.iter().all(|&b| b == POISON_BYTE),
                "{len} bytes all poisoned"
            );
            recycle(&pool, plain(v));
        }
        let mut v = poisoned_vec_from(&pool, 3 * PARALLEL_FILL, 4096, "t").unwrap();
        v.truncate(PARALLEL_FILL + 1);
        recycle(&pool, plain(v));
        let v = poisoned_vec_from(&pool, 3 * PARALLEL_FILL, 4096, "t").unwrap();
        assert_eq!(v.as_ptr(), at, "grown back within its capacity");
        assert!(v.iter().all(|&b| b == POISON_BYTE));
        // Three buffers: the two largest stay.
        recycle(&pool, plain(v));
        recycle(&pool, plain(junk(PARALLEL_FILL)));
        recycle(&pool, plain(junk(4 * PARALLEL_FILL)));
        let mut caps: Vec<usize> = pool
            .lock()
            .unwrap()
            .iter()
            .map(|r| r.bytes.capacity())
            .collect();
        caps.sort();
        assert_eq!(caps, [3 * PARALLEL_FILL, 4 * PARALLEL_FILL]);
    }

    /// Only the chunks a recycled buffer's last owner wrote are poisoned again, and only
    /// when the layout matches (otherwise everything is).
    #[test]
    fn recycled_buffers_are_poisoned_again_where_they_were_written() {
        // Large enough to be kept (at least `PARALLEL_FILL` bytes).
        let (parts, pp) = (128usize, 3 * WRITTEN_CHUNK + 100);
        let mut w = Written::new(parts, pp);
        // Partition 5, bytes 5000..9000: chunks 1 and 2 of that row.
        w.mark(&Ap::on_chip(Memory::Sbuf, Dtype::U8, 5, 1, 5000, 4000));
        let mut bytes = vec![POISON_BYTE; parts * pp];
        bytes[5 * pp + 5000..5 * pp + 9000].fill(7);
        // A byte outside the marked chunks: a write that was not recorded stays.
        bytes[6 * pp] = 9;
        let pool = Recycled::default();
        recycle(
            &pool,
            Recyclable {
                bytes: bytes.clone(),
                written: Some(w.clone()),
            },
        );
        let v = poisoned_vec_from(&pool, parts * pp, pp, "t").unwrap();
        let stale: Vec<usize> = (0..v.len()).filter(|&i| v[i] != POISON_BYTE).collect();
        assert_eq!(stale, [6 * pp], "only the unrecorded byte is left");
        // Another layout: poisoned in full.
        recycle(
            &pool,
            Recyclable {
                bytes,
                written: Some(w),
            },
        );
        let v = poisoned_vec_from(&pool, parts * pp, pp + 4, "t").unwrap();
        assert!(v.iter().all(|&b| b == POISON_BYTE));
    }

    /// Every write path marks what it writes: after random writes through each of them,
    /// every byte of SBUF and PSUM that is not poison lies in a recorded chunk.
    #[test]
    fn every_write_path_records_what_it_writes() {
        let cfg = ChipConfig::trn1();
        let p = program(&[("x", vec![64, 64], Dtype::F32)]);
        let mut m = Memories::new(&cfg, &p).unwrap();
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut rnd = |n: u64| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state % n
        };
        m.write_tensor(TensorId(0), &vec![1u8; 64 * 64 * 4])
            .unwrap();
        for i in 0..400 {
            let mem = if rnd(3) == 0 {
                Memory::Psum
            } else {
                Memory::Sbuf
            };
            let pp = if mem == Memory::Sbuf { 180_000 } else { 16_000 };
            let (p0, np, n) = (rnd(64) as u32, 1 + rnd(64) as u32, 1 + rnd(64) as u32);
            let ap = Ap::on_chip(mem, Dtype::F32, p0, np, rnd(pp) & !3, n);
            let values = vec![i as f32; (np * n) as usize];
            let hbm = Ap::hbm_rows(TensorId(0), Dtype::F32, 0, np, 64, n);
            let _ = match rnd(4) {
                0 => m.write_raw(&ap, &vec![3u8; values.len() * 4]),
                1 => m.write_f32(&ap, &values, &mut Rounder::new(numerics::Rounding::Rne, 0)),
                2 => m.copy_raw(&ap, &hbm, true).map(|_| ()),
                _ => match m.rows_f32_mut(&ap) {
                    Ok(Some(mut v)) => {
                        v.fill(2.0);
                        Ok(())
                    }
                    _ => Ok(()),
                },
            };
        }
        for (buf, w) in [(&m.sbuf, &m.written[0]), (&m.psum, &m.written[1])] {
            for (i, &b) in buf.iter().enumerate() {
                if b != POISON_BYTE {
                    let (p, off) = (i / w.per_partition, i % w.per_partition);
                    assert!(
                        w.bits[p * w.chunks + off / WRITTEN_CHUNK],
                        "byte {off} of partition {p} written but not recorded"
                    );
                }
            }
        }
    }

    #[test]
    fn for_program_sizes_on_chip_memories_to_the_footprint() {
        use neuron_isa::{Engine, Instruction, Op, Stream};
        let cfg = ChipConfig::trn1();
        let mut p = program(&[]);
        // Reaches SBUF bytes 1024..1088 (16 f32), and a [2 x stride 4, 2 x stride 1] f32
        // pattern at 4096 whose last element starts at 4096 + (1 * 4 + 1) * 4 = 4116, so
        // the footprint ends at 4120.
        let a = Ap::on_chip(Memory::Sbuf, Dtype::F32, 0, 128, 1024, 16);
        let mut b = Ap::on_chip(Memory::Sbuf, Dtype::F32, 0, 128, 4096, 2);
        b.dims = vec![Dim { size: 2, stride: 4 }, Dim { size: 2, stride: 1 }];
        p.streams.push(Stream {
            engine: Engine::Vector,
            instrs: vec![
                Instruction::new(Op::Memset { dst: a, value: 1.0 }),
                Instruction::new(Op::TensorCopy {
                    dst: b.clone(),
                    src: b,
                }),
            ],
        });
        let m = Memories::for_program(&cfg, &p).unwrap();
        assert_eq!(m.bytes_per_partition(Memory::Sbuf), 4096 + 6 * 4);
        assert_eq!(m.sbuf().len(), 128 * (4096 + 6 * 4));
        assert!(m.sbuf().iter().all(|&b| b == POISON_BYTE));
        assert_eq!(m.bytes_per_partition(Memory::Psum), 0);
        // Memories::new keeps the chip's sizes.
        let full = Memories::new(&cfg, &p).unwrap();
        assert_eq!(full.bytes_per_partition(Memory::Sbuf), 192 * 1024);
    }

    fn program(shapes: &[(&str, Vec<u64>, Dtype)]) -> Program {
        Program {
            tensors: shapes
                .iter()
                .map(|(n, s, d)| HbmTensor {
                    name: n.to_string(),
                    kind: TensorKind::Input,
                    shape: s.clone(),
                    dtype: *d,
                })
                .collect(),
            ..Program::default()
        }
    }

    #[test]
    fn starts_poisoned_and_binds_exact_sizes() {
        let cfg = ChipConfig::trn1();
        let mut m = Memories::new(&cfg, &program(&[("x", vec![2, 3], Dtype::Bf16)])).unwrap();
        assert_eq!(m.sbuf().len(), 128 * 192 * 1024);
        assert!(m.sbuf().iter().all(|&b| b == 0xff));
        assert!(m.psum().iter().all(|&b| b == 0xff));
        assert_eq!(m.tensor(TensorId(0)).unwrap(), &[0xff; 12]);
        let e = m.write_tensor(TensorId(0), &[0; 11]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "tensor t0 ('x'): expected 12 bytes, found 11"
        );
        let e = m.write_tensor(TensorId(3), &[0; 12]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "tensor t3 ('?'): unknown tensor: the program has 1"
        );
        m.write_tensor(TensorId(0), &[7; 12]).unwrap();
        assert_eq!(m.tensor(TensorId(0)).unwrap(), &[7; 12]);
        // A tensor allocated on first access: a partial write by an instruction leaves
        // the rest poisoned, and binding it afterwards replaces every byte.
        let mut m = Memories::new(&cfg, &program(&[("y", vec![2, 3], Dtype::Bf16)])).unwrap();
        let row = Ap::hbm_rows(TensorId(0), Dtype::Bf16, 2, 1, 3, 2);
        m.write_raw(&row, &[1, 2, 3, 4]).unwrap();
        assert_eq!(
            m.tensor(TensorId(0)).unwrap(),
            &[0xff, 0xff, 1, 2, 3, 4, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]
        );
        let mut raw = Vec::new();
        assert!(
            m.read_raw(
                &Ap::hbm_rows(TensorId(0), Dtype::Bf16, 0, 2, 3, 3),
                &mut raw
            )
            .unwrap()
        );
        m.write_tensor(TensorId(0), &[5; 12]).unwrap();
        assert_eq!(m.tensor(TensorId(0)).unwrap(), &[5; 12]);
    }

    #[test]
    fn refuses_more_hbm_than_the_chip_has_before_allocating() {
        let mut cfg = ChipConfig::trn1();
        cfg.hbm_bytes = 1 << 20;
        let p = program(&[("a", vec![512, 512], Dtype::F32), ("b", vec![1], Dtype::I8)]);
        let e = Memories::new(&cfg, &p).unwrap_err();
        assert_eq!(
            e.to_string(),
            "limit exceeded: hbm tensors need 1048577 bytes in total, the chip (trn1) has 1048576 bytes"
        );
        let p = program(&[("a", vec![512, 512], Dtype::F32)]);
        assert_eq!(
            Memories::new(&cfg, &p)
                .unwrap()
                .tensor(TensorId(0))
                .unwrap()
                .len(),
            1 << 20
        );
        let p = program(&[("huge", vec![u64::MAX, 4], Dtype::F32)]);
        assert!(
            Memories::new(&cfg, &p)
                .unwrap_err()
                .to_string()
                .contains("overflows")
        );
    }

    #[test]
    fn view_merges_contiguous_dims_and_partitions() {
        let cfg = ChipConfig::trn1();
        let m = Memories::new(&cfg, &program(&[("x", vec![4, 8], Dtype::F32)])).unwrap();
        // A whole row-major HBM matrix is one run.
        let ap = Ap::hbm_rows(TensorId(0), Dtype::F32, 0, 4, 8, 8);
        let v = m.view(&ap).unwrap();
        assert_eq!((v.inner_n, v.inner_stride, v.outer), (32, 4, [(1, 0); 4]));
        // [2 x 4] free dims that tile contiguously merge into one run per partition.
        let mut ap = Ap::on_chip(Memory::Sbuf, Dtype::Bf16, 32, 3, 100, 8);
        ap.dims = vec![Dim { size: 2, stride: 4 }, Dim { size: 4, stride: 1 }];
        let v = m.view(&ap).unwrap();
        assert_eq!(v.base, 32 * 192 * 1024 + 100);
        assert_eq!((v.inner_n, v.inner_stride), (8, 2));
        assert_eq!(v.outer[3], (3, 192 * 1024));
        // Negative strides: the first element is the highest address.
        let mut ap = Ap::on_chip(Memory::Sbuf, Dtype::F32, 0, 1, 12, 4);
        ap.dims[0].stride = -1;
        let v = m.view(&ap).unwrap();
        assert_eq!((v.base, v.inner_n, v.inner_stride), (12, 4, -4));
        ap.offset = 8;
        assert!(m.view(&ap).unwrap_err().message.contains("bytes -4..12"));
    }

    #[test]
    fn out_of_bounds_and_absurd_patterns_are_errors() {
        let cfg = ChipConfig::trn1();
        let m = Memories::new(&cfg, &program(&[("x", vec![4, 8], Dtype::F32)])).unwrap();
        let ap = Ap::hbm_rows(TensorId(0), Dtype::F32, 4, 4, 8, 8);
        let e = m.view(&ap).unwrap_err();
        assert_eq!(
            e.message,
            "access pattern t0:f32@4[4x8][8]: touches bytes 4..132 of tensor t0, outside 0..128"
        );
        let mut ap = Ap::hbm_rows(TensorId(0), Dtype::F32, 0, 2, i64::MAX, 1);
        assert!(m.view(&ap).is_err());
        ap.partition_stride = i64::MIN;
        assert!(m.view(&ap).is_err());
        ap = Ap::on_chip(Memory::Psum, Dtype::F32, 0, 128, 0, 4);
        ap.dims = vec![
            Dim {
                size: u32::MAX,
                stride: 0
            };
            4
        ];
        assert!(
            m.view(&ap)
                .unwrap_err()
                .message
                .contains("exceed the simulator's limit")
        );
        ap = Ap::on_chip(Memory::Psum, Dtype::F32, 100, 29, 0, 4);
        assert!(
            m.view(&ap)
                .unwrap_err()
                .message
                .contains("exceed the 128 partitions")
        );
        ap = Ap::on_chip(Memory::Psum, Dtype::F32, 0, 1, 16 * 1024 - 12, 4);
        assert!(
            m.view(&ap)
                .unwrap_err()
                .message
                .contains("outside 0..16384")
        );
        ap = Ap::hbm_rows(TensorId(9), Dtype::F32, 0, 1, 0, 1);
        assert!(
            m.view(&ap)
                .unwrap_err()
                .message
                .contains("unknown hbm tensor t9")
        );
    }

    /// The obviously-right reference: byte address of every element, in dense order.
    fn naive_addresses(m: &Memories, ap: &Ap) -> Vec<usize> {
        let e = ap.dtype.size() as i64;
        let mut out = Vec::new();
        for p in 0..i64::from(ap.partitions) {
            let base = match ap.mem {
                Memory::Hbm(_) => ap.offset as i64 + p * ap.partition_stride * e,
                mem => {
                    (i64::from(ap.start_partition) + p) * m.bytes_per_partition(mem) as i64
                        + ap.offset as i64
                }
            };
            let mut idx = vec![0i64; ap.dims.len()];
            loop {
                let off: i64 = idx
                    .iter()
                    .zip(&ap.dims)
                    .map(|(i, d)| i * d.stride * e)
                    .sum();
                out.push((base + off) as usize);
                let mut k = idx.len();
                loop {
                    if k == 0 {
                        break;
                    }
                    k -= 1;
                    idx[k] += 1;
                    if idx[k] < i64::from(ap.dims[k].size) {
                        break;
                    }
                    idx[k] = 0;
                    if k == 0 {
                        k = usize::MAX;
                        break;
                    }
                }
                if k == usize::MAX || idx.is_empty() {
                    break;
                }
            }
        }
        out
    }

    /// Random patterns (1-4 dims, strides -3..=3 including 0, element sizes 1, 2, 4, 8)
    /// read and written through the fast paths agree with per-element addressing.
    #[test]
    fn fast_paths_match_naive_addressing() {
        let mut cfg = ChipConfig::trn1();
        cfg.sbuf_bytes_per_partition = 16 * 1024;
        let mut m = Memories::new(&cfg, &program(&[("h", vec![4096], Dtype::U8)])).unwrap();
        // Distinct bytes everywhere so any misplaced read shows.
        let fill: Vec<u8> = (0..4096u32).map(|i| (i * 7 + 3) as u8).collect();
        m.write_tensor(TensorId(0), &fill).unwrap();
        for (i, b) in m.sbuf.iter_mut().enumerate() {
            *b = (i * 13 + 1) as u8;
        }
        let mut state = 12345u64;
        let mut rnd = |n: u64| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (state >> 33) % n
        };
        let mut checked = 0;
        for _ in 0..3000 {
            let dtype = [Dtype::U8, Dtype::Bf16, Dtype::F32, Dtype::I64][rnd(4) as usize];
            let ndims = 1 + rnd(4) as usize;
            let dims: Vec<Dim> = (0..ndims)
                .map(|_| Dim {
                    size: 1 + rnd(5) as u32,
                    stride: rnd(7) as i64 - 3,
                })
                .collect();
            let hbm = rnd(2) == 0;
            let ap = Ap {
                mem: if hbm {
                    Memory::Hbm(TensorId(0))
                } else {
                    Memory::Sbuf
                },
                dtype,
                offset: rnd(600),
                start_partition: if hbm { 0 } else { rnd(100) as u32 },
                partitions: 1 + rnd(6) as u32,
                partition_stride: if hbm { rnd(41) as i64 - 20 } else { 1 },
                dims,
            };
            let Ok(view) = m.view(&ap) else { continue };
            let addrs = naive_addresses(&m, &ap);
            assert_eq!(view.elems(), addrs.len(), "{ap}");
            let e = dtype.size() as usize;
            // Compare a window reaching 64 bytes past the addressed bytes on both sides,
            // so stray writes next to the pattern show too.
            let lo = addrs.iter().min().unwrap().saturating_sub(64);
            let hi = addrs.iter().max().unwrap() + e + 64;
            let window = |m: &Memories| -> Vec<u8> {
                let buf = m.buffer(ap.mem).unwrap();
                buf[lo..hi.min(buf.len())].to_vec()
            };
            let before = window(&m);
            let want: Vec<u8> = addrs
                .iter()
                .flat_map(|&a| before[a - lo..a - lo + e].to_vec())
                .collect();
            let mut got = Vec::new();
            m.read_raw(&ap, &mut got).unwrap();
            assert_eq!(got, want, "read {ap}");
            // Write a recognisable pattern and check every addressed element (the last
            // write wins where a pattern addresses one element twice) and its surroundings.
            let data: Vec<u8> = (0..got.len()).map(|i| (i * 31 + 5) as u8).collect();
            let mut expect = before.clone();
            for (k, &a) in addrs.iter().enumerate() {
                expect[a - lo..a - lo + e].copy_from_slice(&data[k * e..(k + 1) * e]);
            }
            m.write_raw(&ap, &data).unwrap();
            assert!(window(&m) == expect, "write {ap}");
            checked += 1;
        }
        assert!(
            checked > 1000,
            "only {checked} random patterns were in bounds"
        );
    }

    /// A large copy from HBM into SBUF (split by partitions across the pool on two
    /// threads): an HBM row block (one run) into SBUF rows with a gap between two
    /// column halves, the source's last rows never written. The same bytes and poison
    /// report on one and two threads as `read_raw` then `write_raw`.
    #[test]
    fn large_direct_copies_by_partitions_match_read_then_write() {
        let (parts, cols) = (128u32, 4096u32);
        let mut cfg = ChipConfig::trn1();
        cfg.sbuf_bytes_per_partition = 4 * 4096 + 64;
        let p = program(&[("h", vec![u64::from(parts), u64::from(cols)], Dtype::F32)]);
        let src = Ap::hbm_rows(TensorId(0), Dtype::F32, 0, parts, i64::from(cols), cols);
        let dst = Ap {
            mem: Memory::Sbuf,
            dtype: Dtype::F32,
            offset: 16,
            start_partition: 0,
            partitions: parts,
            partition_stride: 1,
            dims: vec![
                Dim {
                    size: 2,
                    stride: i64::from(cols / 2) + 4,
                },
                Dim {
                    size: cols / 2,
                    stride: 1,
                },
            ],
        };
        let run = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            pool.install(|| {
                let mut m = Memories::new(&cfg, &p).unwrap();
                // Rows 0..120 written, 120..128 left poisoned.
                let written = Ap::hbm_rows(TensorId(0), Dtype::F32, 0, 120, i64::from(cols), cols);
                let bytes: Vec<u8> = (0..120 * cols)
                    .flat_map(|i| (i as f32 * 0.5).to_le_bytes())
                    .collect();
                m.write_raw(&written, &bytes).unwrap();
                let mut reference = m.clone();
                let poisoned = m.copy_raw(&dst, &src, true).unwrap().unwrap();
                let mut raw = Vec::new();
                let want = reference.read_raw(&src, &mut raw).unwrap();
                reference.write_raw(&dst, &raw).unwrap();
                assert_eq!(poisoned, want);
                assert!(m.sbuf == reference.sbuf, "{threads} threads");
                (poisoned, std::mem::take(&mut m.sbuf))
            })
        };
        let one = run(1);
        assert!(one.0, "the unwritten rows are reported");
        assert!(run(2) == one);
    }

    /// Random pairs of patterns in different memories: the direct copy, when it applies,
    /// leaves the memories exactly as `read_raw` then `write_raw` do, with the same
    /// poison report.
    #[test]
    fn direct_copies_match_read_then_write() {
        let mut cfg = ChipConfig::trn1();
        cfg.sbuf_bytes_per_partition = 4096;
        let mut base = Memories::new(&cfg, &program(&[("h", vec![8192], Dtype::U8)])).unwrap();
        for (i, b) in base.sbuf.iter_mut().enumerate() {
            *b = if i % 97 == 0 {
                0xff
            } else {
                (i * 13 + 1) as u8
            };
        }
        let mut state = 99u64;
        let mut rnd = |n: u64| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (state >> 33) % n
        };
        let (mut direct, mut mixed, mut same) = (0, 0, 0);
        for _ in 0..2000 {
            let dtype = [Dtype::U8, Dtype::Bf16, Dtype::F32][rnd(3) as usize];
            let (parts, inner) = (1 + rnd(8) as u32, 1 + rnd(6) as u32);
            let outer = 1 + rnd(3) as u32;
            let on_chip = Ap {
                mem: Memory::Sbuf,
                dtype,
                offset: rnd(200),
                start_partition: rnd(100) as u32,
                partitions: parts,
                partition_stride: 1,
                dims: vec![
                    Dim {
                        size: outer,
                        stride: i64::from(inner) + rnd(3) as i64,
                    },
                    Dim {
                        size: inner,
                        stride: 1,
                    },
                ],
            };
            let row = i64::from(outer * inner) + rnd(4) as i64;
            let in_hbm = Ap::hbm_rows(TensorId(0), dtype, rnd(300), parts, row, outer * inner);
            // The same elements as `on_chip` elsewhere in SBUF (possibly overlapping it),
            // as one run per partition.
            let mut other = on_chip.clone();
            other.offset = rnd(400);
            other.start_partition = rnd(100) as u32;
            other.dims = vec![Dim {
                size: outer * inner,
                stride: 1,
            }];
            let (dst, src) = match rnd(4) {
                0 => (on_chip, in_hbm),
                1 => (in_hbm, on_chip),
                2 => (on_chip, other),
                _ => (other, on_chip),
            };
            let mut a = base.clone();
            let runs_differ = a.view(&dst).unwrap().inner_n != a.view(&src).unwrap().inner_n;
            let Ok(Some(poisoned)) = a.copy_raw(&dst, &src, true) else {
                continue;
            };
            mixed += usize::from(runs_differ);
            same += usize::from(dst.mem == src.mem);
            let mut b = base.clone();
            let mut raw = Vec::new();
            assert_eq!(
                b.read_raw(&src, &mut raw).unwrap(),
                poisoned,
                "{dst} <- {src}"
            );
            b.write_raw(&dst, &raw).unwrap();
            assert!(a.sbuf == b.sbuf, "{dst} <- {src}");
            assert!(a.tensor(TensorId(0)).unwrap() == b.tensor(TensorId(0)).unwrap());
            direct += 1;
        }
        assert!(direct > 500, "only {direct} direct copies");
        assert!(
            mixed > 200,
            "only {mixed} copies between runs of different lengths"
        );
        assert!(same > 200, "only {same} copies within one memory");
    }

    #[test]
    fn strided_read_write_round_trip() {
        let cfg = ChipConfig::trn1();
        let mut m = Memories::new(&cfg, &program(&[])).unwrap();
        let mut r = Rounder::rne();
        // Column-major write of a [2 x 3] tile: stride 2 innermost.
        let mut ap = Ap::on_chip(Memory::Sbuf, Dtype::F32, 0, 2, 0, 3);
        ap.dims = vec![Dim { size: 3, stride: 2 }];
        m.write_f32(&ap, &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0], &mut r)
            .unwrap();
        let contiguous = Ap::on_chip(Memory::Sbuf, Dtype::F32, 0, 2, 0, 6);
        let mut out = Vec::new();
        let poisoned = m.read_f32(&contiguous, &mut out).unwrap();
        assert!(poisoned);
        let written: Vec<(usize, f32)> = out
            .iter()
            .copied()
            .enumerate()
            .filter(|(_, v)| !v.is_nan())
            .collect();
        assert_eq!(
            written,
            vec![(0, 1.0), (2, 2.0), (4, 3.0), (6, 4.0), (8, 5.0), (10, 6.0)]
        );
        assert!(
            out.iter()
                .skip(1)
                .step_by(2)
                .all(|v| v.to_bits() == u32::MAX)
        );
        assert!(!m.read_f32(&ap, &mut out).unwrap());
        assert_eq!(out, vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
        // Reversed read of the same elements.
        let mut rev = ap.clone();
        rev.offset = 16;
        rev.dims[0].stride = -2;
        m.read_f32(&rev, &mut out).unwrap();
        assert_eq!(out, vec![3.0, 2.0, 1.0, 6.0, 5.0, 4.0]);
        // Raw bytes and i32.
        let iap = Ap::on_chip(Memory::Psum, Dtype::I32, 64, 2, 8, 2);
        m.write_i32(&iap, &[i32::MIN, -1, 16_777_217, 5]).unwrap();
        let mut v = Vec::new();
        m.read_i32(&iap, &mut v).unwrap();
        assert_eq!(v, vec![i32::MIN, -1, 16_777_217, 5]);
    }
}
