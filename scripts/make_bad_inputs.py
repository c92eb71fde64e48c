#!/usr/bin/env python3
"""Writes the bad-input catalog runtime/tests/bad_inputs/*.case (one case per file).

The catalog is data: the tests read the .case files and need no Python. This script is
how the cases were authored; edit it (or a .case file) and re-run to regenerate.
Case format (see runtime/tests/all/bad_inputs.rs): `tool:`, `args:`, `exit:`, one or more
`expect:` substrings of stderr, optional `writes:` paths a run may create, then files:
`file NAME:` text lines up to `end`, or `file NAME: npy KEY=VALUE...`, `file NAME: hex ..`,
`file NAME: neff-of MODEL [cut=N] [flip=OFFSET] [trail=N]`, `dir NAME`.
npy keys: descr (default <f4), fortran (False), shape ((2, 4)), data (N zero bytes, default
32), bytes (hex data), header (the whole header text), hlen (header length field), version.
"""
import json, os, shutil

OUT = os.path.join(os.path.dirname(__file__), "..", "runtime", "tests", "bad_inputs")

TINY = {"name": "tiny", "seed": 1,
        "inputs": [{"name": "x", "shape": [2, 4], "dtype": "f32"}],
        "params": [{"name": "w", "shape": [4, 3], "init": "ones"}],
        "nodes": [{"name": "mm", "op": "matmul", "inputs": ["x", "w"], "outputs": ["y"]}],
        "outputs": ["y"]}
GATHER = {"name": "emb", "seed": 1,
          "inputs": [{"name": "ids", "shape": [3], "dtype": "i64"}],
          "params": [{"name": "table", "shape": [5, 4], "init": "ones"}],
          "nodes": [{"name": "lookup", "op": "gather", "inputs": ["table", "ids"], "outputs": ["e"]}],
          "outputs": ["e"]}

cases = []

def case(name, tool, args, code, expect, files, writes=()):
    cases.append((name, tool, args, code, expect, files, writes))

def text(s):
    return ("text", s)

def model(m):
    return text(json.dumps(m))

def mutate(base, f):
    m = json.loads(json.dumps(base))
    f(m)
    return m

BOTH = [("neuronc", "check model.json"), ("neuron-sim", "run model.json --timing-only")]

# --- model.json: syntax and shape of the document ---------------------------------
raw_docs = [
    ("empty", "", ["model.json", "EOF"]),
    ("whitespace-only", "   \n", ["model.json"]),
    ("not-json", "hello", ["model.json", "line 1"]),
    ("truncated", json.dumps(TINY)[:40], ["model.json"]),
    ("trailing-comma", json.dumps(TINY)[:-1] + ",}", ["model.json"]),
    ("top-level-array", "[1, 2]", ["model.json", "must be an object"]),
    ("top-level-string", "\"model\"", ["model.json", "must be an object"]),
    ("top-level-null", "null", ["model.json", "must be an object"]),
    ("top-level-number", "42", ["model.json", "must be an object"]),
    ("nul-bytes", "{\"name\": \"a\u0000\"}", ["model.json"]),
]
for name, doc, exp in raw_docs:
    for tool, args in BOTH:
        case(f"model-syntax-{name}-{tool}", tool, args, 1, exp, {"model.json": text(doc)})

