"""The only module that talks to Podman: its REST API or the `podman` CLI, always remote.

The API and the reaper run as their own user and drive the `flashpods` user's rootless
Podman through its socket (`--url`), so a process that escapes a container never lands
in the API's account. Every call has a timeout; a failed call becomes a PodmanError that
carries Podman's own stderr. Calls go through `subprocess.run` directly: the `sh`
package's reader threads cost a few milliseconds per call on the job-start path.

Creating, starting and inspecting a container go through Podman's REST API on the same
socket when a probe finds a Podman whose create payload podman_spec writes (4.x, 5.x):
a `podman --url run -d` spends most of its 0.1-0.2 s starting the Go client. Anything
else, and every other call, uses the CLI (issue 18).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import podman_rest, podman_spec
from .podman_rest import PodmanRest, RestError

# Containers see these paths; docs/design.md "The job container contract".
HELPER_IN_CONTAINER = "/flashpods/bin/flashpods-init"
AGENT_CLI_IN_CONTAINER = "/flashpods/bin/spire-agent"  # flashpods-init's default
TOKEN_SOCKET_IN_CONTAINER = "/run/flashpods/token.sock"
# The token socket's directory is mounted, not the socket: a bind mount of the socket
# file keeps the old inode when the token service restarts and renames a new one in.
TOKEN_DIR_IN_CONTAINER = os.path.dirname(TOKEN_SOCKET_IN_CONTAINER)
TOKEN_SOCKET_NAME = os.path.basename(TOKEN_SOCKET_IN_CONTAINER)
# The credential proxy's socket, beside the token socket (docs/design.md): the one
# other name the mounted directory may hold.
PROXY_SOCKET_NAME = "proxy.sock"
AGENT_SOCKET_IN_CONTAINER = "/run/spire/sockets/agent.sock"
# Likewise the SPIRE agent's socket: a restarted spire-agent creates a new socket file,
# which a bind mount of the old file never sees (measured: "connection refused").
AGENT_DIR_IN_CONTAINER = os.path.dirname(AGENT_SOCKET_IN_CONTAINER)
AGENT_SOCKET_NAME = os.path.basename(AGENT_SOCKET_IN_CONTAINER)
INPUT_IN_CONTAINER = "/flashpods/input"
CONTROL_IN_CONTAINER = "/flashpods/control"
TMPFS_MB = 1024
# Rlimits hold where cgroup limits do not (rootless on cgroup v1). NPROC counts per uid
# and every job shares the flashpods uid, so it is a fork-bomb brake, not a per-job cap.
ULIMITS = ("nofile=4096:4096", "nproc=16384:16384", "core=0:0")
DEFAULT_PIDS = 4096

# A probe that found no usable REST API is repeated after this long (the service may
# have been starting).
PROBE_RETRY_S = 30.0
API_MODES = ("auto", "rest", "cli")

_CGROUP_WARNING = re.compile(r"(?i)(resource limits are not supported|cgroups? ?v1).*")


class PodmanError(Exception):
    """A Podman call failed; `stderr` is Podman's own explanation."""

    def __init__(self, message: str, stderr: str = "") -> None:
        super().__init__(message)
        self.stderr = stderr


@dataclass
class RunSpec:
    """Everything needed to start one job container; see `run_args`."""

    job_id: str
    kind: str
    instance: str
    image: str
    argv: list[str]
    env: dict[str, str]
    workspace: str
    artifacts: str
    log_path: str
    helper_path: str
    token_socket: str
    network_mode: str
    input_dir: str | None = None
    agent_socket: str | None = None
    agent_cli: str | None = None
    resources: dict[str, Any] = field(default_factory=dict)
    # A warm container: labelled flashpods.warm=1, its hand-over dir mounted read-only.
    control_dir: str | None = None


def _tmp_mb(resources: dict[str, Any]) -> int:
    # /tmp is memory: never larger than the job's memory limit (on cgroup v1 the reaper's
    # polling does not see tmpfs pages, so this bound is what holds there).
    return min(TMPFS_MB, int(resources.get("memory", TMPFS_MB)))


