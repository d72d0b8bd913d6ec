#!/usr/bin/env bash
# pHDBSCAN on one GPU at 10M and 100M x 64, beside cuML's HDBSCAN where it is installed (issue 14).
# For the `device` tool's `run` on a lent H200 (its image has CUDA torch and numba, not FAISS):
#
#   here, once:  bash bench/device/prepare.sh          # fills .whl/ with faiss-cpu for Python 3.12
#   run:         run(command="bash bench/device_check.sh", carry=[".whl"], timeout_s=540)
#
# The kNN graph runs on the GPU through PyTorch (operators/hdbscan/torch_cells.py); core distances,
# the spanning forest, the joins and the tree run on the CPU cores. Budget: under 8 minutes in all
# (BUDGET_S, default 450 s from the start). Steps, each capped:
#   1. install faiss-cpu and lay lakelens out from this checkout (offline);
#   2. a preflight: the GPU's cell graph, every cell probed, must equal the exact graph, else stop here;
#   3. a 50k fit on the GPU, so numba's compiled stages are cached before anything is timed;
#   4. bench/gpu_scale.py at 10M x 64 (pHDBSCAN, and cuML if importable); 1M on the GPU and on the
#      CPU cores (the GPU's gain on one machine); then 100M x 64 with what the budget has left.
# What did not run says so. Everything printed is also in $OUT/device_check.log.
set -uo pipefail
OUT=${OUT:-/tmp/device_check}
mkdir -p "$OUT"
exec > >(tee "$OUT/device_check.log") 2>&1
export PYTHONUNBUFFERED=1
started=$(date +%s)
elapsed() { echo $(( $(date +%s) - started )); }
echo "# device_check | $(date -u '+%Y-%m-%d %H:%M UTC') | $(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null) | $(nproc) cores"

ls .whl/faiss_cpu-*.whl >/dev/null 2>&1 || { echo "no .whl carried: run bench/device/prepare.sh here and carry .whl"; exit 1; }
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/faiss_cpu-*.whl \
  || { echo "faiss-cpu wheel install failed"; exit 1; }
# lakelens as pyproject maps it (lakelens/ plus the top-level folders as its subpackages), without a build
rm -rf /tmp/site/lakelens && cp -r lakelens /tmp/site/lakelens \
  && for part in infra operators pipelines synthetic; do ln -s "$PWD/$part" "/tmp/site/lakelens/$part"; done \
  || { echo "laying out lakelens from the checkout failed"; exit 1; }
export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
python3 -c "import torch, numba, numpy, faiss; print('torch', torch.__version__, '| cuda', torch.cuda.is_available(), '| numba', numba.__version__, '| numpy', numpy.__version__, '| faiss', faiss.__version__)"
echo "setup $(elapsed) s"

(cd /tmp && timeout 120 python3 -) <<'EOF' || { echo "preflight failed: the GPU cell graph is wrong or does not run; stopping"; exit 1; }
import time
import numpy as np
from lakelens.operators.hdbscan.knn import knn_graph
from lakelens.operators.hdbscan.torch_cells import TorchCells
rng = np.random.default_rng(0)
x = (rng.uniform(-6, 6, (12, 32))[rng.integers(0, 12, 40_000)] + rng.standard_normal((40_000, 32))).astype(np.float32)
t = time.perf_counter()
cells = TorchCells.build(x, cell_size=1000, device="cuda")
found = cells.search_all(11, cells.n_cells)
print(f"GPU cells, every cell probed, 40k x 32: {time.perf_counter() - t:.1f} s")
exact = knn_graph(x, 11, method="exact", device="cpu")
same = float((found.indices == exact.indices).mean())
print(f"GPU cells vs exact FAISS: {same:.5f} of neighbour ids agree, max relative distance gap "
      f"{float(np.max(np.abs(found.distances - exact.distances) / np.maximum(exact.distances, 1e-12))):.2e}")
assert same > 0.999, "the GPU graph disagrees with the exact one"
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
