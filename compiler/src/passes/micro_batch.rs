//! Micro-batching: depth-first over the batch for the per-image stretch of a CNN.
//!
//! A batched CNN writes every feature map of every layer to HBM and reads it back: at
//! ResNet-50 batch 16 the 56x56 maps of one layer are 6-26 MB, far more than SBUF. Run
//! per group of `g` images instead, the maps of one group are small and short-lived and
//! can stay in SBUF between kernels ([`crate::backend::resident`]). This pass splits a
//! leading chain of per-image ops (conv2d, pooling, elementwise ops whose other operands
//! are params without a batch axis) on the batch axis: it emits the chain once per group
//! of `g` images, reading a slice of the input (a view), params shared by reference
//! (`ParamData` is an `Arc`: no weight is copied), and concatenates the groups' results
//! on the batch axis into the value the rest of the graph reads. Kernel order then runs
//! group 0 through the whole chain, then group 1, ...
//!
//! Where to cut and how large a group is comes from a cost model over the chip config
//! ([`candidates`], [`gain_ns`]): each extra group re-reads the stretch's weights from HBM
//! and runs its kernels again (each with a pipeline fill), the concatenation copies the
//! cut value once more, and the kept maps' transfers become on-chip copies; in exchange
//! every map inside the stretch that fits in the resident region
//! ([`crate::backend::resident::budget`], with the live maps of one group at once) no
//! longer goes to HBM and back. The split that saves the most time wins; none when
//! nothing is saved, never at batch 1, and groups of at least two images.
//!
//! On by default (`CompileOptions::micro_batch`; `--no-micro-batch` turns it off).
//! ResNet-50 batch 16 on trn1 under `--auto-cast all`: layer 2 (and layer 3's first
//! block) in pairs of images, 5256 -> 5127 us on the simulator (docs/compiler.md,
//! Micro-batching).

use neuron_isa::ChipConfig;

use crate::backend::resident;
use crate::ir::{Graph, Op, ValueId};
use crate::options::CompileOptions;

/// A chosen split: nodes `start..nodes` (in the graph's node order), once per group of
/// `group` images.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Split {
    /// First node of the stretch.
    pub start: usize,
    /// End (exclusive) of the stretch.
    pub nodes: usize,
    /// Images per group.
    pub group: usize,
    /// The time the model says it saves, ns.
    pub gain_ns: f64,
}

/// Whether `op` computes each image of its batch from that image alone.
fn per_image(op: &Op) -> bool {
    matches!(
        op,
        Op::Conv2d { .. }
            | Op::MaxPool2d { .. }
            | Op::AvgPool2d { .. }
            | Op::Add
            | Op::Sub
            | Op::Mul
            | Op::Max
            | Op::Min
            | Op::Relu
            | Op::Sigmoid
            | Op::Tanh
            | Op::Silu
            | Op::Neg
            | Op::Abs
    )
}

/// Whether node `i` may join a stretch whose values so far are marked in `inside`: a
/// per-image op whose operands are values of the stretch or params with no batch axis,
/// with a `[batch, ..]` result of rank 4.
fn joins(g: &Graph, i: usize, inside: &[bool], batch: usize) -> bool {
    let n = &g.nodes[i];
    let Some(&out) = n.outputs.first() else {
        return false;
    };
    let os = &g.value(out).shape;
    per_image(&n.op)
        && os.len() == 4
        && os[0] == batch
        && n.inputs.iter().all(|&v| {
            let s = &g.value(v).shape;
            inside[v.index()]
                || (g.is_param(v)
                    && (!matches!(n.op, Op::Add | Op::Sub | Op::Mul | Op::Max | Op::Min)
                        || s.len() < 4
                        || s[0] == 1))
        })
}

/// Per value: the index of the last node that reads it (`usize::MAX` for a graph output,
/// `None` when nothing reads it).
fn last_uses(g: &Graph) -> Vec<Option<usize>> {
    let mut last = vec![None; g.values.len()];
    for (i, n) in g.nodes.iter().enumerate() {
        for &v in &n.inputs {
            last[v.index()] = Some(i);
        }
    }
    for &o in &g.outputs {
        last[o.index()] = Some(usize::MAX);
    }
    last
}

