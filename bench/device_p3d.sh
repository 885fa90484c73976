#!/usr/bin/env bash
# The GPU test that needs pytorch3d (regularisers inside the nvdiffrast refinement), on its own: the other GPU tests
# ran in bench/device_final3.sh, whose carry had no room for pytorch3d.
#   bash bench/device_p3d.sh   (carry .carry/wheels .carry/pytorch3d-cp312.tar.xz .carry/pymeshlab-cp312.tar.xz)
source bench/device_setup.sh
set -o pipefail
python -m pytest -q -s -m gpu tests/test_gpu.py -k pytorch3d 2>&1 | grep -v Warning | tail -15 | tee "$OUT/gpu-tests-pytorch3d.txt"
echo "rc=$?" | tee -a "$OUT/gpu-tests-pytorch3d.txt"
