//! Param data by reference: weights are data, not IR.
//!
//! A [`ParamData`] is a cheap handle (an `Arc`) to a param's values. Cloning a graph, a
//! value or a kernel tensor clones the handle, never the numbers. Seeded params
//! (`"init"` in model.json) are not generated when the model is loaded: the handle
//! records the recipe, and the values are drawn only when something reads them (the
//! reference executor, a constant fold) or streamed chunk by chunk into the artifact by
//! [`ParamData::values_f64`], which never keeps the whole tensor. So `neuronc check`
//! never materializes a weight, and a compile holds at most one chunk per thread of a
//! seeded weight besides the encoded blob.

use std::fmt;
use std::sync::{Arc, OnceLock};

use ndarray::{ArrayD, IxDyn};

use super::{DType, Tensor};
use neuron_isa::numerics;
use neuron_isa::rng::CounterRng;

/// How to fill a param that has no weights and no literal value.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum InitSpec {
    /// All zeros.
    Zeros,
    /// All ones.
    Ones,
    /// Normal(mean, std) (see [`neuron_isa::rng::CounterRng::normal_pair`]).
    Normal {
        /// Mean (default 0).
        mean: f64,
        /// Standard deviation.
        std: f64,
    },
    /// Uniform in `[low, high)`.
    Uniform {
        /// Inclusive lower bound.
        low: f64,
        /// Exclusive upper bound.
        high: f64,
    },
}

/// A seeded param's recipe.
#[derive(Clone, Debug, PartialEq)]
struct Seeded {
    spec: InitSpec,
    rng: CounterRng,
    shape: Vec<usize>,
    dtype: DType,
}

impl Seeded {
    /// Element values `start .. start + out.len()` in f64, already rounded to the
    /// param's dtype (as [`Tensor::from_f64`] would).
    fn fill(&self, start: usize, out: &mut [f64]) {
        match self.spec {
            InitSpec::Zeros => out.fill(0.0),
            InitSpec::Ones => out.fill(1.0),
            InitSpec::Normal { mean, std } => {
                let mut z = vec![0f32; out.len()];
                self.rng.fill_standard_normal(start as u64, &mut z);
                for (o, &z) in out.iter_mut().zip(&z) {
                    *o = round_to(self.dtype, mean + std * f64::from(z));
                }
            }
            InitSpec::Uniform { low, high } => {
                for (k, o) in out.iter_mut().enumerate() {
                    let u = self.rng.uniform01((start + k) as u64);
                    *o = round_to(self.dtype, low + (high - low) * u);
                }
            }
        }
    }
}

impl Seeded {
    /// [`Seeded::fill`] in f32, for the dtypes whose every value is an f32 (f32, bf16,
    /// f16): the same values, without the f64 buffer. Returns false (and leaves `out`
    /// alone) for other dtypes.
    fn fill_f32(&self, start: usize, out: &mut [f32]) -> bool {
        if !matches!(self.dtype, DType::F32 | DType::Bf16 | DType::F16) {
            return false;
        }
        match self.spec {
            InitSpec::Zeros => out.fill(0.0),
            InitSpec::Ones => out.fill(1.0),
            InitSpec::Normal { mean, std } => {
                self.rng.fill_standard_normal(start as u64, out);
                // One loop per dtype (branch-free bodies that vectorize).
                let x = |z: f32| mean + std * f64::from(z);
                match self.dtype {
                    DType::Bf16 => out.iter_mut().for_each(|o| {
                        *o = numerics::bf16_to_f32(numerics::f64_to_bf16(x(*o)));
                    }),
                    DType::F16 => out.iter_mut().for_each(|o| {
                        *o = numerics::f16_to_f32(numerics::f64_to_f16(x(*o)));
                    }),
                    _ => out.iter_mut().for_each(|o| *o = x(*o) as f32),
                }
            }
            InitSpec::Uniform { low, high } => {
                for (k, o) in out.iter_mut().enumerate() {
                    let u = self.rng.uniform01((start + k) as u64);
                    *o = round_to_f32(self.dtype, low + (high - low) * u);
                }
            }
        }
        true
    }
}

