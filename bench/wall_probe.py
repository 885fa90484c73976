"""The GPU test's wall capture (a table, a wall right behind the object, close-ups) as one job with a settings
variant, and what its refinement did with the remesh: for finding which setting makes the level remesh fall back
to subdivision. Each call renders its own capture, so several can run at once on one device.

    bash bench/device.sh python3 bench/wall_probe.py lam19 '{"refine": {"estimated_smoothness": 19}}'
    bash bench/device.sh python3 bench/wall_probe.py close1 '{"dense": {"close_size": 0.0026}}'

Prints one JSON line: the job's state, the refine summary's remesh note, lambda and faces, the fused surface's
handles and the F-score against the capture's ground truth.
"""
from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


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
