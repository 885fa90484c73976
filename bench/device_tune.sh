#!/usr/bin/env bash
# Refinement settings sweep on the device (same evaluation sets as device_run.sh). Usage on the device:
#   bash bench/device_tune.sh "tag1:--set refine.iterations=500" "tag2:--set refine.start_faces=60000 ..."
set -uo pipefail
source bench/device_setup.sh  # installs the carried wheels/tarballs, sets PYTHONPATH, OUT, ...
t0=$(date +%s)
[ -d /tmp/evalsets/helmet ] || python bench/make_eval_sets.py /tmp/evalsets --meshes .carry/data/meshes 2>&1 | tail -6
SETS="spot_render /tmp/evalsets/spot /tmp/evalsets/bob /tmp/evalsets/armadillo /tmp/evalsets/bunny /tmp/evalsets/helmet"
for variant in "$@"; do
  tag=${variant%%:*}; args=${variant#*:}
  # shellcheck disable=SC2086
  python bench/run_bench.py --sets $SETS --tag "$tag" --out "$OUT" $args 2>&1 | grep -v "^20" | tail -9
  echo "$tag done at $(( $(date +%s) - t0 ))s"
done
