"""follow=1: the incremental log reader and the file watch that wakes it."""

from __future__ import annotations

import ctypes
import errno
import random
import threading
import time
from pathlib import Path

from flashpods_api import filewatch, logs

STAMP = b"2026-01-01T00:00:00.000000000+00:00"


def _append(path: Path, *records: tuple[str, str, bytes]) -> None:
    with open(path, "ab") as fh:
        for stream, flag, message in records:
            fh.write(STAMP + f" {stream} {flag} ".encode() + message + b"\n")


def test_follower_reads_a_growing_log_incrementally_from_an_offset(tmp_path):
    live = logs.ctr_log_path(tmp_path, "job_aaaaaaaaaaaa")
    follower = logs.Follower(tmp_path, "job_aaaaaaaaaaaa", offset=3, cap=1 << 20)
    assert follower.read(100) == b""  # not started yet
    _append(live, ("stdout", "F", b"hello"))
    assert follower.read(100) == b"lo\n"
    with open(live, "ab") as fh:
        fh.write(STAMP + b" stderr P half")  # conmon has not finished the line yet
    assert follower.read(100) == b""
    with open(live, "ab") as fh:
        fh.write(b"\n")
    _append(live, ("stdout", "F", b"next"))
    assert follower.read(4) == b"half"
    assert follower.read(100) == b"next\n"
    assert follower.pos == len(b"hello\nhalfnext\n")
    follower.close()


def test_follower_switches_to_the_final_log_at_the_same_offset(tmp_path):
    live = logs.ctr_log_path(tmp_path, "job_bbbbbbbbbbbb")
    _append(live, ("stdout", "F", b"one"), ("stdout", "F", b"two"))
    follower = logs.Follower(tmp_path, "job_bbbbbbbbbbbb", offset=0, cap=1 << 20)
    assert follower.read(4) == b"one\n"
    _append(live, ("stdout", "F", b"three"))
    logs.finalize(tmp_path, "job_bbbbbbbbbbbb", 1 << 20)
    assert not live.exists()
    assert follower.read(100) == b"two\nthree\n"
    assert follower.read(100) == b""


def test_follower_matches_the_paged_reader_at_every_offset_and_cap(tmp_path):
    rng = random.Random(7)
    live = logs.ctr_log_path(tmp_path, "job_cccccccccccc")
    records = [
        (rng.choice(["stdout", "stderr"]), rng.choice("FP"), rng.randbytes(rng.randint(0, 300)))
        for _ in range(400)
    ]
    _append(live, *[(s, f, m.replace(b"\n", b"~")) for s, f, m in records])
    whole = logs.read(tmp_path, "job_cccccccccccc", 0, 1 << 30, 1 << 30)
    for offset in (0, 1, 17, len(whole) // 2, len(whole) - 1, len(whole), len(whole) + 9):
        for cap in (1 << 30, len(whole) // 3):
            follower = logs.Follower(tmp_path, "job_cccccccccccc", offset, cap)
            got = bytearray()
            while chunk := follower.read(rng.randint(1, 5000)):
                got += chunk
            follower.close()
            assert bytes(got) == logs.read(tmp_path, "job_cccccccccccc", offset, 1 << 30, cap)


def test_the_watch_wakes_on_an_append_without_waiting_out_its_timeout(tmp_path):
    path = tmp_path / "watched.ctr.log"
    path.write_bytes(b"")
    with filewatch.FileWatch() as watch:
        assert watch.uses_inotify and watch.watch(path)
        timer = threading.Timer(0.1, lambda: _append(path, ("stdout", "F", b"x")))
        start = time.monotonic()
        timer.start()
        watch.wait(10)
        assert time.monotonic() - start < 2
        timer.join()
        watch.wait(0.05)  # any later event of that same write
        start = time.monotonic()
        watch.wait(0.2)  # nothing new: the timeout ends the wait
        assert time.monotonic() - start >= 0.15


def test_the_watch_notices_the_file_going_away_and_rewatches(tmp_path):
    path = tmp_path / "gone.ctr.log"
    path.write_bytes(b"")
    with filewatch.FileWatch() as watch:
        assert watch.watch(path)
        threading.Timer(0.1, path.unlink).start()
        start = time.monotonic()
        watch.wait(10)
        assert time.monotonic() - start < 2
        assert watch.watch(path) is False  # missing now: the next waits poll
        path.write_bytes(b"")
        assert watch.watch(path) is True


def test_without_inotify_the_watch_polls_fast_after_data_and_backs_off(tmp_path, monkeypatch):
    monkeypatch.setattr(filewatch._libc, "inotify_init1", lambda _flags: -1)
    path = tmp_path / "polled.ctr.log"
    path.write_bytes(b"")
    with filewatch.FileWatch() as watch:
        assert not watch.uses_inotify and watch.watch(path)
        waits = []
        for _ in range(8):
            start = time.monotonic()
            watch.wait(10)
            waits.append(time.monotonic() - start)
        assert waits[0] < waits[-1] and 0.15 <= waits[-1] < 1
        watch.changed()
        start = time.monotonic()
        watch.wait(10)
        assert time.monotonic() - start < 0.1


def test_a_watch_the_kernel_refuses_turns_into_polling(tmp_path, monkeypatch):
    path = tmp_path / "refused.ctr.log"
    path.write_bytes(b"")

    def refuse(_fd, _path, _mask):
        ctypes.set_errno(errno.ENOSPC)
        return -1

    with filewatch.FileWatch() as watch:
        monkeypatch.setattr(filewatch._libc, "inotify_add_watch", refuse)
        assert watch.watch(path) is True and not watch.uses_inotify
        start = time.monotonic()
        watch.wait(10)
        assert time.monotonic() - start < 0.1  # a short poll, not the whole timeout
