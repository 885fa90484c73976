#!/usr/bin/env bash
# One call on a multi-GPU device (nvidia-h100-x2): install the carried wheels, compile nvdiffrast once into a
# shared extension dir, then bench/multigpu.py: 1 GPU vs all GPUs on the same 4 spot_render jobs, and the
# kill-one-worker check. Results land in $OUT.
#   bash bench/device_multigpu.sh
set -uo pipefail
source bench/device_setup.sh  # installs the carried wheels/tarballs, sets PYTHONPATH, OUT, ...
{ nvidia-smi -L; nvidia-smi topo -m; nproc; } > "$OUT/gpus.txt" 2>&1
t0=$(date +%s)
python -c "from pipeline.raster import load_nvdiffrast; load_nvdiffrast(); print('nvdiffrast ready')"
echo "compile $(( $(date +%s) - t0 ))s"
python bench/multigpu.py --data .carry/data/spot_render --jobs 4 --single 0 --multi all --kill --out "$OUT" "$@" \
    2>&1 | tee "$OUT/multigpu.log" | grep -v "^20" | tail -40
echo "total $(( $(date +%s) - t0 ))s"
