"""Mesh files for users: PLY and OBJ(+MTL) in the input's world frame, GLB turned to glTF's +Y up."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import trimesh

log = logging.getLogger(__name__)


def rotation_to_y_up(up: np.ndarray) -> np.ndarray:
    """(3,) world up -> (3, 3) rotation taking it to +Y (Rodrigues; 180 degrees about X for -Y)."""
    u = np.asarray(up, dtype=np.float64)
    u = u / np.linalg.norm(u)
    y = np.array([0.0, 1.0, 0.0])
    v = np.cross(u, y)
    c = float(u @ y)
    if np.linalg.norm(v) < 1e-9:
        return np.eye(3) if c > 0 else np.diag([1.0, -1.0, -1.0])
    vx = np.array([[0, -v[2], v[1]], [v[2], 0, -v[0]], [-v[1], v[0], 0]])
    return np.eye(3) + vx + vx @ vx * (1.0 / (1.0 + c))


def estimate_up(camera_ups: np.ndarray, snap_degrees: float = 25.0) -> np.ndarray:
    """World up from the cameras' up vectors (N, 3): people hold cameras upright. Snapped to the nearest
    world axis when within ``snap_degrees``, so synthetic +Z-up scenes get an exact rotation."""
    u = camera_ups.mean(axis=0)
    if np.linalg.norm(u) < 1e-6:
        return np.array([0.0, 0.0, 1.0])
    u /= np.linalg.norm(u)
    axes = np.vstack([np.eye(3), -np.eye(3)])
    best = axes[np.argmax(axes @ u)]
    if np.degrees(np.arccos(np.clip(best @ u, -1, 1))) <= snap_degrees:
        return best
    return u


def colored_mesh(mesh: trimesh.Trimesh, colors: np.ndarray) -> trimesh.Trimesh:
    """Copy of ``mesh`` with per-vertex colours (V, 3) float in [0, 1]."""
    rgba = np.concatenate([np.clip(colors, 0, 1) * 255, np.full((len(colors), 1), 255)], axis=1).astype(np.uint8)
    return trimesh.Trimesh(vertices=mesh.vertices.copy(), faces=mesh.faces.copy(), vertex_colors=rgba, process=False)


def _write_rows(fh: "Any", fmt: str, rows: np.ndarray) -> None:
    """Write ``rows`` (N, K) with the line format ``fmt`` (K fields, no newline): one string formatting over all
    rows, three to four times faster than ``np.savetxt``'s loop (2.3 s for a 120k-face textured OBJ's rows)."""
    rows = np.asarray(rows)
    if not len(rows):
        return
    flat = rows.ravel().tolist()
    chunk = 65536 * rows.shape[1]  # bounded strings for big meshes
    line = fmt + "\n"
    for i in range(0, len(flat), chunk):
        part = flat[i:i + chunk]
        fh.write((line * (len(part) // rows.shape[1])) % tuple(part))


def write_obj(mesh: trimesh.Trimesh, colors: np.ndarray, path: Path) -> None:
    """OBJ with per-vertex colours (the common 'v x y z r g b' extension) and a plain white material."""
    mtl = path.with_suffix(".mtl")
    mtl.write_text("# hotmesh\nnewmtl hotmesh\nKa 0 0 0\nKd 1 1 1\nKs 0 0 0\nd 1\nillum 1\n")
    v = np.hstack([mesh.vertices, np.clip(colors, 0, 1)])
    with open(path, "w") as fh:
        fh.write(f"# hotmesh\nmtllib {mtl.name}\no mesh\n")
        _write_rows(fh, "v %.6f %.6f %.6f %.4f %.4f %.4f", v)
        _write_rows(fh, "vn %.5f %.5f %.5f", mesh.vertex_normals)
        fh.write("usemtl hotmesh\ns 1\n")
        f = mesh.faces + 1
        _write_rows(fh, "f %d//%d %d//%d %d//%d", np.repeat(f, 2, axis=1))


def write_textured_obj(mesh: trimesh.Trimesh, uv: np.ndarray, path: Path, texture_name: str = "texture.png") -> None:
    """OBJ + MTL referring to ``texture_name`` (written by the caller). uv (V, 2), v = 0 at the image bottom."""
    mtl = path.with_suffix(".mtl")
    mtl.write_text(f"# hotmesh\nnewmtl hotmesh\nKa 1 1 1\nKd 1 1 1\nKs 0 0 0\nd 1\nillum 1\nmap_Kd {texture_name}\n")
    with open(path, "w") as fh:
        fh.write(f"# hotmesh\nmtllib {mtl.name}\no mesh\n")
        _write_rows(fh, "v %.6f %.6f %.6f", mesh.vertices)
        _write_rows(fh, "vt %.6f %.6f", uv)
        _write_rows(fh, "vn %.5f %.5f %.5f", mesh.vertex_normals)
        fh.write("usemtl hotmesh\ns 1\n")
        f = mesh.faces + 1
        _write_rows(fh, "f %d/%d/%d %d/%d/%d %d/%d/%d", np.repeat(f, 3, axis=1))


def textured_glb(mesh: trimesh.Trimesh, uv: np.ndarray, texture: "np.ndarray | Any", up: np.ndarray) -> bytes:
    """Binary glTF with the texture embedded as the base colour (matte: metallic 0, roughness 1), +Y up.
    ``texture``: (S, S, 3) uint8 (stored as PNG), or a PIL image opened from a JPEG (stored as that JPEG)."""
    from PIL import Image
    from trimesh.visual.material import PBRMaterial

    m = trimesh.Trimesh(vertices=mesh.vertices.copy(), faces=mesh.faces.copy(), process=False)
    m.visual = trimesh.visual.TextureVisuals(uv=uv, material=PBRMaterial(
        name="hotmesh", baseColorTexture=texture if isinstance(texture, Image.Image) else Image.fromarray(texture), metallicFactor=0.0, roughnessFactor=1.0,
        doubleSided=False))
    T = np.eye(4)
    T[:3, :3] = rotation_to_y_up(up)
    m.apply_transform(T)
    return m.export(file_type="glb", include_normals=True)


SEEN_ATTRIBUTE = "seen"  # mesh.ply vertex property: how many photos saw the vertex (pipeline.report.quality)


def read_seen(ply: Path) -> np.ndarray | None:
    """The per-vertex ``seen`` counts (V,) int stored in a mesh.ply, or None when it has none."""
    mesh = trimesh.load(ply, process=False, force="mesh")
    raw = (mesh.metadata.get("_ply_raw") or {}).get("vertex", {}).get("data")
    if raw is None or SEEN_ATTRIBUTE not in (raw.dtype.names or ()):
        return None
    return np.asarray(raw[SEEN_ATTRIBUTE]).reshape(-1).astype(np.int32)


def export_all(mesh: trimesh.Trimesh, colors: np.ndarray, up: np.ndarray, out_dir: Path,
               textured: tuple[trimesh.Trimesh, np.ndarray, np.ndarray] | None = None,
               seen: np.ndarray | None = None) -> dict[str, str]:
    """Write mesh.ply (full resolution, vertex colours), mesh.obj + mesh.mtl (world frame) and mesh.glb (+Y up).
    With ``textured`` = (decimated mesh, uv, texture uint8), OBJ and GLB carry the texture (texture.png).
    ``seen`` (V,) int: photos that saw each vertex, stored in mesh.ply only as the vertex property ``seen`` (the GLB
    stays plain glTF). Returns {kind: file name}."""
    cm = colored_mesh(mesh, colors)
    if seen is not None:
        if seen.shape != (len(mesh.vertices),):
            raise ValueError(f"seen must be ({len(mesh.vertices)},), got {seen.shape}")
        ply = cm.copy()
        ply.vertex_attributes[SEEN_ATTRIBUTE] = np.asarray(seen, dtype=np.int32)
        ply.export(out_dir / "mesh.ply")
    else:
        cm.export(out_dir / "mesh.ply")
    files = {"ply": "mesh.ply", "obj": "mesh.obj", "mtl": "mesh.mtl", "glb": "mesh.glb"}
    if textured is not None:
        low, uv, tex = textured
        from PIL import Image

        from concurrent.futures import ThreadPoolExecutor

        # texture.png on a thread while the GLB, which trimesh encodes as a PNG of its own, is made here: both are
        # zlib, which releases the GIL (0.7 s each for a 2048^2 texture on a CPU core). zlib's default level, not
        # optimize=True: that took 6 s for a 2048^2 texture on the device, for ~5 % size
        with ThreadPoolExecutor(1, thread_name_prefix="hotmesh-png") as pool:
            png = pool.submit(Image.fromarray(tex).save, out_dir / "texture.png")
            write_textured_obj(low, uv, out_dir / "mesh.obj")
            (out_dir / "mesh.glb").write_bytes(textured_glb(low, uv, tex, up))
            png.result()
        files["texture"] = "texture.png"
        return files
    write_obj(mesh, colors, out_dir / "mesh.obj")
    glb = cm.copy()
    T = np.eye(4)
    T[:3, :3] = rotation_to_y_up(up)
    glb.apply_transform(T)
    glb.export(out_dir / "mesh.glb")
    return files


def decimate_textured(mesh: trimesh.Trimesh, uv: np.ndarray, max_faces: int) -> tuple[trimesh.Trimesh, np.ndarray]:
    """The textured mesh with at most ``max_faces`` faces, its UVs kept valid: quadric edge collapse that weighs the
    texture coordinates (pymeshlab), chart borders kept so that no face spans two atlas charts. Returns the mesh and
    its per-vertex UVs (V', 2); the mesh itself when it is within the budget already."""
    if len(mesh.faces) <= max_faces:
        return mesh, uv
    import pymeshlab

    ms = pymeshlab.MeshSet()
    ms.add_mesh(pymeshlab.Mesh(vertex_matrix=np.asarray(mesh.vertices, dtype=np.float64),
                               face_matrix=np.asarray(mesh.faces, dtype=np.int32),
                               v_tex_coords_matrix=np.asarray(uv, dtype=np.float64)))
    if not hasattr(ms, "compute_texcoord_transfer_vertex_to_wedge"):
        # a minimal pymeshlab without its texture plugin (seen on a GPU machine): the web copy keeps every face
        # rather than failing the job
        log.warning("pymeshlab has no texture filters: mesh_web.glb keeps all %d faces", len(mesh.faces))
        return mesh, uv
    ms.compute_texcoord_transfer_vertex_to_wedge()
    ms.meshing_decimation_quadric_edge_collapse_with_texture(targetfacenum=int(max_faces), preserveboundary=True,
                                                            boundaryweight=1.0)
    m = ms.current_mesh()
    corner_vertex = m.face_matrix().reshape(-1)
    corner_uv = m.wedge_tex_coord_matrix().reshape(-1, 2)
    # glTF has one UV per vertex: split a vertex wherever its corners carry different UVs (atlas seams)
    key = np.column_stack([corner_vertex, np.round(corner_uv * 2**20)])
    _, first, inverse = np.unique(key, axis=0, return_index=True, return_inverse=True)
    vertices = m.vertex_matrix()[corner_vertex[first]]
    out = trimesh.Trimesh(vertices=vertices, faces=inverse.reshape(-1, 3), process=False)
    return out, corner_uv[first]


def _pad(b: bytes, fill: bytes = b"\0") -> bytes:
    return b + fill * (-len(b) % 4)


def quantized_glb(mesh: trimesh.Trimesh, uv: np.ndarray, jpeg: bytes, up: np.ndarray) -> bytes:
    """A textured GLB with KHR_mesh_quantization, +Y up: positions as 16-bit integers (a node scale and translation
    turn them back into the mesh's units), normals as 8-bit, texture coordinates as 16-bit, indices 16-bit where the
    vertex count allows, and the texture as the given JPEG. About half the bytes of float attributes, read by every
    current glTF viewer (three.js, model-viewer, Blender); uv (V, 2) with v = 0 at the image bottom."""
    import json as _json

    R = rotation_to_y_up(up)
    V = np.asarray(mesh.vertices, dtype=np.float64) @ R.T
    F = np.asarray(mesh.faces, dtype=np.int64)
    N = trimesh.Trimesh(V, F, process=False).vertex_normals
    lo, hi = V.min(axis=0), V.max(axis=0)
    centre = (lo + hi) / 2
    step = max(float((hi - lo).max()) / 2 / 32767, 1e-12)  # one uniform scale: normals stay right
    pos = np.zeros((len(V), 4), np.int16)  # padded to 8 bytes: vertex strides are multiples of 4
    pos[:, :3] = np.clip(np.round((V - centre) / step), -32767, 32767)
    nrm = np.zeros((len(V), 4), np.int8)
    nrm[:, :3] = np.clip(np.round(N * 127), -127, 127)
    tex = np.round(np.column_stack([uv[:, 0], 1.0 - uv[:, 1]]).clip(0, 1) * 65535).astype(np.uint16)
    small = len(V) < 65535
    idx = F.astype(np.uint16 if small else np.uint32).tobytes()
    views, blobs, offset = [], [], 0
    for data, stride, target in ((idx, None, 34963), (pos.tobytes(), 8, 34962), (nrm.tobytes(), 4, 34962),
                                 (tex.tobytes(), 4, 34962), (jpeg, None, None)):
        view: dict[str, Any] = {"buffer": 0, "byteOffset": offset, "byteLength": len(data)}
        if stride:
            view["byteStride"] = stride
        if target:
            view["target"] = target
        views.append(view)
        blobs.append(_pad(data))
        offset += len(blobs[-1])
    accessors = [
        {"bufferView": 0, "componentType": 5123 if small else 5125, "count": int(F.size), "type": "SCALAR"},
        {"bufferView": 1, "componentType": 5122, "count": len(V), "type": "VEC3",
         "min": pos[:, :3].min(axis=0).tolist(), "max": pos[:, :3].max(axis=0).tolist()},
        {"bufferView": 2, "componentType": 5120, "normalized": True, "count": len(V), "type": "VEC3"},
        {"bufferView": 3, "componentType": 5123, "normalized": True, "count": len(V), "type": "VEC2"},
    ]
    gltf = {
        "asset": {"version": "2.0", "generator": "hotmesh"},
        "extensionsUsed": ["KHR_mesh_quantization"], "extensionsRequired": ["KHR_mesh_quantization"],
        "scene": 0, "scenes": [{"nodes": [0]}],
        "nodes": [{"mesh": 0, "translation": centre.tolist(), "scale": [step] * 3}],
        "meshes": [{"primitives": [{"attributes": {"POSITION": 1, "NORMAL": 2, "TEXCOORD_0": 3}, "indices": 0,
                                    "material": 0}]}],
        "materials": [{"name": "hotmesh", "pbrMetallicRoughness": {"baseColorTexture": {"index": 0},
                                                                   "metallicFactor": 0.0, "roughnessFactor": 1.0}}],
        "textures": [{"sampler": 0, "source": 0}],
        "samplers": [{"magFilter": 9729, "minFilter": 9987, "wrapS": 33071, "wrapT": 33071}],
        "images": [{"bufferView": 4, "mimeType": "image/jpeg"}],
        "accessors": accessors, "bufferViews": views, "buffers": [{"byteLength": offset}],
    }
    js = _pad(_json.dumps(gltf, separators=(",", ":")).encode(), b" ")
    binary = b"".join(blobs)
    total = 12 + 8 + len(js) + 8 + len(binary)
    header = np.array([0x46546C67, 2, total], np.uint32).tobytes()
    return (header + np.array([len(js), 0x4E4F534A], np.uint32).tobytes() + js
            + np.array([len(binary), 0x004E4942], np.uint32).tobytes() + binary)


def web_glb(mesh: trimesh.Trimesh, uv: np.ndarray, texture: np.ndarray, up: np.ndarray, max_faces: int,
            texture_size: int) -> bytes:
    """mesh_web.glb: the textured mesh decimated to ``max_faces``, its texture at most ``texture_size`` px as JPEG,
    quantised (:func:`quantized_glb`), +Y up: a copy that loads quickly in a web page (the report's 3-D view)."""
    from PIL import Image
    import io

    low, low_uv = decimate_textured(mesh, uv, max_faces)
    im = Image.fromarray(texture)
    if max(im.size) > texture_size:
        im = im.resize((texture_size, texture_size), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    im.convert("RGB").save(buf, format="JPEG", quality=85)
    return quantized_glb(low, low_uv, buf.getvalue(), up)


def vertex_color_web_glb(mesh: trimesh.Trimesh, colors: np.ndarray, up: np.ndarray, max_faces: int) -> bytes:
    """mesh_web.glb of a job without a texture: the coloured mesh decimated to ``max_faces`` (colours taken from
    the nearest original vertex), +Y up."""
    low = mesh
    if len(mesh.faces) > max_faces:
        low = mesh.simplify_quadric_decimation(face_count=int(max_faces))
    if len(low.vertices) != len(mesh.vertices) or not np.allclose(low.vertices, mesh.vertices):
        from scipy.spatial import cKDTree

        _, idx = cKDTree(np.asarray(mesh.vertices)).query(np.asarray(low.vertices))
        colors = colors[idx]
    glb = colored_mesh(low, colors)
    T = np.eye(4)
    T[:3, :3] = rotation_to_y_up(up)
    glb.apply_transform(T)
    return glb.export(file_type="glb")
