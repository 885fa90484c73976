#!/usr/bin/env bash
# Build .carry/ (git-ignored) for a run on a GPU machine that has Python 3.12, torch, numpy, scipy, opencv,
# scikit-image, pillow and jinja2 but no network: the rest of hotmesh's dependencies as xz tarballs of their
# installed, stripped files (wheels of embreex, cholespy and pymeshlab are too large to carry as they are), plus the
# benchmark's data sets. bench/device.sh unpacks them there.
#   bash bench/pack_device.sh [SET_FOLDER ...]      (needs network to PyPI, binutils for strip)
# The SET_FOLDERs go into one tarball, .carry/${DATA_TARBALL:-data-sets}.tar.xz (with <name>.poses.json beside each
# where there is one).
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CARRY="$REPO/.carry"
SHARED="${HOTMESH_SHARED:-$REPO/../shared}"
W="$(mktemp -d)"
trap 'rm -rf "$W"' EXIT
mkdir -p "$CARRY"
PIPDL=(python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp
       --platform manylinux_2_35_x86_64 --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64
       --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64)

# 1. pycolmap with CUDA (SIFT and matching on the GPU), packed by the shared tool (~28 MiB, includes trimesh)
if [ ! -f "$CARRY/pycolmap-cuda12-4.2.1-cp312-site.tar.xz" ]; then
    bash "$SHARED/tools/pack_pycolmap_cuda.sh" "$CARRY"
fi

# 2. pymeshlab: only the plugins hotmesh calls (meshing, select, clean, texture, io_base, screened_poisson) and the
#    libraries they load, plus the libGL it links against (the GPU image has none), in _hotmesh_gl/
if [ ! -f "$CARRY/pymeshlab-cp312.tar.xz" ]; then
    V=2025.7.post1
    "${PIPDL[@]}" -d "$W/dl" "pymeshlab==$V"
    (cd "$W" && unzip -q dl/pymeshlab-*.whl -d pml)
    P="$W/pml/pymeshlab-$V.data/purelib"
    [ -d "$P" ] || P="$W/pml"
    (
        cd "$P/pymeshlab"
        rm -rf tests
        for p in lib/plugins/*.so; do
            case $(basename "$p") in libfilter_meshing.so|libfilter_select.so|libfilter_clean.so|libfilter_texture.so|libio_base.so|libfilter_screened_poisson.so) ;; *) rm "$p";; esac
        done
        needed=$( (ldd pmeshlab.cpython-312-x86_64-linux-gnu.so; for p in lib/plugins/*.so; do ldd "$p"; done) | awk '{print $1}' | sort -u)
        for f in lib/*; do [ -f "$f" ] || continue; grep -qx "$(basename "$f")" <<< "$needed" || rm "$f"; done
        find . -name "*.so*" -type f -exec strip --strip-unneeded {} \; 2>/dev/null || true
    )
    mkdir -p "$P/_hotmesh_gl"
    for l in libGL.so.1 libGLX.so.0 libGLdispatch.so.0 libOpenGL.so.0 libX11.so.6 libxcb.so.1 libXau.so.6 libXdmcp.so.6 libbsd.so.0 libmd.so.0 libcom_err.so.2; do
        cp -L "/usr/lib/x86_64-linux-gnu/$l" "$P/_hotmesh_gl/" 2>/dev/null || true
    done
    (cd "$P" && tar -cf - pymeshlab _hotmesh_gl $(ls -d pymeshlab-*.dist-info 2>/dev/null) | xz -T2 -9 > "$CARRY/pymeshlab-cp312.tar.xz")
fi

# 3. everything else hotmesh imports that the image lacks, installed into one folder, stripped, xz-packed
if [ ! -f "$CARRY/deps-cp312.tar.xz" ]; then
    # a folder of its own: step 2's pymeshlab wheel must not be installed here a second time, unstripped. trimesh
    # is here as well as in step 1's tarball: a call that carries this one and pymeshlab but not pycolmap (the GPU
    # tests) imports it too
    D3="$W/dl-deps"
    "${PIPDL[@]}" -d "$D3" trimesh embreex cholespy xatlas fast-simplification diffrp-nvdiffrast sqlite-utils \
        click-default-group sqlite-fts4 watchdog apscheduler tzlocal prometheus-client pydantic pydantic-core \
        annotated-types typing-inspection
    python3 -m pip wheel -q --no-deps -w "$D3" largesteps
    python3 -m pip install -q --no-deps --no-compile --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_35_x86_64 --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 --platform any --target "$W/deps" "$D3"/*.whl
    find "$W/deps" -name "*.so*" -type f -exec strip --strip-unneeded {} \; 2>/dev/null || true
    find "$W/deps" -name __pycache__ -prune -exec rm -rf {} +
    rm -rf "$W/deps/bin"
    (cd "$W/deps" && tar -cf - . | xz -T2 -9 > "$CARRY/deps-cp312.tar.xz")
fi

# 4. the shared renderers (48 KB), so that sets can be rendered on the machine itself (bench/scaling.py renders up to
#    200 views, which would not travel): bench/make_sets.py --tools .carry/tools
mkdir -p "$CARRY/tools"
cp "$SHARED/tools/render_scene.py" "$SHARED/tools/render_set.py" "$CARRY/tools/"

# 5. data sets, as one tarball (DATA_TARBALL, default data-sets): their ground-truth meshes shrink about 8x in xz, so
#    five photo sets travel in 29 MiB. device.sh unpacks every .carry/data*.tar.xz into its data folder once per
#    machine (by name: give a tarball with other sets another name)
if [ $# -gt 0 ]; then
    tarball="$CARRY/${DATA_TARBALL:-data-sets}.tar.xz"
    args=()
    for d in "$@"; do
        args+=(-C "$(dirname "$d")" "$(basename "$d")")
        [ -f "$d.poses.json" ] && args+=(-C "$(dirname "$d")" "$(basename "$d").poses.json")
    done
    tar -cf - "${args[@]}" | xz -T2 -6 > "$tarball"
fi
# what travels: the three tarballs (~59 MiB together) and the code (~5 MiB) do not fit one call's 64 MiB, so they are
# spread over the first two calls of a lease (deps + pycolmap, then pymeshlab), each with the data it needs;
# bench/device.sh unpacks them into /tmp, which lasts while the machine is held (docs/benchmarks.md has the plan)
du -sh "$CARRY"/*.tar.xz 2>/dev/null || true
