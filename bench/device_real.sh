#!/usr/bin/env bash
# One device call for the unposed/unmasked real sets and textures: install the carried wheels (pycolmap comes as
# an xz tarball of its installed files: its wheel is over the carry limit), run the GPU tests, then the real
# daemon pipeline on apple (no poses, no masks) and fox (poses, no masks) with GPU refinement and the texture
# stage. Results and figures land in $OUT.
#   bash bench/device_real.sh
set -uo pipefail
source bench/device_setup.sh  # installs the carried wheels/tarballs, sets PYTHONPATH, OUT, ...
python -c "import pycolmap; print('pycolmap', pycolmap.__version__, 'cuda', pycolmap.has_cuda)" | tee "$OUT/pycolmap.txt"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/gpu.txt"
nproc >> "$OUT/gpu.txt"
t0=$(date +%s)
for set in apple fox; do
  t1=$(date +%s)
  python -m daemon.cli process .carry/data/$set --out /tmp/real/out --state /tmp/real/state --device cuda \
      > "$OUT/$set.log" 2>&1
  echo "$set rc=$? $(( $(date +%s) - t1 ))s" | tee -a "$OUT/real.txt"
  cp /tmp/real/out/$set/stats.json "$OUT/$set-stats.json" 2>/dev/null
  cp /tmp/real/out/$set/masks_preview.jpg "$OUT/$set-masks.jpg" 2>/dev/null
  python tools/report_figures.py /tmp/real/out/$set/report.html "$OUT/$set-renders.png" 2>/dev/null
done
echo "total $(( $(date +%s) - t0 ))s" | tee -a "$OUT/real.txt"
# textured outputs: held-out PSNR/SSIM of the textured GLB, texture time, file sizes (spot_render + the sample)
python bench/run_bench.py --sets spot_render sample --tag textured-gpu --out "$OUT" 2>&1 | grep -v "^20" | tail -6
echo "bench $(( $(date +%s) - t0 ))s" | tee -a "$OUT/real.txt"
python -m pytest -q -s -m gpu tests/test_gpu.py 2>&1 | tail -60 > "$OUT/gpu_tests.txt"; echo "gpu tests rc=${PIPESTATUS[0]} $(( $(date +%s) - t0 ))s" | tee -a "$OUT/gpu_tests.txt"