field_faults = [
    ("missing-nodes", lambda m: m.pop("nodes"), ["model.json", "nodes"]),
    ("missing-outputs", lambda m: m.pop("outputs"), ["model.json", "outputs"]),
    ("unknown-top-field", lambda m: m.update(extra=1), ["model.json", "extra"]),
    ("inputs-as-object", lambda m: m.update(inputs={"x": [2, 4]}), ["model.json", "inputs"]),
    ("input-as-array", lambda m: m.update(inputs=[["x", [2, 4], "f32"]]), ["model.json", "inputs[0]", "input object"]),
    ("node-as-array", lambda m: m.update(nodes=[["mm", "matmul", ["x", "w"], ["y"]]]), ["model.json", "nodes[0]", "node object"]),
    ("param-as-array", lambda m: m.update(params=[["w", [4, 3]]]), ["model.json", "params[0]", "param object"]),
    ("input-missing-name", lambda m: m["inputs"][0].pop("name"), ["model.json", "inputs[0]", "name"]),
    ("input-missing-shape", lambda m: m["inputs"][0].pop("shape"), ["model.json", "inputs[0]", "shape"]),
    ("input-unknown-field", lambda m: m["inputs"][0].update(layout="nchw"), ["model.json", "inputs[0]", "layout"]),
    ("input-shape-string", lambda m: m["inputs"][0].update(shape="2x4"), ["model.json", "inputs[0].shape"]),
    ("input-shape-negative", lambda m: m["inputs"][0].update(shape=[-2, 4]), ["model.json", "inputs[0].shape"]),
    ("input-shape-float", lambda m: m["inputs"][0].update(shape=[2.5, 4]), ["model.json", "inputs[0].shape"]),
    ("input-shape-zero", lambda m: m["inputs"][0].update(shape=[0, 4]), ["model.json", "inputs[0].shape"]),
    ("input-shape-huge", lambda m: m["inputs"][0].update(shape=[1000000000, 1000000000]), ["model.json", "inputs[0].shape", "limit"]),
    ("input-rank-9", lambda m: m["inputs"][0].update(shape=[1] * 9), ["model.json", "inputs[0].shape", "rank"]),
    ("input-dtype-unknown", lambda m: m["inputs"][0].update(dtype="f128"), ["model.json", "inputs[0].dtype", "f128"]),
    ("input-name-empty", lambda m: m["inputs"][0].update(name=""), ["model.json", "inputs[0].name", "empty"]),
    ("input-name-number", lambda m: m["inputs"][0].update(name=3), ["model.json", "inputs[0].name"]),
    ("input-defined-twice", lambda m: m["inputs"].append({"name": "x", "shape": [1]}), ["model.json", "inputs[1].name", "twice"]),
    ("seed-negative", lambda m: m.update(seed=-1), ["model.json", "seed"]),
    ("seed-string", lambda m: m.update(seed="1"), ["model.json", "seed"]),
    ("node-missing-op", lambda m: m["nodes"][0].pop("op"), ["model.json", "nodes[0]", "op"]),
    ("node-unknown-op", lambda m: m["nodes"][0].update(op="conv3d"), ["model.json", "conv3d", "matmul"]),
    ("node-unknown-field", lambda m: m["nodes"][0].update(device="gpu"), ["model.json", "nodes[0]", "device"]),
    ("node-undefined-input", lambda m: m["nodes"][0].update(inputs=["x", "nope"]), ["model.json", "nodes[0]", "nope"]),
    ("node-too-few-inputs", lambda m: m["nodes"][0].update(inputs=["x"]), ["model.json", "mm"]),
    ("node-output-redefines-input", lambda m: m["nodes"][0].update(outputs=["x"]), ["model.json", "nodes[0]", "twice"]),
    ("node-no-outputs", lambda m: m["nodes"][0].update(outputs=[]), ["model.json", "nodes[0]"]),
    ("node-shape-mismatch", lambda m: m["params"][0].update(shape=[5, 3]), ["model.json", "mm"]),
    ("node-attrs-array", lambda m: m["nodes"][0].update(attrs=[1]), ["model.json", "nodes[0].attrs"]),
    ("node-attr-wrong-type", lambda m: m["nodes"][0].update(attrs={"transpose_b": "yes"}), ["model.json", "transpose_b"]),
    ("node-attr-unknown", lambda m: m["nodes"][0].update(attrs={"alpha": 1}), ["model.json", "alpha"]),
    ("output-unknown", lambda m: m.update(outputs=["z"]), ["model.json", "outputs", "z"]),
    ("outputs-empty", lambda m: m.update(outputs=[]), ["model.json", "outputs"]),
    ("output-duplicated", lambda m: m.update(outputs=["y", "y"]), ["model.json", "outputs"]),
    ("param-init-unknown", lambda m: m["params"][0].update(init="xavier"), ["model.json", "params[0].init"]),
    ("param-init-normal-no-std", lambda m: m["params"][0].update(init={"normal": {"mean": 0}}), ["model.json", "params[0].init", "std"]),
    ("param-value-wrong-count", lambda m: m["params"][0].update(init=None, value=[1, 2, 3]), ["model.json", "params[0]"]),
    ("param-no-data", lambda m: m["params"][0].pop("init"), ["model.json", "params[0]", "w"]),
    ("weights-missing-file", lambda m: m.update(weights="nope.safetensors"), ["model.json", "nope.safetensors"]),
    ("node-uses-later-value", lambda m: m["nodes"].insert(0, {"name": "r", "op": "relu", "inputs": ["y"], "outputs": ["z"]}), ["model.json", "nodes[0]", "y"]),
]
for name, f, exp in field_faults:
    m = mutate(TINY, f)
    if name == "param-value-wrong-count":
        m["params"][0].pop("init")
    for tool, args in BOTH:
        case(f"model-{name}-{tool}", tool, args, 1, exp, {"model.json": model(m)})

