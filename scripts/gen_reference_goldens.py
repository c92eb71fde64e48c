#!/usr/bin/env python3
"""Generates the reference-executor golden fixtures in compiler/tests/fixtures/.

Each case is a small model built as an ONNX graph with onnx.helper (the
"framework export"), saved as model.onnx, given seeded inputs, and run through
onnxruntime (CPU, graph optimizations off) for the expected outputs:

    compiler/tests/fixtures/<case>/model.onnx
    compiler/tests/fixtures/<case>/inputs/<input>.npy
    compiler/tests/fixtures/<case>/expected/<output>.npy

The Rust tests import model.onnx directly (compiler/tests/all/onnx.rs). The
model.json + weights.safetensors beside it were written by the former Python
converter; `neuronc convert model.onnx -o model.json` is its Rust replacement
(it writes model.json + model.safetensors):

    compiler/tests/fixtures/<case>/model.json
    compiler/tests/fixtures/<case>/weights.safetensors   (if any param is large)
    compiler/tests/fixtures/<case>/inputs/<input>.npy
    compiler/tests/fixtures/<case>/expected/<output>.npy

The Rust test compiler/tests/all/goldens.rs checks the reference executor
against them (max |got - expected| <= 1e-5 * max |expected|) without Python.

Requirements: python3 with numpy, onnx, onnxruntime (pip install numpy onnx onnxruntime).
Run from anywhere: python3 scripts/gen_reference_goldens.py
"""
import math
import os
import shutil

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
FIXTURES = os.path.join(ROOT, "compiler", "tests", "fixtures")
OPSET = 18

NP_TO_ONNX = {np.dtype("float32"): TensorProto.FLOAT, np.dtype("int64"): TensorProto.INT64,
              np.dtype("int32"): TensorProto.INT32, np.dtype("bool"): TensorProto.BOOL}


class Builder:
    """A tiny ONNX graph builder: every op returns its output name."""

    def __init__(self, name, seed):
        self.name = name
        self.rng = np.random.default_rng(seed)
        self.nodes, self.inits, self.inputs, self.outputs = [], [], [], []
        self.feeds = {}
        self.k = 0

    def input(self, name, array):
        self.inputs.append(helper.make_tensor_value_info(name, NP_TO_ONNX[array.dtype], list(array.shape)))
        self.feeds[name] = array
        return name

    def const(self, name, array):
        array = np.asarray(array)
        if array.dtype == np.float64:
            array = array.astype(np.float32)
        self.inits.append(numpy_helper.from_array(array, name))
        return name

    def weight(self, name, shape, std=None):
        std = std if std is not None else 1.0 / math.sqrt(shape[0] if len(shape) == 2 else int(np.prod(shape[1:])))
        return self.const(name, (self.rng.standard_normal(shape) * std).astype(np.float32))

    def op(self, op_type, inputs, name=None, outputs=1, **attrs):
        self.k += 1
        name = name or f"{op_type.lower()}_{self.k}"
        outs = [name] if outputs == 1 else [f"{name}_{i}" for i in range(outputs)]
        self.nodes.append(helper.make_node(op_type, inputs, outs, name=name, **attrs))
        return outs[0] if outputs == 1 else outs

    def output(self, name, shape, elem=TensorProto.FLOAT):
        self.outputs.append(helper.make_tensor_value_info(name, elem, shape))

    def model(self):
        graph = helper.make_graph(self.nodes, self.name, self.inputs, self.outputs, self.inits)
        m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
        m.ir_version = 9
        onnx.checker.check_model(m, full_check=True)
        return m


def layer_norm(b, x, dim, name, eps):
    g = b.const(f"{name}.weight", (1.0 + 0.1 * b.rng.standard_normal(dim)).astype(np.float32))
    beta = b.const(f"{name}.bias", (0.1 * b.rng.standard_normal(dim)).astype(np.float32))
    return b.op("LayerNormalization", [x, g, beta], name=name, axis=-1, epsilon=eps)


def linear(b, x, din, dout, name):
    w = b.weight(f"{name}.weight", [din, dout])
    bias = b.const(f"{name}.bias", (0.1 * b.rng.standard_normal(dout)).astype(np.float32))
    return b.op("Add", [b.op("MatMul", [x, w], name=f"{name}.matmul"), bias], name=f"{name}.add")


