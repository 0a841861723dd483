"""flashpods-init for real: mounted read-only into the busybox worker image and
run rootless as the flashpods user with the flags the API uses for every job
(docs/design.md, "The job container contract")."""

from __future__ import annotations

import os
import stat
import tarfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from helper_standin import (
    agent_calls,
    grant,
    http_response,
    pretty_jwt_output,
    write_agent_script,
)
from helper_support import WORKER_IMAGE, make_root, podman

pytestmark = [pytest.mark.slow, pytest.mark.root]

FLASHPODS_UID = 1001
CONTAINER_SOCKET = "/run/flashpods/token.sock"


class Jobs:
    """Runs containers with unique names and labels; removes them all."""

    def __init__(self) -> None:
        self.instance = f"helper-test-{uuid.uuid4().hex[:10]}"
        self.names: list[str] = []

    def run(
        self,
        helper: Path,
        command: list[str],
        *,
        mounts: list[str] = (),
        env: dict[str, str] | None = None,
        helper_args: tuple[str, ...] = ("--",),
        image: str = WORKER_IMAGE,
    ):
        name = f"{self.instance}-{len(self.names)}"
        self.names.append(name)
        args = [
            "run", "--name", name,
            "--label", f"flashpods.instance={self.instance}",
            "--label", "flashpods.kind=worker",
            "--userns=keep-id", "--init",
            "--security-opt", "no-new-privileges", "--cap-drop", "ALL",
            "--read-only", "--tmpfs", "/tmp:rw,size=16m,mode=1777",
            "--network", "none",
            "-v", f"{helper}:/flashpods/bin/flashpods-init:ro",
            "-e", "HOME=/tmp/home", "-e", "TMPDIR=/tmp",
        ]  # fmt: skip
        for mount in mounts:
            args += ["-v", mount]
        for key, value in (env or {}).items():
            args += ["-e", f"{key}={value}"]
        args += [image, "/flashpods/bin/flashpods-init", *helper_args, *command]
        return podman(*args)

    def remove(self) -> None:
        if self.names:
            podman("rm", "-f", "--ignore", *self.names)


@pytest.fixture
def jobs() -> Iterator[Jobs]:
    runner = Jobs()
    yield runner
    runner.remove()


def owned_by_flashpods(path: Path, mode: int = 0o770) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    os.chown(path, FLASHPODS_UID, FLASHPODS_UID)
    path.chmod(mode)
    return path


def test_command_in_container_sees_the_secret(helper, workdir, token_server, jobs):
    server = token_server(grant({"GITHUB_TOKEN": "ghp-in-container"}), mode=0o666)

    result = jobs.run(
        helper,
        ["sh", "-c", 'id -u; printf "%s\\n" "$GITHUB_TOKEN"; umask; ls -d "$HOME"'],
        mounts=[f"{server.path}:{CONTAINER_SOCKET}"],
        env={"FLASHPODS_TOKEN_SOCKET": CONTAINER_SOCKET, "FLASHPODS_ATTESTATION": "peer"},
    )

    assert result.returncode == 0, result.stderr
    assert result.stdout.split("\n") == ["1001", "ghp-in-container", "0002", "/tmp/home", ""]
    assert server.headers()["accept"] == "text/plain"


def test_refused_exchange_stops_the_job_with_125(helper, workdir, token_server, jobs):
    server = token_server(
        lambda _r: http_response(403, b'{"error": "not granted", "code": "forbidden"}'),
        mode=0o666,
    )

    result = jobs.run(
        helper,
        ["sh", "-c", "echo RAN"],
        mounts=[f"{server.path}:{CONTAINER_SOCKET}"],
        env={"FLASHPODS_TOKEN_SOCKET": CONTAINER_SOCKET},
    )

    assert result.returncode == 125
    assert "RAN" not in result.stdout
    assert "flashpods-init: the token service refused the exchange: HTTP 403" in result.stderr


def test_no_token_socket_mounted_runs_without_secrets(helper, workdir, jobs):
    result = jobs.run(helper, ["sh", "-c", 'echo "[$GITHUB_TOKEN]"'])

    assert result.returncode == 0, result.stderr
    assert result.stdout == "[]\n"


