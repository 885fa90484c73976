"""pipeline/ is layered by subject (docs/design.md): imports go one way, and the checker sees a wrong one."""
from __future__ import annotations

from pathlib import Path

from tests.conftest import REPO
from tools.layers import violations


def test_pipeline_imports_go_one_way() -> None:
    assert violations(REPO / "pipeline") == []


def test_the_checker_finds_an_upward_import(tmp_path: Path) -> None:
    (tmp_path / "geometry").mkdir()
    (tmp_path / "geometry" / "x.py").write_text("from pipeline.report.grade import build_checks\nimport daemon.cli\n")
    found = violations(tmp_path)
    assert any("geometry imports pipeline.report.grade" in v for v in found)
    assert any("pipeline imports daemon" in v for v in found)


def test_the_package_list_names_every_pipeline_folder() -> None:
    """pyproject.toml lists its packages explicitly: a new pipeline/ folder left out would be missing from a wheel."""
    import tomllib

    config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    folders = {".".join(p.relative_to(REPO).parts) for p in (REPO / "pipeline").rglob("*")
               if p.is_dir() and p.name != "__pycache__" and p.parent.name != "vendor"}
    assert set(config["packages"]) == folders | {"pipeline", "daemon", "pipeline.templates"}
    assert config["package-dir"] == {"pipeline.templates": "templates"}
    assert config["package-data"]["pipeline.vendor"] == ["model-viewer/*"]
