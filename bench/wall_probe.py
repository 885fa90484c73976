"""The GPU test's wall capture (a table, a wall right behind the object, close-ups) as one job with a settings
variant, and what its refinement did with the remesh: for finding which setting makes the level remesh fall back
to subdivision. Each call renders its own capture, so several can run at once on one device.

    bash bench/device.sh python3 bench/wall_probe.py lam19 '{"refine": {"estimated_smoothness": 19}}'
    bash bench/device.sh python3 bench/wall_probe.py close1 '{"dense": {"close_size": 0.0026}}'

Prints one JSON line: the job's state, the refine summary's remesh note, lambda and faces, the fused surface's
handles and the F-score against the capture's ground truth. Where ``$OUT`` is set, every mesh whose isotropic remesh
was refused is saved there (``wall-NAME-refused-K.npz``: vertices, faces, target_faces, reason), so that the refusal
can be replayed on the CPU with the GPU's own level mesh. The variant name ``norepair`` also turns off the repair of
folded decimations (it has no setting).
"""
from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def _watch_refusals(name: str) -> None:
    """Save each refused remesh's input into $OUT (the refine stage imports the function at call time)."""
    import os

    import numpy as np

    from pipeline.geometry import meshing

    out = os.environ.get("OUT")
    if not out:
        return
    inner = meshing.isotropic_remesh_or_reason
    count = [0]

    def watched(vertices: np.ndarray, faces: np.ndarray, target_faces: int,
                iterations: int = 4) -> tuple[np.ndarray, np.ndarray] | str:
        result = inner(vertices, faces, target_faces, iterations)
        if isinstance(result, str):
            count[0] += 1
            np.savez_compressed(Path(out) / f"wall-{name}-refused-{count[0]}.npz", vertices=np.asarray(vertices),
                                faces=np.asarray(faces), target_faces=target_faces, iterations=iterations,
                                reason=result)
        return result

    meshing.isotropic_remesh_or_reason = watched


def _without_decimation_repair() -> None:
    """Keep a fast decimation only where it is closed with its input's topology as it stands (no fold repair)."""
    import trimesh

    from pipeline.geometry import meshing

    def unrepaired(fast: trimesh.Trimesh, topology: tuple[int, int]) -> trimesh.Trimesh | None:
        fast = meshing.main_components(fast)
        ok = meshing.is_closed_manifold(fast) and meshing.handle_count(fast) == tuple(topology)
        return fast if ok else None

    meshing.repaired_decimation = unrepaired


def main(argv: list[str] | None = None) -> int:
    import torch

    from daemon.config import build_settings
    from daemon.intake import fingerprint, snapshot
    from daemon.ledger import Ledger
    from daemon.worker import Paths, execute
    from tests.scenes import SceneSpec, render_scene

    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    name, extra = args[0], json.loads(args[1])
    _watch_refusals(name)
    if name == "norepair":
        _without_decimation_repair()
    cfg: dict = {"report": {"gt_samples": 50_000}}
    for section, values in extra.items():
        cfg.setdefault(section, {}).update(values)
    with tempfile.TemporaryDirectory(prefix=f"wall-{name}-") as tmp:
        scene = render_scene(Path(tmp) / "inbox" / "wall", SceneSpec(size=(320, 240)))
        paths = Paths(scene.parent, Path(tmp) / "outbox", Path(tmp) / "state")
        ledger = Ledger(paths.ledger)
        ledger.create_job("wall", fingerprint(snapshot(scene)))
        job = ledger.claim_next("probe")
        if job is None:
            raise RuntimeError("the probe's fresh ledger has no job to claim")
        device = "cuda" if torch.cuda.is_available() else "cpu"
        state = execute(ledger, paths, job, build_settings(cfg), device)
        stats_file = paths.outbox / "wall" / "stats.json"
        st = json.loads(stats_file.read_text()) if stats_file.exists() else {}
    refine, dense = st.get("refine", {}), st.get("geometry", {}).get("dense") or {}
    print(json.dumps({"variant": name, "device": device, "state": state, "remesh": refine.get("remesh"),
                      "smoothness": refine.get("smoothness"), "faces": refine.get("faces"),
                      "fused_handles": dense.get("handles"),
                      "fscore": st.get("quality", {}).get("gt", {}).get("fscore")}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
