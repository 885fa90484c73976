"""The Dockerfile's dependency layer replayed as written, outside Docker: the requirements it installs parse, the
package list it relies on matches the source tree, and .dockerignore keeps what the image needs."""
from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

from packaging.requirements import Requirement

from tests.conftest import REPO

# what the image's COPY . and its entrypoint, template and package list rely on
IMAGE_NEEDS = ("pyproject.toml", "pipeline", "pipeline/vendor/model-viewer", "daemon", "templates",
               "templates/report.html.j2", "docker", "docker/entrypoint.sh")


def dockerfile_lines() -> list[str]:
    """The Dockerfile's instructions, continuation lines joined, comments dropped."""
    text = (REPO / "Dockerfile").read_text()
    joined = re.sub(r"\\\n", " ", "\n".join(ln for ln in text.splitlines() if not ln.lstrip().startswith("#")))
    return [ln.strip() for ln in joined.splitlines() if ln.strip()]


def requirements_step() -> tuple[list[str], str]:
    """The files the dependency layer copies before it installs, and its ``python3 -c`` snippet."""
    lines = dockerfile_lines()
    run = next((ln for ln in lines if ln.startswith("RUN") and "import tomllib" in ln), None)
    if run is None:
        raise AssertionError("the Dockerfile has no RUN python3 -c \"import tomllib ...\" requirements step")
    copies = [ln for ln in lines[:lines.index(run)] if ln.startswith("COPY ")]
    copied = [part for ln in copies for part in ln.split()[1:-1] if not part.startswith("--")]
    m = re.search(r'python3 -c "(.*?)"\s*>', run)
    if m is None:
        raise AssertionError(f"cannot read the python snippet of: {run}")
    return copied, m.group(1)


def test_the_requirements_step_runs_as_written_and_every_line_parses(tmp_path: Path) -> None:
    copied, snippet = requirements_step()
    assert copied == ["pyproject.toml"], f"the dependency layer copies {copied}: only pyproject.toml keeps it cached"
    shutil.copy2(REPO / "pyproject.toml", tmp_path / "pyproject.toml")
    # the shell passes the snippet to python with its escapes as written ('\n' inside the Python string)
    r = subprocess.run([sys.executable, "-c", snippet], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    lines = [ln for ln in r.stdout.splitlines() if ln.strip()]
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert len(lines) == len(project["dependencies"]) + len(project["optional-dependencies"]["gpu"]) + len(
        project["optional-dependencies"]["ray"])
    for line in lines:
        Requirement(line)  # raises InvalidRequirement naming the line


def listed_packages() -> tuple[list[str], dict[str, str]]:
    tool = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    return list(tool["packages"]), dict(tool.get("package-dir", {}))


def test_the_package_list_matches_the_tree() -> None:
    packages, mapped = listed_packages()
    for pkg in packages:
        folder = REPO / mapped.get(pkg, pkg.replace(".", "/"))
        assert folder.is_dir(), f"pyproject.toml lists {pkg} but {folder} does not exist"
        if pkg not in mapped:
            assert (folder / "__init__.py").is_file(), f"{pkg}: {folder}/__init__.py is missing"
    # and the converse: every source folder of the two packages is listed, or a wheel/image would lack it
    for root in ("daemon", "pipeline"):
        for init in (REPO / root).rglob("*.py"):
            rel = init.parent.relative_to(REPO)
            if "vendor" in rel.parts or "__pycache__" in rel.parts:
                continue
            assert ".".join(rel.parts) in packages, f"{rel} has Python files but is not in pyproject.toml's packages"


def dockerignore_excludes(path: str, patterns: list[str]) -> bool:
    """Whether Docker leaves ``path`` (relative to the context) out: the last matching pattern wins, a pattern
    also excludes everything under what it matches, ``**`` crosses folders, ``*`` does not."""
    excluded = False
    parts = path.split("/")
    prefixes = ["/".join(parts[:k]) for k in range(1, len(parts) + 1)]
    for raw in patterns:
        negate = raw.startswith("!")
        pat = raw[1:] if negate else raw
        pat = pat.strip().strip("/")
        rx = re.escape(pat).replace(r"\*\*/", "(?:.*/)?").replace(r"\*\*", ".*").replace(r"\*", "[^/]*").replace(
            r"\?", "[^/]")
        if any(re.fullmatch(rx, p) for p in prefixes):
            excluded = not negate
    return excluded


def test_dockerignore_keeps_what_the_image_needs() -> None:
    patterns = [ln.strip() for ln in (REPO / ".dockerignore").read_text().splitlines()
                if ln.strip() and not ln.lstrip().startswith("#")]
    assert dockerignore_excludes("node_modules", patterns) and dockerignore_excludes("pipeline/x/__pycache__/a.pyc",
                                                                                     patterns)  # the matcher works
    left_out = [p for p in IMAGE_NEEDS if dockerignore_excludes(p, patterns)]
    for src in ("pipeline", "daemon"):
        left_out += [str(f.relative_to(REPO)) for f in (REPO / src).rglob("*.py")
                     if dockerignore_excludes(str(f.relative_to(REPO)), patterns)]
    assert not left_out, f".dockerignore leaves out what the image needs: {left_out}"
