"""Host state, read with testinfra: users, who runs what, socket modes, listeners (V13)."""

from __future__ import annotations

import pwd
import stat
from pathlib import Path

import pytest
import testinfra
from topology import API_PORT, HOST_TUNNEL, RSYNC_PORT


@pytest.fixture(scope="module")
def machine():
    return testinfra.get_host("local://")


def test_job_user_is_unprivileged_and_owns_nothing_of_the_api(machine, devhost):
    job = machine.user("flashpods")
    assert job.uid != 0
    assert "flashpods-api" not in job.groups
    assert "flashpods-token" not in job.groups
    assert "sudo" not in job.groups
    # The API and token users drive the sandbox through group flashpods.
    assert "flashpods" in machine.user("flashpods-api").groups
    assert "flashpods" in machine.user("flashpods-token").groups
    token_file = machine.file(str(devhost.paths.api_token))
    assert token_file.user == "flashpods-api"
    assert token_file.mode & 0o077 == 0, "the API token is the API user's alone"
    assert machine.file(str(devhost.paths.db_dir)).mode & 0o077 == 0


def test_sockets_are_reachable_by_group_flashpods_only(machine, devhost):
    for path in (devhost.paths.token_socket, devhost.proxy_socket, devhost.paths.podman_socket):
        sock = machine.file(str(path))
        assert sock.is_socket
        assert sock.group == "flashpods"
        assert sock.mode & 0o007 == 0, f"{path} must not be open to others"
        assert stat.S_IMODE(sock.mode) & 0o060 == 0o060


def _processes_with_env(entry: str) -> dict[int, tuple[str, str]]:
    """{pid: (user, command line)} of every process whose environment has `entry`."""
    found = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if entry.encode() not in (proc / "environ").read_bytes().split(b"\0"):
                continue
            uid = int((proc / "status").read_text().split("\nUid:")[1].split()[0])
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except (OSError, IndexError):
            continue  # exited meanwhile
        found[int(proc.name)] = (pwd.getpwuid(uid).pw_name, cmdline)
    return found


def test_services_run_as_their_own_users(devhost):
    paths = devhost.paths
    expected = {
        f"FLASHPODS_API_CONFIG={paths.api_config}": "flashpods-api",  # gunicorn and reaper
        f"FLASHPODS_TOKEN_CONFIG={paths.token_config}": "flashpods-token",
    }
    for entry, user in expected.items():
        found = _processes_with_env(entry)
        assert found, f"no process with {entry}"
        others = {pid: p for pid, p in found.items() if p[0] != user}
        assert not others, f"{entry} processes not run by {user}: {others}"


def test_api_and_rsync_listen_on_the_tunnel_address_only(machine, topology, devhost):
    ns = topology.ns["host"]
    listening = machine.check_output(f"nsenter --net=/run/netns/{ns} ss -ltnH")
    local = {line.split()[3] for line in listening.splitlines()}
    assert f"{HOST_TUNNEL}:{API_PORT}" in local
    assert f"{HOST_TUNNEL}:{RSYNC_PORT}" in local
    wildcard = {f"0.0.0.0:{API_PORT}", f"*:{API_PORT}", f"0.0.0.0:{RSYNC_PORT}", f"*:{RSYNC_PORT}"}
    assert not local & wildcard


def test_V13_job_containers_are_rootless_as_flashpods_with_keep_id(machine, api_jobs, devhost):
    job_id = api_jobs.start("id -u; id -g; sleep 60")
    try:
        pid = devhost.podman("inspect", "--format", "{{.State.Pid}}", job_id).stdout.strip()
        assert pid.isdigit() and pid != "0", pid
        # The container's process on the host: uid flashpods, not root, nothing else.
        status = machine.file(f"/proc/{pid}/status").content_string
        uids = next(line.split()[1:] for line in status.splitlines() if line.startswith("Uid:"))
        assert set(uids) == {str(machine.user("flashpods").uid)}
        # keep-id: inside, the job is the same uid; the user namespace maps it 1:1.
        inside = api_jobs.exec(job_id, "id -u")
        assert inside.strip() == str(machine.user("flashpods").uid)
        uid_map = machine.file(f"/proc/{pid}/uid_map").content_string.split()
        assert "0" not in uid_map[1::3], "host root is not mapped into the container"
        # keep-id itself, read from the kernel rather than from Podman's record of the
        # create command (a container made through Podman's REST API has none, and
        # 4.3's inspect says "private" for it): the job uid maps to itself, one id wide.
        uid = str(machine.user("flashpods").uid)
        rows = [tuple(uid_map[i : i + 3]) for i in range(0, len(uid_map), 3)]
        assert (uid, uid, "1") in rows, rows
        rootless = devhost.podman("info", "--format", "{{.Host.Security.Rootless}}")
        assert rootless.stdout.strip() == "true"
    finally:
        api_jobs.kill(job_id)
