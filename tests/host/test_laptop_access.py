"""V1, V2, V4: the laptop uses the API and rsync through WireGuard; nobody else does."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import pytest
from topology import HOST_PUBLIC, HOST_TUNNEL, LAPTOP_TUNNEL, RSYNC_PORT


def _job_count(api_jobs) -> int:
    got = api_jobs.http("GET", "/jobs?limit=500")
    assert got["status"] == 200, got
    return len(json.loads(got["body"])["jobs"])


def test_V1_laptop_reaches_api_over_wireguard_with_bearer_token(api_jobs, devhost):
    got = api_jobs.http("GET", "/jobs")
    assert got["status"] == 200, got
    assert "jobs" in json.loads(got["body"])
    # It really went through the tunnel: the laptop's only route to 10.0.0.1 is wg.
    route = api_jobs.t.sh("laptop", "ip", "route", "get", HOST_TUNNEL).stdout
    assert f"dev {api_jobs.t.wg_laptop}" in route


@pytest.mark.parametrize(
    "token",
    [None, "wrong-token", "Bearer", ""],
    ids=["missing", "wrong", "word-bearer", "empty"],
)
def test_V2_api_refuses_missing_or_wrong_bearer_token(api_jobs, token):
    before = _job_count(api_jobs)
    # "" means "the right token" in http(); use a blank header value instead.
    sent = " " if token == "" else token
    got = api_jobs.http("POST", "/jobs", {"kind": "worker", "command": "true"}, token=sent)
    assert got["status"] == 401, got
    assert "error" in json.loads(got["body"])
    assert _job_count(api_jobs) == before, "a refused request created a job"


@pytest.fixture
def sources(topology):
    """A world-readable source tree per uploader (rsync runs as other users too)."""
    base = Path(tempfile.mkdtemp(prefix=f"fp{topology.tag}-src-", dir="/var/tmp"))
    os.chmod(base, 0o755)
    try:
        yield base
    finally:
        shutil.rmtree(base)


def _upload(t, sources: Path, role: str, url: str, user: str | None = None):
    src = sources / role
    (src / "pkg").mkdir(parents=True, exist_ok=True)
    (src / "pkg" / "data.txt").write_text(f"from {role}\n")
    for path in (src, src / "pkg"):
        os.chmod(path, 0o755)
    os.chmod(src / "pkg" / "data.txt", 0o644)
    argv = ["rsync", "-rt", "--contimeout=5", "--timeout=10", f"{src}/", url]
    if user:
        argv = ["runuser", "-u", user, "--", *argv]
    return t.sh(role, *argv, check=False, timeout=60)


def test_V4_rsync_accepts_uploads_only_from_the_laptop(api_jobs, devhost, sources):
    t = api_jobs.t
    got = api_jobs.http("POST", "/uploads")
    assert got["status"] == 201, got
    upload = json.loads(got["body"])
    url = upload["rsync_url"]
    assert url.startswith(f"rsync://{HOST_TUNNEL}:{RSYNC_PORT}/uploads/")
    landed = devhost.paths.uploads / upload["upload_id"] / "pkg" / "data.txt"

    # A third host on the link, to the tunnel address and to the public address.
    stranger = _upload(t, sources, "stranger", url)
    assert stranger.returncode != 0
    assert "refused" in stranger.stderr, stranger.stderr
    public = url.replace(HOST_TUNNEL, HOST_PUBLIC)
    assert _upload(t, sources, "stranger", public).returncode != 0
    # The job uid on the host itself (a container escape) is refused too.
    escaped = _upload(t, sources, "host", url, user="flashpods")
    assert escaped.returncode != 0
    assert not landed.exists()

    # Matching allow: the laptop, through the tunnel.
    laptop = _upload(t, sources, "laptop", url)
    assert laptop.returncode == 0, laptop.stderr
    assert landed.read_text() == "from laptop\n"
    assert LAPTOP_TUNNEL in devhost.log("rsyncd", 200)