case("model-weights-garbage-neuronc", "neuronc", "check model.json", 1, ["model.json", "w.safetensors"],
     {"model.json": model(mutate(TINY, lambda m: m.update(weights="w.safetensors"))),
      "w.safetensors": text("this is not safetensors")})
case("model-weights-garbage-neuron-sim", "neuron-sim", "run model.json --timing-only", 1, ["model.json", "w.safetensors"],
     {"model.json": model(mutate(TINY, lambda m: m.update(weights="w.safetensors"))),
      "w.safetensors": text("this is not safetensors")})
case("model-missing-file-neuronc", "neuronc", "check nothere.json", 1, ["nothere.json"], {})
case("model-missing-file-neuron-sim", "neuron-sim", "run nothere.json", 1, ["nothere.json"], {})
case("model-is-directory-neuronc", "neuronc", "check d.json", 1, ["d.json"], {"d.json": ("dir",)})

# (An i64 kernel result is no longer a bad input: the compiler stores it as i32, as
# neuronx-cc downcasts int64 on trn1; see docs/compiler.md.)

# --- .npy inputs ----------------------------------------------------------------------
NPY_TOOLS = [("neuronc", "run --reference model.json --input x=x.npy --output-dir out"),
             ("neuron-sim", "run model.json --input x=x.npy --output-dir out")]
npy_faults = [
    ("empty", ("hex", ""), ["x.npy", "empty file"]),
    ("bad-magic", ("hex", "504b0304"), ["x.npy", "not a .npy file"]),
    ("truncated-magic", ("hex", "934e55"), ["x.npy", "truncated header"]),
    ("truncated-header-length", ("hex", "934e554d505901"), ["x.npy", "truncated header"]),
    ("header-length-beyond-file", ("npy", {"hlen": 9999}), ["x.npy", "truncated header"]),
    ("version-9", ("npy", {"version": 9}), ["x.npy", "version 9"]),
    ("header-not-dict", ("npy", {"header": "hello"}), ["x.npy", "malformed header"]),
    ("header-missing-descr", ("npy", {"header": "{'fortran_order': False, 'shape': (2, 4), }"}), ["x.npy", "missing 'descr'"]),
    ("header-missing-shape", ("npy", {"header": "{'descr': '<f4', 'fortran_order': False, }"}), ["x.npy", "missing 'shape'"]),
    ("header-unknown-key", ("npy", {"header": "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 4), 'x': 1}"}), ["x.npy", "unknown key"]),
    ("descr-f16", ("npy", {"descr": "<f2", "data": 16}), ["x.npy", "unsupported element type '<f2'"]),
    ("descr-complex", ("npy", {"descr": "<c8", "data": 64}), ["x.npy", "unsupported element type '<c8'"]),
    ("descr-structured", ("npy", {"header": "{'descr': [('a', '<f4')], 'fortran_order': False, 'shape': (2, 4), }"}), ["x.npy", "descr"]),
    ("fortran-order", ("npy", {"fortran": "True"}), ["x.npy", "fortran_order"]),
    ("shape-claims-1e18", ("npy", {"shape": "(1000000000, 1000000000)", "data": 0}), ["x.npy", "refused before reading"]),
    ("shape-rank-9", ("npy", {"shape": "(1, 1, 1, 1, 1, 1, 1, 1, 1)", "data": 4}), ["x.npy", "rank 9"]),
    ("shape-negative", ("npy", {"shape": "(-2, 4)"}), ["x.npy", "'-2'"]),
    ("truncated-data", ("npy", {"data": 31}), ["x.npy", "truncated data"]),
    ("trailing-bytes", ("npy", {"data": 33}), ["x.npy", "trailing bytes"]),
    ("wrong-shape", ("npy", {"shape": "(4, 2)"}), ["x.npy", "'x'", "expected"]),
    ("wrong-rank", ("npy", {"shape": "(8,)"}), ["x.npy", "'x'", "expected"]),
]
for name, spec, exp in npy_faults:
    for tool, args in NPY_TOOLS:
        case(f"npy-{name}-{tool}", tool, args, 1, exp, {"model.json": model(TINY), "x.npy": spec}, writes=["out"])
