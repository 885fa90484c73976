"""How fast the machine is at the CPU and disk work a job does beside the GPU, in about 15 s.

    python bench/host_probe.py [--dir DIR] [--tag TAG] [--out bench/results]

The steps of a photo job that run on the CPU (mapping, the report's file exports, the photo copies, ingest) took
3-4 times longer on the GPU machines than on a 2-core CI machine (`docs/benchmarks.md`, Speed). This separates the
candidate causes: one core's speed (a pure-Python loop, a one-thread zlib of 4 MB of texture-like bytes), how many
cores the process may really use (the CPU quota of its cgroup against ``os.cpu_count``, and a many-thread zlib), and
the disk under ``--dir`` (the state folder's: a 64 MB file written and fsynced, 48 photo-sized files copied). One
JSON row is printed and, with ``--tag``, written to ``<out>/<tag>.json``.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def cgroup_cpus() -> float | None:
    """CPUs the cgroup's quota allows (cgroup v2 cpu.max, or v1 cfs files); None when unlimited or unknown."""
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        q = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us").read_text())
        p = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us").read_text())
        return None if q <= 0 else q / p
    except (OSError, ValueError):
        return None


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def python_loop() -> float:
    """Seconds for a fixed pure-Python loop (one core, the interpreter's speed)."""
    t = time.perf_counter()
    acc = 0
    for i in range(3_000_000):
        acc += i * i % 7
    return time.perf_counter() - t


def zlib_seconds(buf: bytes, threads: int) -> float:
    """Seconds to deflate ``buf`` once on each of ``threads`` threads at once (zlib releases the GIL)."""
    t = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(lambda _: zlib.compress(buf, 6), range(threads)))
    return time.perf_counter() - t


def disk(folder: Path) -> dict[str, float]:
    """MB/s writing 64 MB with fsync, and seconds copying 48 files of 150 kB, under ``folder``."""
    work = Path(tempfile.mkdtemp(prefix="hotmesh-probe-", dir=folder))
    try:
        data = os.urandom(64 << 20)
        t = time.perf_counter()
        with open(work / "big", "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        write = time.perf_counter() - t
        (work / "src").mkdir()
        (work / "dst").mkdir()
        for i in range(48):
            (work / "src" / f"{i}.jpg").write_bytes(data[i * 150_000:(i + 1) * 150_000])
        t = time.perf_counter()
        for i in range(48):
            shutil.copyfile(work / "src" / f"{i}.jpg", work / "dst" / f"{i}.jpg")
        copies = time.perf_counter() - t
        return {"write_mb_s": round(64 / write, 1), "copy_48_photos_s": round(copies, 4)}
    finally:
        shutil.rmtree(work, ignore_errors=True)


def probe(folder: Path) -> dict:
    import numpy as np

    rng = np.random.default_rng(0)
    # a texture-like buffer: smooth colour with noise (compresses like a baked texture, not like random bytes)
    tex = (np.linspace(0, 255, 2048 * 2048 * 3) % 256).astype(np.uint8) + rng.integers(0, 8, 2048 * 2048 * 3,
                                                                                      dtype=np.uint8)
    buf = tex.tobytes()[: 4 << 20]
    cores = os.cpu_count() or 1
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else cores
    one = zlib_seconds(buf, 1)
    many = zlib_seconds(buf, usable)
    return {"host": platform.node(), "cpu": cpu_model(), "cpu_count": cores, "affinity": usable,
            "cgroup_cpus": cgroup_cpus(), "load_1min": round(os.getloadavg()[0], 2),
            "python_loop_s": round(python_loop(), 3), "zlib_4mb_one_thread_s": round(one, 3),
            # many threads at once, each its own 4 MB: equal to one thread's time when every core is really there
            "zlib_4mb_all_threads_s": round(many, 3), "parallel_efficiency": round(one / max(many, 1e-9), 2),
            "disk_dir": str(folder), **disk(folder)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()), help="the disk to time (a state folder)")
    ap.add_argument("--tag", default=None)
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    args = ap.parse_args(argv)
    row = probe(args.dir)
    print(json.dumps(row))
    if args.tag:
        from bench.run_bench import card  # the GPU's name, as every result file has it

        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / f"{args.tag}.json").write_text(json.dumps(
            {"card": card(), "date": time.strftime("%Y-%m-%d"), "results": [row]}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
