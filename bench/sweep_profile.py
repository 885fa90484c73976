"""Where one depth map's time goes: :func:`pipeline.geometry.mvs.sweep_view` on synthetic grey images, timed per view
and profiled per kernel with torch's profiler (the CUDA kernels on a GPU).

    python -m bench.sweep_profile [--device cuda] [--size 960x720] [--sources 8] [--repeat 5] [--top 25]

The images are blurred noise and the cameras an arc around the origin: the scores mean nothing, but every step of a
job's sweep runs at a job's sizes (160 + 32 hypotheses on images reduced 2x, two surface-following rounds at full
size, the support plane as one more hypothesis). A view that takes far longer than its kernels' sum is bound by the
host's launches, not by the card.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def synthetic_sweep(width: int, height: int, sources: int) -> Callable[[str], tuple[np.ndarray, np.ndarray]]:
    """One reference view and ``sources`` neighbours of blurred grey noise on an arc around the origin, at a job's
    sweep settings with the table plane as a hypothesis: a function that computes the reference's depth map on a
    device ("cuda" or "cpu") -> :func:`pipeline.geometry.mvs.sweep_view`'s (depth, score)."""
    import cv2

    from pipeline.geometry.mvs import MvsSettings, sweep_view
    from pipeline.imaging.render import look_at

    rng = np.random.default_rng(0)
    K = np.array([[0.95 * width, 0, width / 2], [0, 0.95 * width, height / 2], [0, 0, 1.0]])
    cams = [look_at(np.array([2 * np.cos(t), 2 * np.sin(t), 0.8]), np.zeros(3), np.array([0, 0, 1.0]))
            for t in np.linspace(0, 0.8, sources + 1)]
    grays = [cv2.GaussianBlur(rng.random((height, width)).astype(np.float32), (0, 0), 1.5) for _ in cams]
    settings = MvsSettings(support_hypothesis=True)
    support = (np.array([0, 0, 1.0]), -0.5)

    def one(device: str) -> tuple[np.ndarray, np.ndarray]:
        return sweep_view(grays[0], grays[1:], K, cams[0], [K] * sources, cams[1:], 1.2, 2.8, settings, device,
                          support=support)

    return one


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--size", default="960x720", help="WxH of the depth maps")
    ap.add_argument("--sources", type=int, default=8)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--top", type=int, default=25)
    a = ap.parse_args(argv)
    W, H = (int(x) for x in a.size.split("x"))
    sweep = synthetic_sweep(W, H, a.sources)

    def sync() -> None:
        if a.device == "cuda":
            torch.cuda.synchronize()

    def one() -> None:
        sweep(a.device)

    one()
    sync()
    t = time.monotonic()
    for _ in range(a.repeat):
        one()
    sync()
    print(f"{a.device}, {W}x{H}, {a.sources} sources: {(time.monotonic() - t) / a.repeat:.3f} s per view")
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if a.device == "cuda" else [])
    with profile(activities=acts) as prof:
        one()
        sync()
    key = "cuda_time_total" if a.device == "cuda" else "cpu_time_total"
    print(prof.key_averages().table(sort_by=key, row_limit=a.top))


if __name__ == "__main__":
    main()
