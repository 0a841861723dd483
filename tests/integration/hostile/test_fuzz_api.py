"""A short schemathesis pass over the whole API on a real dev host (scripts/fuzz-api runs
the full one, 2,000+ cases): no 5xx, every answer as GET /openapi.json describes it."""

from __future__ import annotations

import os
import random
import sys
import tempfile
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
import fuzz_api  # noqa: E402

pytestmark = pytest.mark.slow


# A seed whose pass is known clean (replayed: 4,547 cases, 0 problems). CI replays it, so
# whether a change lands does not depend on the draw; every other run (a developer's
# scripts/test, scripts/fuzz-api) draws a new seed and so keeps exploring.
CI_SEED = 357646606


def _seed() -> int:
    chosen = os.environ.get("FLASHPODS_FUZZ_SEED")
    if chosen:
        return int(chosen)
    if os.environ.get("CI") == "true":
        return CI_SEED
    return random.SystemRandom().randrange(2**31)


def test_a_short_fuzz_pass_finds_no_5xx_and_no_schema_break(devhost_factory):
    seed = _seed()
    print(f"fuzz seed {seed} (replay: scripts/fuzz-api --seed {seed})")
    host = devhost_factory(**fuzz_api.FUZZ_HOST)
    with tempfile.TemporaryDirectory(prefix="flashpods-fuzz-") as report_dir:
        figures = fuzz_api.run(
            host, examples=25, seed=seed, max_time_s=90, report_dir=Path(report_dir)
        )
    problems = fuzz_api.verdict(figures, min_cases=300)
    assert not problems, f"{problems}; seed {seed}\n{figures['output']}"
