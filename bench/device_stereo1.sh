#!/usr/bin/env bash
# Issue 8, session 6: hull-bounded stereo carving trial (tools/stereo_trial.py) on the whole-sphere sets.
#   (tools/stereo.py was pipeline/stereo.py then, at commit dd827b9)
#   bash bench/device_stereo1.sh   (carry .carry/wheels .carry/evalsets_sphere)
source bench/device_setup.sh
t0=$(date +%s)
FUSE="--fuse carve_voxels=1.5 --fuse carve_voxels=1.0 --fuse min_consistent=2,min_fuse_views=2"
python tools/stereo_trial.py .carry/evalsets_sphere/helmet 192 cuda --sweep max_side=512 --sweep max_side=384 \
    $FUSE --dump "$OUT/dump" 2>&1 | grep -v Warn | tee "$OUT/stereo-helmet.log"
for s in spot bob armadillo bunny; do
  python tools/stereo_trial.py .carry/evalsets_sphere/$s 192 cuda --sweep max_side=512 $FUSE 2>&1 | grep -v Warn \
    | tee "$OUT/stereo-$s.log"
done
echo "all done $(( $(date +%s) - t0 ))s"
