"""Seconds per stage against the number of photos: one procedural object rendered at several view counts, each set
run alone (unposed, default settings) and scored, so that a stage that grows faster than linearly shows.

    python bench/scaling.py --object stool --views 24 48 96 200 --sets /tmp/scaling [--tools DIR] [--tag TAG]
    python bench/scaling.py --plot bench/results/scaling-h200.json docs/images/scaling-h200.png

Sets are rendered with bench/make_sets.py (``--tools``: the folder holding render_scene.py, default
../shared/tools) into ``--sets``/views-N; a set already there is reused, so a run cut short by a time limit goes
on where it stopped when started again with the same ``--sets`` and ``--out``, and rows already in the result file
are kept. The result file holds one row per view count (a run_bench row) and, per stage, the growth exponent: the
slope of log(seconds) against log(photos) over all counts (1 is linear; ``growth_exponents``).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

STAGES = ("ingest", "cameras", "masks", "geometry", "refine", "texture", "report")
MIN_SECONDS = 0.5  # stages that never take longer are timer noise: no slope, not plotted


def growth_exponents(views: list[int], seconds: dict[str, list[float | None]],
                     min_seconds: float = MIN_SECONDS) -> dict[str, float | None]:
    """Per stage, the least-squares slope of log(seconds) against log(views): 1 for a stage that grows linearly,
    2 for quadratic. views: (K,) photo counts; seconds[stage]: (K,) seconds or None where not measured. A stage
    with fewer than two counts measured, or whose largest time is under ``min_seconds`` (timer noise dominates),
    gets None."""
    if any(v <= 0 for v in views):
        raise ValueError(f"views must be positive, got {views}")
    out: dict[str, float | None] = {}
    for stage, secs in seconds.items():
        if len(secs) != len(views):
            raise ValueError(f"stage {stage!r}: {len(secs)} times for {len(views)} view counts")
        pts = np.array([(v, s) for v, s in zip(views, secs) if s is not None and s > 0], dtype=float).reshape(-1, 2)
        if len(np.unique(pts[:, 0])) < 2 or pts[:, 1].max() < min_seconds:
            out[stage] = None
            continue
        out[stage] = round(float(np.polyfit(np.log(pts[:, 0]), np.log(pts[:, 1]), 1)[0]), 3)
    return out


def summarise(rows: list[dict]) -> dict:
    """The result file's body from run_bench rows with ``views``: rows sorted by views, stage seconds per view
    count and the growth exponents of every stage and of the whole job."""
    rows = sorted(rows, key=lambda r: r["views"])
    views = [r["views"] for r in rows]
    done = [r if r.get("state") == "done" else {} for r in rows]  # a failed job's times are no job's times
    # the stages in the order the jobs ran them (the known ones first, so that plots keep their colours)
    names = list(dict.fromkeys([*STAGES, *(k for r in done for k in (r.get("stage_seconds") or {}))]))
    seconds: dict[str, list[float | None]] = {
        s: [(r.get("stage_seconds") or {}).get(s) for r in done] for s in names}
    seconds["job"] = [r.get("wall_seconds") for r in done]
    # the steps inside SfM and the dense geometry, where a super-linear part hides inside a stage's total
    steps = [step_seconds(r) for r in done]
    names = list(dict.fromkeys(k for st in steps for k in st))
    inner = {k: [st.get(k) for st in steps] for k in names}
    return {"views": views, "stage_seconds": seconds, "growth_exponents": growth_exponents(views, seconds),
            "step_seconds": inner, "step_growth_exponents": growth_exponents(views, inner), "results": rows}


def step_seconds(row: dict) -> dict[str, float]:
    """A run_bench row's inner timings as {"cameras/match": s, "geometry/fusion": s, ...} (SfM's and the dense
    path's own steps; empty for a failed job)."""
    out: dict[str, float] = {}
    for prefix, part in (("cameras", (row.get("sfm") or {}).get("seconds")),
                         ("geometry", (row.get("dense") or {}).get("seconds"))):
        for k, v in (part or {}).items():
            if isinstance(v, (int, float)):
                out[f"{prefix}/{k}"] = float(v)
    return out


