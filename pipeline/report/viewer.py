"""The interactive 3-D viewer inlined into report.html: Google's <model-viewer> (Apache-2.0; bundles three.js),
shipped with this package (``pipeline/vendor/model-viewer``, package data: a plain ``pip install`` or the Docker
image has it, no npm at run time) and copied into the page with the GLB as a data: URI, so the report works offline
from disk. ``HOTMESH_NODE_MODULES`` may point at a node_modules folder with another @google/model-viewer build to
use instead. When no usable bundle is found the report says why instead of silently dropping the section.
"""
from __future__ import annotations

import base64
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

VENDOR = Path(__file__).resolve().parents[1] / "vendor" / "model-viewer"
NPM_BUNDLE = Path("@google/model-viewer/dist/model-viewer.min.js")
MAX_GLB_MB = 40.0  # larger models are linked (mesh.glb next to the report) instead of embedded


@dataclass(frozen=True)
class Viewer:
    script: str  # the model-viewer bundle (an ES module)
    src: str  # data: URI of the GLB, or its relative file name when too large to embed
    version: str
    origin: str  # where the bundle came from, for the page


@dataclass(frozen=True)
class NoViewer:
    reason: str  # shown in the report in place of the viewer


@dataclass(frozen=True)
class Bundle:
    path: Path
    version: str
    origin: str


def vendored_bundle(folder: Path = VENDOR) -> Bundle | str:
    """The shipped bundle, checked against the SHA-256 in its vendor.json; or why it cannot be used."""
    meta_file = folder / "vendor.json"
    try:
        meta = json.loads(meta_file.read_text())
        path = folder / meta["file"]
        data = path.read_bytes()
    except (OSError, ValueError, KeyError) as e:
        return f"the bundled <model-viewer> is missing or unreadable ({type(e).__name__}: {e})"
    if hashlib.sha256(data).hexdigest() != meta.get("sha256"):
        return f"the bundled <model-viewer> ({path.name}) does not match its recorded checksum: the install is damaged"
    return Bundle(path=path, version=str(meta.get("version", "?")), origin="shipped with hotmesh")


def override_bundle() -> Bundle | None:
    """The bundle in ``$HOTMESH_NODE_MODULES`` (an npm install), when that variable is set and has one."""
    root = os.environ.get("HOTMESH_NODE_MODULES")
    if not root:
        return None
    path = Path(root) / NPM_BUNDLE
    if not path.is_file():
        return None
    try:
        version = str(json.loads((path.parent.parent / "package.json").read_text()).get("version", "?"))
    except (OSError, ValueError):
        version = "?"
    return Bundle(path=path, version=version, origin=f"from {root}")


def find_bundle() -> Bundle | str:
    return override_bundle() or vendored_bundle()


def make_viewer(glb: Path) -> Viewer | NoViewer:
    """The viewer for ``glb``, or the reason there is none (the report shows it)."""
    found = find_bundle()
    if isinstance(found, str):
        return NoViewer(found)
    try:
        script = found.path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        return NoViewer(f"the <model-viewer> bundle {found.path} cannot be read: {e}")
    if "</script" in script.lower():  # would end the inline <script> early; the shipped bundle has none (checked)
        return NoViewer(f"the <model-viewer> bundle {found.path.name} contains '</script' and cannot be inlined")
    try:
        size_mb = glb.stat().st_size / 2**20
    except OSError as e:
        return NoViewer(f"{glb.name} was not written: {e}")
    src = ("data:model/gltf-binary;base64," + base64.b64encode(glb.read_bytes()).decode()
           if size_mb <= MAX_GLB_MB else glb.name)
    return Viewer(script=script, src=src, version=found.version, origin=found.origin)
