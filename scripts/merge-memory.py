#!/usr/bin/env python3
"""Peak memory of a continual merge: writes a synthetic base and four "fine-tunes" (base plus
small noise) large enough to dominate the process's memory (about 75 MB of f32 weights each,
the zoo's tokenizer and vocabulary), then runs `reparam run BASE --recipe merge.toml` under
`/usr/bin/time -v` for 1, 2 and 4 merged models and prints the peak resident set sizes.

The target is base + merge state + one incoming model, i.e. about 3 models' worth plus the
runtime and transient workspace, whatever the number of models. Runs are not stored
(`--no-store`), so a stored result is never returned in place of a measurement.

Usage: scripts/merge-memory.py [path/to/reparam] [method]   (default target/release/reparam, opcm)
"""
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile

import numpy as np
from safetensors.numpy import save_file

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HIDDEN, FFN, LAYERS, HEADS, KV_HEADS, HEAD_DIM, VOCAB = 256, 768, 24, 4, 2, 64, 384


def tensors(rng):
    t = {"model.embed_tokens.weight": rng.standard_normal((VOCAB, HIDDEN)) * 0.02,
         "model.norm.weight": np.ones(HIDDEN)}
    for i in range(LAYERS):
        p = f"model.layers.{i}."
        shapes = {
            "self_attn.q_proj": (HEADS * HEAD_DIM, HIDDEN),
            "self_attn.k_proj": (KV_HEADS * HEAD_DIM, HIDDEN),
            "self_attn.v_proj": (KV_HEADS * HEAD_DIM, HIDDEN),
            "self_attn.o_proj": (HIDDEN, HEADS * HEAD_DIM),
            "mlp.gate_proj": (FFN, HIDDEN),
            "mlp.up_proj": (FFN, HIDDEN),
            "mlp.down_proj": (HIDDEN, FFN),
        }
        for name, shape in shapes.items():
            t[p + name + ".weight"] = rng.standard_normal(shape) / np.sqrt(shape[1])
        t[p + "input_layernorm.weight"] = np.ones(HIDDEN)
        t[p + "post_attention_layernorm.weight"] = np.ones(HIDDEN)
    return t


def write(dir, t):
    os.makedirs(dir, exist_ok=True)
    cfg = json.load(open(os.path.join(ROOT, "assets/zoo/base/config.json")))
    cfg.update(hidden_size=HIDDEN, intermediate_size=FFN, num_hidden_layers=LAYERS,
               num_attention_heads=HEADS, num_key_value_heads=KV_HEADS, head_dim=HEAD_DIM,
               torch_dtype="float32")
    json.dump(cfg, open(os.path.join(dir, "config.json"), "w"))
    for f in ["tokenizer.json", "tokenizer_config.json"]:
        shutil.copy(os.path.join(ROOT, "assets/zoo/base", f), dir)
    save_file({k: v.astype(np.float32) for k, v in t.items()}, os.path.join(dir, "model.safetensors"))


def main():
    exe = sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "target/release/reparam")
    method = sys.argv[2] if len(sys.argv) > 2 else "opcm"
    tmp = tempfile.mkdtemp(prefix="merge-memory-")
    rng = np.random.default_rng(0)
    base = tensors(rng)
    model_mb = sum(v.size for v in base.values()) * 4 / 1e6
    write(os.path.join(tmp, "base"), base)
    for k in range(4):
        ft = {n: v + 0.01 * rng.standard_normal(v.shape) * (v.std() + 1e-3) for n, v in base.items()}
        write(os.path.join(tmp, f"ft{k}"), ft)
    text = os.path.join(tmp, "eval.txt")
    open(text, "w").write("the cat sat on the mat. " * 200)
    print(f"model: {model_mb:.1f} MB of f32 weights; method {method}")
    for n in [1, 2, 4]:
        recipe = os.path.join(tmp, f"merge{n}.toml")
        models = ", ".join(f'"{tmp}/ft{k}"' for k in range(n))
        open(recipe, "w").write(f'[merge]\nmodels = [{models}]\nmethod = "{method}"\n')
        out = subprocess.run(["/usr/bin/time", "-v", exe, "run", f"{tmp}/base", "--recipe", recipe,
                              "--text", text, "--ctx", "64", "--chunks", "1", "--no-store", "--json"],
                             capture_output=True, text=True)
        if out.returncode != 0:
            sys.exit(out.stderr)
        rss_kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", out.stderr).group(1))
        rss = rss_kb * 1024 / 1e6
        print(f"{n} model(s) merged: peak RSS {rss:.0f} MB = {rss / model_mb:.2f} models' worth")
    shutil.rmtree(tmp)


if __name__ == "__main__":
    main()
