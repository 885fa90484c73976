"""The photometric scores of the plane sweep: zero-mean normalised cross-correlation over square windows, and the
mean of each hypothesis's best source scores. Small pure functions on (B, C, H, W) tensors of any device."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def box_mean(x: torch.Tensor, window: int) -> torch.Tensor:
    """Mean over a ``window`` x ``window`` square around each pixel. x: (B, C, H, W) -> same shape; the border is
    averaged over the pixels that exist (count-normalised), so edges are not darkened.

    Separable: a mean along each row, then along each column. Both divide by the pixels that exist, and a row's count
    is the same down a column, so the result is the square's count-normalised mean, with 2 ``window`` reads a pixel
    instead of ``window`` squared (the sweep's NCC runs this three times per source and hypothesis)."""
    pad = window // 2
    x = F.avg_pool2d(x, (1, window), stride=1, padding=(0, pad), count_include_pad=False)
    return F.avg_pool2d(x, (window, 1), stride=1, padding=(pad, 0), count_include_pad=False)


def window_stats(img: torch.Tensor, window: int) -> tuple[torch.Tensor, torch.Tensor]:
    """img (B, 1, H, W) -> window mean and standard deviation, both (B, 1, H, W)."""
    m = box_mean(torch.cat([img, img * img], 1), window)
    mu = m[:, :1]
    var = (m[:, 1:] - mu * mu).clamp(min=0)
    return mu, var.sqrt()


def ncc(ref: torch.Tensor, ref_mu: torch.Tensor, ref_sd: torch.Tensor, src: torch.Tensor,
        window: int, eps: float = 1e-4) -> torch.Tensor:
    """Zero-mean normalised cross-correlation over square windows.

    ref: (1, 1, H, W); ref_mu, ref_sd: its window_stats; src: (B, 1, H, W) warped source images.
    Returns (B, H, W) in [-1, 1]."""
    # the three window means in one pass over a (B, 3, H, W) stack: one launch per filter direction, not three
    m = box_mean(torch.cat([src, src * src, ref * src], 1), window)
    mu_s = m[:, :1]
    var_s = (m[:, 1:2] - mu_s * mu_s).clamp(min=0)
    cov = m[:, 2:] - ref_mu * mu_s
    return (cov / (ref_sd * var_s.sqrt() + eps)).clamp(-1, 1)[:, 0]


def best_k_mean_(stack: torch.Tensor, k: int) -> torch.Tensor:
    """Mean of the ``k`` largest values along dim 0: (S, ...) float -> (...), as ``stack.topk(k, 0).values.mean(0)``;
    overwrites ``stack``. k maxima over the short first dimension, each one then masked out, instead of topk: on a
    GPU topk along the outer dimension sorts (54 % of one depth map's kernel time on an H200, its largest kernel;
    ``bench/sweep_profile.py``)."""
    if not 1 <= k <= stack.shape[0]:
        raise ValueError(f"best_k_mean_: k must be in 1..{stack.shape[0]}, got {k}")
    total = None
    for i in range(k):
        top, at = stack.max(0)
        total = top if total is None else total + top
        if i + 1 < k:
            stack.scatter_(0, at[None], float("-inf"))
    return total / k
