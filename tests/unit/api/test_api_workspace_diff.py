"""workspace_diff.py: what a job changed in its workspace, within the byte cap."""

from __future__ import annotations

import json
import os

from flashpods_api import workspace_diff


def test_workspace_diff_handles_links_binaries_and_the_byte_cap(tmp_path):
    base, work, out = tmp_path / "base", tmp_path / "work", tmp_path / "out"
    base.mkdir()
    work.mkdir()
    (base / "bin").write_bytes(b"\0\1")
    (work / "bin").write_bytes(b"\0\2")
    os.symlink("/etc/passwd", work / "link")
    (work / "big").write_bytes(b"z" * 5000)
    (work / ".flashpods-ready").write_text("")
    os.mkfifo(work / "pipe")
    summary = workspace_diff.record(
        base, work, out, byte_cap=1000
    )  # bin fits (2 bytes + a 512-byte header), big not
    changes = json.loads((out / "changes.json").read_text())
    assert changes["modified"] == ["bin"] and changes["added"] == ["big"]
    assert changes["links"] == {"link": "/etc/passwd"} and changes["skipped"] == ["pipe"]
    assert changes["truncated"] is True and not (out / "files" / "big").exists()
    assert (out / "files" / "bin").read_bytes() == b"\0\2"
    assert (out / "changes.diff").read_text() == ""  # binary files are listed, not diffed
    assert summary["modified"] == 1 and summary["links"] == 1


def test_workspace_diff_without_upload_lists_everything_added(tmp_path):
    work = tmp_path / "work"
    (work / "a").mkdir(parents=True)
    (work / "a" / "new.txt").write_text("x\n")
    workspace_diff.record(None, work, tmp_path / "out", byte_cap=10**6)
    changes = json.loads((tmp_path / "out" / "changes.json").read_text())
    assert changes["added"] == ["a/new.txt"]
    assert "+++ b/a/new.txt" in (tmp_path / "out" / "changes.diff").read_text()
