"""SfM mappers compared: hotmesh's SfM (``pipeline.cameras.sfm.run_sfm``) with each mapper on photo-like sets,
seconds per step and camera accuracy against the sets' true poses.

    python bench/sfm_mappers.py SET [SET ...] [--mappers incremental global] [--tag TAG] [--out DIR]

Each row: set, mapper, registered / images, reprojection error, seconds (extract, match, map), and the camera
centres' RMS distance from the true ones after a similarity fit, as a fraction of the cameras' spread
(:func:`bench.scoring.alignment`), with the cameras that fit names as misplaced. Rows are written as they finish.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.run_bench import card, poses_file, resolve_set  # noqa: E402
from bench.scoring import TrueCameras, alignment, read_nerf_cameras  # noqa: E402


def main() -> None:
    from pipeline.cameras.sfm import SfmSettings, run_sfm

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("sets", nargs="+")
    ap.add_argument("--mappers", nargs="+", default=["incremental", "global"])
    ap.add_argument("--tag", default=None)
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"{args.tag or 'sfm-mappers'}.json"
    rows: list[dict] = []
    log = logging.getLogger("sfm-mappers")
    for name in args.sets:
        folder = resolve_set(name)
        truth_path = poses_file(folder)
        if truth_path is None:
            raise SystemExit(f"{folder} has no <set>.poses.json beside it: nothing to compare the cameras with")
        truth = read_nerf_cameras(truth_path, folder / "images")
        names = sorted(p.name for p in (folder / "images").iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
        for mapper in args.mappers:
            row: dict = {"set": folder.name, "mapper": mapper}
            t0 = time.monotonic()
            try:
                with tempfile.TemporaryDirectory(prefix="hotmesh-sfm-") as tmp:
                    res = run_sfm(folder / "images", names, Path(tmp), SfmSettings(mapper=mapper), log)
                row["wall_seconds"] = round(time.monotonic() - t0, 2)
                pub = TrueCameras(res.names, res.K, res.w2c, tuple((res.width, res.height) for _ in res.names))
                al = alignment(pub, truth)
                row.update({k: res.stats[k] for k in ("registered", "images", "mean_reprojection_error_px",
                                                       "points", "device", "seconds")})
                row["centre_rms_of_spread"] = round(al.residual, 6)
                row["misplaced_cameras"] = list(al.misplaced)
            except Exception as e:  # one set's failure must not lose the others' rows
                row.update({"error": f"{type(e).__name__}: {e}", "wall_seconds": round(time.monotonic() - t0, 2)})
            rows.append(row)
            print(json.dumps(row), flush=True)
            path.write_text(json.dumps({"card": card(), "date": time.strftime("%Y-%m-%d"), "results": rows},
                                       indent=1))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
