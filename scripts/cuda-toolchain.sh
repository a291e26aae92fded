#!/usr/bin/env bash
# Assembles a CUDA 13.0 toolkit good enough to *build* `reparam --features cuda` on a machine
# with no GPU and no CUDA install: nvcc, its front end and the headers from NVIDIA's PyPI wheels,
# plus the shared libraries candle's CUDA crates link against. Nothing here runs a GPU.
#
# usage: eval "$(scripts/cuda-toolchain.sh [DIR])"   (default DIR ~/.cache/reparam/cuda-13.0)
# prints the environment to export (CUDA_PATH, PATH, CUDA_COMPUTE_CAP) on stdout.
#
# libcuda.so comes from the GPU driver, not a wheel: a stand-in with its soname and one empty
# function per driver entry point in cuda.h lets the link step resolve candle's calls. It is
# only linked against, never shipped: at run time the driver's own libcuda.so.1 is loaded.
set -euo pipefail
dir="${1:-$HOME/.cache/reparam/cuda-13.0}"
# The release the device machine's driver and nvcc have (13.0); kernels are built for
# compute capability 9.0 (Hopper: H100/H200) unless CUDA_COMPUTE_CAP says otherwise.
wheels=(
  nvidia-cuda-nvcc==13.0.88 nvidia-nvvm==13.0.88 nvidia-cuda-crt==13.0.88
  nvidia-cuda-runtime==13.0.96 nvidia-cuda-cccl==13.0.85 nvidia-cuda-nvrtc==13.0.88
  nvidia-curand==10.4.0.35 nvidia-cublas==13.0.2.14
)
if [ ! -x "$dir/bin/nvcc" ] || [ ! -f "$dir/lib/libcuda.so" ] || [ "$(nm -D "$dir/lib/libcuda.so" | grep -c ' T cu')" -lt 100 ]; then
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  python3 -m pip download -q --no-deps --only-binary=:all: --platform manylinux_2_27_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    --platform manylinux_2_12_x86_64 --platform manylinux2010_x86_64 -d "$tmp" "${wheels[@]}" >&2
  mkdir -p "$tmp/x" "$dir"
  for w in "$tmp"/*.whl; do python3 -m zipfile -e "$w" "$tmp/x" >&2; done
  cp -a "$tmp"/x/nvidia/cu13/. "$dir"/
  chmod +x "$dir"/bin/* "$dir"/nvvm/bin/*
  (
    cd "$dir/lib"
    for l in cudart cublas cublasLt nvrtc; do ln -sf "lib$l.so.13" "lib$l.so"; done
    ln -sf libcurand.so.10 libcurand.so
    ln -sfn lib ../lib64
    grep -oE '\bcu[A-Z][A-Za-z0-9_]*\b' ../include/cuda.h | sort -u \
      | sed 's/.*/void &(void) {}/' >"$tmp/stub.c"
    gcc -shared -fPIC -Wl,-soname,libcuda.so.1 "$tmp/stub.c" -o libcuda.so
  )
fi
"$dir/bin/nvcc" --version | tail -1 >&2
echo "export CUDA_PATH=$dir"
echo "export PATH=$dir/bin:\$PATH"
echo "export CUDA_COMPUTE_CAP=\${CUDA_COMPUTE_CAP:-90}"
