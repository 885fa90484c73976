#!/usr/bin/env bash
# One command on a GPU machine without network, with what bench/pack_device.sh put in .carry/:
#   bash bench/device.sh unpack                     unpack the carried tarballs and data into /tmp, nothing else
#   bash bench/device.sh gpu-tests [PYTEST ARGS]    pytest -m gpu; the log goes to $OUT/gpu-tests-<card>.txt (set
#                                                   HOTMESH_COMMIT to name the commit: the copy's git data is stale)
#   bash bench/device.sh bench [RUN_BENCH ARGS]     bench/run_bench.py --out $OUT ...; rows are written as they finish
#   bash bench/device.sh peer SET [PEER ARGS]       bench/peer_colmap.py --out $OUT ...
#   bash bench/device.sh COMMAND [ARGS...]          anything else, in the same environment
# Tarballs are unpacked into /tmp/hotmesh-site and data sets copied to /tmp/hotmesh-data once per machine: a first
# call carries the tarballs (.carry/*.tar.xz, ~61 MiB), later calls on the same warm machine carry only code and
# new data (.carry/data). Every mode stops itself after DEVICE_SECONDS (default 570 s, inside the 10-minute limit of
# one call) and keeps what it measured: test logs and benchmark rows are written as they come.
# Only a few files under $OUT come back from a call (eight; the rest are left out by count): write many small results
# (probe lines, dumps) elsewhere and tar them into one file under $OUT at the end. A mode started in the background
# must be waited for inside the call (wait for its PID): the call ends with its command, and $OUT is emptied then.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SITE=/tmp/hotmesh-site
DATA=/tmp/hotmesh-data
export OUT="${OUT:-/tmp/out}"
mkdir -p "$OUT" "$SITE" "$DATA"
# one unpack at a time: several modes started at once in a call that carries a new tarball all found it not yet
# unpacked, extracted it over each other ("File exists") and stopped, tests and benchmark alike; the others wait
exec 9>"$SITE/.unpack.lock"
flock 9
for t in "$REPO"/.carry/*.tar.xz; do
    [ -f "$t" ] || continue
    stamp="$SITE/.$(basename "$t").done"
    # data*.tar.xz hold data sets (their ground-truth meshes shrink 8x in xz, the photos not at all): into the data
    # folder, without rewriting what is there; the rest are site packages
    case "$(basename "$t")" in
        data*) [ -f "$stamp" ] || { tar -xJf "$t" -C "$DATA" --skip-old-files && touch "$stamp"; } ;;
        *) [ -f "$stamp" ] || { tar -xJf "$t" -C "$SITE" && touch "$stamp"; } ;;
    esac
done
# data sets: every carried .carry/data*/ folder (one per call, so that each call carries only what is new); files
# already there are never rewritten, so that a mode started later does not overwrite a file another one reads
for d in "$REPO"/.carry/data*/; do
    [ -d "$d" ] && cp -rn "$d". "$DATA"/
done
flock -u 9
exec 9>&-
if ! ls "$SITE"/.*.done 2>/dev/null | grep -vq '/\.data'; then
    echo "device.sh: no dependency tarballs unpacked on this machine: carry .carry/*.tar.xz in this call" >&2
fi
export PYTHONPATH="$REPO:$SITE${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export TORCH_EXTENSIONS_DIR=/tmp/torch_ext HOTMESH_TEST_DATA="$DATA"
# pymeshlab's plugins link libGL, which the GPU image lacks; the carried copy sits in its own folder so that none of
# pymeshlab's other bundled libraries shadows torch's
[ -d "$SITE/_hotmesh_gl" ] && export LD_LIBRARY_PATH="$SITE/_hotmesh_gl${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
# pycolmap-cuda12 links X11 client libraries that a headless image may lack; the carried copies are the fallback
if [ -d "$SITE/_pycolmap_x11" ] && ! ldconfig -p 2>/dev/null | grep -q libSM.so.6; then
    export LD_LIBRARY_PATH="${LD_LIBRARY_PATH:+$LD_LIBRARY_PATH:}$SITE/_pycolmap_x11"
fi
# multi-GPU hosts: never NVLink multicast (it can take the host's GPUs down)
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
# the model's token ("NVIDIA H100 80GB HBM3" -> h100, "NVIDIA H200" -> h200), not the name's last word
CARD="$(python3 -c "import re, torch; n = torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'cpu'; m = re.search(r'\b[A-Z]+\d{2,4}\b', n); print(m.group(0).lower() if m else n.split()[-1].lower())")"
export CARD
LIMIT="${DEVICE_SECONDS:-570}"
cd "$REPO"
mode="${1:-}"
[ $# -gt 0 ] && shift

# A mode whose packages are missing would spend minutes failing job by job (every photo job, posed ones too, runs
# structure from motion; the peer imports the settings code): check the imports first and say which tarball to carry
need() {
    local missing=()
    for pair in "$@"; do
        python3 -c "import ${pair%%=*}" 2>/dev/null || missing+=("${pair%%=*} (.carry/${pair#*=})")
    done
    if [ ${#missing[@]} -gt 0 ]; then
        echo "device.sh: $mode needs ${missing[*]} on this machine: carry those tarballs in this call" >&2
        exit 3
    fi
}
DEPS="pydantic=deps-cp312.tar.xz" COLMAP="pycolmap=pycolmap-cuda12-4.2.1-cp312-site.tar.xz"
MESHLAB="pymeshlab=pymeshlab-cp312.tar.xz"
case "$mode" in
    gpu-tests|bench) need "$DEPS" "$COLMAP" "$MESHLAB" ;;
    peer) need "$DEPS" "$COLMAP" ;;
esac
case "$mode" in
    unpack)
        du -sh "$SITE" "$DATA"; ls "$DATA" ;;
    gpu-tests)
        log="$OUT/gpu-tests-$CARD.txt"
        { echo "# pytest -m gpu on $(python3 -c 'import torch; print(torch.cuda.get_device_name(0))'), $(date -u +%Y-%m-%dT%H:%MZ)${HOTMESH_COMMIT:+, commit $HOTMESH_COMMIT}"
          timeout -k 10 "$LIMIT" python3 -m pytest -m gpu -v -p no:cacheprovider --durations=0 tests "$@" 2>&1; } | tee "$log" ;;
    bench)
        timeout -k 10 "$LIMIT" python3 bench/run_bench.py --out "$OUT" "$@" ;;
    peer)
        timeout -k 10 "$LIMIT" python3 bench/peer_colmap.py --out "$OUT" "$@" ;;
    "")
        echo "usage: bash bench/device.sh unpack | gpu-tests | bench ARGS | peer SET ARGS | COMMAND..." >&2; exit 2 ;;
    *)
        exec timeout -k 10 "$LIMIT" "$mode" "$@" ;;
esac
