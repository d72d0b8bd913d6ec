#!/usr/bin/env bash
# Fills .whl/ (git-ignored through .git/info/exclude) with what bench/device_check.sh needs on the lent
# H200, whose image has Python 3.12, CUDA torch and numba but no FAISS: faiss-cpu for Python 3.12, at the
# version pyproject pins (about 30 MB; the device tool carries at most 64 MiB a call).
# pHDBSCAN's GPU path is PyTorch's (operators/hdbscan/torch_cells.py); FAISS runs the CPU stages.
# PyPI's faiss-gpu-cu12 1.14.1 was tried on the H200 on 2026-12-04 and has no kernels for it
# (CUDA error 209, "no kernel image is available for execution on the device").
# Run here, once: bash bench/device/prepare.sh
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
pin=$(sed -n 's/.*"\(faiss-cpu==[0-9.]*\)".*/\1/p' pyproject.toml | head -1)
mkdir -p .whl
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl "$pin"
du -sh .whl; ls .whl
