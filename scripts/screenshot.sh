#!/usr/bin/env bash
# Screenshots of every panel of the real app with real data, at 1280x800 and (small-*.png) at
# 640x480: starts Xvfb, runs
# `reparam gui --demo-script` (which opens zoo:multi, runs real jobs into a fresh store, tags
# them, switches panels and saves window screenshots through egui), and checks that every PNG
# was written. Rendering is Mesa's software OpenGL (llvmpipe); no GPU or desktop needed.
#
# usage: scripts/screenshot.sh OUTDIR
set -euo pipefail
out="${1:?usage: scripts/screenshot.sh OUTDIR}"
mkdir -p "$out"
out="$(cd "$out" && pwd)"
cd "$(dirname "$0")/.."

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/reparam/target}"
if ! command -v Xvfb >/dev/null; then
  echo "screenshot.sh needs Xvfb: apt-get install -y xvfb" >&2
  exit 1
fi
cargo build --quiet --bin reparam
bin="$CARGO_TARGET_DIR/debug/reparam"

work="$(mktemp -d)"
xvfb_pid=""
cleanup() {
  if [ -n "$xvfb_pid" ]; then kill "$xvfb_pid" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

# Three recipes per family tag, a sweep, then one screenshot per panel.
cat > "$work/demo.txt" <<DEMO
open zoo:multi
eval 4 64 20
sensitivity
expand 0
panel model
screenshot $out/model.png
tags rtn
rtn 4
run
rtn 3
run
rtn 2
run
wait-jobs
tags shiftadd
bits 4
run
bits 3
run
bits 2
run
wait-jobs
clear
bits 3 blk.*
bits 2 blk.*.ffn_*
expand 1
select-kind ffn_down
panel recipe
screenshot $out/recipe.png
tags sweep
sweep
panel jobs
frames 30
screenshot $out/jobs.png
wait-jobs
panel pareto
axes bytes kld_mean
select-last
frames 10
screenshot $out/pareto.png
plot-png $work/plot.png
plot-svg $work/plot.svg
compare-tags rtn shiftadd
compare-last
select-last
panel history
frames 10
screenshot $out/history.png
window 640 480
panel model
screenshot $out/small-model.png
panel recipe
screenshot $out/small-recipe.png
panel jobs
screenshot $out/small-jobs.png
panel pareto
screenshot $out/small-pareto.png
panel history
screenshot $out/small-history.png
window 1280 800
open zoo:pre
eval 2 64 20
recipe experiments/recipes/merge-opcm.toml
run
wait-jobs
select-last
panel history
frames 10
screenshot $out/merge-timeline.png
panel pareto
axes merged_models task_acc_mean
frames 10
screenshot $out/merge-steps.png
quit
DEMO

display=":$((90 + RANDOM % 9))"
Xvfb "$display" -screen 0 1280x800x24 -nolisten tcp >"$work/xvfb.log" 2>&1 &
xvfb_pid=$!
sleep 1
mkdir -m 700 -p "$work/xdg"
DISPLAY="$display" XDG_RUNTIME_DIR="$work/xdg" LIBGL_ALWAYS_SOFTWARE=1 \
  timeout 1200 "$bin" gui --store "$work/store" --demo-script "$work/demo.txt"

for panel in model recipe jobs pareto history; do
  for size in "" small-; do
    test -s "$out/$size$panel.png" || { echo "missing $out/$size$panel.png" >&2; exit 1; }
  done
done
for f in merge-timeline.png merge-steps.png; do
  test -s "$out/$f" || { echo "missing $out/$f" >&2; exit 1; }
done
# The Pareto panel's own exports: a PNG cropped to the plot, and an SVG with every point.
for f in plot.png plot.svg; do
  test -s "$work/$f" || { echo "the plot export $f was not written" >&2; exit 1; }
done
grep -q "<polyline" "$work/plot.svg" || { echo "the SVG export has no front" >&2; exit 1; }
echo "wrote $(ls "$out"/*.png | wc -l) screenshots to $out"
if [ -n "${KEEP_PLOT_EXPORTS:-}" ]; then cp "$work/plot.png" "$work/plot.svg" "$out/"; fi
