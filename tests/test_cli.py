"""The command line as users run it: process, status, demo, --help."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO, TINY_SETTINGS, set_args, tiny_job


def hotmesh(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "daemon.cli", *args], cwd=str(REPO), capture_output=True, text=True,
                          timeout=timeout)


@pytest.mark.parametrize("cmd", ["run", "status", "process", "demo"])
def test_help_everywhere(cmd: str) -> None:
    r = hotmesh(cmd, "--help", timeout=60)
    assert r.returncode == 0 and "usage: hotmesh" in r.stdout


def test_process_then_status(tmp_path: Path) -> None:
    job = tiny_job(tmp_path / "in" / "cow", views=8, size=64)
    out, state = tmp_path / "out", tmp_path / "state"
    r = hotmesh("process", str(job), "--out", str(out), "--state", str(state), "--device", "cpu",
                *set_args(*TINY_SETTINGS))
    assert r.returncode == 0, r.stderr[-2000:]
    result = json.loads(r.stdout)
    assert result["state"] == "done" and Path(result["report"]).is_file()
    r = hotmesh("status", "--state", str(state), "--json", "--events", timeout=60)
    [row] = json.loads(r.stdout)
    assert row["id"] == "cow" and row["state"] == "done" and row["progress"] == 100.0
    assert [e["kind"] for e in row["events"]][:2] == ["created", "claimed"]
    r = hotmesh("status", "--state", str(state), timeout=60)
    assert "cow" in r.stdout and "done: 1" in r.stdout


def test_bad_config_is_a_clear_error(tmp_path: Path) -> None:
    r = hotmesh("process", str(tmp_path), "--out", str(tmp_path / "o"), "--set", "geometry.voxels=3", timeout=60)
    assert r.returncode != 0 and "unknown key(s) ['voxels']" in r.stderr


@pytest.mark.slow
def test_cpu_refinement_preview_through_the_stage(tmp_path: Path) -> None:
    """refine.enabled = on with no GPU: the same stage runs through pytorch3d's CPU rasteriser."""
    job = tiny_job(tmp_path / "in" / "cow", views=8, size=64)
    out = tmp_path / "out"
    r = hotmesh("process", str(job), "--out", str(out), "--device", "cpu",
                *set_args(*TINY_SETTINGS, "refine.enabled=on", "refine.cpu_faces=800", "refine.cpu_iterations=4",
                          "refine.cpu_image_size=48"))
    assert r.returncode == 0, r.stderr[-2000:]
    stats = json.loads((out / "cow" / "stats.json").read_text())
    assert "pytorch3d" in stats["refine"]["method"] and stats["refine"]["watertight"]
    # isotropic remeshing aims at the face count within a few percent (edge length from the area)
    assert stats["mesh"]["watertight"] and stats["mesh"]["faces"] <= 800 * 1.15
    html = (out / "cow" / "report.html").read_text()
    # "isotropic", or "subdivide (...why...)" where pymeshlab's meshing plugin is missing
    assert f"mesh growth: {stats['refine']['remesh']}" in html
    assert stats["refine"]["remesh"].split(" ")[0] in ("isotropic", "subdivide")


@pytest.mark.slow
def test_demo_runs_a_real_daemon_on_the_bundled_sample(tmp_path: Path) -> None:
    r = hotmesh("demo", "--dir", str(tmp_path / "demo"), "--device", "cpu")
    assert r.returncode == 0, (r.stdout[-2000:], r.stderr[-2000:])
    report = Path(r.stdout.strip().splitlines()[-1].removeprefix("report: "))
    assert report.is_file() and report.parent.name == "spot"
    stats = json.loads((report.parent / "stats.json").read_text())
    assert stats["quality"]["gt"]["fscore"] > 0.8  # the sample ships its ground truth
