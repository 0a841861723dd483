"""spire mode with keys from the Workload API: a STAND-IN SPIRE agent (a real gRPC server
on a unix socket) streams JWTBundlesResponse messages as the agent does: JWKS keyed by
`spiffe://<td>`, keys without `use`, a new message on rotation, and the
`workload.spiffe.io` header required."""

from __future__ import annotations

import json
import queue
import time
from concurrent import futures

import grpc
import pytest
from conftest import base_config, exchange
from flashpods_token.workload_bundle import METHOD, decode_bundles, encode_bundles
from svid_ca import TestCA

JOB = "job_workloadapi01"
TD_ID = "spiffe://flashpods.internal"


class StandinAgent:
    def __init__(self, path: str):
        self.updates: queue.Queue = queue.Queue()
        self.headers: list[dict] = []

        def fetch(_request, context):
            md = dict(context.invocation_metadata())
            self.headers.append(md)
            if md.get("workload.spiffe.io") != "true":
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, "security header missing")
            while context.is_active():
                try:
                    item = self.updates.get(timeout=0.1)
                except queue.Empty:
                    continue
                yield item

        service, method = METHOD.strip("/").split("/")
        handler = grpc.method_handlers_generic_handler(
            service,
            {
                method: grpc.unary_stream_rpc_method_handler(
                    fetch,
                    request_deserializer=lambda b: b,
                    response_serializer=lambda d: encode_bundles(d),
                )
            },
        )
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        self.server.add_generic_rpc_handlers((handler,))
        self.server.add_insecure_port("unix:" + path)
        self.server.start()

    def publish(self, ca: TestCA, extra: dict | None = None) -> None:
        bundles = {TD_ID: json.dumps(ca.workload_api_bundle()).encode()}
        bundles.update(extra or {})
        self.updates.put(bundles)

    def stop(self):
        self.server.stop(grace=None)


@pytest.fixture
def agent(sock_dir):
    a = StandinAgent(str(sock_dir / "agent.sock"))
    yield a
    a.stop()


def test_protobuf_map_round_trip():
    bundles = {TD_ID: b'{"keys": []}', "spiffe://other.example": b"x" * 300}
    assert decode_bundles(encode_bundles(bundles)) == bundles


def test_keys_from_the_agent_verify_svids_and_follow_rotation(
    tmp_path, secret_files, podman, start_server, agent, ca, sock_dir
):
    agent.publish(ca, {"spiffe://federated.example": b'{"keys": []}'})
    podman.add_job(JOB, "worker")
    cfg = base_config(
        tmp_path, secret_files, podman,
        spire={"agent_socket": f"unix://{sock_dir}/agent.sock", "bundle_file": None},
    )  # fmt: skip
    server = start_server(cfg)
    assert agent.headers[0]["workload.spiffe.io"] == "true"
    status, body, _ = exchange(server.socket, token=ca.mint(ca.spiffe_id(JOB), alg="RS256"))
    assert status == 200, body

    rotated = TestCA()
    agent.publish(rotated)
    new_token = rotated.mint(rotated.spiffe_id(JOB))
    for _ in range(50):  # the update arrives on the stream
        status, body, _ = exchange(server.socket, token=new_token)
        if status == 200:
            break
        time.sleep(0.05)
    assert status == 200
    assert exchange(server.socket, token=ca.mint(ca.spiffe_id(JOB)))[1]["check"] == "kid"


def test_no_agent_fails_at_start_with_a_sentence(tmp_path, secret_files, podman, sock_dir):
    from flashpods_token.workload_bundle import WorkloadApiBundle

    with pytest.raises(ValueError, match="allow_unauthenticated_verifiers"):
        WorkloadApiBundle(str(sock_dir / "nothing.sock"), "flashpods.internal", wait_s=1)
