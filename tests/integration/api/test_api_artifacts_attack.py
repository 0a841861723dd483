"""A job that plants links and a FIFO in /artifacts gets none of them served, and nothing hangs."""

from __future__ import annotations

import io
import tarfile
import time

import pytest
from api_it_support import Api

pytestmark = pytest.mark.slow


def test_planted_links_and_fifo_are_never_served(devhost_factory):
    host = devhost_factory()
    api = Api(host)
    victim = api.submit("echo victim-secret > /artifacts/private.txt")
    assert api.wait(victim["id"])["status"] == "succeeded"
    targets = {
        "db": str(host.paths.db),
        "token": str(host.paths.api_token),
        "environ": "/proc/self/environ",
        "other": str(host.paths.artifacts / victim["id"] / "private.txt"),
        "otherdir": str(host.paths.artifacts / victim["id"]),
        "relative": f"../{victim['id']}/private.txt",
    }
    plant = "; ".join(f"ln -s {target} /artifacts/{name}" for name, target in targets.items())
    plant += "; mkdir /artifacts/d && ln -s /etc /artifacts/d/etc; mkfifo /artifacts/pipe"
    plant += "; echo ok > /artifacts/real.txt"
    job = api.submit(plant)
    assert api.wait(job["id"])["status"] == "succeeded"
    token = host.api_token

    started = time.monotonic()
    listing = api.get(f"/jobs/{job['id']}/artifacts", timeout=10).json()
    assert [a["path"] for a in listing["artifacts"] if not a["path"].startswith("_workspace/")] == [
        "real.txt"
    ]
    skipped = {s["path"]: s["reason"] for s in listing["skipped"]}
    assert skipped == {**{name: "symlink" for name in targets}, "d/etc": "symlink", "pipe": "fifo"}

    for name in [*targets, "d/etc/passwd", "otherdir/private.txt", "pipe"]:
        resp = api.get(f"/jobs/{job['id']}/artifacts/{name}", timeout=10)
        assert resp.status_code == 404, (name, resp.status_code)
        assert "victim-secret" not in resp.text and token not in resp.text

    tar_bytes = api.get(f"/jobs/{job['id']}/artifacts.tar", timeout=10).content
    with tarfile.open(fileobj=io.BytesIO(tar_bytes)) as tar:
        names = [n for n in tar.getnames() if not n.startswith("_workspace/")]
    assert names == ["real.txt"]
    assert b"victim-secret" not in tar_bytes and token.encode() not in tar_bytes
    assert b"SQLite format" not in tar_bytes
    assert time.monotonic() - started < 10  # the FIFO never blocked a reader