/// [`round_to`] for the float dtypes whose values are all f32s, as an f32 (exactly
/// `round_to(dtype, x) as f32`).
#[inline]
fn round_to_f32(dtype: DType, x: f64) -> f32 {
    match dtype {
        DType::Bf16 => numerics::bf16_to_f32(numerics::f64_to_bf16(x)),
        DType::F16 => numerics::f16_to_f32(numerics::f64_to_f16(x)),
        _ => x as f32,
    }
}

/// Rounds `x` to the value set of `dtype`, as [`Tensor::from_f64`] does.
fn round_to(dtype: DType, x: f64) -> f64 {
    match dtype {
        DType::F32 => f64::from(x as f32),
        DType::Bf16 => f64::from(numerics::bf16_to_f32(numerics::f64_to_bf16(x))),
        DType::F16 => f64::from(numerics::f16_to_f32(numerics::f64_to_f16(x))),
        DType::I8 => f64::from(x as i8),
        DType::I32 => f64::from(x as i32),
        DType::I64 => x as i64 as f64,
        DType::Bool => f64::from(u8::from(x != 0.0)),
    }
}

/// Elements generated per parallel task when a seeded param is materialized or streamed.
pub const CHUNK: usize = 1 << 16;

/// Little-endian elements of a float dtype, shared with the buffer they were read from
/// (an ONNX file's bytes): decoded only when read.
#[derive(Debug, Clone)]
struct Raw {
    bytes: bytes::Bytes,
    shape: Vec<usize>,
    dtype: DType,
}

impl Raw {
    /// Elements `start .. start + out.len()` decoded to f32 (exact for f32, bf16, f16).
    fn fill_f32(&self, start: usize, out: &mut [f32]) {
        let w = self.dtype.size_bytes();
        let src = self
            .bytes
            .get(start * w..(start + out.len()) * w)
            .unwrap_or(&[]);
        match self.dtype {
            DType::Bf16 => {
                for (o, c) in out.iter_mut().zip(src.chunks_exact(2)) {
                    *o = half::bf16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32();
                }
            }
            DType::F16 => {
                for (o, c) in out.iter_mut().zip(src.chunks_exact(2)) {
                    *o = half::f16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32();
                }
            }
            _ => {
                for (o, c) in out.iter_mut().zip(src.chunks_exact(4)) {
                    *o = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
                }
            }
        }
    }

    /// The whole tensor.
    fn decode(&self) -> Tensor {
        let n: usize = self.shape.iter().product();
        let sh = IxDyn(&self.shape);
        let w = self.dtype.size_bytes();
        let bits16 = || {
            self.bytes
                .chunks_exact(2)
                .map(|c| u16::from_le_bytes([c[0], c[1]]))
        };
        let t = match self.dtype {
            DType::Bf16 => {
                ArrayD::from_shape_vec(sh, bits16().map(half::bf16::from_bits).collect())
                    .map(Tensor::Bf16)
            }
            DType::F16 => ArrayD::from_shape_vec(sh, bits16().map(half::f16::from_bits).collect())
                .map(Tensor::F16),
            _ => {
                let mut v = vec![0f32; n];
                self.fill_f32(0, &mut v);
                ArrayD::from_shape_vec(sh, v).map(Tensor::F32)
            }
        };
        // The length was checked against the shape when the handle was made.
        debug_assert_eq!(self.bytes.len(), n * w);
        t.unwrap_or_else(|_| Tensor::zeros(self.dtype, &self.shape))
    }
}

#[derive(Debug)]
struct Inner {
    seeded: Option<Seeded>,
    raw: Option<Raw>,
    cols: Option<Columns>,
    transposed: Option<Transposed>,
    tensor: OnceLock<Tensor>,
}