def test_copy_in_from_read_only_input_is_owned_by_the_job(helper, workdir, token_server, jobs):
    upload = workdir / "upload"  # root-owned, like a base the API kept
    (upload / "src" / "nested").mkdir(parents=True)
    (upload / "src" / "main.py").write_text("print('hi')\n")
    (upload / "src" / "nested" / "data.txt").write_text("data")
    (upload / "tool.sh").write_text("#!/bin/sh\necho tool\n")
    (upload / "tool.sh").chmod(0o755)
    (upload / "readonly.txt").write_text("ro")
    (upload / "readonly.txt").chmod(0o444)
    os.symlink("src/main.py", upload / "main-link")
    os.symlink("/etc/shadow", upload / "outside-link")
    os.mkfifo(upload / "fifo")
    workspace = owned_by_flashpods(workdir / "workspace")
    server = token_server(grant({}), mode=0o666)
    mounts = [
        f"{upload}:/flashpods/input:ro",
        f"{workspace}:/workspace",
        f"{server.path}:{CONTAINER_SOCKET}",
    ]
    env = {"FLASHPODS_TOKEN_SOCKET": CONTAINER_SOCKET}

    first = jobs.run(
        helper,
        ["sh", "-c", "cd /workspace && ./tool.sh && cat src/nested/data.txt && echo x >> new"],
        mounts=mounts,
        env=env,
    )

    assert first.returncode == 0, first.stderr
    assert first.stdout == "tool\ndata"
    for path in [workspace / "src", workspace / "src" / "main.py", workspace / "tool.sh"]:
        assert path.stat().st_uid == FLASHPODS_UID, path
    assert (workspace / "main-link").lstat().st_uid == FLASHPODS_UID
    assert os.readlink(workspace / "outside-link") == "/etc/shadow"
    assert stat.S_IMODE((workspace / "tool.sh").stat().st_mode) == 0o755
    assert stat.S_IMODE((workspace / "readonly.txt").stat().st_mode) == 0o444
    assert not (workspace / "fifo").exists()
    assert (workspace / ".flashpods-ready").exists()
    assert stat.S_IMODE((workspace / "new").stat().st_mode) == 0o664  # umask 0002

    # A second start of the job finds the marker and leaves the workspace alone.
    (workspace / "src" / "main.py").write_text("edited")
    second = jobs.run(helper, ["cat", "/workspace/src/main.py"], mounts=mounts, env=env)

    assert second.returncode == 0, second.stderr
    assert second.stdout == "edited"


def test_spire_mode_in_container_with_retry(helper, workdir, token_server, jobs):
    jwt = "eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJqb2IifQ.c2ln"
    server = token_server(grant({"GITHUB_TOKEN": "ghp-spire"}), mode=0o666)
    agent_dir = workdir / "agent"
    agent_dir.mkdir()
    state = owned_by_flashpods(workdir / "agent-state")
    agent = write_agent_script(
        agent_dir / "spire-agent",
        output=pretty_jwt_output("spiffe://flashpods.internal/job/j/worker", jwt),
        fail_times=2,
        state_dir="/spire-state",
    )

    result = jobs.run(
        helper,
        ["sh", "-c", 'printf "%s" "$GITHUB_TOKEN"'],
        mounts=[
            f"{server.path}:{CONTAINER_SOCKET}",
            f"{agent}:/flashpods/bin/spire-agent:ro",
            f"{state}:/spire-state",
        ],
        env={
            "FLASHPODS_TOKEN_SOCKET": CONTAINER_SOCKET,
            "FLASHPODS_ATTESTATION": "spire",
            "SPIFFE_ENDPOINT_SOCKET": "unix:///run/spire/sockets/agent.sock",
            "FLASHPODS_SVID_WAIT_S": "20",
        },
    )

    assert result.returncode == 0, result.stderr
    assert result.stdout == "ghp-spire"
    assert server.headers()["authorization"] == f"Bearer {jwt}"
    assert (
        agent_calls(agent, state)
        == ["api fetch jwt -audience flashpods-token -socketPath /run/spire/sockets/agent.sock"] * 3
    )


