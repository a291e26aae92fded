#!/usr/bin/env python3
"""Checks a `reparam export --format compressed-tensors` directory with the compressed-tensors
package itself: every packed linear, decompressed by its own PackedQuantizationCompressor, and
every 2:4 linear, decompressed by its own Sparse24BitMaskTensor, equals the weight of the same
run's dense export (`--format safetensors`) bit for bit, and every other tensor is the same.
Needs `pip install compressed-tensors safetensors` (torch comes with it). The 2:4 format was
retired after compressed-tensors 0.14 and the packed-quantized API moved in 0.15, so each
version checks the layers it can read and says which it skipped: run it once with the current
package and once with `compressed-tensors==0.14.0` for a model with both.

usage: scripts/check-compressed-tensors.py CT_DIR DENSE_DIR
"""
import json
import sys

import compressed_tensors
import torch
from safetensors.torch import load_file

try:
    from compressed_tensors.compressors.pack_quantized.base import PackedQuantizationCompressor
    from compressed_tensors.quantization import QuantizationArgs, QuantizationScheme
except ImportError:
    PackedQuantizationCompressor = None
try:
    from compressed_tensors.compressors.sparse_compressors.sparse_24_bitmask import (
        Sparse24BitMaskTensor,
    )
except ImportError:
    Sparse24BitMaskTensor = None


def same(module, weight, ours):
    if not torch.equal(weight.to(torch.float32), ours):
        diff = (weight.to(torch.float32) - ours).abs().max().item()
        sys.exit(f"{module}: decompressed weight differs from ours (max |diff| {diff})")


ct_dir, dense_dir = sys.argv[1:3]
config = json.load(open(f"{ct_dir}/config.json"))["quantization_config"]
assert config["format"] == "pack-quantized", config["format"]
packed = load_file(f"{ct_dir}/model.safetensors")
dense = load_file(f"{dense_dir}/model.safetensors")
checked, sparse_checked, skipped = 0, 0, []
for group in config["config_groups"].values():
    if PackedQuantizationCompressor is None:
        skipped += group["targets"]
        continue
    scheme = QuantizationScheme(
        targets=group["targets"], weights=QuantizationArgs(**group["weights"])
    )
    for module in group["targets"]:
        prefix = module + "."
        state = {k[len(prefix):]: v for k, v in packed.items() if k.startswith(prefix)}
        weight = PackedQuantizationCompressor.decompress(state, scheme)["weight"]
        same(module, weight, dense[module + ".weight"])
        checked += 1
sparsity = config.get("sparsity_config") or {}
if sparsity:
    assert sparsity["format"] == "sparse-24-bitmask", sparsity["format"]
for module in sparsity.get("targets", []):
    if Sparse24BitMaskTensor is None:
        skipped.append(module)
        continue
    parts = {p: packed[f"{module}.{p}"] for p in ("shape", "compressed", "bitmask")}
    weight = Sparse24BitMaskTensor.from_compressed_data(**parts).decompress()
    same(module, weight, dense[module + ".weight"])
    sparse_checked += 1
parts = ("_packed", "_scale", "_shape", ".compressed", ".bitmask", ".shape")
others = [k for k in packed if not k.endswith(parts)]
for k in others:
    if not torch.equal(packed[k], dense[k]):
        sys.exit(f"{k}: differs from the dense export")
if checked + sparse_checked == 0:
    sys.exit(f"compressed-tensors {compressed_tensors.__version__} reads none of {skipped}")
print(
    f"compressed-tensors {compressed_tensors.__version__}: {checked} packed and "
    f"{sparse_checked} 2:4 linears decompress to our weights exactly; {len(others)} other "
    f"tensors identical" + (f"; {len(skipped)} linears in formats this version does not read"
                            if skipped else "")
)