/// A 2-D param `[N, K]` read as `[K, N]`, by reference (what a matmul reading a constant
/// weight transposed gets instead, `passes/pretranspose.rs`). The source's values are
/// read once, as f32, when the first element is; every read is then a strided gather.
#[derive(Debug)]
struct Transposed {
    src: ParamData,
    shape: Vec<usize>,
    src_values: OnceLock<Vec<f32>>,
}

impl Transposed {
    /// Element `i` of the transposed view comes from element `src_index(i)` of the source.
    fn src_index(&self, i: usize) -> usize {
        let (k, n) = (self.shape[0], self.shape[1]);
        (i % n) * k + i / n
    }

    /// Calls `f(out index, value)` for elements `start .. start + len`.
    fn gather(&self, start: usize, len: usize, mut f: impl FnMut(usize, f32)) {
        let vals = self.src_values.get_or_init(|| {
            use rayon::prelude::*;
            let mut v = vec![0f32; self.src.num_elements()];
            // A float source (see `ParamData::transposed`): each read succeeds. Chunks in
            // parallel: every element is the same whichever thread reads it.
            v.par_chunks_mut(CHUNK).enumerate().for_each(|(c, chunk)| {
                self.src.values_f32(c * CHUNK, chunk);
            });
            v
        });
        for j in 0..len {
            f(
                j,
                vals.get(self.src_index(start + j)).copied().unwrap_or(0.0),
            );
        }
    }
}

/// 2-D params side by side, `[K, N_1] .. [K, N_n]` as one `[K, N_1 + .. + N_n]`, held by
/// reference (what merging sibling projections makes of their weights): the parts are
/// read row segment by row segment, never copied.
#[derive(Debug)]
struct Columns {
    parts: Vec<ParamData>,
    shape: Vec<usize>,
    dtype: DType,
}

impl Columns {
    /// Calls `f(part, part element, out range)` for every run of `len` elements from
    /// element `start` that lies in one row of one part, in order.
    fn segments(
        &self,
        start: usize,
        len: usize,
        mut f: impl FnMut(&ParamData, usize, usize, usize),
    ) {
        let n = self.shape[1];
        let (mut i, end) = (start, start + len);
        while i < end {
            let (r, mut c) = (i / n, i % n);
            let mut col0 = 0;
            for p in &self.parts {
                let w = p.shape()[1];
                if c < col0 + w {
                    let m = (col0 + w - c).min(end - i);
                    f(p, r * w + (c - col0), i - start, m);
                    i += m;
                    c += m;
                    if i == end || c == n {
                        break;
                    }
                }
                col0 += w;
            }
        }
    }
}

/// A shared, lazily generated param value. See the module documentation.
#[derive(Clone)]
pub struct ParamData(Arc<Inner>);

impl ParamData {
    /// Data that already exists.
    pub fn new(t: Tensor) -> ParamData {
        ParamData(Arc::new(Inner {
            seeded: None,
            raw: None,
            cols: None,
            transposed: None,
            tensor: OnceLock::from(t),
        }))
    }

    /// A seeded param: checks the recipe now, draws nothing until read. Returns an error
    /// message if the spec does not suit the dtype.
    pub fn seeded(
        spec: InitSpec,
        seed: u64,
        name: &str,
        shape: &[usize],
        dtype: DType,
    ) -> Result<ParamData, String> {
        let random = matches!(spec, InitSpec::Normal { .. } | InitSpec::Uniform { .. });
        if random && !dtype.is_float() {
            return Err(format!("random init needs a float dtype, found {dtype}"));
        }
        match spec {
            InitSpec::Normal { mean, std }
                if !(std.is_finite() && std >= 0.0 && mean.is_finite()) =>
            {
                return Err(format!(
                    "normal init needs finite mean and std >= 0, found mean {mean}, std {std}"
                ));
            }
            InitSpec::Uniform { low, high }
                if !(low.is_finite() && high.is_finite() && low < high) =>
            {
                return Err(format!(
                    "uniform init needs finite low < high, found low {low}, high {high}"
                ));
            }
            _ => {}
        }
        Ok(ParamData(Arc::new(Inner {
            seeded: Some(Seeded {
                spec,
                rng: CounterRng::for_tensor(seed, name),
                shape: shape.to_vec(),
                dtype,
            }),
            raw: None,
            cols: None,
            transposed: None,
            tensor: OnceLock::new(),
        })))
    }

