"""The benchmark: real jobs on data sets with a ground truth, scored, as JSON.

    python bench/run_bench.py --sets SET [SET ...] [--posed] [--variant NAME:section.key=value,...] [--tag TAG]
                              [--out bench/results] [--samples 1000000] [--parallel 1] [--device auto]
                              [--gpu-memory-gb GB] [--keep DIR]

A SET is a folder with ``gt.ply`` and images: a photo-like set (``images/`` and ``<set>.poses.json`` beside it, as
``../shared/tools/render_scene.py`` writes them), a masked set (RGBA ``images`` + ``transforms.json``), or a name of
``../shared/data``. Each set runs as a daemon job would (ledger, stages, publish) on a fresh state folder, in a process
that first loads the pipeline as a daemon's worker does when it starts (:func:`pipeline.warmup.preload`; its seconds
are the ``worker_start_seconds`` of the first row a process ran), so ``wall_seconds`` is a job's time in a running
daemon:
- photo-like sets run unposed (images only: SfM, no masks); with ``--posed`` the true poses are given as
  ``transforms.json`` (still no masks);
- sets with their own ``transforms.json`` run as they are (posed; masked when their images have alpha).
Scoring (:mod:`bench.scoring`): unposed jobs are aligned to the true poses by their published cameras
(``transforms.json`` in the outbox); the mesh is compared with ``gt.ply`` on its observable part (F-score at 1, 0.5
and 0.2 % of the GT diagonal, Chamfer-L1 relative to it). Variants (``--variant``) rerun every set with settings
changed; with ``--share-upstream`` a set's variants run one after another on one job, each later one rerunning only
the stages its settings change (cheap refinement or texture variants, compared on the same cameras and geometry).
Results: ``<out>/<tag>.json`` = {"card", "date", "results": [one row per set and variant]}, rewritten after every
set; every row is also appended to ``<out>/<tag>.rows.jsonl`` as it is scored (removed at the end), so that a run
cut short keeps what it measured.
"""
from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import re
import shutil
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

DATA = Path(os.environ.get("HOTMESH_TEST_DATA", REPO.parent / "shared" / "data"))


def card_token(name: str) -> str:
    """A result file's card tag: the model token of a GPU's name ("NVIDIA H100 80GB HBM3" -> "h100", "NVIDIA H200"
    -> "h200"), else the name's last word, lower case (the same rule as bench/device.sh's CARD)."""
    m = re.search(r"\b[A-Z]+\d{2,4}\b", name)
    return (m.group(0) if m else (name.split() or ["cpu"])[-1]).lower()


def card() -> str:
    """The GPU's name, else the CPU's, for result files."""
    try:
        import torch

        if torch.cuda.is_available():
            return torch.cuda.get_device_name(0)
    except ImportError:
        pass
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"CPU: {cpu} x{os.cpu_count()}"


def error_map(mesh: Path, gt: Path, out: Path) -> str:
    """Draw where ``mesh`` (in the GT's frame) is wrong with the shared tool (../shared/tools/error_map.py, which
    needs matplotlib: ``pip install -e '.[bench]'``). -> the picture's name, or why it was not drawn."""
    import subprocess

    tool = DATA.parent / "tools" / "error_map.py"
    if not tool.is_file():
        return f"not drawn: {tool} is missing"
    r = subprocess.run([sys.executable, str(tool), str(mesh), str(gt), str(out)], capture_output=True, text=True,
                       timeout=600)
    if r.returncode != 0 or not out.is_file():
        return f"not drawn: {(r.stderr.strip().splitlines() or ['error_map.py failed'])[-1]}"
    return out.name


def resolve_set(name: str) -> Path:
    p = Path(name)
    if p.is_dir():
        return p.resolve()
    if (DATA / name).is_dir():
        return (DATA / name).resolve()
    raise SystemExit(f"run_bench: no set {name!r} (neither a folder nor in {DATA})")


def poses_file(folder: Path) -> Path | None:
    p = folder.parent / (folder.name + ".poses.json")
    return p if p.exists() else None


def prepare_input(folder: Path, posed: bool, inbox: Path) -> tuple[Path, bool]:
    """The job folder for ``folder`` in ``inbox``: everything but the ground truth (scored here, not by the job).
    A photo-like set runs unposed, or with its true poses as transforms.json when ``posed``; a set that carries its
    own poses (masked renders, lego) runs as it is. Returns the folder and whether the job is posed."""
    dst = inbox / folder.name
    shutil.rmtree(dst, ignore_errors=True)
    shutil.copytree(folder, dst, ignore=shutil.ignore_patterns("gt.*", "README*"))
    truth = poses_file(folder)
    if truth is None:
        own = any((dst / n).exists() for n in ("transforms.json", "transforms_train.json", "sparse"))
        if posed and not own:
            raise SystemExit(f"run_bench: --posed needs {folder.name}.poses.json or the set's own poses")
        return dst, own
    (dst / "transforms.json").unlink(missing_ok=True)  # render_scene --posed writes one; unposed means none
    if posed:
        shutil.copy2(truth, dst / "transforms.json")
    return dst, posed