def bert_encoder():
    """BERT-style: word + position + token-type embedding gathers, one encoder layer, pooler."""
    b = Builder("bert_encoder", 1)
    batch, seq, hidden, heads, ffn, vocab = 2, 8, 32, 4, 64, 30
    dh = hidden // heads
    ids = b.input("input_ids", b.rng.integers(0, vocab, (batch, seq)).astype(np.int64))
    tt = b.input("token_type_ids", np.array([[0] * 5 + [1] * 3, [0] * 8], dtype=np.int64))
    mask = b.input("attention_mask", np.array([[1] * 8, [1] * 6 + [0] * 2], dtype=np.float32))
    we = b.weight("embeddings.word_embeddings.weight", [vocab, hidden], 0.5)
    pe = b.weight("embeddings.position_embeddings.weight", [16, hidden], 0.5)
    te = b.weight("embeddings.token_type_embeddings.weight", [2, hidden], 0.5)
    pos = b.const("position_ids", np.arange(seq, dtype=np.int64).reshape(1, seq))
    e = b.op("Add", [b.op("Gather", [we, ids], name="word_gather"), b.op("Gather", [pe, pos], name="pos_gather")])
    e = b.op("Add", [e, b.op("Gather", [te, tt], name="type_gather")])
    h0 = layer_norm(b, e, hidden, "embeddings.LayerNorm", 1e-12)
    m4 = b.op("Unsqueeze", [mask, b.const("unsq_axes", np.array([1, 2], dtype=np.int64))], name="mask_unsqueeze")
    ext = b.op("Mul", [b.op("Sub", [b.const("one", np.float32(1.0)), m4]), b.const("neg_big", np.float32(-10000.0))],
               name="extended_mask")

    def heads_of(x, name, perm):
        r = b.op("Reshape", [x, b.const(f"{name}_shape", np.array([batch, seq, heads, dh], dtype=np.int64))])
        return b.op("Transpose", [r], name=f"{name}_t", perm=perm)

    q = heads_of(linear(b, h0, hidden, hidden, "attn.query"), "q", [0, 2, 1, 3])
    k = heads_of(linear(b, h0, hidden, hidden, "attn.key"), "k", [0, 2, 3, 1])
    v = heads_of(linear(b, h0, hidden, hidden, "attn.value"), "v", [0, 2, 1, 3])
    s = b.op("Div", [b.op("MatMul", [q, k], name="scores"), b.const("sqrt_dh", np.float32(math.sqrt(dh)))])
    p = b.op("Softmax", [b.op("Add", [s, ext], name="masked_scores")], name="attn_probs", axis=-1)
    c = b.op("Transpose", [b.op("MatMul", [p, v], name="context")], perm=[0, 2, 1, 3])
    c = b.op("Reshape", [c, b.const("merge_shape", np.array([batch, seq, hidden], dtype=np.int64))])
    a = linear(b, c, hidden, hidden, "attn.output")
    h1 = layer_norm(b, b.op("Add", [a, h0]), hidden, "attn.LayerNorm", 1e-12)
    f = linear(b, h1, hidden, ffn, "ffn.intermediate")
    erf = b.op("Erf", [b.op("Div", [f, b.const("sqrt2", np.float32(math.sqrt(2.0)))])])
    g = b.op("Mul", [b.op("Mul", [f, b.const("half", np.float32(0.5))]), b.op("Add", [erf, "one"])], name="gelu")
    f2 = linear(b, g, ffn, hidden, "ffn.output")
    out = layer_norm(b, b.op("Add", [f2, h1]), hidden, "ffn.LayerNorm", 1e-12)
    b.nodes.append(helper.make_node("Identity", [out], ["last_hidden_state"], name="last_hidden"))
    first = b.op("Gather", [out, b.const("cls_index", np.array(0, dtype=np.int64))], name="cls_gather", axis=1)
    wp = b.weight("pooler.weight", [hidden, hidden])
    bp = b.const("pooler.bias", (0.1 * b.rng.standard_normal(hidden)).astype(np.float32))
    pooled = b.op("Gemm", [first, wp, bp], name="pooler_dense", transB=1)
    b.nodes.append(helper.make_node("Tanh", [pooled], ["pooler_output"], name="pooler_tanh"))
    b.output("last_hidden_state", [batch, seq, hidden])
    b.output("pooler_output", [batch, hidden])
    return b


