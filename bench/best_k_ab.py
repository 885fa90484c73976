"""One depth map's seconds with the sources' best-k mean taken by ``topk`` (the code before commit cdc06d8) and by k
maxima (:func:`pipeline.geometry.ncc.best_k_mean_`, the code now), alternating, on the machine's GPU (or its CPU at
a small size), and whether the two give the same depth map. The set-up is :mod:`bench.sweep_profile`'s: blurred
noise on an arc of cameras, at a job's sizes.

    python -m bench.best_k_ab
"""
from __future__ import annotations

import time

import cv2
import numpy as np
import torch

import pipeline.geometry.mvs as mvs
from pipeline.geometry.mvs import MvsSettings, sweep_view
from pipeline.imaging.render import look_at


def main() -> int:
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    w, h, n = (960, 720, 8) if dev == "cuda" else (160, 120, 3)
    rng = np.random.default_rng(0)
    K = np.array([[0.95 * w, 0, w / 2], [0, 0.95 * w, h / 2], [0, 0, 1.0]])
    cams = [look_at(np.array([2 * np.cos(t), 2 * np.sin(t), 0.8]), np.zeros(3), np.array([0, 0, 1.0]))
            for t in np.linspace(0, 0.8, n + 1)]
    grays = [cv2.GaussianBlur(rng.random((h, w)).astype(np.float32), (0, 0), 1.5) for _ in cams]
    settings = MvsSettings(support_hypothesis=True)
    new = mvs.best_k_mean_
    ways = {"topk": lambda stack, k: stack.topk(k, dim=0).values.mean(0), "maxima": new}
    repeat = 5 if dev == "cuda" else 1
    seconds: dict[str, list[float]] = {}
    depth: dict[str, np.ndarray] = {}
    try:
        for name in ["topk", "maxima"] * 3:
            mvs.best_k_mean_ = ways[name]  # sweep_view looks the name up in its module at each call
            sweep_view(grays[0], grays[1:], K, cams[0], [K] * n, cams[1:], 1.2, 2.8, settings, dev,
                       support=(np.array([0, 0, 1.0]), -0.5))
            if dev == "cuda":
                torch.cuda.synchronize()
            t = time.monotonic()
            for _ in range(repeat):
                dm = sweep_view(grays[0], grays[1:], K, cams[0], [K] * n, cams[1:], 1.2, 2.8, settings, dev,
                                support=(np.array([0, 0, 1.0]), -0.5))
            if dev == "cuda":
                torch.cuda.synchronize()
            seconds.setdefault(name, []).append(round((time.monotonic() - t) / repeat, 4))
            depth[name] = dm[0]
    finally:
        mvs.best_k_mean_ = new
    print(seconds)
    diff = np.abs(depth["topk"] - depth["maxima"])
    print("same depths:", np.array_equal(depth["topk"], depth["maxima"], equal_nan=True), float(np.nanmax(diff)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