def keep_state(job_state: Path, dest: Path) -> None:
    """The job's cameras and geometry checkpoints that replay the dense path's box and hull on another machine
    (SfM points and region, silhouettes, geometry stats; cameras without the photos), as one tarball."""
    import io
    import tarfile

    import numpy as np

    stages = job_state / "stages"
    with tarfile.open(dest, "w:gz") as tar:
        for stage in ("cameras", "geometry", "masks"):
            for f in sorted((stages / stage).glob("*")):
                if f.is_file() and f.name not in ("views.npz", "points.ply"):
                    tar.add(f, arcname=f"{stage}/{f.name}")
        views = stages / "cameras" / "views.npz"
        if views.exists():
            with np.load(views) as v:
                buf = io.BytesIO()
                np.savez(buf, **{k: v[k] for k in ("K", "w2c", "holdout") if k in v.files})
            info = tarfile.TarInfo("cameras/poses.npz")
            info.size = buf.getbuffer().nbytes
            buf.seek(0)
            tar.addfile(info, buf)


def run_job(folder: Path, posed: bool, overrides: dict[str, dict[str, Any]], device: str, samples: int,
            keep: Path | None, variant: str, gpu_memory_gb: float | None = None) -> dict[str, Any]:
    """One job, scored. Runs in its own process when jobs run in parallel. ``gpu_memory_gb`` caps what torch may
    allocate on the GPU, as on a smaller card (COLMAP's own CUDA allocations are outside torch's cap)."""
    return run_set(folder, posed, [(variant, overrides)], device, samples, keep, gpu_memory_gb)[0]


@functools.lru_cache(maxsize=None)
def worker_start(device: str) -> float:
    """What the daemon's worker does once when it starts, before it takes a job (:func:`pipeline.warmup.preload`),
    once per process -> its seconds."""
    from pipeline.warmup import preload

    return preload(device)


def run_set(folder: Path, posed: bool, variants: list[tuple[str, dict[str, dict[str, Any]]]], device: str,
            samples: int, keep: Path | None, gpu_memory_gb: float | None = None,
            sink: Path | None = None) -> list[dict[str, Any]]:
    """The variants of one set, scored, one after another on one job: the first runs whole, each later one is that
    job retried with its own settings, so only the stages whose settings changed run again (``hotmesh retry``'s
    checkpoints) and every variant starts from the same cameras and, where its change is later, the same geometry.
    One row per variant; a later variant's ``stage_seconds`` hold only the stages it ran. Each row is also
    appended to ``sink`` (JSON lines) as soon as it is scored, so that a run stopped at its time limit keeps the
    variants that finished."""
    from daemon.config import load_settings
    from daemon.intake import fingerprint, snapshot
    from daemon.ledger import Ledger
    from daemon.worker import Paths, execute

    fresh = worker_start.cache_info().currsize == 0
    started = worker_start(device)
    tmp = Path(tempfile.mkdtemp(prefix=f"hotmesh-bench-{folder.name}-"))
    rows: list[dict[str, Any]] = []
    cap = None
    if gpu_memory_gb is not None and device == "cuda":
        import torch

        total = torch.cuda.get_device_properties(0).total_memory / 2 ** 30
        torch.cuda.set_per_process_memory_fraction(min(1.0, gpu_memory_gb / total))
        cap = gpu_memory_gb
    job_id = None
    try:
        for i, (variant, overrides) in enumerate(variants):
            row: dict[str, Any] = {"set": folder.name, "variant": variant, "posed": posed}
            if i == 0 and fresh:
                row["worker_start_seconds"] = round(started, 2)
            if cap is not None:
                row["gpu_memory_cap_gb"] = cap
            if i > 0:
                row["reused_from"] = variants[0][0]
            rows.append(row)
            try:
                settings = load_settings(None, environ={}, cli=overrides)
                paths = Paths(inbox=tmp / "inbox", outbox=tmp / "outbox", state=tmp / "state")
                if job_id is None:
                    job_dir, posed_now = prepare_input(folder, posed, tmp / "inbox")
                    ledger = Ledger(paths.ledger)
                    ledger.create_job(job_dir.name, fingerprint(snapshot(job_dir)))
                else:
                    ledger = Ledger(paths.ledger)
                    if not ledger.retry(job_id, f"benchmark variant {variant}"):
                        raise RuntimeError(f"job {job_id} could not be queued again")
                job = ledger.claim_next("bench")
                if job is None:
                    raise RuntimeError("no job claimed")
                job_id = job.id
                row["posed"] = posed_now
                t0 = time.monotonic()
                state = execute(ledger, paths, job, settings, device)
                row["wall_seconds"] = round(time.monotonic() - t0, 2)
                final = ledger.get(job.id)
                row.update({"state": state, "error": final.error if final else None})
                score_job(row, folder, paths, job.id, state, posed_now, samples, keep, variant)
            except Exception as e:  # a broken set or variant must not lose the others' results
                row.update({"state": "error", "error": f"{type(e).__name__}: {e}"})
            if sink is not None:
                # one line per write, opened for appending: parallel sets' lines do not interleave
                with open(sink, "a", encoding="utf-8") as fh:
                    fh.write(json.dumps(row) + "\n")
            if job_id is None:
                break
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return rows


