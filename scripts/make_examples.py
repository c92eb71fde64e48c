#!/usr/bin/env python3
"""Writes examples/mlp.json, examples/bert_layer.json and examples/resnet_block.json.

The examples use only `init`/`value` params (no weights file), so they are
small text files. Run from anywhere: python3 scripts/make_examples.py
"""
import json
import math
import os

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")


def dump(path, model):
    """One input/param/node per line: readable and diff-friendly."""
    def line(x):
        return json.dumps(x, separators=(", ", ": "))

    out = ["{"]
    out.append(f'  "name": {json.dumps(model["name"])},')
    out.append(f'  "seed": {model["seed"]},')
    for key in ("inputs", "params", "nodes"):
        items = model[key]
        out.append(f'  "{key}": [')
        out.extend(f"    {line(x)}{',' if i + 1 < len(items) else ''}" for i, x in enumerate(items))
        out.append("  ],")
    out.append(f'  "outputs": {line(model["outputs"])}')
    out.append("}")
    with open(os.path.join(ROOT, path), "w") as f:
        f.write("\n".join(out) + "\n")


def node(name, op, inputs, output, **attrs):
    n = {"name": name, "op": op, "inputs": inputs, "outputs": [output]}
    if attrs:
        n["attrs"] = attrs
    return n


def normal(name, shape, std):
    return {"name": name, "shape": shape, "init": {"normal": {"std": round(std, 6)}}}


def const(name, shape, init):
    return {"name": name, "shape": shape, "init": init}


def mlp():
    return {
        "name": "mlp",
        "seed": 7,
        "inputs": [{"name": "x", "shape": [8, 784], "dtype": "f32"}],
        "params": [
            normal("w1", [784, 512], 0.05),
            const("b1", [512], "zeros"),
            normal("w2", [512, 10], 0.05),
            const("b2", [10], "zeros"),
            {"name": "scale", "shape": [], "value": 0.125},
        ],
        "nodes": [
            node("fc1", "matmul", ["x", "w1"], "h"),
            node("fc1_bias", "add", ["h", "b1"], "h1"),
            node("act1", "gelu", ["h1"], "a1", approximate="tanh"),
            node("fc2", "matmul", ["a1", "w2"], "l"),
            node("fc2_bias", "add", ["l", "b2"], "l1"),
            node("temperature", "mul", ["l1", "scale"], "l2"),
            node("probs", "softmax", ["l2"], "p", axis=-1),
        ],
        "outputs": ["p"],
    }


