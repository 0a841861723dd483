"""The marking rule alone keeps every job uid off the API and rsyncd on loopback.

In the full ruleset a job's connect to a local port is refused twice: by job_egress in
the output chain, and because its socket never gets the host's conntrack mark, so the
input chain resets it. tests/host sees only the first. Here the jump to job_egress is
taken out, the rest of the rendered ruleset is loaded into a throwaway network
namespace, and real sockets of the job uid, of subordinate uids and of root connect to
a listener on the API and rsync ports: only root's may get through.
"""

import json
import subprocess
import uuid

import pytest
from flashpods_devhost.render import load_firewall, render_firewall

JOB_UID = 1001
SUBUIDS = [(100000, 165535), (300000, 300009)]
VALUES = dict(
    wg_if="wg0",
    laptop_addr="10.0.0.2",
    api_port=8080,
    rsync_port=873,
    job_uid=JOB_UID,
    job_subuids=SUBUIDS,
    resolvers=[],
)
PYTHON = "/usr/bin/python3"
LISTENER = """
import selectors, socket
sel = selectors.DefaultSelector()
for port in (8080, 873):
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", port))
    s.listen(16)
    sel.register(s, selectors.EVENT_READ)
print("ready", flush=True)
while True:
    for key, _ in sel.select():
        conn, _ = key.fileobj.accept()
        conn.sendall(b"answered\\n")
        conn.close()
"""
CONNECT = """
import json, socket, sys
out = {}
for port in (8080, 873):
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=3) as s:
            out[port] = s.recv(20).decode().strip()
    except OSError as error:
        out[port] = type(error).__name__
print(json.dumps(out))
"""


def _without_job_egress(text: str) -> str:
    lines = [line for line in text.splitlines() if "jump job_egress" not in line]
    assert len(lines) == len(text.splitlines()) - 1, "expected one jump to job_egress"
    return "\n".join(lines) + "\n"


@pytest.fixture
def netns():
    name = f"fp-mark-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    listener = None
    try:
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
        load_firewall(_without_job_egress(render_firewall(**VALUES)), netns=name)
        listener = subprocess.Popen(
            ["nsenter", f"--net=/run/netns/{name}", PYTHON, "-c", LISTENER],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert listener.stdout.readline().strip() == "ready"
        yield name
    finally:
        if listener is not None:
            listener.kill()
            listener.wait()
            listener.stdout.close()
        subprocess.run(["ip", "netns", "delete", name], check=True)


def _connect_as(netns: str, uid: int) -> dict:
    ids = ["--reuid", str(uid), "--regid", str(uid), "--clear-groups"]
    result = subprocess.run(
        ["nsenter", f"--net=/run/netns/{netns}", "setpriv", *ids, "--", PYTHON, "-c", CONNECT],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    return json.loads(result.stdout)


@pytest.mark.root  # network namespace, nftables, switching uids
def test_only_sockets_outside_job_uids_get_the_host_mark(netns):
    got = {uid: _connect_as(netns, uid) for uid in (0, 65534, JOB_UID, 100000, 165535, 300009)}
    # The host's own processes (root, any other account) reach both ports.
    assert got[0] == {"8080": "answered", "873": "answered"}, got
    assert got[65534] == {"8080": "answered", "873": "answered"}, got
    # Every job uid is reset at once by the input chain: no mark.
    for uid in (JOB_UID, 100000, 165535, 300009):
        assert got[uid] == {"8080": "ConnectionRefusedError", "873": "ConnectionRefusedError"}, (
            uid,
            got,
        )