case("npy-missing-file-neuronc", "neuronc", "run --reference model.json --input x=nope.npy --output-dir out", 1, ["nope.npy"], {"model.json": model(TINY)}, writes=["out"])
case("npy-missing-file-neuron-sim", "neuron-sim", "run model.json --input x=nope.npy", 1, ["nope.npy"], {"model.json": model(TINY)})
IDS = [("neuronc", "run --reference model.json --input ids=ids.npy --output-dir out"),
       ("neuron-sim", "run model.json --input ids=ids.npy --output-dir out")]
for tool, args in IDS:
    case(f"npy-float-for-int-input-{tool}", tool, args, 1, ["ids.npy", "'ids'"],
         {"model.json": model(GATHER), "ids.npy": ("npy", {"descr": "<f4", "shape": "(3,)", "data": 12})}, writes=["out"])
    case(f"npy-bool-byte-2-{tool}", tool, args.replace("ids=ids", "ids=ids"), 1, ["ids.npy", "expected 0 or 1"],
         {"model.json": model(GATHER), "ids.npy": ("npy", {"descr": "|b1", "shape": "(3,)", "bytes": "020000"})}, writes=["out"])
    case(f"gather-index-out-of-range-{tool}", tool, args, 1, ["lookup", "index 7"],
         {"model.json": model(GATHER), "ids.npy": ("npy", {"descr": "<i8", "shape": "(3,)", "bytes": "070000000000000000000000000000000100000000000000"})}, writes=["out"])
    case(f"gather-index-too-negative-{tool}", tool, args, 1, ["lookup", "-6"],
         {"model.json": model(GATHER), "ids.npy": ("npy", {"descr": "<i8", "shape": "(3,)", "bytes": "faffffffffffffff00000000000000000100000000000000"})}, writes=["out"])

# --- .neff artifacts ------------------------------------------------------------------
NEFF_TOOLS = [("neuron-sim", "run a.neff"), ("neuronc", "disasm a.neff")]
neff_faults = [
    ("empty", ("hex", ""), ["a.neff"]),
    ("json-not-neff", ("text", json.dumps(TINY)), ["a.neff"]),
    ("truncated-header", ("neff-of", "cut=20"), ["a.neff"]),
    ("truncated-payload", ("neff-of", "cut=-100"), ["a.neff"]),
    ("flipped-payload-byte", ("neff-of", "flip=200"), ["a.neff"]),
    ("flipped-magic", ("neff-of", "flip=0"), ["a.neff"]),
    ("flipped-version", ("neff-of", "flip=8"), ["a.neff"]),
    ("trailing-bytes", ("neff-of", "trail=7"), ["a.neff"]),
]
for name, spec, exp in neff_faults:
    for tool, args in NEFF_TOOLS:
        files = {"a.neff": spec}
        if spec[0] == "neff-of":
            files["model.json"] = model(TINY)
        case(f"neff-{name}-{tool}", tool, args, 1, exp, files)