/// The values made by a run of nodes that later nodes or the outputs read, kept up to
/// date as the run grows by one node at its end (`grow(i)` with node `i`).
#[derive(Default)]
struct Escaping(std::collections::BTreeSet<ValueId>);

impl Escaping {
    fn grow(&mut self, g: &Graph, last: &[Option<usize>], i: usize) {
        self.0.retain(|v| last[v.index()].is_some_and(|l| l > i));
        for &o in &g.nodes[i].outputs {
            if last[o.index()].is_some_and(|l| l > i) {
                self.0.insert(o);
            }
        }
    }

    fn one(&self) -> Option<ValueId> {
        match self.0.len() {
            1 => self.0.first().copied(),
            _ => None,
        }
    }
}

/// Whether `v` is fused into its one reader's kernel (an elementwise op taking it as its
/// running operand: the relu after a conv, the residual add): a cut there would split a
/// kernel in two.
fn fused_into_reader(g: &Graph, v: ValueId) -> bool {
    let readers = g.users(v);
    let [r] = readers[..] else {
        return false;
    };
    let n = g.node(r);
    per_image(&n.op)
        && !matches!(
            n.op,
            Op::Conv2d { .. } | Op::MaxPool2d { .. } | Op::AvgPool2d { .. }
        )
        && n.inputs.first() == Some(&v)
}

/// Stretches that may be split, as `(a, k, s, f)`: nodes `a..k` are per-image ops over
/// the one value `s` (the graph's image input, or the one value nodes `0..a` pass on),
/// with a batch of at least 2, and pass exactly one value `f` (not a graph output) on.
fn stretches(g: &Graph) -> Vec<(usize, usize, ValueId, ValueId)> {
    let mut out = Vec::new();
    if !g.nodes.iter().any(|n| matches!(n.op, Op::Conv2d { .. })) {
        return out;
    }
    let last = last_uses(g);
    let mut prefix = Escaping::default();
    let mut inside = vec![false; g.values.len()];
    for a in 0..g.nodes.len() {
        if a > 0 {
            prefix.grow(g, &last, a - 1);
        }
        let s = if a == 0 {
            match g.nodes[0].inputs.first() {
                Some(&x) if g.is_input(x) => x,
                _ => continue,
            }
        } else {
            match prefix.one() {
                Some(s) if !g.is_output(s) => s,
                _ => continue,
            }
        };
        let shape = &g.value(s).shape;
        if shape.len() != 4 || shape[0] < 2 || fused_into_reader(g, s) {
            continue;
        }
        let batch = shape[0];
        inside[s.index()] = true;
        let mut run = Escaping::default();
        let mut k = a;
        while k < g.nodes.len() && joins(g, k, &inside, batch) {
            for &o in &g.nodes[k].outputs {
                inside[o.index()] = true;
            }
            run.grow(g, &last, k);
            k += 1;
            if let Some(f) = run.one()
                && !g.is_output(f)
                && !fused_into_reader(g, f)
            {
                out.push((a, k, s, f));
            }
        }
        // Reset the marks of this stretch for the next start.
        inside[s.index()] = false;
        for n in &g.nodes[a..k] {
            for &o in &n.outputs {
                inside[o.index()] = false;
            }
        }
    }
    out
}

/// Bytes per partition a `[N, C, H, W]` map of `g` images takes resident, channels on
/// partitions (`[C, g, H, W]`, rows of `g H W`).
fn group_footprint(shape: &[usize], g: usize, elem: u64, partitions: u64) -> u64 {
    let [_, c, h, w] = shape[..] else {
        return u64::MAX;
    };
    crate::backend::resident::row_block_bytes(c as u64, (g * h * w) as u64, elem, partitions)
}

/// What groups of `group` images keep in SBUF of the maps inside nodes `a..k`.
struct Kept {
    /// HBM bytes the kept maps no longer move (written once, read by each reader).
    bytes: u64,
    /// Elements per partition copied on chip: a kept map's producer writes it in place and
    /// 1x1 and unpadded readers read it in place, but a padded band or a pool's window is
    /// still copied into the reader's tile.
    copied: u64,
    /// Per value index: kept.
    kept: Vec<bool>,
    /// Every map that crosses a kernel boundary inside the stretch is kept.
    all: bool,
}

