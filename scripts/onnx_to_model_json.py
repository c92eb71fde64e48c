#!/usr/bin/env python3
"""Converts an ONNX graph (static shapes) to model.json v1 plus a safetensors weights file.

Usage as a script:
    python3 scripts/onnx_to_model_json.py MODEL.onnx OUT_DIR [--name NAME] [--seed N]

writes OUT_DIR/model.json and OUT_DIR/weights.safetensors. As a module:
convert(onnx_model, out_dir, name) does the same.

Initializers become params (stored in the safetensors file; those with at most
LITERAL_MAX elements are written as literal "value"s instead). Initializers
that only feed shape-like operands (Reshape shapes, Slice starts/ends/axes/steps,
Unsqueeze/Squeeze/Reduce axes, Split sizes) are folded into attributes.

Supported ONNX ops and their mapping:
  Add Sub Mul Div Max Min Pow Neg Abs Exp Log Sqrt Reciprocal Relu Sigmoid Tanh Erf
      -> the op of the same name (lower case)
  Gelu(approximate)         -> gelu
  MatMul                    -> matmul
  Gemm(transA=0, transB, alpha=beta=1) -> matmul{transpose_b} [+ add C]
  Softmax(axis)             -> softmax
  LayerNormalization        -> layer_norm
  BatchNormalization        -> batch_norm (inference form)
  ReduceSum/Mean/Max        -> reduce_* (axes from the input or attribute)
  Transpose(perm)           -> transpose
  Reshape / Flatten / Unsqueeze / Squeeze -> reshape with the inferred static shape
  Concat(axis)              -> concat
  Slice                     -> slice
  Split(axis)               -> one slice per output
  Gather(axis)              -> gather
  Where                     -> where
  Cast(to)                  -> cast
  Conv                      -> conv2d
  MaxPool / AveragePool     -> max_pool2d / avg_pool2d
  GlobalAveragePool         -> global_avg_pool
  Identity                  -> reshape to the same shape
  Constant                  -> a param with the constant's value
"""
import json
import os
import struct
import sys

import numpy as np
import onnx
from onnx import numpy_helper, shape_inference

LITERAL_MAX = 16

DTYPES = {
    onnx.TensorProto.FLOAT: "f32",
    onnx.TensorProto.FLOAT16: "f16",
    onnx.TensorProto.BFLOAT16: "bf16",
    onnx.TensorProto.INT8: "i8",
    onnx.TensorProto.INT32: "i32",
    onnx.TensorProto.INT64: "i64",
    onnx.TensorProto.BOOL: "bool",
}
NP_TO_DTYPE = {
    np.dtype("float32"): "f32",
    np.dtype("float16"): "f16",
    np.dtype("int8"): "i8",
    np.dtype("int32"): "i32",
    np.dtype("int64"): "i64",
    np.dtype("bool"): "bool",
}
SAFETENSORS_DTYPE = {"f32": "F32", "f16": "F16", "i8": "I8", "i32": "I32", "i64": "I64", "bool": "BOOL"}

SIMPLE = {
    "Add": "add", "Sub": "sub", "Mul": "mul", "Div": "div", "Max": "max", "Min": "min", "Pow": "pow",
    "Neg": "neg", "Abs": "abs", "Exp": "exp", "Log": "log", "Sqrt": "sqrt", "Reciprocal": "reciprocal",
    "Relu": "relu", "Sigmoid": "sigmoid", "Tanh": "tanh", "Erf": "erf", "Where": "where",
}
# Operand positions that are shape-like (folded into attributes), per op.
SHAPE_OPERANDS = {
    "Reshape": {1}, "Slice": {1, 2, 3, 4}, "Unsqueeze": {1}, "Squeeze": {1},
    "ReduceSum": {1}, "ReduceMean": {1}, "ReduceMax": {1}, "Split": {1},
}


