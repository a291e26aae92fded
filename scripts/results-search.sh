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
"$BIN" measure "$gguf" --candidates experiments/candidates/all-families-drop.toml --store "$store"
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

# Depth in the mix: each single family's predicted front from the same table (quantization,
# pruning, RPS, flattening, dropping), the mixed fronts' points none of them dominates, and at
# 55 and 60 MB the mixed searches (flatten or drop beside every per-layer family) against
# quantization alone, each point run as a job on the suite.
fam="$out/families"
mkdir -p "$fam/candidates"
printf '[[candidate]]\nprune = { method = "wanda", ratio = 0.5 }\n\n[[candidate]]\nprune = { method = "nm", n = 2, m = 4 }\n' >"$fam/candidates/pruning.toml"
printf '[[candidate]]\nrps = { ratio = 2.0 }\n' >"$fam/candidates/rps.toml"
printf 'depth = "flatten"\n' >"$fam/candidates/flatten.toml"
printf 'depth = "drop"\n' >"$fam/candidates/drop.toml"
cp experiments/candidates/quantization.toml "$fam/candidates/"
for c in pruning rps flatten drop quantization; do
  "$BIN" search "$gguf" --candidates "$fam/candidates/$c.toml" --store "$store" --json >"$fam/$c.json"
done
for c in all-families all-families-drop; do
  "$BIN" search "$gguf" --candidates "experiments/candidates/$c.toml" --store "$store" --json >"$fam/$c.json"
done
python3 scripts/search-families.py "$fam" all-families.json all-families-drop.json
# (At 60 MB the flatten search's point has no depth change, so only the drop search runs.)
for run in all-families-drop:55000000 quantization:55000000 all-families:55000000 \
  all-families-drop:60000000 quantization:60000000; do
  c=${run%%:*}; budget=${run##*:}
  "$BIN" search "$gguf" --candidates "experiments/candidates/$c.toml" --max-bytes "$budget" \
    --measure 1 "${eval_args[@]}" --out "$out/front-$c-$budget" --json >"$out/search-$c-$budget.json"
done
python3 - "$out" <<'PY'
import json, sys
d = sys.argv[1]
print("| budget | candidates | run | bytes | predicted KLD | suite KLD | predicted tok/s | decode tok/s | summary |")
print("|---|---|---|---|---|---|---|---|---|")
for run in ["quantization:55000000", "all-families:55000000", "all-families-drop:55000000",
            "quantization:60000000", "all-families-drop:60000000"]:
    c, budget = run.split(":")
    j = json.load(open(f"{d}/search-{c}-{budget}.json"))
    m = j["measured"][0]
    summary = j["front"][-1]["summary"]
    print(f"| {int(budget):,} | {c} | {m['run_id']} | {int(m['bytes']):,} | {m['predicted_kld']:.4f} | "
          f"{m['kld_mean']:.4f} | {m['predicted_tok_s']:.1f} | {m['decode_tok_s']:.1f} | {summary} |")
PY
