#!/usr/bin/env bash
# The GPU checks: build the CUDA test binary here (no GPU needed), then run it on a machine
# with an NVIDIA GPU and CUDA 13 libraries (driver, cuBLAS, cuRAND, NVRTC, cudart), such as the
# project's lent H200 machine, which has no Rust toolchain and no network.
#
#   scripts/gpu-check.sh build   here: CUDA toolchain (scripts/cuda-toolchain.sh), the test
#                                binary `tests/gpu.rs` at opt-level 3, and everything it needs
#                                under .gpu/: bin/ (binary, zstd) and the SmolLM2 file in two
#                                parts, model-a/ and model-b/, each small enough to carry once.
#   scripts/gpu-check.sh stage   there: keep the parts carried so far in $STAGE (/tmp/reparam-gpu)
#   scripts/gpu-check.sh run     there: join the model, run the GPU tests, then the CPU-vs-GPU
#                                timings; logs to $OUT (or ./gpu-out)
#
# On the lent machine that is three calls in a row, each within its warm period: carry
# .gpu/model-a with `stage`, .gpu/model-b with `stage`, then .gpu/bin with `run` (docs/gpu.md).
set -euo pipefail
cd "$(dirname "$0")/.."
stage_dir="${STAGE:-/tmp/reparam-gpu}"
model_name=SmolLM2-135M-Instruct.Q4_1.gguf

build() {
  eval "$(scripts/cuda-toolchain.sh)"
  local gguf
  gguf=$(scripts/fetch-models.sh | tail -1)
  # The package's own code at full speed for the CPU side of the timings; dependencies keep
  # the test profile's settings, so nothing but reparam is rebuilt for it.
  local bin
  bin=$(CARGO_PROFILE_DEV_OPT_LEVEL=3 cargo test --locked --features cuda --test gpu --no-run \
    --message-format=json | python3 -c '
import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "gpu" and m.get("executable"):
        print(m["executable"])')
  rm -rf .gpu
  mkdir -p .gpu/bin .gpu/model-a .gpu/model-b
  strip -o .gpu/bin/gpu-tests "$bin"
  zstd -q -19 -T0 --rm .gpu/bin/gpu-tests -o .gpu/bin/gpu-tests.zst
  local half=$(( ($(stat -c %s "$gguf") + 1) / 2 ))
  split -b "$half" -d -a 1 "$gguf" .gpu/model-
  mv .gpu/model-0 .gpu/model-a/part-0
  mv .gpu/model-1 .gpu/model-b/part-1
  sha256sum "$gguf" | cut -d' ' -f1 >.gpu/bin/model.sha256
  pwd >.gpu/bin/built-in
  du -sh .gpu/*
}

stage() {
  mkdir -p "$stage_dir"
  cp .gpu/model-*/part-* "$stage_dir"/ 2>/dev/null || true
  ls -la "$stage_dir"
}

run() {
  local out="${OUT:-$PWD/gpu-out}"
  mkdir -p "$out"
  stage
  cat "$stage_dir"/part-0 "$stage_dir"/part-1 >"$stage_dir/$model_name"
  echo "$(cat .gpu/bin/model.sha256)  $stage_dir/$model_name" | sha256sum -c -
  zstd -q -d -f .gpu/bin/gpu-tests.zst -o "$stage_dir/gpu-tests"
  chmod +x "$stage_dir/gpu-tests"
  # The binary reads the bundled zoo and texts at the path it was built in.
  local built_in
  built_in=$(cat .gpu/bin/built-in)
  if [ ! -e "$built_in/assets" ]; then
    mkdir -p "$(dirname "$built_in")"
    ln -sfn "$PWD" "$built_in"
  fi
  # The driver's libcuda, and the CUDA 13 libraries wherever the image keeps them (one walk).
  local dirs
  dirs=$(find / \( -path /proc -o -path /sys -o -path /dev -o -path "$PWD" \) -prune -o \
    \( -name libcuda.so.1 -o -name libcublasLt.so.13 -o -name libcublas.so.13 \
    -o -name libcurand.so.10 -o -name libnvrtc.so.13 -o -name libcudart.so.13 \) -print \
    2>/dev/null | xargs -r -n1 dirname | awk '!seen[$0]++' | paste -sd:)
  export LD_LIBRARY_PATH="${dirs}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  echo "LD_LIBRARY_PATH=$LD_LIBRARY_PATH"
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$out/gpu.txt"
  export REPARAM_SMOLLM2="$stage_dir/$model_name" REPARAM_REQUIRE_MODELS=1
  local rc=0
  "$stage_dir/gpu-tests" --test-threads 1 2>&1 | tee "$out/gpu-tests.log" || rc=1
  "$stage_dir/gpu-tests" --ignored --nocapture --test-threads 1 measure 2>&1 \
    | tee "$out/gpu-timings.log" || rc=1
  return $rc
}

case "${1:-}" in
  build) build ;;
  stage) stage ;;
  run) run ;;
  *) echo "usage: $0 build|stage|run" >&2; exit 2 ;;
esac