case("neff-missing-neuron-sim", "neuron-sim", "run nope.neff", 1, ["nope.neff"], {})
case("neff-missing-neuronc", "neuronc", "disasm nope.neff", 1, ["nope.neff"], {})
case("neff-directory-neuron-sim", "neuron-sim", "run d.neff", 1, ["d.neff"], {"d.neff": ("dir",)})

# --- chip TOML --------------------------------------------------------------------------
TOML_TOOLS = [("neuronc", "compile model.json -o out/m.neff --target chip.toml"),
              ("neuron-sim", "run model.json --timing-only --target chip.toml")]
toml_faults = [
    ("not-toml", "this is = = not toml", ["chip.toml"]),
    ("unknown-field", "warp_size = 32\n", ["chip.toml", "warp_size"]),
    ("wrong-type", "dma_engines = \"many\"\n", ["chip.toml", "dma_engines"]),
    ("zero-dma-engines", "dma_engines = 0\n", ["chip.toml", "dma_engines"]),
    ("nan-clock", "tensor_clock_ghz = nan\n", ["chip.toml", "tensor_clock_ghz"]),
    ("negative-latency", "dma_fixed_latency_ns = -1.0\n", ["chip.toml", "dma_fixed_latency_ns"]),
    ("unknown-base", "base = \"trn9\"\n", ["chip.toml", "trn9"]),
    ("base-number", "base = 3\n", ["chip.toml", "base"]),
    ("sbuf-too-big", "sbuf_bytes_per_partition = 67108864\n", ["chip.toml", "sbuf_bytes_per_partition"]),
    ("hbm-too-big", "hbm_bytes = 1099511627776\n", ["chip.toml", "hbm_bytes"]),
    ("empty-is-trn1-but-bad-bytes", "\u0000\u0001", ["chip.toml"]),
]
for name, body, exp in toml_faults:
    for tool, args in TOML_TOOLS:
        case(f"chip-{name}-{tool}", tool, args, 1, exp, {"model.json": model(TINY), "chip.toml": text(body)}, writes=["out"])
for tool, args in TOML_TOOLS:
    case(f"chip-missing-file-{tool}", tool, args.replace("chip.toml", "nope.toml"), 1, ["nope.toml"], {"model.json": model(TINY)}, writes=["out"])
    case(f"chip-hbm-too-small-{tool}", tool, args, 1, ["HBM", "bytes"],
         {"model.json": model(mutate(TINY, lambda m: m["params"][0].update(shape=[4, 100000]))),
          "chip.toml": text("hbm_bytes = 1048576\n")}, writes=["out"])

# --- command lines (exit 2) -------------------------------------------------------------------
usage = [
    ("neuronc", "check", ["Usage"]),
    ("neuronc", "frobnicate model.json", ["frobnicate"]),
    ("neuronc", "compile model.json --auto-cast sometimes", ["sometimes", "matmult"]),
    ("neuronc", "compile model.json --auto-cast-type fp4", ["fp4", "bf16"]),
    ("neuronc", "compile model.json -O4", ["-O", "4"]),
    ("neuronc", "compile model.json --verbose loud", ["loud", "debug"]),
    ("neuronc", "compile model.json --target trn9", ["trn9", "trn1, trn2"]),
    ("neuronc", "compile model.json -o model.json", ["refusing to write", "model.json"]),
    ("neuronc", "compile model.json -o ./model.json", ["refusing to write", "model.json"]),
    ("neuronc", "run model.json", ["--reference"]),
    ("neuronc", "run --reference model.json --input x", ["NAME=FILE.npy"]),
    ("neuronc", "run --reference model.json --input q=x.npy", ["'q'", "x"]),
    ("neuronc", "run --reference model.json --input x=x.npy --input x=x.npy", ["'x' is given twice"]),
    ("neuronc", "run --reference model.json --input x=y.npy", ["refusing to write", "y.npy"]),
    ("neuronc", "compile model.json --calibrate x", ["NAME=FILE.npy"]),
    ("neuron-sim", "run", ["Usage"]),
    ("neuron-sim", "run model.json --auto-cast sometimes", ["sometimes", "matmult"]),
    ("neuron-sim", "run model.json --auto-cast-type fp4", ["fp4", "bf16"]),
    ("neuron-sim", "run model.json -O0", ["-O", "0"]),
    ("neuron-sim", "run model.json --target trn9", ["trn9", "trn1, trn2"]),
    ("neuron-sim", "run model.json --rounding up", ["up", "rne"]),
    ("neuron-sim", "run model.json --seed -3", ["-3"]),
    ("neuron-sim", "run model.json --input x", ["NAME=FILE.npy"]),
    ("neuron-sim", "run model.json --input x=x.npy --input x=x.npy", ["'x' is given twice"]),
    ("neuron-sim", "run model.json --input x=y.npy --output-dir .", ["refusing to write", "y.npy"]),
    ("neuron-sim", "run model.json --input x=summary.json --profile .", ["refusing to write", "summary.json"]),
]
for i, (tool, args, exp) in enumerate(usage):
    files = {"model.json": model(TINY), "x.npy": ("npy", {}), "y.npy": ("npy", {}), "summary.json": ("npy", {})}
    case(f"usage-{i:02}-{tool}", tool, args, 2, exp, files)