    /// Little-endian f32, bf16 or f16 elements held by reference (e.g. a slice of an
    /// ONNX file's buffer: no copy); decoded when read. Returns an error message if the
    /// dtype is not one of those or the length does not match the shape.
    pub fn from_le_bytes(
        bytes: bytes::Bytes,
        dtype: DType,
        shape: &[usize],
    ) -> Result<ParamData, String> {
        if !matches!(dtype, DType::F32 | DType::Bf16 | DType::F16) {
            return Err(format!(
                "raw weights must be f32, bf16 or f16, found {dtype}"
            ));
        }
        let n = shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
        let need = n.and_then(|n| n.checked_mul(dtype.size_bytes()));
        if need != Some(bytes.len()) {
            return Err(format!(
                "shape {shape:?} of {dtype} needs {} bytes, found {}",
                need.map_or_else(|| "too many".to_string(), |b| b.to_string()),
                bytes.len()
            ));
        }
        Ok(ParamData(Arc::new(Inner {
            seeded: None,
            raw: Some(Raw {
                bytes,
                shape: shape.to_vec(),
                dtype,
            }),
            cols: None,
            transposed: None,
            tensor: OnceLock::new(),
        })))
    }

    /// 2-D params `[K, N_i]` of one float dtype side by side as one `[K, sum N_i]` param,
    /// by reference: nothing is drawn or copied until read, and reads stream from the
    /// parts (the values are exactly the parts', as a column concatenation would give).
    /// `None` if the parts are not all 2-D `dtype` params with one `K`, or `dtype` is not
    /// f32, bf16 or f16.
    pub fn concat_columns(parts: &[ParamData], dtype: DType) -> Option<ParamData> {
        let k = parts.first()?.shape().first().copied()?;
        let float = matches!(dtype, DType::F32 | DType::Bf16 | DType::F16);
        let fits = |p: &ParamData| {
            p.shape().len() == 2
                && p.shape()[0] == k
                && p.dtype() == dtype
                && !(p.is_materialized() && matches!(p.tensor(), Tensor::F64(_)))
        };
        if !float || !parts.iter().all(fits) {
            return None;
        }
        let n = parts
            .iter()
            .try_fold(0usize, |a, p| a.checked_add(p.shape()[1]))?;
        Some(ParamData(Arc::new(Inner {
            seeded: None,
            raw: None,
            cols: Some(Columns {
                parts: parts.to_vec(),
                shape: vec![k, n],
                dtype,
            }),
            transposed: None,
            tensor: OnceLock::new(),
        })))
    }

    /// The 2-D param `src` (`[N, K]`) transposed, `[K, N]`, by reference: nothing is read
    /// or copied until the values are (the source's values are then read once). `None`
    /// unless `src` is a 2-D f32, bf16 or f16 param.
    pub fn transposed(src: &ParamData) -> Option<ParamData> {
        let [n, k] = src.shape()[..] else {
            return None;
        };
        let float = matches!(src.dtype(), DType::F32 | DType::Bf16 | DType::F16);
        if !float || (src.is_materialized() && matches!(src.tensor(), Tensor::F64(_))) {
            return None;
        }
        Some(ParamData(Arc::new(Inner {
            seeded: None,
            raw: None,
            cols: None,
            transposed: Some(Transposed {
                src: src.clone(),
                shape: vec![k, n],
                src_values: OnceLock::new(),
            }),
            tensor: OnceLock::new(),
        })))
    }