/// The maps inside nodes `a..k` (all but the frontier `f`) that groups of `group` images
/// keep in SBUF: a map is kept when it fits in the resident budget next to the maps kept
/// before it that are live at the same time (first fit in node order).
fn kept(
    g: &Graph,
    (a, k): (usize, usize),
    f: ValueId,
    group: usize,
    (elem, conv_elem): (u64, u64),
    cfg: &ChipConfig,
) -> Kept {
    let cap = resident::budget(cfg);
    let parts = u64::from(cfg.partitions);
    let batch = g.value(f).shape.first().copied().unwrap_or(1).max(1);
    let mut usage = vec![0u64; k];
    let (mut bytes, mut copied) = (0u64, 0u64);
    let mut is_kept = vec![false; g.values.len()];
    let mut all = true;
    for (i, n) in g.nodes.iter().enumerate().take(k).skip(a) {
        let Some(&v) = n.outputs.first() else {
            continue;
        };
        if v == f {
            continue;
        }
        let readers: Vec<usize> = (i + 1..k)
            .filter(|&j| g.nodes[j].inputs.contains(&v))
            .collect();
        let Some(&last) = readers.last() else {
            continue;
        };
        // An elementwise op that is the map's one reader fuses into its producer's
        // epilogue (the relu after a conv): no kernel boundary, nothing to keep.
        if readers.len() == 1
            && !matches!(
                g.nodes[last].op,
                Op::Conv2d { .. } | Op::MaxPool2d { .. } | Op::AvgPool2d { .. }
            )
            && g.nodes[last].inputs.first() == Some(&v)
        {
            continue;
        }
        // A map only convolutions read is stored in their operand type (`precision.rs`).
        let elem = if readers
            .iter()
            .all(|&j| matches!(g.nodes[j].op, Op::Conv2d { .. }))
        {
            elem.min(conv_elem)
        } else {
            elem
        };
        let shape = &g.value(v).shape;
        let fp = group_footprint(shape, group, elem, parts);
        // The map is live from the start of the kernel that writes it (the conv heading
        // the fused chain it ends): that kernel still reads its own inputs (a residual).
        let mut head = i;
        while head > a
            && let Some(&x) = g.nodes[head].inputs.first()
            && g.nodes[head - 1].outputs.first() == Some(&x)
            && fused_into_reader(g, x)
        {
            head -= 1;
        }
        if usage[head..=last]
            .iter()
            .all(|&u| u.saturating_add(fp) <= cap)
        {
            usage[head..=last].iter_mut().for_each(|u| *u += fp);
            let accesses = 1 + readers.len() as u64;
            bytes += shape.iter().product::<usize>() as u64 * elem * accesses;
            let copies = readers
                .iter()
                .filter(|&&j| match &g.nodes[j].op {
                    Op::Conv2d { pads, .. } => pads.iter().any(|&p| p > 0),
                    Op::MaxPool2d { .. } | Op::AvgPool2d { .. } => true,
                    _ => false,
                })
                .count() as u64;
            copied += fp / elem * (batch / group) as u64 * copies;
            is_kept[v.index()] = true;
        } else {
            all = false;
        }
    }
    Kept {
        bytes,
        copied,
        kept: is_kept,
        all,
    }
}