def plot(result: Path, out: Path) -> None:
    """Seconds per stage against photos, log-log, with a line of slope 1 for reference."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = json.loads(result.read_text())
    views, secs, slopes = data["views"], data["stage_seconds"], data["growth_exponents"]
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=110)
    for stage in secs:
        pts = [(v, s) for v, s in zip(views, secs.get(stage, [])) if s]
        if not pts or max(s for _, s in pts) < MIN_SECONDS:
            continue
        k = slopes.get(stage)
        ax.plot(*zip(*pts), marker="o", lw=2.5 if stage == "job" else 1.5,
                label=f"{stage} (slope {k:.2f})" if k is not None else stage)
    if views and secs.get("job") and secs["job"][0]:
        v0, s0 = views[0], secs["job"][0]
        ax.plot([v0, views[-1]], [s0, s0 * views[-1] / v0], ls=":", c="grey", label="linear from the first job")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set_xticks(views, [str(v) for v in views])
    ax.set_xlabel("photos")
    ax.set_ylabel("seconds")
    ax.set_title(f"{data.get('object', '')} on {data.get('card', '')}: seconds per stage")
    ax.legend(fontsize=7, loc="upper left")
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--object", default="stool", help="procedural object (bench/objects.py)")
    ap.add_argument("--views", type=int, nargs="+", default=[24, 48, 96, 200])
    ap.add_argument("--width", type=int, default=960)
    ap.add_argument("--height", type=int, default=720)
    ap.add_argument("--sets", type=Path, default=Path("/tmp/hotmesh-scaling"), help="where the sets are rendered")
    ap.add_argument("--tools", type=Path, default=None, help="folder with render_scene.py (default ../shared/tools)")
    ap.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    ap.add_argument("--samples", type=int, default=1_000_000)
    ap.add_argument("--tag", default=None)
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    ap.add_argument("--plot", nargs=2, type=Path, metavar=("RESULT", "PNG"), help="only draw RESULT's plot")
    args = ap.parse_args(argv)
    if args.plot:
        plot(*args.plot)
        return 0
    from bench import make_sets
    from bench.run_bench import card, card_token, run_job

    device = args.device
    if device == "auto":
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    tag = args.tag or f"scaling-{card_token(card()) if device == 'cuda' else 'cpu'}"
    args.out.mkdir(parents=True, exist_ok=True)
    result = args.out / f"{tag}.json"
    rows = {r["views"]: r for r in json.loads(result.read_text())["results"]} if result.is_file() else {}

    def save() -> None:
        body = {"card": card(), "date": time.strftime("%Y-%m-%d"), "object": args.object,
                "size": [args.width, args.height], **summarise(list(rows.values()))}
        result.write_text(json.dumps(body, indent=1))

    for n in args.views:
        if rows.get(n, {}).get("state") == "done":
            print(f"views {n}: measured already", flush=True)
            continue
        folder = args.sets / f"views-{n}"
        make = [str(folder), "--kind", "scene", "--objects", args.object, "--views", str(n),
                "--width", str(args.width), "--height", str(args.height)]
        t0 = time.monotonic()
        make_sets.main(make + (["--tools", str(args.tools)] if args.tools else []))
        render = round(time.monotonic() - t0, 1)
        row = run_job(folder / f"{args.object}_scene", False, {}, device, args.samples, None, "default")
        row.update({"views": n, "render_seconds": render})
        rows[n] = row
        save()
        print(json.dumps({k: row.get(k) for k in ("views", "state", "wall_seconds", "stage_seconds",
                                                   "fscore@0.2%", "error")}), flush=True)
    save()
    print(f"wrote {result}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
