"""What buildGoModule does with the plugin (modules/pkgs/spire-attestor.nix), done here
step by step, since no Nix build runs on these machines:

- its vendorHash is the one the plugin's go.mod/go.sum give: `go mod vendor` into a
  scratch directory outside the repository and `nix hash path` of the result, exactly
  as docs/nixos.md ("The attestor plugin's package and vendorHash") shows. buildGoModule
  checks its fixed-output vendor tree against that hash, so a go.sum changed without a
  new vendorHash would fail every Nix build of the host; here it fails in CI first;
- from that vendor tree alone (GOPROXY=off, -mod=vendor, -trimpath, CGO_ENABLED=0) the
  plugin builds, and its Go tests pass as the build sandbox runs them: as an
  unprivileged user with no capabilities (buildGoModule's checkPhase, `-vet=off`).

No network: the modules come from the Go module cache scripts/lib/spire.sh filled when
it built the plugin. This is the computation buildGoModule does, not its verdict."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
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


@pytest.fixture(scope="module")
def vendored():
    """The plugin's sources and `go mod vendor` of them, in a scratch directory any user
    can read (the sandbox-like build below runs as nobody)."""
    built = subprocess.run(
        ["bash", str(REPO / "scripts" / "lib" / "spire.sh"), "attestor"],
        capture_output=True, text=True, timeout=900, check=False,
    )  # fmt: skip
    assert built.returncode == 0, built.stderr[-3000:]
    cache = Path(os.environ.get("FLASHPODS_SPIRE_CACHE", "/var/cache/flashpods/spire"))
    modcache = Path(os.environ.get("FLASHPODS_SPIRE_GOMODCACHE", str(cache / "gomod")))
    scratch = Path(tempfile.mkdtemp(prefix="flashpods-attestor-nix-", dir="/var/tmp"))
    scratch.chmod(0o755)
    src = scratch / "src"
    src.mkdir()
    for path in [ATTESTOR / "go.mod", ATTESTOR / "go.sum", *ATTESTOR.glob("*.go")]:
        shutil.copy(path, src)
    env = {
        **os.environ,
        # The shared cache is only read (as a file:// proxy); go.sum still checks every
        # module, and nothing is fetched from the network.
        "GOPROXY": f"file://{modcache}/cache/download",
        "GOSUMDB": "off",
        "GOMODCACHE": str(scratch / "gomod"),
        "GOCACHE": str(scratch / "gocache"),
        "GOTOOLCHAIN": "local",
        "GOFLAGS": "-mod=mod -modcacherw",
    }
    out = subprocess.run(
        [go(), "mod", "vendor"], cwd=src, env=env,
        capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    assert (src / "vendor" / "modules.txt").is_file()
    yield src
    shutil.rmtree(scratch, ignore_errors=True)


def test_the_packages_vendor_hash_is_the_one_go_sum_gives(vendored):
    nix = shutil.which("nix")
    assert nix, "nix not found: install Debian's nix-bin (scripts/lib/packages.sh installs it)"
    hashed = subprocess.run(
        [nix, "--extra-experimental-features", "nix-command", "hash", "path", "vendor"],
        cwd=vendored, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert hashed.returncode == 0, hashed.stderr
    computed = hashed.stdout.strip()
    assert computed == package_vendor_hash(), (
        f"go.mod/go.sum vendor to {computed}, but modules/pkgs/spire-attestor.nix says "
        f"{package_vendor_hash()}: put {computed} there and in docs/nixos.md"
    )
    # Nothing vendored lands in the repository.
    assert not (ATTESTOR / "vendor").exists()


@pytest.mark.root
def test_the_plugin_builds_and_passes_its_tests_as_the_nix_sandbox_runs_them(vendored):
    cache = Path(os.environ.get("FLASHPODS_SPIRE_CACHE", "/var/cache/flashpods/spire"))
    env = {
        **os.environ,
        # The vendor tree only, nothing from the network or the module cache.
        "GOPROXY": "off",
        "GOSUMDB": "off",
        "GOFLAGS": "-mod=vendor",
        "GOTOOLCHAIN": "local",
        "CGO_ENABLED": "0",
        # scripts/lib/spire.sh's build cache: with -trimpath the dependencies it
        # compiled for the plugin are reused, so this costs seconds, not minutes.
        "GOCACHE": os.environ.get("FLASHPODS_SPIRE_GOCACHE", str(cache / "gocache")),
    }
    for argv in (
        [go(), "build", "-trimpath", "-ldflags=-s -w", "-o", "plugin", "."],
        [go(), "test", "-c", "-trimpath", "-o", "plugin.test", "."],
    ):
        out = subprocess.run(
            argv, cwd=vendored, env=env,
            capture_output=True, text=True, timeout=600, check=False,
        )  # fmt: skip
        assert out.returncode == 0, f"{argv}: {out.stdout[-3000:]}{out.stderr[-3000:]}"
    # The tests run as the sandbox's build user would: an unprivileged uid with no
    # capability at all (a test that needed root or CAP_SYS_PTRACE fails the Nix build).
    shutil.chown(vendored, "nobody")
    nobody = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups",
              "--inh-caps=-all", "--bounding-set=-all", "--"]  # fmt: skip
    out = subprocess.run(
        [*nobody, "./plugin.test", "-test.count=1"], cwd=vendored,
        env={"PATH": "/usr/bin:/bin", "HOME": str(vendored), "TMPDIR": "/tmp"},
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout[-5000:] + out.stderr[-3000:]
    assert out.stdout.strip().endswith("PASS"), out.stdout[-3000:]