def write_safetensors(path, tensors):
    """Writes {name: np.ndarray} in the safetensors format (little-endian, sorted by name)."""
    header, blobs, offset = {}, [], 0
    for name in sorted(tensors):
        a = np.ascontiguousarray(tensors[name])
        dtype = NP_TO_DTYPE[a.dtype]
        data = a.astype(a.dtype.newbyteorder("<")).tobytes()
        header[name] = {"dtype": SAFETENSORS_DTYPE[dtype], "shape": list(a.shape), "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for b in blobs:
            f.write(b)


def attr(node, name, default=None):
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def convert(model, out_dir, name, seed=0):
    model = shape_inference.infer_shapes(model, strict_mode=True)
    g = model.graph
    consts = {t.name: numpy_helper.to_array(t) for t in g.initializer}
    for n in g.node:
        if n.op_type == "Constant":
            consts[n.output[0]] = numpy_helper.to_array(attr(n, "value"))
    shapes, dtypes = {}, {}
    for vi in list(g.input) + list(g.value_info) + list(g.output):
        tt = vi.type.tensor_type
        if tt.HasField("shape"):
            shapes[vi.name] = [d.dim_value for d in tt.shape.dim]
        dtypes[vi.name] = DTYPES[tt.elem_type]
    for cname, a in consts.items():
        shapes.setdefault(cname, list(a.shape))

    # Which constants are used as real tensor operands (not just shape-like attributes)?
    tensor_use = set()
    for n in g.node:
        skip = SHAPE_OPERANDS.get(n.op_type, set())
        for i, x in enumerate(n.input):
            if x and i not in skip:
                tensor_use.add(x)
    tensor_use.update(o.name for o in g.output)

    params, weights = [], {}
    for cname, a in consts.items():
        if cname not in tensor_use:
            continue
        if a.dtype == np.float64:
            a = a.astype(np.float32)
        dtype = NP_TO_DTYPE[a.dtype]
        p = {"name": cname, "shape": list(a.shape), "dtype": dtype}
        if a.size <= LITERAL_MAX:
            p["value"] = a.tolist()
        else:
            weights[cname] = a
        params.append(p)

    nodes = []
    used_names = set()

    def emit(op, inputs, output, base, **attrs):
        node_name, k = base, 2
        while node_name in used_names:
            node_name, k = f"{base}_{k}", k + 1
        used_names.add(node_name)
        n = {"name": node_name, "op": op, "inputs": inputs, "outputs": [output]}
        if attrs:
            n["attrs"] = attrs
        nodes.append(n)

    def const_list(x):
        return [int(v) for v in np.asarray(consts[x]).reshape(-1)]

    for idx, n in enumerate(g.node):
        t = n.op_type
        base = n.name or f"{t.lower()}_{idx}"
        ins, out = list(n.input), n.output[0] if n.output else None
        if t == "Constant":
            continue
        if t in SIMPLE:
            emit(SIMPLE[t], ins, out, base)
        elif t == "Gelu":
            emit("gelu", ins, out, base, approximate=attr(n, "approximate", b"none").decode())
        elif t == "MatMul":
            emit("matmul", ins, out, base)
        elif t == "Gemm":
            assert attr(n, "transA", 0) == 0 and attr(n, "alpha", 1.0) == 1.0 and attr(n, "beta", 1.0) == 1.0, base
            tb = bool(attr(n, "transB", 0))
            if len(ins) > 2 and ins[2]:
                emit("matmul", ins[:2], out + "__mm", base, transpose_b=tb)
                emit("add", [out + "__mm", ins[2]], out, base + "_bias")
            else:
                emit("matmul", ins[:2], out, base, transpose_b=tb)
        elif t == "Softmax":
            emit("softmax", ins, out, base, axis=attr(n, "axis", -1))
        elif t == "LayerNormalization":
            emit("layer_norm", [x for x in ins if x], out, base, axis=attr(n, "axis", -1), epsilon=attr(n, "epsilon", 1e-5))
        elif t == "BatchNormalization":
            emit("batch_norm", ins, out, base, epsilon=attr(n, "epsilon", 1e-5))
        elif t in ("ReduceSum", "ReduceMean", "ReduceMax"):
            axes = const_list(ins[1]) if len(ins) > 1 and ins[1] else attr(n, "axes")
            emit("reduce_" + t[6:].lower(), ins[:1], out, base, axes=list(axes), keepdims=bool(attr(n, "keepdims", 1)))
        elif t == "Transpose":
            emit("transpose", ins, out, base, perm=list(attr(n, "perm")))
        elif t in ("Reshape", "Flatten", "Unsqueeze", "Squeeze", "Identity"):
            emit("reshape", ins[:1], out, base, shape=shapes[out])
        elif t == "Concat":
            emit("concat", ins, out, base, axis=attr(n, "axis"))
        elif t == "Slice":
            a = {"starts": const_list(ins[1]), "ends": const_list(ins[2])}
            if len(ins) > 3 and ins[3]:
                a["axes"] = const_list(ins[3])
            if len(ins) > 4 and ins[4]:
                a["steps"] = const_list(ins[4])
            emit("slice", ins[:1], out, base, **a)
        elif t == "Split":
            axis = attr(n, "axis", 0)
            sizes = const_list(ins[1])
            start = 0
            for k, (o, s) in enumerate(zip(n.output, sizes)):
                emit("slice", ins[:1], o, f"{base}_{k}", axes=[axis], starts=[start], ends=[start + s])
                start += s
        elif t == "Gather":
            emit("gather", ins, out, base, axis=attr(n, "axis", 0))
        elif t == "Cast":
            emit("cast", ins, out, base, dtype=DTYPES[attr(n, "to")])
        elif t == "Conv":
            k = len(shapes[ins[1]]) - 2
            assert k == 2, "only 2-D convolutions"
            emit("conv2d", ins, out, base, strides=list(attr(n, "strides", [1, 1])), pads=list(attr(n, "pads", [0, 0, 0, 0])),
                 dilations=list(attr(n, "dilations", [1, 1])), groups=attr(n, "group", 1))
        elif t in ("MaxPool", "AveragePool"):
            assert attr(n, "ceil_mode", 0) == 0, "ceil_mode is not supported"
            a = {"kernel": list(attr(n, "kernel_shape")), "strides": list(attr(n, "strides", [1, 1])),
                 "pads": list(attr(n, "pads", [0, 0, 0, 0]))}
            if t == "AveragePool":
                a["count_include_pad"] = bool(attr(n, "count_include_pad", 0))
                emit("avg_pool2d", ins, out, base, **a)
            else:
                emit("max_pool2d", ins[:1], out, base, **a)
        elif t == "GlobalAveragePool":
            emit("global_avg_pool", ins, out, base)
        else:
            raise ValueError(f"unsupported ONNX op {t} (node {base})")

    inputs = [{"name": i.name, "shape": shapes[i.name], "dtype": dtypes[i.name]} for i in g.input if i.name not in consts]
    doc = {"name": name, "seed": seed, "inputs": inputs, "params": params}
    if weights:
        doc["weights"] = "weights.safetensors"
        write_safetensors(os.path.join(out_dir, "weights.safetensors"), weights)
    doc["nodes"] = nodes
    doc["outputs"] = [o.name for o in g.output]
    with open(os.path.join(out_dir, "model.json"), "w") as f:
        f.write(dumps_model(doc))
    return doc


def dumps_model(doc):
    """model.json text with one input, param or node per line."""
    def line(x):
        return json.dumps(x, separators=(", ", ": "))

    out = ["{"]
    for key, value in doc.items():
        if isinstance(value, list) and key != "outputs":
            out.append(f'  "{key}": [')
            out.extend(f"    {line(x)}{',' if i + 1 < len(value) else ''}" for i, x in enumerate(value))
            out.append("  ],")
        else:
            out.append(f'  "{key}": {line(value)},')
    out[-1] = out[-1].rstrip(",")
    out.append("}")
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("out_dir")
    ap.add_argument("--name", default=None)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    os.makedirs(args.out_dir, exist_ok=True)
    m = onnx.load(args.model)
    convert(m, args.out_dir, args.name or os.path.splitext(os.path.basename(args.model))[0], args.seed)
    sys.exit(0)
