"""Run every benchmark and write docs/benchmarks.md.

    bench/run            # full run (minutes), writes docs/benchmarks.md
    bench/run --smoke    # a few samples of each, so the code cannot rot (scripts/test runs it)
    bench/profile P5     # the same under py-spy: flame graphs of the client and the services

Benchmarks are not timed tests: a missed target is reported, never a failure. A
benchmark that crashes is a failure (exit 1), since that means the code has rotted.
"""

from __future__ import annotations

import argparse
import datetime
import sys
import traceback
from collections.abc import Callable
from pathlib import Path

from . import completion, credential_proxy, e2e, scale, spawn, token_exchange, transfer
from .common import Result, machine

REPO = Path(__file__).resolve().parent.parent


def plan(smoke: bool) -> list[tuple[str, Callable[[], Result | list[Result]]]]:
    if smoke:
        return [
            ("P1", lambda: spawn.cold(3)),
            ("P2", lambda: spawn.warm(3)),
            ("P3", lambda: e2e.unchanged_tree(1, files=50, total_bytes=1 << 20)),
            ("P4a", lambda: scale.concurrent_running(4)),
            ("P4b", lambda: scale.burst(12, 3)),
            ("P4c", lambda: scale.polling(4, 10)),
            ("P5", lambda: transfer.log_and_artifacts(2)),
            ("P5d", lambda: transfer.follow_latency(5)),
            ("P6", lambda: token_exchange.exchange(smoke=True)),
            ("P7", lambda: credential_proxy.proxy_cost(smoke=True)),
            ("P8", lambda: completion.cold(3)),
            ("P8w", lambda: completion.warm(3)),
            ("P8o", lambda: completion.output_wakeup(3)),
        ]
    return [
        ("P1", lambda: spawn.cold(20)),
        ("P2", lambda: spawn.warm(20)),
        ("P3", lambda: e2e.unchanged_tree(9)),
        ("P4a", lambda: scale.concurrent_running(200)),
        ("P4b", lambda: scale.burst(500, 8)),
        ("P4c", lambda: scale.polling(50, 40)),
        ("P5", lambda: transfer.log_and_artifacts(64, rounds=11)),
        ("P5d", lambda: transfer.follow_latency(30)),
        ("P6", lambda: token_exchange.exchange(smoke=False)),
        ("P7", lambda: credential_proxy.proxy_cost(smoke=False)),
        ("P8", lambda: completion.cold(12)),
        ("P8w", lambda: completion.warm(12)),
        ("P8o", lambda: completion.output_wakeup(12)),
    ]


def render(results: list[Result], errors: list[str], smoke: bool) -> str:
    when = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        "# Benchmarks",
        "",
        f"Run {when} on {machine()}.",
        "",
        "Every ratio compares Flashpods with the bare tool measured in the same run on the",
        "same host; absolute figures are for information only (shared, noisy machines).",
        "Regenerate with `bench/run` (full) or `bench/run --smoke` (a few samples);",
        "`bench/profile <id>` runs one under py-spy (flame graphs of client and services).",
        "",
    ]
    if smoke:
        lines += ["**This is a smoke run: too few samples to mean anything.**", ""]
    lines += [
        "| id | what | Flashpods | bare tool | ratio | target | met |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        ratio = f"{r.ratio:.2f}" if r.ratio is not None else ""
        met = {True: "yes", False: "**no**", None: ""}[r.met]
        lines.append(
            f"| {r.id} | {r.what} | {r.flashpods} | {r.bare} | {ratio} | {r.target} | {met} |"
        )
    notes = [f"- {r.id}: {r.notes}" for r in results if r.notes]
    if notes:
        lines += ["", "Notes:", "", *notes]
    if errors:
        lines += ["", "Benchmarks that crashed:", "", *[f"- {e}" for e in errors]]
    history = Path(__file__).with_name("history.md")
    if history.exists():
        lines += ["", history.read_text().rstrip()]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--smoke", action="store_true", help="a few samples of each benchmark")
    parser.add_argument("--only", action="append", help="run only these ids (e.g. P1)")
    parser.add_argument("--out", type=Path, help="write the report here")
    args = parser.parse_args(argv)
    results: list[Result] = []
    errors: list[str] = []
    for name, run in plan(args.smoke):
        if args.only and name not in args.only:
            continue
        print(f"== {name}", flush=True)
        try:
            produced = run()
        except Exception as exc:  # a crashed benchmark is reported, and fails the run
            traceback.print_exc()
            errors.append(f"{name}: {type(exc).__name__}: {exc}")
            continue
        for r in produced if isinstance(produced, list) else [produced]:
            results.append(r)
            print(f"   {r.id}: {r.flashpods} | bare {r.bare} | ratio {r.ratio} | met {r.met}")
    out = args.out or (None if args.smoke else REPO / "docs" / "benchmarks.md")
    report = render(results, errors, args.smoke)
    if out:
        out.write_text(report)
        print(f"wrote {out}")
    print(report)
    print(f"benchmarks: {len(results)} passed, {len(errors)} failed")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