def bert_layer():
    b, s, h, nh, dh, ff = 1, 128, 768, 12, 64, 3072
    std = 0.02
    params = []
    nodes = []
    for p in ("q", "k", "v"):
        params += [normal(f"{p}_w", [h, h], std), const(f"{p}_b", [h], "zeros")]
    params += [
        normal("attn_out_w", [h, h], std),
        const("attn_out_b", [h], "zeros"),
        const("ln1_gamma", [h], "ones"),
        const("ln1_beta", [h], "zeros"),
        normal("ffn_in_w", [h, ff], std),
        const("ffn_in_b", [ff], "zeros"),
        normal("ffn_out_w", [ff, h], std),
        const("ffn_out_b", [h], "zeros"),
        const("ln2_gamma", [h], "ones"),
        const("ln2_beta", [h], "zeros"),
        {"name": "attn_scale", "shape": [], "value": 1.0 / math.sqrt(dh)},
    ]
    for p in ("q", "k", "v"):
        nodes += [
            node(f"{p}_proj", "matmul", ["hidden", f"{p}_w"], f"{p}_mm"),
            node(f"{p}_bias", "add", [f"{p}_mm", f"{p}_b"], f"{p}_lin"),
            node(f"{p}_split_heads", "reshape", [f"{p}_lin"], f"{p}_4d", shape=[b, s, nh, dh]),
            node(f"{p}_heads_first", "transpose", [f"{p}_4d"], f"{p}_heads", perm=[0, 2, 1, 3]),
        ]
    nodes += [
        node("scores", "matmul", ["q_heads", "k_heads"], "scores_raw", transpose_b=True),
        node("scale_scores", "mul", ["scores_raw", "attn_scale"], "scores_scaled"),
        node("apply_mask", "add", ["scores_scaled", "attention_mask"], "scores_masked"),
        node("attn_probs", "softmax", ["scores_masked"], "probs", axis=-1),
        node("context", "matmul", ["probs", "v_heads"], "ctx_heads"),
        node("context_seq_first", "transpose", ["ctx_heads"], "ctx_4d", perm=[0, 2, 1, 3]),
        node("merge_heads", "reshape", ["ctx_4d"], "ctx", shape=[b, s, h]),
        node("attn_out_proj", "matmul", ["ctx", "attn_out_w"], "attn_mm"),
        node("attn_out_bias", "add", ["attn_mm", "attn_out_b"], "attn_out"),
        node("attn_residual", "add", ["attn_out", "hidden"], "attn_res"),
        node("ln1", "layer_norm", ["attn_res", "ln1_gamma", "ln1_beta"], "ln1_out", axis=-1, epsilon=1e-12),
        node("ffn_in", "matmul", ["ln1_out", "ffn_in_w"], "ffn_mm1"),
        node("ffn_in_bias", "add", ["ffn_mm1", "ffn_in_b"], "ffn_h"),
        node("ffn_act", "gelu", ["ffn_h"], "ffn_a", approximate="none"),
        node("ffn_out", "matmul", ["ffn_a", "ffn_out_w"], "ffn_mm2"),
        node("ffn_out_bias", "add", ["ffn_mm2", "ffn_out_b"], "ffn_o"),
        node("ffn_residual", "add", ["ffn_o", "ln1_out"], "ffn_res"),
        node("ln2", "layer_norm", ["ffn_res", "ln2_gamma", "ln2_beta"], "layer_out", axis=-1, epsilon=1e-12),
    ]
    return {
        "name": "bert_layer",
        "seed": 42,
        "inputs": [
            {"name": "hidden", "shape": [b, s, h], "dtype": "f32"},
            {"name": "attention_mask", "shape": [b, 1, 1, s], "dtype": "f32"},
        ],
        "params": params,
        "nodes": nodes,
        "outputs": ["layer_out"],
    }


def resnet_block():
    c, hw = 64, 56
    std = math.sqrt(2.0 / (c * 9))
    params = []
    for i in (1, 2):
        params += [
            normal(f"conv{i}_w", [c, c, 3, 3], std),
            const(f"bn{i}_scale", [c], "ones"),
            const(f"bn{i}_bias", [c], "zeros"),
            const(f"bn{i}_mean", [c], "zeros"),
            const(f"bn{i}_var", [c], "ones"),
        ]
    bn = lambda i: [f"bn{i}_scale", f"bn{i}_bias", f"bn{i}_mean", f"bn{i}_var"]
    nodes = [
        node("conv1", "conv2d", ["x", "conv1_w"], "c1", strides=[1, 1], pads=[1, 1, 1, 1]),
        node("bn1", "batch_norm", ["c1"] + bn(1), "b1", epsilon=1e-5),
        node("relu1", "relu", ["b1"], "r1"),
        node("conv2", "conv2d", ["r1", "conv2_w"], "c2", strides=[1, 1], pads=[1, 1, 1, 1]),
        node("bn2", "batch_norm", ["c2"] + bn(2), "b2", epsilon=1e-5),
        node("residual", "add", ["b2", "x"], "sum"),
        node("relu_out", "relu", ["sum"], "y"),
    ]
    return {
        "name": "resnet_block",
        "seed": 3,
        "inputs": [{"name": "x", "shape": [1, c, hw, hw], "dtype": "f32"}],
        "params": params,
        "nodes": nodes,
        "outputs": ["y"],
    }


if __name__ == "__main__":
    os.makedirs(os.path.join(ROOT, "examples"), exist_ok=True)
    dump("examples/mlp.json", mlp())
    dump("examples/bert_layer.json", bert_layer())
    dump("examples/resnet_block.json", resnet_block())
