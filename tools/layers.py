"""Check that pipeline/'s subpackages import one way (docs/design.md, "Layers"): python3 -m tools.layers"""
from __future__ import annotations

import ast
import sys
from pathlib import Path

# lowest first: a subpackage may import only those before it (and the base modules context, settings, children)
ORDER = ("io", "cameras", "imaging", "geometry", "appearance", "report", "stages")
BASE = {"context", "settings", "stage_names", "children", "__init__"}


def violations(root: Path) -> list[str]:
    """'src -> dst (file)' for every import of a higher layer, of the runner, or of daemon/."""
    out = []
    for f in sorted(root.rglob("*.py")):
        rel = f.relative_to(root).parts
        src = rel[0] if len(rel) > 1 else None
        for node in ast.walk(ast.parse(f.read_text())):
            names = ([node.module] if isinstance(node, ast.ImportFrom) and node.module else
                     [a.name for a in node.names] if isinstance(node, ast.Import) else [])
            for m in names:
                p = m.split(".")
                if p[0] == "daemon":
                    out.append(f"{f}: pipeline imports daemon ({m})")
                if p[0] != "pipeline" or len(p) < 2 or src is None:
                    continue
                dst = p[1]
                if dst in BASE or dst == src:
                    continue
                if dst not in ORDER or ORDER.index(dst) > ORDER.index(src):
                    out.append(f"{f}: {src} imports {m}")
    return out


if __name__ == "__main__":
    bad = violations(Path(__file__).resolve().parent.parent / "pipeline")
    print("\n".join(bad) or "pipeline layers: ok")
    sys.exit(1 if bad else 0)
