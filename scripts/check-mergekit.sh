#!/usr/bin/env bash
# Merges the zoo's four specialists into zoo:pre with mergekit and with us, method by method,
# and compares the merged tensors one by one (largest |difference| over the tensor's largest
# |value|): task arithmetic (λ 0.3), linear (the plain average) and TIES (density 0.2, equal
# weights), each with our recipe of the same models, order and knobs. Needs a release build and
# mergekit (`pip install mergekit`; it brings torch): MERGEKIT=path/to/mergekit-yaml if not on
# PATH. Prints one line per method: the worst tensor and its relative difference.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${REPARAM_BIN:-${CARGO_TARGET_DIR:-target}/release/reparam}
MERGEKIT=${MERGEKIT:-mergekit-yaml}
PYTHON=${PYTHON:-$(dirname "$(command -v "$MERGEKIT")")/python}
[ -x "$PYTHON" ] || PYTHON=python3
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
zoo=$PWD/assets/zoo
models=(pre-arith pre-brackets pre-reverse pre-recall)

mergekit_config() { # METHOD PARAMS
  echo "merge_method: $1"
  # A linear merge averages the models it lists; the others are relative to the base.
  [ "$1" = linear ] || echo "base_model: $zoo/pre"
  echo "models:"
  for m in "${models[@]}"; do
    echo "  - model: $zoo/$m"
    echo "    parameters: {$2}"
  done
  echo "dtype: float32"
  echo "out_dtype: float32"
}

for case in "task_arithmetic|weight: 0.3|merge-ta" "linear|weight: 1.0|merge-avg" \
  "ties|weight: 1.0, density: 0.2|merge-ties"; do
  IFS='|' read -r method params recipe <<<"$case"
  mergekit_config "$method" "$params" >"$work/$method.yml"
  "$MERGEKIT" "$work/$method.yml" "$work/mergekit-$method" --quiet >/dev/null 2>&1
  run=$("$BIN" run zoo:pre --recipe "experiments/recipes/$recipe.toml" --prompts 0 --chunks 1 \
    --store "$work/store" --json 2>/dev/null | "$PYTHON" -c 'import json,sys; print(json.load(sys.stdin)["run_id"])')
  "$BIN" export "$run" --store "$work/store" --model "$work/ours-$method" --format safetensors \
    >/dev/null 2>&1
  "$PYTHON" - "$work/mergekit-$method/model.safetensors" "$work/ours-$method/model.safetensors" \
    "$method" "$zoo" "${models[@]}" <<'PY'
import sys
import numpy as np
from safetensors.numpy import load_file
theirs, ours, method, zoo = load_file(sys.argv[1]), load_file(sys.argv[2]), sys.argv[3], sys.argv[4]
assert set(theirs) == set(ours), set(theirs) ^ set(ours)


def worst(a, b):
    return max(
        (float(abs(a[k].astype("float64") - b[k]).max() / max(abs(b[k]).max(), 1e-30)), k)
        for k in b
    )


w = worst(ours, theirs)
print(f"{method}: {len(theirs)} tensors; largest relative difference {w[0]:.2e} ({w[1]})")
if method == "ties":
    # TIES keeps the ⌊0.2·n⌋ largest |τ| of each tensor. The zoo's f16 weights make equal
    # magnitudes common, and where they straddle the cut mergekit's choice is torch's
    # (unstable) argsort; ours keeps the earlier position. The same method with that
    # tie-break, in numpy, is what ours must equal; mergekit may differ at those entries only.
    base = load_file(f"{zoo}/pre/model.safetensors")
    fts = [load_file(f"{zoo}/{m}/model.safetensors") for m in sys.argv[5:]]
    ref, straddling = {}, 0
    for k, b in base.items():
        b = b.astype("float32")
        taus = []
        for ft in fts:
            t = (ft[k].astype("float32") - b).reshape(-1)
            keep = int(0.2 * t.size)
            order = np.argsort(-np.abs(t), kind="stable")
            cut = abs(t[order[keep - 1]])
            straddling += int((abs(t[order[keep:]]) == cut).any())
            m = np.zeros_like(t)
            m[order[:keep]] = t[order[:keep]]
            taus.append(m)
        taus = np.stack(taus)
        sign = np.where(taus.sum(0) >= 0, 1.0, -1.0)
        agree = np.sign(taus) == sign
        mean = (taus * agree).sum(0) / np.maximum(agree.sum(0), 1)
        ref[k] = (b.reshape(-1) + mean).reshape(b.shape)
    r = worst(ours, ref)
    differ = sum(int((abs(ours[k].astype("float64") - theirs[k]) > 1e-6).sum()) for k in theirs)
    total = sum(v.size for v in theirs.values())
    print(
        f"ties: against the same method with a stable top-k, largest relative difference "
        f"{r[0]:.2e} ({r[1]}); mergekit differs from ours in {differ} of {total} entries, "
        f"where {straddling} of {len(base) * len(fts)} trimmed tensors have equal magnitudes "
        f"straddling the cut"
    )
PY
done
