#!/usr/bin/env python3
"""Offline generator of the real-exporter ONNX test models (not part of build, tests or CI).

Exports small-dimension versions of three framework modules with PyTorch's own ONNX
exporters, exactly as a user would, and records onnxruntime's outputs on seeded inputs:

  * bert_layer:  Hugging Face `transformers.models.bert.modeling_bert.BertLayer`
                 (hidden 64, 4 heads, intermediate 128, the default `sdpa` attention),
                 fed hidden states and a 0/1 int64 `attention_mask` turned into the
                 additive mask the way BertModel does (`(1 - mask) * finfo.min`).
  * gpt2_block:  Hugging Face `transformers.models.gpt2.modeling_gpt2.GPT2Block`
                 (n_embd 64, 4 heads, `sdpa`), with the classic causal mask
                 `triu(full((S, S), finfo.min), 1)` built from the input's shape.
  * resnet_bottleneck: torchvision `torchvision.models.resnet.Bottleneck`, an identity
                 block (64 -> 16 -> 64) followed by a stride-2 downsampling block
                 (64 -> 32 -> 128, 1x1 conv + BatchNorm shortcut), in eval mode.
  * t5_block:    Hugging Face `T5Block` (encoder, d_model 64, 4 heads, relative position
                 bias computed from the sequence length: Range, Log, Less, Where, Min).
  * vit_layer:   Hugging Face `ViTLayer` (hidden 64, 4 heads, `sdpa`) on a token sequence.

Each is exported twice: with the default exporter of torch >= 2.9 (`dynamo=True`,
torch.export + onnxscript, opset 18) and with the TorchScript exporter (`dynamo=False`,
opset 17), with symbolic `batch` (and `sequence`) dimensions, so the importer's
`--input-shape` path and both exporters' shape subgraphs are exercised. Weights are
random (seeded), nothing is downloaded. Output, per case `<model>_<exporter>`:

    compiler/tests/fixtures/onnx_export/<case>/model.onnx
    compiler/tests/fixtures/onnx_export/<case>/set<K>/inputs/<input>.npy
    compiler/tests/fixtures/onnx_export/<case>/set<K>/expected/<output>.npy

with two input sets of different (batch, sequence) sizes. The Rust tests
(compiler/tests/all/onnx_export.rs) import each model.onnx with the set's shapes bound,
run the reference executor and compile + simulate at fp32 against these goldens.

Requirements (a venv outside the repository):
    python3 -m venv /work/venv-onnx
    /work/venv-onnx/bin/pip install torch torchvision transformers onnx onnxruntime onnxscript
Run from the repository root (an optional argument overrides the output directory):
    /work/venv-onnx/bin/python scripts/gen_onnx_exports.py
The versions used are written to compiler/tests/fixtures/onnx_export/VERSIONS.txt.
"""

import os
import sys
import warnings

import numpy as np
import onnx
import onnxruntime as ort
import torch
import torchvision
import transformers
from torch import nn
from torchvision.models.resnet import Bottleneck
from transformers import BertConfig, GPT2Config, T5Config, ViTConfig
from transformers.models.bert.modeling_bert import BertLayer
from transformers.models.gpt2.modeling_gpt2 import GPT2Block
from transformers.models.t5.modeling_t5 import T5Block
from transformers.models.vit.modeling_vit import ViTLayer

OUT = sys.argv[1] if len(sys.argv) > 1 else os.path.join("compiler", "tests", "fixtures", "onnx_export")


class BertLayerModel(nn.Module):
    """One Hugging Face BertLayer with BertModel's extended attention mask."""

    def __init__(self):
        super().__init__()
        cfg = BertConfig(hidden_size=64, num_attention_heads=4, intermediate_size=128)
        cfg._attn_implementation = "sdpa"  # what BertModel picks by default
        self.layer = BertLayer(cfg)

    def forward(self, hidden_states, attention_mask):
        ext = attention_mask[:, None, None, :].to(hidden_states.dtype)
        ext = (1.0 - ext) * torch.finfo(hidden_states.dtype).min
        return self.layer(hidden_states, ext)


class Gpt2BlockModel(nn.Module):
    """One Hugging Face GPT2Block under a causal mask built from the input's shape."""

    def __init__(self):
        super().__init__()
        cfg = GPT2Config(n_embd=64, n_head=4, n_positions=64)
        cfg._attn_implementation = "sdpa"  # what GPT2Model picks by default
        self.block = GPT2Block(cfg, layer_idx=0)

    def forward(self, hidden_states):
        s = hidden_states.shape[1]
        mask = torch.full((s, s), torch.finfo(hidden_states.dtype).min, dtype=hidden_states.dtype)
        mask = torch.triu(mask, diagonal=1)[None, None]
        out = self.block(hidden_states, attention_mask=mask)
        return out[0] if isinstance(out, tuple) else out


class T5BlockModel(nn.Module):
    """One Hugging Face T5Block (encoder, with the relative position bias)."""

    def __init__(self):
        super().__init__()
        cfg = T5Config(d_model=64, d_kv=16, num_heads=4, d_ff=128, is_decoder=False)
        cfg._attn_implementation = "eager"  # the only one T5 implements
        self.block = T5Block(cfg, has_relative_attention_bias=True, layer_idx=0)

    def forward(self, hidden_states):
        out = self.block(hidden_states)
        return out[0] if isinstance(out, tuple) else out


class VitLayerModel(nn.Module):
    """One Hugging Face ViTLayer (pre-norm encoder layer) on patch embeddings."""

    def __init__(self):
        super().__init__()
        cfg = ViTConfig(hidden_size=64, num_attention_heads=4, intermediate_size=128)
        cfg._attn_implementation = "sdpa"  # what ViTModel picks by default
        self.layer = ViTLayer(cfg)

    def forward(self, hidden_states):
        out = self.layer(hidden_states)
        return out[0] if isinstance(out, tuple) else out


