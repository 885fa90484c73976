#!/usr/bin/env bash
# Run a command on a GPU machine without network, with what bench/pack_device.sh put in .carry/:
#   bash bench/device.sh COMMAND [ARGS...]      e.g. bash bench/device.sh python bench/run_bench.py --sets ...
# Unpacks the carried tarballs into /tmp/hotmesh-site (once per machine), sets the environment (PYTHONPATH,
# TORCH_EXTENSIONS_DIR, HOTMESH_TEST_DATA=.carry/data, OUT) and runs the command. CARD names the GPU for result files.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SITE=/tmp/hotmesh-site
export OUT="${OUT:-/tmp/out}"
mkdir -p "$OUT" "$SITE"
for t in "$REPO"/.carry/*.tar.xz; do
    [ -f "$t" ] || continue
    stamp="$SITE/.$(basename "$t").done"
    [ -f "$stamp" ] || { tar -xJf "$t" -C "$SITE" && touch "$stamp"; }
done
export PYTHONPATH="$REPO:$SITE${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export TORCH_EXTENSIONS_DIR=/tmp/torch_ext HOTMESH_TEST_DATA="$REPO/.carry/data"
# pymeshlab's plugins link libGL, which the GPU image lacks; the carried copy sits in its own folder so that none of
# pymeshlab's other bundled libraries shadows torch's
[ -d "$SITE/_hotmesh_gl" ] && export LD_LIBRARY_PATH="$SITE/_hotmesh_gl${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
# pycolmap-cuda12 links X11 client libraries that a headless image may lack; the carried copies are the fallback
if [ -d "$SITE/_pycolmap_x11" ] && ! ldconfig -p 2>/dev/null | grep -q libSM.so.6; then
    export LD_LIBRARY_PATH="${LD_LIBRARY_PATH:+$LD_LIBRARY_PATH:}$SITE/_pycolmap_x11"
fi
# multi-GPU hosts: never NVLink multicast (it can take the host's GPUs down)
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
CARD="$(python3 -c "import torch; n = torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'cpu'; print(n.split()[-1].lower() if 'NVIDIA' in n else n)")"
export CARD
cd "$REPO"
exec "$@"
