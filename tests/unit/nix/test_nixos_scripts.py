"""The NixOS VM tests cannot run here (no binary cache, no KVM that boots guests), but
their Python can be checked: each testScript is rendered by Nix with the option values
of the test host (tests/nixos/lib/render-scripts.nix), then parsed and linted with
pyflakes' rules the way the NixOS test driver lints it, and every invariant V1-V20 of
14-validation.md must be covered by a subtest.
"""

from __future__ import annotations

import ast
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]
NIX = shutil.which("nix-instantiate")
RUFF = shutil.which("ruff") or str(Path(sys.executable).parent / "ruff")
DRIVER_GLOBALS = ["host", "laptop", "stranger", "internet", "start_all", "subtest"]

pytestmark = pytest.mark.skipif(
    NIX is None,
    reason="nix-instantiate missing: install Debian's nix-bin (scripts/lib/packages.sh does)",
)


@pytest.fixture(scope="module")
def scripts() -> dict[str, str]:
    result = subprocess.run(
        [NIX or "nix-instantiate", "--eval", "--strict", "--json"]
        + ["tests/nixos/lib/render-scripts.nix"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_every_vm_test_is_rendered(scripts):
    listed = set(
        re.findall(r"= test \./([a-z-]+)\.nix;", (REPO / "tests/nixos/default.nix").read_text())
    )
    assert listed == set(scripts)


@pytest.mark.parametrize(
    "name", ["tunnel-and-api", "container-egress", "spire-attestation", "lifecycle"]
)
def test_script_is_valid_python_without_pyflakes_errors(scripts, name, tmp_path):
    source = scripts[name]
    ast.parse(source)
    path = tmp_path / f"{name.replace('-', '_')}.py"
    path.write_text(source)
    builtins = json.dumps(DRIVER_GLOBALS)
    result = subprocess.run(
        [RUFF, "check", "--isolated", "--select", "F,E9", "--config", f"builtins={builtins}"]
        + [str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_invariant_has_a_subtest(scripts):
    covered: set[int] = set()
    for source in scripts.values():
        for title in re.findall(r'with subtest\("([^"]*)"\)', source):
            covered.update(int(n) for n in re.findall(r"\bV(\d+)\b", title))
    assert covered == set(range(1, 21)), sorted(set(range(1, 21)) - covered)


def test_every_script_ends_with_a_leak_check_or_proves_retention(scripts):
    for name, source in scripts.items():
        assert "assert_no_secret_leaked(" in source, name
