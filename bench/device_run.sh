#!/usr/bin/env bash
# One device call: install the carried wheels, run the GPU tests, render the evaluation sets, benchmark the
# hull alone and the refined pipeline. Everything worth keeping lands in $OUT. Usage (on the device):
#   bash bench/device_run.sh [extra --set overrides for the refined run...]
set -uo pipefail
source bench/device_setup.sh  # installs the carried wheels/tarballs, sets PYTHONPATH, OUT, ...
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/gpu.txt"
python -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name(0))" | tee -a "$OUT/gpu.txt"
t0=$(date +%s)
python -m pytest -q -s -m gpu tests/test_gpu.py 2>&1 | tail -60 > "$OUT/gpu_tests.txt"; echo "gpu tests rc=$? $(( $(date +%s) - t0 ))s" | tee -a "$OUT/gpu_tests.txt"
python bench/make_eval_sets.py /tmp/evalsets --meshes .carry/data/meshes 2>&1 | tail -6
echo "eval sets $(( $(date +%s) - t0 ))s"
SETS="spot_render /tmp/evalsets/spot /tmp/evalsets/bob /tmp/evalsets/armadillo /tmp/evalsets/bunny /tmp/evalsets/helmet"
python bench/run_bench.py --sets $SETS --set refine.enabled=off --tag hull-gpu --out "$OUT" 2>&1 | grep -v "^20" | tail -12
echo "hull bench $(( $(date +%s) - t0 ))s"
python bench/run_bench.py --sets $SETS --tag refined-gpu --out "$OUT" "$@" 2>&1 | grep -v "^20" | tail -12
echo "refined bench $(( $(date +%s) - t0 ))s"