    /// The shape.
    pub fn shape(&self) -> &[usize] {
        if let Some(c) = &self.0.cols {
            return &c.shape;
        }
        if let Some(t) = &self.0.transposed {
            return &t.shape;
        }
        match (&self.0.seeded, &self.0.raw, self.0.tensor.get()) {
            (Some(s), _, _) => &s.shape,
            (None, Some(r), _) => &r.shape,
            (None, None, Some(t)) => t.shape(),
            (None, None, None) => &[],
        }
    }

    /// The element count.
    pub fn num_elements(&self) -> usize {
        self.shape().iter().product()
    }

    /// The dtype (an f64 tensor reports f32, as [`Tensor::dtype`]).
    pub fn dtype(&self) -> DType {
        if let Some(c) = &self.0.cols {
            return c.dtype;
        }
        if let Some(t) = &self.0.transposed {
            return t.src.dtype();
        }
        match (&self.0.seeded, &self.0.raw, self.0.tensor.get()) {
            (Some(s), _, _) => s.dtype,
            (None, Some(r), _) => r.dtype,
            (_, _, Some(t)) => t.dtype(),
            (None, None, None) => DType::F32,
        }
    }

    /// Whether the values exist in memory (false for a seeded param nobody read yet).
    pub fn is_materialized(&self) -> bool {
        self.0.tensor.get().is_some()
    }

    /// Whether two handles share one buffer.
    pub fn ptr_eq(&self, other: &ParamData) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }

    /// The values, generated (in parallel over chunks, the same bits for any thread
    /// count) and kept on first use.
    pub fn tensor(&self) -> &Tensor {
        self.0.tensor.get_or_init(|| {
            if let Some(r) = &self.0.raw {
                return r.decode();
            }
            if let Some(c) = &self.0.cols {
                let mut v = vec![0f32; self.num_elements()];
                // Float parts: `values_f32` always succeeds (see `concat_columns`).
                c.segments(0, v.len(), |p, first, at, m| {
                    p.values_f32(first, &mut v[at..at + m]);
                });
                let a =
                    ArrayD::from_shape_vec(IxDyn(&c.shape), v.into_iter().map(f64::from).collect())
                        .unwrap_or_else(|_| ArrayD::zeros(IxDyn(&c.shape)));
                return Tensor::from_f64(c.dtype, a);
            }
            if let Some(t) = &self.0.transposed {
                let mut v = vec![0f64; self.num_elements()];
                t.gather(0, v.len(), |j, x| v[j] = f64::from(x));
                let a = ArrayD::from_shape_vec(IxDyn(&t.shape), v)
                    .unwrap_or_else(|_| ArrayD::zeros(IxDyn(&t.shape)));
                return Tensor::from_f64(t.src.dtype(), a);
            }
            let Some(s) = &self.0.seeded else {
                // `new` always sets the tensor; unreachable, but harmless.
                return Tensor::zeros(DType::F32, &[]);
            };
            let mut v = vec![0f64; self.num_elements()];
            generate(s, &mut v);
            let a = ArrayD::from_shape_vec(IxDyn(&s.shape), v)
                .unwrap_or_else(|_| ArrayD::zeros(IxDyn(&s.shape)));
            Tensor::from_f64(s.dtype, a)
        })
    }

    /// Element values `start .. start + out.len()` as f64 (in the param's value set),
    /// without materializing a seeded param: what the artifact encoder streams.
    pub fn values_f64(&self, start: usize, out: &mut [f64]) {
        if let (Some(t), None) = (&self.0.transposed, self.0.tensor.get()) {
            t.gather(start, out.len(), |j, x| out[j] = f64::from(x));
            return;
        }
        if let (Some(c), None) = (&self.0.cols, self.0.tensor.get()) {
            c.segments(start, out.len(), |p, first, at, m| {
                p.values_f64(first, &mut out[at..at + m]);
            });
            return;
        }
        if let (Some(s), None) = (&self.0.seeded, self.0.tensor.get()) {
            s.fill(start, out);
            return;
        }
        if let (Some(r), None) = (&self.0.raw, self.0.tensor.get()) {
            let mut v = vec![0f32; out.len()];
            r.fill_f32(start, &mut v);
            for (o, x) in out.iter_mut().zip(v) {
                *o = f64::from(x);
            }
            return;
        }
        let t = self.tensor();
        macro_rules! copy {
            ($a:expr, $f:expr) => {{
                match $a.as_slice() {
                    Some(sl) => {
                        for (o, x) in out.iter_mut().zip(&sl[start..]) {
                            *o = $f(*x);
                        }
                    }
                    None => {
                        for (o, x) in out.iter_mut().zip($a.iter().skip(start)) {
                            *o = $f(*x);
                        }
                    }
                }
            }};
        }
        match t {
            Tensor::F32(a) => copy!(a, f64::from),
            Tensor::F64(a) => copy!(a, |x| x),
            Tensor::Bf16(a) => copy!(a, f64::from),
            Tensor::F16(a) => copy!(a, f64::from),
            Tensor::I8(a) => copy!(a, f64::from),
            Tensor::I32(a) => copy!(a, f64::from),
            Tensor::I64(a) => copy!(a, |x: i64| x as f64),
            Tensor::Bool(a) => copy!(a, |x: bool| f64::from(u8::from(x))),
        }
    }
}

