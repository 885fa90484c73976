import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.cameras.cameras import (c2w_gl_to_w2c_cv, camera_centers, intrinsics_for_image, read_colmap, read_pose_source,
                              read_transforms)
from pipeline.context import InputError
from tests.conftest import SAMPLE, data


def _rotation_from_quat(q: np.ndarray) -> np.ndarray:
    w, x, y, z = q
    return np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
                     [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
                     [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)]])


def _quat_from_rotation(R: np.ndarray) -> np.ndarray:
    w = np.sqrt(max(1e-12, 1 + R[0, 0] + R[1, 1] + R[2, 2])) / 2
    return np.array([w, (R[2, 1] - R[1, 2]) / (4 * w), (R[0, 2] - R[2, 0]) / (4 * w), (R[1, 0] - R[0, 1]) / (4 * w)])


def test_gl_to_cv_projects_a_point_in_front() -> None:
    # camera at +5 on the z axis looking down -Z (OpenGL) at the origin
    c2w = np.eye(4)
    c2w[2, 3] = 5.0
    w2c = c2w_gl_to_w2c_cv(c2w)
    p = w2c[:3, :3] @ np.array([0.0, 1.0, 0.0]) + w2c[:3, 3]
    assert p[2] == pytest.approx(5.0)  # in front of the camera
    assert p[1] < 0  # world up is image up (-Y in OpenCV)
    assert np.allclose(camera_centers(w2c[None]), [[0, 0, 5]])


def test_lego_transforms() -> None:
    src = read_transforms(data("lego") / "transforms_train.json")
    assert len(src.frames) == 100 and not src.missing
    f = src.frames[0]
    assert f.name == "train/r_0.png"
    K = intrinsics_for_image(f, 800, 800)
    assert K[0, 0] == pytest.approx(0.5 * 800 / np.tan(0.5 * 0.6911112070083618))
    # every lego camera looks at (about) the origin
    w2c = np.stack([fr.w2c for fr in src.frames])
    fwd = w2c[:, 2, :3]
    c = camera_centers(w2c)
    cos = np.einsum("ij,ij->i", fwd, -c / np.linalg.norm(c, axis=1, keepdims=True))
    assert cos.min() > 0.99


def test_fox_missing_frames_and_distortion() -> None:
    src = read_pose_source(data("fox"))
    assert src is not None and src.kind == "transforms"
    assert len(src.frames) == 50 and len(src.missing) == 17
    assert src.frames[0].dist[:2] == pytest.approx((0.0578421, -0.0805099))
    K = intrinsics_for_image(src.frames[0], 540, 960)  # a half-size copy keeps the same camera
    assert K[0, 0] == pytest.approx(1375.52 / 2) and K[0, 2] == pytest.approx(554.558 / 2)
    with pytest.raises(InputError, match="different aspect ratio"):
        intrinsics_for_image(src.frames[0], 1000, 1000)


def test_malformed_transforms(tmp_path: Path) -> None:
    (tmp_path / "transforms.json").write_text("{not json")
    with pytest.raises(InputError, match="not valid JSON"):
        read_pose_source(tmp_path)
    (tmp_path / "transforms.json").write_text(json.dumps({"frames": [{"file_path": "a.png", "transform_matrix": [[1, 0], [0, 1]]}], "camera_angle_x": 0.5}))
    with pytest.raises(InputError, match="not an invertible 4x4"):
        read_pose_source(tmp_path)
    (tmp_path / "transforms.json").write_text(json.dumps({"frames": []}))
    with pytest.raises(InputError, match="no 'frames' list"):
        read_pose_source(tmp_path)


def test_colmap_text_model_matches_transforms(tmp_path: Path) -> None:
    """Write the bundled sample's poses as a COLMAP text model; reading it back must give the same cameras."""
    src = read_transforms(SAMPLE / "transforms.json")
    side = Image.open(SAMPLE / src.frames[0].name).width
    model = tmp_path / "sparse" / "0"
    model.mkdir(parents=True)
    (tmp_path / "images").mkdir()
    K = intrinsics_for_image(src.frames[0], side, side)
    (model / "cameras.txt").write_text(f"1 PINHOLE {side} {side} {K[0, 0]} {K[1, 1]} {K[0, 2]} {K[1, 2]}\n")
    lines = []
    for i, fr in enumerate(src.frames[:5]):
        q = _quat_from_rotation(fr.w2c[:3, :3])
        t = fr.w2c[:3, 3]
        name = Path(fr.name).name
        (tmp_path / "images" / name).write_bytes((SAMPLE / fr.name).read_bytes())
        lines.append(f"{i + 1} {' '.join(map(str, q))} {' '.join(map(str, t))} 1 {name}\n\n")
    (model / "images.txt").write_text("".join(lines))
    (model / "points3D.txt").write_text("")
    col = read_colmap(model, tmp_path)
    assert len(col.frames) == 5
    for a, b in zip(col.frames, src.frames[:5]):
        assert np.allclose(a.w2c, b.w2c, atol=1e-6)
        assert np.allclose(intrinsics_for_image(a, side, side), K)
    assert np.allclose(_rotation_from_quat(_quat_from_rotation(src.frames[0].w2c[:3, :3])), src.frames[0].w2c[:3, :3])
