#!/usr/bin/env bash
# Source this at the start of a device call: installs what the call carried (.carry/wheels/*.whl, and the
# xz tarballs of installed files for packages whose wheels exceed the carry limit: pycolmap, and pytorch3d whose
# 200 MB _C.so shrinks to 42 MB with `strip --strip-unneeded`, 9 MB as .tar.xz) and sets the environment.
#   source bench/device_setup.sh
export OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 TORCH_EXTENSIONS_DIR=/tmp/torch_ext HOTMESH_TEST_DATA=$PWD/.carry/data
export HOTMESH_NODE_MODULES=$PWD/.carry/node_modules
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
python -m pip install -q --no-deps --no-index .carry/wheels/*.whl 2>&1 | grep -v WARNING | tail -2
SITE=$(python -c "import site; print(site.getsitepackages()[0])")
for t in .carry/*-cp312.tar.xz; do [ -f "$t" ] && tar -xJf "$t" -C "$SITE"; done
# pymeshlab's tarball (plugins for meshing/selection/cleaning only, stripped: 20 MB) brings the libGL it links
# against, which the device image lacks, in a folder of its own (the rest of pymeshlab/lib must not shadow torch's)
[ -d "$SITE/_hotmesh_gl" ] && export LD_LIBRARY_PATH="$SITE/_hotmesh_gl${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
python -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name(0))"
python -c "import pytorch3d.loss, pytorch3d; print('pytorch3d', pytorch3d.__version__)" 2>/dev/null || echo "pytorch3d not carried"
python -c "import pymeshlab; assert hasattr(pymeshlab.MeshSet(), 'meshing_decimation_quadric_edge_collapse'); print('pymeshlab ok')" 2>&1 | tail -1
# the carried whole-sphere evaluation sets under the names the result files use (<set>_sphere), and the card
mkdir -p /tmp/sets
for d in .carry/evalsets_sphere/*/; do
    [ -d "$d" ] && cp -r "$d" "/tmp/sets/$(basename "$d")_sphere"
done
CARD=$(python -c "import torch; print('h200' if 'H200' in torch.cuda.get_device_name(0) else 'h100')")
export CARD
