"""The report's 3-D viewer ships with the package: a fresh install (no node_modules, no npm) still inlines it, and
when it cannot be used the page says why."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import trimesh

from pipeline.report import viewer
from tests.conftest import REPO

# renders a report with only what the installed packages bring (run inside the install's folder)
SCRIPT = r"""
import json, sys
from pathlib import Path
import trimesh
import pipeline
from pipeline.report.html import complete_stats, render_report
from pipeline.report.viewer import Viewer, make_viewer
out = Path(sys.argv[1])
trimesh.creation.icosphere(2).export(out / "mesh.glb")
v = make_viewer(out / "mesh.glb")
ctx = {"job": {"id": "j", "folder": "j", "state": "done", "error": None, "stage": None, "version": "0", "device": "cpu",
               "finished": "now"}, "stats": complete_stats({}), "renders": [], "heldout": [], "scene": None,
       "masks_preview": None, "viewer": v if isinstance(v, Viewer) else None,
       "no_viewer": None if isinstance(v, Viewer) else v.reason, "timings": [], "config": {}, "config_rows": [],
       "published": ["mesh.glb"], "photos": [], "failure": None}
render_report(ctx, out / "report.html")
print(json.dumps({"pipeline": pipeline.__file__, "origin": getattr(v, "origin", None), "version": getattr(v, "version", None),
                  "reason": getattr(v, "reason", None)}))
"""


def test_a_fresh_install_without_node_modules_has_the_viewer(tmp_path: Path) -> None:
    """setuptools lays the packages out as a wheel would (build_py, with the package data pyproject.toml names);
    the report rendered from that copy alone, with no node_modules anywhere, still carries the viewer."""
    import setuptools

    if int(setuptools.__version__.split(".")[0]) < 77:  # pyproject's SPDX licence needs 77; `make install` upgrades
        pytest.skip(f"needs setuptools>=77 in this environment (has {setuptools.__version__}): run `make install`")
    lib = tmp_path / "lib"
    res = subprocess.run([sys.executable, "-c", "import setuptools; setuptools.setup()", "-q", "build_py", "-d",
                          str(lib)], cwd=REPO, capture_output=True, text=True, timeout=120,
                         env=dict(os.environ, PYTHONWARNINGS="ignore"))
    shutil.rmtree(REPO / "build", ignore_errors=True)
    for egg in REPO.glob("*.egg-info"):
        shutil.rmtree(egg, ignore_errors=True)
    assert res.returncode == 0, res.stderr[-2000:]
    assert (lib / "pipeline" / "vendor" / "model-viewer" / "model-viewer.min.js").is_file()
    assert (lib / "pipeline" / "vendor" / "model-viewer" / "LICENSE").is_file()
    assert (lib / "pipeline" / "templates" / "report.html.j2").is_file()
    out = tmp_path / "out"
    out.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("HOTMESH_NODE_MODULES", "PYTHONPATH")}
    env["PYTHONPATH"] = str(lib)
    res = subprocess.run([sys.executable, "-c", SCRIPT, str(out)], cwd=tmp_path, capture_output=True, text=True,
                         timeout=120, env=env)
    assert res.returncode == 0, res.stderr[-2000:]
    info = json.loads(res.stdout.strip().splitlines()[-1])
    assert info["pipeline"].startswith(str(lib)), info  # the installed copy, not the checkout
    assert info["origin"] == "shipped with hotmesh" and info["version"] == "4.4.0", info
    html = (out / "report.html").read_text()
    assert "<model-viewer" in html and 'src="data:model/gltf-binary;base64,' in html
    bundle = (lib / "pipeline" / "vendor" / "model-viewer" / "model-viewer.min.js").read_text()
    assert bundle[:2000] in html


def test_the_shipped_bundle_is_intact_and_licensed() -> None:
    meta = json.loads((viewer.VENDOR / "vendor.json").read_text())
    data = (viewer.VENDOR / meta["file"]).read_bytes()
    assert hashlib.sha256(data).hexdigest() == meta["sha256"] and meta["version"] == "4.4.0"
    assert "Apache License" in (viewer.VENDOR / "LICENSE").read_text()
    third = (viewer.VENDOR / "THIRD_PARTY_LICENSES").read_text()
    assert "three" in third and "MIT" in third and "BSD" in third
    npm = REPO / "node_modules" / "@google" / "model-viewer"
    if (npm / "package.json").is_file():  # an npm install, where present, is the same release
        assert json.loads((npm / "package.json").read_text())["version"] == meta["version"]
        assert (npm / "dist" / meta["file"]).read_bytes() == data


def test_a_damaged_bundle_is_refused_and_the_page_says_why(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bad = tmp_path / "model-viewer"
    shutil.copytree(viewer.VENDOR, bad)
    with open(bad / "model-viewer.min.js", "ab") as fh:
        fh.write(b"// changed")
    monkeypatch.delenv("HOTMESH_NODE_MODULES", raising=False)
    assert "checksum" in viewer.vendored_bundle(bad)
    (bad / "vendor.json").unlink()
    assert "missing or unreadable" in viewer.vendored_bundle(bad)
    # through make_viewer and into the page
    monkeypatch.setattr(viewer, "find_bundle", lambda: viewer.vendored_bundle(bad))
    glb = tmp_path / "mesh.glb"
    trimesh.creation.icosphere(1).export(glb)
    v = viewer.make_viewer(glb)
    assert isinstance(v, viewer.NoViewer)
    from pipeline.report.html import complete_stats, render_report

    ctx = {"job": {"id": "j", "folder": "j", "state": "done", "error": None, "stage": None, "version": "0",
                   "device": "cpu", "finished": "now"}, "stats": complete_stats({}), "renders": [], "heldout": [],
           "scene": None, "masks_preview": None, "viewer": None, "no_viewer": v.reason, "timings": [], "config": {},
           "config_rows": [], "published": ["mesh.glb"], "photos": [], "failure": None}
    render_report(ctx, tmp_path / "report.html")
    html = (tmp_path / "report.html").read_text()
    assert "No 3-D viewer in this report: the bundled &lt;model-viewer&gt; is missing or unreadable" in html
    assert "Open <code>mesh.glb</code>" in html and "<model-viewer" not in html


def test_node_modules_override(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    nm = tmp_path / "nm"
    dist = nm / "@google" / "model-viewer" / "dist"
    dist.mkdir(parents=True)
    (dist / "model-viewer.min.js").write_text("export const x = 1;")
    (dist.parent / "package.json").write_text('{"version": "9.9.9"}')
    monkeypatch.setenv("HOTMESH_NODE_MODULES", str(nm))
    b = viewer.find_bundle()
    assert b.version == "9.9.9" and b.origin == f"from {nm}"
    monkeypatch.setenv("HOTMESH_NODE_MODULES", str(tmp_path / "none"))
    assert viewer.find_bundle().origin == "shipped with hotmesh"
