#!/usr/bin/env bash
# Measures the shift-add table of experiments/RESULTS.md on SmolLM2-135M-Instruct: base, RTN
# 4/3/2-bit (g128), shift-add 4/3/2-bit in the block and the column layouts, and an
# auto-allocated 2.5-bit mix, and the 3-bit column layout with the 8-bit embedding at 128 and 64
# rows per scale set (the Q3_K_S comparison); ctx 512, 16 chunks of assets/text/licenses.txt, calibration
# 32×512 tokens of assets/text/calib.txt. Prints markdown rows; JSON per run goes to $OUT.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-experiments/results/shiftadd}"
mkdir -p "$out"
gguf=$(scripts/fetch-models.sh | tail -n 1)
cargo build --release --quiet
bin="${CARGO_TARGET_DIR:-target}/release/reparam"
text=assets/text/licenses.txt
"$bin" allocate "$gguf" --avg-bits 2.5 --out "$out/alloc-2.5.toml" 2>/dev/null
for r in rtn-4bit rtn-3bit rtn-2bit shiftadd-4bit shiftadd-3bit shiftadd-2bit \
         shiftadd-4bit-column shiftadd-3bit-column shiftadd-2bit-column alloc-2.5 \
         shiftadd-3bit-column-q8embd shiftadd-3bit-column-g64-q8embd; do
  recipe="experiments/recipes/$r.toml"
  [ -f "$recipe" ] || recipe="$out/$r.toml"
  "$bin" run "$gguf" --recipe "$recipe" --text "$text" --calib-text assets/text/calib.txt --ctx 512 --chunks 16 --json > "$out/$r.json"
done
python3 - "$out" <<'PY'
import json, sys, glob, os
out = sys.argv[1]
names = ["rtn-4bit", "rtn-3bit", "rtn-2bit", "shiftadd-4bit", "shiftadd-3bit", "shiftadd-2bit", "shiftadd-4bit-column",
         "shiftadd-3bit-column", "shiftadd-2bit-column", "alloc-2.5", "shiftadd-3bit-column-q8embd",
         "shiftadd-3bit-column-g64-q8embd"]
first = json.load(open(os.path.join(out, names[0] + ".json")))
print("| recipe | ppl | KLD mean | KLD p99 | top-1 | avg bits | bytes | decode tok/s | prefill tok/s | compress s |")
print("|---|---|---|---|---|---|---|---|---|---|")
print(f"| base (f32) | {first['base_ppl']:.3f} | 0 | 0 | 100 % | 32 | {first['base_bytes']:,} | | | |")
for n in names:
    r = json.load(open(os.path.join(out, n + ".json")))
    print(f"| {n} | {r['ppl']:.3f} ± {r['ppl_stderr']:.2f} | {r['kld_mean']:.4f} | {r['kld_p99']:.3f} | "
          f"{100*r['top1_agree']:.1f} % | {r['avg_bits']:.3f} | {r['bytes']:,} | {r['decode_tok_s']:.1f} | "
          f"{r['prefill_tok_s']:.0f} | {r['compress_seconds']:.1f} |")
PY
