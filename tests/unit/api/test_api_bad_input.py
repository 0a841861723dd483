"""The bad-input table: every refusal is a 4xx JSON sentence, never a 5xx, and creates nothing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from api_fakes import TOKEN

LONG = "x" * 200

# (method, url, body or raw bytes, expected status, expected code) - one comment per edge case.
TABLE = [
    # ids: traversal, slashes, NUL, over-long, wrong prefix
    ("GET", "/jobs/..", None, 400, "bad_job_id"),
    ("GET", "/jobs/job_..%2F..%2Fetc", None, 404, "not_found"),  # %2F is a / again: no such route
    ("GET", "/jobs/job_aaaa%00aaaaaaa", None, 400, "bad_job_id"),
    ("GET", f"/jobs/job_{LONG}", None, 400, "bad_job_id"),
    ("GET", "/jobs/JOB_AAAAAAAAAAAA", None, 400, "bad_job_id"),
    ("GET", "/jobs/job_aaaaaaaaaaaa/logs?offset=-1", None, 404, "unknown_job"),
    ("POST", "/jobs/job_..%2Fx/kill", None, 404, "not_found"),
    # upload ids
    (
        "POST",
        "/jobs",
        {"kind": "worker", "command": "x", "upload_id": "../../etc"},
        400,
        "bad_upload_id",
    ),
    (
        "POST",
        "/jobs",
        {"kind": "worker", "command": "x", "upload_id": "up_aaaaaaaaaaaaaaaa"},
        400,
        "unknown_upload",
    ),
    ("POST", "/uploads", {"basis": "../x"}, 400, "bad_basis"),
    ("POST", "/uploads", {"other": 1}, 400, "bad_json"),
    # bodies
    ("POST", "/jobs", b"{not json", 400, "bad_json"),
    ("POST", "/jobs", b"", 400, "bad_json"),
    ("POST", "/jobs", b"\xff\xfe", 400, "bad_json"),
    ("POST", "/jobs", [1, 2], 400, "bad_json"),
    ("POST", "/jobs", b"[" * 200_000, 400, "bad_json"),  # nesting deeper than the parser's stack
    ("POST", "/jobs", b'{"kind": "worker", "command": "x", "timeout_s": NaN}', 400, "bad_timeout"),
    (
        "POST",
        "/jobs",
        {"kind": "worker", "command": "x" * 2_000_000},
        413,
        "request_entity_too_large",
    ),
    ("POST", "/jobs", {"kind": "worker", "command": "x", "colour": "red"}, 400, "unknown_field"),
    ("POST", "/jobs", {"kind": "root", "command": "x"}, 400, "bad_kind"),
    ("POST", "/jobs", {"kind": "worker"}, 400, "bad_command"),
    ("POST", "/jobs", {"kind": "worker", "command": "   "}, 400, "bad_command"),
    ("POST", "/jobs", {"kind": "worker", "command": "a\u0000b"}, 400, "bad_command"),
    ("POST", "/jobs", {"kind": "worker", "command": ["ls", "-l"]}, 400, "bad_command"),
    ("POST", "/jobs", {"kind": "worker", "command": "x" * 70_000}, 400, "bad_command"),
    ("POST", "/jobs", {"kind": "worker", "prompt": "hi", "command": "x"}, 400, "bad_prompt"),
    ("POST", "/jobs", {"kind": "sub_agent", "prompt": "p" * 130_000}, 400, "bad_prompt"),
    ("POST", "/jobs", {"kind": "sub_agent", "command": "x", "prompt": "p"}, 400, "bad_command"),
    # images outside the allow-list
    (
        "POST",
        "/jobs",
        {"kind": "worker", "command": "x", "image": "docker.io/evil:latest"},
        400,
        "image_not_allowed",
    ),
    ("POST", "/jobs", {"kind": "worker", "command": "x", "image": 7}, 400, "image_not_allowed"),
    # env: names only, never Flashpods' own variables
    (
        "POST",
        "/jobs",
        {"kind": "worker", "command": "x", "env": {"FLASHPODS_JOB_ID": "x"}},
        400,
        "reserved_env",
    ),
    (
        "POST",
        "/jobs",
        {"kind": "worker", "command": "x", "env": {"SPIFFE_ENDPOINT_SOCKET": "x"}},
        400,
        "reserved_env",
    ),
    (
        "POST",
        "/jobs",
        {"kind": "worker", "command": "x", "env": {"HOME": "/"}},
        400,
        "reserved_env",
    ),
    (
        "POST",
        "/jobs",
        {"kind": "worker", "command": "x", "env": {"PATH": "/evil"}},
        400,
        "reserved_env",
    ),
    (
        "POST",
        "/jobs",
        {"kind": "worker", "command": "x", "env": {"LD_PRELOAD": "/x.so"}},
        400,
        "reserved_env",
    ),
    ("POST", "/jobs", {"kind": "worker", "command": "x", "env": {"A=B": "x"}}, 400, "bad_env"),
    ("POST", "/jobs", {"kind": "worker", "command": "x", "env": {"1X": "x"}}, 400, "bad_env"),
    ("POST", "/jobs", {"kind": "worker", "command": "x", "env": {"X": 1}}, 400, "bad_env"),
    ("POST", "/jobs", {"kind": "worker", "command": "x", "env": {"X": "a\u0000"}}, 400, "bad_env"),
    ("POST", "/jobs", {"kind": "worker", "command": "x", "env": ["X=1"]}, 400, "bad_env"),
    # timeouts: negative, zero, huge, not a number
    ("POST", "/jobs", {"kind": "worker", "command": "x", "timeout_s": -1}, 400, "bad_timeout"),
    ("POST", "/jobs", {"kind": "worker", "command": "x", "timeout_s": 0}, 400, "bad_timeout"),
    ("POST", "/jobs", {"kind": "worker", "command": "x", "timeout_s": 10**12}, 400, "bad_timeout"),
    ("POST", "/jobs", {"kind": "worker", "command": "x", "timeout_s": "60"}, 400, "bad_timeout"),
    ("POST", "/jobs", {"kind": "worker", "command": "x", "timeout_s": True}, 400, "bad_timeout"),
    # resources
    (
        "POST",
        "/jobs",
        {"kind": "worker", "command": "x", "resources": {"memory": -5}},
        400,
        "bad_resources",
    ),
    (
        "POST",
        "/jobs",
        {"kind": "worker", "command": "x", "resources": {"memory": 1.5}},
        400,
        "bad_resources",
    ),
    (
        "POST",
        "/jobs",
        {"kind": "worker", "command": "x", "resources": {"cpus": 10**6}},
        400,
        "bad_resources",
    ),
    (
        "POST",
        "/jobs",
        {"kind": "worker", "command": "x", "resources": {"gpus": 1}},
        400,
        "bad_resources",
    ),
    # numbers too big for a float
    (
        "POST",
        "/jobs",
        {"kind": "worker", "command": "x", "resources": {"memory": 10**400}},
        400,
        "bad_resources",
    ),
    ("POST", "/jobs", {"kind": "worker", "command": "x", "timeout_s": 10**400}, 400, "bad_timeout"),
    (
        "POST",
        "/jobs",
        {"kind": "worker", "command": "x", "resources": {"pids": "many"}},
        400,
        "bad_resources",
    ),
    ("POST", "/jobs", {"kind": "worker", "command": "x", "resources": "big"}, 400, "bad_resources"),
    # query parameters
    ("GET", "/jobs?limit=0", None, 400, "bad_limit"),
    ("GET", "/jobs?limit=abc", None, 400, "bad_limit"),
    ("GET", "/jobs?limit=%C2%B2", None, 400, "bad_limit"),
    ("GET", "/jobs?status=done", None, 400, "bad_status"),
    ("GET", "/jobs?kind=root", None, 400, "bad_kind"),
    ("GET", "/jobs?cursor=-1", None, 400, "bad_cursor"),
    # unknown routes and methods
    ("GET", "/nope", None, 404, "not_found"),
    ("DELETE", "/jobs", None, 405, "method_not_allowed"),
]


@pytest.mark.parametrize(("method", "url", "body", "status", "code"), TABLE)
def test_bad_input_gets_a_useful_4xx(host, method, url, body, status, code):
    kwargs = {"headers": host.headers()}
    if isinstance(body, bytes):
        kwargs["data"] = body
        kwargs["content_type"] = "application/json"
    elif body is not None:
        kwargs["data"] = json.dumps(body)
        kwargs["content_type"] = "application/json"
    resp = host.client.open(url, method=method, **kwargs)
    payload = resp.get_json()
    assert resp.status_code == status, payload
    assert payload["code"] == code
    assert len(payload["error"]) > 20 and payload["error"].endswith((".", "!", ")"))
    assert host.store.list_jobs(None, None, 10, None) == []


def test_bad_job_paths_inside_a_real_job(host):
    job = host.job()
    for path, code in (
        ("..%2F..%2Fdb", 400),
        ("a/../b", 400),
        ("a%00b", 400),
        ("/etc/passwd", 400),
    ):
        resp = host.get(f"/jobs/{job['id']}/artifacts/{path}")
        assert resp.status_code in (code, 404), path
        assert resp.status_code < 500


def test_logs_query_validation(host):
    job = host.job()
    for query, code in (
        ("offset=-1", "bad_offset"),
        ("limit=0", "bad_limit"),
        ("follow=yes", "bad_follow"),
        ("format=xml", "bad_format"),
    ):
        resp = host.get(f"/jobs/{job['id']}/logs?{query}")
        assert (resp.status_code, resp.get_json()["code"]) == (400, code)


def test_reused_upload_is_409_and_the_second_job_is_not_created(host):
    upload = host.post("/uploads").get_json()["upload_id"]
    host.job(upload_id=upload)
    resp = host.post("/jobs", {"kind": "worker", "command": "x", "upload_id": upload})
    assert (resp.status_code, resp.get_json()["code"]) == (409, "upload_used")
    assert len(host.store.list_jobs(None, None, 10, None)) == 1


def test_expired_upload_is_refused(host):
    upload = host.post("/uploads").get_json()["upload_id"]
    host.store.set_upload(upload, "reserved", state="expired")
    resp = host.post("/jobs", {"kind": "worker", "command": "x", "upload_id": upload})
    assert (resp.status_code, resp.get_json()["code"]) == (400, "upload_expired")


def test_oversized_upload_is_413(make_host):
    host = make_host(limits={"upload_bytes": 100})
    upload = host.post("/uploads").get_json()["upload_id"]
    (Path(host.raw["storage"]["uploads"]) / upload / "big").write_bytes(b"x" * 1000)
    resp = host.post("/jobs", {"kind": "worker", "command": "x", "upload_id": upload})
    assert (resp.status_code, resp.get_json()["code"]) == (413, "upload_too_large")


def test_full_queue_is_429(make_host):
    host = make_host(max_concurrent_jobs=1, queue_limit=2)
    for _ in range(3):
        host.job("sleep 100")
    resp = host.post("/jobs", {"kind": "worker", "command": "x"})
    assert (resp.status_code, resp.get_json()["code"]) == (429, "queue_full")
    assert "wait" in resp.get_json()["error"]


@pytest.mark.parametrize(
    "header",
    [
        None,
        "",
        "Bearer",
        "Bearer wrong-token-wrong-token",
        f"Basic {TOKEN}",
        f"Bearer {TOKEN}x",
        "Bearer \u00e9",
    ],
)
def test_missing_or_wrong_token_is_401_and_creates_nothing(host, header):
    headers = {} if header is None else {"Authorization": header}
    for method, url, body in (
        ("POST", "/jobs", {"kind": "worker", "command": "x"}),
        ("POST", "/uploads", None),
        ("GET", "/jobs", None),
        ("GET", "/openapi.json", None),
    ):
        resp = host.client.open(url, method=method, headers=headers, json=body)
        assert resp.status_code == 401
        assert resp.get_json()["code"] == "unauthorized"
    assert host.store.list_jobs(None, None, 10, None) == []
    assert list(Path(host.raw["storage"]["uploads"]).iterdir()) == []
    assert host.runtime.specs == {}


def test_allowed_peers_refuses_other_addresses(make_host):
    host = make_host(allowed_peers=["10.0.0.2"])
    resp = host.get("/jobs", environ_base={"REMOTE_ADDR": "127.0.0.1"})
    assert (resp.status_code, resp.get_json()["code"]) == (403, "peer_not_allowed")
    assert host.get("/jobs", environ_base={"REMOTE_ADDR": "10.0.0.2"}).status_code == 200


def _random_value(rng, depth=0):
    choices = [
        lambda: rng.choice([None, True, False, 0, -1, 1.5, 10**30, -(10**30), float("inf")]),
        lambda: "".join(rng.choice("ab/.\0\u00e9$ \n{}") for _ in range(rng.randint(0, 12))),
        lambda: "x" * rng.choice([0, 1, 200, 70_000]),
    ]
    if depth < 3:
        choices.append(lambda: [_random_value(rng, depth + 1) for _ in range(rng.randint(0, 3))])
        choices.append(
            lambda: {
                rng.choice(["kind", "command", "env", "A", "HOME", "pids", "x"]): _random_value(
                    rng, depth + 1
                )
                for _ in range(rng.randint(0, 3))
            }
        )
    return rng.choice(choices)()


def test_random_job_bodies_never_get_a_5xx(host):
    import random

    rng = random.Random(20261123)
    fields = [
        "kind",
        "command",
        "prompt",
        "upload_id",
        "image",
        "env",
        "timeout_s",
        "resources",
        "artifacts_glob",
    ]
    for _ in range(400):
        body = {
            name: _random_value(rng) for name in rng.sample(fields, rng.randint(0, len(fields)))
        }
        if rng.random() < 0.5:
            body["kind"] = rng.choice(["worker", "sub_agent"])
        resp = host.client.post(
            "/jobs", headers=host.headers(), data=json.dumps(body), content_type="application/json"
        )
        assert resp.status_code < 500, (body, resp.get_data(as_text=True))
        assert "error" in resp.get_json() or resp.status_code == 201
