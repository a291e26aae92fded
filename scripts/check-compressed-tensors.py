#!/usr/bin/env python3
"""Checks a `reparam export --format compressed-tensors` directory with the compressed-tensors
package itself: every packed linear, decompressed by its own PackedQuantizationCompressor,
equals the weight of the same run's dense export (`--format safetensors`) bit for bit, and every
other tensor is the same. Needs `pip install compressed-tensors safetensors` (torch comes with it).

usage: scripts/check-compressed-tensors.py CT_DIR DENSE_DIR
"""
import json
import sys

import compressed_tensors
import torch
from compressed_tensors.compressors.pack_quantized.base import PackedQuantizationCompressor
from compressed_tensors.quantization import QuantizationArgs, QuantizationScheme
from safetensors.torch import load_file

ct_dir, dense_dir = sys.argv[1:3]
config = json.load(open(f"{ct_dir}/config.json"))["quantization_config"]
assert config["format"] == "pack-quantized", config["format"]
packed = load_file(f"{ct_dir}/model.safetensors")
dense = load_file(f"{dense_dir}/model.safetensors")
checked = 0
for group in config["config_groups"].values():
    scheme = QuantizationScheme(
        targets=group["targets"], weights=QuantizationArgs(**group["weights"])
    )
    for module in group["targets"]:
        prefix = module + "."
        state = {k[len(prefix):]: v for k, v in packed.items() if k.startswith(prefix)}
        weight = PackedQuantizationCompressor.decompress(state, scheme)["weight"]
        ours = dense[module + ".weight"]
        if not torch.equal(weight.to(torch.float32), ours):
            diff = (weight.to(torch.float32) - ours).abs().max().item()
            sys.exit(f"{module}: decompressed weight differs from ours (max |diff| {diff})")
        checked += 1
others = [k for k in packed if not k.endswith(("_packed", "_scale", "_shape"))]
for k in others:
    if not torch.equal(packed[k], dense[k]):
        sys.exit(f"{k}: differs from the dense export")
print(
    f"compressed-tensors {compressed_tensors.__version__}: {checked} packed linears decompress "
    f"to our weights exactly; {len(others)} other tensors identical"
)
