#!/usr/bin/env bash
# Fills .whl/ (git-ignored through .git/info/exclude) with what bench/device_check.sh needs on the
# lent H200, whose image has Python 3.12 and CUDA 13 but no FAISS:
#   - faiss-gpu-cu12 for Python 3.12 (PyPI has no CUDA 13 FAISS wheel);
#   - libcudart.so.12 (CUDA 12 runtime; the 580 driver runs it);
#   - libcublas.so.12 / libcublasLt.so.12: the shim in cublas12_shim.c, since cuBLAS 12 itself is 580 MB
#     and the device tool carries at most 64 MiB a call.
# About 52 MB in all. Run here, once: bash bench/device/prepare.sh
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
mkdir -p .whl/lib /tmp/lakelens-device-wheels
pip_download() {
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 "$@"
}
pip_download -d .whl faiss-gpu-cu12==1.14.1.post1
pip_download -d /tmp/lakelens-device-wheels nvidia-cuda-runtime-cu12==12.9.79
unzip -oj -q /tmp/lakelens-device-wheels/nvidia_cuda_runtime_cu12-12.9.79-*.whl 'nvidia/cuda_runtime/lib/libcudart.so.12' -d .whl/lib
here=bench/device
gcc -shared -fPIC -O2 -Wl,-soname,libcublas.so.12 -Wl,--version-script=$here/cublas12.map \
  -o .whl/lib/libcublas.so.12 $here/cublas12_shim.c -ldl
echo 'int lakelens_no_cublaslt_symbols;' | gcc -shared -fPIC -x c -Wl,-soname,libcublasLt.so.12 \
  -Wl,--version-script=$here/cublasLt12.map -o .whl/lib/libcublasLt.so.12 -
du -sh .whl; ls -la .whl .whl/lib
