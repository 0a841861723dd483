"""The Nix package's vendorHash (modules/pkgs/spire-attestor.nix) is the one the plugin's
go.mod/go.sum give: `go mod vendor` into a scratch directory outside the repository and
`nix hash path` of the result, exactly as docs/nixos.md ("The attestor plugin's package
and vendorHash") shows. buildGoModule checks its fixed-output vendor tree against that
hash, so a go.sum changed without a new vendorHash would fail every Nix build of the
host; here it fails in CI first. No network: the modules come from the Go module cache
scripts/lib/spire.sh filled when it built the plugin. No Nix build runs here (no binary
cache), so this is the computation buildGoModule does, not its verdict."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from test_attestor_go_unit import go

REPO = Path(__file__).resolve().parents[3]
ATTESTOR = REPO / "spire" / "attestor"

pytestmark = pytest.mark.timeout(900)


def package_vendor_hash() -> str:
    text = (REPO / "modules" / "pkgs" / "spire-attestor.nix").read_text()
    (value,) = re.findall(r'vendorHash = "(sha256-[A-Za-z0-9+/]{43}=)";', text)
    return value


def test_the_packages_vendor_hash_is_the_one_go_sum_gives(tmp_path):
    nix = shutil.which("nix")
    assert nix, "nix not found: install Debian's nix-bin (scripts/lib/packages.sh installs it)"
    # The plugin build fills the module cache with exactly its modules (cheap when cached).
    built = subprocess.run(
        ["bash", str(REPO / "scripts" / "lib" / "spire.sh"), "attestor"],
        capture_output=True, text=True, timeout=900, check=False,
    )  # fmt: skip
    assert built.returncode == 0, built.stderr[-3000:]
    cache = Path(os.environ.get("FLASHPODS_SPIRE_CACHE", "/var/cache/flashpods/spire"))
    modcache = Path(os.environ.get("FLASHPODS_SPIRE_GOMODCACHE", str(cache / "gomod")))

    src = tmp_path / "src"
    src.mkdir()
    for path in [ATTESTOR / "go.mod", ATTESTOR / "go.sum", *ATTESTOR.glob("*.go")]:
        shutil.copy(path, src)
    env = {
        **os.environ,
        # The shared cache is only read (as a file:// proxy); go.sum still checks every
        # module, and nothing is fetched from the network.
        "GOPROXY": f"file://{modcache}/cache/download",
        "GOSUMDB": "off",
        "GOMODCACHE": str(tmp_path / "gomod"),
        "GOCACHE": str(tmp_path / "gocache"),
        "GOTOOLCHAIN": "local",
        "GOFLAGS": "-mod=mod -modcacherw",
    }
    vendored = subprocess.run(
        [go(), "mod", "vendor"], cwd=src, env=env,
        capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert vendored.returncode == 0, vendored.stderr[-3000:]
    assert (src / "vendor" / "modules.txt").is_file()

    hashed = subprocess.run(
        [nix, "--extra-experimental-features", "nix-command", "hash", "path", "vendor"],
        cwd=src, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert hashed.returncode == 0, hashed.stderr
    computed = hashed.stdout.strip()
    assert computed == package_vendor_hash(), (
        f"go.mod/go.sum vendor to {computed}, but modules/pkgs/spire-attestor.nix says "
        f"{package_vendor_hash()}: put {computed} there and in docs/nixos.md"
    )
    # Nothing vendored lands in the repository.
    assert not (ATTESTOR / "vendor").exists()
