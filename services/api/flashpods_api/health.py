"""What GET /healthz reports: database, Podman, reaper, free disk and the warm pool.

The reaper is healthy when it is alive (a tick started within the stale window) and
making progress (a tick got through: ticks that all fail are not progress).

/healthz is the floor every other route is measured against (issue 7, P4), so it must
not spawn a Podman CLI per request. The reaper lists containers every tick and records
whether Podman answered (`probes` table); /healthz reads that record. Only when the
record is stale (the reaper is dead or stuck) does the API ping Podman itself, at most
once per DIRECT_PING_CACHE_S per process, concurrent requests sharing the answer.
"""

from __future__ import annotations

import os
import shutil
import threading
import time
from typing import Any

from .config import Config
from .jobs import Engine
from .kinds import KINDS
from .runtime import PodmanError, Runtime
from .store import Store

HEARTBEAT_STALE_S = 15.0
# The reaper's Podman record is trusted for a few of its intervals, at least this long.
PODMAN_RECORD_STALE_S = 5.0
DIRECT_PING_CACHE_S = 1.0


class PodmanProbe:
    """Podman's liveness: the reaper's fresh record, else a direct ping cached briefly."""

    def __init__(self, store: Store, runtime: Runtime, interval_s: float) -> None:
        self.store = store
        self.runtime = runtime
        self.record_stale_s = max(PODMAN_RECORD_STALE_S, 5 * interval_s)
        self._lock = threading.Lock()
        self._cached: dict[str, Any] | None = None
        self._cached_at = 0.0

    def check(self, record: dict[str, Any] | None) -> dict[str, Any]:
        """`record`: the reaper's last Podman check (None if unknown or unreadable)."""
        if record is not None:
            age = time.time() - record["at"]
            if age <= self.record_stale_s:
                return {"ok": record["ok"], "detail": f"{record['detail']} ({age:.1f} s ago)"}
        return self._ping()

    def _ping(self) -> dict[str, Any]:
        with self._lock:  # one Podman call at a time; the others reuse its answer
            fresh = time.monotonic() - self._cached_at < DIRECT_PING_CACHE_S
            if self._cached is not None and fresh:
                return self._cached
            try:
                self.runtime.ping()
                result = {"ok": True, "detail": "answering (pinged by the API)"}
            except PodmanError as exc:
                result = {"ok": False, "detail": f"podman does not answer: {exc}"}
            self._cached, self._cached_at = result, time.monotonic()
            return result


def checks(store: Store, podman: PodmanProbe, cfg: Config, engine: Engine) -> dict[str, Any]:
    out: dict[str, dict[str, Any]] = {}
    try:
        snapshot = store.health_snapshot()  # one query: it also proves the DB answers
        out["db"] = {"ok": True, "detail": "reachable"}
    except Exception as exc:  # noqa: BLE001 - reported, not raised
        snapshot = {"reaper_at": None, "reaper_done_at": None, "podman": None, "reaper": None}
        out["db"] = {"ok": False, "detail": f"the database does not answer ({exc})"}
    out["podman"] = podman.check(snapshot["podman"])
    out["reaper"] = _reaper(snapshot, cfg)
    out["disk"] = _disk(cfg)
    out["warm_pool"] = _warm(engine)
    return out


def _reaper(snapshot: dict[str, Any], cfg: Config) -> dict[str, Any]:
    """Alive (a tick started lately) and making progress (ticks get through).

    A reaper whose every tick fails (issue 14: a job's tree made each tick raise) still
    starts ticks; it is red once none got through for the stale window.
    """
    stale = max(HEARTBEAT_STALE_S, 10 * float(cfg.reaper["interval_s"]))
    beat, done, probe = (
        snapshot["reaper_at"],
        snapshot.get("reaper_done_at"),
        snapshot.get("reaper"),
    )
    if beat is None:
        hint = "the reaper has never reported (is flashpods-reaper running?)"
        return {"ok": False, "detail": hint}
    age = time.time() - beat
    if age > stale:
        return {"ok": False, "detail": f"the reaper's last heartbeat is {age:.0f} s old"}
    error = probe["detail"] if probe is not None and not probe["ok"] else None
    if done is None:
        if error:
            return {"ok": False, "detail": f"the reaper has not completed a tick yet: {error}"}
        return {"ok": True, "detail": f"heartbeat {age:.1f} s ago, first tick running"}
    behind = beat - done
    if behind > stale:
        why = error or "no error recorded"
        detail = f"the reaper runs but no tick has got through for {behind:.0f} s ({why})"
        return {"ok": False, "detail": detail}
    return {"ok": True, "detail": f"heartbeat {age:.1f} s ago"}


def _disk(cfg: Config) -> dict[str, Any]:
    low = []
    storage = [str(p) for p in cfg.raw["storage"].values() if p]
    for path in sorted({os.path.dirname(cfg.db_path), *storage}):
        try:
            free = shutil.disk_usage(path).free
        except OSError:
            low.append(f"{path} is missing")
            continue
        # The same line below which POST /jobs is refused (job_limits.DiskGuard).
        if free < cfg.limits["disk_reserve_bytes"]:
            low.append(f"{path} has only {free // (1024 * 1024)} MiB free (below the reserve)")
    return {"ok": not low, "detail": ", ".join(low) or "enough free space"}


def _warm(engine: Engine) -> dict[str, Any]:
    """Ready warm containers per kind (a pool below its target is filling, not failing)."""
    targets = engine.warm.targets
    try:
        ready = engine.warm.ready_counts() if targets else dict.fromkeys(KINDS, 0)
    except Exception as exc:  # noqa: BLE001 - the db check reports the cause
        return {"ok": True, "detail": f"unknown ({exc})", "ready": {}, "target": targets}
    detail = ", ".join(f"{k}: {ready[k]}/{n} ready" for k, n in targets.items()) or "off"
    return {"ok": True, "detail": detail, "ready": ready, "target": targets}
