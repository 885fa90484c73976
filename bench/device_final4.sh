#!/usr/bin/env bash
# Issue 8, session 4, last call: whole jobs with the final defaults (isotropic remeshing, alpha coverage,
# full-resolution textured mesh) on spot_render and four rendered sets, then a sharper bake weight on two.
# The helmet is measured in bench/device_final3.sh (the carry limit). Results in $OUT.
#   bash bench/device_final4.sh   (carry .carry/wheels .carry/pymeshlab-cp312.tar.xz .carry/node_modules
#                                   .carry/data/spot_render .carry/evalsets/{spot,bob,armadillo,bunny})
source bench/device_setup.sh
t0=$(date +%s)
E=.carry/evalsets
python bench/run_bench.py --sets .carry/data/spot_render $E/spot $E/bob $E/armadillo $E/bunny \
    --tag geometry-refined-h100 --out "$OUT" > "$OUT/bench.log" 2>&1
echo "bench rc=$? $(( $(date +%s) - t0 ))s"
python bench/table.py "$OUT/geometry-refined-h100.json"
python bench/run_bench.py --sets $E/spot $E/bob --set texture.view_weight_power=8 --tag bake-power8-h100 \
    --out "$OUT" > "$OUT/bench-power8.log" 2>&1
python bench/table.py "$OUT/bake-power8-h100.json"
python -c "
import json
for f in ('$OUT/geometry-refined-h100.json', '$OUT/bake-power8-h100.json'):
    for r in json.load(open(f))['results']: print(r['set'], r.get('stage_seconds'), r.get('report_seconds'), (r.get('texture') or {}).get('seconds'), r.get('heldout_psnr'), r.get('heldout_ssim'), (r.get('refine') or {}).get('remesh'), (r.get('refine') or {}).get('silhouette_target'))"
echo "all done $(( $(date +%s) - t0 ))s"
