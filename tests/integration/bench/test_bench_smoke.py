"""A smoke pass of every benchmark (issue 7): few samples, real dev hosts.

Benchmarks are not timed tests: a missed target never fails here. What fails is a
benchmark that no longer runs (the code rotted) or one that stops producing numbers.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(REPO))

from bench import run  # noqa: E402  (bench/ lives at the repo root, outside the installed packages)

SMOKE = dict(run.plan(smoke=True))


@pytest.mark.parametrize("bench_id", sorted(SMOKE))
def test_benchmark_runs_and_reports_numbers(bench_id: str) -> None:
    produced = SMOKE[bench_id]()
    results = produced if isinstance(produced, list) else [produced]
    assert results, f"{bench_id} produced no result"
    for result in results:
        assert result.id.startswith(bench_id[:2])
        assert result.flashpods, f"{result.id} reported no Flashpods figure"
        if result.ratio is not None:
            assert math.isfinite(result.ratio) and result.ratio > 0, result
    report = run.render(results, [], smoke=True)
    assert all(f"| {r.id} |" in report for r in results)
