#!/usr/bin/env bash
# Parity and speed against llama.cpp on SmolLM2-135M-Instruct, side by side in one run:
#  1. builds llama.cpp's tools from the llama-cpp-python sdist (scripts/llamacpp-peer.sh),
#  2. requantizes the Q4_1 GGUF to F32 with llama-quantize (same weights as our f32 dequant),
#  3. regenerates tests/data/smollm2-llamacpp-logits.json through llama-cpp-python's bindings
#     on that libllama (no second build),
#  4. runs `reparam bench eval`: our perplexity and tokens/s next to llama-perplexity's.
# Slow (a llama.cpp build, ~7 min on 2 cores, the first time); not part of the test command.
set -euo pipefail
cd "$(dirname "$0")/.."
peer_script="${LLAMACPP_PEER_SCRIPT:-scripts/llamacpp-peer.sh}"
bin=$(bash "$peer_script" | tail -n 1)
gguf=$(scripts/fetch-models.sh | tail -n 1)
f32="${gguf%.Q4_1.gguf}.F32.gguf"
if [ ! -f "$f32" ]; then
  "$bin/llama-quantize" --allow-requantize "$gguf" "$f32.part" F32 >/dev/null 2>&1
  mv "$f32.part" "$f32"
fi
sdist=$(ls -d "$(dirname "$bin")"/../dl/llama_cpp_python-*/ | head -n 1)
python3 -m pip install -q numpy typing_extensions diskcache jinja2 2>/dev/null
PYTHONPATH="$sdist" LLAMA_CPP_LIB_PATH="$bin" python3 scripts/llamacpp-reference-logits.py \
  "$f32" assets/text/licenses.txt tests/data/smollm2-llamacpp-logits.json
echo "wrote tests/data/smollm2-llamacpp-logits.json"
cargo run --release --quiet -- bench eval "$gguf" --text assets/text/licenses.txt \
  --ctx 512 --chunks 16 --peer-model "$f32" --peer-bin "$bin"
