"""A host inside a network namespace with the project's firewall, as tests/host use it."""

from __future__ import annotations

import secrets
import subprocess

import pytest
from flashpods_devhost import probes
from flashpods_devhost.host import DevHost


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=30)


@pytest.fixture
def netns():
    name = f"fp-dh-{secrets.token_hex(3)}"
    _ip("netns", "add", name)
    try:
        _ip("-n", name, "link", "set", "lo", "up")
        yield name
    finally:
        _ip("netns", "del", name)


def _in_ns(netns: str, *argv: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["nsenter", f"--net=/run/netns/{netns}", "--", *argv],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def _table_loaded(netns: str) -> bool:
    return _in_ns(netns, "nft", "list", "table", "inet", "flashpods").returncode == 0


def test_services_run_in_the_namespace_behind_the_firewall(netns, devhost_factory) -> None:
    # netns first: it must outlive the host, which the factory stops at teardown.
    host: DevHost = devhost_factory(
        netns=netns,
        firewall=True,
        firewall_values={"wg_if": "lo", "laptop_addr": "127.0.0.1", "resolvers": []},
    )
    # The API listens only inside the namespace.
    assert probes.http_status(f"{host.api_url}/healthz", netns) == 200
    assert _table_loaded(netns)
    # The job uid is refused by the loaded table; root (the "laptop" here) is not.
    as_job_uid = _in_ns(
        netns,
        "setpriv", f"--reuid={host.accounts.podman.uid}", f"--regid={host.accounts.podman.gid}",
        "--clear-groups", "curl", "-sS", "-m", "5", f"{host.api_url}/healthz",
    )  # fmt: skip
    assert as_job_uid.returncode == 7, as_job_uid.stderr  # curl: could not connect
    host.stop()
    assert not _table_loaded(netns)
    assert probes.http_status(f"{host.api_url}/healthz", netns) is None
