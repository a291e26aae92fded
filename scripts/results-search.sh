#!/usr/bin/env bash
# The search section of experiments/RESULTS.md on SmolLM2-135M-Instruct: the measurement table
# over every family (experiments/candidates/all-families.toml), the searched recipe at the size
# of the best hand-written 3-bit recipe and at llama.cpp Q4_0's file size, and points spread
# along the all-family front, each run as a stored job on the held-out suite (ctx 512, 16
# chunks) and printed predicted against measured. Needs a release build; the llama.cpp numbers
# it compares with come from scripts/results-suite.sh (same text and positions).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${REPARAM_BIN:-${CARGO_TARGET_DIR:-target}/release/reparam}
gguf=${SMOLLM2:-$HOME/.cache/reparam/models/SmolLM2-135M-Instruct.Q4_1.gguf}
store=${STORE:-experiments/store}
out=${OUT:-experiments/results/search}
mkdir -p "$out"
eval_args=(--suite held-out --ctx 512 --chunks 16 --store "$store")
"$BIN" measure "$gguf" --candidates experiments/candidates/all-families.toml --store "$store"
# At the hand-written recipe's size (shiftadd-3bit-column-g64-q8embd: 78 415 314 bytes), at
# llama.cpp Q3_K_S's (88 201 792 bytes; experiments/recipes/searched-shiftadd-88mb.toml is that
# point) and at Q4_0's (91 726 912 bytes): the least predicted KLD within the budget, measured.
for budget in 78415314 88201792 91726912; do
  "$BIN" search "$gguf" --candidates experiments/candidates/shiftadd-bits.toml \
    --max-bytes "$budget" --measure 1 "${eval_args[@]}" --out "$out/front-$budget" --json \
    >"$out/search-$budget.json"
done
# Every family, six points spread along the front: how well the prediction ranks them.
"$BIN" search "$gguf" --candidates experiments/candidates/all-families.toml \
  --measure 6 "${eval_args[@]}" --out "$out/front-all" --json >"$out/search-all.json"
python3 - "$out" <<'PY'
import json, sys
d = sys.argv[1]
print("| search | run | predicted bytes | bytes | predicted KLD | suite KLD | predicted tok/s | decode tok/s |")
print("|---|---|---|---|---|---|---|---|")
for name in ["search-78415314", "search-88201792", "search-91726912", "search-all"]:
    j = json.load(open(f"{d}/{name}.json"))
    for m in j["measured"]:
        f = lambda v, p: "–" if v is None else f"{v:.{p}f}"
        print(f"| {name} | {m['run_id']} | {m['predicted_bytes']:,} | {int(m['bytes']):,} | "
              f"{f(m['predicted_kld'], 4)} | {f(m['kld_mean'], 4)} | "
              f"{f(m['predicted_tok_s'], 1)} | {f(m['decode_tok_s'], 1)} |")
    if j["spearman"] is not None:
        print(f"| {name}: Spearman (predicted vs measured KLD) | {j['spearman']:.3f} | | | | | | |")
PY
