#!/usr/bin/env bash
# Session 5: is the bunny's miss the camera coverage? The same object, cameras on the upper 80% of the sphere
# (the evaluation sets) against the whole sphere (.carry/evalsets_sphere, make_eval_sets.py --min-z -1).
#   bash bench/device_tune6.sh   (carry .carry/wheels .carry/pymeshlab-cp312.tar.xz .carry/evalsets/bunny
#                                  .carry/evalsets_sphere/bunny)
source bench/device_setup.sh
mkdir -p /tmp/sets && cp -r .carry/evalsets/bunny /tmp/sets/bunny && cp -r .carry/evalsets_sphere/bunny /tmp/sets/bunny_sphere
python bench/tune_refine.py --sets /tmp/sets/bunny /tmp/sets/bunny_sphere \
    --variant base: --variant it350:refine.iterations=350 --variant photo4:refine.photometric_weight=4 \
    --tag tune-G --out "$OUT" --meshes "$OUT/tune-G-meshes.npz" 2>&1 | grep -v -i warn | grep -v coalesce
