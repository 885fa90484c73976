#!/usr/bin/env bash
# Issue 8, session 4, second call: the helmet (whole job, defaults); spot and bob with the textured mesh at full
# resolution (texture.max_faces 120000) against the defaults' 60000; then the GPU tests (the pytorch3d
# regulariser test is deselected when pytorch3d is not carried: the carry limit). Results in $OUT.
#   bash bench/device_final3.sh   (carry .carry/wheels .carry/pymeshlab-cp312.tar.xz .carry/node_modules
#                                   .carry/data/spot_render .carry/evalsets/{helmet,spot,bob})
source bench/device_setup.sh
t0=$(date +%s)
E=.carry/evalsets
HOTMESH_PROFILE=$OUT/profile-helmet.txt HOTMESH_PROFILE_STAGES=texture,report \
python bench/run_bench.py --sets $E/helmet --tag geometry-refined-h100-helmet --out "$OUT" > "$OUT/bench-helmet.log" 2>&1
echo "bench rc=$? $(( $(date +%s) - t0 ))s"
python bench/table.py "$OUT/geometry-refined-h100-helmet.json"
python bench/run_bench.py --sets $E/spot $E/bob --set texture.max_faces=120000 --tag textured-120k-h100 --out "$OUT" \
    > "$OUT/bench-120k.log" 2>&1
python bench/table.py "$OUT/textured-120k-h100.json"
python -c "
import json
for f in ('$OUT/geometry-refined-h100-helmet.json', '$OUT/textured-120k-h100.json'):
    for r in json.load(open(f))['results']: print(r['set'], r.get('stage_seconds'), r.get('report_seconds'), (r.get('texture') or {}).get('seconds'), r.get('heldout_psnr'), r.get('heldout_ssim'))"
sel=""
python -c "import pytorch3d.loss" 2>/dev/null || sel="not pytorch3d"
set -o pipefail
python -m pytest -q -s -m gpu tests/test_gpu.py ${sel:+-k "$sel"} 2>&1 | grep -v Warning | tail -40 | tee "$OUT/gpu-tests.txt"
echo "gpu tests rc=$? $(( $(date +%s) - t0 ))s" | tee -a "$OUT/gpu-tests.txt"