def gpt2_block():
    """GPT-2: token + position gathers, one block with a causal mask from slice + where, gelu via pow/tanh, tied LM head."""
    b = Builder("gpt2_block", 2)
    batch, seq, hidden, heads, vocab, npos = 1, 8, 32, 4, 40, 16
    dh = hidden // heads
    ids = b.input("input_ids", b.rng.integers(0, vocab, (batch, seq)).astype(np.int64))
    wte = b.weight("wte", [vocab, hidden], 0.5)
    wpe = b.weight("wpe", [npos, hidden], 0.2)
    pos = b.const("position_ids", np.arange(seq, dtype=np.int64).reshape(1, seq))
    h = b.op("Add", [b.op("Gather", [wte, ids], name="wte_gather"), b.op("Gather", [wpe, pos], name="wpe_gather")])
    x = layer_norm(b, h, hidden, "ln_1", 1e-5)
    qkv = linear(b, x, hidden, 3 * hidden, "attn.c_attn")
    q, k, v = b.op("Split", [qkv, b.const("split_sizes", np.array([hidden] * 3, dtype=np.int64))],
                   name="qkv_split", outputs=3, axis=2)

    def heads_of(t, name, perm):
        r = b.op("Reshape", [t, b.const(f"{name}_shape", np.array([batch, seq, heads, dh], dtype=np.int64))])
        return b.op("Transpose", [r], name=f"{name}_t", perm=perm)

    q, k, v = heads_of(q, "q", [0, 2, 1, 3]), heads_of(k, "k", [0, 2, 3, 1]), heads_of(v, "v", [0, 2, 1, 3])
    w = b.op("Div", [b.op("MatMul", [q, k], name="attn_scores"), b.const("scale", np.float32(math.sqrt(dh)))])
    bias = b.const("attn.bias", np.tril(np.ones((npos, npos), dtype=bool)).reshape(1, 1, npos, npos))
    # HF: causal_mask = bias[:, :, key_length - query_length : key_length, :key_length]
    causal = b.op("Slice", [bias, b.const("mask_starts", np.array([npos - seq - (npos - seq), 0], dtype=np.int64)),
                            b.const("mask_ends", np.array([seq, -(npos - seq)], dtype=np.int64)),
                            b.const("mask_axes", np.array([2, 3], dtype=np.int64))], name="causal_slice")
    w = b.op("Where", [causal, w, b.const("mask_value", np.float32(np.finfo(np.float32).min))], name="causal_where")
    p = b.op("Softmax", [w], name="attn_probs", axis=-1)
    a = b.op("Transpose", [b.op("MatMul", [p, v], name="attn_context")], perm=[0, 2, 1, 3])
    a = b.op("Reshape", [a, b.const("merge_shape", np.array([batch, seq, hidden], dtype=np.int64))])
    h2 = b.op("Add", [h, linear(b, a, hidden, hidden, "attn.c_proj")], name="residual_1")
    m = linear(b, layer_norm(b, h2, hidden, "ln_2", 1e-5), hidden, 4 * hidden, "mlp.c_fc")
    # gelu_new: 0.5 * x * (1 + tanh(sqrt(2 / pi) * (x + 0.044715 * x^3)))
    cube = b.op("Pow", [m, b.const("three", np.float32(3.0))], name="gelu_pow")
    inner = b.op("Mul", [b.const("sqrt_2_over_pi", np.float32(math.sqrt(2.0 / math.pi))),
                         b.op("Add", [m, b.op("Mul", [b.const("c044715", np.float32(0.044715)), cube])])])
    g = b.op("Mul", [b.op("Mul", [b.const("half", np.float32(0.5)), m]),
                     b.op("Add", [b.const("one", np.float32(1.0)), b.op("Tanh", [inner], name="gelu_tanh")])], name="gelu")
    h3 = b.op("Add", [h2, linear(b, g, 4 * hidden, hidden, "mlp.c_proj")], name="residual_2")
    hf = layer_norm(b, h3, hidden, "ln_f", 1e-5)
    b.nodes.append(helper.make_node("Identity", [hf], ["hidden_states"], name="hidden_out"))
    wte_t = b.op("Transpose", [wte], name="lm_head_weight", perm=[1, 0])
    b.nodes.append(helper.make_node("MatMul", [hf, wte_t], ["logits"], name="lm_head"))
    b.output("hidden_states", [batch, seq, hidden])
    b.output("logits", [batch, seq, vocab])
    return b