def run_args(spec: RunSpec) -> list[str]:
    """The `podman run` argv (after `run`) for a job: flags, mounts, env, labels, command."""

    def bind(src: str, dst: str, ro: bool = False) -> list[str]:
        return ["--mount", f"type=bind,source={src},destination={dst}" + (",ro=true" if ro else "")]

    args = [
        "-d",
        "--name", spec.job_id,
        "--label", f"flashpods.job={spec.job_id}",
        "--label", f"flashpods.kind={spec.kind}",
        "--label", f"flashpods.instance={spec.instance}",
        *(["--label", "flashpods.warm=1"] if spec.control_dir else []),
        "--userns=keep-id",
        "--init",
        "--security-opt", "no-new-privileges",
        "--cap-drop", "ALL",
        "--read-only",
        "--tmpfs", f"/tmp:rw,size={_tmp_mb(spec.resources)}m,mode=1777",
        "--log-driver", "k8s-file",
        "--log-opt", f"path={spec.log_path}",
        "--network", spec.network_mode,
        "--hostname", spec.job_id,
        "--workdir", "/workspace",
        "--pids-limit", str(spec.resources.get("pids", DEFAULT_PIDS)),
    ]  # fmt: skip
    for limit in ULIMITS:
        args += ["--ulimit", limit]
    if "memory" in spec.resources:
        args += ["--memory", f"{int(spec.resources['memory'])}m"]
    if "cpus" in spec.resources:
        args += ["--cpus", str(spec.resources["cpus"])]
    args += bind(spec.workspace, "/workspace")
    args += bind(spec.artifacts, "/artifacts")
    if spec.input_dir:
        args += bind(spec.input_dir, INPUT_IN_CONTAINER, ro=True)
    if spec.control_dir:
        args += bind(spec.control_dir, CONTROL_IN_CONTAINER, ro=True)
    args += bind(spec.helper_path, HELPER_IN_CONTAINER, ro=True)
    args += bind(token_socket_dir(spec.token_socket), TOKEN_DIR_IN_CONTAINER, ro=True)
    if spec.agent_socket:
        args += bind(agent_socket_dir(spec.agent_socket), AGENT_DIR_IN_CONTAINER, ro=True)
    if spec.agent_cli:
        args += bind(spec.agent_cli, AGENT_CLI_IN_CONTAINER, ro=True)
    for name, value in spec.env.items():
        args += ["--env", f"{name}={value}"]
    args.append(spec.image)
    args += spec.argv
    return args


def token_socket_dir(token_socket: str) -> str:
    """The directory containers mount to reach the token socket (at TOKEN_DIR_IN_CONTAINER)."""
    if os.path.basename(token_socket) != TOKEN_SOCKET_NAME:
        raise PodmanError(
            f"token_socket {token_socket} must be named {TOKEN_SOCKET_NAME}, in a directory "
            "of its own: containers mount that directory and look for that name"
        )
    return os.path.dirname(token_socket)


def check_token_socket_dir(token_socket: str) -> None:
    """Refuse to mount a token directory that holds anything but the token socket (the
    token service's own temporary `.token.sock.*` while it restarts aside): jobs would
    see it, and next to a Podman socket that is an escape."""
    directory = token_socket_dir(token_socket)
    try:
        names = os.listdir(directory)
    except (FileNotFoundError, PermissionError):
        return  # nothing to see here, or nothing we may see: podman run will say more
    ours = (TOKEN_SOCKET_NAME, PROXY_SOCKET_NAME)
    others = sorted(
        n for n in names if n not in ours and not n.startswith(tuple(f".{o}." for o in ours))
    )
    if others:
        raise PodmanError(
            f"the token socket's directory {directory} is mounted into every job container "
            f"but also holds {', '.join(others[:5])}; give token_socket a directory of its "
            f"own (e.g. {directory}/token/{TOKEN_SOCKET_NAME})"
        )


