#!/usr/bin/env bash
# Headline rows of experiments/RESULTS.md on the held-out suite: ours with the default
# calibration mixture, and the llama.cpp peer on the same six domain texts and positions.
#   scripts/results-suite.sh peer                 llama.cpp F32 → Q3_K_S / Q4_0, each without and
#                                                 with an importance matrix from our calibration mixture
#                                                 (PEER_TYPES="Q4_1 Q4_0-imat …" picks others)
#   scripts/results-suite.sh ours RECIPE...       `reparam run MODEL --recipe R --suite held-out`
#                                                 (RUN_ARGS="--calib-samples 128" adds flags)
# Both print one markdown row per model: the token-weighted suite values, then per domain.
# Needs a release build (cargo build --release) and the peer (scripts/llamacpp-peer.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${REPARAM_BIN:-${CARGO_TARGET_DIR:-target}/release/reparam}
gguf=${SMOLLM2:-$HOME/.cache/reparam/models/SmolLM2-135M-Instruct.Q4_1.gguf}
work=${WORK:-$HOME/.cache/reparam/suite}
domains=(prose dialogue technical code tables legal)
domain_file() { [ "$1" = legal ] && echo assets/text/licenses.txt || echo "assets/text/suite/$1.txt"; }
mkdir -p "$work"

peer() {
  local bin f32 q
  bin=$(scripts/llamacpp-peer.sh | tail -n 1)
  f32="$work/F32.gguf"
  [ -f "$f32" ] || "$bin/llama-quantize" --allow-requantize "$gguf" "$f32" F32 >/dev/null 2>&1
  [ -f "$work/imatrix.dat" ] || "$bin/llama-imatrix" -m "$f32" -f assets/text/calib-mix.txt \
    -c 512 --chunks 32 -t 2 -o "$work/imatrix.dat" >"$work/imatrix.log" 2>&1
  local types=(${PEER_TYPES:-Q3_K_S Q3_K_S-imat Q4_0 Q4_0-imat})
  for q in "${types[@]}"; do
    if [ "${q%-imat}" = "$q" ]; then
      [ -f "$work/$q.gguf" ] || "$bin/llama-quantize" "$f32" "$work/$q.gguf" "$q" >/dev/null 2>&1
    else
      [ -f "$work/$q.gguf" ] || "$bin/llama-quantize" --imatrix "$work/imatrix.dat" "$f32" \
        "$work/$q.gguf" "${q%-imat}" >/dev/null 2>&1
    fi
  done
  for d in "${domains[@]}"; do
    "$bin/llama-perplexity" -m "$f32" -f "$(domain_file "$d")" -c 512 --chunks 16 -t 2 \
      --kl-divergence-base "$work/base-$d.kld" >"$work/f32-$d.log" 2>&1
    for q in "${types[@]}"; do
      "$bin/llama-perplexity" -m "$work/$q.gguf" -f "$(domain_file "$d")" -c 512 --chunks 16 -t 2 \
        --kl-divergence-base "$work/base-$d.kld" --kl-divergence >"$work/$q-$d.log" 2>&1
    done
    rm -f "$work/base-$d.kld"
  done
  for q in "${types[@]}"; do
    python3 - "$work" "$q" "$(stat -c %s "$work/$q.gguf")" "${domains[@]}" <<'PY'
import re, sys
work, q, size, domains = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4:]
rows = {}
for d in domains:
    log = open(f"{work}/{q}-{d}.log", errors="replace").read()
    ppl = float(re.search(r"Mean PPL\(Q\)\s*:\s*([\d.]+)", log).group(1))
    kld = float(re.search(r"Mean\s+KLD:\s*([\d.]+)", log).group(1))
    top = float(re.search(r"Same top p:\s*([\d.]+)", log).group(1)) / 100
    rows[d] = (ppl, kld, top)
import math
# Every domain scores the same positions (16 chunks of 512), so token weights are equal.
n = len(rows)
ppl = math.exp(sum(math.log(r[0]) for r in rows.values()) / n)
kld = sum(r[1] for r in rows.values()) / n
top = sum(r[2] for r in rows.values()) / n
per = " | ".join(f"{rows[d][1]:.4f}" for d in domains)
print(f"| llama.cpp {q} | {size:,} | {ppl:.3f} | {kld:.4f} | {100*top:.1f} % | {per} |")
PY
  done
}

ours() {
  local r out
  for r in "$@"; do
    out="$work/ours-$(basename "$r" .toml).json"
    # shellcheck disable=SC2086 # RUN_ARGS is a list of flags, e.g. "--calib-samples 128"
    "$BIN" run "$gguf" --recipe "$r" --suite held-out --ctx 512 --chunks 16 --no-store --json \
      ${RUN_ARGS:-} >"$out"
    python3 - "$out" "$(basename "$r" .toml)" "${domains[@]}" <<'PY'
import json, sys
d = json.load(open(sys.argv[1])); name = sys.argv[2]; domains = sys.argv[3:]
# `--no-store` prints the run's report (per-domain values under `domains`); a stored run's
# record has them as `kld_mean@DOMAIN`.
kld = lambda x: d["domains"][x]["kld_mean"] if "domains" in d else d[f"kld_mean@{x}"]
per = " | ".join(f"{kld(x):.4f}" for x in domains)
print(f"| {name} | {d['bytes']:,} | {d['ppl']:.3f} | {d['kld_mean']:.4f} | {100*d['top1_agree']:.1f} % | {per} |")
PY
  done
}

case "${1:-}" in
  peer) peer ;;
  ours) shift; ours "$@" ;;
  *) sed -n 2,8p "$0"; exit 2 ;;
esac
