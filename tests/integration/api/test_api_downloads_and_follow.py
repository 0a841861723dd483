"""Through real gunicorn: sendfile downloads (raw log pages, single artifacts), the tar's
Content-Length, and follow=1 waking on a container's write instead of a fixed poll."""

from __future__ import annotations

import hashlib
import io
import tarfile
import time

import pytest
from api_it_support import Api

pytestmark = pytest.mark.slow

MIB = 1024 * 1024


@pytest.fixture
def api(devhost_factory):
    return Api(devhost_factory())


def test_raw_log_pages_and_artifacts_arrive_whole_through_sendfile(api):
    command = (
        "i=0; while [ $i -lt 3000 ]; do echo line-$i-abcdefghijklmnopqrstuvwxyz; i=$((i+1)); done;"
        f" head -c {3 * MIB + 5} /dev/urandom > /artifacts/big.bin; echo small > /artifacts/s.txt"
    )
    job = api.submit(command)
    assert api.wait(job["id"])["status"] == "succeeded"
    expected = "".join(f"line-{i}-abcdefghijklmnopqrstuvwxyz\n" for i in range(3000)).encode()
    got, offset = b"", 0
    while True:
        resp = api.get(
            f"/jobs/{job['id']}/logs", params={"offset": offset, "limit": 9999, "format": "raw"}
        )
        assert resp.status_code == 200 and len(resp.content) <= 9999
        assert int(resp.headers["Content-Length"]) == len(resp.content)
        got += resp.content
        offset = int(resp.headers["X-Flashpods-Next-Offset"])
        if resp.headers["X-Flashpods-Final"] == "true" and not resp.content:
            break
    assert got == expected

    big = api.get(f"/jobs/{job['id']}/artifacts/big.bin")
    listed = {a["path"]: a for a in api.get(f"/jobs/{job['id']}/artifacts").json()["artifacts"]}
    assert len(big.content) == 3 * MIB + 5 == int(big.headers["Content-Length"])
    assert hashlib.sha256(big.content).hexdigest() == listed["big.bin"]["sha256"]

    tar = api.get(f"/jobs/{job['id']}/artifacts.tar")
    assert int(tar.headers["Content-Length"]) == len(tar.content)
    assert "chunked" not in tar.headers.get("Transfer-Encoding", "")
    with tarfile.open(fileobj=io.BytesIO(tar.content)) as archive:
        assert archive.extractfile("big.bin").read() == big.content
        assert archive.extractfile("s.txt").read() == b"small\n"


def test_follow_delivers_a_line_as_soon_as_it_is_written(api):
    job = api.submit("sleep 60")
    api.wait(job["id"], statuses=("running",))
    live = api.host.paths.logs / f"{job['id']}.ctr.log"
    deadline = time.monotonic() + 20
    while not live.exists():
        assert time.monotonic() < deadline, "conmon never created the live log"
        time.sleep(0.05)
    latencies = []
    with api.get(f"/jobs/{job['id']}/logs", params={"follow": 1}, stream=True, timeout=60) as resp:
        chunks = resp.iter_content(None)
        for i in range(10):
            time.sleep(0.25)  # idle long enough for any poll to have backed off
            written = time.monotonic()
            with open(live, "ab") as fh:  # what conmon does for a line the job prints
                fh.write(f"2026-01-01T00:00:00.000000000+00:00 stdout F probe-{i}\n".encode())
            assert next(chunks) == f"probe-{i}\n".encode()
            latencies.append(time.monotonic() - written)
        api.post(f"/jobs/{job['id']}/kill")
    latencies.sort()
    # A 200 ms poll gives a median near 100 ms; a woken follower answers in a few ms.
    assert latencies[len(latencies) // 2] < 0.05, latencies
