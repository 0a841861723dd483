"""store.py: every state change is a compare-and-set, and a refused submit changes nothing."""

from __future__ import annotations

import multiprocessing
from typing import Any

import pytest
from flashpods_api.store import ACTIVE, FINAL, LIVE, STATUSES, QueueFull, Store, UploadUnavailable


def _record(n: int, **fields: Any) -> dict[str, Any]:
    return {
        "id": f"job_{n:012d}", "kind": "worker", "command": "x", "image": "i", "env": {},
        "timeout_s": 5, "resources": {}, **fields,
    }  # fmt: skip


@pytest.fixture
def store(tmp_path):
    s = Store(str(tmp_path / "store.db"), "unit")
    yield s
    s.close()


def test_the_status_tuples_partition_every_status():
    assert set(LIVE) | set(FINAL) == set(STATUSES) and not set(LIVE) & set(FINAL)
    assert set(ACTIVE) < set(LIVE) and "queued" in LIVE


def test_a_full_queue_refuses_and_inserts_nothing(store):
    store.submit(_record(1), 1)
    with pytest.raises(QueueFull):
        store.submit(_record(2), 1)
    assert store.job_ids() == {"job_000000000001"}


def test_an_upload_is_consumed_once_and_a_refusal_rolls_the_job_back(store):
    store.add_upload("up_aaaaaaaaaaaaaaaa", None)
    job, took_warm = store.submit(_record(1, upload_id="up_aaaaaaaaaaaaaaaa"), 10)
    assert job["status"] == "queued" and not took_warm
    assert store.get_upload("up_aaaaaaaaaaaaaaaa")["used_by"] == job["id"]
    for upload, reason in (("up_aaaaaaaaaaaaaaaa", "used"), ("up_bbbbbbbbbbbbbbbb", "unknown")):
        with pytest.raises(UploadUnavailable) as caught:
            store.submit(_record(2, upload_id=upload), 10)
        assert caught.value.reason == reason
    assert store.job_ids() == {job["id"]}


def test_submit_claims_at_once_only_under_the_cap(store):
    first, _ = store.submit(_record(1), 10, claim_cap=1)
    second, _ = store.submit(_record(2), 10, claim_cap=1)
    assert first["status"] == "starting" and second["status"] == "queued"
    assert store.queue_position(second) == 1


def test_transition_applies_only_from_an_expected_status(store):
    store.submit(_record(1), 10)
    assert not store.transition("job_000000000001", ACTIVE, status="running")
    assert store.transition("job_000000000001", ("queued",), status="killed")
    assert store.get_job("job_000000000001")["status"] == "killed"


def test_list_jobs_pages_newest_first_by_seq(store):
    for n in range(5):
        store.submit(_record(n), 10)
    page = store.list_jobs(None, None, 2, None)
    assert [j["id"] for j in page] == ["job_000000000004", "job_000000000003"]
    rest = store.list_jobs(None, None, 10, page[-1]["seq"])
    assert [j["id"] for j in rest] == ["job_000000000002", "job_000000000001", "job_000000000000"]


def test_a_warm_container_is_taken_only_by_a_job_that_could_start_at_once(store):
    store.add_warm("job_warmaaaaaaaa", "worker", "i")
    store.set_warm("job_warmaaaaaaaa", ("creating",), state="ready")
    store.submit(_record(1), 10)  # queued, not claimed: the next job would have to wait
    job, took_warm = store.submit(_record(2), 10, claim_cap=4, warm=("worker", "i"))
    assert not took_warm and job["id"] == "job_000000000002"
    assert store.get_warm("job_warmaaaaaaaa")["state"] == "ready"


def _claimer(db: str, cap: int, out: multiprocessing.Queue) -> None:
    store = Store(db, "race")
    got = []
    while True:
        job_id = store.claim(cap)
        if job_id is None:
            break
        got.append(job_id)
    out.put(got)


def test_claims_from_many_processes_never_exceed_the_cap(tmp_path):
    db = str(tmp_path / "race.db")
    store = Store(db, "race")
    for n in range(40):
        store.submit(
            {"id": f"job_{n:012d}", "kind": "worker", "command": "x",
             "image": "i", "env": {}, "timeout_s": 5, "resources": {}},
            1000,
        )  # fmt: skip
    ctx = multiprocessing.get_context("fork")
    out = ctx.Queue()
    procs = [ctx.Process(target=_claimer, args=(db, 3, out)) for _ in range(6)]
    for p in procs:
        p.start()
    claimed = [job for _ in procs for job in out.get(timeout=60)]
    for p in procs:
        p.join(timeout=60)
    assert len(claimed) == 3 and len(set(claimed)) == 3
    assert store.count_active() == 3
    # FIFO: the three oldest jobs were the ones claimed.
    oldest = [j["id"] for j in store.list_jobs(None, None, 100, None)][-3:]
    assert sorted(claimed) == sorted(oldest)
    assert store._rows("PRAGMA journal_mode") == [{"journal_mode": "wal"}]
