"""Markers for tests under tests/unit that need more than Python.

The flake's `checks.unit-tests` runs `pytest -m "not root and not slow"` in the Nix build
sandbox: no root, no network, no podman, no rsync, no compiler. Tests that need any of
those carry `root` or `slow`: most by a decorator in their module, and here the ones
whose need comes from a fixture they share or from a directory owned elsewhere.
"""

from __future__ import annotations

import pytest

# A fixture (also when reached through another fixture) -> the marks its users need.
FIXTURE_MARKS = {
    "helper": ("slow",),  # tests/unit/helper: builds the static helper with gcc/musl-gcc
    "rsync_daemon": ("slow",),  # tests/unit/mcp: a real rsync daemon
}
# A test module (path relative to the rootdir) -> the marks of all its tests.
MODULE_MARKS = {
    "tests/unit/helper/test_helper_build.py": ("slow",),  # compiles the helper
}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    root = config.rootpath
    for item in items:
        try:
            module = item.path.relative_to(root).as_posix()
        except ValueError:
            continue
        if not module.startswith("tests/unit/"):
            continue
        wanted = set(MODULE_MARKS.get(module, ()))
        for fixture in getattr(item, "fixturenames", ()):
            wanted.update(FIXTURE_MARKS.get(fixture, ()))
        for name in sorted(wanted - {mark.name for mark in item.iter_markers()}):
            item.add_marker(getattr(pytest.mark, name))
