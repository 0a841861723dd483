"""The API's building blocks on their own: config, log decoding, safe opens, workspace diffs."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import pytest
from flashpods_api import artifacts, jobtree, logs, workspace_diff
from flashpods_api.config import ConfigError, from_dict, load
from flashpods_api.runtime import RunSpec, run_args

# -- config ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "words"),
    [
        ({"instanse": "x"}, "Unknown key 'instanse'"),
        ({"storage": {"upload": "/x"}}, "storage.'upload'"),
        ({"max_concurrent_jobs": 0}, "max_concurrent_jobs"),
        ({"max_concurrent_jobs": True}, "max_concurrent_jobs"),
        ({"default_timeout_s": 100, "max_timeout_s": 10}, "default_timeout_s"),
        ({"network_mode": "host"}, "network_mode"),
        ({"attestation": "none"}, "attestation"),
        ({"images": {"worker": "evil:1"}}, "images.allowed"),
        ({"sub_agent": {"command": "claude -p"}}, "sub_agent.command"),
        ({"allowed_peers": "10.0.0.2"}, "allowed_peers"),
        ({"retention": {"logs_s": -1}}, "retention.logs_s"),
    ],
)
def test_config_mistakes_are_named(raw, words):
    with pytest.raises(ConfigError, match=words.replace("(", r"\(").replace(".", r"\.")):
        from_dict(raw)


def test_config_file_errors(tmp_path, monkeypatch):
    monkeypatch.delenv("FLASHPODS_API_CONFIG", raising=False)
    with pytest.raises(ConfigError, match="--config"):
        load()
    bad = tmp_path / "api.json"
    bad.write_text("{nope")
    with pytest.raises(ConfigError, match="not valid JSON"):
        load(bad)
    with pytest.raises(ConfigError, match="Cannot read"):
        load(tmp_path / "missing.json")
    bad.write_text(json.dumps({"instance": "x", "limits": {"log_bytes": 10}}))
    cfg = load(bad)
    assert cfg.limits == {**cfg.limits, "log_bytes": 10} and cfg.kill_grace_s == 10


# -- logs -----------------------------------------------------------------------


J = "job_aaaaaaaaaaaa"  # logs only take real job ids


def _ctr(path: Path, *lines: str) -> None:
    with open(path, "a") as fh:
        for line in lines:
            fh.write(line + "\n")


def test_decoder_joins_partial_lines_and_keeps_spaces(tmp_path):
    path = tmp_path / f"{J}.ctr.log"
    _ctr(path, "T stdout P a b ", "T stderr F  c", "T stdout F ", "T stdout F tab\there")
    assert logs.read(tmp_path, J, 0, 100, 1000) == b"a b  c\n\ntab\there\n"


def test_decoder_holds_back_an_unfinished_line(tmp_path):
    path = tmp_path / f"{J}.ctr.log"
    path.write_bytes(b"T stdout F one\nT stdout F tw")
    decoder = logs.decoded_size(path)
    assert decoder.decoded == 4
    with open(path, "ab") as fh:
        fh.write(b"o\n")
    assert logs.decoded_size(path, decoder).decoded == 8


def test_finalize_caps_notes_and_is_idempotent(tmp_path):
    _ctr(tmp_path / f"{J}.ctr.log", *[f"T stdout F {'x' * 9}"] * 5)
    size, capped = logs.finalize(tmp_path, J, 25)
    data = (tmp_path / f"{J}.log").read_bytes()
    assert capped and data.startswith(b"x" * 9 + b"\n" + b"x" * 9 + b"\n" + b"xxxxx")
    assert data.endswith(logs.cap_note(25)) and size == len(data)
    assert not (tmp_path / f"{J}.ctr.log").exists()
    assert logs.finalize(tmp_path, J, 25) == (size, True)  # second run after a crash
    assert logs.read(tmp_path, J, 20, 5, 25) == b"xxxxx"


def test_live_reads_stop_at_the_cap(tmp_path):
    _ctr(tmp_path / f"{J}.ctr.log", *[f"T stdout F {'y' * 9}"] * 5)
    assert logs.read(tmp_path, J, 0, 1000, 15) == b"y" * 9 + b"\n" + b"y" * 5


@pytest.mark.parametrize(
    ("data", "kept"),
    [
        (b"abc", b"abc"),
        ("aé".encode(), "aé".encode()),
        ("aé".encode()[:2], b"a"),
        ("a€".encode()[:3], b"a"),
    ],
)
def test_trim_utf8(data, kept):
    assert logs.trim_utf8(data) == kept


# -- safe opens -----------------------------------------------------------------


@pytest.fixture
def tree(tmp_path):
    root = tmp_path / "art"
    (root / "d").mkdir(parents=True)
    (root / "d" / "f.txt").write_text("inside")
    (tmp_path / "outside.txt").write_text("secret")
    os.symlink(tmp_path / "outside.txt", root / "abs")
    os.symlink("../outside.txt", root / "rel")
    os.symlink(tmp_path, root / "up")
    os.mkfifo(root / "fifo")
    return root


@pytest.mark.parametrize("use_openat2", [True, False])
def test_open_beneath_serves_regular_files_only(tree, use_openat2, monkeypatch):
    monkeypatch.setattr(jobtree, "_have_openat2", use_openat2)
    fd = artifacts.open_beneath(tree, "d/f.txt")
    assert os.read(fd, 100) == b"inside"
    os.close(fd)
    for path, reason in (
        ("abs", "symlink"),
        ("rel", "symlink"),
        ("up/outside.txt", "symlink"),
        ("fifo", "fifo"),
    ):
        with pytest.raises(artifacts.NotServed) as caught:
            artifacts.open_beneath(tree, path)
        assert caught.value.reason == reason, path
    with pytest.raises(artifacts.NotServed, match="missing"):
        artifacts.open_beneath(tree, "d/none")
    with pytest.raises(artifacts.NotServed, match="bad path"):
        artifacts.open_beneath(tree, "../outside.txt")


def test_openat2_refuses_to_leave_the_root(tree):
    root_fd = os.open(tree, os.O_RDONLY | os.O_DIRECTORY)
    try:
        with pytest.raises(OSError) as caught:
            jobtree.openat2(root_fd, "../outside.txt", os.O_RDONLY)
        assert caught.value.errno == errno.EXDEV
    finally:
        os.close(root_fd)


def test_relpath_rules():
    assert artifacts.valid_relpath("a/b.txt")
    for bad in ("", "/a", "a//b", "a/./b", "a/../b", "..", "a\0b", "x" * 5000):
        assert not artifacts.valid_relpath(bad), bad


# -- workspace diff -------------------------------------------------------------


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


# -- run arguments --------------------------------------------------------------


def test_run_args_apply_requested_limits_and_the_spire_socket():
    spec = RunSpec(
        job_id="job_aaaaaaaaaaaa", kind="sub_agent", instance="i", image="img", argv=["x"],
        env={"A": "1"}, workspace="/w", artifacts="/a", log_path="/l/job.ctr.log",
        helper_path="/h", token_socket="/t/token.sock", network_mode="bridge",
        agent_socket="/run/spire/agent.sock", resources={"memory": 512, "cpus": 1.5, "pids": 99},
    )  # fmt: skip
    args = run_args(spec)
    joined = " ".join(args)
    assert "--memory 512m" in joined and "--cpus 1.5" in joined and "--pids-limit 99" in joined
    assert "source=/run/spire/agent.sock,destination=/run/spire/sockets/agent.sock" in joined
    assert "--network bridge" in joined and "--env A=1" in joined
    assert "--log-opt path=/l/job.ctr.log" in joined
    assert "input" not in joined  # no upload, no /flashpods/input mount


# -- entry points ---------------------------------------------------------------


def test_entry_points_refuse_a_bad_config_with_the_reason(tmp_path):
    from flashpods_api.cli import api_main, reaper_main

    for main in (api_main, reaper_main):
        with pytest.raises(SystemExit, match="Cannot read the API configuration"):
            main(["--config", str(tmp_path / "missing.json")])


def test_only_one_reaper_per_database(tmp_path):
    from flashpods_api.reaper import hold_lock

    first = hold_lock(str(tmp_path / "db"))
    try:
        with pytest.raises(SystemExit, match="Another flashpods-reaper"):
            hold_lock(str(tmp_path / "db"))
    finally:
        os.close(first)
    os.close(hold_lock(str(tmp_path / "db")))  # free again once the first one is gone
