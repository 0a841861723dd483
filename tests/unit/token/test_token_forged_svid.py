"""The forged-SVID suite: spire mode against a test CA minting SPIRE-shaped JWT-SVIDs.

Every forgery gets 401 and the body names the check that failed; valid ES256 and
RS256 SVIDs of a running job are accepted. Runs the real server on a unix socket.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import subprocess

import pytest
from conftest import SECRETS, exchange
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from svid_ca import TestCA

JOB = "job_abcdefghijkl"


def _b64(obj) -> str:
    raw = obj if isinstance(obj, bytes) else json.dumps(obj).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def alg_none(ca: TestCA) -> str:
    header = {"alg": "none", "kid": ca.ec_kid, "typ": "JWT"}
    claims = {"sub": ca.spiffe_id(JOB), "aud": ["flashpods-token"], "exp": 2**31 - 1}
    return f"{_b64(header)}.{_b64(claims)}."


def hs256_with_public_key(ca: TestCA) -> str:
    # The classic confusion attack: HMAC keyed with the bundle's public key.
    header = {"alg": "HS256", "kid": ca.ec_kid, "typ": "JWT"}
    claims = {"sub": ca.spiffe_id(JOB), "aud": ["flashpods-token"], "exp": 2**31 - 1}
    pem = ca.ec_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    signing_input = f"{_b64(header)}.{_b64(claims)}"
    sig = hmac.new(pem, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{_b64(sig)}"


def tampered_payload(ca: TestCA) -> str:
    # A valid worker SVID whose payload is swapped for a sub_agent one; signature kept.
    h, _p, s = ca.mint(ca.spiffe_id(JOB, "worker")).split(".")
    claims = {"sub": ca.spiffe_id(JOB, "sub_agent"), "aud": ["flashpods-token"], "exp": 2**31 - 1}
    return f"{h}.{_b64(claims)}.{s}"


def other_key_same_kid(ca: TestCA) -> str:
    rogue = TestCA()
    rogue.ec_key = ec.generate_private_key(ec.SECP256R1())
    return rogue.mint(ca.spiffe_id(JOB), kid=ca.ec_kid)


# (case id, token builder, check named in the 401)
FORGERIES = [
    ("alg_none", alg_none, "algorithm"),
    ("hs256_signed_with_public_key", hs256_with_public_key, "algorithm"),
    ("expired", lambda ca: ca.mint(ca.spiffe_id(JOB), ttl=-60), "exp"),
    (
        "not_yet_valid_iat",
        lambda ca: ca.mint(ca.spiffe_id(JOB), iat_offset=600, ttl=900),
        "not_before",
    ),
    (
        "not_yet_valid_nbf",
        lambda ca: ca.mint(ca.spiffe_id(JOB), extra_claims={"nbf": 2**31 - 2}),
        "not_before",
    ),
    ("wrong_audience", lambda ca: ca.mint(ca.spiffe_id(JOB), aud=["someone-else"]), "audience"),
    ("missing_audience", lambda ca: ca.mint(ca.spiffe_id(JOB), aud=None), "audience"),
    ("missing_exp", lambda ca: ca.mint(ca.spiffe_id(JOB), drop=("exp",)), "exp"),
    (
        "foreign_trust_domain",
        lambda ca: ca.mint(f"spiffe://evil.example/job/{JOB}/worker"),
        "trust_domain",
    ),
    ("wrong_path_role", lambda ca: ca.mint(f"spiffe://flashpods.internal/job/{JOB}/admin"), "sub"),
    (
        "wrong_path_prefix",
        lambda ca: ca.mint(f"spiffe://flashpods.internal/jobs/{JOB}/worker"),
        "sub",
    ),
    (
        "wrong_path_extra",
        lambda ca: ca.mint(f"spiffe://flashpods.internal/job/{JOB}/worker/x"),
        "sub",
    ),
    ("not_a_spiffe_id", lambda ca: ca.mint(f"https://flashpods.internal/job/{JOB}/worker"), "sub"),
    ("unknown_kid", lambda ca: ca.mint(ca.spiffe_id(JOB), kid="no-such-kid"), "kid"),
    ("tampered_payload", tampered_payload, "signature"),
    ("other_key_same_kid", other_key_same_kid, "signature"),
    (
        "rs256_claiming_ec_kid",
        lambda ca: ca.mint(ca.spiffe_id(JOB), alg="RS256", kid=ca.ec_kid),
        "algorithm",
    ),
    ("garbage", lambda ca: "this-is-not-a-jwt", "format"),
    ("garbage_three_parts", lambda ca: "a.b.c", "format"),
]


@pytest.fixture
def running_job(podman):
    podman.add_job(JOB, "worker")
    return JOB


@pytest.mark.parametrize(
    ("build", "check"), [(b, c) for _, b, c in FORGERIES], ids=[i for i, _, _ in FORGERIES]
)
def test_forged_svid_is_refused_naming_the_check(spire_server, ca, running_job, build, check):
    status, body, _ = exchange(spire_server.socket, token=build(ca))
    assert status == 401, body
    assert body["code"] == "unauthenticated"
    assert body["check"] == check
    assert body["error"].startswith(check + ":")
    for value in SECRETS.values():
        assert value not in json.dumps(body)
    last = spire_server.audit_lines()[-1]
    assert last["outcome"] == "unauthenticated" and last["check"] == check
    assert last["granted"] == []


@pytest.mark.parametrize("alg", ["ES256", "RS256"])
def test_valid_svid_gets_the_roles_tokens(spire_server, ca, running_job, alg):
    token = ca.mint(ca.spiffe_id(JOB, "worker"), alg=alg)
    status, body, _ = exchange(spire_server.socket, token=token)
    assert status == 200, body
    assert body["tokens"] == {"GITHUB_TOKEN": SECRETS["GITHUB_TOKEN"]}
    assert body["spiffe_id"] == f"spiffe://flashpods.internal/job/{JOB}/worker"
    assert body["role"] == "worker" and body["job_id"] == JOB
    assert isinstance(body["expires_at"], int)


def test_audience_list_with_other_entries_is_accepted(spire_server, ca, running_job):
    token = ca.mint(ca.spiffe_id(JOB), aud=["other", "flashpods-token"])
    assert exchange(spire_server.socket, token=token)[0] == 200


def test_missing_authorization_is_refused(spire_server, running_job):
    status, body, _ = exchange(spire_server.socket)
    assert status == 401 and body["check"] == "authorization"


@pytest.mark.parametrize(
    ("state", "job_present"), [("exited", True), ("running", False)], ids=["finished", "unknown"]
)
def test_valid_svid_of_a_job_that_is_not_running_gets_nothing(
    spire_server, ca, podman, state, job_present
):
    if job_present:
        podman.add_job(JOB, "worker", state=state)
    status, body, _ = exchange(spire_server.socket, token=ca.mint(ca.spiffe_id(JOB)))
    assert status == 401 and body["check"] == "job_running"


def test_restarted_container_of_a_finished_job_gets_nothing(spire_server, ca, podman):
    podman.add_job(JOB, "worker", FinishedAt="2026-01-01T00:00:00Z")
    status, body, _ = exchange(spire_server.socket, token=ca.mint(ca.spiffe_id(JOB)))
    assert status == 401 and body["check"] == "job_running"


def test_job_of_another_instance_gets_nothing(spire_server, ca, podman):
    podman.add_job(JOB, "worker", instance="someone-else")
    status, body, _ = exchange(spire_server.socket, token=ca.mint(ca.spiffe_id(JOB)))
    assert status == 401 and body["check"] == "job_running"


def test_sub_agent_svid_for_a_worker_job_is_refused(spire_server, ca, running_job):
    token = ca.mint(ca.spiffe_id(JOB, "sub_agent"))
    status, body, _ = exchange(spire_server.socket, token=token)
    assert status == 401 and body["check"] == "job_role"


def test_sub_agent_gets_the_sub_agent_tokens(spire_server, ca, podman):
    podman.add_job(JOB, "sub_agent")
    token = ca.mint(ca.spiffe_id(JOB, "sub_agent"))
    status, body, _ = exchange(spire_server.socket, token=token)
    assert status == 200
    assert body["tokens"] == SECRETS


@pytest.mark.parametrize("old", ["agent", "subagent", "sub-agent"])
def test_an_svid_with_an_old_sub_agent_path_is_refused_naming_the_new(
    spire_server, ca, podman, old
):
    # Entries registered before the rename say /job/<id>/agent: refused, and the
    # reason says what the entry must say instead.
    podman.add_job(JOB, "sub_agent")
    status, body, _ = exchange(spire_server.socket, token=ca.mint(ca.spiffe_id(JOB, old)))
    assert status == 401 and body["check"] == "sub"
    assert f"/{old}" in body["error"] and "/job/<job_id>/sub_agent" in body["error"]


def test_bundle_rotation_is_picked_up_from_the_file(spire_server, ca, running_job, bundle_file):
    rotated = TestCA()
    token = rotated.mint(rotated.spiffe_id(JOB))
    assert exchange(spire_server.socket, token=token)[1]["check"] == "kid"
    bundle_file.write_text(json.dumps(rotated.server_bundle()))
    assert exchange(spire_server.socket, token=token)[0] == 200
    # The old key left the bundle: its tokens are refused now.
    old = ca.mint(ca.spiffe_id(JOB))
    assert exchange(spire_server.socket, token=old)[1]["check"] == "kid"


def test_half_written_bundle_keeps_the_last_good_keys(spire_server, ca, running_job, bundle_file):
    bundle_file.write_text('{"keys": [')
    assert exchange(spire_server.socket, token=ca.mint(ca.spiffe_id(JOB)))[0] == 200


def test_job_ending_after_a_cached_exchange_is_refused_at_once(spire_server, ca, podman):
    init = subprocess.Popen(["sleep", "60"])
    try:
        podman.add_job(JOB, "worker", pid=init.pid)
        token = ca.mint(ca.spiffe_id(JOB))
        assert exchange(spire_server.socket, token=token)[0] == 200
        calls = len(podman.calls)
        assert exchange(spire_server.socket, token=token)[0] == 200
        assert len(podman.calls) == calls  # the hot path asks the pidfd, not Podman
    finally:
        init.kill()
        init.wait()
    # Podman has not noticed yet (still says running): the dead init decides.
    status, body, _ = exchange(spire_server.socket, token=token)
    assert status == 401 and body["check"] == "job_running"
    # A container re-created under the ended job's name does not revive it.
    again = subprocess.Popen(["sleep", "60"])
    try:
        podman.add_job(JOB, "worker", pid=again.pid)
        status, body, _ = exchange(spire_server.socket, token=ca.mint(ca.spiffe_id(JOB)))
        assert status == 401 and body["check"] == "job_running"
    finally:
        again.kill()
        again.wait()
