"""The credential proxy on a real dev host: a worker's curl reaches stand-in GitHub with
the token injected, while the job itself only ever holds a placeholder (issue 15).

Attacks kept as tests: another job's placeholder, a placeholder the role may not use,
the placeholder towards a host with no rule, CONNECT to the metadata service, private
ranges, the host itself; a host process that is no job; a scan of the container for
any 8-character piece of the key.
"""

from __future__ import annotations

import base64
import json
import re
import socket
import subprocess
from pathlib import Path

import pytest
from netlab import NetnsThread
from proxy_support import AGENT_IMAGE, MODEL_HOST

pytestmark = [pytest.mark.root, pytest.mark.slow]

SOCK = "/run/flashpods/proxy.sock"

# Run inside the job (the agent image: curl, python3).
JOB_SCRIPT = (Path(__file__).with_name("worker_job.sh")).read_text()


def pieces(secret: str) -> set[str]:
    return {secret[i : i + 8] for i in range(len(secret) - 7)}


def leaks(blob: bytes, secret: str) -> list[str]:
    return sorted(p for p in pieces(secret) if p.encode() in blob)


def test_worker_curl_gets_token_injected_and_never_holds_it(proxy_host, origin, lab):
    api, keys = proxy_host()
    github_token = keys["GITHUB_TOKEN"]
    job = api.spawn(kind="worker", command=JOB_SCRIPT, image=AGENT_IMAGE, timeout_s=300)
    final = api.wait(job["id"], timeout=300)
    log = api.logs(job["id"])
    text = log.decode(errors="replace")
    assert final["status"] == "succeeded", text[-3000:]
    placeholder = f"fpph.GITHUB_TOKEN.{job['id']}"
    lines = set(text.splitlines())

    # The token arrives upstream, only at its own hosts, in both header shapes.
    assert "api:200" in lines and "git:200" in lines, text
    (user,) = origin.seen("/user")
    assert user["headers"]["authorization"] == f"token {github_token}"
    (refs,) = origin.seen("/o/r.git/info/refs")
    basic = refs["headers"]["authorization"].split(" ", 1)[1]
    assert base64.b64decode(basic).decode() == f"x-access-token:{github_token}"
    (shape,) = origin.seen("/connect-shape")
    assert shape["headers"]["authorization"] == f"Bearer {github_token}"
    assert "connect-shape:200" in lines
    # To a host with no rule the placeholder arrives unchanged.
    (other,) = origin.seen("/echo")
    assert other["headers"]["authorization"] == f"token {placeholder}"

    # Refusals the job can read, and that never reach upstream.
    assert "foreign:403" in lines and "foreign_placeholder" in text
    assert "notgranted:403" in lines and "not_granted" in text
    assert "vhost:400" in lines and "host_mismatch" in text
    assert not origin.seen("/foreign") and not origin.seen("/v1/messages")
    assert not origin.seen("/vhost")
    (echo,) = origin.seen("/reflect-header")
    assert echo["headers"]["x-echo"] == placeholder and "authorization" not in echo["headers"]
    assert "smuggle:400" in lines and not origin.seen("/smuggle")
    for target in ("169.254.169.254:80", "10.99.0.1:443", "192.168.99.1:443",
                   "172.16.99.1:443", "198.51.100.1:8080", "127.0.0.1:80",
                   "[64:ff9b::a9fe:a9fe]:80", "metadata.google.internal:80"):  # fmt: skip
        assert f"connect {target} -> 403" in lines, (target, text)
    assert "connect 203.0.113.10:443 -> 200" in lines  # a public address: tunnelled

    # Nothing in the container holds the key or any 8-character piece of it.
    host = api.host
    blobs = {
        "log": log,
        "environ": api.artifact(job["id"], "environ.txt"),
        "tmp": api.artifact(job["id"], "tmp.tar"),
        "inspect": host.podman("inspect", job["id"]).stdout.encode(),
    }
    assert placeholder.encode() in blobs["environ"]  # the scan saw the job's environment
    files = subprocess.run(
        ["grep", "-rl", "-F", "-e", github_token[4:12], str(host.paths.root / "workspaces")],
        capture_output=True,
    )
    assert files.stdout == b""
    for name, blob in blobs.items():
        for secret_name, secret in keys.items():
            found = leaks(blob, re.split(r"[_-]", secret)[-1])  # the random part
            assert not found, f"{secret_name} pieces in {name}: {found}"


