//! Convolutional networks on the simulated chip: conv2d (implicit GEMM on TensorE),
//! pooling (VectorE), batch_norm folding, against the reference executor and the
//! onnxruntime goldens; a reduced ResNet at fp32, bf16 and int8; property tests over
//! random shapes, strides, paddings, dilations and groups, fused vs unfused.

#![allow(clippy::unwrap_used)] // Tests may unwrap: a panic is a test failure.

use super::backend_harness::{Precision, check, compile_and_check, compile_and_check_on, simulate};
use super::fusion::randn;
use neuron_sim::SimOptions;
use neuronc::driver::compile;
use neuronc::frontend::load_model;
use neuronc::ir::{DType, Graph, Op, Tensor, ValueId};
use neuronc::npy::{read_npy, sanitize_file_name};
use neuronc::reference::random_inputs;
use proptest::prelude::*;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

fn fixture(case: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(case)
}

/// Compiles an onnxruntime golden fixture (fp32), simulates it on the fixture's inputs and
/// checks every output against onnxruntime's and against the reference executor.
fn golden_on_chip(case: &str) {
    let dir = fixture(case);
    let g = load_model(&dir.join("model.json")).unwrap();
    let mut inputs = BTreeMap::new();
    for &id in &g.inputs {
        let name = &g.value(id).name;
        let file = dir
            .join("inputs")
            .join(format!("{}.npy", sanitize_file_name(name)));
        inputs.insert(name.clone(), read_npy(&file).unwrap());
    }
    let (_, outs) = compile_and_check_on(&g, Precision::Fp32.options(), Precision::Fp32, &inputs);
    for (name, got) in &outs {
        let file = dir
            .join("expected")
            .join(format!("{}.npy", sanitize_file_name(name)));
        let want: Vec<f64> = read_npy(&file).unwrap().to_f64().iter().copied().collect();
        check(
            Precision::Fp32,
            &format!("{case}/{name} vs onnxruntime"),
            got,
            &want,
        );
    }
}

#[test]
fn resnet_block_golden_runs_on_the_chip() {
    golden_on_chip("resnet_block");
}

#[test]
fn strided_grouped_dilated_convs_and_pools_golden_run_on_the_chip() {
    golden_on_chip("conv_pool");
}

#[test]
fn resnet_block_example_compiles_and_simulates() {
    let g = super::backend_harness::load_example("resnet_block.json");
    let c = compile(&g, &Precision::Bf16.options()).unwrap();
    // Both convs are TensorE kernels with batch_norm, residual and relu fused in: two
    // kernels in all, no standalone batch_norm or elementwise kernel.
    assert_eq!(
        c.summary.kernels.get("conv2d").copied(),
        Some(2),
        "{:?}",
        c.summary.kernels
    );
    assert_eq!(c.summary.total_kernels(), 2, "{:?}", c.summary.kernels);
    let inputs = random_inputs(&g);
    let opts = SimOptions {
        timing_only: true,
        ..SimOptions::default()
    };
    let (_, stats) = simulate(&c.artifact, &inputs, opts);
    assert!(stats.total_ps > 0);
}

fn param(g: &mut Graph, name: &str, shape: &[usize], std: f64) -> ValueId {
    g.add_param(name, randn(g.seed, name, shape, std)).unwrap()
}

fn positive(g: &mut Graph, name: &str, n: usize) -> ValueId {
    let t = randn(g.seed, name, &[n], 0.2)
        .to_f64()
        .mapv(|v| 1.0 + v.abs());
    g.add_param(name, Tensor::from_f64(DType::F32, t)).unwrap()
}

/// `relu(batch_norm(conv(x)))` with seeded statistics.
#[allow(clippy::too_many_arguments)]
pub(crate) fn conv_bn(
    g: &mut Graph,
    name: &str,
    x: ValueId,
    cin: usize,
    cout: usize,
    k: usize,
    stride: usize,
    relu: bool,
) -> ValueId {
    let w = param(
        g,
        &format!("{name}.w"),
        &[cout, cin, k, k],
        (2.0 / (cin * k * k) as f64).sqrt(),
    );
    let scale = positive(g, &format!("{name}.bn_scale"), cout);
    let bias = param(g, &format!("{name}.bn_bias"), &[cout], 0.1);
    let mean = param(g, &format!("{name}.bn_mean"), &[cout], 0.1);
    let var = positive(g, &format!("{name}.bn_var"), cout);
    let p = k / 2;
    let c = g
        .add_node(
            name,
            Op::Conv2d {
                strides: [stride, stride],
                pads: [p, p, p, p],
                dilations: [1, 1],
                groups: 1,
            },
            &[x, w],
            format!("{name}.out"),
        )
        .unwrap();
    let b = g
        .add_node(
            format!("{name}.bn"),
            Op::BatchNorm { epsilon: 1e-5 },
            &[c, scale, bias, mean, var],
            format!("{name}.bn_out"),
        )
        .unwrap();
    if relu {
        g.add_node(
            format!("{name}.relu"),
            Op::Relu,
            &[b],
            format!("{name}.act"),
        )
        .unwrap()
    } else {
        b
    }
}

