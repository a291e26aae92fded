#!/usr/bin/env bash
# The decode table of experiments/RESULTS.md: `reparam bench decode` for each stored form on
# SmolLM2-135M-Instruct, each run next to the llama.cpp quantization it is compared with
# (llama-bench tg/pp in the same run, same thread count). Prints one markdown row per run.
# Calibration uses 8 windows: decode speed depends on the stored form, not on how well the
# weights were fitted. Needs a release build and the peer (scripts/llamacpp-peer.sh; the
# results-suite.sh `peer` step makes the F32/Q3_K_S/Q4_0 GGUFs).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${REPARAM_BIN:-${CARGO_TARGET_DIR:-target}/release/reparam}
gguf=${SMOLLM2:-$HOME/.cache/reparam/models/SmolLM2-135M-Instruct.Q4_1.gguf}
work=${WORK:-$HOME/.cache/reparam/suite}
mkdir -p "$work"
bin=$(scripts/llamacpp-peer.sh | tail -n 1)
[ -f "$work/F32.gguf" ] || "$bin/llama-quantize" --allow-requantize "$gguf" "$work/F32.gguf" F32 >/dev/null 2>&1
for q in F16 Q3_K_S Q4_0 Q4_1; do
  [ -f "$work/$q.gguf" ] || "$bin/llama-quantize" "$work/F32.gguf" "$work/$q.gguf" "$q" >/dev/null 2>&1
done
runs=(
  "-:F32"
  "f16:F16"
  "shiftadd-3bit-column-g64-q8embd:Q3_K_S"
  "shiftadd-3bit-q8embd:Q4_0"
  "rtn-4bit-g32-q8embd:Q4_0"
  "rtn-4bit-sym-g32-q8embd:Q4_0"
  "rtn-4bit-min-g32-q8embd:Q4_1"
  "wanda-50:F32"
  "wanda-50-f16embd:F32"
  "nm-2of4:F32"
  "rps-2x:F32"
)
# RUNS="recipe:PEER …" measures those rows only.
[ -z "${RUNS:-}" ] || read -ra runs <<<"$RUNS"
echo "| model | forms (MB read per token) | ours decode tok/s (spin / rayon pool) | GB/s | % of bound | ours prefill tok/s | llama.cpp | tg tok/s | pp tok/s |"
echo "|---|---|---|---|---|---|---|---|---|"
for r in "${runs[@]}"; do
  recipe=${r%%:*}; peer=${r##*:}
  args=()
  [ "$recipe" = - ] || args=(--recipe "experiments/recipes/$recipe.toml" --calib-samples 8)
  out="$work/decode-${recipe}.json"
  "$BIN" bench decode "$gguf" "${args[@]}" --peer-model "$work/$peer.gguf" --peer-bin "$bin" --json >"$out"
  python3 - "$out" "$recipe" "$peer" <<'PY'
import json, sys
j = json.load(open(sys.argv[1]))
forms = ", ".join(f"{f['form']} {f['bytes']/1e6:.1f}" for f in j["forms"])
f32_cache = [o for o in j["ours"] if o["kv"].lower() == "f32"]
spin = next(o for o in f32_cache if o["pool"] == "Spin")
ray = next(o for o in f32_cache if o["pool"] == "Rayon")
p = j["llama_cpp"] or {}
name = "f32" if sys.argv[2] == "-" else sys.argv[2]
print(f"| {name} | {forms} | {spin['decode_tok_s']:.1f} / {ray['decode_tok_s']:.1f} | {spin['gb_s']:.1f} | "
      f"{100*spin['of_bound']:.0f} % of {j['read_bandwidth_gb_s']:.0f} GB/s | {j['prefill']['prefill_tok_s']:.1f} | {sys.argv[3]} | "
      f"{p.get('tg_tok_s', float('nan')):.1f} | {p.get('pp_tok_s', float('nan')):.1f} |")
PY
done