impl ParamData {
    /// Element values `start .. start + out.len()` as f32 when every value of the param
    /// is an f32 (dtype f32, bf16 or f16; seeded or stored): the same values as
    /// [`ParamData::values_f64`] at half the memory traffic, and without materializing a
    /// seeded param. Returns false (leaving `out` alone) when the values need f64 (an
    /// f64 literal tensor, integers); use [`ParamData::values_f64`] then.
    pub fn values_f32(&self, start: usize, out: &mut [f32]) -> bool {
        if let (Some(t), None) = (&self.0.transposed, self.0.tensor.get()) {
            t.gather(start, out.len(), |j, x| out[j] = x);
            return true;
        }
        if let (Some(c), None) = (&self.0.cols, self.0.tensor.get()) {
            // Float parts: each read succeeds (see `concat_columns`).
            c.segments(start, out.len(), |p, first, at, m| {
                p.values_f32(first, &mut out[at..at + m]);
            });
            return true;
        }
        if let (Some(s), None) = (&self.0.seeded, self.0.tensor.get()) {
            return s.fill_f32(start, out);
        }
        if let (Some(r), None) = (&self.0.raw, self.0.tensor.get()) {
            r.fill_f32(start, out);
            return true;
        }
        macro_rules! copy {
            ($a:expr, $f:expr) => {{
                match $a.as_slice() {
                    Some(sl) => {
                        for (o, x) in out.iter_mut().zip(&sl[start..]) {
                            *o = $f(*x);
                        }
                    }
                    None => {
                        for (o, x) in out.iter_mut().zip($a.iter().skip(start)) {
                            *o = $f(*x);
                        }
                    }
                }
                true
            }};
        }
        match self.tensor() {
            Tensor::F32(a) => copy!(a, |x: f32| x),
            Tensor::Bf16(a) => copy!(a, half::bf16::to_f32),
            Tensor::F16(a) => copy!(a, half::f16::to_f32),
            _ => false,
        }
    }
}

/// Fills `out` with a seeded param's values, in parallel over [`CHUNK`]-element chunks.
fn generate(s: &Seeded, out: &mut [f64]) {
    use rayon::prelude::*;
    out.par_chunks_mut(CHUNK)
        .enumerate()
        .for_each(|(c, chunk)| s.fill(c * CHUNK, chunk));
}

impl std::ops::Deref for ParamData {
    type Target = Tensor;
    fn deref(&self) -> &Tensor {
        self.tensor()
    }
}

impl From<Tensor> for ParamData {
    fn from(t: Tensor) -> ParamData {
        ParamData::new(t)
    }
}

