#!/usr/bin/env bash
# pHDBSCAN on one GPU at 10M and 100M x 64, beside cuML's HDBSCAN where it is installed (issue 14).
# For the `device` tool's `run` on a lent H200:
#
#   here, once:  bash bench/device/prepare.sh          # fills .whl/: FAISS for the GPU, ~52 MB
#   run:         run(command="bash bench/device_check.sh", carry=[".whl"], timeout_s=540)
#
# Budget: under 8 minutes in all (BUDGET_S, default 450 s for the fits). Steps, each capped:
#   1. install FAISS and lakelens (offline, from the carried wheel and this checkout);
#   2. a preflight: FAISS's GPU search must agree with its CPU search, else stop here;
#   3. a 50k fit on the GPU, so numba's compiled stages are cached before anything is timed;
#   4. bench/gpu_scale.py at 10M x 64 (pHDBSCAN, and cuML if importable); 1M on the GPU and on the
#      CPU's cores (the GPU's gain on one machine); then 100M x 64 with what the budget has left.
# What did not run says so. Everything printed is also in $OUT/device_check.log.
set -uo pipefail
OUT=${OUT:-/tmp/device_check}
mkdir -p "$OUT"
exec > >(tee "$OUT/device_check.log") 2>&1
export PYTHONUNBUFFERED=1
started=$(date +%s)
elapsed() { echo $(( $(date +%s) - started )); }
echo "# device_check | $(date -u '+%Y-%m-%d %H:%M UTC') | $(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null) | $(nproc) cores"

ls .whl/faiss_gpu_cu12-*.whl >/dev/null 2>&1 || { echo "no .whl carried: run bench/device/prepare.sh here and carry .whl"; exit 1; }
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/faiss_gpu_cu12-*.whl \
  || { echo "FAISS wheel install failed"; exit 1; }
# lakelens as pyproject maps it (lakelens/ plus the top-level folders as its subpackages), without a build
mkdir -p /tmp/site && rm -rf /tmp/site/lakelens && cp -r lakelens /tmp/site/lakelens \
  && for part in infra operators pipelines synthetic; do ln -s "$PWD/$part" "/tmp/site/lakelens/$part"; done \
  || { echo "laying out lakelens from the checkout failed"; exit 1; }
export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
# FAISS's CUDA 12 libraries come from .whl/lib (its own preloader looks for pip packages we do not have);
# the cuBLAS shim forwards to the image's cuBLAS 13
cublas13=$(python3 - <<'EOF'
import glob, sys
dirs = [p for p in sys.path if p] + ["/usr/local/cuda/lib64", "/usr/local/cuda/targets/x86_64-linux/lib"]
hits = [h for d in dirs for h in glob.glob(d + "/nvidia/**/libcublas.so.13", recursive=True) + glob.glob(d + "/libcublas.so.13")]
print(hits[0] if hits else "")
EOF
)
[ -n "$cublas13" ] || { echo "no libcublas.so.13 on this machine: the cuBLAS shim has nothing to forward to"; exit 1; }
export CUBLAS13_PATH=$cublas13 _FAISS_WHEEL_DISABLE_CUDA_PRELOAD=1
export LD_LIBRARY_PATH=$PWD/.whl/lib:$(dirname "$cublas13")${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
export CUDA_CACHE_PATH=/tmp/cuda-cache CUDA_CACHE_MAXSIZE=4294967296  # JIT'd kernels reused across processes
echo "cuBLAS 13: $cublas13 | setup $(elapsed) s"

timeout 120 python3 - <<'EOF' || { echo "preflight failed: FAISS cannot search on this GPU; stopping"; exit 1; }
import time
import faiss, numpy as np
print("faiss", faiss.__version__, "| GPUs", faiss.get_num_gpus())
assert faiss.get_num_gpus() > 0, "faiss sees no GPU"
rng = np.random.default_rng(0)
x = rng.standard_normal((20_000, 64), dtype=np.float32)
t = time.perf_counter()
_, gpu = faiss.knn_gpu(faiss.StandardGpuResources(), x[:2000], x, 11)
print(f"knn_gpu first call {time.perf_counter() - t:.1f} s (kernel JIT included)")
_, cpu = faiss.knn(x[:2000], x, 11)
same = float((gpu == cpu).mean())
print(f"GPU vs CPU exact kNN: {same:.4f} of neighbour ids agree")
assert same > 0.99, "the GPU's exact kNN disagrees with the CPU's"
EOF
echo "preflight done | $(elapsed) s"

timeout 150 python3 bench/gpu_scale.py --n 50000 --device cuda --methods phdbscan --min-cluster-size 50 \
  || echo "warm-up fit failed or stopped"
echo "warm-up done | $(elapsed) s"

budget() { echo $(( ${BUDGET_S:-450} - $(elapsed) )); }
bench() { python3 bench/gpu_scale.py --out "$OUT/gpu_scale.jsonl" "$@" --budget-s "$(budget)"; }
bench --n 10000000 --device cuda --cap-s 150
# the same 1M rows on the GPU and on this machine's CPU cores: the GPU's gain on one machine
bench --n 1000000 --device cuda --methods phdbscan --cap-s 45
bench --n 1000000 --device cpu --methods phdbscan --cap-s 75
# 100M last, with what is left: a stopped fit still prints the stages it finished
bench --n 100000000 --device cuda --cap-s 400
nvidia-smi --query-gpu=memory.used,memory.total --format=csv
echo "# total $(elapsed) s"
