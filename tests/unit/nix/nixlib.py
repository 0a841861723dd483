"""Where the Nix evaluation tests find nix-instantiate and nixpkgs' lib.

nixpkgs' lib (the `lib/` directory of NixOS/nixpkgs, e.g. a checkout of
nix-community/nixpkgs.lib) comes from FLASHPODS_NIXPKGS_LIB, or else from
`../shared/nixpkgs-lib` beside the repository (where CI keeps one: it cannot fetch
it). scripts/lib/check-nix.sh looks in the same two places. Without either, the tests
that need it skip with SKIP_REASON; with one, none of them skips.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]
NIX = shutil.which("nix-instantiate")
SHARED_LIB = REPO.parent / "shared" / "nixpkgs-lib"


def find_nixpkgs_lib() -> Path | None:
    """The directory holding nixpkgs' lib/default.nix (the lib itself), or None."""
    configured = os.environ.get("FLASHPODS_NIXPKGS_LIB")
    base = Path(configured) if configured else SHARED_LIB
    for lib_dir in (base / "lib", base):
        if (lib_dir / "default.nix").is_file() and (lib_dir / "modules.nix").is_file():
            return lib_dir
    return None


NIX_LIB = find_nixpkgs_lib()
_LOOKED_AT = os.environ.get("FLASHPODS_NIXPKGS_LIB") or SHARED_LIB
SKIP_REASON = (
    "needs nix-instantiate (Debian's nix-bin) and a copy of nixpkgs' lib, which cannot "
    f"be fetched here, and there is none at {_LOOKED_AT}: "
    "set FLASHPODS_NIXPKGS_LIB to a checkout of nix-community/nixpkgs.lib, or keep one at "
    f"{SHARED_LIB} (CI does); the parse and builtins-only checks (test_nix_parse.py) run "
    "without it"
)


def nix_eval(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [NIX or "nix-instantiate", "--eval", "--strict", "--json", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def evaluate_module() -> dict:
    """What tests/unit/nix/eval-module.nix returns: the module's configs and units."""
    result = nix_eval("tests/unit/nix/eval-module.nix", "--arg", "nixpkgsLib", str(NIX_LIB))
    # An option the module sets or reads that the typed stubs (nixpkgs) lack fails
    # here: "The option `services.spire' does not exist" / "attribute 'spire' missing".
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)
