"""Job containers through Podman's REST API and through the CLI are the same container.

The REST path (podman_spec.payload) and the CLI path (runtime.run_args) are both run
against the dev host's real Podman service (4.3 here); their inspect records must agree
on everything the container contract fixes, and both containers must behave alike.
The probe must pick REST on this Podman; the CLI stays reachable as the fallback.
"""

from __future__ import annotations

import json
import time

import pytest
from flashpods_api import ids
from flashpods_api.config import from_dict
from flashpods_api.jobs import Engine
from flashpods_api.registrar import NoopRegistrar
from flashpods_api.runtime import Runtime
from flashpods_api.store import Store

pytestmark = pytest.mark.slow

# Both write their uid, what a read-only root and the ulimits allow, and the job's env.
PROBE = (
    "id -u; ulimit -n; ulimit -c; touch /rootfs-write 2>/dev/null && echo rootfs-writable; "
    "touch /tmp/ok && echo tmp-writable; echo $FLASHPODS_JOB_KIND; pwd"
)


def _engine(host, api: str) -> Engine:
    # An instance of its own: the host's reaper removes its instance's containers that
    # have no job record, which these have not.
    cfg = from_dict({**host.api_config, "instance": f"{host.settings.instance}-paths"})
    runtime = Runtime(cfg.podman_url, cfg.instance, create_lock=cfg.create_lock_path, api=api)
    return Engine(cfg, Store(cfg.db_path, cfg.instance), runtime, NoopRegistrar())


def _start(engine: Engine, resources: dict) -> str:
    job_id = ids.new_job_id()
    job = {
        "id": job_id,
        "kind": "worker",
        "command": PROBE,
        "image": engine.config.images["worker"],
        "env": {"EXTRA": "1"},
        "resources": resources,
    }
    engine.files.prepare_dirs(job_id)
    spec = engine.specs.spec(job, None)
    # Not through flashpods-init: its token would be refused (this instance is not the
    # token service's), and what is compared here is the container, not the helper.
    spec.argv = ["sh", "-c", PROBE]
    engine.runtime.run(spec)
    return job_id


def _inspect(host, name: str) -> dict:
    out = host.podman("inspect", name, in_netns=False)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)[0]


def _contract(record: dict, job_id: str) -> dict:
    """What the container contract fixes, with the job id made neutral."""
    config, hostcfg = record["Config"], record["HostConfig"]
    fields = {
        "user": config["User"],
        "env": sorted(config["Env"]),
        "cmd": config["Cmd"],
        "workdir": config["WorkingDir"],
        "hostname": config["Hostname"],
        "labels": config["Labels"],
        "cap_add": hostcfg["CapAdd"],
        "cap_drop": hostcfg["CapDrop"],
        "read_only": hostcfg["ReadonlyRootfs"],
        "security_opt": hostcfg["SecurityOpt"],
        "ulimits": sorted(json.dumps(u, sort_keys=True) for u in hostcfg["Ulimits"]),
        "pids_limit": hostcfg["PidsLimit"],
        "memory": hostcfg["Memory"],
        "memory_swap": hostcfg["MemorySwap"],
        "cpu_quota": hostcfg["CpuQuota"],
        "cpu_period": hostcfg["CpuPeriod"],
        "log": [hostcfg["LogConfig"]["Type"], hostcfg["LogConfig"]["Path"]],
        "network": hostcfg["NetworkMode"],
        "init": hostcfg["Init"],
        "userns": hostcfg["UsernsMode"],
        "tmpfs": hostcfg["Tmpfs"],
        "mounts": sorted(
            (m["Type"], m["Source"], m["Destination"], m["RW"]) for m in record["Mounts"]
        ),
    }
    return json.loads(json.dumps(fields).replace(job_id, "JOB"))


def _wait_exit(engine: Engine, job_id: str) -> dict:
    # "exited", not "stopped": Podman 4.3 shows "stopped" for a moment between the
    # process's exit and conmon's cleanup, and the two paths may be read on either side
    # of it (seen once in CI: rest "exited", cli "stopped", both exit code 0).
    deadline = time.monotonic() + 60
    while (state := engine.runtime.state(job_id))["State"] != "exited":
        assert time.monotonic() < deadline, state
        time.sleep(0.1)
    return state


def test_rest_and_cli_create_the_same_job_container(devhost_factory):
    host = devhost_factory(api_overrides={"warm_pool": {}})
    rest, cli = _engine(host, "auto"), _engine(host, "cli")
    assert rest.runtime.uses_rest(), rest.runtime.api_note  # the probe: Podman 4.3 -> REST
    assert not cli.runtime.uses_rest()
    resources = {"memory": 256, "cpus": 0.5, "pids": 200}
    by_rest, by_cli = _start(rest, resources), _start(cli, resources)
    try:
        _compare(host, rest, cli, by_rest, by_cli)
    finally:
        # Each path removes the other's container; a second removal or a signal to a
        # gone container is no error on either path.
        rest.runtime.remove(by_cli)
        cli.runtime.remove(by_rest)
    for engine in (rest, cli):
        for name in (by_rest, by_cli):
            engine.runtime.remove(name)
            engine.runtime.signal(name, "TERM")
            assert engine.runtime.state(name) is None


def _compare(host, rest: Engine, cli: Engine, by_rest: str, by_cli: str) -> None:
    assert _contract(_inspect(host, by_rest), by_rest) == _contract(_inspect(host, by_cli), by_cli)
    # Both ran alike: same uid, limits, read-only root, writable /tmp, env, workdir.
    states = [_wait_exit(rest, by_rest), _wait_exit(cli, by_cli)]
    logs = [host.podman("logs", name, in_netns=False).stdout for name in (by_rest, by_cli)]
    assert states[0] == states[1] == {"State": "exited", "ExitCode": 0}, (states, logs)
    assert logs[0] == logs[1], logs
    assert "rootfs-writable" not in logs[0] and "tmp-writable" in logs[0], logs[0]
    # Each path reads the other's containers: inspect through REST and through the CLI.
    assert rest.runtime.state(by_cli) == cli.runtime.state(by_rest)


def test_a_rest_failure_reads_as_the_cli_would_say_it(devhost_factory):
    """A name in use (the restart case jobs.py adopts) and an unreachable service keep
    the CLI path's wording, so the engine's adopt and requeue paths work on either."""
    host = devhost_factory(api_overrides={"warm_pool": {}})
    engine = _engine(host, "rest")
    job_id = _start(engine, {})
    try:
        _refusals(host, engine, job_id)
    finally:
        engine.runtime.remove(job_id)


def _refusals(host, engine: Engine, job_id: str) -> None:
    job = {
        "id": job_id,
        "kind": "worker",
        "command": "true",
        "image": engine.config.images["worker"],
        "env": {},
        "resources": {},
    }
    with pytest.raises(Exception) as taken:
        engine.runtime.run(engine.specs.spec(job, None))
    assert "already in use" in getattr(taken.value, "stderr", ""), taken.value
    gone = Runtime(f"unix://{host.paths.root}/no-such.sock", "x", api="auto")
    assert not gone.uses_rest()  # the probe found no REST service: the CLI is used
    assert "did not answer" in gone.api_note
