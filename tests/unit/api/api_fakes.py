"""Fakes for the API unit tests: a temporary host layout, real SQLite, a fake Podman."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from flashpods_api.app import create_app
from flashpods_api.config import from_dict
from flashpods_api.jobs import Engine
from flashpods_api.reaper import Reaper
from flashpods_api.runtime import PodmanError, RunSpec
from flashpods_api.store import Store

TOKEN = "unit-test-token-0123456789abcdef"


class FakeRuntime:
    """Stands in for Podman: containers are dicts shaped like `podman ps --format json`."""

    def __init__(self, instance: str) -> None:
        self.instance = instance
        self.boxes: dict[str, dict[str, Any]] = {}
        self.specs: dict[str, RunSpec] = {}
        self.signals: list[tuple[str, str]] = []
        self.removed: list[str] = []
        self.normalized: list[str] = []
        self.fail_run: str | None = None
        self.down = False
        self.pings = 0

    def run(self, spec: RunSpec) -> tuple[str, str | None]:
        if self.down:
            raise PodmanError("podman run failed: Error: unable to connect to Podman socket")
        if self.fail_run:
            raise PodmanError(f"podman run failed: {self.fail_run}", self.fail_run)
        if spec.job_id in self.boxes:
            raise PodmanError(
                "podman run failed: name is already in use", "the container name is already in use"
            )
        self.specs[spec.job_id] = spec
        self.boxes[spec.job_id] = {"Names": [spec.job_id], "State": "running", "ExitCode": 0}
        return "c0ffee", self.limits_note(spec.resources)

    def limits_note(self, resources: dict[str, Any], stderr: str = "") -> str | None:
        # Memory and pids always come with the host's defaults: only cpus marks a job that
        # asked for more than those (a fake cgroup v1 that ignores what was asked).
        asked = "cpus" in resources
        return "Limits --pids-limit were not applied: fake cgroup v1." if asked else None

    def exit(self, name: str, code: int) -> None:
        self.boxes[name].update(State="exited", ExitCode=code)

    def containers(self) -> list[dict[str, Any]]:
        if self.down:
            raise PodmanError("podman ps failed: connection refused")
        return [dict(box) for box in self.boxes.values()]

    def signal(self, name: str, sig: str) -> None:
        self.signals.append((name, sig))
        if sig == "KILL" and name in self.boxes:
            self.exit(name, 137)

    def remove(self, name: str) -> None:
        self.removed.append(name)
        self.boxes.pop(name, None)

    def normalize(self, image: str, helper_path: str, directory: str) -> None:
        self.normalized.append(directory)

    def ping(self) -> None:
        self.pings += 1
        if self.down:
            raise PodmanError("podman version failed: connection refused")


class FakeRegistrar:
    def __init__(self) -> None:
        self.registered: list[tuple[str, str]] = []
        self.unregistered: list[str] = []
        self.swept: list[set[str]] = []
        self.fail: str | None = None

    def register(self, job_id: str, kind: str) -> None:
        if self.fail:
            from flashpods_api.registrar import RegistrarError

            raise RegistrarError(self.fail)
        self.registered.append((job_id, kind))

    def unregister(self, job_id: str) -> None:
        self.unregistered.append(job_id)

    def sweep(self, live_job_ids: set[str]) -> None:
        self.swept.append(set(live_job_ids))


def make_config(
    root: Path, storage_extra: dict[str, str] | None = None, **overrides: Any
) -> dict[str, Any]:
    (root / "etc").mkdir(parents=True, exist_ok=True)
    (root / "etc" / "api-token").write_text(TOKEN + "\n")
    helper = root / "helper"
    helper.write_text("#!/bin/sh\n")
    cfg: dict[str, Any] = {
        "instance": "unit",
        "token_file": str(root / "etc" / "api-token"),
        "db_path": str(root / "db" / "flashpods.db"),
        "storage": {
            name: str(root / name) for name in ("uploads", "workspaces", "artifacts", "logs")
        },
        "podman_url": "unix:///nonexistent.sock",
        "rsync_url": "rsync://127.0.0.1:8873/uploads",
        "max_concurrent_jobs": 2,
        "helper_path": str(helper),
        "token_socket": str(root / "token.sock"),
        "warm_pool": {},  # cold unless a test asks: the packaged default fills a pool
    }
    cfg.update(overrides)
    cfg["storage"] = {**cfg["storage"], **(storage_extra or {})}  # usage, budgets
    # The smallest reserve the API takes: its ballast (half of it, real blocks) is written
    # beside every host's database, and the packaged 1 GiB made each of some 600 unit
    # hosts hold 512 MiB (pytest keeps three runs' temp dirs: ~70 GiB on this machine).
    cfg["limits"] = {"disk_reserve_bytes": 4 << 20, **(cfg.get("limits") or {})}
    for path in [root / "db", *(Path(p) for p in cfg["storage"].values())]:
        path.mkdir(parents=True, exist_ok=True)
    return cfg


class Host:
    """One app + store + fake runtime + reaper over a temporary root."""

    def __init__(self, root: Path, **overrides: Any) -> None:
        self.root = root
        self.raw = make_config(root, **overrides)
        self.config = from_dict(self.raw)
        self.store = Store(self.config.db_path, self.config.instance)
        self.runtime = FakeRuntime(self.config.instance)
        self.registrar = FakeRegistrar()
        self.app = create_app(
            self.config, store=self.store, runtime=self.runtime, registrar=self.registrar
        )  # type: ignore[arg-type]
        self.app.testing = True
        self.client = self.app.test_client()
        self.engine = Engine(self.config, self.store, self.runtime, self.registrar)  # type: ignore[arg-type]
        self.reaper = Reaper(self.engine)

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {TOKEN}"}

    def get(self, url: str, **kw: Any) -> Any:
        return self.client.get(url, headers=self.headers(), **kw)

    def post(self, url: str, json: Any = None, **kw: Any) -> Any:
        return self.client.post(url, headers=self.headers(), json=json, **kw)

    def job(self, command: str = "echo hi", **fields: Any) -> dict[str, Any]:
        resp = self.post("/jobs", {"kind": "worker", "command": command, **fields})
        assert resp.status_code == 201, resp.get_json()
        return resp.get_json()["job"]

    def write_ctr_log(self, job_id: str, lines: list[str]) -> None:
        path = Path(self.raw["storage"]["logs"]) / f"{job_id}.ctr.log"
        with open(path, "a") as fh:
            for line in lines:
                fh.write(line + "\n")


def decode_command(data: bytes) -> tuple[list[str], dict[str, str]]:
    """Read a warm container's hand-over file the way images/helper/handover.c does."""
    parts = data.split(b"\0")
    assert parts[-1] == b"", "every string ends with a NUL"
    parts = [p.decode() for p in parts[:-1]]
    assert parts[0] == "flashpods-command-1"
    argc = int(parts[1])
    argv = parts[2 : 2 + argc]
    envc = int(parts[2 + argc])
    pairs = parts[3 + argc :]
    assert len(pairs) == envc
    return argv, dict(p.split("=", 1) for p in pairs)
