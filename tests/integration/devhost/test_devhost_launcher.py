"""DevHost starts a whole host from nothing, runs a real job, and leaves nothing behind."""

from __future__ import annotations

import grp
import pwd
import signal
import stat
from pathlib import Path

import requests
from devhost_client import Client
from flashpods_devhost import probes
from flashpods_devhost.host import SERVICE_ORDER, DevHost
from flashpods_devhost.pytest_plugin import new_settings

WORKER_IMAGE = "localhost/flashpods-worker:latest"


def _owner(path: Path) -> tuple[str, str, int]:
    st = path.stat()
    return pwd.getpwuid(st.st_uid).pw_name, _group(st.st_gid), stat.S_IMODE(st.st_mode)


def _group(gid: int) -> str:
    return grp.getgrgid(gid).gr_name


def _proc_status(pid: int) -> dict[str, str]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        fields[key] = value.strip()
    return fields


def _processes_mentioning(text: str) -> list[str]:
    """Command lines of live processes that mention `text` (e.g. the host's root)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if text in cmdline:
            found.append(f"{entry.name}: {cmdline}")
    return found


def _sleeper(host: DevHost, instance: str):
    """A long-running container labelled as belonging to `instance`."""
    label = f"flashpods.instance={instance}"
    return host.podman("run", "-d", "--label", label, WORKER_IMAGE, "sleep", "600")


def _instance_containers(host: DevHost) -> list[str]:
    label = f"label=flashpods.instance={host.settings.instance}"
    listed = host.podman("ps", "-a", "-q", "--filter", label)
    assert listed.returncode == 0, listed.stderr
    return listed.stdout.split()


def test_host_from_nothing_runs_a_job_and_stop_leaves_nothing() -> None:
    settings = new_settings()
    assert not settings.root.exists()
    host = DevHost(settings)
    try:
        host.start()
        # Health, and the token is required everywhere else.
        assert requests.get(f"{host.api_url}/healthz", timeout=10).status_code == 200
        assert requests.get(f"{host.api_url}/jobs", timeout=10).status_code == 401

        # The layout of docs/design.md: who may read what.
        paths = host.paths
        assert _owner(paths.api_token) == ("flashpods-api", "flashpods-api", 0o400)
        for secret in paths.secrets_dir.iterdir():
            assert _owner(secret)[0] == "flashpods-token"
            assert _owner(secret)[2] == 0o400
        assert _owner(paths.secrets_dir) == ("flashpods-token", "flashpods-token", 0o700)
        for shared in (paths.uploads, paths.workspaces, paths.artifacts, paths.logs):
            assert _owner(shared) == ("flashpods-api", "flashpods", 0o2770)
        assert _owner(paths.db_dir) == ("flashpods-api", "flashpods-api", 0o700)
        assert _owner(paths.podman_socket)[:2] == ("flashpods", "flashpods")
        assert _owner(paths.podman_socket)[2] == 0o660

        # Each service runs as its own user; only the token service holds CAP_SYS_PTRACE.
        users = {"podman": "flashpods", "token": "flashpods-token", "api": "flashpods-api"}
        for name, user in users.items():
            status = _proc_status(host._services[name].pid)
            assert status["Uid"].split()[0] == str(pwd.getpwnam(user).pw_uid), name
        cap_sys_ptrace = 1 << 19
        assert int(_proc_status(host._services["token"].pid)["CapAmb"], 16) & cap_sys_ptrace
        assert int(_proc_status(host._services["api"].pid)["CapEff"], 16) == 0

        # A worker job as the README's curl does it: runs, logs and artifacts come back.
        client = Client(host.api_url, host.api_token)
        job = client.run_worker("echo out-line; echo err-line >&2; echo done > /artifacts/r.txt")
        assert job["status"] == "succeeded", job
        assert job["exit_code"] == 0
        log = client.full_log(job["id"])
        assert "out-line" in log and "err-line" in log
        listing = client.get(f"/jobs/{job['id']}/artifacts").json()["artifacts"]
        assert "r.txt" in [entry["path"] for entry in listing]
        assert client.get(f"/jobs/{job['id']}/artifacts/r.txt").text == "done\n"

        # A container of this host still running at stop() must go with it.
        started = _sleeper(host, settings.instance)
        assert started.returncode == 0, started.stderr
        pids = [host._services[name].pid for name in SERVICE_ORDER]
    finally:
        host.stop(remove_root=True)

    assert not settings.root.exists()
    assert _instance_containers(host) == []
    for pid in pids:
        assert not Path(f"/proc/{pid}").exists() or _proc_status(pid)["State"].startswith("Z")
    assert _processes_mentioning(str(settings.root)) == []


def test_stop_removes_only_this_hosts_containers(devhost_factory) -> None:
    host = devhost_factory()
    other = f"{host.settings.instance}-other"
    mine = _sleeper(host, host.settings.instance)
    theirs = _sleeper(host, other)
    assert mine.returncode == 0 and theirs.returncode == 0, mine.stderr + theirs.stderr
    try:
        host.remove_containers()
        assert _instance_containers(host) == []
        survivors = host.podman("ps", "-q", "--filter", f"label=flashpods.instance={other}")
        assert survivors.stdout.split() == [theirs.stdout.strip()[:12]]
    finally:
        host.podman("rm", "-f", "-t", "0", theirs.stdout.strip())


def test_killed_services_come_back_with_start(devhost_factory) -> None:
    host = devhost_factory()
    for name in ("token", "rsyncd", "reaper", "api"):
        old_pid = host._services[name].pid
        host.kill(name, signal.SIGKILL)
        assert not host._services[name].running
        host.start(name)
        assert host._services[name].running and host._services[name].pid != old_pid, name
    # Everything answers again: API (its /healthz needs podman and the reaper's
    # heartbeat), the token socket and rsyncd.
    assert requests.get(f"{host.api_url}/healthz", timeout=10).status_code == 200
    assert probes.unix_socket_answers(host.token_socket)
    assert probes.tcp_answers("127.0.0.1", host.rsync_port)
    client = Client(host.api_url, host.api_token)
    assert client.run_worker("true")["status"] == "succeeded"


def test_api_and_reaper_killed_together_come_back_one_by_one_or_together(devhost_factory):
    host = devhost_factory()
    client = Client(host.api_url, host.api_token)
    # One by one: the reaper alone (the API is down on purpose, so nothing waits for it),
    # then the API, which waits for /healthz (200 needs the reaper's heartbeat).
    host.kill("api", signal.SIGKILL)
    host.kill("reaper", signal.SIGKILL)
    host.start("reaper")
    assert host._services["reaper"].running and not host._services["api"].running
    host.start("api")
    assert requests.get(f"{host.api_url}/healthz", timeout=10).status_code == 200
    # The other order: the API first answers (503 without a reaper), then the reaper.
    host.kill("reaper", signal.SIGKILL)
    host.kill("api", signal.SIGKILL)
    host.start("api")
    assert requests.get(f"{host.api_url}/healthz", timeout=10).status_code in (200, 503)
    host.start("reaper")
    assert requests.get(f"{host.api_url}/healthz", timeout=10).status_code == 200
    # Together, in one call.
    host.kill("api", signal.SIGKILL)
    host.kill("reaper", signal.SIGKILL)
    host.start("api", "reaper")
    assert requests.get(f"{host.api_url}/healthz", timeout=10).status_code == 200
    assert client.run_worker("true")["status"] == "succeeded"


def test_start_still_reports_a_service_that_died_unasked(devhost_factory):
    host = devhost_factory()
    host.kill("reaper", signal.SIGKILL)
    # The token service dies without kill(): a restart of the reaper must say so.
    host._services["token"].process.kill()
    host._services["token"].process.wait()
    try:
        host.start("reaper")
    except RuntimeError as error:
        assert "token exited" in str(error), error
    else:
        raise AssertionError("start() did not report the dead token service")
    host.start("token")
    assert requests.get(f"{host.api_url}/healthz", timeout=10).status_code == 200
