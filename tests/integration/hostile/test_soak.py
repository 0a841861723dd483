"""A short kill -9 soak on a real dev host (scripts/soak runs the full one): the API, the
reaper and the token service SIGKILLed at random moments while jobs run, queue and
finish; afterwards every job is final with its whole log and exit code, no container is
left and the database passes PRAGMA integrity_check."""

from __future__ import annotations

import random
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
import soak  # noqa: E402

pytestmark = pytest.mark.slow


def test_a_short_kill_9_soak_loses_nothing(devhost_factory):
    seed = random.SystemRandom().randrange(2**31)
    print(f"soak seed {seed} (replay: scripts/soak --seed {seed} --jobs 12 --kills 8)")
    host = devhost_factory(**soak.SOAK_HOST)
    figures = soak.soak(host, seed=seed, jobs=12, kills=8, settle_s=180)
    print(vars(figures))
    assert sum(figures.kills.values()) >= 8
    assert figures.jobs_checked >= 12
    assert soak.verdict(figures) == [], f"seed {seed}: {vars(figures)}"
