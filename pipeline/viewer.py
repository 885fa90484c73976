"""The interactive 3-D viewer inlined into report.html: Google's <model-viewer> (bundles three.js), installed from
the npm registry by `npm ci` (package.json at the repository root) and copied into the page when it is written,
with the GLB as a data: URI, so the report works offline from disk.
"""
from __future__ import annotations

import base64
import os
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BUNDLE = Path("@google/model-viewer/dist/model-viewer.min.js")
MAX_GLB_MB = 40.0  # larger models are linked (mesh.glb next to the report) instead of embedded


@dataclass(frozen=True)
class Viewer:
    script: str  # the model-viewer bundle (an ES module)
    src: str  # data: URI of the GLB, or its relative file name when too large to embed
    version: str


def node_modules() -> Path:
    return Path(os.environ.get("HOTMESH_NODE_MODULES", REPO / "node_modules"))


def find_bundle() -> tuple[Path, str] | None:
    path = node_modules() / BUNDLE
    if not path.is_file():
        return None
    version = "?"
    pkg = path.parent.parent / "package.json"
    if pkg.is_file():
        import json

        version = json.loads(pkg.read_text()).get("version", "?")
    return path, version


def make_viewer(glb: Path) -> Viewer | None:
    """The viewer for ``glb``, or None when model-viewer is not installed (`npm ci` not run)."""
    found = find_bundle()
    if found is None:
        return None
    path, version = found
    script = path.read_text(encoding="utf-8")
    if "</script" in script.lower():  # would end the inline <script> early; the bundle has none (checked)
        raise ValueError(f"{path} contains '</script' and cannot be inlined")
    size_mb = glb.stat().st_size / 2**20
    src = ("data:model/gltf-binary;base64," + base64.b64encode(glb.read_bytes()).decode()
           if size_mb <= MAX_GLB_MB else glb.name)
    return Viewer(script=script, src=src, version=version)