def score_job(row: dict[str, Any], folder: Path, paths: Any, job_id: str, state: str, posed: bool, samples: int,
              keep: Path | None, variant: str) -> None:
    """Fill ``row`` from the finished job's outbox (stats, grade) and score its mesh against the set's gt.ply."""
    import trimesh

    from bench.scoring import alignment, moved, read_nerf_cameras, score

    out = paths.outbox / job_id
    stem = f"{folder.name}-{variant}-{'posed' if posed else 'unposed'}"
    if keep is not None and (out / "job.log").exists():
        keep.mkdir(parents=True, exist_ok=True)
        shutil.copy2(out / "job.log", keep / f"{stem}.log")
        keep_state(paths.state / "jobs" / job_id, keep / f"{stem}-state.tar.gz")
    if state != "done":
        return
    stats = json.loads((out / "stats.json").read_text())
    row["stage_seconds"] = {t["stage"]: t["seconds"] for t in stats["timings"]}
    row["peak_vram_mb"] = max((t.get("peak_vram_mb") or 0) for t in stats["timings"]) or None
    row["faces"] = stats["mesh"]["faces"]
    row["watertight"] = stats["mesh"]["watertight"]
    row["handles"] = stats["mesh"].get("handles")
    # why the grade is what it is: the checks that did not pass
    row["grade_checks"] = {c["name"]: c["status"] for c in (stats.get("grade") or {}).get("checks", [])
                           if c.get("status") in ("warn", "fail")}
    dense = (stats.get("geometry") or {}).get("dense") or {}
    keys = ("watertight", "handles", "raw_faces", "faces", "grid", "seconds")
    row["dense"] = {k: dense.get(k) for k in keys} if dense else None
    # where the later stages spend their time, for the speed work
    row["step_seconds"] = {"cameras": (stats.get("cameras") or {}).get("seconds"),
                           "refine_per_level": (stats.get("refine") or {}).get("seconds_per_level"),
                           "refine_setup_per_level": (stats.get("refine") or {}).get("setup_seconds_per_level"),
                           "refine_mesh_per_level": (stats.get("refine") or {}).get("mesh_seconds_per_level"),
                           "refine": (stats.get("refine") or {}).get("seconds"),
                           "refine_pair_share": (stats.get("refine") or {}).get("pair_share_per_level"),
                           "texture": (stats.get("texture") or {}).get("seconds"),
                           "report": stats.get("report_seconds")}
    held = stats["quality"]["heldout"]
    row["heldout_psnr"] = None if held.get("psnr_mean") is None else round(held["psnr_mean"], 2)
    row["heldout_iou"] = None if held.get("mask_iou_mean") is None else round(held["mask_iou_mean"], 4)
    row["grade"] = (stats.get("grade") or {}).get("grade")
    # the missing-part checks' measurements, to compare with the error maps
    row["missing"] = {k: stats["quality"].get(k) for k in ("base", "heldout_points")}
    row["geometry"] = stats.get("geometry", {}).get("method")
    sfm = (stats.get("cameras") or {}).get("sfm") or {}
    row["sfm"] = {k: sfm.get(k) for k in ("registered", "images", "mapped", "placed", "mean_reprojection_error_px",
                                           "device", "mapper", "seconds")} if sfm else None
    gt_path = folder / "gt.ply"
    if not gt_path.exists():
        return
    mesh = trimesh.load(out / "mesh.ply", process=False, force="mesh")
    gt = trimesh.load(gt_path, force="mesh")
    truth_path = poses_file(folder) or folder / "transforms.json"
    truth = read_nerf_cameras(truth_path)
    if not posed:
        pub = read_nerf_cameras(out / "transforms.json")
        al = alignment(pub, truth)
        mesh = moved(mesh, al.sim)
        row["alignment_residual"] = round(al.residual, 5)
        row["misplaced_cameras"] = list(al.misplaced)
    row.update(score(mesh, gt, truth, samples))
    if keep is not None:
        keep.mkdir(parents=True, exist_ok=True)
        kept = keep / f"{stem}.ply"
        mesh.export(kept)
        row["error_map"] = error_map(kept, gt_path, kept.with_suffix(".png"))