impl PartialEq for ParamData {
    fn eq(&self, other: &ParamData) -> bool {
        if self.ptr_eq(other) {
            return true;
        }
        let lazy = !self.is_materialized() || !other.is_materialized();
        if let (Some(a), Some(b)) = (&self.0.cols, &other.0.cols)
            && lazy
            && (a.shape == b.shape && a.dtype == b.dtype)
            && a.parts.len() == b.parts.len()
            && a.parts
                .iter()
                .zip(&b.parts)
                .all(|(x, y)| x.shape() == y.shape())
        {
            return a.parts == b.parts;
        }
        match (&self.0.seeded, &other.0.seeded) {
            (Some(a), Some(b)) if lazy => a == b,
            _ => self.tensor() == other.tensor(),
        }
    }
}

impl fmt::Debug for ParamData {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0.seeded {
            Some(s) => write!(
                f,
                "ParamData(seeded {:?} {:?} {})",
                s.spec, s.shape, s.dtype
            ),
            None => match (&self.0.raw, self.0.tensor.get()) {
                _ if self.0.cols.is_some() && !self.is_materialized() => {
                    write!(f, "ParamData(columns {:?} {})", self.shape(), self.dtype())
                }
                (Some(r), None) => {
                    write!(f, "ParamData(raw {:?} {} bytes)", r.shape, r.bytes.len())
                }
                _ => write!(f, "ParamData({:?})", self.tensor()),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_bytes_decode_on_read_and_match_their_tensor() {
        let xs = [1.5f32, -2.0, 3.25e-3, f32::MIN_POSITIVE, 7.0, -0.0];
        for dtype in [DType::F32, DType::Bf16, DType::F16] {
            let bytes: Vec<u8> = match dtype {
                DType::F32 => xs.iter().flat_map(|x| x.to_le_bytes()).collect(),
                DType::Bf16 => xs
                    .iter()
                    .flat_map(|&x| numerics::f32_to_bf16(x).to_le_bytes())
                    .collect(),
                _ => xs
                    .iter()
                    .flat_map(|&x| numerics::f32_to_f16(x).to_le_bytes())
                    .collect(),
            };
            let p = ParamData::from_le_bytes(bytes::Bytes::from(bytes), dtype, &[2, 3]).unwrap();
            assert_eq!((p.shape(), p.dtype()), (&[2usize, 3][..], dtype));
            let (mut a, mut b) = (vec![0f32; 4], vec![0f64; 4]);
            assert!(p.values_f32(2, &mut a));
            p.values_f64(2, &mut b);
            assert!(
                !p.is_materialized(),
                "reading a slice must not decode the whole"
            );
            let t: Vec<f64> = p.tensor().to_f64().iter().copied().collect();
            assert_eq!(t[2..], b[..], "{dtype}");
            assert_eq!(a.iter().map(|&x| f64::from(x)).collect::<Vec<_>>(), b);
            assert_eq!(p.tensor().dtype(), dtype);
        }
        let bad = ParamData::from_le_bytes(bytes::Bytes::from(vec![0u8; 7]), DType::F32, &[2]);
        assert!(bad.unwrap_err().contains("needs 8 bytes, found 7"));
        assert!(ParamData::from_le_bytes(bytes::Bytes::new(), DType::I32, &[0]).is_err());
    }

    #[test]
    fn column_concatenation_streams_the_parts_values() {
        let spec = InitSpec::Normal {
            mean: 0.0,
            std: 0.02,
        };
        for dtype in [DType::Bf16, DType::F32] {
            let make = || -> Vec<ParamData> {
                [("q", 5), ("k", 3), ("v", 7)]
                    .iter()
                    .map(|&(n, w)| ParamData::seeded(spec, 9, n, &[4, w], dtype).unwrap())
                    .collect()
            };
            let parts = make();
            // One part already materialized, as a constant fold would leave it.
            let _ = parts[1].tensor();
            let cat = ParamData::concat_columns(&parts, dtype).unwrap();
            assert_eq!((cat.shape(), cat.dtype()), (&[4usize, 15][..], dtype));
            let views: Vec<_> = make().iter().map(|p| p.to_f64()).collect();
            let views: Vec<_> = views.iter().map(|a| a.view()).collect();
            let want: Vec<f64> = ndarray::concatenate(ndarray::Axis(1), &views)
                .unwrap()
                .as_standard_layout()
                .iter()
                .copied()
                .collect();
            for (start, len) in [(0, 60), (1, 59), (4, 3), (14, 2), (22, 30), (59, 1)] {
                let mut a = vec![0f32; len];
                let mut b = vec![0f64; len];
                assert!(cat.values_f32(start, &mut a));
                cat.values_f64(start, &mut b);
                assert_eq!(b, want[start..start + len], "{dtype} {start}");
                assert_eq!(a.iter().map(|&x| f64::from(x)).collect::<Vec<_>>(), b);
            }
            assert!(!cat.is_materialized() && !parts[0].is_materialized());
            let again = ParamData::concat_columns(&parts, dtype).unwrap();
            assert!(cat == again, "equal parts, equal params (compared lazily)");
            assert!(!parts[2].is_materialized());
            assert_eq!(cat.to_f64().iter().copied().collect::<Vec<_>>(), want);
        }
        let a = ParamData::seeded(spec, 1, "a", &[2, 3], DType::Bf16).unwrap();
        let b = ParamData::seeded(spec, 1, "b", &[3, 3], DType::Bf16).unwrap();
        let c = ParamData::seeded(spec, 1, "c", &[2, 3], DType::F32).unwrap();
        assert!(
            ParamData::concat_columns(&[a.clone(), b], DType::Bf16).is_none(),
            "K"
        );
        assert!(
            ParamData::concat_columns(&[a.clone(), c], DType::Bf16).is_none(),
            "dtype"
        );
        assert!(ParamData::concat_columns(&[a], DType::I32).is_none());
        assert!(ParamData::concat_columns(&[], DType::F32).is_none());
    }

    #[test]
    fn lazy_streamed_and_materialized_agree() {
        let spec = InitSpec::Normal {
            mean: 0.5,
            std: 0.02,
        };
        let p = ParamData::seeded(spec, 7, "w", &[300, 700], DType::F32).unwrap();
        assert!(!p.is_materialized());
        assert_eq!(p.shape(), &[300, 700]);
        let q = p.clone();
        let mut part = vec![0.0; 1000];
        p.values_f64(123_457, &mut part);
        assert!(!p.is_materialized(), "streaming must not materialize");
        let mut lazy32 = vec![0f32; 1000];
        assert!(p.values_f32(123_457, &mut lazy32));
        assert!(!p.is_materialized(), "streaming must not materialize");
        assert_eq!(
            lazy32.iter().map(|&x| f64::from(x)).collect::<Vec<_>>(),
            part
        );
        let t = q.tensor().to_f64();
        assert!(p.is_materialized() && p.ptr_eq(&q));
        let all: Vec<f64> = t.iter().copied().collect();
        assert_eq!(&all[123_457..124_457], &part[..]);
        let mut narrow = vec![0f32; 1000];
        assert!(p.values_f32(123_457, &mut narrow));
        assert_eq!(
            narrow.iter().map(|&x| f64::from(x)).collect::<Vec<_>>(),
            part
        );
        let mut again = vec![0.0; 1000];
        p.values_f64(123_457, &mut again);
        assert_eq!(part, again);
        assert!(ParamData::seeded(spec, 7, "i", &[2], DType::I32).is_err());
        let u = ParamData::seeded(
            InitSpec::Uniform {
                low: 2.0,
                high: 3.0,
            },
            1,
            "u",
            &[100],
            DType::Bf16,
        )
        .unwrap();
        let (mut a, mut b) = (vec![0f32; 100], vec![0f64; 100]);
        assert!(u.values_f32(0, &mut a));
        u.values_f64(0, &mut b);
        assert_eq!(a.iter().map(|&x| f64::from(x)).collect::<Vec<_>>(), b);
        assert!(u.to_f64().iter().all(|&x| (2.0..=3.0).contains(&x)));
    }
}
