"""What a job's container runs: its command, its environment, its whole RunSpec."""

from __future__ import annotations

from typing import Any

from . import job_limits, logs
from .config import Config
from .job_files import JobFiles
from .runtime import HELPER_IN_CONTAINER, RunSpec


class ContainerSpecs:
    def __init__(self, config: Config, files: JobFiles) -> None:
        self.config = config
        self.files = files

    def command_argv(self, job: dict[str, Any]) -> list[str]:
        if job["kind"] == "worker":
            return ["sh", "-c", job["command"]]
        return list(self.config.sub_agent["command"])

    def request_env(self, job: dict[str, Any]) -> dict[str, str]:
        """What a job adds to its container's fixed environment: its prompt and its `env`.

        For a sub_agent the host's sub_agent.env wins for every ANTHROPIC_* name and a request's
        own ANTHROPIC_* names are dropped: a request must not point the agent's key at
        another endpoint (validate.py refuses them already; this holds even so).
        """
        env: dict[str, str] = {}
        if job["kind"] == "sub_agent":
            env["FLASHPODS_PROMPT"] = job["prompt"]
        env.update(job.get("env") or {})
        if job["kind"] == "sub_agent":
            env = {k: v for k, v in env.items() if not k.startswith("ANTHROPIC_")}
            agent_env = self.config.sub_agent["env"]
            env.update({k: v for k, v in agent_env.items() if k.startswith("ANTHROPIC_")})
        return env

    def spec(
        self, job: dict[str, Any], input_dir: str | None, control: str | None = None
    ) -> RunSpec:
        """The container of a job; with `control`, a warm one that waits for its command."""
        cfg = self.config
        env = {
            "FLASHPODS_JOB_ID": job["id"],
            "FLASHPODS_JOB_KIND": job["kind"],
            "FLASHPODS_TOKEN_SOCKET": "/run/flashpods/token.sock",
            "FLASHPODS_ATTESTATION": cfg.attestation,
            "SPIFFE_ENDPOINT_SOCKET": "unix:///run/spire/sockets/agent.sock",
            "HOME": "/tmp/home",
            "TMPDIR": "/tmp",
        }
        if job["kind"] == "sub_agent":
            env = {**cfg.sub_agent["env"], **env}
        if control:
            argv = [HELPER_IN_CONTAINER, "--wait-command"]
        else:
            argv = [HELPER_IN_CONTAINER, "--", *self.command_argv(job)]
            env.update(self.request_env(job))
        return RunSpec(
            job_id=job["id"],
            kind=job["kind"],
            instance=cfg.instance,
            image=job["image"],
            argv=argv,
            env=env,
            workspace=str(self.files.workspace(job["id"])),
            artifacts=str(self.files.artifacts(job["id"])),
            log_path=str(logs.ctr_log_path(cfg.logs_dir, job["id"])),
            helper_path=cfg.helper_path,
            token_socket=cfg.token_socket,
            network_mode=cfg.network_mode,
            input_dir=input_dir,
            agent_socket=cfg.spire["agent_socket"] if cfg.attestation == "spire" else None,
            agent_cli=cfg.spire["agent_cli"] if cfg.attestation == "spire" else None,
            resources=job_limits.container_resources(cfg, job),
            control_dir=control,
        )