def batch_norm(b, x, c, name):
    scale = b.const(f"{name}.weight", (1.0 + 0.2 * b.rng.standard_normal(c)).astype(np.float32))
    bias = b.const(f"{name}.bias", (0.2 * b.rng.standard_normal(c)).astype(np.float32))
    mean = b.const(f"{name}.running_mean", (0.2 * b.rng.standard_normal(c)).astype(np.float32))
    var = b.const(f"{name}.running_var", b.rng.uniform(0.5, 1.5, c).astype(np.float32))
    return b.op("BatchNormalization", [x, scale, bias, mean, var], name=name, epsilon=1e-5)


def resnet_block():
    """A ResNet basic block (conv + batch_norm + relu, residual add) and a stride-2 downsampling block."""
    b = Builder("resnet_block", 3)
    x = b.input("x", b.rng.standard_normal((2, 8, 10, 10)).astype(np.float32))
    c1 = b.op("Conv", [x, b.weight("layer1.conv1.weight", [8, 8, 3, 3])], name="layer1.conv1", pads=[1, 1, 1, 1])
    r1 = b.op("Relu", [batch_norm(b, c1, 8, "layer1.bn1")])
    c2 = b.op("Conv", [r1, b.weight("layer1.conv2.weight", [8, 8, 3, 3])], name="layer1.conv2", pads=[1, 1, 1, 1])
    y1 = b.op("Relu", [b.op("Add", [batch_norm(b, c2, 8, "layer1.bn2"), x], name="layer1.residual")], name="block1_out")
    d1 = b.op("Conv", [y1, b.weight("layer2.conv1.weight", [16, 8, 3, 3])], name="layer2.conv1", strides=[2, 2],
              pads=[1, 1, 1, 1])
    d1 = b.op("Relu", [batch_norm(b, d1, 16, "layer2.bn1")])
    d2 = b.op("Conv", [d1, b.weight("layer2.conv2.weight", [16, 16, 3, 3])], name="layer2.conv2", pads=[1, 1, 1, 1])
    d2 = batch_norm(b, d2, 16, "layer2.bn2")
    sc = b.op("Conv", [y1, b.weight("layer2.downsample.0.weight", [16, 8, 1, 1])], name="layer2.downsample.0",
              strides=[2, 2])
    sc = batch_norm(b, sc, 16, "layer2.downsample.1")
    b.op("Relu", [b.op("Add", [d2, sc], name="layer2.residual")], name="block2_out")
    b.output("block1_out", [2, 8, 10, 10])
    b.output("block2_out", [2, 16, 5, 5])
    return b


def conv_pool():
    """Grouped / strided / asymmetrically padded / dilated / depthwise convs, pools, and a classifier head."""
    b = Builder("conv_pool", 4)
    x = b.input("x", b.rng.standard_normal((2, 4, 9, 9)).astype(np.float32))
    g = b.op("Conv", [x, b.weight("grouped.weight", [6, 2, 3, 3]), b.const("grouped.bias", np.linspace(-0.5, 0.5, 6))],
             name="grouped_conv", group=2, strides=[2, 2], pads=[1, 0, 1, 2])
    d = b.op("Conv", [x, b.weight("dilated.weight", [4, 4, 3, 3])], name="dilated_conv", dilations=[2, 2],
             pads=[2, 2, 2, 2])
    dw = b.op("Conv", [x, b.weight("depthwise.weight", [4, 1, 3, 3])], name="depthwise_conv", group=4,
              pads=[1, 1, 1, 1])
    b.op("MaxPool", [d], name="max_pool", kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])
    b.op("AveragePool", [dw], name="avg_pool_exclude_pad", kernel_shape=[2, 2], strides=[2, 2], pads=[0, 0, 1, 1],
         count_include_pad=0)
    b.op("AveragePool", [dw], name="avg_pool_include_pad", kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1],
         count_include_pad=1)
    gap = b.op("GlobalAveragePool", [b.op("Relu", [g])], name="gap")
    flat = b.op("Flatten", [gap], name="flatten", axis=1)
    logits = b.op("Gemm", [flat, b.weight("fc.weight", [3, 6]), b.const("fc.bias", np.array([0.1, -0.2, 0.3]))],
                  name="fc", transB=1)
    b.op("Softmax", [logits], name="probs", axis=-1)
    b.output("max_pool", [2, 4, 5, 5])
    b.output("avg_pool_exclude_pad", [2, 4, 5, 5])
    b.output("avg_pool_include_pad", [2, 4, 5, 5])
    b.output("probs", [2, 3])
    return b


