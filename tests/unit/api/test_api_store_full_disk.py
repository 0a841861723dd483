"""A database write that fails on a full disk must not poison the connection for later ones.

On a real full disk the reaper failed one tick with "database or disk is full" at COMMIT
and then every later tick on the same pooled connection with "This connection has
already initialized a SQLAlchemy Transaction()", even after the space was back (seen in
the dev host's disk-full test before the fix). Here the database sits on a 2 MiB tmpfs
that a file fills (SQLite's max_page_count fails the statement instead, never the
COMMIT, so it does not reproduce this).
"""

from __future__ import annotations

import os
import subprocess

import pytest
import sqlalchemy.exc
from flashpods_api.store import Store

pytestmark = pytest.mark.root


@pytest.fixture
def tiny_disk(tmp_path):
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(tmp_path)], check=True)
    try:
        yield tmp_path
    finally:
        subprocess.run(["umount", "-l", str(tmp_path)], check=False)


def _fill(path):
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        while os.write(fd, b"\0" * 4096):
            pass
    except OSError:
        pass  # ENOSPC: full
    finally:
        os.close(fd)


def test_a_commit_that_hit_a_full_disk_leaves_the_store_usable(tiny_disk):
    store = Store(tiny_disk / "db.sqlite", "t")
    store.beat("reaper", 1)
    _fill(tiny_disk / "filler")
    failed = 0
    for i in range(50):
        try:
            store.record_probe(f"probe-{i}", True, "x" * 4000)
        except sqlalchemy.exc.OperationalError as exc:
            assert "full" in str(exc)
            failed += 1
    assert failed
    os.unlink(tiny_disk / "filler")  # the space is back
    store.beat("reaper", 2)  # failed with InvalidRequestError before the fix
    assert store.health_snapshot() is not None
    store.close()
