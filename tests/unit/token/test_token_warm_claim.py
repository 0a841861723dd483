"""Warm containers (created before a job claims them) are no job until the API hands one
its command: `is_live_job` refuses them until then (tests/integration/api covers the real
exchange from a warm container)."""

from __future__ import annotations

from pathlib import Path

from flashpods_token.podman import ZERO_TIME, claimed, is_live_job


def _inspect(control: Path | None, warm: bool = True) -> dict:
    labels = {"flashpods.instance": "i", "flashpods.job": "job_a", "flashpods.kind": "worker"}
    if warm:
        labels["flashpods.warm"] = "1"
    mounts = [{"Type": "bind", "Source": "/elsewhere", "Destination": "/workspace"}]
    if control is not None:
        mounts.append({"Type": "bind", "Source": str(control), "Destination": "/flashpods/control"})
    return {
        "Name": "job_a",
        "State": {"Running": True, "Status": "running", "FinishedAt": ZERO_TIME, "Pid": 42},
        "Config": {"Labels": labels},
        "Mounts": mounts,
    }


def test_unclaimed_warm_container_is_not_a_live_job(tmp_path):
    data = _inspect(tmp_path)
    assert not claimed(data)
    assert not is_live_job(data, "i", "job_a")
    assert not is_live_job(data, "i", "job_a", pid=42)


def test_handed_over_warm_container_is_a_live_job(tmp_path):
    (tmp_path / "command").write_bytes(b"flashpods-command-1\0")
    data = _inspect(tmp_path)
    assert claimed(data)
    assert is_live_job(data, "i", "job_a", pid=42)


def test_a_link_or_dir_named_command_does_not_count(tmp_path):
    (tmp_path / "target").write_text("x")
    (tmp_path / "command").symlink_to(tmp_path / "target")
    assert not claimed(_inspect(tmp_path))
    other = tmp_path / "other"
    (other / "command").mkdir(parents=True)
    assert not claimed(_inspect(other))


def test_warm_label_without_control_mount_is_refused_and_cold_jobs_are_unaffected(tmp_path):
    assert not claimed(_inspect(None))
    assert claimed(_inspect(None, warm=False))
    assert is_live_job(_inspect(None, warm=False), "i", "job_a")