class ResnetBottlenecks(nn.Module):
    """torchvision's Bottleneck: an identity block, then a stride-2 downsampling block."""

    def __init__(self):
        super().__init__()
        self.block1 = Bottleneck(64, 16)
        down = nn.Sequential(nn.Conv2d(64, 128, 1, stride=2, bias=False), nn.BatchNorm2d(128))
        self.block2 = Bottleneck(64, 32, stride=2, downsample=down)
        # Non-trivial BatchNorm statistics (fresh ones are the identity).
        g = torch.Generator().manual_seed(7)
        for m in self.modules():
            if isinstance(m, nn.BatchNorm2d):
                n = m.num_features
                m.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
                m.weight.data.copy_(torch.rand(n, generator=g) + 0.5)
                m.bias.data.copy_(torch.randn(n, generator=g) * 0.1)

    def forward(self, x):
        return self.block2(self.block1(x))


def bert_inputs(rng, b, s):
    mask = np.ones((b, s), dtype=np.int64)
    mask[-1, s - 2 :] = 0  # padding at the end of the last sequence
    return {
        "hidden_states": rng.standard_normal((b, s, 64)).astype(np.float32),
        "attention_mask": mask,
    }


def gpt2_inputs(rng, b, s):
    return {"hidden_states": rng.standard_normal((b, s, 64)).astype(np.float32)}


def resnet_inputs(rng, b, _s):
    return {"x": rng.standard_normal((b, 64, 8, 8)).astype(np.float32)}


MODELS = [
    # name, module, input builder, dynamic dims per input
    ("bert_layer", BertLayerModel, bert_inputs, {0: "batch", 1: "sequence"}),
    ("gpt2_block", Gpt2BlockModel, gpt2_inputs, {0: "batch", 1: "sequence"}),
    ("t5_block", T5BlockModel, gpt2_inputs, {0: "batch", 1: "sequence"}),
    ("vit_layer", VitLayerModel, gpt2_inputs, {0: "batch", 1: "sequence"}),
    ("resnet_bottleneck", ResnetBottlenecks, resnet_inputs, {0: "batch"}),
]
SIZES = [(2, 8), (1, 5)]  # (batch, sequence) of the two input sets


def export(model, example, names, dyn, path, dynamo):
    args = tuple(torch.from_numpy(example[n]) for n in names)
    if dynamo:
        dims = {}
        shapes = {}
        for n in names:
            shapes[n] = {}
            for axis, d in dyn.items():
                if d not in dims:
                    dims[d] = torch.export.Dim(d, max=64)
                shapes[n][axis] = dims[d]
        torch.onnx.export(
            model, args, path, input_names=names, output_names=["output"],
            opset_version=18, dynamo=True, dynamic_shapes=shapes,
        )
    else:
        torch.onnx.export(
            model, args, path, input_names=names, output_names=["output"],
            opset_version=17, dynamo=False, dynamic_axes={n: dyn for n in names},
        )
    # Keep everything in one file (the dynamo exporter may write external data).
    m = onnx.load(path)
    onnx.save(m, path, save_as_external_data=False)
    onnx.checker.check_model(m, full_check=True)
    for stale in os.listdir(os.path.dirname(path)):
        if stale.endswith(".data"):
            os.remove(os.path.join(os.path.dirname(path), stale))


def main():
    warnings.filterwarnings("ignore")
    os.makedirs(OUT, exist_ok=True)
    for name, cls, make_inputs, dyn in MODELS:
        torch.manual_seed(0)
        model = cls().eval()
        for exporter in ["dynamo", "torchscript"]:
            case = f"{name}_{exporter}"
            d = os.path.join(OUT, case)
            os.makedirs(d, exist_ok=True)
            rng = np.random.default_rng(0)
            sets = [make_inputs(rng, b, s) for b, s in SIZES]
            names = list(sets[0].keys())
            path = os.path.join(d, "model.onnx")
            with torch.no_grad():
                export(model, sets[0], names, dyn, path, exporter == "dynamo")
            so = ort.SessionOptions()
            so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
            sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
            for k, feeds in enumerate(sets):
                outs = sess.run(None, feeds)
                with torch.no_grad():
                    want = model(*(torch.from_numpy(feeds[n]) for n in names)).numpy()
                err = float(np.max(np.abs(outs[0] - want)))
                assert err <= 1e-4 * float(np.max(np.abs(want))), f"{case}: ort vs torch {err}"
                for sub, arrays in [("inputs", feeds), ("expected", {"output": outs[0]})]:
                    os.makedirs(os.path.join(d, f"set{k}", sub), exist_ok=True)
                    for n, a in arrays.items():
                        np.save(os.path.join(d, f"set{k}", sub, f"{n}.npy"), a)
            m = onnx.load(path)
            ops = sorted({n.op_type for n in m.graph.node})
            size = os.path.getsize(path)
            print(f"{case}: opset {m.opset_import[0].version}, {len(m.graph.node)} nodes, "
                  f"{size / 1024:.0f} KiB, ops {' '.join(ops)}")
    with open(os.path.join(OUT, "VERSIONS.txt"), "w") as f:
        f.write(
            f"python {sys.version.split()[0]}\ntorch {torch.__version__}\n"
            f"torchvision {torchvision.__version__}\ntransformers {transformers.__version__}\n"
            f"onnx {onnx.__version__}\nonnxruntime {ort.__version__}\n"
            f"onnxscript {__import__('onnxscript').__version__}\n"
        )


if __name__ == "__main__":
    main()
