"""A smoke pass of every benchmark (issue 7): few samples, real dev hosts.

Benchmarks are not timed tests: a missed target never fails here. What fails is a
benchmark that no longer runs (the code rotted) or one that stops producing numbers.
"""

from __future__ import annotations

import math
import subprocess
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


def test_profile_samples_the_client_and_every_service(tmp_path: Path) -> None:
    """bench/profile (py-spy) must keep attaching to the benchmark and to the services it
    starts, or the profiles behind docs/benchmarks.md could not be made again."""
    out = tmp_path / "profiles"
    done = subprocess.run(
        [REPO / "bench" / "profile", "P5", "--smoke", "--format", "raw", "--out", out],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "| P5c |" in (out / "report.md").read_text()
    for name in ("bench", "flashpods-api", "flashpods-reaper", "flashpods-token"):
        profiles = sorted(out.glob(f"{name}*.raw"))
        assert profiles, f"no py-spy profile of {name} in {sorted(out.iterdir())}"
        stacks = profiles[0].read_text()
        assert stacks.strip(), f"{profiles[0]} is empty"
    # Stacks that every such run has (a short request may fall between two samples):
    # the benchmark's own function, and the API's gunicorn master loop.
    assert "log_and_artifacts" in (out / "bench.raw").read_text()
    assert "Arbiter.run" in "".join(p.read_text() for p in out.glob("flashpods-api*.raw"))
