"""The token socket reaches containers through its directory (issue 14, item 8): a bind
mount of the socket file would keep the old inode when the token service restarts, and
the directory must hold nothing else, since every job sees it."""

from __future__ import annotations

import socket

import pytest
from flashpods_api.runtime import PodmanError, RunSpec, check_token_socket_dir, run_args


def _spec(token_socket: str) -> RunSpec:
    return RunSpec(
        job_id="job_x", kind="worker", instance="t", image="localhost/x", argv=["true"],
        env={}, workspace="/w", artifacts="/a", log_path="/l", helper_path="/h",
        token_socket=token_socket, network_mode="slirp4netns",
    )  # fmt: skip


def test_the_directory_is_mounted_read_only_where_the_socket_is_expected():
    joined = " ".join(run_args(_spec("/run/flashpods/token/token.sock")))
    assert "source=/run/flashpods/token,destination=/run/flashpods,ro=true" in joined
    assert "token.sock,destination" not in joined  # never the socket file itself


def test_a_socket_with_another_name_is_refused():
    with pytest.raises(PodmanError, match="must be named token.sock"):
        run_args(_spec("/run/flashpods/token/other.sock"))


def _bind(path) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(str(path))
    return s


def test_a_directory_with_only_the_token_socket_is_accepted(tmp_path):
    held = [_bind(tmp_path / "token.sock"), _bind(tmp_path / ".token.sock.0123abcd")]
    try:
        check_token_socket_dir(str(tmp_path / "token.sock"))  # the restart's temporary too
    finally:
        for s in held:
            s.close()


def test_a_directory_shared_with_the_podman_socket_is_refused(tmp_path):
    # The old NixOS layout: /run/flashpods/token.sock next to /run/flashpods/podman/.
    (tmp_path / "podman").mkdir()
    held = _bind(tmp_path / "token.sock")
    try:
        with pytest.raises(PodmanError, match=r"also holds podman; give token_socket"):
            check_token_socket_dir(str(tmp_path / "token.sock"))
    finally:
        held.close()


def test_the_credential_proxy_socket_may_sit_beside_it(tmp_path):
    # docs/design.md, "Credential proxy": jobs reach the proxy through the same mount.
    names = ("token.sock", "proxy.sock", ".proxy.sock.0123abcd")
    held = [_bind(tmp_path / n) for n in names]
    try:
        check_token_socket_dir(str(tmp_path / "token.sock"))
        (tmp_path / "proxy.sock.bak").touch()
        with pytest.raises(PodmanError, match=r"also holds proxy.sock.bak"):
            check_token_socket_dir(str(tmp_path / "token.sock"))
    finally:
        for s in held:
            s.close()
