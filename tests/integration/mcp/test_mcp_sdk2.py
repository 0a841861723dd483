"""The laptop package on the MCP SDK 2.x (issue 13): a venv of its own with real mcp 2.x
and the laptop package's other pins from requirements.lock, `flashpods-mcp` of that venv
started over stdio by that SDK's own client, which lists the tools and calls them
against a real dev host (list_jobs; spawn_worker, which needs the client's roots and
sends progress; get_job_output; get_job_artifacts).

The venv's dependencies are built once per (SDK, pins, Python) and kept under
FLASHPODS_TEST_CACHE (default /var/tmp/flashpods-test-cache): a later run only
reinstalls mcp/ into it (~5 s). A file lock keeps two test runs from sharing it at once.
"""

import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.root]  # a real dev host needs root
REPO = Path(__file__).resolve().parents[3]
# The newest 2.x PyPI serves (pip index versions mcp, 2026-12); set the variable to check
# another release by hand (2.0.0 was, see docs/mcp.md).
SDK2 = os.environ.get("FLASHPODS_TEST_MCP_SDK2", "mcp==2.3.0")
# The laptop package's own dependencies that requirements.lock pins; mcp 2.x brings the rest.
LOCKED = ("requests", "rich")
CLIENT = Path(__file__).with_name("sdk2_client.py")
EXPECTED_TOOLS = [
    "get_job_artifacts",
    "get_job_output",
    "get_job_status",
    "kill_job",
    "list_jobs",
    "spawn_sub_agent",
    "spawn_worker",
]


def locked_pins() -> list[str]:
    pins = []
    for line in (REPO / "requirements.lock").read_text().splitlines():
        name = line.split("==", 1)[0].strip().lower()
        if name in LOCKED:
            pins.append(line.strip())
    assert len(pins) == len(LOCKED), f"requirements.lock lacks one of {LOCKED}"
    return pins


def pip(venv: Path, *args: str) -> None:
    subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "--disable-pip-version-check", "-q", *args],
        check=True,
        timeout=600,
    )


@pytest.fixture(scope="module")
def sdk2_venv(tmp_path_factory):
    """The cached venv with mcp 2.x, and mcp/ freshly installed into it (non-editable,
    as a user's `pip install` would); locked for the module's whole run."""
    requirements = [SDK2, *locked_pins(), "setuptools>=70.1"]  # 70.1: bdist_wheel built in
    key = hashlib.sha256("\n".join([*requirements, sys.version]).encode()).hexdigest()[:16]
    cache = Path(os.environ.get("FLASHPODS_TEST_CACHE", "/var/tmp/flashpods-test-cache"))
    cache.mkdir(parents=True, exist_ok=True)
    venv = cache / f"mcp-sdk2-{key}"
    with open(cache / f"{venv.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (venv / ".complete").exists():
            shutil.rmtree(venv, ignore_errors=True)  # a build cut short: start over
            subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
            pip(venv, "install", *requirements)
            (venv / ".complete").write_text("\n".join(requirements) + "\n")
        # Built from a copy (pip builds in the source tree, leaving build/ behind);
        # --no-build-isolation: setuptools is in the venv, so no index is needed here.
        source = tmp_path_factory.mktemp("sdk2") / "mcp"
        shutil.copytree(REPO / "mcp", source, ignore=shutil.ignore_patterns("build", "*.egg-info"))
        fresh = ("--no-deps", "--no-build-isolation", "--force-reinstall")
        pip(venv, "install", *fresh, str(source))
        yield venv


def test_the_server_works_on_mcp_2(sdk2_venv, laptop, laptop_env):
    python = sdk2_venv / "bin" / "python"
    sdk = subprocess.run(
        [
            str(python),
            "-c",
            "import flashpods_mcp.sdk as s; print(s.SDK_MAJOR)",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert sdk.stdout.strip() == "2"  # the package took the 2.x branch of sdk.py
    project = laptop / "project"
    spec = {
        "server": str(sdk2_venv / "bin" / "flashpods-mcp"),
        "env": {"PATH": os.environ["PATH"], **laptop_env},
        "root": str(project),
    }
    done = subprocess.run(
        [str(python), str(CLIENT), json.dumps(spec)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    got = json.loads(done.stdout)
    assert got["sdk"].startswith("2.") and got["server"] == "flashpods"
    assert got["tools"] == EXPECTED_TOOLS
    for call in ("list_jobs", "spawn_worker", "get_job_artifacts"):
        assert got[call]["is_error"] is not True, f"{call}: {got[call]['text']}"
    assert isinstance(got["list_jobs"]["structured"]["jobs"], list)
    assert got["spawn_worker"]["structured"]["upload"]["source"] == str(project)
    assert got["progress_notes"] > 0  # the upload's progress reached the 2.x client
    files = {f["path"]: f["size"] for f in got["get_job_artifacts"]["structured"]["files"]}
    assert files["copy.txt"] == len("hello from the laptop\n")
    job_id = got["spawn_worker"]["structured"]["job"]["id"]
    copied = project / "flashpods-artifacts" / job_id / "copy.txt"
    assert copied.read_text() == "hello from the laptop\n"
