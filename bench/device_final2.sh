#!/usr/bin/env bash
# Issue 8, session 4: whole jobs (defaults) on spot_render and four rendered evaluation sets with pymeshlab
# present (as in the Docker image), the report and texture stages profiled; then isotropic remeshing against
# midpoint subdivision on two sets. Results in $OUT.
#   bash bench/device_final2.sh   (carry .carry/wheels .carry/pymeshlab-cp312.tar.xz .carry/node_modules
#                                   .carry/data/spot_render .carry/evalsets/{spot,bob,armadillo,bunny})
source bench/device_setup.sh
t0=$(date +%s)
E=.carry/evalsets
HOTMESH_PROFILE=$OUT/profile.txt HOTMESH_PROFILE_STAGES=texture,report \
python bench/run_bench.py --sets .carry/data/spot_render $E/spot $E/bob $E/armadillo $E/bunny \
    --tag geometry-refined-h100 --out "$OUT" > "$OUT/bench.log" 2>&1
echo "bench rc=$? $(( $(date +%s) - t0 ))s"
python bench/table.py "$OUT/geometry-refined-h100.json"
python -c "
import json; d = json.load(open('$OUT/geometry-refined-h100.json'))
for r in d['results']: print(r['set'], r.get('stage_seconds'), r.get('report_seconds'), (r.get('texture') or {}).get('seconds'))"
python bench/tune_refine.py --sets .carry/data/spot_render $E/bob --variant base: \
    --variant binary_masks:refine.alpha_coverage=false --variant iso:refine.remesh=isotropic \
    --tag tune-C-h100 --out "$OUT" 2>&1 | grep -v Warning | tee "$OUT/tune-C.log"
echo "all done $(( $(date +%s) - t0 ))s"
