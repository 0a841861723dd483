"""Fuzz the API with schemathesis, generated from its own GET /openapi.json.

One dev host (real gunicorn, reaper, token service, rootless Podman) with tight bounds,
because every accepted POST /jobs starts a real container: two at a time, a short queue,
a few seconds per job at most. schemathesis runs every phase (examples, coverage,
fuzzing, stateful) against it; its HAR report holds every request and response, which
this module counts on its own rather than trusting a summary line.

    python tests/integration/hostile/fuzz_api.py --examples 300 --seed 1

prints a JSON summary (cases, requests, 5xx, schema violations) and exits non-zero on
any failure. tests/integration/hostile/test_fuzz_api.py runs a short pass of the same.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from flashpods_devhost.host import SERVICE_ORDER, DevHost
from flashpods_devhost.pytest_plugin import new_settings

# What the API answers must hold: no 5xx, every body and status code as the document
# says, the Content-Type it names, auth enforced, bad input refused and good accepted.
CHECKS = (
    "not_a_server_error",
    "response_schema_conformance",
    "status_code_conformance",
    "content_type_conformance",
    "negative_data_rejection",
    "ignored_auth",
)
# A request the document forbids must be refused: 4xx. schemathesis's list lacks 413 and
# 414, the refusals of a body over 1 MiB (the API) and of a request line over 4094
# bytes (gunicorn, before the API); both are documented answers.
CONFIG = """
[checks.negative_data_rejection]
expected-statuses = ["400", "401", "403", "404", "405", "406", "409", "413", "414", "415",
                     "422", "428", "429"]
"""
# Bounds that keep the real containers of accepted jobs few and short.
FUZZ_HOST = {
    "max_concurrent_jobs": 2,
    "queue_limit": 8,
    "api_overrides": {
        "reaper": {"interval_s": 0.2},
        "default_timeout_s": 3,
        "max_timeout_s": 5,
        "kill_grace_s": 1,
        # A fuzzed sub_agent job runs this stand-in, never a real agent.
        "sub_agent": {"command": ["sh", "-c", "echo fuzzed sub-agent"]},
    },
}


def fuzz_host() -> DevHost:
    host = DevHost(new_settings(**FUZZ_HOST))
    host.start()
    return host


def run(
    host: DevHost,
    *,
    examples: int,
    seed: int,
    max_time_s: float | None = None,
    workers: int = 1,
    report_dir: Path,
) -> dict[str, Any]:
    """Run schemathesis against `host`; returns the counted figures and its output."""
    har = report_dir / "fuzz.har"
    config = report_dir / "schemathesis.toml"
    config.write_text(CONFIG)
    argv = [
        str(Path(sys.executable).parent / "schemathesis"),
        "--config-file",
        str(config),
        "run",
        f"{host.api_url}/openapi.json",
        "--header",
        f"Authorization: Bearer {host.api_token}",
        "--checks",
        ",".join(CHECKS),
        "--max-examples",
        str(examples),
        "--seed",
        str(seed),
        "--workers",
        str(workers),
        "--continue-on-failure",
        "--request-timeout",
        "60",
        "--report",
        "har",
        "--report-har-path",
        str(har),
        "--no-color",
    ]
    if max_time_s:
        argv += ["--max-time", str(int(max_time_s))]
    # No proxy may stand between the fuzzer and the loopback host.
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
    env["SCHEMATHESIS_HOOKS"] = ""
    started = time.monotonic()
    done = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=report_dir)
    figures = count(har)
    figures.update(
        seed=seed,
        examples_per_operation=examples,
        seconds=round(time.monotonic() - started),
        exit_code=done.returncode,
        cases=_cases(done.stdout),
    )
    figures["output"] = done.stdout[-20000:] + done.stderr[-4000:]
    return figures


def count(har: Path) -> dict[str, Any]:
    """Requests and answers by status class, from every entry of the HAR report."""
    entries = json.loads(har.read_text())["log"]["entries"] if har.exists() else []
    statuses: dict[str, int] = {}
    server_errors = []
    for entry in entries:
        status = entry["response"]["status"]
        key = f"{status // 100}xx"
        statuses[key] = statuses.get(key, 0) + 1
        if status >= 500:
            request = entry["request"]
            server_errors.append(f"{request['method']} {request['url']} -> {status}")
    return {
        "requests": len(entries),
        "by_status": dict(sorted(statuses.items())),
        "server_errors": len(server_errors),
        "server_error_samples": server_errors[:20],
    }


def _cases(stdout: str) -> int | None:
    """The number of test cases schemathesis generated, from its summary line."""
    lines = stdout.splitlines()
    for here, line in enumerate(lines[:-1]):
        if line.strip() == "Test cases:":
            first = lines[here + 1].split()[0] if lines[here + 1].split() else ""
            return int(first) if first.isdigit() else None
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--examples", type=int, default=300, help="cases per operation and phase")
    parser.add_argument("--seed", type=int, default=None, help="default: random (printed)")
    parser.add_argument("--max-time", type=float, default=None, help="time budget, seconds")
    parser.add_argument("--min-cases", type=int, default=2000)
    parser.add_argument("--json", type=Path, default=None, help="also write the summary here")
    args = parser.parse_args(argv)
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(2**31)
    print(f"fuzz-api: seed {seed}", file=sys.stderr, flush=True)
    host = fuzz_host()
    try:
        with tempfile.TemporaryDirectory(prefix="flashpods-fuzz-") as tmp:
            figures = run(
                host,
                examples=args.examples,
                seed=seed,
                max_time_s=args.max_time,
                report_dir=Path(tmp),
            )
        problems = verdict(figures, args.min_cases)
    except BaseException:
        for name in SERVICE_ORDER:
            print(f"--- {name}.log ---\n{host.log(name)}", file=sys.stderr)
        raise
    finally:
        host.stop(remove_root=True)
    output = figures.pop("output")
    if problems:
        print(output, file=sys.stderr)
    summary = figures | {"problems": problems}
    text = json.dumps(summary, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    return 1 if problems else 0


def verdict(figures: dict[str, Any], min_cases: int) -> list[str]:
    """What is wrong with a run: any 5xx, any failed check, too few cases."""
    problems = []
    if figures["server_errors"]:
        problems.append(f"{figures['server_errors']} answers were 5xx")
    if figures["exit_code"] != 0:
        problems.append(f"schemathesis exited {figures['exit_code']} (a check failed)")
    if (figures["cases"] or 0) < min_cases:
        problems.append(f"only {figures['cases']} cases, fewer than {min_cases}")
    return problems


if __name__ == "__main__":
    sys.exit(main())
