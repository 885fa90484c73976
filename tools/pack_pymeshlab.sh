#!/usr/bin/env bash
# Pack pymeshlab for a device call (its cp312 wheel is 107 MB, over the 64 MiB carry limit): only the plugins
# hotmesh calls (meshing, select, clean, io_base) and the libraries they load, stripped, plus the system libGL
# it links against (the device image has none), in _hotmesh_gl/ which bench/device_setup.sh puts on
# LD_LIBRARY_PATH. Result: .carry/pymeshlab-cp312.tar.xz, about 20 MB.
#   bash tools/pack_pymeshlab.sh     (needs network for pip download, binutils for strip)
set -euo pipefail
V=${PYMESHLAB_VERSION:-2025.7.post1}
W=$(mktemp -d)
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_35_x86_64 -d "$W" "pymeshlab==$V"
(cd "$W" && unzip -q pymeshlab-*.whl)
P="$W/pymeshlab-$V.data/purelib"
cd "$P/pymeshlab"
rm -rf tests
for p in lib/plugins/*.so; do
  case $(basename "$p") in libfilter_meshing.so|libfilter_select.so|libfilter_clean.so|libio_base.so) ;; *) rm "$p";; esac
done
# keep the bundled libraries that the module or a kept plugin loads, drop the rest
needed=$( (ldd pmeshlab.cpython-312-x86_64-linux-gnu.so; for p in lib/plugins/*.so; do ldd "$p"; done) | awk '{print $1}' | sort -u)
for f in lib/*; do [ -f "$f" ] || continue; grep -qx "$(basename "$f")" <<< "$needed" || rm "$f"; done
find . -name "*.so*" -type f -exec strip --strip-unneeded {} \; 2>/dev/null || true
cd "$P"
mv "$W/pymeshlab-$V.dist-info" .
mkdir -p _hotmesh_gl
for l in libGL.so.1 libGLX.so.0 libGLdispatch.so.0 libOpenGL.so.0 libX11.so.6 libxcb.so.1 libXau.so.6 libXdmcp.so.6 libbsd.so.0 libmd.so.0 libcom_err.so.2; do cp -L "/usr/lib/x86_64-linux-gnu/$l" _hotmesh_gl/; done
OUTF="$(cd "$(dirname "$0")/.." && pwd)/.carry/pymeshlab-cp312.tar.xz"
mkdir -p "$(dirname "$OUTF")"
tar -cJf "$OUTF" pymeshlab "pymeshlab-$V.dist-info" _hotmesh_gl
ls -la "$OUTF"
rm -rf "$W"
