"""scripts/lib/build-helper.sh: a static, root-owned 0755 binary, rebuilt only
when its sources change, replaced atomically."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest
from helper_support import BUILD_SCRIPT, REPO, make_root


def build(script: Path, out: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(script)],
        env=dict(os.environ, FLASHPODS_HELPER_OUT=str(out), **env),
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.fixture
def repo_copy():
    """A copy of the build script and helper sources, free to edit."""
    root = make_root("helper-build")
    (root / "scripts" / "lib").mkdir(parents=True)
    shutil.copy2(BUILD_SCRIPT, root / "scripts" / "lib" / "build-helper.sh")
    shutil.copytree(REPO / "images" / "helper", root / "images" / "helper")
    yield root
    shutil.rmtree(root, ignore_errors=True)


def test_builds_a_static_root_owned_binary(helper):
    st = helper.stat()
    assert stat.S_IMODE(st.st_mode) == 0o755
    assert (st.st_uid, st.st_gid) == (0, 0)
    described = subprocess.run(["file", str(helper)], capture_output=True, text=True).stdout
    assert "statically linked" in described
    assert "dynamic" not in subprocess.run(
        ["ldd", str(helper)], capture_output=True, text=True
    ).stdout.replace("not a dynamic executable", "")


def test_second_build_is_skipped(helper):
    result = build(BUILD_SCRIPT, helper)

    assert result.returncode == 0, result.stderr
    assert "is up to date" in result.stdout


def test_rebuilds_when_a_source_changes_and_force(repo_copy):
    script = repo_copy / "scripts" / "lib" / "build-helper.sh"
    out = repo_copy / "out" / "flashpods-init"
    first = build(script, out)
    assert first.returncode == 0, first.stderr
    assert "built" in first.stdout
    version1 = subprocess.run([str(out), "--version"], capture_output=True, text=True).stdout

    source = repo_copy / "images" / "helper" / "util.c"
    source.write_text(source.read_text() + "\n/* changed */\n")
    second = build(script, out)
    version2 = subprocess.run([str(out), "--version"], capture_output=True, text=True).stdout
    forced = build(script, out, FLASHPODS_HELPER_FORCE="1")

    assert "built" in second.stdout and "up to date" not in second.stdout
    assert version1 != version2
    assert "built" in forced.stdout


def test_a_failed_build_keeps_the_old_binary(repo_copy):
    script = repo_copy / "scripts" / "lib" / "build-helper.sh"
    out = repo_copy / "out" / "flashpods-init"
    assert build(script, out).returncode == 0
    before = out.read_bytes()
    source = repo_copy / "images" / "helper" / "util.c"
    source.write_text(source.read_text() + "\nint unused_broken(void) { return }\n")

    result = build(script, out)

    assert result.returncode != 0
    assert out.read_bytes() == before
    assert sorted(p.name for p in out.parent.iterdir()) == ["flashpods-init"]  # no temp left


@pytest.mark.parametrize("compiler", ["gcc", "musl-gcc"])
def test_sources_build_like_the_nix_package(compiler, tmp_path):
    # modules/pkgs/flashpods-init.nix builds with pkgsStatic (musl) and no
    # -D_GNU_SOURCE: the sources must not depend on this script's flags.
    out = tmp_path / "flashpods-init"
    sources = sorted(str(p) for p in (REPO / "images" / "helper").glob("*.c"))

    built = subprocess.run(
        [compiler, "-static", "-O2", "-Wall", "-Wextra", "-Werror", "-o", str(out), *sources],
        capture_output=True,
        text=True,
        timeout=300,
    )

    assert built.returncode == 0, built.stderr
    ran = subprocess.run(
        [str(out), "--", "/bin/sh", "-c", "umask"],
        env={
            "PATH": "/usr/bin:/bin",
            "FLASHPODS_INPUT_DIR": str(tmp_path / "none"),
            "FLASHPODS_SECRETS": "optional",
        },
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert ran.stdout == "0002\n", ran.stderr