def parse_variant(text: str) -> tuple[str, dict[str, dict[str, Any]]]:
    """'name:section.key=value,section.key=value' -> (name, overrides)."""
    name, _, rest = text.partition(":")
    out: dict[str, dict[str, Any]] = {}
    for item in filter(None, rest.split(",")):
        key, sep, value = item.partition("=")
        section, dot, k = key.partition(".")
        if not sep or not dot:
            raise SystemExit(f"--variant expects NAME:section.key=value,..., got {text!r}")
        out.setdefault(section.strip(), {})[k.strip()] = value.strip()
    return name, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sets", nargs="+", required=True)
    ap.add_argument("--posed", action="store_true", help="give photo-like sets their true poses")
    ap.add_argument("--variant", action="append", default=[], metavar="NAME:section.key=value,...",
                    help="settings variant (repeatable); default: one variant 'default' with no change")
    ap.add_argument("--samples", type=int, default=1_000_000)
    ap.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    ap.add_argument("--parallel", type=int, default=1, help="jobs at once (timings then include contention)")
    ap.add_argument("--gpu-memory-gb", type=float, default=None,
                    help="cap torch's GPU memory per job to this many GiB, as on a smaller card")
    ap.add_argument("--share-upstream", action="store_true",
                    help="run each set's variants one after another on one job: later variants rerun only the stages "
                         "their settings change, from the first variant's cameras and geometry")
    ap.add_argument("--tag", default=None)
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    ap.add_argument("--keep", type=Path, default=None,
                    help="copy each scored mesh (GT frame) here, with its error picture (error_map.py) beside it, "
                         "the job's log and its cameras and geometry checkpoints (<set>-...-state.tar.gz)")
    args = ap.parse_args()

    from daemon.worker import pick_device

    device = pick_device(args.device)
    variants = [parse_variant(v) for v in args.variant] or [("default", {})]
    tag = args.tag or f"bench-{device}"
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"{tag}.json"
    # every row as it is scored, for a run stopped before a set's last variant (removed when the run ends)
    sink = args.out / f"{tag}.rows.jsonl"
    sink.unlink(missing_ok=True)
    if args.share_upstream:  # one task per set, its variants in order
        tasks = [(run_set, (resolve_set(s), args.posed, variants, device, args.samples, args.keep,
                            args.gpu_memory_gb, sink), f"{s} ({', '.join(n for n, _ in variants)})")
                 for s in args.sets]
    else:
        tasks = [(run_set, (resolve_set(s), args.posed, [(name, ov)], device, args.samples, args.keep,
                            args.gpu_memory_gb, sink), f"{s} ({name})") for name, ov in variants for s in args.sets]
    rows: list[dict[str, Any]] = []
    # the GPU machines' hosts differ in one core's speed, and a job's CPU steps with it (the same job took 49 s on
    # one H100 machine and 66-73 s on others): measured before the jobs, so that a slow host is told from a slow change
    from bench.host_probe import cpu_model, python_loop

    host = {"cpu": cpu_model(), "cpu_count": os.cpu_count(), "python_loop_s": round(python_loop(), 3)}

    def save() -> None:
        path.write_text(json.dumps({"card": card(), "device": device, "date": time.strftime("%Y-%m-%d"),
                                    "host": host, "parallel": args.parallel, "samples": args.samples,
                                    "results": rows}, indent=1))

    if args.parallel <= 1:
        for fn, targs, label in tasks:
            print(f"== {label}, {'posed' if args.posed else 'unposed'}", flush=True)
            for row in fn(*targs):
                rows.append(row)
                print(json.dumps(row), flush=True)
            save()
    else:
        import multiprocessing as mp

        with ProcessPoolExecutor(args.parallel, mp_context=mp.get_context("spawn")) as pool:
            # rows in the order the jobs finish, each saved at once: a run cut short keeps every finished job
            # (in submission order, a slow first job held back the rows of the others until it ended)
            for fut in as_completed([pool.submit(fn, *targs) for fn, targs, _ in tasks]):
                for row in fut.result():
                    rows.append(row)
                    print(json.dumps(row), flush=True)
                save()
    sink.unlink(missing_ok=True)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