def test_normalize_in_a_throwaway_container(helper, workdir, jobs):
    workspace = owned_by_flashpods(workdir / "workspace")
    made = jobs.run(
        helper,
        [
            "sh",
            "-c",
            "cd /workspace && mkdir -p d/e && echo x > d/e/f && ln -s /etc d/link"
            " && chmod 000 d/e/f d/e && chmod 500 d",
        ],
        mounts=[f"{workspace}:/workspace"],
    )
    assert made.returncode == 0, made.stderr

    fixed = jobs.run(
        helper, ["/workspace"], mounts=[f"{workspace}:/workspace"], helper_args=("--normalize",)
    )

    assert fixed.returncode == 0, fixed.stderr
    assert "normalized /workspace:" in fixed.stdout
    assert stat.S_IMODE((workspace / "d").stat().st_mode) == 0o770
    assert stat.S_IMODE((workspace / "d" / "e").stat().st_mode) == 0o770
    assert stat.S_IMODE((workspace / "d" / "e" / "f").stat().st_mode) == 0o660
    assert os.readlink(workspace / "d" / "link") == "/etc"


def test_copy_in_reads_a_base_through_the_flashpods_group(helper, workdir, jobs):
    # Bases are api:flashpods 2750 (docs/design.md, "Paths"): the job reads
    # them through its primary group, which --userns=keep-id maps through.
    # A file without group read (0600) cannot be copied: the job stops and
    # names it instead of running on an incomplete workspace.
    base = workdir / "base"
    (base / "dir").mkdir(parents=True)
    (base / "dir" / "shared.txt").write_text("group can read")
    for path, mode in [
        (base, 0o2750),
        (base / "dir", 0o2750),
        (base / "dir" / "shared.txt", 0o640),
    ]:
        os.chown(path, 0, FLASHPODS_UID)  # root stands in for the API user
        path.chmod(mode)
    workspace = owned_by_flashpods(workdir / "workspace")
    mounts = [f"{base}:/flashpods/input:ro", f"{workspace}:/workspace"]

    ok = jobs.run(helper, ["cat", "/workspace/dir/shared.txt"], mounts=mounts)

    assert ok.returncode == 0, ok.stderr
    assert ok.stdout == "group can read"

    (base / "private.txt").write_text("owner only")
    os.chown(base / "private.txt", 0, FLASHPODS_UID)
    (base / "private.txt").chmod(0o600)
    (workspace / ".flashpods-ready").unlink()

    refused = jobs.run(helper, ["echo", "RAN"], mounts=mounts)

    assert refused.returncode == 125
    assert "RAN" not in refused.stdout
    assert "copy-in of private.txt failed: cannot open the source file: Permission denied" in (
        refused.stderr
    )
    assert not (workspace / ".flashpods-ready").exists()


@pytest.fixture
def empty_image() -> Iterator[str]:
    """An image with no files at all: no libc, no loader, no /etc/passwd."""
    root = make_root("helper-image")
    archive = root / "empty.tar"
    with tarfile.open(archive, "w"):
        pass
    archive.chmod(0o644)
    name = f"localhost/flashpods-helper-test-empty:{uuid.uuid4().hex[:10]}"
    imported = podman("import", "--change", "ENV PATH=/bin", str(archive), name)
    assert imported.returncode == 0, imported.stderr
    yield name
    podman("rmi", "--force", name)
    archive.unlink()
    root.rmdir()


def test_works_in_an_image_without_libc(helper, workdir, token_server, jobs, empty_image):
    # A third-party image must not need changes: the helper brings everything
    # it needs. The command is the host's static busybox, mounted as /bin/sh.
    server = token_server(grant({"GITHUB_TOKEN": "ghp-empty"}), mode=0o666)

    result = jobs.run(
        helper,
        ["sh", "-c", 'printf "%s" "$GITHUB_TOKEN"'],
        mounts=[f"{server.path}:{CONTAINER_SOCKET}", "/bin/busybox:/bin/sh:ro"],
        env={"FLASHPODS_TOKEN_SOCKET": CONTAINER_SOCKET},
        image=empty_image,
    )

    assert result.returncode == 0, result.stderr
    assert result.stdout == "ghp-empty"
