"""The Nix code checked without a binary cache: every file parses, the lock and the
pyproject files read the way the flake reads them, and the NixOS module fills every
placeholder of the templates it shares with the dev host.

These run scripts/lib/check-nix.sh's offline steps through pytest so they show in the
test summary; the module evaluation with nixpkgs' lib is in test_nix_module.py.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]
MODULE_DIR = REPO / "modules" / "flashpods"
NIX = shutil.which("nix-instantiate")

pytestmark = pytest.mark.skipif(
    NIX is None,
    reason="nix-instantiate missing: install Debian's nix-bin (scripts/lib/packages.sh)",
)


def nix_files() -> list[Path]:
    return sorted(
        p for p in REPO.rglob("*.nix") if ".git" not in p.parts and not p.name.startswith("result")
    )


def run_nix(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [NIX or "nix-instantiate", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_the_flake_and_module_files_exist():
    # The parse test below is parametrized over what exists; make sure that is not nothing.
    names = {p.relative_to(REPO).as_posix() for p in nix_files()}
    for expected in (
        "flake.nix",
        "modules/flashpods/default.nix",
        "modules/flashpods/firewall.nix",
        "modules/pkgs/default.nix",
        "tests/nixos/default.nix",
    ):
        assert expected in names


@pytest.mark.parametrize("path", nix_files(), ids=lambda p: p.relative_to(REPO).as_posix())
def test_every_nix_file_parses(path: Path):
    result = run_nix("--parse", str(path))
    assert result.returncode == 0, result.stderr


def test_lock_flake_and_pyprojects_evaluate_with_builtins_only():
    result = run_nix("--eval", "--strict", "tests/unit/nix/eval-offline.nix")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "true"


def test_offline_eval_reports_a_broken_lock(tmp_path: Path):
    # The offline check must fail, with the reason, when the lock loses its hash.
    copy = tmp_path / "repo"
    for rel in ("flake.nix", "flake.lock", "tests/unit/nix/eval-offline.nix"):
        (copy / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO / rel, copy / rel)
    for rel in ("services/api", "services/token", "services/devhost", "mcp"):
        (copy / rel).mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO / rel / "pyproject.toml", copy / rel / "pyproject.toml")
    lock = copy / "flake.lock"
    lock.write_text(re.sub(r'"narHash": "[^"]*"', '"narHash": "sha256-x"', lock.read_text()))
    result = subprocess.run(
        [NIX or "nix-instantiate", "--eval", "--strict", "tests/unit/nix/eval-offline.nix"],
        cwd=copy,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode != 0
    assert "narHash must be an SRI sha256" in result.stderr


PLACEHOLDER = re.compile(r"@([A-Z][A-Z0-9_]*)@")


@pytest.mark.parametrize(
    ("template", "module"),
    [("firewall.nft.in", "firewall.nix"), ("rsyncd.conf.in", "rsyncd.nix")],
)
def test_module_fills_exactly_the_template_placeholders(template: str, module: str):
    wanted = set(PLACEHOLDER.findall((MODULE_DIR / template).read_text()))
    source = (MODULE_DIR / module).read_text()
    call = source[source.index("fpLib.renderTemplate") :]
    filled = set(re.findall(r"^\s+([A-Z][A-Z0-9_]*) = ", call, flags=re.MULTILINE))
    assert wanted, f"{template} has no placeholders"
    assert filled == wanted, f"{module} fills {sorted(filled)}, {template} has {sorted(wanted)}"


def test_check_nix_script_runs_its_offline_steps():
    result = subprocess.run(
        ["bash", "scripts/lib/check-nix.sh", "parse", "eval"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "nix checks passed: parse eval" in result.stdout


def test_nixos_docs_state_the_spire_facts_of_the_pin():
    # docs/nixos.md must not describe keys SPIRE does not have, must say why SPIRE's own
    # docker attestor is not used, and that no Nix build confirmed the plugin's hash.
    doc = (REPO / "docs/nixos.md").read_text()
    flat = " ".join(doc.split())
    assert "use_rootless_podman" not in doc
    assert "docker:label" not in doc and "podman_socket_path_template =" not in doc
    assert "Flashpods' own workload attestor plugin, `flashpods`" in flat
    assert "the module's default attestation stays the token service's `peer` mode" in flat.lower()
    assert "**No Nix build has confirmed it**" in flat


def test_docs_mark_the_nixfmt_check_unverified():
    for doc in ("README.md", "docs/nixos.md"):
        flat = " ".join((REPO / doc).read_text().split())
        assert "`checks.formatting`) is **unverified**" in flat or (
            "`formatting` (`nixfmt --check`" in flat and "**unverified**" in flat
        ), doc
