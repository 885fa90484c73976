"""Real-world scale from printed markers or a known distance, on synthetic scenes of known size."""
from __future__ import annotations

import json
import logging
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from pipeline.context import InputError, JobContext, JobLogAdapter
from pipeline.imaging.render import look_at
from pipeline.cameras.scale import (DistanceSpec, MarkerSpec, ScaleFileError, distance_scale, marker_scale,
                            parse_scale_spec)
from pipeline.geometry.scene import ObjectRegion, Similarity
from pipeline.settings import build_pipeline_settings
from pipeline.stages.cameras import CamerasStage
from pipeline.stages.ingest import IngestStage
from pipeline.stages.scaling import to_metres

BOARD_PX = 800  # the textured plane: BOARD_PX pixels span BOARD_UNITS scene units
BOARD_UNITS = 1.0
MARKER_PX = 160  # four markers of this many board pixels: 0.2 scene units
K = np.array([[520.0, 0, 320], [0, 520.0, 240], [0, 0, 1]])
SIZE = (640, 480)


def _board() -> np.ndarray:
    """(BOARD_PX, BOARD_PX) uint8: white card with four DICT_4X4_50 markers (ids 0-3) and some grey texture."""
    rng = np.random.default_rng(1)
    board = np.full((BOARD_PX, BOARD_PX), 255, np.uint8)
    noise = cv2.resize(rng.integers(150, 255, (20, 20), dtype=np.uint8), (BOARD_PX, BOARD_PX))
    board[:] = noise
    d = cv2.aruco.getPredefinedDictionary(cv2.aruco.DICT_4X4_50)
    for mid, (r, c) in enumerate(((100, 100), (100, 540), (540, 100), (540, 540))):
        board[r - 30:r + MARKER_PX + 30, c - 30:c + MARKER_PX + 30] = 255  # quiet zone
        board[r:r + MARKER_PX, c:c + MARKER_PX] = cv2.aruco.generateImageMarker(d, mid, MARKER_PX)
    return board


def _cameras(n: int = 8) -> np.ndarray:
    """(n, 4, 4) w2c on a ring 1.6 units from the board centre, 55 degrees above it (board in z = 0)."""
    out = []
    for k in range(n):
        a = 2 * np.pi * k / n
        eye = 1.6 * np.array([np.cos(a) * np.cos(0.96), np.sin(a) * np.cos(0.96), np.sin(0.96)])
        out.append(look_at(eye, np.zeros(3), np.array([0, 0, 1.0])))
    return np.array(out)


def _render(board: np.ndarray, w2c: np.ndarray) -> np.ndarray:
    """The board on the plane z = 0 (board pixel (u, v) at x = u / BOARD_PX - 0.5, y = 0.5 - v / BOARD_PX) as
    seen by a pinhole camera K, w2c: (H, W, 3) uint8, by one homography."""
    s = BOARD_UNITS / BOARD_PX
    A = np.array([[s, 0, -0.5 * BOARD_UNITS], [0, -s, 0.5 * BOARD_UNITS], [0, 0, 1]])
    H = K @ np.column_stack([w2c[:3, 0], w2c[:3, 1], w2c[:3, 3]]) @ A
    img = cv2.warpPerspective(board, H, SIZE, flags=cv2.INTER_AREA, borderValue=90)
    return cv2.cvtColor(img, cv2.COLOR_GRAY2RGB)


def test_markers_of_known_size_give_metres_per_unit() -> None:
    w2c = _cameras()
    views = [_render(_board(), T) for T in w2c]
    marker_m = 0.04  # printed at 4 cm: 0.2 scene units -> 0.2 m per unit
    res = marker_scale(views, np.repeat(K[None], len(views), 0), w2c, MarkerSpec(marker_m, "DICT_4X4_50"))
    expected = marker_m / (MARKER_PX * BOARD_UNITS / BOARD_PX)
    assert res.metres_per_unit == pytest.approx(expected, rel=0.01), res
    assert res.uncertainty is not None and res.uncertainty < 0.01 and res.samples >= 4 * 6
    assert "4 DICT_4X4_50 marker(s) of 40 mm" in res.detail
    # the same scene in other units (everything 10x larger): the answer follows
    big = w2c.copy()
    big[:, :3, 3] *= 10
    res10 = marker_scale(views, np.repeat(K[None], len(views), 0), big, MarkerSpec(marker_m, "DICT_4X4_50"))
    assert res10.metres_per_unit == pytest.approx(expected / 10, rel=0.01)
    # only some ids, a wrong dictionary, a marker in one view only
    some = marker_scale(views, np.repeat(K[None], 8, 0), w2c, MarkerSpec(marker_m, "DICT_4X4_50", (2,)))
    assert some.metres_per_unit == pytest.approx(expected, rel=0.01) and "(id 2)" in some.detail
    none = marker_scale(views, np.repeat(K[None], 8, 0), w2c, MarkerSpec(marker_m, "DICT_6X6_250"))
    assert none.metres_per_unit is None and "no DICT_6X6_250 marker was found" in none.detail
    once = marker_scale(views[:1], K[None], w2c[:1], MarkerSpec(marker_m, "DICT_4X4_50"))
    assert once.metres_per_unit is None and "seen in only one photo" in once.detail


