"""The NixOS VM tests cannot run here (no binary cache, no KVM that boots guests), but
their Python can be checked as the NixOS test driver checks it. Each testScript is
rendered by Nix from the configuration that evaluating the test's own host modules
(the Flashpods module, the test host's settings, the test's overrides) produces against
the typed stubs (tests/nixos/lib/render-scripts.nix), then:

- linted with pyflakes, with the machines and driver globals as builtins
  (PYFLAKES_BUILTINS, as nixos/lib/testing/driver.nix runs it);
- type-checked with mypy after the driver's typed prelude and one `<machine>: Machine`
  line per node (as the driver's typecheck does), against a stub of its Machine API;
- checked for host paths that nothing on the host writes (the `/var/output/...` of a
  mechanical rename made every test fail) and for network modes nixpkgs does not install.

Needs nixpkgs' lib (tests/unit/nix/nixlib.py); skipped with that reason without it.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest

from .nixlib import NIX, NIX_LIB, REPO, SKIP_REASON

DRIVER_STUBS = REPO / "tests/nixos/lib/driver-stubs"
MACHINES = ["host", "laptop", "stranger", "internet"]
# nixos/lib/test-driver: the globals a testScript may use without defining them.
DRIVER_GLOBALS = [
    "start_all",
    "subtest",
    "retry",
    "test_script",
    "machines",
    "vlans",
    "driver",
    "log",
    "create_machine",
    "run_tests",
    "join_all",
    "serial_stdout_off",
    "serial_stdout_on",
    "polling_condition",
    "Machine",
]
VM_TESTS = ["tunnel-and-api", "container-egress", "spire-attestation", "lifecycle"]

pytestmark = pytest.mark.skipif(NIX is None or NIX_LIB is None, reason=SKIP_REASON)


@pytest.fixture(scope="module")
def rendered() -> dict[str, dict]:
    result = subprocess.run(
        [NIX or "nix-instantiate", "--eval", "--strict", "--json"]
        + ["tests/nixos/lib/render-scripts.nix", "--arg", "nixpkgsLib", str(NIX_LIB)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


@pytest.fixture(scope="module")
def scripts(rendered) -> dict[str, str]:
    return {name: test["script"] for name, test in rendered.items()}


def test_every_vm_test_is_rendered(rendered):
    default = (REPO / "tests/nixos/default.nix").read_text()
    listed = set(re.findall(r"= test \./([a-z-]+)\.nix;", default))
    assert listed == set(rendered) == set(VM_TESTS)


@pytest.mark.parametrize("name", VM_TESTS)
def test_the_test_host_passes_every_assertion(rendered, name):
    assert rendered[name]["failedAssertions"] == []


@pytest.mark.parametrize("name", VM_TESTS)
def test_script_passes_pyflakes_as_the_driver_runs_it(scripts, name, tmp_path):
    path = tmp_path / f"{name.replace('-', '_')}.py"
    path.write_text(scripts[name])
    result = subprocess.run(
        [sys.executable, "-m", "pyflakes", str(path)],
        env={**os.environ, "PYFLAKES_BUILTINS": ",".join(MACHINES + DRIVER_GLOBALS)},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("name", VM_TESTS)
def test_script_passes_mypy_against_the_driver_api(scripts, name, tmp_path):
    typed = (
        (DRIVER_STUBS / "prepend.py").read_text()
        + "".join(f"{machine}: Machine\n" for machine in MACHINES)
        + scripts[name]
    )
    path = tmp_path / f"{name.replace('-', '_')}.py"
    path.write_text(typed)
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "--no-implicit-optional", "--no-incremental"]
        + ["--cache-dir", str(tmp_path / "mypy-cache"), "--no-error-summary", str(path)],
        env={**os.environ, "MYPYPATH": str(DRIVER_STUBS)},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


# Host paths a script may name besides those the configuration declares: the
# test's own scratch files, and the in-container mounts the API makes
# (services/api/flashpods_api/runtime.py).
SCRATCH = ("/tmp/probe", "/tmp/src", "/tmp/up", "/etc/", "/run/user/", "/run/wrappers")
IN_CONTAINER = ("/run/spire/sockets/agent.sock", "/flashpods/", "/workspace", "/artifacts")
HOST_PATH = re.compile(r"(?<![\w.:/$-])(/(?:var|run|tmp)/[\w./@%-]*)")


@pytest.mark.parametrize("name", VM_TESTS)
def test_every_host_path_a_script_checks_is_one_the_host_has(rendered, name):
    declared = rendered[name]["hostPaths"]
    unknown = sorted(
        {
            path
            for path in HOST_PATH.findall(rendered[name]["script"])
            if not path.startswith(SCRATCH + IN_CONTAINER)
            and not any(path == d or path.startswith(d.rstrip("/") + "/") for d in declared)
        }
    )
    assert unknown == [], f"{name} checks paths no service writes: {unknown}"


def test_scripts_use_the_file_names_the_services_write(scripts):
    # The final job log is <logs>/<id>.log and the token audit log is audit.log
    # (flashpods_api/logs.py, the module's token config); a check of a file that is
    # never written passes vacuously when it waits for it to disappear.
    for name, source in scripts.items():
        assert "/var/output" not in source, name
        assert '.output"' not in source and ".output'" not in source, name
        assert "audit.output" not in source, name


def test_rootless_networks_are_those_nixpkgs_installs(scripts):
    # nixpkgs' Podman module installs slirp4netns only when containers.conf makes it
    # the default rootless network; pasta is the default (facts, PR #313670).
    for name, source in scripts.items():
        assert "slirp4netns" not in re.sub(r"#.*", "", source), name
    assert '"pasta"' in scripts["container-egress"]


def test_spire_test_waits_for_the_modules_own_units(rendered):
    spire = rendered["spire-attestation"]
    for unit in re.findall(r'wait_for_unit\("([^"]+)"\)', spire["script"]):
        if unit.startswith("flashpods-"):
            assert unit.removesuffix(".service") in spire["units"], unit
    assert "flashpods-spire-agent.service" in spire["script"]
    assert 'spire-server.service")' not in spire["script"].replace("flashpods-spire-server", "")


def test_every_invariant_has_a_subtest(scripts):
    covered: set[int] = set()
    for source in scripts.values():
        for title in re.findall(r'with subtest\("([^"]*)"\)', source):
            covered.update(int(n) for n in re.findall(r"\bV(\d+)\b", title))
    assert covered == set(range(1, 21)), sorted(set(range(1, 21)) - covered)


def test_every_script_ends_with_a_leak_check_or_proves_retention(scripts):
    for name, source in scripts.items():
        assert "assert_no_secret_leaked(" in source, name