case("usage-ambiguous-target-neuronc", "neuronc", "compile model.json -o out/m.neff --target mychip", 2, ["ambiguous", "./mychip"],
     {"model.json": model(TINY), "mychip": text("base = \"trn2\"\n")}, writes=["out"])
case("usage-ambiguous-target-neuron-sim", "neuron-sim", "run model.json --target mychip", 2, ["ambiguous", "./mychip"],
     {"model.json": model(TINY), "mychip": text("base = \"trn2\"\n")})
case("usage-neff-with-auto-cast", "neuron-sim", "run a.neff --auto-cast none", 2, ["--auto-cast", "a.neff"],
     {"model.json": model(TINY), "a.neff": ("neff-of", "")})
# A file or folder named like a preset never replaces or breaks it (exit 0).
case("ok-folder-named-trn1-neuronc", "neuronc", "compile model.json -o out/m.neff", 0, [], {"model.json": model(TINY), "trn1": ("dir",)}, writes=["out"])
case("ok-file-named-trn2-neuron-sim", "neuron-sim", "run model.json --target trn2 --timing-only", 0, [], {"model.json": model(TINY), "trn2": text("garbage")})
for tool, args in NPY_TOOLS:
    # Boolean and integer data convert to a float input, in both tools.
    case(f"ok-bool-data-for-float-input-{tool}", tool, args, 0, [],
         {"model.json": model(TINY), "x.npy": ("npy", {"descr": "|b1", "data": 8})}, writes=["out"])
for tool, args in IDS:
    case(f"ok-negative-gather-index-{tool}", tool, args, 0, [],
         {"model.json": model(GATHER), "ids.npy": ("npy", {"descr": "<i8", "shape": "(3,)", "bytes": "ffffffffffffffff00000000000000000100000000000000"})}, writes=["out"])

shutil.rmtree(OUT, ignore_errors=True)
os.makedirs(OUT)
for name, tool, args, code, expect, files, writes in cases:
    lines = [f"tool: {tool}", f"args: {args}", f"exit: {code}"]
    lines += [f"expect: {e}" for e in expect]
    lines += [f"writes: {w}" for w in writes]
    for fname, spec in files.items():
        kind = spec[0]
        if kind == "text":
            body = spec[1]
            lines.append(f"file {fname}:")
            lines += body.split("\n")
            lines.append("end")
        elif kind == "hex":
            lines.append(f"file {fname}: hex {spec[1]}")
        elif kind == "dir":
            lines.append(f"dir {fname}")
        elif kind == "npy":
            kv = " ".join(f"{k}={v}" for k, v in spec[1].items())
            lines.append(f"file {fname}: npy {kv}".rstrip())
        elif kind == "neff-of":
            lines.append(f"file {fname}: neff-of model.json {spec[1]}".rstrip())
    with open(os.path.join(OUT, name + ".case"), "w") as f:
        f.write("\n".join(lines) + "\n")
print(len(cases), "cases")
