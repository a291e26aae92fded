#!/usr/bin/env bash
# The llama.cpp peer for side-by-side checks: builds `llama-perplexity`, `llama-bench`, `llama-imatrix`,
# `llama-quantize`, `llama-tokenize` and the shared `libllama` from the llama.cpp sources that
# the llama-cpp-python source distribution on PyPI carries (`vendor/llama.cpp`). Nothing is
# vendored into this repository; everything lands under PREFIX.
#
# usage: scripts/llamacpp-peer.sh [PREFIX]     (default PREFIX: ~/.cache/reparam/llamacpp)
#
# Layout under PREFIX: dl/ (the sdist and its unpacked tree, whose `llama_cpp` package
# scripts/llamacpp-parity.sh puts on PYTHONPATH), build/ (CMake tree), build/bin/ (tools and
# shared libraries), cmake.log and build.log. The last line printed is the bin directory, which
# is all callers read (`bin=$(scripts/llamacpp-peer.sh | tail -n 1)`). A second run with the
# tools already built only prints it. The first build takes ~7 minutes on 2 cores.
#
# Environment: LLAMA_CPP_PYTHON_VERSION (default 0.3.36) picks the sdist; LLAMACPP_JOBS the
# parallel build jobs (default: all cores).
set -euo pipefail

prefix="${1:-$HOME/.cache/reparam/llamacpp}"
version="${LLAMA_CPP_PYTHON_VERSION:-0.3.36}"
jobs="${LLAMACPP_JOBS:-$(nproc)}"
dl="$prefix/dl"
build="$prefix/build"
bin="$build/bin"
tools=(llama-perplexity llama-bench llama-quantize llama-tokenize llama-imatrix)

have_all() {
  local t
  for t in "${tools[@]}"; do
    [ -x "$bin/$t" ] || return 1
  done
  compgen -G "$bin/libllama.*" >/dev/null
}

if have_all; then
  echo "$bin"
  exit 0
fi

# Shows the end of a log when a step fails, so the failure is visible without opening it.
run_logged() {
  local log="$1"
  shift
  if ! "$@" >"$log" 2>&1; then
    echo "llamacpp-peer: '$*' failed; last lines of $log:" >&2
    tail -n 30 "$log" >&2
    exit 1
  fi
}

if ! command -v cmake >/dev/null; then
  python3 -m pip install -q cmake
  # A user install puts the cmake entry point outside PATH.
  PATH="$PATH:$(python3 -m site --user-base)/bin"
  command -v cmake >/dev/null || { echo "llamacpp-peer: cmake not found" >&2; exit 1; }
fi

mkdir -p "$dl"
# The sdist straight from PyPI's simple index (`pip download --no-binary` would first build the
# sdist's build dependencies, cmake among them, from source), checked against its sha256.
sdist="$dl/llama_cpp_python-$version.tar.gz"
if [ ! -f "$sdist" ]; then
  link=$(curl -fsS "https://pypi.org/simple/llama-cpp-python/" |
    grep -o "https://[^\"]*/llama_cpp_python-$version\.tar\.gz#sha256=[0-9a-f]*" | head -n 1)
  [ -n "$link" ] || { echo "llamacpp-peer: no sdist for $version on PyPI" >&2; exit 1; }
  curl -fsS -o "$sdist.part" "${link%%#*}"
  echo "${link##*sha256=}  $sdist.part" | sha256sum -c --quiet
  mv "$sdist.part" "$sdist"
fi
tar -xzf "$sdist" -C "$dl"
src="$dl/$(basename "$sdist" .tar.gz)/vendor/llama.cpp"
[ -f "$src/CMakeLists.txt" ] || { echo "llamacpp-peer: no llama.cpp sources at $src" >&2; exit 1; }

run_logged "$prefix/cmake.log" cmake -S "$src" -B "$build" \
  -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=ON -DGGML_NATIVE=ON \
  -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_TESTS=OFF
run_logged "$prefix/build.log" cmake --build "$build" -j"$jobs" --target llama "${tools[@]}"

have_all || { echo "llamacpp-peer: build finished but $bin is incomplete" >&2; exit 1; }
echo "$bin"
