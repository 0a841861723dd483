"""runtime.py: the `podman run` arguments of a job's container."""

from __future__ import annotations

from flashpods_api.runtime import RunSpec, run_args


def test_run_args_apply_requested_limits_and_the_spire_socket():
    spec = RunSpec(
        job_id="job_aaaaaaaaaaaa", kind="sub_agent", instance="i", image="img", argv=["x"],
        env={"A": "1"}, workspace="/w", artifacts="/a", log_path="/l/job.ctr.log",
        helper_path="/h", token_socket="/t/token.sock", network_mode="bridge",
        agent_socket="/run/spire/agent.sock", resources={"memory": 512, "cpus": 1.5, "pids": 99},
    )  # fmt: skip
    args = run_args(spec)
    joined = " ".join(args)
    assert "--memory 512m" in joined and "--cpus 1.5" in joined and "--pids-limit 99" in joined
    assert "source=/run/spire/agent.sock,destination=/run/spire/sockets/agent.sock" in joined
    assert "--network bridge" in joined and "--env A=1" in joined
    assert "--log-opt path=/l/job.ctr.log" in joined
    assert "input" not in joined  # no upload, no /flashpods/input mount
