"""Downloads: artifacts.tar has an exact Content-Length; raw log pages from the final log."""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

from flashpods_api import artifacts


def _artifacts(host, job_id: str) -> Path:
    root = Path(host.raw["storage"]["artifacts"]) / job_id
    (root / "sub").mkdir(parents=True, exist_ok=True)
    (root / "a.txt").write_bytes(b"a" * 513)
    (root / "sub" / "big.bin").write_bytes(os.urandom(3 * artifacts.TAR_CHUNK + 17))
    (root / "empty").write_bytes(b"")
    return root


def test_artifacts_tar_announces_its_exact_length(host):
    job = host.job()
    root = _artifacts(host, job["id"])
    resp = host.get(f"/jobs/{job['id']}/artifacts.tar")
    assert int(resp.headers["Content-Length"]) == len(resp.data)
    with tarfile.open(fileobj=io.BytesIO(resp.data)) as tar:
        assert sorted(tar.getnames()) == ["a.txt", "empty", "sub/big.bin"]
        assert tar.extractfile("sub/big.bin").read() == (root / "sub" / "big.bin").read_bytes()


def test_a_member_that_changes_after_the_plan_keeps_the_promised_length(host, tmp_path):
    job = host.job()
    root = _artifacts(host, job["id"])
    members, length = artifacts.tar_plan(host.config.artifacts_dir, job["id"], None)
    (root / "a.txt").write_bytes(b"short")  # shrank: padded with zeros
    (root / "empty").write_bytes(b"written late")  # grew: cut at the planned size
    (root / "sub" / "big.bin").unlink()
    os.symlink("/etc/passwd", root / "sub" / "big.bin")  # now a link: zeros, never followed
    data = b"".join(artifacts.stream_tar(members))
    assert len(data) == length
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        assert tar.extractfile("a.txt").read() == b"short" + b"\0" * 508
        assert tar.extractfile("empty").read() == b""
        assert set(tar.extractfile("sub/big.bin").read()) == {0}


def test_raw_log_pages_of_a_final_log_are_exact(host):
    job = host.job()
    stream = os.urandom(50_000).replace(b"\n", b" ")
    host.write_ctr_log(job["id"], ["2026-01-01T00:00:00.0+00:00 stdout P " + "x" * 10])
    host.runtime.exit(job["id"], 0)
    host.reaper.tick()
    final = Path(host.raw["storage"]["logs"]) / f"{job['id']}.log"
    final.write_bytes(stream)  # the final log is what pages are cut from
    got, offset = b"", 0
    while True:
        resp = host.get(f"/jobs/{job['id']}/logs?format=raw&limit=7000&offset={offset}")
        assert resp.status_code == 200
        assert int(resp.headers["Content-Length"]) == len(resp.data) <= 7000
        got += resp.data
        offset = int(resp.headers["X-Flashpods-Next-Offset"])
        if not resp.data:
            break
    assert got == stream and offset == len(stream)
    past = host.get(f"/jobs/{job['id']}/logs?format=raw&offset=999999")
    assert past.data == b"" and past.headers["X-Flashpods-Next-Offset"] == "999999"
