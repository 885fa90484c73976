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
    written = json.loads((tmp_path / "out" / "t.json").read_text())
    rows = written["results"]
    # the host's one-core speed, beside the card: timings from different machines are told apart by it
    assert written["host"]["python_loop_s"] > 0 and written["host"]["cpu"]
    assert sorted(r["variant"] for r in rows) == ["a", "b"]
    for r in rows:
        assert r["state"] == "done", r.get("error")
        assert r["fscore@1%"] > 0.5 and r["watertight"] is True
        assert isinstance(r["handles"], int) and r["dense"] is None  # a masked set: the hull method
        assert set(r["grade_checks"].values()) <= {"warn", "fail"}
        assert r["grade"] != "pass" or not r["grade_checks"]
        assert "fail" not in r["grade_checks"].values() or r["grade"] == "fail"


def test_shared_upstream_variants_rerun_only_the_stages_their_settings_change(tmp_path: Path,
                                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """--share-upstream: a set's later variant is its first job retried with other settings, so a change of the
    texture reruns texture and report only, from the same geometry, and the mesh scores the same."""
    from bench import run_bench
    from tests.conftest import SAMPLE

    if not (SAMPLE / "gt.ply").exists():
        pytest.skip("the bundled sample has no gt.ply")
    job = tiny_job(tmp_path / "tiny", views=12, size=96)
    shutil.copy2(SAMPLE / "gt.ply", job / "gt.ply")
    monkeypatch.setattr(sys, "argv", ["run_bench.py", "--sets", str(job), "--device", "cpu", "--samples", "20000",
                                      "--tag", "t", "--out", str(tmp_path / "out"), "--share-upstream",
                                      "--variant", "a:geometry.voxel_resolution=48",
                                      "--variant", "b:geometry.voxel_resolution=48,texture.cpu_size=64",
                                      "--variant", "c:geometry.voxel_resolution=64"])
    run_bench.main()
    rows = {r["variant"]: r for r in json.loads((tmp_path / "out" / "t.json").read_text())["results"]}
    assert sorted(rows) == ["a", "b", "c"]
    assert all(r["state"] == "done" for r in rows.values()), [r.get("error") for r in rows.values()]
    a, b, c = rows["a"], rows["b"], rows["c"]
    assert "reused_from" not in a and b["reused_from"] == "a" and c["reused_from"] == "a"
    ran = {v: {s for s, sec in r["stage_seconds"].items() if sec > 0} for v, r in rows.items()}
    assert {"ingest", "cameras", "geometry", "texture"} <= ran["a"]
    assert "geometry" not in ran["b"] and "cameras" not in ran["b"] and "texture" in ran["b"]
    assert "geometry" in ran["c"] and "cameras" not in ran["c"]  # its voxel grid changed, its cameras did not
    assert b["fscore@1%"] == a["fscore@1%"] and b["faces"] == a["faces"]  # the same mesh, scored again
    assert c["faces"] != a["faces"]


def test_each_variant_row_is_written_as_soon_as_it_is_scored(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A run stopped at its time limit keeps the variants that finished: run_set appends each row to the sink
    before the next variant starts, and a variant that fails leaves its error row and the next one still runs."""
    import daemon.worker
    from bench import run_bench
    from tests.conftest import SAMPLE

    if not (SAMPLE / "gt.ply").exists():
        pytest.skip("the bundled sample has no gt.ply")
    job = tiny_job(tmp_path / "tiny", views=12, size=96)
    shutil.copy2(SAMPLE / "gt.ply", job / "gt.ply")
    sink = tmp_path / "rows.jsonl"
    seen: list[int] = []
    real = daemon.worker.execute

    def execute(*args, **kwargs):  # what the sink holds when each job starts
        seen.append(len(sink.read_text().splitlines()) if sink.exists() else 0)
        return real(*args, **kwargs)

    monkeypatch.setattr(daemon.worker, "execute", execute)
    variants = [("a", {"geometry": {"voxel_resolution": 48}}), ("bad", {"geometry": {"voxel_resolution": "x"}}),
                ("b", {"geometry": {"voxel_resolution": 48}, "texture": {"cpu_size": 64}})]
    rows = run_bench.run_set(job, False, variants, "cpu", 20_000, None, sink=sink)
    assert seen == [0, 2]  # b started after a's and bad's rows were written
    assert [json.loads(line)["variant"] for line in sink.read_text().splitlines()] == ["a", "bad", "b"]
    assert [r["state"] for r in rows] == ["done", "error", "done"] and "voxel_resolution" in rows[1]["error"]


def test_scaling_growth_exponents_find_linear_and_quadratic_stages() -> None:
    """bench/scaling.py: the slope of log(seconds) on log(photos) per stage, with missing and negligible stages
    and failed jobs left out."""
    import numpy as np

    from bench.scaling import growth_exponents, summarise

    views = [24, 48, 96, 200]
    rng = np.random.default_rng(3)
    linear = [0.4 * v * (1 + 0.05 * e) for v, e in zip(views, rng.standard_normal(4))]
    quadratic = [0.002 * v * v for v in views]
    got = growth_exponents(views, {"depth": linear, "match": quadratic, "ingest": [0.01, 0.02, 0.03, 0.05],
                                   "texture": [None, 8.0, None, None]})
    assert 0.9 < got["depth"] < 1.1 and got["match"] == pytest.approx(2.0, abs=1e-3)
    assert growth_exponents(views, {"x": [0.4 * v for v in views]})["x"] == pytest.approx(1.0, abs=1e-3)
    assert got["ingest"] is None and got["texture"] is None       # timer noise; a single measurement
    with pytest.raises(ValueError, match="3 times for 4 view counts"):
        growth_exponents(views, {"x": [1.0, 2.0, 3.0]})
    rows = [{"views": 48, "state": "done", "wall_seconds": 96.0, "stage_seconds": {"cameras": 20.0, "sfm_extra": 1.0}},
            {"views": 24, "state": "done", "wall_seconds": 48.0, "stage_seconds": {"cameras": 10.0}},
            {"views": 96, "state": "failed", "wall_seconds": 3.0, "stage_seconds": {"cameras": 40.0}}]
    body = summarise(rows)
    assert body["views"] == [24, 48, 96] and body["stage_seconds"]["sfm_extra"] == [None, 1.0, None]
    # a failed job's times are no job's times
    assert body["stage_seconds"]["job"] == [48.0, 96.0, None] and body["stage_seconds"]["cameras"][2] is None
    assert body["growth_exponents"]["cameras"] == pytest.approx(1.0) and body["growth_exponents"]["job"] == 1.0
    rows[0]["sfm"] = {"seconds": {"match": 2.0, "map": 4.0}}
    rows[1]["sfm"] = {"seconds": {"match": 1.0, "map": 1.0}}
    rows[1]["dense"] = {"seconds": {"fusion": 3.0, "note": "x"}}
    body = summarise(rows)
    assert body["step_seconds"] == {"cameras/match": [1.0, 2.0, None], "cameras/map": [1.0, 4.0, None],
                                    "geometry/fusion": [3.0, None, None]}
    assert body["step_growth_exponents"]["cameras/map"] == pytest.approx(2.0)


def test_the_host_probe_times_the_cpu_and_the_disk_it_is_given(tmp_path: Path) -> None:
    """bench/host_probe.py: one row, written where asked, that times the folder it was given."""
    from bench import host_probe

    assert host_probe.main(["--dir", str(tmp_path), "--tag", "probe", "--out", str(tmp_path / "out")]) == 0
    written = json.loads((tmp_path / "out" / "probe.json").read_text())
    assert written["card"]  # the GPU's name where there is one, else the CPU's
    row = written["results"][0]
    assert row["disk_dir"] == str(tmp_path) and row["write_mb_s"] > 0 and row["copy_48_photos_s"] > 0
    assert row["affinity"] >= 1 and row["parallel_efficiency"] > 0  # timings under load: no upper bound
    assert row["python_loop_s"] > 0 and row["zlib_4mb_one_thread_s"] > 0
    assert list(tmp_path.glob("hotmesh-probe-*")) == []  # its scratch files are gone


def test_result_files_name_the_card_by_its_model() -> None:
    """"NVIDIA H100 80GB HBM3" is an h100, not an hbm3: the scaling run's file was named after the memory type."""
    from bench.run_bench import card_token

    assert card_token("NVIDIA H100 80GB HBM3") == "h100"
    assert card_token("NVIDIA H200") == "h200"
    assert card_token("NVIDIA A100-SXM4-80GB") == "a100"
    assert card_token("Intel(R) Xeon(R) Platinum 8480C") == "8480c"


def test_pair_drift_measures_a_surface_moved_by_a_known_distance() -> None:
    """bench/pair_drift.py's distance to the truth: a sphere 1 % of the diagonal too big is 1 % from it, and the
    truth itself only as far as the spacing of the truth's samples (about 0.1 % for 200,000 on a sphere)."""
    import numpy as np
    import trimesh
    from scipy.spatial import cKDTree

    from bench.pair_drift import distances

    truth = trimesh.creation.icosphere(subdivisions=5, radius=1.0)
    diag = float(np.linalg.norm(truth.extents))
    tree = cKDTree(trimesh.sample.sample_surface(truth, 200_000, seed=1)[0])
    grown = trimesh.creation.icosphere(subdivisions=5, radius=1.0 + 0.01 * diag)
    med, p90 = distances(grown, tree, diag, n=20_000)
    assert abs(med - 1.0) < 0.02 and p90 >= med
    assert distances(truth, tree, diag, n=20_000)[0] < 0.15


def test_recall_by_height_pools_the_true_silhouettes_pixels_per_band() -> None:
    """Two views of a 10-row object whose rows are 0.0-0.9 of its height: masks missing the bottom row in both views
    and the row above it in one have recall 0 in the lowest 5 %, 1/2 in 5-15 % and 1 above."""
    import numpy as np

    from bench.true_masks import recall_by_height

    rows = np.repeat(np.linspace(0.0, 0.9, 10)[::-1, None], 4, axis=1).astype(np.float32)  # bottom row is 0.0
    heights = {"a": np.pad(rows, 1, constant_values=np.nan), "b": np.pad(rows, 1, constant_values=np.nan)}
    truth = ~np.isnan(heights["a"])
    a, b = truth.copy(), truth.copy()
    a[-2, :] = False  # the bottom row (height 0.0)
    b[-3:-1, :] = False  # the two bottom rows (0.0 and 0.1)
    got = recall_by_height([a, b], ["a", "b"], heights, bands=(0.0, 0.05, 0.15, 1.01))
    assert got == {"0.00-0.05": 0.0, "0.05-0.15": 0.5, "0.15-1.00": 1.0}