def test_known_distance_between_two_points() -> None:
    w2c = _cameras(4)
    Ks = np.repeat(K[None], 4, 0)
    A, B = np.array([0.1, -0.2, 0.05]), np.array([-0.15, 0.2, 0.0])  # 0.4743 units apart

    def project(X: np.ndarray, views: list[int]) -> np.ndarray:
        cam = w2c[views, :3, :3] @ X + w2c[views, :3, 3]
        return (cam @ K.T)[:, :2] / cam[:, 2:3]

    res = distance_scale(Ks, w2c, project(A, [0, 1]), project(B, [1, 2, 3]), [0, 1], [1, 2, 3], distance_m=0.30)
    assert res.metres_per_unit == pytest.approx(0.30 / np.linalg.norm(A - B), rel=1e-6)
    assert 0 < res.uncertainty < 0.02  # one pixel of clicking error at this distance
    same_place = distance_scale(Ks, w2c[[0, 0, 0, 0]], project(A, [0, 0]), project(B, [0, 0]), [0, 1], [2, 3], 0.3)
    assert same_place.metres_per_unit is None and "nearly the same position" in same_place.detail


def test_scale_json_problems_are_listed_together() -> None:
    with pytest.raises(ScaleFileError) as e:
        parse_scale_spec({"marker_size_m": -1, "dictionary": "DICT_9X9", "marker_ids": ["a"], "colour": 1})
    msg = str(e.value)
    assert "4 problem(s)" in msg and "'marker_size_m' must be a positive" in msg and "DICT_4X4_50" in msg
    assert "'marker_ids' must be" in msg and "unknown key(s) ['colour']" in msg and isinstance(e.value, InputError)
    with pytest.raises(ScaleFileError, match="'a' must list the point in at least two photos"):
        parse_scale_spec({"distance_m": 0.3, "a": [["x.jpg", 1, 2]], "b": [["x.jpg", 1, 2], ["y.jpg", 3, 4]]})
    with pytest.raises(ScaleFileError, match="needs either marker_size_m"):
        parse_scale_spec({"size": 3})
    spec = parse_scale_spec({"distance_m": 0.3, "a": [["x.jpg", 1, 2], ["y.jpg", 3, 4]],
                             "b": [["x.jpg", 5, 6], ["y.jpg", 7, 8.5]]})
    assert isinstance(spec, DistanceSpec) and spec.b[1].y == 8.5
    assert parse_scale_spec({"marker_size_m": 0.05}) == MarkerSpec(0.05, "DICT_4X4_50", None)


def test_to_metres_keeps_every_projection() -> None:
    """Rescaling hotmesh's own frame to metres moves cameras and points together: images do not change."""
    rng = np.random.default_rng(3)
    w2c = _cameras(3)
    sim = Similarity(2.5, np.eye(3), np.array([0.1, 0.2, 0.3]))
    region = ObjectRegion(center=np.zeros(3), radius=0.5, up=np.array([0, 0, 1.0]),
                          ground=(np.array([0, 0, 1.0]), -0.2), object_points=np.ones(1, bool))
    X = rng.normal(size=(5, 3)) * 0.2
    sim_m, region_m, w2c_m = to_metres(sim, region, w2c, 0.04)
    assert region_m.radius == pytest.approx(0.02) and region_m.ground[1] == pytest.approx(-0.008)
    Xm = Similarity(0.04, np.eye(3), np.zeros(3)).points(X)
    for T, Tm in zip(w2c, w2c_m):
        p, pm = (X @ T[:3, :3].T + T[:3, 3]), (Xm @ Tm[:3, :3].T + Tm[:3, 3])
        assert pm[:, :2] / pm[:, 2:] == pytest.approx(p[:, :2] / p[:, 2:])
    assert sim_m.points(X) == pytest.approx(0.04 * sim.points(X))


def test_cameras_stage_reports_the_units_of_a_posed_job(tmp_path: Path) -> None:
    """A posed job (transforms.json) with scale.json: the user's frame is kept and the report gets its unit."""
    job = tmp_path / "job"
    (job / "images").mkdir(parents=True)
    w2c = _cameras(8)
    board = _board()
    frames = []
    gl = np.diag([1.0, -1.0, -1.0, 1.0])
    for k, T in enumerate(w2c):
        rgb = _render(board, T)
        rgba = np.dstack([rgb, np.full(rgb.shape[:2], 255, np.uint8)])
        Image.fromarray(rgba).save(job / "images" / f"{k}.png")
        frames.append({"file_path": f"images/{k}.png", "transform_matrix": (np.linalg.inv(T) @ gl).tolist()})
    (job / "transforms.json").write_text(json.dumps({"fl_x": K[0, 0], "fl_y": K[1, 1], "cx": K[0, 2], "cy": K[1, 2],
                                                     "w": SIZE[0], "h": SIZE[1], "frames": frames}))
    (job / "scale.json").write_text(json.dumps({"marker_size_m": 0.04, "dictionary": "DICT_4X4_50"}))
    ctx = JobContext(job_id="j", input_dir=job, work_dir=tmp_path / "work",
                     settings=build_pipeline_settings({"limits": {"min_images": 4}, "images": {"holdout_every": 0}}),
                     device="cpu", log=JobLogAdapter(logging.getLogger("hotmesh.test"), {"job_id": "j"}))
    for stage in (IngestStage(), CamerasStage()):
        out = ctx.work_dir / "stages" / stage.name
        out.mkdir(parents=True)
        summary = stage.run(ctx, out)
    scale = summary["scale"]
    assert scale["metres_per_unit"] == pytest.approx(0.2, rel=0.01) and not scale["applied"]
    assert scale["units"].startswith("scene units (1 unit = 0.2") and scale["method"] == "markers"
    with np.load(ctx.work_dir / "stages" / "cameras" / "views.npz") as z:
        assert np.allclose(z["w2c"], w2c, atol=1e-9)  # the user's frame is not rescaled
