"""Reports of failed jobs: the stage that failed and what to do, each photo with its diagnostics, and only files
that exist; plus the per-photo measures themselves."""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFilter

from pipeline.report.diagnostics import exposure, flag_photos, measure_photo, sharpness
from pipeline.report.failure import STAGE_ORDER, write_failure_report
from tests.conftest import REPO, tiny_job

FILE_REF = re.compile(r"<code>([^<]+\.(?:jpg|jpeg|png|zip|log|json|html|glb|ply|obj|mtl))</code>")


def _referenced_files(html: str, photos: set[str]) -> set[str]:
    """Files the page names (in <code>), other than the input photos it describes."""
    return {m for m in FILE_REF.findall(html) if m not in photos}


def test_stage_order_matches_the_runner() -> None:
    from pipeline.runner import STAGES

    assert STAGE_ORDER == (*(s.name for s in STAGES), "publish")


def test_sfm_failure_report_shows_every_photo_with_its_sfm_counts(tmp_path: Path) -> None:
    """Unposed tiny renders: SfM places none. The report names the stage, says what to do, lists each photo with
    the feature/match counts SfM recorded, and refers only to files published beside it."""
    job = tiny_job(tmp_path / "in" / "unposed", views=10, size=64)
    (job / "transforms.json").unlink()
    out, state = tmp_path / "out", tmp_path / "state"
    res = subprocess.run([sys.executable, "-m", "daemon.cli", "process", str(job), "--out", str(out), "--state",
                          str(state), "--device", "cpu", "--set", "limits.min_images=4"], cwd=REPO,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 1, res.stderr[-2000:]
    pub = out / "unposed"
    assert {p.name for p in pub.iterdir()} == {"report.html", "stats.json", "job.log"}
    html = (pub / "report.html").read_text()
    stats = json.loads((pub / "stats.json").read_text())
    assert stats["job"]["stage"] == "cameras" and "no camera poses" in stats["job"]["error"]
    assert "Failed in stage “cameras”" in html
    assert "Reshoot with more overlap" in re.search(r'id="what-to-do">([^<]*)<', html).group(1)
    strip = {k: v.strip() for k, v in re.findall(r'data-stage="(\w+)">\w+: ([\w ]+)', html)}
    assert strip["ingest"] == "done" and strip["cameras"] == "failed" and strip["masks"] == "not run"
    # every photo, with SfM's own counts (kept from the failed stage's folder)
    names = sorted(p.relative_to(job).as_posix() for p in (job / "images").iterdir())
    rows = json.loads((state / "jobs" / "unposed" / "stages" / "cameras.tmp" / "sfm" / "per_image.json").read_text())
    sfm = {r["name"].removesuffix(".jpg"): r for r in rows}
    assert sorted(sfm) == names
    by_name = {p["name"]: p for p in stats["photos"]}
    assert sorted(by_name) == names
    for n in names:
        p = by_name[n]
        assert p["features"] == sfm[n]["features"] > 0 and p["registered"] is False and p["matched_images"] == 0
        assert "not placed" in p["flags"]
        row = re.search(rf'<tr data-photo="{re.escape(n)}">(.*?)</tr>', html, re.S).group(1)
        assert 'src="data:image/jpeg;base64,' in row  # a thumbnail
        assert re.search(r"data-features>(\d+)<", row).group(1) == str(p["features"])
    assert stats["failure"]["photos"] == {"shown": 10, "with_sfm": 10, "placed": 0, "flagged": 10}
    # only files that exist are named; the raw config dump is gone
    refs = _referenced_files(html, set(names))
    assert refs and all((pub / f).exists() for f in refs), refs
    assert "masks_preview.jpg" not in html and '"geometry": {' not in html
    assert "<details>" in html[html.index('id="config"'):]


def test_report_without_a_log_does_not_point_to_one(tmp_path: Path) -> None:
    """The daemon's reports for a job cancelled while queued or whose worker died before it logged: no job.log
    exists, so none is mentioned."""
    write_failure_report(tmp_path, "q", "q", "cancelled", "cancelled by a CANCEL file while queued", None, None, [],
                         {"report": {"render_size": 384}}, "n/a", published=set())
    html = (tmp_path / "report.html").read_text()
    assert "job.log" not in html and "Nothing to fix" in html
    assert _referenced_files(html, set()) <= {"report.html", "stats.json"}
    write_failure_report(tmp_path, "w", "w", "failed", "worker process killed by SIGKILL", "geometry", None, [],
                         {}, "n/a", published=set())
    html = (tmp_path / "report.html").read_text()
    assert "job.log" not in html and "hotmesh logs w" in html


def test_photo_measures_flag_blur_and_exposure(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    sharp = (rng.random((300, 400)) > 0.5).astype(np.uint8) * 200 + 25
    Image.fromarray(sharp).convert("RGB").save(tmp_path / "sharp.jpg", quality=95)
    Image.fromarray(sharp).convert("RGB").save(tmp_path / "sharp2.jpg", quality=95)
    Image.fromarray(sharp).convert("RGB").filter(ImageFilter.GaussianBlur(4)).save(tmp_path / "soft.jpg")
    Image.fromarray((sharp // 10).astype(np.uint8)).convert("RGB").save(tmp_path / "dark.jpg")
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8 not really")
    diags = flag_photos([measure_photo(tmp_path / n, n) for n in
                         ("sharp.jpg", "sharp2.jpg", "soft.jpg", "dark.jpg", "broken.jpg")])
    by = {d.name: d for d in diags}
    assert by["soft.jpg"].sharpness < 0.2 * by["sharp.jpg"].sharpness
    assert any("softer" in f for f in by["soft.jpg"].flags) and not by["sharp.jpg"].flags
    assert "dark" in by["dark.jpg"].flags and by["dark.jpg"].mean < 40
    assert by["broken.jpg"].error and "unreadable" in by["broken.jpg"].flags
    # the measures themselves against plain arithmetic
    g = np.arange(25, dtype=np.float64).reshape(5, 5) ** 2
    lap = [g[y, x - 1] + g[y, x + 1] + g[y - 1, x] + g[y + 1, x] - 4 * g[y, x] for y in range(1, 4) for x in range(1, 4)]
    assert sharpness(g) == pytest.approx(np.var(lap))
    assert exposure(np.array([[0, 5, 100], [250, 255, 128]], np.uint8)) == pytest.approx((123.0, 2 / 6, 2 / 6))
