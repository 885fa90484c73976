from pathlib import Path

import pytest

from daemon.config import Settings, build_settings, load_settings


def test_defaults_and_layers(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text("[geometry]\nvoxel_resolution = 96\nmax_faces = 5000\n[intake]\nsettle_seconds = 2\n")
    env = {"HOTMESH_GEOMETRY_VOXEL_RESOLUTION": "80", "HOTMESH_JOBS_DEVICE": "cpu", "UNRELATED": "x"}
    s = load_settings(cfg, environ=env, cli={"intake": {"settle_seconds": "7.5"}})
    assert s.geometry.voxel_resolution == 80  # env beats file
    assert s.geometry.max_faces == 5000  # file beats default
    assert s.intake.settle_seconds == 7.5  # CLI beats everything, strings coerced
    assert s.jobs.device == "cpu"
    assert Settings().geometry.voxel_resolution == 192


def test_unknown_keys_and_bad_values_are_precise() -> None:
    with pytest.raises(ValueError, match=r"\[geometry\]: unknown key\(s\) \['voxels'\]"):
        build_settings({"geometry": {"voxels": 3}})
    with pytest.raises(ValueError, match="unknown section"):
        build_settings({"geometri": {}})
    with pytest.raises(ValueError, match="geometry.voxel_resolution: expected int"):
        build_settings({"geometry": {"voxel_resolution": "many"}})


def test_bad_toml_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[geometry\n")
    with pytest.raises(ValueError, match="not valid TOML"):
        load_settings(bad, environ={})
    with pytest.raises(ValueError, match="not found"):
        load_settings(tmp_path / "missing.toml", environ={})


def test_section_hash_changes_only_with_its_sections() -> None:
    a = Settings()
    b = build_settings({"report": {"render_size": 100}})
    assert a.section_hash(("geometry",)) == b.section_hash(("geometry",))
    assert a.section_hash(("report",)) != b.section_hash(("report",))
