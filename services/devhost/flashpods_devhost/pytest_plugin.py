"""pytest plugin: the `devhost_factory` fixture (load with `-p flashpods_devhost.pytest_plugin`).

Each call starts a whole dev host under a fresh, world-traversable root with free ports
and a unique instance label; every host is stopped, its containers removed and its root
deleted at the end of the test, also when the test failed (then the tail of each
service's log is printed, so the failure report says what the services saw).
"""

from __future__ import annotations

import os
import secrets
import sys
from collections.abc import Callable, Generator, Iterator
from pathlib import Path

import pytest

from . import render, stale
from .host import DEFAULT_VENV, SERVICE_ORDER, DevHost, HostSettings

# /tmp/pytest-of-root and /root are 0700: service users could not reach a root there.
TEST_BASE = Path(os.environ.get("FLASHPODS_TEST_BASE", "/var/tmp/flashpods-test"))
TEST_SECRETS = {"ANTHROPIC_API_KEY": "sk-test-anthropic", "GITHUB_TOKEN": "ghp-test-github"}
TEST_ROLES = {"worker": ["GITHUB_TOKEN"], "sub_agent": ["ANTHROPIC_API_KEY", "GITHUB_TOKEN"]}


def new_settings(**overrides: object) -> HostSettings:
    """HostSettings for a test: unique root and instance, free ports, test secrets."""
    unique = secrets.token_hex(4)
    values: dict[str, object] = {
        "root": TEST_BASE / unique,
        "instance": f"t-{unique}",
        # scripts/test and scripts/lib/venv.sh honour FLASHPODS_VENV too.
        "venv": Path(os.environ.get("FLASHPODS_VENV", DEFAULT_VENV)),
        "api_port": 0,
        "rsync_port": 0,
        "secrets": dict(TEST_SECRETS),
        "roles": {role: list(names) for role, names in TEST_ROLES.items()},
        # Short retention and a fast reaper keep tests quick; tests override freely.
        "api_overrides": {"reaper": {"interval_s": 0.2}},
        # Test hosts start cold: the packaged default pool (on for users) would start
        # containers in each of the suite's hundreds of hosts, on a 2-core CI machine.
        # Tests of the warm path ask for a pool (warm_pool= or api_overrides).
        "warm_pool": {},
    }
    values.update(overrides)
    return HostSettings(**values)  # type: ignore[arg-type]


def pytest_configure(config: pytest.Config) -> None:
    # The shared templates live in the repository (modules/flashpods), not in the
    # installed package: point the renderer at the checkout under test.
    templates = Path(config.rootpath) / "modules" / "flashpods"
    if templates.is_dir():
        os.environ.setdefault(render.TEMPLATE_DIR_ENV, str(templates))


def pytest_sessionstart(session: pytest.Session) -> None:
    # Roots of crashed runs (services dead, containers gone, untouched for a while);
    # FLASHPODS_TEST_KEEP_ROOT=1 keeps them, as it keeps this session's.
    if os.environ.get("FLASHPODS_TEST_KEEP_ROOT") == "1":
        return
    for root in stale.remove_stale_roots(TEST_BASE):
        print(f"flashpods-devhost: removed the stale test root {root}", file=sys.stderr)


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if report.when == "call":
        item.stash[_FAILED] = report.failed
    return report


_FAILED = pytest.StashKey[bool]()


@pytest.fixture
def devhost_factory(request: pytest.FixtureRequest) -> Iterator[Callable[..., DevHost]]:
    hosts: list[DevHost] = []

    def make(**overrides: object) -> DevHost:
        host = DevHost(new_settings(**overrides))
        hosts.append(host)
        host.start()
        return host

    yield make

    failed = request.node.stash.get(_FAILED, True)
    keep = os.environ.get("FLASHPODS_TEST_KEEP_ROOT") == "1"
    problems = []
    for host in reversed(hosts):
        if failed:
            for name in host._services or SERVICE_ORDER:  # the proxy's too, when it ran
                print(f"--- {host.settings.root} {name}.log ---\n{host.log(name)}", file=sys.stderr)
        if keep and host.settings.root.is_dir():
            (host.settings.root / stale.KEPT_MARKER).touch()
        try:
            host.stop(remove_root=not keep)
        except Exception as error:  # stop the other hosts anyway, then report
            problems.append(f"{host.settings.root}: {error}")
    if problems:
        pytest.fail("stopping dev hosts failed: " + "; ".join(problems))
