"""Kill -9 soak: jobs run, queue and finish while the API, the reaper and the token
service are killed with SIGKILL at random moments and restarted.

Every job prints content known from its command alone (`soak job K`: K picks the line
count, pace, size and exit code), so afterwards each job found on the host, including
one created by a POST whose answer a kill swallowed, is checked byte for byte: final,
the expected exit code, its whole log. Then no container of the host may be left and
the database must pass `PRAGMA integrity_check`.

    python tests/integration/hostile/soak.py --jobs 60 --kills 40 --seed 7

prints the figures as JSON and exits non-zero on any loss. The randomness (which
service, when, for how long, what each job does) comes from one seed, printed first.
tests/integration/hostile/test_soak.py runs a short pass of the same.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import signal
import sqlite3
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests
from flashpods_devhost.host import SERVICE_ORDER, DevHost
from flashpods_devhost.pytest_plugin import new_settings

sys.path.insert(0, str(Path(__file__).parents[1] / "api"))
from api_it_support import FINAL, containers  # noqa: E402

KILLABLE = ("api", "reaper", "token")
SOAK_HOST = {"max_concurrent_jobs": 3, "api_overrides": {"reaper": {"interval_s": 0.2}}}
COMMAND = re.compile(r"^# soak job (\d+) seed (\d+)\n")


@dataclass(frozen=True)
class JobPlan:
    """What job K runs and therefore must leave behind."""

    k: int
    seed: int
    lines: int
    pace_s: float
    bulk: int  # extra lines written at full speed (a burst the log must keep whole)
    exit_code: int

    @classmethod
    def draw(cls, k: int, seed: int) -> JobPlan:
        rng = random.Random(f"{seed}/{k}")
        return cls(
            k=k,
            seed=seed,
            lines=rng.randint(1, 40),
            pace_s=rng.choice((0, 0.05, 0.1, 0.2, 0.3)),
            bulk=rng.choice((0, 0, 2000, 20000)),
            exit_code=rng.choice((0, 0, 1, 3)),
        )

    @classmethod
    def of_command(cls, command: str | None) -> JobPlan | None:
        found = COMMAND.match(command or "")
        return cls.draw(int(found[1]), int(found[2])) if found else None

    @property
    def command(self) -> str:
        # The header line names K and the seed; the rest only uses POSIX sh and coreutils.
        return (
            f"# soak job {self.k} seed {self.seed}\n"
            f"i=1; while [ $i -le {self.lines} ]; do "
            f'echo "soak job {self.k} line $i of {self.lines}"; i=$((i+1)); sleep {self.pace_s}; '
            "done\n"
            f'[ {self.bulk} -eq 0 ] || yes "soak job {self.k} bulk" | head -n {self.bulk}\n'
            f"exit {self.exit_code}"
        )

    @property
    def log(self) -> bytes:
        lines = [f"soak job {self.k} line {i} of {self.lines}\n" for i in range(1, self.lines + 1)]
        lines += [f"soak job {self.k} bulk\n"] * self.bulk
        return "".join(lines).encode()

    @property
    def status(self) -> str:
        return "succeeded" if self.exit_code == 0 else "failed"


@dataclass
class Figures:
    seed: int
    jobs_planned: int
    kills: dict[str, int] = field(default_factory=lambda: dict.fromkeys(KILLABLE, 0))
    submit_retries: int = 0
    jobs_on_host: int = 0
    jobs_checked: int = 0
    losses: list[str] = field(default_factory=list)
    containers_left: list[str] = field(default_factory=list)
    integrity: str = ""
    seconds: int = 0


class Client:
    """The API as a laptop sees it: requests that fail while the API is down are retried."""

    def __init__(self, host: DevHost) -> None:
        self.url = host.api_url
        self.session = requests.Session()
        self.session.trust_env = False  # loopback only, never through a proxy
        self.session.headers["Authorization"] = f"Bearer {host.api_token}"

    def call(self, method: str, path: str, deadline: float, **kw: Any) -> requests.Response:
        while True:
            try:
                answer = self.session.request(method, self.url + path, timeout=30, **kw)
                if answer.status_code < 500:
                    return answer
            except requests.RequestException:
                pass  # killed mid-request, or not listening yet
            if time.monotonic() > deadline:
                raise TimeoutError(f"{method} {path}: no answer before the deadline")
            time.sleep(0.2)


# A kill, the time down and the restart take about this long: submissions are spread over
# the kills, so jobs are queued, running and finishing while services die.
KILL_ROUND_S = 4.5


def soak(
    host: DevHost,
    *,
    seed: int,
    jobs: int,
    kills: int,
    settle_s: float = 300,
    services: tuple[str, ...] = KILLABLE,
) -> Figures:
    """Run the soak on a started host; returns the figures (losses empty when all held)."""
    started = time.monotonic()
    rng = random.Random(seed)
    figures = Figures(seed=seed, jobs_planned=jobs)
    client = Client(host)
    plans = [JobPlan.draw(k, seed) for k in range(jobs)]
    submitted = threading.Event()
    errors: list[BaseException] = []

    def submit_all() -> None:
        try:
            pace = random.Random(f"{seed}/submit")
            for plan in plans:
                deadline = time.monotonic() + 120
                while True:
                    body = {"kind": "worker", "command": plan.command, "timeout_s": 600}
                    try:
                        answer = client.session.post(client.url + "/jobs", json=body, timeout=30)
                    except requests.RequestException:
                        answer = None  # maybe created, maybe not: the listing will tell
                    if answer is not None and answer.status_code == 201:
                        break
                    figures.submit_retries += 1
                    if time.monotonic() > deadline:
                        raise TimeoutError(f"job {plan.k} could not be submitted in 120 s")
                    time.sleep(0.2)
                # Clumps (several at once: some wait in the queue) and gaps.
                mean_gap = kills * KILL_ROUND_S / max(jobs, 1)
                time.sleep(0 if pace.random() < 0.4 else pace.uniform(0, mean_gap / 0.3))
        except BaseException as error:  # reported by the main thread
            errors.append(error)
        finally:
            submitted.set()

    submitter = threading.Thread(target=submit_all, name="soak-submitter")
    submitter.start()
    try:
        for _ in range(kills):
            time.sleep(rng.uniform(0.2, 2.5))
            victims = [rng.choice(services)]
            if rng.random() < 0.2:  # now and then two at once
                victims = sorted({*victims, rng.choice(services)}, key=SERVICE_ORDER.index)
            for name in victims:
                host.kill(name, signal.SIGKILL)
                figures.kills[name] += 1
            time.sleep(rng.uniform(0, 2.0))  # down for a while: jobs go on without it
            host.start(*victims)
    finally:
        submitter.join()
    if errors:
        raise errors[0]
    check(host, client, figures, time.monotonic() + settle_s)
    figures.seconds = round(time.monotonic() - started)
    return figures


def check(host: DevHost, client: Client, figures: Figures, deadline: float) -> None:
    """Every job final and whole, no container left, the database intact."""
    listed = all_jobs(client, deadline)
    while any(job["status"] not in FINAL for job in listed) and time.monotonic() < deadline:
        time.sleep(0.5)
        listed = all_jobs(client, deadline)
    figures.jobs_on_host = len(listed)
    seen = set()
    for job in listed:
        plan = JobPlan.of_command(job["command"])
        if plan is None:
            figures.losses.append(f"{job['id']}: a job the soak did not submit")
            continue
        seen.add(plan.k)
        figures.jobs_checked += 1
        log = client.call(
            "GET", f"/jobs/{job['id']}/logs", deadline, params={"format": "raw", "limit": 2**30}
        ).content
        got = (job["status"], job["exit_code"])
        if got != (plan.status, plan.exit_code):
            figures.losses.append(
                f"{job['id']} (job {plan.k}): {got}, not {(plan.status, plan.exit_code)}; "
                f"error: {job['error']}; log ends: {log[-300:].decode(errors='replace')!r}"
            )
            continue
        if log != plan.log:
            figures.losses.append(
                f"{job['id']} (job {plan.k}): log of {len(log)} bytes differs from the "
                f"expected {len(plan.log)} (first difference at byte {_diff_at(log, plan.log)})"
            )
    missing = sorted(set(range(figures.jobs_planned)) - seen)
    if missing:
        figures.losses.append(f"jobs never created: {missing}")
    end = time.monotonic() + 30
    while (left := containers(host)) and time.monotonic() < end:
        time.sleep(0.5)
    figures.containers_left = left
    figures.integrity = integrity(host.paths.db)


def all_jobs(client: Client, deadline: float) -> list[dict[str, Any]]:
    jobs: list[dict[str, Any]] = []
    params: dict[str, Any] = {"limit": 500}
    while True:
        page = client.call("GET", "/jobs", deadline, params=params).json()
        jobs += page["jobs"]
        if not page["next_cursor"]:
            return jobs
        params["cursor"] = page["next_cursor"]


def integrity(db: Path) -> str:
    connection = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
    try:
        return ", ".join(row[0] for row in connection.execute("PRAGMA integrity_check"))
    finally:
        connection.close()


def verdict(figures: Figures) -> list[str]:
    problems = list(figures.losses)
    if figures.containers_left:
        problems.append(f"containers left behind: {figures.containers_left}")
    if figures.integrity != "ok":
        problems.append(f"PRAGMA integrity_check: {figures.integrity}")
    return problems


def _diff_at(a: bytes, b: bytes) -> int:
    pairs = zip(a, b, strict=False)
    return next((i for i, (x, y) in enumerate(pairs) if x != y), min(len(a), len(b)))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=60)
    parser.add_argument("--kills", type=int, default=40)
    parser.add_argument("--seed", type=int, default=None, help="default: random (printed)")
    parser.add_argument(
        "--services", default=",".join(KILLABLE), help="which to kill (default: %(default)s)"
    )
    parser.add_argument(
        "--helper", default=None, help="the flashpods-init jobs run (default: the host's)"
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args(argv)
    services = tuple(args.services.split(","))
    if not services or set(services) - set(KILLABLE):
        parser.error(f"--services takes names from {', '.join(KILLABLE)}")
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(2**31)
    print(f"soak: seed {seed}", file=sys.stderr, flush=True)
    settings: dict[str, Any] = dict(SOAK_HOST)
    if args.helper:  # e.g. one built from this checkout by scripts/lib/build-helper.sh
        settings["api_overrides"] = {**SOAK_HOST["api_overrides"], "helper_path": args.helper}
    host = DevHost(new_settings(**settings))
    host.start()
    try:
        figures = soak(host, seed=seed, jobs=args.jobs, kills=args.kills, services=services)
        problems = verdict(figures)
        if problems:
            for name in SERVICE_ORDER:
                print(f"--- {name}.log ---\n{host.log(name, 80)}", file=sys.stderr)
    except BaseException:
        for name in SERVICE_ORDER:
            print(f"--- {name}.log ---\n{host.log(name, 80)}", file=sys.stderr)
        raise
    finally:
        host.stop(remove_root=True)
    summary = json.dumps(vars(figures) | {"problems": problems}, indent=2)
    print(summary)
    if args.json:
        args.json.write_text(summary + "\n")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
