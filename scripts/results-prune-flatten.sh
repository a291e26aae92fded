#!/usr/bin/env bash
# Measures the pruning and flattening tables of experiments/RESULTS.md: on SmolLM2-135M-Instruct
# (ctx 512, 8 chunks of assets/text/licenses.txt, calibration 32×512 tokens of
# assets/text/calib.txt) magnitude / Wanda / 2:4 at 50 %, an OWL-allocated Wanda 50 %, and drop vs
# flatten at 2, 4 and 6 of 30 blocks; on zoo:multi (its held-out `lang` text, 200 prompts per
# task) the same recipes. Prints markdown rows; JSON per run goes to $OUT.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-experiments/results/prune-flatten}"
mkdir -p "$out"
gguf=$(scripts/fetch-models.sh | tail -n 1)
cargo build --release --quiet
bin="${CARGO_TARGET_DIR:-target}/release/reparam"
text=assets/text/licenses.txt
"$bin" allocate "$gguf" --prune 0.5 --owl --calib-text assets/text/calib.txt --out "$out/owl-wanda-50.toml" 2>/dev/null
"$bin" allocate zoo:multi --prune 0.5 --owl --out "$out/zoo-owl-wanda-50.toml" 2>/dev/null
smol="magnitude-50 wanda-50 nm-2of4 owl-wanda-50 drop-2 flatten-2 drop-4 flatten-4 drop-6 flatten-6"
for r in $smol; do
  recipe="experiments/recipes/$r.toml"
  [ -f "$recipe" ] || recipe="$out/$r.toml"
  "$bin" run "$gguf" --recipe "$recipe" --text "$text" --calib-text assets/text/calib.txt --ctx 512 --chunks 8 --json > "$out/smol-$r.json"
done
zoo="magnitude-50 wanda-50 owl-wanda-50 nm-2of4 drop-2 flatten-2 drop-4 flatten-4"
for r in $zoo; do
  recipe="experiments/recipes/$r.toml"
  [ -f "$recipe" ] || recipe="$out/zoo-$r.toml"
  "$bin" run zoo:multi --recipe "$recipe" --json > "$out/zoo-$r.json"
done
python3 - "$out" "$smol" "$zoo" <<'PY'
import json, sys, os
out, smol, zoo = sys.argv[1], sys.argv[2].split(), sys.argv[3].split()
load = lambda n: json.load(open(os.path.join(out, n + ".json")))
first = load("smol-" + smol[0])
print("| recipe | ppl | KLD mean | top-1 | sparsity | blocks removed | bytes | decode tok/s | prefill tok/s | compress s |")
print("|---|---|---|---|---|---|---|---|---|---|")
print(f"| base (f32) | {first['base_ppl']:.3f} | 0 | 100 % | 0 | 0 | {first['base_bytes']:,} | | | |")
for n in smol:
    r = load("smol-" + n)
    print(f"| {n} | {r['ppl']:.3f} ± {r['ppl_stderr']:.2f} | {r['kld_mean']:.4f} | {100*r['top1_agree']:.1f} % | "
          f"{r['sparsity']:.3f} | {r['flattened_blocks']} | {r['bytes']:,} | {r['decode_tok_s']:.1f} | "
          f"{r['prefill_tok_s']:.0f} | {r['compress_seconds']:.1f} |")
print()
print("| recipe | lang ppl | KLD mean | top-1 | arith | brackets | reverse | recall | bytes |")
print("|---|---|---|---|---|---|---|---|---|")
for n in zoo:
    r = load("zoo-" + n)
    t = r["tasks"]
    print(f"| {n} | {r['ppl']:.3f} | {r['kld_mean']:.4f} | {100*r['top1_agree']:.1f} % | {100*t['arith']:.1f} % | "
          f"{100*t['brackets']:.1f} % | {100*t['reverse']:.1f} % | {100*t['recall']:.1f} % | {r['bytes']:,} |")
PY
