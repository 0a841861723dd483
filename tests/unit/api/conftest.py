"""Fixtures for the API unit tests (the fakes live in api_fakes.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from api_fakes import Host


@pytest.fixture
def host(tmp_path: Path) -> Host:
    h = Host(tmp_path)
    yield h
    h.store.close()


@pytest.fixture
def make_host(tmp_path: Path):
    made: list[Host] = []

    def make(**overrides: Any) -> Host:
        root = tmp_path / f"h{len(made)}"
        root.mkdir()
        h = Host(root, **overrides)
        made.append(h)
        return h

    yield make
    for h in made:
        h.store.close()
