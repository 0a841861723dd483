"""runtime.Runtime's probe: which Podman gets the REST path and which the CLI, and the
payload each REST major version gets (podman_spec). The real Podman here is 4.3, so the
5.x payload and the fallbacks are pinned down here; tests/integration/api/
test_api_podman_paths.py creates real containers through both paths."""

from __future__ import annotations

import pytest
from flashpods_api import podman_spec
from flashpods_api.podman_rest import RestError
from flashpods_api.runtime import (
    AGENT_DIR_IN_CONTAINER,
    TOKEN_DIR_IN_CONTAINER,
    PodmanError,
    RunSpec,
    Runtime,
)


class ScriptedVersion:
    """Stands in for PodmanRest.version(): a version string, or a RestError."""

    def __init__(self, answer: str | Exception) -> None:
        self.answer = answer
        self.calls = 0

    def version(self) -> str:
        self.calls += 1
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer


def runtime_answering(answer: str | Exception, api: str = "auto") -> Runtime:
    runtime = Runtime("unix:///nonexistent/podman.sock", "i", api=api)
    runtime._rest = ScriptedVersion(answer)  # type: ignore[assignment]
    return runtime


@pytest.mark.parametrize("version", ["4.3.1", "4.9.4", "5.0.0", "5.4.2"])
def test_podman_4_and_5_take_the_rest_path(version):
    runtime = runtime_answering(version)
    assert runtime.uses_rest()
    assert version in runtime.api_note


@pytest.mark.parametrize("version", ["3.4.4", "6.0.0", "dev", ""])
def test_other_versions_fall_back_to_the_cli(version):
    runtime = runtime_answering(version)
    assert not runtime.uses_rest()
    assert "using the CLI" in runtime.api_note


def test_a_silent_service_falls_back_and_is_asked_again_later_not_every_call():
    runtime = runtime_answering(RestError("connection refused"))
    assert not runtime.uses_rest() and not runtime.uses_rest()
    assert runtime._rest.calls == 1  # type: ignore[union-attr]
    assert "did not answer" in runtime.api_note


def test_rest_only_mode_refuses_instead_of_falling_back():
    with pytest.raises(PodmanError, match="REST API unusable"):
        runtime_answering("6.1.0", api="rest").uses_rest()
    with pytest.raises(PodmanError, match="REST API unusable"):
        runtime_answering(RestError("refused"), api="rest").uses_rest()


def test_cli_mode_never_asks_the_service():
    runtime = Runtime("unix:///nonexistent/podman.sock", "i", api="cli")
    assert not runtime.uses_rest()


def _spec() -> RunSpec:
    return RunSpec(
        job_id="job_aaaaaaaaaaaa", kind="worker", instance="i", image="img", argv=["x"],
        env={"A": "1"}, workspace="/w", artifacts="/a", log_path="/l/job.ctr.log",
        helper_path="/h", token_socket="/t/token.sock", network_mode="pasta",
        agent_socket="/run/spire/agent.sock", resources={"memory": 512, "pids": 99},
    )  # fmt: skip


@pytest.mark.parametrize("major", [4, 5])
def test_the_payload_holds_the_job_contract_on_4_and_5(major):
    body = podman_spec.payload(_spec(), major)
    assert body["userns"] == {"nsmode": "keep-id"}
    assert body["netns"] == {"nsmode": "pasta"}
    # 5.x made these pointers: always written, never left to a default that differs.
    assert body["init"] is True and body["no_new_privileges"] is True
    assert body["read_only_filesystem"] is True and body["cap_drop"] == ["ALL"]
    mounts = {m["destination"]: m for m in body["mounts"]}
    # The sockets' directories, read-only, as the CLI path mounts them.
    assert mounts[TOKEN_DIR_IN_CONTAINER]["source"] == "/t"
    assert mounts[AGENT_DIR_IN_CONTAINER]["source"] == "/run/spire"
    assert "ro" in mounts[AGENT_DIR_IN_CONTAINER]["options"]
    assert {"/tmp", "/run", "/var/tmp"} <= set(mounts)
    assert body["resource_limits"]["memory"]["limit"] == 512 * 1024 * 1024


def test_no_payload_is_guessed_for_an_unknown_major():
    with pytest.raises(ValueError, match="use the CLI"):
        podman_spec.payload(_spec(), 6)
