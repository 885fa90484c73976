"""bench/run_bench.py end to end on a tiny set: a real job, scored, one row per job with what explains its grade."""
from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest

from tests.conftest import tiny_job


def test_a_benchmark_row_scores_the_job_and_says_why_it_graded_so(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    from bench import run_bench
    from tests.conftest import SAMPLE

    if not (SAMPLE / "gt.ply").exists():
        pytest.skip("the bundled sample has no gt.ply")
    job = tiny_job(tmp_path / "tiny", views=12, size=96)
    shutil.copy2(SAMPLE / "gt.ply", job / "gt.ply")
    monkeypatch.setattr(sys, "argv", ["run_bench.py", "--sets", str(job), "--device", "cpu", "--samples", "20000",
                                      "--tag", "t", "--out", str(tmp_path / "out"), "--parallel", "2",
                                      "--variant", "a:geometry.voxel_resolution=48",
                                      "--variant", "b:geometry.voxel_resolution=64"])
    run_bench.main()
    rows = json.loads((tmp_path / "out" / "t.json").read_text())["results"]
    assert sorted(r["variant"] for r in rows) == ["a", "b"]
    for r in rows:
        assert r["state"] == "done", r.get("error")
        assert r["fscore@1%"] > 0.5 and r["watertight"] is True
        assert isinstance(r["handles"], int) and r["dense"] is None  # a masked set: the hull method
        assert set(r["grade_checks"].values()) <= {"warn", "fail"}
        assert r["grade"] != "pass" or not r["grade_checks"]
        assert "fail" not in r["grade_checks"].values() or r["grade"] == "fail"
