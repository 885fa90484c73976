"""The texture atlas laid out while the refinement's last level runs.

xatlas's unwrap is CPU work (3.2 s of spot_scene's 10.5 s texture stage on the H200) that holds the GIL, and the
refinement's last level is GPU work (8.6 s) whose Python thread only queues kernels. The last level keeps its
mesh's connectivity (only vertices move), so the UV layout can be computed from where the level starts, in a
spawned child, and handed to the texture stage: charts and packing depend on the shape only through the choice
of seams, and a vertex moves by a fraction of a percent of the object in the last level, so the layout stays
valid (UVs are 2-D: no overlap can appear) and the bake uses the final positions.

The texture stage uses a layout only for the very mesh it textures (the same faces and vertex count after the
gates and the decimation) and the same atlas settings; otherwise it unwraps as before.
"""
from __future__ import annotations

import logging
import time
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from pipeline.children import start_child, stop_children

AHEAD_FILE = "atlas_ahead.npz"


@dataclass(frozen=True)
class AtlasKey:
    """What a layout depends on besides the mesh: texture side, gutter and pieces (``texture.unwrap``)."""

    size: int
    padding: int
    pieces: int


@dataclass(frozen=True)
class Layout:
    """vmap: (V',) int64 into the mesh's vertices; faces: (F, 3) int64 into vmap; uv: (V', 2) float32."""

    vmap: np.ndarray
    faces: np.ndarray
    uv: np.ndarray


def _load() -> bool:
    """In the child: import what unwrapping needs, so that the first layout does not pay for it."""
    import xatlas  # noqa: F401

    import pipeline.appearance.texture  # noqa: F401

    return True


def _unwrap(vertices: np.ndarray, faces: np.ndarray, key: AtlasKey) -> Layout:
    """In the child: :func:`pipeline.appearance.texture.unwrap` of the mesh (vertices (V, 3), faces (F, 3))."""
    import trimesh

    from pipeline.appearance.texture import unwrap

    mesh = trimesh.Trimesh(vertices, faces, process=False)
    vmap, f, uv = unwrap(mesh, key.size, key.padding, key.pieces)
    return Layout(vmap=vmap, faces=f, uv=uv)


class AtlasAhead:
    """A spawned child that unwraps one mesh while the caller works on. ``with AtlasAhead(key, log) as ahead:``
    starts the child; :meth:`submit` hands it the mesh; :meth:`save` waits for the layout and writes it."""

    def __init__(self, key_of: Callable[[int], AtlasKey], log: logging.Logger | logging.LoggerAdapter,
                 timeout: float = 60.0) -> None:
        """key_of: the atlas settings for a mesh of that many faces (the pieces follow the face count); timeout:
        the longest :meth:`save` waits for the layout (unwrapping in the job itself takes a few seconds)."""
        self.key_of, self.log, self.timeout = key_of, log, timeout
        self._key: AtlasKey | None = None
        self._faces: np.ndarray | None = None
        self._future: Future | None = None
        self._pool: ProcessPoolExecutor | None = start_child(_load)

    def __enter__(self) -> "AtlasAhead":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._pool is None:
            return
        if self._future is not None and not self._future.done():
            # a layout nobody will take (the stage failed, the mesh was refused, it was late): stop the child's
            # xatlas, which would otherwise hold the cores through the texture stage and the process's exit
            stop_children(self._pool)
        else:
            self._pool.shutdown(wait=False, cancel_futures=True)
        self._pool = None

    def submit(self, vertices: np.ndarray, faces: np.ndarray) -> None:
        """Unwrap this mesh (vertices (V, 3), faces (F, 3)) in the child; a later call replaces the mesh."""
        if self._pool is None:
            return
        self._faces = np.asarray(faces, dtype=np.int64).copy()
        self._key = self.key_of(len(self._faces))
        try:
            self._future = self._pool.submit(_unwrap, np.asarray(vertices, dtype=np.float64), self._faces, self._key)
        except Exception as e:  # noqa: BLE001 - a dead child (killed, failed to import): the texture stage unwraps
            self.log.warning("the texture atlas's child is gone (%s: %s); the texture stage unwraps",
                             type(e).__name__, e)
            self._future = None

    def save(self, mesh_faces: np.ndarray, n_vertices: int, path: Path,
             check: Callable[[], None] = lambda: None) -> str:
        """Wait for the layout and write it to ``path`` when it was made for this mesh (the same faces); returns
        what happened, for the log. ``check`` is called about once a second while waiting (a job's cancel check:
        it may raise)."""
        if self._future is None or self._faces is None or self._key is None:
            return "no mesh was handed over"
        if not np.array_equal(np.asarray(mesh_faces, dtype=np.int64), self._faces):
            return "the refined mesh's faces differ from the last level's"
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                layout: Layout = self._future.result(timeout=max(0.0, min(1.0, deadline - time.monotonic())))
                break
            except FutureTimeout:
                if time.monotonic() >= deadline:
                    return f"not ready within {self.timeout:.0f} s"
                check()
            except Exception as e:  # noqa: BLE001 - the texture stage then unwraps itself, as it would without this
                self.log.warning("the atlas laid out ahead failed (%s: %s); the texture stage unwraps",
                                 type(e).__name__, e)
                return f"failed: {type(e).__name__}"
        np.savez(path, mesh_faces=self._faces, n_vertices=np.int64(n_vertices), vmap=layout.vmap,
                 faces=layout.faces, uv=layout.uv, key=np.array([self._key.size, self._key.padding, self._key.pieces]))
        return "saved"


def load_layout(path: Path, faces: np.ndarray, n_vertices: int, key: AtlasKey) -> Layout | None:
    """The layout saved at ``path`` if it was made for this mesh (faces (F, 3), its vertex count) and these
    settings; None otherwise (no file, another mesh, other settings)."""
    if not path.exists():
        return None
    with np.load(path) as z:
        if (int(z["n_vertices"]) != n_vertices or list(z["key"]) != [key.size, key.padding, key.pieces]
                or not np.array_equal(z["mesh_faces"], np.asarray(faces, dtype=np.int64))):
            return None
        return Layout(vmap=z["vmap"].astype(np.int64), faces=z["faces"].astype(np.int64), uv=z["uv"].astype(np.float32))
