"""Peer attestation against real PID namespaces (made with unshare) and a stand-in Podman
API that names their init processes as job containers. The real-container version
of these checks is in tests/integration/token/."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time

import pytest
from conftest import SECRETS, base_config, exchange

# unshare --pid and reading other processes' namespaces need root.
pytestmark = pytest.mark.root

CLIENT = r"""
import http.client, json, socket, sys
class C(http.client.HTTPConnection):
    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX); self.sock.connect(sys.argv[1])
c = C("t", timeout=10)
body = sys.argv[2].encode() if len(sys.argv) > 2 else b""
c.request("POST", "/v1/exchange", body=body, headers={"Content-Length": str(len(body))})
r = c.getresponse()
print(json.dumps({"status": r.status, "body": json.loads(r.read())}))
"""


class Namespace:
    """A new PID namespace whose init (pid 1 inside) sleeps: a container stand-in."""

    def __init__(self):
        self.proc = subprocess.Popen(["unshare", "--pid", "--fork", "sleep", "300"])
        deadline = time.monotonic() + 5
        self.init_pid = None
        while time.monotonic() < deadline and self.init_pid is None:
            try:
                with open(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children") as fh:
                    kids = fh.read().split()
                self.init_pid = int(kids[0]) if kids else None
            except OSError:
                pass
            time.sleep(0.01)
        assert self.init_pid, "unshare did not start its child"

    def run_client(self, socket_path: str, body: str = "") -> dict:
        out = subprocess.run(
            ["nsenter", "-t", str(self.init_pid), "--pid", "--", sys.executable, "-c", CLIENT,
             socket_path, body],
            capture_output=True, text=True, timeout=30, check=True,
        )  # fmt: skip
        return json.loads(out.stdout)

    def stop(self):
        self.proc.kill()
        self.proc.wait()
        # The namespace's init dies with it (kill the grandchild explicitly too).
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.init_pid, 9)


@pytest.fixture
def namespaces():
    made: list[Namespace] = []

    def make() -> Namespace:
        ns = Namespace()
        made.append(ns)
        return ns

    yield make
    for ns in made:
        ns.stop()


@pytest.fixture
def peer_server(tmp_path, secret_files, podman, start_server):
    return start_server(base_config(tmp_path, secret_files, podman, mode="peer"))


def test_process_in_a_job_namespace_gets_its_roles_tokens(peer_server, podman, namespaces):
    ns = namespaces()
    podman.add_job("job_peerworker01", "worker", pid=ns.init_pid)
    out = ns.run_client(peer_server.socket)
    assert out["status"] == 200
    assert out["body"]["tokens"] == {"GITHUB_TOKEN": SECRETS["GITHUB_TOKEN"]}
    assert out["body"]["spiffe_id"] == "spiffe://flashpods.internal/job/job_peerworker01/worker"
    denied = ns.run_client(peer_server.socket, json.dumps({"tokens": ["ANTHROPIC_API_KEY"]}))
    assert denied["status"] == 403


def test_sub_agent_namespace_gets_agent_tokens(peer_server, podman, namespaces):
    ns = namespaces()
    podman.add_job("job_peeragent001", "sub_agent", pid=ns.init_pid)
    out = ns.run_client(peer_server.socket)
    assert out["status"] == 200 and out["body"]["tokens"] == SECRETS


def test_host_process_gets_401(peer_server, podman, namespaces):
    podman.add_job("job_peerworker02", "worker", pid=namespaces().init_pid)
    status, body, _ = exchange(peer_server.socket)
    assert status == 401 and body["check"] == "peer_container"


def test_ended_job_namespace_gets_nothing_even_if_cached(peer_server, podman, namespaces):
    ns = namespaces()
    podman.add_job("job_peerworker03", "worker", pid=ns.init_pid)
    assert ns.run_client(peer_server.socket)["status"] == 200  # now cached
    other = namespaces()  # a new namespace, unknown to Podman
    ns.stop()
    podman.containers["job_peerworker03"]["State"] = "exited"
    out = other.run_client(peer_server.socket)
    assert out["status"] == 401 and out["body"]["check"] == "peer_container"


def test_restarted_container_of_a_finished_job_is_not_attested(peer_server, podman, namespaces):
    ns = namespaces()
    podman.add_job("job_peerworker04", "worker", pid=ns.init_pid, FinishedAt="2026-11-23T10:00:00Z")
    out = ns.run_client(peer_server.socket)
    assert out["status"] == 401


def test_a_job_container_in_the_host_pid_namespace_is_never_used(peer_server, podman, namespaces):
    # As if a job ran with --pid=host: every host process would look like it.
    podman.add_job("job_peerhostpid1", "worker", pid=os.getpid())
    status, body, _ = exchange(peer_server.socket)
    assert status == 401


def test_namespace_shared_by_two_jobs_is_ambiguous(peer_server, podman, namespaces):
    ns = namespaces()
    podman.add_job("job_peershared01", "worker", pid=ns.init_pid)
    podman.add_job("job_peershared02", "sub_agent", pid=ns.init_pid)
    out = ns.run_client(peer_server.socket)
    assert out["status"] == 401 and "several jobs" in out["body"]["error"]


def test_job_of_another_instance_is_not_attested(peer_server, podman, namespaces):
    ns = namespaces()
    podman.add_job("job_peerforeign1", "sub_agent", pid=ns.init_pid, instance="other")
    assert ns.run_client(peer_server.socket)["status"] == 401


def test_podman_down_fails_closed(peer_server, podman, namespaces):
    ns = namespaces()
    podman.close()
    out = ns.run_client(peer_server.socket)
    assert out["status"] == 401 and out["body"]["check"] == "job_running"


def test_new_container_is_found_on_a_miss(peer_server, podman, namespaces):
    first = namespaces()
    podman.add_job("job_peerfirst001", "worker", pid=first.init_pid)
    assert first.run_client(peer_server.socket)["status"] == 200
    second = namespaces()
    podman.add_job("job_peersecond01", "sub_agent", pid=second.init_pid)
    out = second.run_client(peer_server.socket)
    assert out["status"] == 200 and out["body"]["job_id"] == "job_peersecond01"


def test_job_recreated_after_its_container_ended_stays_dead(peer_server, podman, namespaces):
    first = namespaces()
    podman.add_job("job_peerrecreat1", "worker", pid=first.init_pid)
    assert first.run_client(peer_server.socket)["status"] == 200
    first.stop()
    del podman.containers["job_peerrecreat1"]  # the API removed the finished job's container
    again = namespaces()  # someone re-creates a container with the same name and labels
    podman.add_job("job_peerrecreat1", "worker", pid=again.init_pid)
    podman.containers["job_peerrecreat1"]["Id"] = "f" * 64
    out = again.run_client(peer_server.socket)
    assert out["status"] == 401 and out["body"]["check"] == "peer_container"


def test_container_not_named_after_its_job_is_not_attested(peer_server, podman, namespaces):
    ns = namespaces()
    c = podman.add_job("job_peernamed001", "worker", pid=ns.init_pid)
    c["Name"] = "something-else"
    assert ns.run_client(peer_server.socket)["status"] == 401