/// A bottleneck: 1x1 reduce, 3x3 (stride), 1x1 expand, projection shortcut when the shape
/// changes, residual add, relu.
pub(crate) fn bottleneck(
    g: &mut Graph,
    name: &str,
    x: ValueId,
    cin: usize,
    mid: usize,
    cout: usize,
    stride: usize,
) -> ValueId {
    let a = conv_bn(g, &format!("{name}.a"), x, cin, mid, 1, 1, true);
    let b = conv_bn(g, &format!("{name}.b"), a, mid, mid, 3, stride, true);
    let c = conv_bn(g, &format!("{name}.c"), b, mid, cout, 1, 1, false);
    let short = if stride != 1 || cin != cout {
        conv_bn(g, &format!("{name}.proj"), x, cin, cout, 1, stride, false)
    } else {
        x
    };
    let s = g
        .add_node(
            format!("{name}.add"),
            Op::Add,
            &[c, short],
            format!("{name}.sum"),
        )
        .unwrap();
    g.add_node(format!("{name}.relu"), Op::Relu, &[s], format!("{name}.y"))
        .unwrap()
}

/// A reduced ResNet-50: the 7x7 stride-2 stem with batch_norm and relu, a 3x3 stride-2
/// max pool, three bottlenecks (the first two with projection shortcuts, one strided),
/// global average pooling and a linear classifier.
pub(crate) fn mini_resnet(batch: usize, image: usize) -> Graph {
    let mut g = Graph::new("mini_resnet");
    g.seed = 11;
    let x = g
        .add_input("image", [batch, 3, image, image], DType::F32)
        .unwrap();
    let s = conv_bn(&mut g, "stem", x, 3, 16, 7, 2, true);
    let p = g
        .add_node(
            "pool",
            Op::MaxPool2d {
                kernel: [3, 3],
                strides: [2, 2],
                pads: [1, 1, 1, 1],
            },
            &[s],
            "pooled",
        )
        .unwrap();
    let b1 = bottleneck(&mut g, "l1", p, 16, 8, 32, 1);
    let b2 = bottleneck(&mut g, "l2", b1, 32, 16, 64, 2);
    let b3 = bottleneck(&mut g, "l3", b2, 64, 16, 64, 1);
    let gap = g.add_node("gap", Op::GlobalAvgPool, &[b3], "gap").unwrap();
    let flat = g
        .add_node(
            "flatten",
            Op::Reshape {
                shape: vec![batch as i64, 64],
            },
            &[gap],
            "flat",
        )
        .unwrap();
    let w = param(&mut g, "fc.w", &[64, 10], 0.125);
    let fc = g
        .add_node(
            "fc",
            Op::MatMul { transpose_b: false },
            &[flat, w],
            "logits",
        )
        .unwrap();
    g.add_output(fc).unwrap();
    g
}

#[test]
fn reduced_resnet_matches_the_reference_at_fp32() {
    let g = mini_resnet(2, 32);
    let (c, _) = compile_and_check(&g, Precision::Fp32);
    // Every batch_norm folded away: convs, one pool, the reduction and the classifier.
    let k = &c.summary.kernels;
    assert_eq!(k.get("conv2d").copied(), Some(12), "{k:?}");
    assert!(!k.contains_key("elementwise"), "{k:?}");
}

#[test]
fn reduced_resnet_compiles_and_simulates_at_bf16_and_int8() {
    let g = mini_resnet(2, 32);
    compile_and_check(&g, Precision::Bf16);
    compile_and_check(&g, Precision::Int8);
}

#[test]
fn standalone_batch_norm_runs_on_vector_engine() {
    // batch_norm after a pool (nothing to fold into) becomes an elementwise kernel.
    let mut g = Graph::new("bn_after_pool");
    g.seed = 5;
    let x = g.add_input("x", [2, 6, 8, 8], DType::F32).unwrap();
    let p = g
        .add_node(
            "pool",
            Op::AvgPool2d {
                kernel: [2, 2],
                strides: [2, 2],
                pads: [0, 0, 0, 0],
                count_include_pad: false,
            },
            &[x],
            "p",
        )
        .unwrap();
    let scale = positive(&mut g, "s", 6);
    let bias = param(&mut g, "b", &[6], 0.5);
    let mean = param(&mut g, "m", &[6], 0.5);
    let var = positive(&mut g, "v", 6);
    let y = g
        .add_node(
            "bn",
            Op::BatchNorm { epsilon: 1e-3 },
            &[p, scale, bias, mean, var],
            "y",
        )
        .unwrap();
    g.add_output(y).unwrap();
    let (c, _) = compile_and_check(&g, Precision::Fp32);
    assert!(
        c.summary.kernels.contains_key("avg_pool2d"),
        "{:?}",
        c.summary.kernels
    );
}

