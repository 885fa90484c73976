#!/usr/bin/env bash
# Session 5: (A) texture-fit variants scored on held-out views (bench/tune_texture.py) and, on the same GPU at the
# same time, (B) a decaying last-level step for the refinement (bench/tune_refine.py, with held-out IoU).
# Quality numbers only: the two share the GPU, so their times are not comparable.
#   bash bench/device_tune5.sh   (carry .carry/wheels .carry/pymeshlab-cp312.tar.xz .carry/data/spot_render
#                                  .carry/evalsets/{spot,bob,armadillo,bunny})
source bench/device_setup.sh
E=.carry/evalsets
python bench/tune_texture.py --sets $E/spot $E/armadillo $E/bob $E/bunny .carry/data/spot_render \
    --variant bake: --variant fit:texture.fit=true --variant s0:texture.fit_smooth=0 \
    --variant s3:texture.fit_smooth=3 --variant p1:texture.fit_prior=1 \
    --variant p001:texture.fit_prior=0.01,texture.fit_smooth=0.3 --variant vp2:texture.fit_view_power=2 \
    --variant it150:texture.fit_iterations=150 \
    --tag tune-tex-A --out "$OUT" > "$OUT/tune-tex-A.log" 2>&1 &
python bench/tune_refine.py --sets $E/spot $E/armadillo $E/bob .carry/data/spot_render \
    --variant base: --variant lrf01:refine.lr_final=0.1 --variant lrf03:refine.lr_final=0.3 \
    --variant it350lrf01:refine.iterations=350,refine.lr_final=0.1 \
    --tag tune-F --out "$OUT" 2>&1 | grep -v -i warn | grep -v coalesce > "$OUT/tune-F.log"
wait
grep -v -i warn "$OUT/tune-tex-A.log" | grep -v coalesce | tail -60
cat "$OUT/tune-F.log"
