import multiprocessing as mp
from pathlib import Path

from daemon.ledger import Ledger
from daemon.states import JobState


def test_one_job_per_folder(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "l.db")
    a, created_a = ledger.create_job("scan 1", "fp")
    b, created_b = ledger.create_job("scan 1", "fp2")
    assert created_a and not created_b and a.id == b.id == "scan-1"
    c, _ = ledger.create_job("scan?1", "fp")  # slugs collide, ids stay unique
    assert c.id == "scan-1-2"


def _claimer(path: str, n: int, q) -> None:
    ledger = Ledger(Path(path))
    got = []
    while True:
        job = ledger.claim_next(f"w{n}")
        if job is None:
            break
        got.append(job.id)
    q.put(got)


def test_atomic_claim_across_processes(tmp_path: Path) -> None:
    path = tmp_path / "l.db"
    ledger = Ledger(path)
    for i in range(60):
        ledger.create_job(f"job{i:02d}", "fp")
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    procs = [ctx.Process(target=_claimer, args=(str(path), n, q)) for n in range(4)]
    for p in procs:
        p.start()
    claimed = [j for _ in procs for j in q.get(timeout=60)]
    for p in procs:
        p.join()
    assert sorted(claimed) == sorted(f"job{i:02d}" for i in range(60))  # each exactly once
    assert all(j.state == JobState.RUNNING and j.attempts == 1 for j in ledger.jobs())


def test_recover_orphans_requeues_then_fails(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "l.db")
    job, _ = ledger.create_job("a", "fp")
    for attempt in (1, 2):
        assert ledger.claim_next("w").id == job.id
        ledger.set_progress(job.id, "geometry", 40.0)
        assert ledger.recover_orphans(max_attempts=2) == [(job.id, "requeued" if attempt == 1 else "failed")]
    final = ledger.get(job.id)
    assert final.state == JobState.FAILED and "interrupted 2 times" in final.error
    kinds = [e["kind"] for e in ledger.events(job.id)]
    assert kinds == ["created", "claimed", "requeued", "claimed", "failed"]


def test_finish_and_cancel_if_queued(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "l.db")
    a, _ = ledger.create_job("a", "fp")
    b, _ = ledger.create_job("b", "fp")
    assert ledger.cancel_if_queued(b.id, "user")
    assert not ledger.cancel_if_queued(b.id, "user")
    ledger.claim_next("w")
    ledger.record_timing(a.id, "ingest", {"seconds": 1.5})
    ledger.finish(a.id, JobState.DONE, outputs={"report": "x"}, progress=100.0)
    got = ledger.get(a.id)
    assert got.state == JobState.DONE and got.timings["ingest"]["seconds"] == 1.5 and got.outputs == {"report": "x"}
    assert ledger.counts() == {"done": 1, "cancelled": 1}


def test_changes_kept_while_the_ledger_refuses_are_written_in_order_once_it_takes_them(tmp_path) -> None:
    import dataclasses

    from daemon.kept_writes import KeptWrites
    from daemon.ledger import LedgerError

    ledger = Ledger(tmp_path / "ledger.db")
    job, _ = ledger.create_job("a", "fp")
    refusing = {"on": False}
    problems, settled = [], []

    def apply(message: str):
        def go(led: Ledger) -> None:
            if refusing["on"]:
                raise LedgerError("database or disk is full")
            led.event(job.id, "note", message)
        return go

    kept = KeptWrites(lambda: ledger, lambda: problems.append(kept.problem), settled.append)
    assert kept.write("first", job.id, apply("one"))
    refusing["on"] = True
    view = dataclasses.replace(job, state=JobState.CANCELLED)
    assert kept.change("second", view, apply("two")) == view  # kept: the job as it now stands
    refusing["on"] = False
    assert not kept.write("third", job.id, apply("three"))  # behind the kept one, even though it would go through
    assert kept.job(job.id).state == JobState.CANCELLED and kept.kept(job.id)
    assert problems == ["database or disk is full"] and "second (" in kept.describe()
    kept.flush()
    notes = [e["message"] for e in ledger.events(job.id) if e["kind"] == "note"]
    assert notes == ["one", "two", "three"]
    assert not kept.pending and not kept.kept(job.id) and kept.problem is None and problems[-1] is None
    assert [j.id for j in settled] == [job.id]  # its status file is written from the ledger's row again
    ledger.close()
