#!/usr/bin/env bash
# OPCM against FusionBench's (`fusion_bench.method.opcm.opcm_general.OPCM`, PyPI `fusion-bench`):
# merges the zoo's merge family (`pre` and its four specialists, in the recipe's order) with
# both, compares the merged tensors one by one (largest |difference| over the tensor's largest
# |value|) and the merged models' task accuracy, both measured by our evaluator.
#
# FusionBench runs any Hugging Face model whose linears are `nn.Linear`, so the models go to it
# as they are, except that the LM head is untied first (in both tools' copies): on a tied model
# FusionBench would treat the one shared matrix twice, as an embedding and then as a linear.
#
# Needs a release build and a Python with fusion-bench (`pip install fusion-bench`; it brings
# torch, transformers and lightning): PYTHON=path/to/python. ALPHA (default 0.5) is OPCM's α.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${REPARAM_BIN:-${CARGO_TARGET_DIR:-target}/release/reparam}
PYTHON=${PYTHON:-python3}
ALPHA=${ALPHA:-0.5}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
zoo=$PWD/assets/zoo
models=(pre-arith pre-brackets pre-reverse pre-recall)

# Untied f32 copies of every model, readable by both tools.
"$PYTHON" - "$zoo" "$work/hf" pre "${models[@]}" <<'PY'
import json, shutil, sys
from pathlib import Path
from safetensors.numpy import load_file, save_file
zoo, out = Path(sys.argv[1]), Path(sys.argv[2])
for name in sys.argv[3:]:
    dst = out / name
    dst.mkdir(parents=True)
    tensors = {k: v.astype("float32") for k, v in load_file(zoo / name / "model.safetensors").items()}
    tensors["lm_head.weight"] = tensors["model.embed_tokens.weight"].copy()
    save_file(tensors, dst / "model.safetensors")
    config = json.loads((zoo / name / "config.json").read_text())
    config.update(tie_word_embeddings=False, torch_dtype="float32")
    (dst / "config.json").write_text(json.dumps(config, indent=2))
    for f in ["tokenizer.json", "tokenizer_config.json", "zoo.json"]:
        shutil.copy(zoo / name / f, dst / f)
PY

# Ours: the same models, order and α as a recipe.
list=$(printf "\"$work/hf/%s\", " "${models[@]}")
cat >"$work/opcm.toml" <<EOF
model = "$work/hf/pre"
[merge]
models = [${list%, }]
method = "opcm"
alpha = $ALPHA
EOF
run=$("$BIN" run "$work/hf/pre" --recipe "$work/opcm.toml" --prompts 0 --chunks 1 \
  --store "$work/store" --json 2>/dev/null | "$PYTHON" -c 'import json,sys; print(json.load(sys.stdin)["run_id"])')
"$BIN" export "$run" --store "$work/store" --model "$work/ours" --format safetensors >/dev/null 2>&1

# FusionBench's, with the order fixed (it shuffles by default). Its package `__init__` imports
# CLIP classes that recent transformers removed; the general OPCM needs none of them, so the
# module is loaded on its own.
fail() { cat "$work/fusionbench.log" >&2; exit 1; }
"$PYTHON" - "$work" "$ALPHA" "${models[@]}" >"$work/fusionbench.log" 2>&1 <<'PY' || fail
import importlib, json, shutil, sys, types
from pathlib import Path
import torch
import fusion_bench.method as methods
from fusion_bench.modelpool import BaseModelPool
from safetensors.torch import save_file
from transformers import LlamaForCausalLM

work, alpha, names = Path(sys.argv[1]), float(sys.argv[2]), sys.argv[3:]
pkg = types.ModuleType("fusion_bench.method.opcm")
pkg.__path__ = [str(Path(methods.__path__[0]) / "opcm")]
sys.modules["fusion_bench.method.opcm"] = pkg
OPCM = importlib.import_module("fusion_bench.method.opcm.opcm_general").OPCM

load = lambda n: LlamaForCausalLM.from_pretrained(work / "hf" / n, dtype=torch.float32)
pool = BaseModelPool(models={"_pretrained_": load("pre"), **{n: load(n) for n in names}})
merged = OPCM(alpha=alpha, shuffle_order=False, save_on_every_step=False).run(pool)
out = work / "fusionbench"
out.mkdir()
save_file({k: v.contiguous() for k, v in merged.state_dict().items()}, out / "model.safetensors")
for f in ["config.json", "tokenizer.json", "tokenizer_config.json", "zoo.json"]:
    shutil.copy(work / "hf" / "pre" / f, out / f)
PY
# Both merged models are zoo models to the evaluator (held-out `lang` text and the tasks).
cp "$work/hf/pre/zoo.json" "$work/ours/"

"$PYTHON" - "$work/fusionbench/model.safetensors" "$work/ours/model.safetensors" <<'PY'
import sys
from safetensors.numpy import load_file
theirs, ours = load_file(sys.argv[1]), load_file(sys.argv[2])
common = set(theirs) & set(ours)
assert common == set(ours), set(ours) - set(theirs)
diffs = sorted(
    (float(abs(ours[k].astype("float64") - theirs[k]).max() / max(abs(theirs[k]).max(), 1e-30)), k)
    for k in common
)
print(f"opcm: {len(common)} tensors; largest relative difference {diffs[-1][0]:.2e} ({diffs[-1][1]});"
      f" median {diffs[len(diffs) // 2][0]:.2e}")
PY
for side in ours fusionbench; do
  printf '%s: ' "$side"
  "$BIN" eval "$work/$side" --tasks --json 2>/dev/null | "$PYTHON" -c '
import json, sys
d = json.load(sys.stdin)
tasks = d["tasks"]
print("lang ppl %.3f; " % d["ppl"] + ", ".join(f"{k} {v:.3f}" for k, v in sorted(tasks.items()))
      + "; mean %.3f" % (sum(tasks.values()) / len(tasks)))'
done