def misc_ops():
    """Unary and binary elementwise ops with broadcasting, reductions, concat, cast, slice, transpose, RMS norm."""
    b = Builder("misc_ops", 5)
    x = b.input("x", b.rng.standard_normal((3, 4, 5)).astype(np.float32))
    y = b.input("y", b.rng.standard_normal((4, 1)).astype(np.float32))
    one = b.const("one", np.float32(1.0))
    a = b.op("Abs", [x])
    outs = {
        "log1p_abs": b.op("Log", [b.op("Add", [a, one])], name="log1p_abs"),
        "sqrt_abs": b.op("Sqrt", [a], name="sqrt_abs"),
        "recip": b.op("Reciprocal", [b.op("Add", [b.op("Exp", [x]), one])], name="recip"),
        "silu": b.op("Mul", [x, b.op("Sigmoid", [x])], name="silu"),
        "neg_tanh": b.op("Neg", [b.op("Tanh", [x])], name="neg_tanh"),
        "relu_div": b.op("Div", [b.op("Relu", [x]), b.op("Add", [b.op("Abs", [y]), one])], name="relu_div"),
        "max_b": b.op("Max", [x, y], name="max_b"),
        "min_b": b.op("Min", [x, y], name="min_b"),
        "pow_abs": b.op("Pow", [a, b.const("p15", np.float32(1.5))], name="pow_abs"),
        "rsum": b.op("ReduceSum", [x, b.const("ax1", np.array([1], dtype=np.int64))], name="rsum", keepdims=1),
        "rmean": b.op("ReduceMean", [x, b.const("ax02", np.array([0, 2], dtype=np.int64))], name="rmean", keepdims=0),
        "rmax": b.op("ReduceMax", [x, b.const("axm1", np.array([-1], dtype=np.int64))], name="rmax", keepdims=0),
        "slice_neg_step": b.op("Slice", [x, b.const("s_starts", np.array([-3, 1], dtype=np.int64)),
                                         b.const("s_ends", np.array([100, 5], dtype=np.int64)),
                                         b.const("s_axes", np.array([2, 1], dtype=np.int64)),
                                         b.const("s_steps", np.array([1, 2], dtype=np.int64))], name="slice_neg_step"),
        "transposed": b.op("Transpose", [x], name="transposed", perm=[2, 0, 1]),
    }
    outs["concat"] = b.op("Concat", [outs["log1p_abs"], outs["sqrt_abs"], x], name="concat", axis=2)
    ci = b.op("Cast", [b.op("Mul", [x, b.const("three", np.float32(3.0))])], name="to_int", to=TensorProto.INT32)
    outs["cast_roundtrip"] = b.op("Cast", [ci], name="cast_roundtrip", to=TensorProto.FLOAT)
    ms = b.op("ReduceMean", [b.op("Mul", [x, x]), b.const("axl", np.array([-1], dtype=np.int64))], keepdims=1)
    outs["rms_norm"] = b.op("Div", [x, b.op("Sqrt", [b.op("Add", [ms, b.const("eps", np.float32(1e-6))])])],
                            name="rms_norm")
    shapes = {"rsum": [3, 1, 5], "rmean": [4], "rmax": [3, 4], "slice_neg_step": [3, 2, 3], "transposed": [5, 3, 4],
              "concat": [3, 4, 15]}
    for k in outs:
        b.output(k, shapes.get(k, [3, 4, 5]))
    return b


CASES = [bert_encoder, gpt2_block, resnet_block, conv_pool, misc_ops]


def sanitize(name):
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in name)


def main():
    for case in CASES:
        b = case()
        model = b.model()
        out = os.path.join(FIXTURES, b.name)
        for sub in ("inputs", "expected"):
            shutil.rmtree(os.path.join(out, sub), ignore_errors=True)
            os.makedirs(os.path.join(out, sub))
        onnx.save(model, os.path.join(out, "model.onnx"))
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
        names = [o.name for o in sess.get_outputs()]
        results = sess.run(names, b.feeds)
        for k, v in b.feeds.items():
            np.save(os.path.join(out, "inputs", sanitize(k) + ".npy"), v)
        for k, v in zip(names, results):
            np.save(os.path.join(out, "expected", sanitize(k) + ".npy"), v)
        size = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(out) for f in fs)
        print(f"{b.name}: {len(b.nodes)} onnx nodes, outputs {names}, {size / 1024:.1f} KiB")


if __name__ == "__main__":
    main()
