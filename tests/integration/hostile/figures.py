"""Write the fuzz and soak figures into docs/security.md, between its markers.

    python tests/integration/hostile/figures.py FUZZ.json SOAK.json docs/security.md

FUZZ.json and SOAK.json are what `scripts/fuzz-api --json` and `scripts/soak --json`
wrote; scripts/security-figures runs all three. Only the marked block changes.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

BEGIN = "<!-- BEGIN security-figures (scripts/security-figures rewrites this block) -->"
END = "<!-- END security-figures -->"


def render(fuzz: dict[str, Any], soak: dict[str, Any], revision: str) -> str:
    statuses = ", ".join(f"{n} {k}" for k, n in fuzz["by_status"].items())
    kills = soak["kills"]
    verdict_fuzz = "; ".join(fuzz["problems"]) or "none"
    verdict_soak = "; ".join(soak["problems"]) or "none"
    return "\n".join(
        [
            BEGIN,
            f"Last full run: {time.strftime('%Y-%m-%d', time.gmtime())}, {revision}.",
            "",
            "| run | figure | value |",
            "| --- | --- | --- |",
            f"| fuzz (`scripts/fuzz-api`) | seed | {fuzz['seed']} |",
            f"| | cases generated (every phase, 10 operations) | {fuzz['cases']} |",
            f"| | requests answered, by class | {fuzz['requests']}: {statuses} |",
            f"| | answers of 5xx | {fuzz['server_errors']} |",
            "| | answers that break GET /openapi.json (body, status, content type, "
            f"auth, refused input) | {0 if fuzz['exit_code'] == 0 else 'see problems'} |",
            f"| | problems | {verdict_fuzz} |",
            f"| | minutes | {fuzz['seconds'] / 60:.1f} |",
            f"| kill -9 soak (`scripts/soak`) | seed | {soak['seed']} |",
            f"| | kills (SIGKILL, then restart) | {sum(kills.values())}: "
            + ", ".join(f"{name} {n}" for name, n in kills.items())
            + " |",
            f"| | jobs submitted / found on the host (a POST whose answer a kill "
            f"swallowed, retried, makes two) | {soak['jobs_planned']} / {soak['jobs_on_host']} |",
            f"| | jobs final with their whole log and exit code | {soak['jobs_checked']} "
            f"checked, {len(soak['losses'])} lost |",
            f"| | containers left behind | {len(soak['containers_left'])} |",
            f"| | `PRAGMA integrity_check` | {soak['integrity']} |",
            f"| | problems | {verdict_soak} |",
            f"| | minutes | {soak['seconds'] / 60:.1f} |",
            END,
        ]
    )


def rewrite(doc: str, block: str) -> str:
    if BEGIN not in doc or END not in doc:
        raise SystemExit(f"the document has no block between {BEGIN!r} and {END!r}")
    head, rest = doc.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    return head + block + tail


def revision() -> str:
    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], capture_output=True, text=True, check=False
        ).stdout.strip()

    commit = git("rev-parse", "--short=12", "HEAD") or "unknown commit"
    dirty = (
        " with uncommitted changes" if git("status", "--porcelain", "--untracked-files=no") else ""
    )
    return f"commit {commit}{dirty}"


def main(argv: list[str]) -> int:
    fuzz_path, soak_path, doc_path = (Path(a) for a in argv)
    fuzz = json.loads(fuzz_path.read_text())
    soak = json.loads(soak_path.read_text())
    doc = doc_path.read_text()
    doc_path.write_text(rewrite(doc, render(fuzz, soak, revision())))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
