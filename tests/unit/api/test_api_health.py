"""GET /healthz stays cheap (no Podman call per request) and still truthful."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest
from flashpods_api import health
from flashpods_api.runtime import PodmanError


def _age(host, table: str, name: str, seconds: float) -> None:
    with host.store._tx(write=True):
        host.store._exec(
            f"UPDATE {table} SET at = at - :s WHERE name = :n",
            s=seconds,
            n=f"{host.store.instance}:{name}",
        )


def test_healthz_reads_the_reapers_podman_record_instead_of_calling_podman(host):
    host.reaper.tick()
    before = host.runtime.pings
    for _ in range(20):
        resp = host.client.get("/healthz")
        assert resp.status_code == 200, resp.get_json()
    assert host.runtime.pings == before
    assert "answering" in resp.get_json()["checks"]["podman"]["detail"]


def test_a_failed_reaper_check_is_named_with_podman_s_error(host):
    host.reaper.tick()
    host.runtime.down = True
    with pytest.raises(PodmanError):
        host.reaper.tick()
    body = host.client.get("/healthz").get_json()
    assert body["failing"] == ["podman"] and "connection refused" in body["error"]
    host.runtime.down = False
    host.reaper.tick()
    assert host.client.get("/healthz").status_code == 200


def test_a_stale_record_makes_the_api_ping_podman_itself_once_per_second(host, monkeypatch):
    monkeypatch.setattr(health, "DIRECT_PING_CACHE_S", 60.0)  # however slow this machine is
    host.reaper.tick()
    _age(host, "probes", "podman", 3600)
    before = host.runtime.pings
    with ThreadPoolExecutor(8) as pool:
        codes = list(pool.map(lambda _: host.client.get("/healthz").status_code, range(16)))
    assert codes == [200] * 16  # the heartbeat was fresh; Podman answered the API's ping
    assert host.runtime.pings - before == 1  # concurrent requests share one ping
    host.runtime.down = True
    assert host.client.get("/healthz").status_code == 200  # the cached answer, no new ping
    assert host.runtime.pings - before == 1
    monkeypatch.setattr(health, "DIRECT_PING_CACHE_S", 0.0)  # the cache has expired
    body = host.client.get("/healthz").get_json()
    assert body["failing"] == ["podman"] and "podman does not answer" in body["error"]
    assert host.runtime.pings - before == 2


def test_a_stale_reaper_is_named_even_while_podman_answers(host):
    host.reaper.tick()
    _age(host, "heartbeats", "reaper", 3600)
    _age(host, "probes", "podman", 3600)
    body = host.client.get("/healthz").get_json()
    assert body["failing"] == ["reaper"] and "heartbeat is 3600 s old" in body["error"]
    assert body["checks"]["podman"]["ok"] is True


def test_low_disk_is_named(host, monkeypatch):
    host.reaper.tick()
    monkeypatch.setitem(host.config.raw["limits"], "disk_reserve_bytes", 1 << 62)
    body = host.client.get("/healthz").get_json()
    assert body["failing"] == ["disk"] and "MiB free" in body["error"]


def test_a_database_that_does_not_answer_is_named(host, monkeypatch):
    host.reaper.tick()

    def broken():
        raise RuntimeError("database is locked")

    monkeypatch.setattr(host.store, "health_snapshot", broken)
    body = host.client.get("/healthz").get_json()
    assert "db" in body["failing"] and "database is locked" in body["error"]
    assert body["checks"]["podman"]["ok"] is True  # Podman asked directly instead
