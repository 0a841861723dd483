"""Remove each rule of the firewall template once and record which tests catch it.

    /opt/flashpods/venv/bin/python tests/host/check_rule_removal.py [--only TEXT] [test paths...]

Not a test itself (it runs the suite once per rule, minutes): the check behind the
table in docs/security.md. For every statement line of every chain, and every element
line of the job's forbidden-destination sets, it writes a copy of modules/flashpods/
with that one line removed, points the renderer at it (FLASHPODS_TEMPLATE_DIR) and runs
tests/host. A rule no test catches is reported as "NOT CAUGHT" and the exit status is 1.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
TEMPLATES = REPO / "modules" / "flashpods"
FIREWALL = "firewall.nft.in"


def removable_lines(text: str) -> list[int]:
    """Indexes of rule statements inside chains and element lines of the job's sets."""
    lines = text.splitlines()
    picked = []
    block = None
    for i, raw in enumerate(lines):
        line = raw.strip()
        opened = re.match(r"(chain|set) (\S+) \{", line)
        if opened:
            block = opened.groups()
            continue
        if line == "}":
            block = None if raw.startswith("\t}") else block
            continue
        if block is None or not line or line.startswith("#"):
            continue
        kind, name = block
        if (
            kind == "chain"
            and not line.startswith("type ")
            or (
                kind == "set"
                and name.startswith("job_nonpublic")
                and re.match(r"^[0-9a-f:.]+/\d+,", line)
            )
        ):
            picked.append(i)
    return picked


def run_suite(template_dir: Path, paths: list[str]) -> tuple[int, list[str]]:
    env = os.environ | {"FLASHPODS_TEMPLATE_DIR": str(template_dir)}
    argv = [
        sys.executable,
        "-m",
        "pytest",
        "-q",
        "-rfE",
        "-p",
        "no:cacheprovider",
        *paths,
    ]
    result = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, check=False)
    caught = [
        line.split(" ", 1)[1].split(" - ")[0]
        for line in result.stdout.splitlines()
        if line.startswith(("FAILED ", "ERROR "))
    ]
    return result.returncode, caught


def main(args: list[str]) -> int:
    # --only TEXT: remove only the lines that contain TEXT (repeatable).
    only = [args[i + 1] for i, a in enumerate(args) if a == "--only"]
    paths = [a for i, a in enumerate(args) if a != "--only" and (i == 0 or args[i - 1] != "--only")]
    paths = paths or ["tests/host"]
    text = (TEMPLATES / FIREWALL).read_text()
    lines = text.splitlines()
    code, caught = run_suite(TEMPLATES, paths)
    if code != 0:
        print(f"the suite fails with the full ruleset: {caught}")
        return 2
    missed = 0
    for index in removable_lines(text):
        if only and not any(o in lines[index] for o in only):
            continue
        with tempfile.TemporaryDirectory(prefix="fp-mutant-") as tmp:
            mutant = Path(tmp)
            for f in TEMPLATES.glob("*.in"):
                shutil.copy(f, mutant / f.name)
            kept = lines[:index] + lines[index + 1 :]
            (mutant / FIREWALL).write_text("\n".join(kept) + "\n")
            code, caught = run_suite(mutant, paths)
        rule = lines[index].strip()
        if code == 0 or not caught:
            missed += 1
            print(f"| `{rule}` | NOT CAUGHT |", flush=True)
        else:
            names = ", ".join(sorted({c.split("::")[-1] for c in caught}))
            print(f"| `{rule}` | {names} |", flush=True)
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
