"""The exit watch (exits.py) hands over the jobs whose live log was closed after writing."""

from __future__ import annotations

import threading

from flashpods_api import exits


def test_a_closed_live_log_names_its_job_and_nothing_else_does(tmp_path):
    seen: list[set[str]] = []
    got = threading.Event()

    def ended(jobs: set[str]) -> None:
        seen.append(jobs)
        got.set()

    watch = exits.ExitWatch(tmp_path, ended, lambda: None)
    assert watch.start()
    try:
        (tmp_path / "job_abcdefghijkl.log").write_bytes(b"x")  # a final log: not an end
        (tmp_path / "planted.ctr.log").write_bytes(b"x")  # no job id
        (tmp_path / "job_abcdefghijkl.ctr.log").write_bytes(b"x")  # open, write, close
        assert got.wait(10)
    finally:
        watch.stop()
    assert set().union(*seen) == {"job_abcdefghijkl"}


def test_only_live_log_names_of_job_ids_count():
    assert exits.job_of("job_abcdefghijkl.ctr.log") == "job_abcdefghijkl"
    for name in ("job_abcdefghijkl.log", "job_ABC.ctr.log", ".ctr.log", "x/../y.ctr.log"):
        assert exits.job_of(name) is None