/// One convolution with a fused bias, residual and relu epilogue.
#[allow(clippy::too_many_arguments)]
pub(crate) fn conv_graph(
    n: usize,
    cin: usize,
    cout: usize,
    hw: [usize; 2],
    k: [usize; 2],
    stride: [usize; 2],
    pads: [usize; 4],
    dil: [usize; 2],
    groups: usize,
    seed: u64,
) -> Option<Graph> {
    let oh = (hw[0] + pads[0] + pads[2]).checked_sub(dil[0] * (k[0] - 1) + 1)? / stride[0] + 1;
    let ow = (hw[1] + pads[1] + pads[3]).checked_sub(dil[1] * (k[1] - 1) + 1)? / stride[1] + 1;
    let mut g = Graph::new("conv");
    g.seed = seed;
    let x = g
        .add_input("x", [n, cin, hw[0], hw[1]], DType::F32)
        .unwrap();
    let r = g.add_input("r", [n, cout, oh, ow], DType::F32).unwrap();
    let cg = cin / groups;
    let w = param(
        &mut g,
        "w",
        &[cout, cg, k[0], k[1]],
        1.0 / ((cg * k[0] * k[1]) as f64).sqrt(),
    );
    let b = param(&mut g, "b", &[cout], 0.5);
    let c = g
        .add_node(
            "conv",
            Op::Conv2d {
                strides: stride,
                pads,
                dilations: dil,
                groups,
            },
            &[x, w, b],
            "c",
        )
        .unwrap();
    let s = g.add_node("res", Op::Add, &[c, r], "s").unwrap();
    let y = g.add_node("relu", Op::Relu, &[s], "y").unwrap();
    g.add_output(y).unwrap();
    Some(g)
}

fn fused_matches_unfused(g: &Graph, kind: &str) {
    let inputs = random_inputs(g);
    let (fused, f) = compile_and_check_on(g, Precision::Fp32.options(), Precision::Fp32, &inputs);
    let mut opts = Precision::Fp32.options();
    opts.fuse = false;
    let (unfused, u) = compile_and_check_on(g, opts, Precision::Fp32, &inputs);
    assert!(
        fused.summary.kernels.contains_key(kind),
        "{:?}",
        fused.summary.kernels
    );
    assert!(fused.summary.total_kernels() < unfused.summary.total_kernels());
    for (name, want) in &u {
        check(
            Precision::Fp32,
            &format!("{name} fused vs unfused"),
            &f[name],
            want,
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 12, ..ProptestConfig::default() })]

    #[test]
    fn conv_on_chip_matches_reference_fused_and_unfused(
        n in 1usize..3,
        cpg in 1usize..5,
        opg in 1usize..5,
        groups_kind in 0usize..3,
        h in 3usize..11,
        w in 3usize..11,
        kh in 1usize..4,
        kw in 1usize..4,
        sh in 1usize..3,
        sw in 1usize..3,
        pads in proptest::array::uniform4(0usize..3),
        dh in 1usize..3,
        dw in 1usize..3,
        seed in 0u64..1000,
    ) {
        // groups: 1, 2, or depthwise (one input channel per group).
        let (cin, cout, groups) = match groups_kind {
            0 => (cpg, opg, 1),
            1 => (2 * cpg, 2 * opg, 2),
            _ => (3, 3 * opg, 3),
        };
        if let Some(g) = conv_graph(
            n, cin, cout, [h, w], [kh, kw], [sh, sw], pads, [dh, dw], groups, seed,
        ) {
            fused_matches_unfused(&g, "conv2d");
        }
    }

    #[test]
    fn image_packed_conv_matches_reference_fused_and_unfused(
        n in 2usize..7,
        cin_kind in 0usize..3,
        wide in proptest::bool::ANY,
        h in 24usize..30,
        w in 21usize..28,
        k in 1usize..6,
        pads in proptest::array::uniform4(0usize..3),
        dh in 1usize..3,
        seed in 0u64..1000,
    ) {
        // Few input channels and 32 or 64 outputs, tiles of whole rows of one image: the
        // tiler packs images on partitions (several per matmul) whenever some kernel
        // column reads inside the image for every output column and the batch fills at
        // least two matmuls' worth of images.
        let cin = [5, 7, 16][cin_kind];
        let cout = if wide { 64 } else { 32 };
        if let Some(g) = conv_graph(
            n, cin, cout, [h, w], [k, k], [1, 1], pads, [dh, 1], 1, seed,
        ) {
            let t = &conv_tilings(&g, &Precision::Fp32.options())[0];
            if n >= 4 && k >= 2 && pads[1] + pads[3] < k {
                prop_assert!(t.ipack > 1, "{t}");
            }
            if t.ipack > 1 {
                prop_assert!(t.ipack * cin <= t.block, "{t}");
            }
            fused_matches_unfused(&g, "conv2d");
        }
    }

    #[test]
    fn pooling_on_chip_matches_reference_fused_and_unfused(
        n in 1usize..3,
        c in 1usize..6,
        h in 2usize..12,
        w in 2usize..12,
        kh in 1usize..4,
        kw in 1usize..4,
        sh in 1usize..3,
        sw in 1usize..3,
        pads in proptest::array::uniform4(0usize..3),
        kind in 0usize..3,
        seed in 0u64..1000,
    ) {
        let pads = [pads[0].min(kh - 1), pads[1].min(kw - 1), pads[2].min(kh - 1), pads[3].min(kw - 1)];
        if h + pads[0] + pads[2] < kh || w + pads[1] + pads[3] < kw {
            return Ok(());
        }
        let mut g = Graph::new("pool");
        g.seed = seed;
        let x = g.add_input("x", [n, c, h, w], DType::F32).unwrap();
        let (kernel, strides) = ([kh, kw], [sh, sw]);
        let op = match kind {
            0 => Op::MaxPool2d { kernel, strides, pads },
            k => Op::AvgPool2d { kernel, strides, pads, count_include_pad: k == 2 },
        };
        let p = g.add_node("pool", op, &[x], "p").unwrap();
        let y = g.add_node("act", Op::Tanh, &[p], "y").unwrap();
        g.add_output(y).unwrap();
        let name = if kind == 0 { "max_pool2d" } else { "avg_pool2d" };
        fused_matches_unfused(&g, name);
    }
}

