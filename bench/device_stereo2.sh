#!/usr/bin/env bash
# Issue 8, session 6 (ran on commit dd827b9, where the geometry stage had geometry.stereo; removed after this
# measurement, see README): whole jobs with hull-bounded stereo carving (default on a GPU there): spot_render,
# the helmet and armadillo with the default (carve), the helmet with stereo_surface=fused and with stereo off.
#   bash bench/device_stereo2.sh   (carry .carry/wheels .carry/pymeshlab-cp312.tar.xz .carry/node_modules
#                                   .carry/data/spot_render .carry/evalsets_sphere/{helmet,armadillo})
source bench/device_setup.sh
t0=$(date +%s)
run() {  # tag, then run_bench arguments
    local tag=$1; shift
    python bench/run_bench.py "$@" --tag $tag-$CARD --out "$OUT" > "$OUT/$tag.log" 2>&1
    echo "$tag rc=$? $(( $(date +%s) - t0 ))s"
    python bench/table.py "$OUT/$tag-$CARD.json" | cut -c1-400
    python -c "
import json
for r in json.load(open('$OUT/$tag-$CARD.json'))['results']:
    print(r['set'], r.get('stage_seconds'), r.get('heldout_psnr'), r.get('heldout_psnr_frame'))" || true
}
run ${STEREO_TAG:-stereo-carve} --sets ${SETS:-.carry/data/spot_render /tmp/sets/helmet_sphere /tmp/sets/armadillo_sphere}
[ -n "${SKIP_VARIANTS:-}" ] || run stereo-fused-helmet --sets /tmp/sets/helmet_sphere --set geometry.stereo_surface=fused
[ -n "${SKIP_VARIANTS:-}" ] || run stereo-off-helmet --sets /tmp/sets/helmet_sphere --set geometry.stereo=off
grep -h "stereo:" "$OUT"/*.log | cut -c1-300
echo "all done $(( $(date +%s) - t0 ))s"