/// The time (ns) a split of nodes `a..k` into groups of `group` images saves, by the
/// first-order costs of trainium.md 2.3 and 3 read from the config (negative: it costs):
/// - saved: the HBM bytes of the maps kept in SBUF ([`kept`]) beyond those the whole
///   batch keeps, at the DMA bandwidth;
/// - each extra group reads the stretch's weights again, and the concatenation copies the
///   cut value once more (read and write), at the DMA bandwidth;
/// - the kept maps' loads by padded convs and pools become on-chip copies on VectorE and
///   GpSimd in turn, one element per cycle each (producers write kept maps in place, other
///   readers read them in place: `Builder::resident_in_place`);
/// - each extra kernel (one per conv and pool of the stretch, per extra group) whose input
///   map is not kept pays its pipeline's fill and drain: a first load and a last store
///   that overlap nothing, two DMA fixed latencies. A kernel reading a kept map starts on
///   its producer's rows in place.
#[allow(clippy::too_many_arguments)]
fn gain_ns(
    g: &Graph,
    (a, k): (usize, usize),
    f: ValueId,
    group: usize,
    (elem, weights_elem, weights): (u64, u64, u64),
    cfg: &ChipConfig,
) -> f64 {
    let batch = g.value(f).shape.first().copied().unwrap_or(1).max(1);
    let groups = batch.div_ceil(group) as f64;
    let bw = crate::backend::tiling::CostModel::new(cfg).dma_bandwidth();
    let whole = kept(g, (a, k), f, batch, (elem, weights_elem), cfg).bytes;
    let Kept {
        bytes,
        copied,
        kept: is_kept,
        all,
    } = kept(g, (a, k), f, group, (elem, weights_elem), cfg);
    // A group whose maps do not all stay on chip sends some through HBM after all, and
    // makes their convolutions pack taps or images (`conv::choose`), which keeps their
    // neighbours in HBM too: not a candidate (ResNet-50 batch 16 under `all`, trn1, layer
    // 1 through layer 3's first block: 3418 us in pairs, 4103 us in fours, whose 256-channel
    // 56x56 maps, 49 KiB per partition each, do not fit two at a time).
    if !all {
        return f64::NEG_INFINITY;
    }
    let fbytes = g.value(f).shape.iter().product::<usize>() as f64 * elem as f64;
    let kernels = g.nodes[a..k]
        .iter()
        .filter(|n| {
            matches!(
                n.op,
                Op::Conv2d { .. } | Op::MaxPool2d { .. } | Op::AvgPool2d { .. }
            ) && n.inputs.first().is_none_or(|v| !is_kept[v.index()])
        })
        .count() as f64;
    let copy_rate = cfg.vector_clock_ghz + cfg.gpsimd_clock_ghz;
    (bytes as f64 - whole as f64) / bw
        - (groups - 1.0) * weights as f64 / bw
        - 2.0 * fbytes / bw
        - copied as f64 / copy_rate.max(1e-3)
        - (groups - 1.0) * kernels * 2.0 * cfg.dma_fixed_latency_ns
}

/// Every split the model considers, with the time it says each saves ([`gain_ns`]).
/// Groups hold at least two images: convolutions with few channels pack two or more
/// images per matmul (`lower/conv_ipack.rs`), which a group of one cannot.
pub fn candidates(g: &Graph, opts: &CompileOptions) -> Vec<Split> {
    let cfg = &opts.target;
    // Maps are stored in the reduced type under `all`, weights in the matmul type.
    let wsize = opts.matmul_dtype().size();
    let elem = match opts.auto_cast {
        crate::options::AutoCast::All => opts.auto_cast_type.dtype().size(),
        _ => 4,
    };
    let mut out = Vec::new();
    // Not from the graph's input: the first conv reads it from HBM whatever the group, so
    // a group keeps nothing there, and per group it only loses its overlap with the other
    // groups' kernels (ResNet-50 batch 16, `all`, trn1, layer 1 through layer 3's first
    // block in pairs: 3792 us; the same from the stem conv: 4265 us, the stem eight
    // times at 122 us instead of once at 550 us).
    for (a, k, s, f) in stretches(g).into_iter().filter(|&(a, ..)| a > 0) {
        let batch = g.value(s).shape[0];
        let mut weights = 0u64;
        let mut seen = vec![false; g.values.len()];
        for n in &g.nodes[a..k] {
            for &v in &n.inputs {
                if g.is_param(v) && !seen[v.index()] {
                    seen[v.index()] = true;
                    weights += g.value(v).shape.iter().product::<usize>() as u64 * wsize;
                }
            }
        }
        for group in (2..batch).filter(|d| batch % d == 0) {
            out.push(Split {
                start: a,
                nodes: k,
                group,
                gain_ns: gain_ns(g, (a, k), f, group, (elem, wsize, weights), cfg),
            });
        }
    }
    out
}

