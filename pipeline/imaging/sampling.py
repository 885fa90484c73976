"""Bilinear image lookups shared by the renderer, the colour blend and the texture fit (no pipeline imports)."""
from __future__ import annotations

import numpy as np
import torch


def bilinear_weights(uv: torch.Tensor, height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Bilinear lookup as a sparse matrix: a sample at ``uv`` (M, 2) pixel coords (pixel centres at +0.5, clamped
    to the border) reads the row-major flat pixels ``idx`` (M, 4) long with weights ``w`` (M, 4), rows summing to 1.
    The texture fit (``pipeline.appearance.texture.fit_texture``) solves with this same matrix."""
    x = (uv[:, 0] - 0.5).clamp(0, width - 1)
    y = (uv[:, 1] - 0.5).clamp(0, height - 1)
    x0, y0 = x.floor().long(), y.floor().long()
    x1, y1 = (x0 + 1).clamp(max=width - 1), (y0 + 1).clamp(max=height - 1)
    wx, wy = x - x0, y - y0
    idx = torch.stack([y0 * width + x0, y0 * width + x1, y1 * width + x0, y1 * width + x1], 1)
    w = torch.stack([(1 - wx) * (1 - wy), wx * (1 - wy), (1 - wx) * wy, wx * wy], 1)
    return idx, w


def bilinear_t(img: torch.Tensor, uv: torch.Tensor) -> torch.Tensor:
    """Bilinear lookup: img (H, W, C) float, uv (M, 2) pixel coords (pixel centres at +0.5) -> (M, C), clamped
    to the border."""
    H, W = img.shape[:2]
    idx, w = bilinear_weights(uv, H, W)
    return (img.reshape(H * W, -1)[idx] * w[..., None].to(img.dtype)).sum(1)


def bilinear(img: np.ndarray, uv: np.ndarray) -> np.ndarray:
    """img (H, W, C) float, uv (M, 2) pixel coords (pixel centres at +0.5) -> (M, C). numpy front of
    :func:`bilinear_t`."""
    return bilinear_t(torch.from_numpy(np.asarray(img)), torch.from_numpy(np.asarray(uv))).numpy()


def sample_texture(texture: np.ndarray, uv: np.ndarray) -> np.ndarray:
    """Bilinear lookup. texture (S, S, C) float; uv (M, 2) in the v-up convention -> (M, C)."""
    H, W = texture.shape[:2]
    return bilinear(texture, np.stack([uv[:, 0] * W, (1.0 - uv[:, 1]) * H], 1))
