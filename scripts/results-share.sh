#!/usr/bin/env bash
# Rows of experiments/RESULTS.md for RPS sharing and continual merging.
#   scripts/results-share.sh rps MODEL [TEXT CTX CHUNKS]   RPS c ∈ {1,1.5,2,4} × refit, and
#                                                           magnitude pruning at equal bytes
#   scripts/results-share.sh merge [PROMPTS]               every merge method on the zoo's merge
#                                                           family (zoo:pre + pre-*), two orders
#   scripts/results-share.sh merge_knobs [PROMPTS]         OPCM's α and task arithmetic's λ swept
# Needs a release build: cargo build --release --bin reparam --example rps_vs_magnitude
set -euo pipefail
cd "$(dirname "$0")/.."
T=${CARGO_TARGET_DIR:-target}/release
BIN=${REPARAM_BIN:-$T/reparam}
MAG=${MAG_BIN:-$T/examples/rps_vs_magnitude}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

rps() {
  # Zoo models score their held-out `lang` text at their 128-token context.
  local model=$1 text=${2:-assets/text/licenses.txt} ctx=${3:-512} chunks=${4:-8}
  [[ $model == zoo:* ]] && ctx=${3:-128}
  local evalargs=(--ctx "$ctx" --chunks "$chunks")
  [[ $model == zoo:* ]] || evalargs+=(--text "$text" --calib-text assets/text/calib.txt)
  echo "| c | refit | ppl | KLD mean | top-1 agree | linear bytes ratio | compress s |"
  echo "|---|---|---|---|---|---|---|"
  for c in 1 1.5 2 4; do
    for refit in false true; do
      printf 'seed = 0\n[[layers]]\nmatch = "blk.*.*"\n[layers.rps]\nratio = %s\nrefit = %s\n' "$c" "$refit" >"$tmp/r.toml"
      "$BIN" run "$model" --recipe "$tmp/r.toml" "${evalargs[@]}" --force --json 2>/dev/null |
        python3 -c "import json,sys; d=json.load(sys.stdin); print(f\"| $c | $refit | {d['ppl']:.3f} | {d['kld_mean']:.4f} | {d['top1_agree']:.3f} | {d['rps_ratio']:.3f} | {d['compress_seconds']:.1f} |\")"
    done
  done
  echo
  echo "magnitude pruning at equal bytes (kept f32 values + 1-bit mask):"
  local text_arg=$text
  [[ $model == zoo:* ]] && text_arg=zoo
  "$MAG" "$model" "$text_arg" "$ctx" "$chunks" 1,1.5,2,4 |
    python3 -c "
import json,sys
for l in sys.stdin:
    d=json.loads(l); print(f\"| {d['ratio']} | keep {d['keep']:.3f} | {d['ppl']:.3f} | {d['kld_mean']:.4f} | {d['top1_agree']:.3f} |\")"
}

merge() {
  # The merge-ready family: `pre` and its four specialists, every method with its shipped
  # recipe's knobs (experiments/recipes/merge-*.toml), in two orders.
  local prompts=${1:-200}
  for order in "arith brackets reverse recall" "recall reverse brackets arith"; do
    for recipe in opcm ta avg ties dare; do
      models=$(printf '"zoo:pre-%s", ' $order)
      grep -v '^models' "experiments/recipes/merge-$recipe.toml" >"$tmp/m.toml"
      sed -i "s|^\[merge\]|[merge]\nmodels = [${models%, }]|" "$tmp/m.toml"
      echo "#### $(sed -n 's/^method = "\(.*\)"/\1/p' "$tmp/m.toml"), order: $order"
      "$BIN" run zoo:pre --recipe "$tmp/m.toml" --prompts "$prompts" --chunks 4 --force --json 2>/dev/null |
        python3 -c "
import json,sys
d=json.load(sys.stdin)
print('| step | model | arith | brackets | reverse | recall | mean | ppl | λ | ‖θ̄−θ₀‖ | removed |')
print('|---|---|---|---|---|---|---|---|---|---|---|')
for s in d['steps']:
    t=s['tasks']; out=s.get('projected_out'); out='—' if out is None else f'{out:.3f}'
    print(f\"| {s['step']} | {s['model']} | {t['arith']:.3f} | {t['brackets']:.3f} | {t['reverse']:.3f} | {t['recall']:.3f} | **{s['task_acc_mean']:.3f}** | {s['ppl']:.3f} | {s['lambda']:.3f} | {s['merged_norm']:.1f} | {out} |\")
print(f\"final ppl {d['ppl']:.3f} (zoo:pre {d['base_ppl']:.3f})\")"
      echo
    done
  done
}

merge_knobs() {
  # The final merged model of OPCM and task arithmetic across their one knob (α, λ), first order.
  local prompts=${1:-200}
  local models='"zoo:pre-arith", "zoo:pre-brackets", "zoo:pre-reverse", "zoo:pre-recall"'
  echo "| method | knob | final mean | arith | brackets | reverse | recall | final ppl |"
  echo "|---|---|---|---|---|---|---|---|"
  for run in "opcm 0.1" "opcm 0.3" "opcm 0.5" "opcm 0.7" "opcm 0.9" \
    "task_arithmetic 0.3" "task_arithmetic 0.5" "task_arithmetic 1.0"; do
    set -- $run
    printf '[merge]\nmodels = [%s]\nmethod = "%s"\nalpha = %s\n' "$models" "$1" "$2" >"$tmp/k.toml"
    "$BIN" run zoo:pre --recipe "$tmp/k.toml" --prompts "$prompts" --chunks 4 --force --json 2>/dev/null |
      python3 -c "
import json,sys
d=json.load(sys.stdin); s=d['steps'][-1]; t=s['tasks']
print(f\"| $1 | $2 | **{s['task_acc_mean']:.3f}** | {t['arith']:.3f} | {t['brackets']:.3f} | {t['reverse']:.3f} | {t['recall']:.3f} | {d['ppl']:.3f} |\")"
  done
}

"$@"
