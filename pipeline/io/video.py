"""Frames from a video clip for structure from motion: sharp ones, spread over the whole clip (PyAV).

A phone video walked around an object holds hundreds of frames, most blurred by motion and all near duplicates of
their neighbours. The clip is split into ``count`` equal parts and from each the frame with the highest variance
of the Laplacian (a standard focus measure: blur removes high frequencies) is kept, so the chosen frames are both
sharp and well spread along the camera's path.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import cv2
import numpy as np

VIDEO_SUFFIXES = {".mp4", ".mov", ".m4v", ".avi", ".mkv", ".webm"}
SCORE_SIDE = 480  # long side the focus measure is computed at: fast, and blur shows just as well


class VideoUnreadable(Exception):
    """The file cannot be opened or decoded as a video; the message says why, for the list of skipped files."""


@dataclass(frozen=True)
class SampledFrame:
    """One chosen frame: ``rgb`` (H, W, 3) uint8, upright (the clip's rotation applied)."""

    index: int  # position among the decoded frames, 0-based
    time_s: float
    sharpness: float  # variance of the Laplacian at SCORE_SIDE
    rgb: np.ndarray


@dataclass(frozen=True)
class VideoSample:
    duration_s: float
    fps: float
    decoded: int  # frames decoded (and scored)
    rotation: int  # degrees counter-clockwise applied to make the frames upright
    frames: tuple[SampledFrame, ...]


def sharpness(gray: np.ndarray) -> float:
    """Variance of the Laplacian of a (H, W) uint8 image: high for sharp, low for blurred or flat frames."""
    return float(cv2.Laplacian(gray, cv2.CV_64F).var())


def segment_of(index: int, total: int, count: int) -> int:
    """Which of ``count`` equal parts of ``total`` frames frame ``index`` falls in (0 .. count-1)."""
    return min(count - 1, index * count // max(1, total))


def pick_sharp_spread(scores: np.ndarray, count: int) -> list[int]:
    """Indices of the sharpest frame in each of ``count`` equal parts of ``scores`` (N,), in order. Fewer parts
    than frames: every frame. Pure; the streaming sampler below makes the same choice without keeping frames."""
    n = len(scores)
    if n <= count:
        return list(range(n))
    best: dict[int, int] = {}
    for i in range(n):
        s = segment_of(i, n, count)
        if s not in best or scores[i] > scores[best[s]]:
            best[s] = i
    return [best[s] for s in sorted(best)]


def upright(rgb: np.ndarray, rotation: int) -> np.ndarray:
    """Apply a display rotation (degrees counter-clockwise, multiple of 90) to a (H, W, C) frame."""
    k = int(round(rotation / 90.0)) % 4
    return np.ascontiguousarray(np.rot90(rgb, k=k)) if k else rgb


def _frame_count(path: Path) -> int:
    """Frames of the first video stream: from the header, else by counting packets (no decoding)."""
    import av

    with av.open(str(path)) as c:
        stream = c.streams.video[0]
        if stream.frames:
            return int(stream.frames)
        return sum(1 for p in c.demux(stream) if p.size)


def sample_video(path: Path, count: int, check: Callable[[float], None] = lambda f: None) -> VideoSample:
    """Decode ``path`` once and keep the sharpest frame of each of ``count`` equal parts of the clip.

    ``check(fraction)`` is called as decoding advances (progress, cancel). Raises :class:`VideoUnreadable`."""
    import av  # PyAV: only needed when a job has a video

    try:
        total = _frame_count(path)
        container = av.open(str(path))
    except (av.error.FFmpegError, OSError, IndexError) as e:
        raise VideoUnreadable(f"cannot be opened as a video ({e})") from None
    best: dict[int, SampledFrame] = {}
    decoded, rotation = 0, 0
    with container:
        if not container.streams.video:
            raise VideoUnreadable("has no video stream")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        fps = float(stream.average_rate or 0.0)
        duration = float(stream.duration * stream.time_base) if stream.duration else (
            container.duration / 1e6 if container.duration else 0.0)
        try:
            for frame in container.decode(stream):
                seg = segment_of(decoded, total, count)
                s = SCORE_SIDE / max(frame.width, frame.height)
                small = frame.reformat(width=max(2, round(frame.width * s) // 2 * 2),
                                       height=max(2, round(frame.height * s) // 2 * 2), format="gray")
                score = sharpness(small.to_ndarray())
                if seg not in best or score > best[seg].sharpness:
                    rotation = int(getattr(frame, "rotation", 0) or 0)
                    rgb = upright(frame.to_ndarray(format="rgb24"), rotation)
                    best[seg] = SampledFrame(index=decoded, time_s=float(frame.time or 0.0), sharpness=score, rgb=rgb)
                decoded += 1
                if decoded % 16 == 0:
                    check(min(1.0, decoded / max(1, total)))
        except av.error.FFmpegError as e:
            if not best:
                raise VideoUnreadable(f"cannot be decoded ({e})") from None
            # a clip cut short (interrupted copy): the frames decoded so far are still good views
    if not best:
        raise VideoUnreadable("contains no decodable frames")
    return VideoSample(duration_s=duration, fps=fps, decoded=decoded, rotation=rotation,
                       frames=tuple(best[k] for k in sorted(best)))
