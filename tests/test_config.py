from pathlib import Path

import pytest

from daemon.config import Settings, build_settings, load_settings


def test_defaults_and_layers(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text("[geometry]\nvoxel_resolution = 96\nmax_faces = 5000\n[intake]\nsettle_seconds = 2\n")
    env = {"HOTMESH_GEOMETRY_VOXEL_RESOLUTION": "80", "HOTMESH_JOBS_DEVICE": "cpu", "UNRELATED": "x"}
    s = load_settings(cfg, environ=env, cli={"intake": {"settle_seconds": "7.5"}})
    assert s.pipeline.geometry.voxel_resolution == 80  # env beats file
    assert s.pipeline.geometry.max_faces == 5000  # file beats default
    assert s.intake.settle_seconds == 7.5  # CLI beats everything, strings coerced
    assert s.jobs.device == "cpu"
    assert Settings().pipeline.geometry.voxel_resolution == 192


def test_unknown_keys_and_bad_values_are_precise() -> None:
    with pytest.raises(ValueError, match=r"\[geometry\]: unknown key\(s\) \['voxels'\]"):
        build_settings({"geometry": {"voxels": 3}})
    with pytest.raises(ValueError, match="unknown section"):
        build_settings({"geometri": {}})
    with pytest.raises(ValueError, match=r"geometry.voxel_resolution = 'many': input should be a valid integer"):
        build_settings({"geometry": {"voxel_resolution": "many"}})


def test_bad_toml_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[geometry\n")
    with pytest.raises(ValueError, match="not valid TOML"):
        load_settings(bad, environ={})
    with pytest.raises(ValueError, match="not found"):
        load_settings(tmp_path / "missing.toml", environ={})


def test_section_hash_changes_only_with_its_sections() -> None:
    a = Settings().pipeline
    b = build_settings({"report": {"render_size": 100}}).pipeline
    assert a.section_hash(("geometry",)) == b.section_hash(("geometry",))
    assert a.section_hash(("report",)) != b.section_hash(("report",))


@pytest.mark.parametrize("section,key,value,message", [
    ("jobs", "device", "gpu", "input should be 'auto', 'cpu' or 'cuda'"),
    ("geometry", "voxel_resolution", -5, "greater than or equal to 16"),
    ("masks", "auto", "sometimes", "input should be"),
    ("jobs", "max_attempts", 2.9, "fractional part"),
    ("sfm", "min_registered", 1.5, "less than or equal to 1"),
])
def test_invalid_values_name_the_key_and_what_is_allowed(section: str, key: str, value: object, message: str) -> None:
    with pytest.raises(ValueError) as err:
        build_settings({section: {key: value}})
    assert f"{section}.{key} = {value!r}" in str(err.value)
    assert message in str(err.value)


def test_strings_from_the_environment_are_coerced_exactly() -> None:
    s = load_settings(None, environ={"HOTMESH_JOBS_MAX_ATTEMPTS": "4", "HOTMESH_TEXTURE_FIT": "off"})
    assert s.jobs.max_attempts == 4 and s.pipeline.texture.fit is False
    with pytest.raises(ValueError, match="jobs.max_attempts"):
        load_settings(None, environ={"HOTMESH_JOBS_MAX_ATTEMPTS": "2.9"})


def test_the_pipeline_never_gets_the_daemon_sections() -> None:
    s = build_settings({"ops": {"webhook_secret": "canary-123"}})
    assert "ops" not in s.pipeline.to_dict()
    assert "canary-123" not in str(s.pipeline.to_dict())


def test_a_misspelt_section_in_the_environment_is_named() -> None:
    with pytest.raises(ValueError, match="HOTMESH_DENZE_RESOLUTION"):
        load_settings(None, environ={"HOTMESH_DENZE_RESOLUTION": "256"})
    # the variables that are not settings (folders, GPUs, the command hook's) are not errors
    s = load_settings(None, environ={"HOTMESH_INBOX": "/x", "HOTMESH_GPUS": "cpu", "HOTMESH_JOB_ID": "a",
                                     "HOTMESH_DENSE_RESOLUTION": "256"})
    assert s.pipeline.dense.resolution == 256


@pytest.mark.parametrize("variable,value,message", [
    ("HOTMESH_DENSE_RESOLUTION", "1e9", "dense.resolution"),
    ("HOTMESH_DENZE_RESOLUTION", "256", "HOTMESH_DENZE_RESOLUTION"),
])
@pytest.mark.parametrize("command", [["status"], ["ledger", "check"], ["clean", "--dry-run"]])
def test_every_subcommand_checks_the_environment(tmp_path: Path, variable: str, value: str, message: str,
                                                 command: list[str]) -> None:
    import os
    import subprocess
    import sys

    from tests.conftest import REPO

    env = {k: v for k, v in os.environ.items() if not k.startswith("HOTMESH_")}
    env.update({variable: value, "HOTMESH_STATE": str(tmp_path / "state")})
    r = subprocess.run([sys.executable, "-m", "daemon.cli", *command], cwd=str(REPO), env=env, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode != 0
    assert message in r.stderr and "Traceback" not in r.stderr


def test_every_hotmesh_variable_the_project_sets_is_accepted() -> None:
    """CI, the Makefile, the image and the device scripts set HOTMESH_* variables of their own: each must be a
    setting or a known non-setting, or every subcommand would refuse to start where they are set (CI sets
    HOTMESH_REQUIRE_TEST_DATA for the whole suite)."""
    import re

    from daemon.config import env_overrides
    from tests.conftest import REPO

    files = [REPO / ".ci" / "run", REPO / "Makefile", REPO / "Dockerfile", *REPO.glob("docker-compose*.yml"),
             *(REPO / "docker").glob("*"), *(REPO / "bench").glob("*.sh"), REPO / "tests" / "conftest.py"]
    names = {m for f in files if f.is_file() for m in re.findall(r"\bHOTMESH_[A-Z][A-Z0-9_]*[A-Z0-9]\b", f.read_text())}
    assert "HOTMESH_REQUIRE_TEST_DATA" in names
    for name in sorted(names):
        env_overrides({name: "1"})  # raises ConfigError naming it if it is neither
