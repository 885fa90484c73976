#!/usr/bin/env bash
# Exploration call (issue 8): baseline refinement on all sets with meshes kept, and three variants side by side
# (concurrent on one GPU, so their timings are not comparable; quality only).
source bench/device_setup.sh
python -c "from pipeline.raster import load_nvdiffrast; load_nvdiffrast(); print('nvdiffrast ok')" 2>&1 | tail -1
E=.carry/evalsets; ALL=".carry/data/spot_render $E/spot $E/bob $E/armadillo $E/bunny $E/helmet"; FOUR=".carry/data/spot_render $E/spot $E/bob $E/bunny"
B="python bench/run_bench.py --set texture.enabled=false --out $OUT"
$B --sets $ALL --tag A0 --keep /tmp/m/A0 > /tmp/A0.log 2>&1 &
$B --sets $FOUR --tag A1 --set refine.smoothness_decay=0.5 --set refine.normal_weight=0.01 --keep /tmp/m/A1 > /tmp/A1.log 2>&1 &
$B --sets $FOUR --tag A2 --set refine.smoothness_decay=0.5 --set refine.iterations=400 > /tmp/A2.log 2>&1 &
$B --sets $FOUR --tag A3 --set refine.smoothness_decay=0.5 --set refine.levels=3 --set refine.max_faces=500000 > /tmp/A3.log 2>&1 &
wait
tail -n 12 /tmp/A*.log > $OUT/logs.txt
tar -cf $OUT/meshes.tar -C /tmp/m .
python bench/table.py $OUT/A*.json 2>/dev/null | head -40
