"""Hostile callers on a real token server (issue 14): byte-trickling slowloris, per-job
connection caps decided at accept time (real PID namespaces via `unshare`), and the
bounded audit log. The dev-host versions of these attacks are in
tests/integration/token/test_token_hostile_jobs.py."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import time

import pytest
from conftest import base_config
from flashpods_token import peer_key
from flashpods_token.audit import AuditLog
from flashpods_token.config import ConfigError, parse_config


def _config(tmp_path, secret_files, podman, bundle_file, **limits):
    return base_config(
        tmp_path,
        secret_files,
        podman,
        spire={"bundle_file": str(bundle_file)},
        limits={"read_timeout_s": 0.5, **limits},
    )


def _connect(path: str) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(5)
    s.connect(path)
    return s


def test_byte_trickle_inside_one_line_hits_the_hard_deadline(
    tmp_path, secret_files, podman, bundle_file, start_server
):
    # Each byte arrives well within the 0.5 s read timeout, and no line ever ends: the
    # old reader only looked at the clock when a line was complete.
    server = start_server(_config(tmp_path, secret_files, podman, bundle_file))
    s = _connect(server.socket)
    start = time.monotonic()
    answer = b""
    try:
        for _ in range(100):  # up to 20 s of trickling
            s.send(b"P")
            time.sleep(0.2)
            s.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                answer = s.recv(4096)
                break
            s.setblocking(True)
    except (BrokenPipeError, ConnectionResetError):
        pass
    s.close()
    assert time.monotonic() - start < 6  # the deadline is 2 x 0.5 s
    assert answer.startswith(b"HTTP/1.1 408"), answer


# Runs in its own PID namespace (unshare): holds HOLD idle connections, then reports
# what one more connection from this namespace, and one from a namespace nested inside
# it, are answered; prints a JSON object.
NAMESPACE_CLIENT = r"""
import json, socket, subprocess, sys
path, hold = sys.argv[1], int(sys.argv[2])
def first_answer(path):
    s = socket.socket(socket.AF_UNIX); s.settimeout(5); s.connect(path)
    try:
        s.sendall(b"POST /v1/exchange HTTP/1.1\r\nContent-Length: 0\r\n\r\n")
    except OSError:
        pass
    try:
        return s.recv(4096).decode(errors="replace")
    except OSError as exc:
        return repr(exc)
if len(sys.argv) > 3:
    print(json.dumps({"answer": first_answer(path)}))
    sys.exit(0)
held = []
for _ in range(hold):
    s = socket.socket(socket.AF_UNIX); s.settimeout(5); s.connect(path); held.append(s)
