#!/usr/bin/env bash
# Measures the zoo table of experiments/RESULTS.md and the README: every bundled model's `lang`
# perplexity (held-out text, ctx 128) and exact-match accuracy on 200 held-out prompts per task.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet
bin="${CARGO_TARGET_DIR:-target}/release/reparam"
echo "| model | lang ppl | arith | brackets | reverse | recall | steps × batch, lr | loss on (lang weight) | train time (threads) |"
echo "|---|---|---|---|---|---|---|---|---|"
tv=$(mktemp)
trap 'rm -f "$tv"' EXIT
for m in base arith brackets reverse recall multi pre pre-arith pre-brackets pre-reverse pre-recall; do
  "$bin" eval "zoo:$m" --tasks --json | python3 -c "
import json, sys
r = json.load(sys.stdin)
meta = json.load(open('assets/zoo/$m/zoo.json'))
t = r['tasks']
pct = lambda k: f\"{100 * t[k]:.1f} %\"
tr = meta['train']
# Models trained before the loss mask existed have no loss_on; they were trained on all tokens.
# Models trained before side-by-side builds have no train_threads; they used both cores.
# Models trained before lang weights have no lang_weight; their lang tokens weighed 1.
print(f\"| $m | {r['ppl']:.3f} | {pct('arith')} | {pct('brackets')} | {pct('reverse')} | {pct('recall')} | \"
      f\"{tr['steps']} × {tr['batch']}, {tr['lr']:g} | {meta.get('loss_on', 'all_tokens')} ({meta.get('lang_weight', 1):g}) | \"
      f\"{meta['train_seconds'] / 60:.0f} min ({meta.get('train_threads', 2)}) |\")
if 'task_vector' in meta and meta['parent'] == 'pre':
    tv = meta['task_vector']
    cos = ', '.join(f\"{k} {v:.3f}\" for k, v in sorted(tv['cosine'].items()))
    open('$tv', 'a').write(f\"| $m | {tv['norm']:.2f} | {cos} |\\n\")
"
done
echo
echo "Task vectors of the merge family (from \`zoo.json\`): ‖θ − θ_pre‖ and the cosine with each sibling's."
echo
echo "| model | ‖τ‖ | cosine with |"
echo "|---|---|---|"
cat "$tv"