/// A model with one NCHW input `x: [1, 4, 8, 8]`, weights `w: [8, 4, 3, 3]` and one node.
fn conv_model(node: &str) -> String {
    format!(
        r#"{{
  "name": "t",
  "inputs": [{{"name": "x", "shape": [1, 4, 8, 8]}}],
  "params": [{{"name": "w", "shape": [8, 4, 3, 3], "init": "ones"}},
             {{"name": "wg", "shape": [6, 4, 3, 3], "init": "ones"}},
             {{"name": "big", "shape": [8, 4, 9, 9], "init": "ones"}}],
  "nodes": [{node}],
  "outputs": ["y"]
}}"#
    )
}

fn conv_err(node: &str) -> String {
    match neuronc::frontend::parse_model(&conv_model(node), Path::new(".")) {
        Ok(g) => panic!("expected an error, got a valid graph:\n{g}"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn bad_convolutions_and_pools_are_refused_naming_the_node() {
    let m = conv_err(r#"{"name": "c", "op": "conv2d", "inputs": ["x", "big"], "outputs": ["y"]}"#);
    assert!(
        m.contains("node 'c'")
            && m.contains("kernel 9x9")
            && m.contains("does not fit input [1,4,8,8]"),
        "{m}"
    );
    let m = conv_err(
        r#"{"name": "c", "op": "conv2d", "inputs": ["x", "w"], "outputs": ["y"], "attrs": {"strides": [0, 1]}}"#,
    );
    assert!(
        m.contains("nodes[0].attrs.strides") && m.contains("node 'c'"),
        "{m}"
    );
    let m = conv_err(
        r#"{"name": "c", "op": "conv2d", "inputs": ["x", "wg"], "outputs": ["y"], "attrs": {"groups": 4}}"#,
    );
    assert!(
        m.contains("nodes[0].attrs.groups") && m.contains("groups 4 must divide"),
        "{m}"
    );
    let m = conv_err(
        r#"{"name": "c", "op": "conv2d", "inputs": ["x", "w"], "outputs": ["y"], "attrs": {"groups": 2}}"#,
    );
    assert!(m.contains("expects 4 input channels per group"), "{m}");
    let m = conv_err(
        r#"{"name": "p", "op": "max_pool2d", "inputs": ["x"], "outputs": ["y"], "attrs": {"kernel": [2, 2], "pads": [2, 0, 0, 0]}}"#,
    );
    assert!(
        m.contains("nodes[0].attrs.pads") && m.contains("smaller than the kernel"),
        "{m}"
    );
    let m = conv_err(
        r#"{"name": "p", "op": "avg_pool2d", "inputs": ["x"], "outputs": ["y"], "attrs": {"kernel": [9, 1]}}"#,
    );
    assert!(m.contains("does not fit input"), "{m}");
    // Absurd padding: the output would exceed the tensor size limit; refused before
    // anything is allocated.
    let m = conv_err(
        r#"{"name": "c", "op": "conv2d", "inputs": ["x", "w"], "outputs": ["y"], "attrs": {"pads": [100000, 100000, 100000, 100000]}}"#,
    );
    assert!(m.contains("node 'c'") && m.contains("limit"), "{m}");
}

#[test]
fn a_convolution_too_big_for_sbuf_is_a_compile_error_naming_the_kernel() {
    // 3x3 weights of 2048 -> 2048 channels: 2048/128 channel tiles x 9 taps x 2048 outputs
    // per partition is far more than SBUF holds; refused with the sizes, no panic.
    let mut g = Graph::new("huge_conv");
    let x = g.add_input("x", [1, 2048, 3, 3], DType::F32).unwrap();
    let w = g
        .add_param("w", Tensor::zeros(DType::F32, &[2048, 2048, 3, 3]))
        .unwrap();
    let y = g
        .add_node(
            "wide",
            Op::Conv2d {
                strides: [1, 1],
                pads: [1, 1, 1, 1],
                dilations: [1, 1],
                groups: 1,
            },
            &[x, w],
            "y",
        )
        .unwrap();
    g.add_output(y).unwrap();
    let e = compile(&g, &Precision::Fp32.options())
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("wide") && e.contains("sbuf bytes per partition"),
        "{e}"
    );
}

/// The conv tilings of `g` on trn1: `(kernel rows per matmul, partitions per block)`.
fn conv_packing(g: &Graph) -> Vec<(usize, usize)> {
    use neuronc::backend::tiling::{Tiling, plan};
    let kg =
        neuronc::passes::run_middle_end(g, &Precision::Bf16.options(), &mut |_, _| {}).unwrap();
    plan(&kg, &neuron_isa::ChipConfig::trn1())
        .unwrap()
        .into_iter()
        .filter_map(|p| match p.tiling {
            Tiling::Conv(t) => Some((t.pack, t.block)),
            _ => None,
        })
        .collect()
}

#[test]
fn narrow_convolutions_stack_kernel_rows_on_partitions() {
    // A 64-channel 3x3 conv reading the graph input stacks two kernel rows (blocks of 64
    // partitions); one reading a map that fits the resident region reads it in place
    // unstacked (stacking shifts the band onto other partitions, which would send the map
    // through HBM); the 3-channel 7x7 stem stacks four (blocks of 32: with its fp32 pixels
    // on few DMA engines the cost model prefers this to stacking every (channel, kernel
    // row), see the stem test); 1x1 convs and wide layers nothing.
    let g = super::backend_harness::load_example("resnet_block.json");
    assert_eq!(conv_packing(&g), [(2, 64), (1, 0)]);
    let packs = conv_packing(&mini_resnet(1, 32));
    assert_eq!(packs[0], (4, 32), "{packs:?}");
    // The bottlenecks' small maps all fit: every other conv is unstacked.
    assert!(packs[1..].iter().all(|&p| p == (1, 0)), "{packs:?}");
    assert_eq!(packs.len(), 12, "{packs:?}");
}

#[test]
fn reduced_resnet_under_auto_cast_all_stores_bf16_activations_within_tolerance() {
    use neuronc::options::AutoCast;
    let g = mini_resnet(2, 32);
    let mut opts = Precision::Bf16.options();
    opts.auto_cast = AutoCast::All;
    let kg = neuronc::passes::run_middle_end(&g, &opts, &mut |_, _| {}).unwrap();
    let bf16_maps = kg
        .tensors
        .iter()
        .filter(|t| t.kind == neuron_isa::TensorKind::Scratch && t.dtype == neuron_isa::Dtype::Bf16)
        .count();
    assert!(bf16_maps >= 10, "{kg}");
    super::backend_harness::compile_and_check_with(&g, opts, Precision::Bf16);
}

/// The conv tilings of `g` on trn1 under `opts`.
fn conv_tilings(
    g: &Graph,
    opts: &neuronc::options::CompileOptions,
) -> Vec<neuronc::backend::lower::conv::ConvTiling> {
    use neuronc::backend::tiling::{Tiling, plan};
    let kg = neuronc::passes::run_middle_end(g, opts, &mut |_, _| {}).unwrap();
    plan(&kg, &neuron_isa::ChipConfig::trn1())
        .unwrap()
        .into_iter()
        .filter_map(|p| match p.tiling {
            Tiling::Conv(t) => Some(t),
            _ => None,
        })
        .collect()
}

#[test]
fn halo_free_bands_match_the_reference_in_row_bands_and_image_batches() {
    // 40x36 images (row bands of one image, several PSUM tiles per transfer), a padded
    // 3x3 over 80 channels (halo-free), the same over 8 channels (kernel rows stacked in
    // blocks: zero halo rows, column padding by per-tap column ranges), and 6x6 images
    // (several images per transfer).
    let cases = [
        (3, 80, 16, [40, 36], [3, 3], [1, 1], [1, 1, 1, 1], true),
        (2, 8, 8, [40, 36], [3, 3], [1, 1], [1, 1, 1, 1], false),
        (30, 80, 16, [6, 6], [3, 3], [1, 1], [1, 1, 1, 1], true),
    ];
    for (n, cin, cout, hw, k, s, pads, full_h) in cases {
        let g = conv_graph(n, cin, cout, hw, k, s, pads, [1, 1], 1, 7).unwrap();
        let t = &conv_tilings(&g, &Precision::Fp32.options())[0];
        assert!(t.full_w, "{t}");
        assert_eq!(t.full_h, full_h, "{t}");
        if hw == [6, 6] {
            assert!(t.timg > t.images, "{t}");
        }
        fused_matches_unfused(&g, "conv2d");
    }
}

#[test]
fn conv_to_conv_activations_are_stored_channel_major() {
    let g = mini_resnet(2, 32);
    let kg =
        neuronc::passes::run_middle_end(&g, &Precision::Bf16.options(), &mut |_, _| {}).unwrap();
    let maps: Vec<_> = kg
        .tensors
        .iter()
        .filter(|t| t.kind == neuron_isa::TensorKind::Scratch && t.shape.len() == 4)
        .collect();
    // Conv-to-conv maps are [C, N, H, W] (N = 2 second); the stem's output, read by the
    // max pool, stays NCHW.
    assert!(maps.iter().filter(|t| t.shape[1] == 2).count() >= 8, "{kg}");
    assert!(maps.iter().any(|t| t.shape[0] == 2), "{kg}");
    // And the whole network still matches the reference at fp32.
    compile_and_check(&g, Precision::Fp32);
}

#[test]
fn global_pooling_folds_many_planes_per_partition_and_matches_the_reference() {
    use neuronc::backend::tiling::{Tiling, plan};
    let mut g = Graph::new("gpool");
    g.seed = 3;
    let x = g.add_input("x", [4, 64, 7, 7], DType::F32).unwrap();
    let a = g
        .add_node(
            "gap",
            Op::AvgPool2d {
                kernel: [7, 7],
                strides: [1, 1],
                pads: [0; 4],
                count_include_pad: true,
            },
            &[x],
            "a",
        )
        .unwrap();
    let m = g
        .add_node(
            "gmp",
            Op::MaxPool2d {
                kernel: [7, 7],
                strides: [1, 1],
                pads: [0; 4],
            },
            &[x],
            "m",
        )
        .unwrap();
    g.add_output(a).unwrap();
    g.add_output(m).unwrap();
    let kg =
        neuronc::passes::run_middle_end(&g, &Precision::Fp32.options(), &mut |_, _| {}).unwrap();
    let globals: Vec<usize> = plan(&kg, &neuron_isa::ChipConfig::trn1())
        .unwrap()
        .into_iter()
        .filter_map(|p| match p.tiling {
            Tiling::Pool(t) => Some(t.global),
            _ => None,
        })
        .collect();
    // 256 planes: 2 per partition.
    assert_eq!(globals, [2, 2]);
    compile_and_check(&g, Precision::Fp32);
}

#[test]
fn a_map_read_only_by_a_max_pool_is_stored_in_the_pools_type() {
    // conv -> max pool -> conv under auto-cast matmult: the pool's output feeds only a
    // conv (bf16 on TensorE), so it is stored bf16, and then so is the first conv's output
    // (rounding is monotonic: the pool's result is the same bits).
    let mut g = Graph::new("stem");
    g.seed = 5;
    let x = g.add_input("x", [2, 3, 16, 16], DType::F32).unwrap();
    let w1 = param(&mut g, "w1", &[8, 3, 3, 3], 0.3);
    let w2 = param(&mut g, "w2", &[8, 8, 1, 1], 0.3);
    let conv = |strides, pads| Op::Conv2d {
        strides,
        pads,
        dilations: [1, 1],
        groups: 1,
    };
    let c1 = g
        .add_node("c1", conv([1, 1], [1, 1, 1, 1]), &[x, w1], "c1")
        .unwrap();
    let p = g
        .add_node(
            "pool",
            Op::MaxPool2d {
                kernel: [3, 3],
                strides: [2, 2],
                pads: [1, 1, 1, 1],
            },
            &[c1],
            "p",
        )
        .unwrap();
    let c2 = g
        .add_node("c2", conv([1, 1], [0, 0, 0, 0]), &[p, w2], "c2")
        .unwrap();
    g.add_output(c2).unwrap();
    let opts = Precision::Bf16.options();
    let kg = neuronc::passes::run_middle_end(&g, &opts, &mut |_, _| {}).unwrap();
    let bf16 = kg
        .tensors
        .iter()
        .filter(|t| t.kind == neuron_isa::TensorKind::Scratch && t.dtype == neuron_isa::Dtype::Bf16)
        .count();
    assert_eq!(bf16, 2, "{kg}");
    let (c, _) = super::backend_harness::compile_and_check_with(&g, opts, Precision::Bf16);
    // The pool folds its windows in bf16 (one `TensorReduce` per run of alike-clipped
    // output columns: the first column's window is clipped by the left padding) from
    // full-width bands: each band load is one contiguous run per partition.
    let prog = &c.artifact.meta.program;
    let pool = prog
        .kernels
        .iter()
        .position(|k| k.nodes.contains(&"pool".to_string()))
        .unwrap() as u32;
    let ops: Vec<&neuron_isa::Op> = prog
        .streams
        .iter()
        .flat_map(|s| &s.instrs)
        .filter(|i| i.kernel == pool)
        .map(|i| &i.op)
        .collect();
    let reduces: Vec<_> = ops
        .iter()
        .filter_map(|op| match op {
            neuron_isa::Op::TensorReduce { src, dst, axes, .. } => Some((src, dst, *axes)),
            _ => None,
        })
        .collect();
    assert!(!reduces.is_empty());
    for (src, dst, axes) in &reduces {
        assert_eq!(*axes, 2);
        assert_eq!(src.dtype, neuron_isa::Dtype::Bf16);
        assert_eq!(dst.dtype, neuron_isa::Dtype::Bf16);
    }
    // 8x8 outputs of a 16x16 map, 3x3 stride 2, pads 1: column 0 is clipped (taps 1..3),
    // columns 1..8 are whole (the last window ends at column 15).
    assert!(
        reduces
            .iter()
            .any(|(src, _, _)| src.dims[1].size == 1 && src.dims[3].size == 2),
        "{reduces:?}"
    );
    assert!(
        reduces
            .iter()
            .any(|(src, _, _)| src.dims[1].size == 7 && src.dims[3].size == 3),
        "{reduces:?}"
    );
    for op in &ops {
        if let neuron_isa::Op::Dma { dst, src } = op
            && dst.mem == neuron_isa::Memory::Sbuf
            && matches!(src.mem, neuron_isa::Memory::Hbm(_))
        {
            let run = neuron_sim::dma::contiguous_run_bytes(dst);
            assert_eq!(run, dst.bytes_per_partition(), "band load {dst}");
        }
    }
}

#[test]
fn the_stem_stacks_channel_by_kernel_row_on_partitions_and_matches_the_reference() {
    // A 3-channel 7x7 stride-2 stem with padding 3 (and a 4-channel 5x5 stride-1 one):
    // one matmul per kernel column over every (channel, kernel row); the edge rows read
    // padding through zeroed prefixes of the partition blocks.
    for (n, cin, hw, k, st, pad) in [(2, 3, [40, 36], 7, 2, 3), (3, 4, [13, 11], 5, 1, 2)] {
        let g = conv_graph(n, cin, 8, hw, [k, k], [st, st], [pad; 4], [1, 1], 1, 11).unwrap();
        let t = &conv_tilings(&g, &Precision::Fp32.options())[0];
        assert!(t.pstack, "{t}");
        fused_matches_unfused(&g, "conv2d");
    }
    // In bf16 the same 7x7 stem is cheap on TensorE and its 21 stacked rows of fp32 input
    // on three DMA engines cost more than they save: the cost model stacks blocks.
    let g = conv_graph(2, 3, 8, [40, 36], [7, 7], [2, 2], [3; 4], [1, 1], 1, 11).unwrap();
    let t = &conv_tilings(&g, &Precision::Bf16.options())[0];
    assert!(!t.pstack && t.pack == 4, "{t}");
}

/// A conv with a bias and relu (no residual), as the ResNet stem after batch_norm folding.
#[allow(clippy::too_many_arguments)]
fn conv_relu_graph(
    n: usize,
    cin: usize,
    cout: usize,
    hw: [usize; 2],
    k: usize,
    stride: usize,
    pads: [usize; 4],
    dil: [usize; 2],
) -> Graph {
    let mut g = Graph::new("conv_relu");
    g.seed = 5;
    let x = g
        .add_input("x", [n, cin, hw[0], hw[1]], DType::F32)
        .unwrap();
    let w = param(
        &mut g,
        "w",
        &[cout, cin, k, k],
        1.0 / ((cin * k * k) as f64).sqrt(),
    );
    let b = param(&mut g, "b", &[cout], 0.5);
    let c = g
        .add_node(
            "conv",
            Op::Conv2d {
                strides: [stride, stride],
                pads,
                dilations: dil,
                groups: 1,
            },
            &[x, w, b],
            "c",
        )
        .unwrap();
    let y = g.add_node("relu", Op::Relu, &[c], "y").unwrap();
    g.add_output(y).unwrap();
    g
}

#[test]
fn narrow_convolutions_pack_images_on_partitions_and_match_the_reference() {
    // (batch, in, out, input, kernel, stride, pads, dilation, images per block, images
    // per matmul): a 5-channel 7x7 stride-2 stem (6 images per 32-partition block, two
    // per matmul, the last group short); 64 channels in and out (two images on the 128
    // partitions, an odd batch leaving one image alone in the last matmul); 8 channels to
    // 32 with asymmetric padding and a dilated kernel row (four images per matmul).
    // With and without the residual (a full-tile epilogue operand loaded per image).
    let cases = [
        (7, 5, 64, [40, 36], 7, 2, [3, 3, 3, 3], [1, 1], 6, 2),
        (5, 64, 64, [18, 16], 3, 1, [1, 1, 1, 1], [1, 1], 2, 2),
        (5, 8, 32, [17, 19], 3, 1, [1, 0, 2, 1], [2, 1], 4, 4),
    ];
    for (n, cin, cout, hw, k, st, pads, dil, ipack, per_mm) in cases {
        let graphs = [
            conv_relu_graph(n, cin, cout, hw, k, st, pads, dil),
            conv_graph(n, cin, cout, hw, [k, k], [st, st], pads, dil, 1, 3).unwrap(),
        ];
        for g in graphs {
            let t = &conv_tilings(&g, &Precision::Bf16.options())[0];
            assert_eq!(t.ipack, ipack, "{t}");
            assert_eq!(128 / cout, per_mm);
            fused_matches_unfused(&g, "conv2d");
            compile_and_check(&g, Precision::Bf16);
        }
    }
    // One image: nothing to pack.
    let g = conv_relu_graph(1, 5, 64, [40, 36], 7, 2, [3; 4], [1, 1]);
    let t = &conv_tilings(&g, &Precision::Bf16.options())[0];
    assert_eq!(t.ipack, 1, "{t}");
}

#[test]
fn resnet50_batch16_packs_images_in_the_stem_and_in_64_channel_layers_whose_maps_do_not_stay_on_chip()
 {
    // The packing that takes ResNet-50's stem from 1.05 ms to 0.55 ms at batch 16 on trn1
    // (docs/compiler.md): planning only, no simulation.
    let m = neuronc::zoo::build(
        "resnet50",
        &neuronc::zoo::ZooOptions {
            batch: Some(16),
            ..Default::default()
        },
    )
    .unwrap();
    let g = neuronc::frontend::parse_model(&m.to_json_string(), Path::new(".")).unwrap();
    let mut opts = Precision::Bf16.options();
    opts.auto_cast = neuronc::options::AutoCast::All;
    let kg = neuronc::passes::run_middle_end(&g, &opts, &mut |_, _| {}).unwrap();
    let plans = neuronc::backend::tiling::plan(&kg, &neuron_isa::ChipConfig::trn1()).unwrap();
    let tiling = |name: &str| {
        plans
            .iter()
            .zip(&kg.kernels)
            .find_map(|(p, k)| match &p.tiling {
                neuronc::backend::tiling::Tiling::Conv(t) if k.name.starts_with(name) => {
                    Some(t.clone())
                }
                _ => None,
            })
            .unwrap_or_else(|| panic!("no conv kernel {name}"))
    };
    // The stem: 10 images x 3 channels per 32-partition block, 4 kernel rows stacked,
    // two images' 64 output channels per matmul: 7 matmuls per image tile, not 14.
    let stem = tiling("stem.conv");
    assert_eq!((stem.ipack, stem.pack, stem.block), (10, 4, 32), "{stem}");
    // The 3x3 over 64 channels, micro-batched in pairs of images whose maps stay on chip:
    // unpacked, each band read in place where the previous conv wrote it.
    for b in 0..3 {
        let t = tiling(&format!("layer1.{b}.conv2"));
        assert_eq!((t.ipack, t.pack), (1, 1), "{t}");
    }
    // Without micro-batching, 16 images' 64-channel maps (98 KiB per partition) exceed the
    // resident region: two images on the 128 partitions.
    let mut whole = opts.clone();
    whole.micro_batch = false;
    let kg = neuronc::passes::run_middle_end(&g, &whole, &mut |_, _| {}).unwrap();
    let plans = neuronc::backend::tiling::plan(&kg, &neuron_isa::ChipConfig::trn1()).unwrap();
    let packed = plans
        .iter()
        .zip(&kg.kernels)
        .filter(|(p, k)| {
            k.name.starts_with("layer1.")
                && k.name.contains(".conv2")
                && matches!(&p.tiling, neuronc::backend::tiling::Tiling::Conv(t)
                    if (t.ipack, t.pack, t.block) == (2, 1, 128))
        })
        .count();
    assert_eq!(packed, 3);
}
