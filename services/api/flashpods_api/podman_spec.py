"""A job container as Podman's REST API creates it: the libpod "SpecGenerator" JSON.

The same container as `runtime.run_args` gives the CLI, field for field; the
integration test creates one of each on the real Podman and compares their inspect
records. Sizes in bytes where the CLI takes suffixed strings; `--cpus` becomes the
CFS quota/period pair the CLI computes.

Podman 4.x and 5.x: the fields written here keep their JSON names in 5.x
(pkg/specgen/specgen.go). What changed between them, and how this module follows:
- 5.0 turned several flags into pointers (`init`, `read_only_filesystem`,
  `no_new_privileges`): the JSON is the same; they are always written here, never left
  to a default that differs between versions;
- 4.x fills in the keep-id user (`uid:gid` of the service's user) on the server when
  `user` is empty; 5.x does the same through `userns` options: both are left to the
  server, as the CLI does;
- the /run and /var/tmp tmpfs that the CLI's `--read-only` adds: 4.3's service does
  not add them for a REST create (`read_write_tmpfs` is not read there), 5.x adds them
  unless a mount of that destination is given: so they are given, the same on both;
- `netns` "pasta" exists from 4.4 on; on 4.3 it is refused and the probe's CLI
  fallback does not help either: network_mode must be slirp4netns there.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .runtime import RunSpec

CPU_PERIOD = 100_000  # what `--cpus` uses (µs)


def _bind(source: str, destination: str, ro: bool = False) -> dict[str, Any]:
    return {
        "destination": destination,
        "type": "bind",
        "source": source,
        "options": ["rbind", "ro" if ro else "rw"],
    }


def _tmpfs(destination: str, *options: str) -> dict[str, Any]:
    # Podman adds rprivate, nosuid, nodev and tmpcopyup itself, as for the CLI's tmpfs.
    return {
        "destination": destination,
        "type": "tmpfs",
        "source": "tmpfs",
        "options": ["rw", *options],
    }


def _rlimits(limits: tuple[str, ...]) -> list[dict[str, Any]]:
    out = []
    for limit in limits:
        name, values = limit.split("=", 1)
        soft, hard = values.split(":", 1)
        # The short name: Podman prefixes "RLIMIT_" itself (4.3 sent "RLIMIT_RLIMIT_NOFILE"
        # to runc for a full name, and the start failed).
        out.append({"type": name, "soft": int(soft), "hard": int(hard)})
    return out


def payload(spec: RunSpec, major: int) -> dict[str, Any]:
    """The create body for Podman `major` (4 or 5; see the module's docstring)."""
    from .runtime import (
        AGENT_CLI_IN_CONTAINER,
        AGENT_DIR_IN_CONTAINER,
        CONTROL_IN_CONTAINER,
        DEFAULT_PIDS,
        HELPER_IN_CONTAINER,
        INPUT_IN_CONTAINER,
        TOKEN_DIR_IN_CONTAINER,
        ULIMITS,
        _tmp_mb,
        agent_socket_dir,
        token_socket_dir,
    )

    if major not in (4, 5):
        raise ValueError(f"no REST payload for Podman {major}.x; use the CLI")
    labels = {
        "flashpods.job": spec.job_id,
        "flashpods.kind": spec.kind,
        "flashpods.instance": spec.instance,
    }
    if spec.control_dir:
        labels["flashpods.warm"] = "1"
    mounts: list[dict[str, Any]] = [
        _tmpfs("/tmp", f"size={_tmp_mb(spec.resources)}m", "mode=1777"),
        # What the CLI's --read-only adds (--read-only-tmpfs, on by default): written out,
        # since 4.3's service does not add them for a REST create (read_write_tmpfs is
        # ignored there; the path test caught it) and 5.x adds none twice.
        _tmpfs("/run"),
        _tmpfs("/var/tmp"),
        _bind(spec.workspace, "/workspace"),
        _bind(spec.artifacts, "/artifacts"),
    ]
    if spec.input_dir:
        mounts.append(_bind(spec.input_dir, INPUT_IN_CONTAINER, ro=True))
    if spec.control_dir:
        mounts.append(_bind(spec.control_dir, CONTROL_IN_CONTAINER, ro=True))
    mounts.append(_bind(spec.helper_path, HELPER_IN_CONTAINER, ro=True))
    mounts.append(_bind(token_socket_dir(spec.token_socket), TOKEN_DIR_IN_CONTAINER, ro=True))
    if spec.agent_socket:
        # The directory, read-only, as the CLI path: a restarted agent's new socket shows.
        mounts.append(_bind(agent_socket_dir(spec.agent_socket), AGENT_DIR_IN_CONTAINER, ro=True))
    if spec.agent_cli:
        mounts.append(_bind(spec.agent_cli, AGENT_CLI_IN_CONTAINER, ro=True))
    limits: dict[str, Any] = {"pids": {"limit": int(spec.resources.get("pids", DEFAULT_PIDS))}}
    if "memory" in spec.resources:
        memory = int(spec.resources["memory"]) * 1024 * 1024
        # The CLI gives --memory without --memory-swap twice the memory as memory+swap.
        limits["memory"] = {"limit": memory, "swap": 2 * memory}
    if "cpus" in spec.resources:
        quota = int(float(spec.resources["cpus"]) * CPU_PERIOD)
        limits["cpu"] = {"quota": quota, "period": CPU_PERIOD}
    return {
        "name": spec.job_id,
        "image": spec.image,
        "command": list(spec.argv),
        "env": dict(spec.env),
        "labels": labels,
        "hostname": spec.job_id,
        "work_dir": "/workspace",
        "userns": {"nsmode": "keep-id"},
        "netns": {"nsmode": spec.network_mode},
        "init": True,
        "no_new_privileges": True,
        "cap_drop": ["ALL"],
        "read_only_filesystem": True,
        "mounts": mounts,
        "log_configuration": {"driver": "k8s-file", "path": spec.log_path},
        "r_limits": _rlimits(ULIMITS),
        "resource_limits": limits,
    }
