#!/usr/bin/env bash
# pHDBSCAN on one GPU at 10M and 100M x 64, beside cuML's HDBSCAN where it fits (issue 14).
# UNTESTED ON A DEVICE: no session so far was lent one. Meant for the `device` tool's `run`:
#
#   prepare here, once (wheels for the device's Python 3.12 and CUDA 13; see /work/.library/device/README.md):
#     echo /.whl/ >> .git/info/exclude
#     python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 -d .whl \
#       faiss-gpu-cu13-cuvs==1.15.0   # not faiss-cpu too: both install the module faiss
#     # optional, for the side-by-side: cuml-cu13 and its RAPIDS needs (pylibraft, rmm, ...); the carry
#     # limit is 64 MiB a call, which the RAPIDS wheels may pass: then cuML is reported as not installed
#   run:  run(command="bash bench/device_check.sh", carry=[".whl"], timeout_s=480)
#
# Budget: < 8 min on one H200. Each step has its own timeout; what did not run says so in $OUT/device_check.log.
set -uo pipefail
OUT=${OUT:-/tmp/device_check}
mkdir -p "$OUT"
LOG="$OUT/device_check.log"
exec > >(tee "$LOG") 2>&1
export PYTHONUNBUFFERED=1
started=$(date +%s)
echo "# device_check | $(date -u '+%Y-%m-%d %H:%M UTC') | $(nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null)"

if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || { echo "wheel install failed"; exit 1; }
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
else
  echo "no .whl folder carried: faiss-gpu cannot be installed; stopping"; exit 1
fi
# lakelens itself, built from this checkout offline (pyproject maps its folders to lakelens.*)
python3 -m pip install -q --no-index --no-deps --no-build-isolation --no-compile --target /tmp/site . \
  || { echo "installing lakelens from the checkout failed"; exit 1; }

python3 - <<'EOF' || { echo "faiss has no GPU here: the GPU path cannot run"; exit 1; }
import faiss
assert faiss.get_num_gpus() > 0, "faiss sees no GPU"
print("faiss", faiss.__version__, "GPUs", faiss.get_num_gpus())
EOF

cat > /tmp/gpu_fit.py <<'EOF'
"""One method at one size: time, peak GPU memory, labels (saved for the ARI)."""
import sys, time, json
import numpy as np
sys.path.insert(0, "bench")
from hdbscan_grid import manifold

method, n, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
X, truth = manifold(n, 64)

def gpu_peak_gib():
    try:
        import pynvml
        pynvml.nvmlInit()
        return pynvml.nvmlDeviceGetMemoryInfo(pynvml.nvmlDeviceGetHandleByIndex(0)).used / 2**30
    except Exception:
        return float("nan")

began = time.perf_counter()
if method == "phdbscan":
    from lakelens.operators.hdbscan import PHDBSCAN
    model = PHDBSCAN(min_cluster_size=1000, min_samples=10, device="cuda").fit(X)
    extra = {"recall": model.knn_recall_, "probe": model.knn_report_.probe, "stages": model.result_.timings}
else:
    from cuml.cluster import HDBSCAN
    model = HDBSCAN(min_cluster_size=1000, min_samples=10).fit(X)
    extra = {}
seconds = time.perf_counter() - began
labels = np.asarray(model.labels_.get() if hasattr(model.labels_, "get") else model.labels_)
np.save(out, labels)
print(json.dumps({"method": method, "n": n, "seconds": seconds, "gpu_used_gib_after": gpu_peak_gib(), **extra},
                 default=float))
EOF

run() {  # method n timeout
  local left=$(( 470 - ($(date +%s) - started) ))
  if (( left < 30 )); then echo "$1 n=$2: not run (time budget spent)"; return; fi
  local cap=$(( $3 < left ? $3 : left ))
  timeout "$cap" python3 /tmp/gpu_fit.py "$1" "$2" "/tmp/$1_$2.npy" || echo "$1 n=$2: stopped or failed (cap ${cap}s)"
}
nvidia-smi --query-gpu=memory.used --format=csv -lms 500 > "$OUT/gpu_mem.csv" & SMI=$!
for n in 10000000 100000000; do
  run phdbscan $n 300
  if python3 -c "import cuml" 2>/dev/null; then run cuml $n 180; else echo "cuml n=$n: not installed"; fi
  python3 - "$n" <<'EOF'
import sys, os, numpy as np
from sklearn.metrics import adjusted_rand_score
n = sys.argv[1]
a, b = f"/tmp/phdbscan_{n}.npy", f"/tmp/cuml_{n}.npy"
if os.path.exists(a) and os.path.exists(b):
    print(f"n={n}: ARI pHDBSCAN vs cuML = {adjusted_rand_score(np.load(a), np.load(b)):.4f}")
EOF
done
kill $SMI 2>/dev/null
echo "peak GPU memory used (MiB, nvidia-smi every 0.5 s): $(grep -o '[0-9]\+' "$OUT/gpu_mem.csv" | sort -n | tail -1)"
echo "total $(( $(date +%s) - started )) s"
