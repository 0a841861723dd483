"""Server-side waits (waiting.py): their bounds, and a wake on the end notice."""

from __future__ import annotations

import threading
import time

import pytest
from flashpods_api import endnotice, waiting
from flashpods_api.errors import ApiError


@pytest.mark.parametrize("raw", ["0", "2.5", "30", "1e1", "0.000001"])
def test_wait_s_takes_seconds_from_0_to_30(raw):
    assert waiting.query_wait({"wait_s": raw}) == float(raw)


@pytest.mark.parametrize("raw", ["-1", "30.5", "nan", "inf", "", "x", "1" * 40, "1e400"])
def test_wait_s_refuses_anything_else_with_what_to_send(raw):
    with pytest.raises(ApiError) as refused:
        waiting.query_wait({"wait_s": raw})
    assert refused.value.code == "bad_wait_s"
    assert "from 0 to 30" in refused.value.message


def test_the_budget_leaves_threads_for_everything_else(monkeypatch):
    monkeypatch.setenv(waiting.THREADS_ENV, "64")
    assert waiting.budget() == 64 - waiting.RESERVED_THREADS
    monkeypatch.setenv(waiting.THREADS_ENV, "8")
    assert waiting.budget() == 4
    monkeypatch.setenv(waiting.THREADS_ENV, "1")
    assert waiting.budget() == 1


def test_past_the_budget_a_request_does_not_wait(monkeypatch):
    monkeypatch.setenv(waiting.THREADS_ENV, "4")  # budget 2
    with waiting.slot() as first, waiting.slot() as second, waiting.slot() as third:
        assert (first, second, third) == (True, True, False)
        assert waiting.waiting_now() == 2
    assert waiting.waiting_now() == 0


def test_a_wait_wakes_on_the_end_notice_not_on_its_recheck(tmp_path):
    notice = endnotice.path_for(tmp_path / "db.sqlite")
    endnotice.ensure(notice)
    done = threading.Event()
    threading.Timer(0.3, lambda: (done.set(), endnotice.announce(notice))).start()
    started = time.monotonic()
    assert waiting.until(done.is_set, 20, [notice])
    # Far below RECHECK_S (5 s): the touch woke it.
    assert time.monotonic() - started < waiting.RECHECK_S - 1


def test_a_wait_ends_at_its_deadline_with_the_last_answer(tmp_path):
    notice = endnotice.path_for(tmp_path / "db.sqlite")
    endnotice.ensure(notice)
    started = time.monotonic()
    assert waiting.until(lambda: None, 0.2, [notice]) is None
    assert 0.15 < time.monotonic() - started < 3