def agent_socket_dir(agent_socket: str) -> str:
    """The directory containers mount to reach the SPIRE agent's Workload API socket."""
    if os.path.basename(agent_socket) != AGENT_SOCKET_NAME:
        raise PodmanError(
            f"spire.agent_socket {agent_socket} must be named {AGENT_SOCKET_NAME}, in a "
            "directory of its own: containers mount that directory and look for that name"
        )
    return os.path.dirname(agent_socket)


def check_agent_socket_dir(agent_socket: str) -> None:
    """Refuse to mount an agent socket directory that holds anything else (SPIRE keeps
    its admin socket elsewhere; anything here would be visible to every job)."""
    directory = agent_socket_dir(agent_socket)
    try:
        names = os.listdir(directory)
    except (FileNotFoundError, PermissionError):
        return  # nothing to see here, or nothing we may see: podman run will say more
    others = sorted(n for n in names if n != AGENT_SOCKET_NAME)
    if others:
        raise PodmanError(
            f"the SPIRE agent socket's directory {directory} is mounted into every job "
            f"container but also holds {', '.join(others[:5])}; give spire.agent_socket a "
            f"directory of its own"
        )


class Runtime:
    def __init__(
        self,
        podman_url: str,
        instance: str,
        timeout_s: float = 60.0,
        create_lock: Path | None = None,
        api: str = "auto",
    ) -> None:
        """`api`: "auto" probes the REST API and falls back to the CLI; "rest" or "cli"
        use one path only (tests of each path)."""
        if api not in API_MODES:
            raise ValueError(f"api must be one of {', '.join(API_MODES)}, not {api!r}")
        self.instance = instance
        self.timeout_s = timeout_s
        self._create_lock = create_lock
        self._argv0 = ["podman", "--url", podman_url]
        self._env = _client_env()
        self._cgroup_note: str | None = None
        self._info_checked = False
        socket = podman_rest.socket_path(podman_url)
        self._rest = PodmanRest(socket, timeout_s) if socket and api != "cli" else None
        self._api = api
        self._major: int | None = None
        self._probed_at: float | None = None
        self.api_note = "not probed yet"

    # -- which path: REST or CLI ---------------------------------------------

    def uses_rest(self) -> bool:
        """Whether container creation, start and inspect go through the REST API.

        The probe asks the service for its version once (again after PROBE_RETRY_S when
        it did not answer): a major version podman_spec writes payloads for means REST.
        """
        if self._rest is None:
            return False
        now = time.monotonic()
        if self._probed_at is not None and (
            self._major is not None or now - self._probed_at < PROBE_RETRY_S
        ):
            return self._major is not None
        self._probed_at = now
        try:
            version = self._rest.version()
        except RestError as exc:
            self.api_note = f"the REST API did not answer ({exc}); using the CLI"
            if self._api == "rest":
                raise PodmanError(f"podman REST API unusable: {exc}") from exc
            return False
        major = podman_rest.major(version)
        if major in podman_rest.KNOWN_MAJORS:
            self._major = major
            self.api_note = f"REST API of Podman {version}"
            return True
        self.api_note = f"Podman {version}: no REST payload for it here; using the CLI"
        if self._api == "rest":
            raise PodmanError(f"podman REST API unusable: {self.api_note}")
        return False

    def _call(self, *args: str, timeout: float | None = None) -> tuple[str, str]:
        limit = timeout or self.timeout_s
        executable = shutil.which("podman", path=self._env["PATH"])
        if executable is None:
            raise PodmanError("the podman command is not installed on this host")
        try:
            proc = subprocess.run(
                [executable, *self._argv0[1:], *args],
                capture_output=True,
                stdin=subprocess.DEVNULL,
                env=self._env,
                timeout=limit,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise PodmanError(f"podman {args[0]} did not answer within {limit:g} s") from exc
        stdout = proc.stdout.decode(errors="replace")
        stderr = proc.stderr.decode(errors="replace")
        if proc.returncode != 0:
            said = stderr.strip()
            raise PodmanError(
                f"podman {args[0]} failed: {said or 'exit code ' + str(proc.returncode)}", said
            )
        return stdout, stderr

    def run(self, spec: RunSpec) -> tuple[str, str | None]:
        """Start a job container; returns (container id, a note when limits were not applied)."""
        check_token_socket_dir(spec.token_socket)
        if spec.agent_socket:
            check_agent_socket_dir(spec.agent_socket)
        if self.uses_rest():
            return self._run_rest(spec)
        with self._creating():
            out, err = self._call("run", *run_args(spec))
        return out.strip(), self.limits_note(spec.resources, err)

    def _run_rest(self, spec: RunSpec) -> tuple[str, str | None]:
        """Create (under the creation lock, as the CLI's run) and start (outside it)."""
        assert self._rest is not None and self._major is not None
        body = podman_spec.payload(spec, self._major)
        with self._creating():
            try:
                cid, warnings = self._rest.create(body)
            except RestError as exc:
                raise _rest_failure("create", exc) from exc
        try:
            self._rest.start(spec.job_id)
        except RestError as exc:
            raise _rest_failure("start", exc) from exc
        return cid, self.limits_note(spec.resources, "\n".join(warnings))

    def state(self, name: str) -> dict[str, Any] | None:
        """{"State": Podman's status, "ExitCode": int} of a container; None if it is gone."""
        if self.uses_rest():
            assert self._rest is not None
            try:
                record = self._rest.inspect(name)
            except RestError as exc:
                raise _rest_failure("inspect", exc) from exc
        else:
            try:
                out, _ = self._call("inspect", "--format", "json", name, timeout=30)
            except PodmanError as exc:
                if _gone(exc.stderr):
                    return None
                raise
            records = json.loads(out or "[]")
            record = records[0] if records else None
        if not record:
            return None
        state = record.get("State") or {}
        code = state.get("ExitCode")
        return {"State": state.get("Status"), "ExitCode": code if isinstance(code, int) else None}

    @contextlib.contextmanager
    def _creating(self) -> Iterator[None]:
        """One container creation at a time across the API's workers and the reaper.

        Podman 4.3's API service looks up the subordinate ids (/etc/subuid) for every
        keep-id container, and concurrent look-ups inside the one service fail: at 200
        concurrent starts (benchmark P4a) some jobs failed with "keep-id requires
        additional UIDs or GIDs" while the service logged "cannot read subids", and in
        one run the service itself died. Serial creation never showed it; containers
        still run in parallel, only their creation waits (~0.1 s each).
        """
        if self._create_lock is None:
            yield
            return
        # flock needs no write access: any process that can read the file can take it.
        fd = os.open(self._create_lock, os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC, 0o640)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing the descriptor releases the lock

    def limits_note(self, resources: dict[str, Any], stderr: str = "") -> str | None:
        """Say which limits the kernel ignored: from Podman's warning or the cgroup version."""
        ignored = ["--pids-limit"] + [f"--{k}" for k in ("memory", "cpus") if k in resources]
        # Memory and pids hold anyway: the reaper polls them (job_limits); cpus does not.
        polled = "; the reaper enforces memory and pids by polling instead"
        warning = _CGROUP_WARNING.search(stderr)
        if warning:
            said = warning.group(0).strip()
            return f"Limits {', '.join(ignored)} were not applied: podman said {said!r}{polled}."
        note = self._cgroup_v1_note()
        if note:
            return f"Limits {', '.join(ignored)} were not applied: {note}{polled}."
        return None

    def _cgroup_v1_note(self) -> str | None:
        if not self._info_checked:
            try:
                host = self.info().get("host", {})
            except PodmanError:
                return None
            if host.get("cgroupVersion") == "v1" and host.get("security", {}).get("rootless"):
                self._cgroup_note = (
                    "rootless Podman on cgroup v1 ignores cgroup limits (ulimits still hold)"
                )
            self._info_checked = True
        return self._cgroup_note

    def info(self) -> dict[str, Any]:
        out, _ = self._call("info", "--format", "json")
        info: dict[str, Any] = json.loads(out)
        return info

    def oom_killed(self, name: str) -> bool:
        """Whether the kernel's OOM killer ended this (exited) container."""
        out, _ = self._call("inspect", "--format", "{{.State.OOMKilled}}", name, timeout=30)
        return out.strip() == "true"

    def ping(self) -> None:
        self._call("version", "--format", "json", timeout=10)

    def containers(self) -> list[dict[str, Any]]:
        """Every container of this Flashpods instance, running or not."""
        out, _ = self._call(
            "ps", "-a", "--filter", f"label=flashpods.instance={self.instance}", "--format", "json"
        )
        return json.loads(out or "[]") or []

    def signal(self, name: str, sig: str) -> None:
        if self.uses_rest():
            assert self._rest is not None
            try:
                self._rest.kill(name, sig)
            except RestError as exc:
                raise _rest_failure("kill", exc) from exc
            return
        try:
            self._call("kill", "--signal", sig, name, timeout=30)
        except PodmanError as exc:
            if not _gone(exc.stderr):
                raise

    def remove(self, name: str) -> None:
        """Remove a container (gone already is fine). Through REST when the probe chose it:
        the reaper removes each ended job's container right after recording its end, and
        a CLI call there (~0.1-0.3 s) held up the next end the exit watch handed over."""
        if self.uses_rest():
            assert self._rest is not None
            try:
                self._rest.remove(name)
            except RestError as exc:
                raise _rest_failure("rm", exc) from exc
            return
        try:
            self._call("rm", "-f", "-t", "0", name, timeout=60)
        except PodmanError as exc:
            if not _gone(exc.stderr):
                raise

    def normalize(self, image: str, helper_path: str, directory: str) -> None:
        """Open up a tree a job locked: flashpods-init --normalize as the job's own uid.

        Created under the creation lock, run outside it: a whole `podman run --rm` under
        the lock made the next job's start wait for this container's life (~0.3 s).
        """
        helper = f"type=bind,source={helper_path},destination={HELPER_IN_CONTAINER},ro=true"
        with self._creating():
            out, _ = self._call(
                "create", "--rm", "--userns=keep-id", "--network", "none", "--cap-drop", "ALL",
                "--security-opt", "no-new-privileges", "--read-only",
                "--label", f"flashpods.normalize={self.instance}",
                "--mount", helper,
                "--mount", f"type=bind,source={directory},destination=/flashpods/normalize",
                image, HELPER_IN_CONTAINER, "--normalize", "/flashpods/normalize",
            )  # fmt: skip
        container = out.strip().splitlines()[-1]
        try:
            # --attach: returns when the helper exits, failing with its exit status.
            self._call("start", "--attach", container, timeout=300)
        finally:
            self.remove(container)  # --rm removes it on exit; this covers a failed start


def _rest_failure(what: str, exc: RestError) -> PodmanError:
    """A RestError as the CLI path would have said it, so callers need not tell them apart:
    no answer reads "unable to connect to Podman" (jobs.py requeues on it), and Podman's
    own cause (e.g. "name ... is already in use") is the stderr."""
    if exc.status == 0:
        return PodmanError(f"podman {what} failed: unable to connect to Podman: {exc}", str(exc))
    return PodmanError(f"podman {what} failed: {exc.cause or exc}", exc.cause)


def _gone(stderr: str) -> bool:
    said = stderr.lower()
    # "no such object": `podman inspect` of a name no container has (4.3).
    return any(
        s in said for s in ("no such container", "no container with name or id", "no such object")
    )


def _client_env() -> dict[str, str]:
    # The remote client needs nothing of the caller's environment; a fixed one keeps a
    # stray CONTAINER_HOST or XDG setting from redirecting it.
    return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": os.environ.get("HOME", "/")}
