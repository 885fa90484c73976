from pathlib import Path

from daemon.intake import Settler, fingerprint, snapshot


def test_folder_settles_only_after_quiet_period(tmp_path: Path) -> None:
    inbox = tmp_path
    job = inbox / "job"
    job.mkdir()
    s = Settler(settle_seconds=5)
    assert s.scan(inbox, set(), now=0) == []  # empty folder: never a job
    (job / "a.png").write_bytes(b"1")
    assert s.scan(inbox, set(), now=1) == []
    assert s.scan(inbox, set(), now=4) == []
    (job / "b.png").write_bytes(b"22")  # still copying: the clock restarts
    assert s.scan(inbox, set(), now=5) == []
    assert s.scan(inbox, set(), now=9) == []
    [d] = s.scan(inbox, set(), now=10.5)
    assert d.folder == "job" and not d.cancelled
    assert s.scan(inbox, {"job"}, now=20) == []  # known folders are never offered again


def test_ready_and_cancel_markers_and_ignored_names(tmp_path: Path) -> None:
    for name in ("ready", "cancel", "_tmp", ".hidden"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "x.jpg").write_bytes(b"x")
    (tmp_path / "ready" / "READY").write_text("")
    (tmp_path / "cancel" / "CANCEL").write_text("")
    (tmp_path / "file.txt").write_text("not a folder")
    got = {d.folder: d.cancelled for d in Settler(settle_seconds=1e9).scan(tmp_path, set(), now=0)}
    assert got == {"ready": False, "cancel": True}


def test_fingerprint_ignores_markers(tmp_path: Path) -> None:
    (tmp_path / "a").write_bytes(b"abc")
    before = fingerprint(snapshot(tmp_path))
    (tmp_path / "READY").write_text("")
    assert fingerprint(snapshot(tmp_path)) == before
    (tmp_path / "a").write_bytes(b"abcd")
    assert fingerprint(snapshot(tmp_path)) != before
