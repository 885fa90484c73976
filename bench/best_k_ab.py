"""One depth map's seconds with the sources' best-k mean taken by ``topk`` (the code before commit cdc06d8) and by k
maxima (:func:`pipeline.geometry.ncc.best_k_mean_`, the code now), alternating, on the machine's GPU (or its CPU at
a small size), and whether the two give the same depth map. The set-up is :mod:`bench.sweep_profile`'s: blurred
noise on an arc of cameras, at a job's sizes.

    python -m bench.best_k_ab
"""
from __future__ import annotations

import time

import numpy as np
import torch

import pipeline.geometry.mvs as mvs
from bench.sweep_profile import synthetic_sweep


def main() -> int:
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    sweep = synthetic_sweep(*((960, 720, 8) if dev == "cuda" else (160, 120, 3)))
    new = mvs.best_k_mean_
    ways = {"topk": lambda stack, k: stack.topk(k, dim=0).values.mean(0), "maxima": new}
    repeat = 5 if dev == "cuda" else 1
    seconds: dict[str, list[float]] = {}
    depth: dict[str, np.ndarray] = {}
    try:
        for name in ["topk", "maxima"] * 3:
            mvs.best_k_mean_ = ways[name]  # sweep_view looks the name up in its module at each call
            sweep(dev)
            if dev == "cuda":
                torch.cuda.synchronize()
            t = time.monotonic()
            for _ in range(repeat):
                dm = sweep(dev)
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
