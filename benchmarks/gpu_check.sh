#!/usr/bin/env bash
# GPU check for ticketlab: at most 8 minutes on one NVIDIA GPU; prints figures as it goes.
#
# Usage (from the repository root, on a machine with one CUDA GPU):
#     make setup                      # once: the venv in .venv (or set PY=/path/to/python with ticketlab installed)
#     bash benchmarks/gpu_check.sh    # or: PY=.venv/bin/python BUDGET=480 bash benchmarks/gpu_check.sh
#     DEVICE=cpu BUDGET=120 bash benchmarks/gpu_check.sh   # a smoke test of the script itself, without a GPU
# On a GPU machine without internet that has its own CUDA build of torch (make setup would need the registry):
#     PY=python3 PYTHONPATH=src:/tmp/site bash benchmarks/gpu_check.sh
# with ticketlab's other dependencies (numpy, safetensors, matplotlib, pyyaml, tqdm, mnist1d, pytest) importable,
# e.g. installed from carried wheels with `pip install --no-index --target /tmp/site WHEELS`.
#
# Parts, each under `timeout` and cut to what is left of BUDGET seconds (default 470); a failed or timed-out part
# is reported and the script goes on to the next:
#   1. the device: nvidia-smi, torch's view of it
#   2. pytest -m gpu (tests/test_gpu.py: the mask exact on CUDA, data on the device, IMP repeatable)
#   3. the default demo on CUDA (`ticketlab imp --device cuda`): its wall time (2-core CPU: 42 s batched, 109 s
#      one by one)
#   4. benchmarks/train_speed.py --device cuda (epoch vs the GEMM floor and the shape floor)
#   5. benchmarks/level_time.py --device cuda (open_lth's LeNet-300-100 protocol, time per level split)
#   6. benchmarks/batched_speed.py --device cuda, if that script exists
#   7. a small conv net (conv_2 on synthetic-images): fp32, --precision bf16, --channels-last, both
# Parts 4 and 5 need Fashion-MNIST: /usr/share/datasets/fashion-mnist, $TICKETLAB_DATA_DIR/fashion-mnist, or the
# download cache; without it they are skipped (the machine may have no network).
# Exit status: the number of parts that failed or timed out (0: all passed).
set -u
cd "$(dirname "$0")/.."
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
PY=${PY:-.venv/bin/python}
if ! command -v "$PY" >/dev/null; then
    echo "no $PY: run 'make setup' first, or set PY to a python with ticketlab installed" >&2
    exit 2
fi
BUDGET=${BUDGET:-470}
DEVICE=${DEVICE:-cuda}
export PY TMP DEVICE
START=$(date +%s)
FAILED=0

# part NAME SECONDS COMMAND...: run COMMAND under timeout (cut to the budget left), print its wall time and status.
part() {
    local name=$1 limit=$2
    shift 2
    local left=$((BUDGET - ($(date +%s) - START)))
    if [ "$left" -lt 10 ]; then
        echo "== $name: skipped, the ${BUDGET} s budget is spent"
        FAILED=$((FAILED + 1))
        return
    fi
    [ "$limit" -gt "$left" ] && limit=$left
    echo "== $name (at most ${limit} s)"
    local t0 rc wall
    t0=$(date +%s%N)
    timeout --kill-after=5 "$limit" "$@"
    rc=$?
    wall=$(awk -v a="$t0" -v b="$(date +%s%N)" 'BEGIN { printf "%.1f", (b - a) / 1e9 }')
    if [ "$rc" -eq 0 ]; then
        echo "== $name: ok, ${wall} s"
    elif [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
        echo "== $name: TIMED OUT after ${wall} s"
        FAILED=$((FAILED + 1))
    else
        echo "== $name: FAILED (exit $rc) after ${wall} s"
        FAILED=$((FAILED + 1))
    fi
}

part "device" 30 bash -c "nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader; \
    $PY -c 'import sys, torch; ok = torch.cuda.is_available(); print(\"torch\", torch.__version__, \"cuda\", \
torch.version.cuda, torch.cuda.get_device_name(0) if ok else \"NOT AVAILABLE: a CPU build of torch?\"); \
sys.exit(0 if ok or \"$DEVICE\" == \"cpu\" else 1)'"

part "pytest -m gpu" 90 "$PY" -m pytest -m gpu tests/test_gpu.py -q -p no:cacheprovider

part "default demo on $DEVICE" 150 "$PY" -m ticketlab imp --device "$DEVICE" --out "$TMP/demo" --no-progress
echo "   demo jobs finished: $(find "$TMP/demo" -name result.json 2>/dev/null | wc -l) of 102"

# (a download attempt without a network could hang for minutes: 20 s at most, counted in the budget)
if timeout 20 "$PY" -c "from ticketlab.data import load_dataset; load_dataset('fashion-mnist')" >/dev/null 2>&1; then
    part "train_speed.py --device $DEVICE" 60 "$PY" benchmarks/train_speed.py --device "$DEVICE"
    part "level_time.py --device $DEVICE" 60 "$PY" benchmarks/level_time.py --device "$DEVICE" --repeats 1
else
    echo "== train_speed.py, level_time.py: skipped, no Fashion-MNIST here (set TICKETLAB_DATA_DIR)"
fi

if [ -f benchmarks/batched_speed.py ]; then
    part "batched_speed.py --device $DEVICE" 80 "$PY" benchmarks/batched_speed.py --device "$DEVICE"
else
    echo "== batched_speed.py: not in this checkout, skipped"
fi

CONV=(imp --device "$DEVICE" --dataset synthetic-images --model conv_2 --steps 300it --eval-every 100it --levels 1
    --baselines "" --no-progress)
part "conv_2 fp32" 30 "$PY" -m ticketlab "${CONV[@]}" --out "$TMP/fp32"
part "conv_2 --precision bf16" 30 "$PY" -m ticketlab "${CONV[@]}" --precision bf16 --out "$TMP/bf16"
part "conv_2 --channels-last" 30 "$PY" -m ticketlab "${CONV[@]}" --channels-last --out "$TMP/cl"
part "conv_2 bf16 + channels-last" 30 "$PY" -m ticketlab "${CONV[@]}" --precision bf16 --channels-last --out "$TMP/both"

echo "== done in $(($(date +%s) - START)) s; parts failed or timed out: $FAILED"
exit "$FAILED"