def test_placeholder_of_an_ended_job_is_refused(proxy_host, origin, lab):
    api, _keys = proxy_host()
    first = api.spawn(kind="worker", command="echo $GITHUB_TOKEN", image=AGENT_IMAGE)
    api.wait(first["id"])
    stolen = f"fpph.GITHUB_TOKEN.{first['id']}"
    assert stolen.encode() in api.logs(first["id"])
    script = (
        "curl -sS --unix-socket /run/flashpods/proxy.sock http://p/ca.pem -o /tmp/ca.pem; "
        "curl -sS --cacert /tmp/ca.pem --unix-socket /run/flashpods/proxy.sock "
        f"-H 'Authorization: token {stolen}' https://api.github.com/stolen "
        "-w '\\nstolen:%{http_code}\\n'"
    )
    second = api.spawn(kind="worker", command=script, image=AGENT_IMAGE)
    api.wait(second["id"])
    text = api.logs(second["id"]).decode(errors="replace")
    assert "stolen:403" in text and "foreign_placeholder" in text, text
    assert not origin.seen("/stolen")

    # A host process (not a job at all) gets nothing either, placeholder or not.
    def from_host() -> bytes:
        with socket.socket(socket.AF_UNIX) as s:
            s.connect(str(api.host.proxy_socket))
            s.sendall(f"CONNECT {MODEL_HOST}:443 HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            return s.recv(4096)

    answer = NetnsThread(lab.path(lab.host))
    try:
        head = answer.call(from_host)
    finally:
        answer.close()
    assert head.startswith(b"HTTP/1.1 403") and b"unauthenticated" in head, head
    record = json.loads(head.split(b"\r\n\r\n", 1)[1])
    assert record["by"] == "flashpods-proxy"


def test_one_job_holding_its_connection_cap_does_not_starve_another(proxy_host, origin):
    api, keys = proxy_host(proxy={"read_timeout_s": 60, "max_connections_per_job": 16})
    hog_code = Path(__file__).with_name("hog_job.py").read_text()
    hog = api.spawn(
        kind="worker",
        command=f"cat > /tmp/hog.py <<'PY'\n{hog_code}PY\npython3 /tmp/hog.py 16 40",
        image=AGENT_IMAGE,
        timeout_s=300,
    )
    api.wait_for("the hog to hold its connections", lambda: b"holding" in api.logs(hog["id"]))
    assert b"extra:HTTP/1.1 503" in api.logs(hog["id"])
    other = api.spawn(
        kind="worker",
        command='curl -sS -H "Authorization: token $GITHUB_TOKEN" '
        "https://api.github.com/other-job -o /dev/null -w 'other:%{http_code}\\n'",
        image=AGENT_IMAGE,
    )
    api.wait(other["id"])
    assert b"other:200" in api.logs(other["id"])
    assert b"released" not in api.logs(hog["id"])  # it was still holding all along
    (seen,) = origin.seen("/other-job")
    assert seen["headers"]["authorization"] == f"token {keys['GITHUB_TOKEN']}"
    api.kill(hog["id"])


FLOOD = r"""
python3 - <<'PY'
import socket
for _ in range(200):
    s = socket.socket(socket.AF_UNIX)
    s.connect("/run/flashpods/proxy.sock")
    s.sendall(b"CONNECT 169.254.169.254:80 HTTP/1.1\r\nHost: x\r\n\r\n")
    s.recv(4096)
    s.close()
print("flooded")
PY
"""


def test_a_job_cannot_flood_the_proxy_log(proxy_host):
    api, _keys = proxy_host()
    job = api.spawn(kind="worker", command=FLOOD, image=AGENT_IMAGE, timeout_s=300)
    api.wait(job["id"])
    assert b"flooded" in api.logs(job["id"])
    api.host.kill("proxy")  # SIGTERM: what was held back is written with its counts
    api.wait_for("the proxy to stop", lambda: not api.host._services["proxy"].running)
    lines = [
        json.loads(line)
        for line in api.host.paths.service_log("proxy").read_text().splitlines()
        if line.startswith("{") and job["id"] in line
    ]
    written = [r for r in lines if r["outcome"] != "suppressed"]
    (held,) = [r for r in lines if r["outcome"] == "suppressed"]
    assert len(written) <= 20 and all(r["code"] == "egress_refused" for r in written)
    assert len(written) + held["counts"]["refused"] == 200