/// The split that saves the most time, if any saves.
pub fn choose(g: &Graph, opts: &CompileOptions) -> Option<Split> {
    candidates(g, opts)
        .into_iter()
        .filter(|s| s.gain_ns > 0.0)
        .fold(None, |best: Option<Split>, s| match best {
            Some(b) if b.gain_ns >= s.gain_ns => Some(b),
            _ => Some(s),
        })
}

/// Rewrites `g` with `split`: nodes `split.start..split.nodes` once per group of images,
/// the groups' results concatenated on axis 0 into the value the rest reads. `None` when
/// the graph does not have that shape (nothing is changed then).
pub fn apply(g: &Graph, split: Split) -> Option<Graph> {
    let (a, k) = (split.start, split.nodes);
    let &(_, _, x, f) = stretches(g)
        .iter()
        .find(|&&(sa, sk, _, _)| (sa, sk) == (a, k))?;
    let batch = g.value(x).shape[0];
    if split.group == 0 || split.group >= batch {
        return None;
    }
    let mut h = Graph::new(g.name.clone());
    h.seed = g.seed;
    let mut map: Vec<Option<ValueId>> = vec![None; g.values.len()];
    for &i in &g.inputs {
        let v = g.value(i);
        map[i.index()] = Some(h.add_input(v.name.clone(), v.shape.clone(), v.dtype).ok()?);
    }
    for &p in &g.params {
        let v = g.value(p);
        let id = h
            .add_param_decl(v.name.clone(), v.shape.clone(), v.dtype, v.data.clone())
            .ok()?;
        map[p.index()] = Some(id);
    }
    let copy = |h: &mut Graph, map: &mut Vec<Option<ValueId>>, n: &crate::ir::Node| {
        let ins: Option<Vec<ValueId>> = n.inputs.iter().map(|v| map[v.index()]).collect();
        let o = *n.outputs.first()?;
        let id = h
            .add_node(n.name.clone(), n.op.clone(), &ins?, g.value(o).name.clone())
            .ok()?;
        map[o.index()] = Some(id);
        Some(())
    };
    for n in &g.nodes[..a] {
        copy(&mut h, &mut map, n)?;
    }
    let mut parts = Vec::new();
    let mut start = 0;
    let mut gi = 0;
    while start < batch {
        let end = (start + split.group).min(batch);
        let xname = &g.value(x).name;
        let slice = Op::Slice {
            axes: vec![0],
            starts: vec![start as i64],
            ends: vec![end as i64],
            steps: vec![1],
        };
        let xi = h
            .add_node(
                format!("{xname}.mb{gi}"),
                slice,
                &[map[x.index()]?],
                format!("{xname}.mb{gi}"),
            )
            .ok()?;
        let mut local = map.clone();
        local[x.index()] = Some(xi);
        for n in &g.nodes[a..k] {
            let ins: Option<Vec<ValueId>> = n.inputs.iter().map(|v| local[v.index()]).collect();
            let o = *n.outputs.first()?;
            let id = h
                .add_node(
                    format!("{}.mb{gi}", n.name),
                    n.op.clone(),
                    &ins?,
                    format!("{}.mb{gi}", g.value(o).name),
                )
                .ok()?;
            local[o.index()] = Some(id);
        }
        parts.push(local[f.index()]?);
        start = end;
        gi += 1;
    }
    let fname = g.value(f).name.clone();
    let cat = h
        .add_node(
            format!("{fname}.mb_concat"),
            Op::Concat { axis: 0 },
            &parts,
            fname,
        )
        .ok()?;
    map[f.index()] = Some(cat);
    for n in &g.nodes[k..] {
        copy(&mut h, &mut map, n)?;
    }
    for &o in &g.outputs {
        h.add_output(map[o.index()]?).ok()?;
    }
    Some(h)
}

/// Splits `g` when [`choose`] finds a saving; returns the split made.
pub fn run(g: &mut Graph, opts: &CompileOptions) -> Option<Split> {
    let split = choose(g, opts)?;
    let h = apply(g, split)?;
    *g = h;
    Some(split)
}
