#!/usr/bin/env bash
# Final device call for issue 8: the GPU tests, then the refined + textured pipeline (defaults) on spot_render
# and the five rendered evaluation sets, one job at a time (timings uncontended). Results in $OUT.
#   bash bench/device_final.sh     (carry .carry/wheels .carry/pytorch3d-cp312.tar.xz .carry/evalsets
#                                    .carry/data/spot_render .carry/node_modules)
source bench/device_setup.sh
t0=$(date +%s)
python -m pytest -q -s -m gpu tests/test_gpu.py 2>&1 | tail -40 > "$OUT/gpu_tests.txt"
echo "gpu tests rc=${PIPESTATUS[0]} $(( $(date +%s) - t0 ))s" | tee -a "$OUT/gpu_tests.txt"
tail -3 "$OUT/gpu_tests.txt"
E=.carry/evalsets
python bench/run_bench.py --sets .carry/data/spot_render $E/spot $E/bob $E/armadillo $E/bunny $E/helmet \
    --tag geometry-refined-h100 --out "$OUT" > /tmp/bench.log 2>&1
echo "bench rc=$? $(( $(date +%s) - t0 ))s"
grep -v "^20" /tmp/bench.log | tail -12 > "$OUT/bench.txt"
python bench/table.py "$OUT/geometry-refined-h100.json"
