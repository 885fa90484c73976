#!/usr/bin/env bash
# Issue 8, session 5: the helmet on whole-sphere cameras (refined and hull), spot_render again as a second job
# (so its times exclude the one-time nvdiffrast build), then the GPU tests. Results in $OUT.
#   bash bench/device_final7.sh   (carry .carry/wheels .carry/pymeshlab-cp312.tar.xz .carry/pytorch3d-cp312.tar.xz
#                                   .carry/data/spot_render .carry/evalsets_sphere/helmet)
export SETS="/tmp/sets/helmet_sphere .carry/data/spot_render" TAG=sphere-helmet SKIP_HULL=1
source bench/device_final6.sh
python bench/run_bench.py --sets /tmp/sets/helmet_sphere --set refine.enabled=off --tag geometry-hull-sphere-helmet-$CARD \
    --out "$OUT" > "$OUT/hull.log" 2>&1
python bench/table.py "$OUT/geometry-hull-sphere-helmet-$CARD.json"
python -m pytest -q -s -m gpu tests/test_gpu.py 2>&1 | grep -v Warning | tail -60 > "$OUT/gpu-tests-$CARD.txt"
tail -5 "$OUT/gpu-tests-$CARD.txt"
echo "all done $(( $(date +%s) - t0 ))s"
