"""Render benchmark image sets of procedural objects (bench/objects.py) and shared meshes with the shared renderers.

    python bench/make_sets.py OUT --kind scene --objects bottle armchair --meshes spot bob helmet armadillo \\
        --views 48 --width 960 --height 720 --seed 13 [--posed]
    python bench/make_sets.py OUT --kind masked --views 60 --res 512
    python bench/make_sets.py OUT --kind scene masked            # every procedural object, both kinds

Kinds (the tools are called by path from <data>/../tools, never copied):
  scene   render_scene.py: photo-like JPEG set, the object on a textured table in a textured room, close-ups cut by
          the border; OUT/<name>/images/IMG_XXXX.jpg, OUT/<name>/gt.ply, OUT/<name>/README.md and the true poses in
          OUT/<name>.poses.json (--posed also writes OUT/<name>/transforms.json).
  masked  render_set.py: clean RGBA turntable-sphere set; OUT/<name>/images/r_XXX.png, transforms.json, gt.ply.
A set is named <object>_<kind>. Procedural objects are built with --seed (colours) and exported with their face
colours to OUT/_meshes/<object>-s<seed>.ply (folders starting with "_" are never jobs), then rendered with --up z.
Every set is rendered with the same --seed: the room is scaled to each object, so sets differ by the object.
Sets that already exist are skipped unless --force (an interrupted set is rendered again; a folder that
OUT/sets.json does not list is never replaced without --force); OUT/sets.json lists every set (name, kind,
object, seed, views, size, tool command, seconds, MB, status).
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # run as a script: make the bench package importable
    sys.path.insert(0, str(REPO))

from bench.objects import OBJECTS, make

KINDS = ("scene", "masked")
DEFAULT_VIEWS = {"scene": 48, "masked": 60}


@dataclass(frozen=True)
class SharedMesh:
    """A ground-truth mesh of the shared data: path under <data>/meshes and the up axis of the file."""

    path: str
    up: str


# Up axes: glTF is +Y up; the OBJ meshes are +Y up too (spot_scene was rendered from cow.obj with render_scene's
# default --up y, mesh_to_world maps file +Y to world +Z; bob, armadillo and bunny stand on their feet the same way).
SHARED_MESHES: dict[str, SharedMesh] = {
    "spot": SharedMesh("spot_cow_pytorch3d/cow.obj", "y"),
    "bob": SharedMesh("bob_nvdiffrec/bob_tri.obj", "y"),
    "helmet": SharedMesh("damaged_helmet/DamagedHelmet.glb", "y"),
    "armadillo": SharedMesh("instant_ngp_sdf/armadillo.obj", "y"),
    "bunny": SharedMesh("instant_ngp_sdf/bunny.obj", "y"),
}


@dataclass(frozen=True)
class SetRecord:
    """One rendered set, as listed in OUT/sets.json."""

    name: str                 # folder under OUT
    kind: str                 # scene | masked
    object: str               # procedural object or shared mesh name
    source: str               # "procedural" or the shared mesh file
    mesh: str                 # the file the tool rendered
    up: str
    seed: int
    views: int
    size: tuple[int, int]     # width, height in pixels
    command: tuple[str, ...]  # the tool command line
    seconds: float
    megabytes: float          # images only
    status: str               # "rendering" while the tool runs, then "done"


def default_data() -> Path:
    """The shared data folder: $HOTMESH_TEST_DATA, else ../shared/data beside the repository."""
    return Path(os.environ.get("HOTMESH_TEST_DATA", REPO.parent / "shared" / "data")).resolve()


def set_name(obj: str, kind: str) -> str:
    return f"{obj}_{kind}"


def image_files(folder: Path) -> list[Path]:
    """Images of a set folder (images/*.jpg|png), sorted."""
    d = folder / "images"
    return sorted(p for p in d.iterdir() if p.suffix.lower() in (".jpg", ".png")) if d.is_dir() else []


def is_complete(out: Path, rec: dict) -> bool:
    """Whether the set ``rec`` (a sets.json entry) is fully on disk: its images, gt.ply and its pose file."""
    folder = out / rec["name"]
    if not (folder / "gt.ply").is_file() or len(image_files(folder)) != rec["views"]:
        return False
    if rec["kind"] == "scene":
        return (out / f"{rec['name']}.poses.json").is_file()
    return (folder / "transforms.json").is_file()


def load_manifest(out: Path) -> dict[str, dict]:
    """sets.json as {name: entry}; empty when there is none yet."""
    p = out / "sets.json"
    if not p.is_file():
        return {}
    return {e["name"]: e for e in json.loads(p.read_text())["sets"]}


def save_manifest(out: Path, entries: dict[str, dict]) -> None:
    """Write sets.json atomically (a rename), sets sorted by name."""
    tmp = out / "sets.json.tmp"
    tmp.write_text(json.dumps({"sets": [entries[k] for k in sorted(entries)]}, indent=1) + "\n")
    tmp.replace(out / "sets.json")


def tool_command(kind: str, tools: Path, mesh: Path, folder: Path, up: str, args: argparse.Namespace,
                 views: int) -> list[str]:
    """The render_scene.py / render_set.py command line for one set."""
    if kind == "scene":
        cmd = [sys.executable, str(tools / "render_scene.py"), str(mesh), str(folder), "--views", str(views),
               "--width", str(args.width), "--height", str(args.height), "--seed", str(args.seed), "--up", up]
        if args.posed:
            cmd.append("--posed")
        if args.workers:
            cmd += ["--workers", str(args.workers)]
        return cmd + shlex.split(args.scene_args)
    return [sys.executable, str(tools / "render_set.py"), str(mesh), str(folder), "--views", str(views),
            "--res", str(args.res), "--seed", str(args.seed), "--up", up] + shlex.split(args.masked_args)


def export_object(name: str, seed: int, edge_scale: float, meshes_out: Path) -> Path:
    """Build a procedural object and write it as a binary PLY with per-face colours; returns the file.

    Face colours survive the PLY round trip: render_set.py reads them as face colours, render_scene.py as vertex
    colours (trimesh averages the faces around each vertex; faces are ~1.5 px, so the blur is about one face)."""
    suffix = f"-e{edge_scale:g}" if edge_scale != 1.0 else ""
    path = meshes_out / f"{name}-s{seed}{suffix}.ply"
    if not path.is_file():
        meshes_out.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp.ply")
        make(name, seed=seed, edge_scale=edge_scale).export(tmp)
        tmp.replace(path)
    return path


def megabytes(folder: Path) -> float:
    return sum(p.stat().st_size for p in image_files(folder)) / 1e6


def render_one(kind: str, obj: str, out: Path, tools: Path, data: Path, args: argparse.Namespace,
               entries: dict[str, dict]) -> SetRecord | None:
    """Render one set unless it exists already (and not --force); returns its record, or None if skipped.

    A set folder counts as existing when sets.json lists it as done and its files are complete, or when sets.json
    does not list it at all (made by someone else: never deleted without --force). A folder that sets.json lists
    as still rendering (an interrupted run) or as done with files missing is rendered again. ``entries`` and
    sets.json are updated before the tool starts and after it ends."""
    name = set_name(obj, kind)
    views = args.views or DEFAULT_VIEWS[kind]
    folder = out / name
    old = entries.get(name)
    if not args.force and old is not None and old.get("status", "done") == "done" and is_complete(out, old):
        note = "" if old["views"] == views and old["seed"] == args.seed else \
            f" (exists with {old['views']} views, seed {old['seed']}: --force to re-render)"
        print(f"skip {folder}: complete{note}", flush=True)
        return None
    if not args.force and old is None and folder.exists():
        print(f"skip {folder}: exists but sets.json does not list it (not made here): --force to replace",
              flush=True)
        return None
    if folder.exists():  # interrupted, incomplete or forced: start clean so no stale image remains
        shutil.rmtree(folder)
    if obj in OBJECTS:
        mesh = export_object(obj, args.seed, args.edge_scale, out / "_meshes")
        up, source = "z", "procedural"
    else:
        shared = SHARED_MESHES[obj]
        mesh = data / "meshes" / shared.path
        if not mesh.is_file():
            raise FileNotFoundError(f"shared mesh {obj!r} missing: {mesh}")
        up, source = shared.up, shared.path
    cmd = tool_command(kind, tools, mesh, folder, up, args, views)
    size = (args.width, args.height) if kind == "scene" else (args.res, args.res)
    rec = SetRecord(name=name, kind=kind, object=obj, source=source, mesh=str(mesh), up=up, seed=args.seed,
                    views=views, size=size, command=tuple(cmd), seconds=0.0, megabytes=0.0, status="rendering")
    entries[name] = asdict(rec)
    save_manifest(out, entries)          # claims the folder: a rerun after an interruption renders it again
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True)  # failure reported below
    secs = time.perf_counter() - t0
    if proc.returncode != 0:
        tail = (proc.stdout + proc.stderr)[-3000:]
        raise RuntimeError(f"{Path(cmd[1]).name} failed for {name} (exit {proc.returncode}):\n{tail}")
    rec = replace(rec, seconds=round(secs, 1), megabytes=round(megabytes(folder), 2), status="done")
    if not is_complete(out, asdict(rec)):
        raise RuntimeError(f"{name}: the tool exited 0 but the set is incomplete in {folder}")
    entries[name] = asdict(rec)
    save_manifest(out, entries)
    return rec


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", type=Path, help="output folder (one subfolder per set, sets.json)")
    ap.add_argument("--kind", nargs="+", choices=KINDS, default=["scene"])
    ap.add_argument("--objects", nargs="*", default=None, metavar="NAME",
                    help=f"procedural objects (default: all of {', '.join(OBJECTS)})")
    ap.add_argument("--meshes", nargs="*", default=[], metavar="NAME",
                    help=f"shared meshes: {', '.join(SHARED_MESHES)} (default: none)")
    ap.add_argument("--views", type=int, default=None, help="views per set (default: scene 48, masked 60)")
    ap.add_argument("--width", type=int, default=960, help="scene image width")
    ap.add_argument("--height", type=int, default=720, help="scene image height")
    ap.add_argument("--res", type=int, default=512, help="masked image size (square)")
    ap.add_argument("--seed", type=int, default=13, help="render seed of every set, and the objects' colour seed")
    ap.add_argument("--posed", action="store_true", help="scene sets also get transforms.json (true poses)")
    ap.add_argument("--workers", type=int, default=0, help="render_scene.py worker processes (0: its default)")
    ap.add_argument("--edge-scale", type=float, default=1.0,
                    help="procedural mesh edge length factor (>1 coarser; for quick checks)")
    ap.add_argument("--scene-args", default="", metavar="ARGS",
                    help="extra render_scene.py arguments, one string (e.g. \"--close-frac 0.2 --texel 0.02\")")
    ap.add_argument("--masked-args", default="", metavar="ARGS",
                    help="extra render_set.py arguments, one string (e.g. \"--ss 1\")")
    ap.add_argument("--force", action="store_true", help="re-render sets that already exist")
    ap.add_argument("--data", type=Path, default=None, help="shared data folder (default $HOTMESH_TEST_DATA or "
                                                            "../shared/data)")
    ap.add_argument("--tools", type=Path, default=None, help="renderers' folder (default <data>/../tools)")
    args = ap.parse_args(argv)
    args.objects = list(OBJECTS) if args.objects is None else args.objects
    unknown = [o for o in args.objects if o not in OBJECTS] + [m for m in args.meshes if m not in SHARED_MESHES]
    if unknown:
        ap.error(f"unknown object(s) {', '.join(unknown)}; procedural: {', '.join(OBJECTS)}; "
                 f"shared meshes: {', '.join(SHARED_MESHES)}")
    if args.views is not None and args.views < 1:
        ap.error("--views must be >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    data = (args.data or default_data()).resolve()
    tools = (args.tools or data.parent / "tools").resolve()
    for tool in ("render_scene.py", "render_set.py"):
        if not (tools / tool).is_file():
            raise SystemExit(f"{tools / tool} is missing: pass --tools, or put the shared data at ../shared/data "
                             f"(or $HOTMESH_TEST_DATA) with its tools/ beside it")
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    entries = load_manifest(out)
    for kind in args.kind:
        for obj in [*args.objects, *args.meshes]:
            rec = render_one(kind, obj, out, tools, data, args, entries)
            if rec is not None:
                print(f"{out / rec.name}  {rec.views} views  {rec.seconds:.1f} s  {rec.megabytes:.1f} MB", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