extra = first_answer(path)
nested = subprocess.run(
    ["unshare", "--pid", "--fork", sys.executable, sys.argv[0], path, "0", "nested"],
    capture_output=True, text=True, timeout=30,
)
print(json.dumps({"extra": extra, "nested": json.loads(nested.stdout)["answer"]}))
"""


def test_a_job_over_its_connection_cap_is_refused_at_accept_and_others_are_not(
    tmp_path, secret_files, podman, bundle_file, start_server
):
    cap = 2
    server = start_server(
        _config(
            tmp_path, secret_files, podman, bundle_file,
            read_timeout_s=5.0, max_connections_per_job=cap,
        )
    )  # fmt: skip
    script = tmp_path / "client.py"
    script.write_text(NAMESPACE_CLIENT)
    # "Job A": a fresh PID namespace that fills its share, then asks once more, also
    # from a namespace nested inside it (it must still count as job A).
    job_a = subprocess.run(
        ["unshare", "--pid", "--fork", sys.executable, str(script), server.socket, str(cap)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert job_a.returncode == 0, job_a.stderr
    seen = json.loads(job_a.stdout)
    for answer in (seen["extra"], seen["nested"]):
        assert answer.startswith("HTTP/1.1 503"), answer
        assert '"code": "busy"' in answer and "Retry-After: 1" in answer

    # Meanwhile another namespace ("job B") is answered normally while A holds its share.
    held = [_connect(server.socket) for _ in range(cap)]  # this test's own namespace
    try:
        job_b = subprocess.run(
            ["unshare", "--pid", "--fork", sys.executable, str(script), server.socket, "0", "x"],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        answer = json.loads(job_b.stdout)["answer"]
        assert answer.startswith("HTTP/1.1 401"), answer  # spire mode, no JWT: refused, not busy
    finally:
        for s in held:
            s.close()


def test_the_global_cap_answers_busy(tmp_path, secret_files, podman, bundle_file, start_server):
    server = start_server(
        _config(
            tmp_path, secret_files, podman, bundle_file,
            read_timeout_s=5.0, max_connections=2, max_connections_per_job=2,
        )
    )  # fmt: skip
    held = [_connect(server.socket) for _ in range(2)]
    try:
        s = _connect(server.socket)
        answer = s.recv(4096)
        s.close()
        assert answer.startswith(b"HTTP/1.1 503") and b'"busy"' in answer, answer
    finally:
        for h in held:
            h.close()
    # Released on close: the next connection is served again.
    deadline = time.monotonic() + 10
    while True:
        s = _connect(server.socket)
        try:
            s.sendall(b"GET /healthz HTTP/1.1\r\n\r\n")
            answer = s.recv(4096)
        except (BrokenPipeError, ConnectionResetError):
            # Still over the cap (the release is noticed a moment later): the service
            # answered busy without reading and hung up before our request was sent.
            answer = b""
        finally:
            s.close()
        if answer.startswith(b"HTTP/1.1 200") or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert answer.startswith(b"HTTP/1.1 200"), answer


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _lines(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_failures_are_coalesced_per_caller_and_grants_never(tmp_path):
    clock = _Clock()
    path = tmp_path / "audit.log"
    audit = AuditLog(str(path), failures_per_window=5, window_s=60, clock=clock)
    job_a = "spiffe://flashpods.internal/job/job_a/worker"
    job_b = "spiffe://flashpods.internal/job/job_b/worker"
    for i in range(1000):
        audit.record(
            outcome="bad_request" if i % 2 else "rate_limited", spiffe_id=job_a, job="job_a"
        )
    for _ in range(3):
        audit.record(outcome="forbidden", spiffe_id=job_b, job="job_b")
    for _ in range(50):
        audit.record(outcome="granted", spiffe_id=job_a, job="job_a", granted=["GITHUB_TOKEN"])
    for _ in range(30):
        audit.record(outcome="unauthenticated", check="peer_container", peer="pidns:1:2")
    lines = _lines(path)
    assert sum(1 for e in lines if e["job"] == "job_a" and e["outcome"] != "granted") == 5
    assert sum(1 for e in lines if e["job"] == "job_b") == 3  # under its own budget
    assert sum(1 for e in lines if e["outcome"] == "granted") == 50  # every grant
    assert sum(1 for e in lines if e.get("peer") == "pidns:1:2") == 5
    size = path.stat().st_size

    # The window ends: what was held back is written as one line per caller, with counts.
    clock.now += 61
    audit.flush_expired()
    summaries = [e for e in _lines(path) if e["outcome"] == "suppressed"]
    by_caller = {e["job"] or e["peer"]: e["counts"] for e in summaries}
    assert by_caller == {
        "job_a": {"bad_request": 500 - 2, "rate_limited": 500 - 3},
        "pidns:1:2": {"unauthenticated": 25},
    }
    assert path.stat().st_size - size < 1024  # two lines, not 1,020

    # A new window starts with a fresh budget; close() writes what is still held back.
    for _ in range(7):
        audit.record(outcome="bad_request", spiffe_id=job_a, job="job_a")
    audit.close()
    last = _lines(path)[-1]
    assert last["outcome"] == "suppressed" and last["counts"] == {"bad_request": 2}


def test_callers_beyond_the_table_share_one_budget(tmp_path):
    path = tmp_path / "audit.log"
    audit = AuditLog(str(path), failures_per_window=1, window_s=60, clock=_Clock(), max_callers=3)
    for i in range(100):  # e.g. an escaped process making a PID namespace per request
        audit.record(outcome="unauthenticated", peer=f"pidns:1:{i}")
    audit.close()
    lines = _lines(path)
    verbatim = [e for e in lines if e["outcome"] == "unauthenticated"]
    held = sum(sum(e["counts"].values()) for e in lines if e["outcome"] == "suppressed")
    assert len(verbatim) <= 4
    assert len(verbatim) + held == 100


def test_reopen_after_a_rename_loses_no_line(tmp_path):
    path = tmp_path / "audit.log"
    audit = AuditLog(str(path))
    audit.record(outcome="granted", spiffe_id="spiffe://x/job/job_a/worker", job="job_a")
    path.rename(tmp_path / "audit.log.1")  # the rotation ...
    audit.record(outcome="granted", spiffe_id="spiffe://x/job/job_b/worker", job="job_b")
    audit.reopen()  # ... then SIGHUP
    audit.record(outcome="granted", spiffe_id="spiffe://x/job/job_c/worker", job="job_c")
    audit.close()
    assert [e["job"] for e in _lines(tmp_path / "audit.log.1")] == ["job_a", "job_b"]
    assert [e["job"] for e in _lines(path)] == ["job_c"]


def test_without_the_namespace_the_callers_cgroup_is_its_key():
    # Spire mode has no CAP_SYS_PTRACE for the namespace: the cgroup stands in.
    child = subprocess.Popen(["sleep", "30"])
    try:
        pidfd = os.pidfd_open(child.pid)
        try:
            key = peer_key._cgroup(pidfd)
        finally:
            os.close(pidfd)
        with open(f"/proc/{child.pid}/cgroup") as fh:
            assert key == "cgroup:" + fh.read().strip()
    finally:
        child.kill()
        child.wait()


@pytest.mark.parametrize(
    ("limits", "message"),
    [
        ({"max_connections": 4, "max_connections_per_job": 8}, "must not exceed"),
        ({"read_timeout_s": 0}, "limits.read_timeout_s must be a positive number"),
        ({"audit_window_s": -1}, "limits.audit_window_s must be a positive number"),
        ({"max_connections_per_job": True}, "limits.max_connections_per_job must be a positive"),
    ],
)
def test_limits_that_make_no_sense_are_refused(tmp_path, secret_files, podman, limits, message):
    cfg = base_config(tmp_path, secret_files, podman, limits=limits)
    cfg["spire"] = {"bundle_file": "/b"}
    with pytest.raises(ConfigError, match=message):
        parse_config(cfg)
