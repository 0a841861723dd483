"""scripts/security-figures rewrites only its marked block of docs/security.md."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(REPO / "tests" / "integration" / "hostile"))
import figures  # noqa: E402

FUZZ = {
    "seed": 5, "cases": 2400, "requests": 2400, "by_status": {"2xx": 400, "4xx": 2000},
    "server_errors": 0, "exit_code": 0, "problems": [], "seconds": 180,
}  # fmt: skip
SOAK = {
    "seed": 7, "kills": {"api": 2, "reaper": 1, "token": 1}, "jobs_planned": 3,
    "jobs_on_host": 4, "jobs_checked": 4, "losses": [], "containers_left": [],
    "integrity": "ok", "problems": [], "seconds": 60,
}  # fmt: skip


def test_only_the_marked_block_changes_and_it_holds_every_figure():
    doc = f"# Security\nbefore\n{figures.BEGIN}\nold figures\n{figures.END}\nafter\n"
    block = figures.render(FUZZ, SOAK, "commit abc")
    out = figures.rewrite(doc, block)
    assert out.startswith("# Security\nbefore\n") and out.endswith("\nafter\n")
    assert "old figures" not in out
    for text in ("| 2400 |", "| 0 |", "4: api 2, reaper 1, token 1", "3 / 4", "4 checked, 0 lost"):
        assert text in out, text
    assert figures.rewrite(out, block) == out  # rerunning changes nothing but figures


def test_the_real_document_has_the_markers():
    doc = (REPO / "docs" / "security.md").read_text()
    assert doc.count(figures.BEGIN) == 1 and doc.count(figures.END) == 1


def test_a_document_without_markers_is_refused():
    with pytest.raises(SystemExit, match="no block"):
        figures.rewrite("# Security\n", "block")
