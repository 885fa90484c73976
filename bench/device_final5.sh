#!/usr/bin/env bash
# Issue 8, session 4, final table: whole jobs with the final defaults (photometric weight 2 added) on spot_render
# and four rendered sets; then (unless SKIP_TUNE=1) 350 iterations per level on two sets. Results in $OUT.
#   bash bench/device_final5.sh   (carry .carry/wheels .carry/pymeshlab-cp312.tar.xz .carry/node_modules
#                                   .carry/data/spot_render .carry/evalsets/{spot,bob,armadillo,bunny})
source bench/device_setup.sh
t0=$(date +%s)
E=.carry/evalsets
CARD=$(python -c "import torch; print('h200' if 'H200' in torch.cuda.get_device_name(0) else 'h100')")
python bench/run_bench.py --sets .carry/data/spot_render $E/spot $E/bob $E/armadillo $E/bunny \
    --tag geometry-refined-$CARD --out "$OUT" > "$OUT/bench.log" 2>&1
echo "bench rc=$? $(( $(date +%s) - t0 ))s"
python bench/table.py "$OUT/geometry-refined-$CARD.json"
python -c "
import json
for r in json.load(open('$OUT/geometry-refined-$CARD.json'))['results']:
    print(r['set'], r.get('stage_seconds'), (r.get('texture') or {}).get('seconds'), r.get('heldout_psnr'))"
[ -n "${SKIP_TUNE:-}" ] || python bench/tune_refine.py --sets $E/spot $E/bob --variant base: --variant it350:refine.iterations=350 \
    --tag tune-E-$CARD --out "$OUT" 2>&1 | grep -v -i warn | grep -v coalesce | tee "$OUT/tune-E.log"
echo "all done $(( $(date +%s) - t0 ))s"
