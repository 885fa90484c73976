#!/usr/bin/env bash
# Issue 8, session 5, final table: whole jobs with the final defaults (texture fit added) on spot_render and the
# four rendered sets with cameras on the whole sphere (make_eval_sets.py --min-z -1, as the issue specifies),
# then the hull alone on the same sets. Results in $OUT.
#   bash bench/device_final6.sh   (carry .carry/wheels .carry/pymeshlab-cp312.tar.xz .carry/node_modules
#                                   .carry/data/spot_render .carry/evalsets_sphere/{spot,bob,armadillo,bunny})
source bench/device_setup.sh
t0=$(date +%s)
SETS=${SETS:-".carry/data/spot_render $(ls -d /tmp/sets/*_sphere | tr '\n' ' ')"}
TAG=${TAG:-sphere}
python bench/run_bench.py --sets $SETS --tag geometry-refined-$TAG-$CARD --out "$OUT" > "$OUT/bench.log" 2>&1
echo "bench rc=$? $(( $(date +%s) - t0 ))s"
python bench/table.py "$OUT/geometry-refined-$TAG-$CARD.json"
python -c "
import json
for r in json.load(open('$OUT/geometry-refined-$TAG-$CARD.json'))['results']:
    print(r['set'], r.get('stage_seconds'), (r.get('texture') or {}).get('seconds'), r.get('heldout_psnr'), r.get('heldout_psnr_frame'))"
[ -n "${SKIP_HULL:-}" ] || python bench/run_bench.py --sets $(ls -d /tmp/sets/*_sphere) --set refine.enabled=off \
    --tag geometry-hull-$TAG-$CARD --out "$OUT" > "$OUT/hull.log" 2>&1
[ -n "${SKIP_HULL:-}" ] || python bench/table.py "$OUT/geometry-hull-$TAG-$CARD.json"
echo "all done $(( $(date +%s) - t0 ))s"
