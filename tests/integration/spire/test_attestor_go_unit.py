"""Runs the plugin's Go unit tests (spire/attestor: fixture /proc trees, fake Podman
API, the real kernel's pidfds) as part of the Python test run, so CI runs them."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]


def go() -> str:
    found = shutil.which("go") or "/usr/local/go/bin/go"
    assert os.access(found, os.X_OK), "Go not found: install Go 1.25 or newer"
    return found


def test_attestor_go_unit_tests():
    cache = Path(os.environ.get("FLASHPODS_SPIRE_CACHE", "/var/cache/flashpods/spire"))
    env = {
        **os.environ,
        # The same caches as scripts/lib/spire.sh: its plugin build warmed them.
        "GOMODCACHE": os.environ.get("FLASHPODS_SPIRE_GOMODCACHE", str(cache / "gomod")),
        "GOCACHE": os.environ.get("FLASHPODS_SPIRE_GOCACHE", str(cache / "gocache")),
        "GOTOOLCHAIN": "local",
        "GOFLAGS": "-modcacherw",
    }
    out = subprocess.run(
        [go(), "test", "-count=1", "./..."],
        cwd=REPO / "spire" / "attestor", env=env,
        capture_output=True, text=True, timeout=900, check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout[-5000:] + out.stderr[-3000:]
    assert "ok" in out.stdout
