"""Every HTTP failure becomes a sentence the agent can act on (fake API on loopback)."""

import socket
import time

import flashpods_mcp.client as client_module
import pytest
from flashpods_mcp.client import ApiClient
from flashpods_mcp.config import load_settings
from flashpods_mcp.errors import FlashpodsError

TOKEN = "tok-unit-secret"
JOB = "job_0123456789ab"


def client_for(url, tmp_path, **env):
    settings = load_settings(
        {"HOME": str(tmp_path), "FLASHPODS_API_URL": url, "FLASHPODS_API_TOKEN": TOKEN, **env}
    )
    return ApiClient(settings)


def test_api_down_names_the_url(tmp_path, unused_port):
    url = f"http://127.0.0.1:{unused_port}"  # nothing listens there
    with pytest.raises(FlashpodsError) as info:
        client_for(url, tmp_path).list_jobs()
    assert "is the WireGuard tunnel up" in str(info.value)
    assert f"tried {url}" in str(info.value)


def test_the_api_is_reached_directly_whatever_the_environment_says(fake_api, tmp_path, monkeypatch):
    # A laptop's proxy settings are for the internet: the bearer token must not go to the
    # proxy, and a ~/.netrc login for the same host must not replace it.
    proxy = socket.create_server(("127.0.0.1", 0))
    proxy.settimeout(0)
    proxy_url = f"http://127.0.0.1:{proxy.getsockname()[1]}"
    for name in ("HTTP_PROXY", "http_proxy", "ALL_PROXY"):
        monkeypatch.setenv(name, proxy_url)
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    netrc = tmp_path / "netrc"
    netrc.write_text("machine 127.0.0.1 login someone password elsewhere\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))
    fake_api.routes[("GET", "/jobs")] = (200, {"jobs": []})
    with proxy:
        client_for(fake_api.url, tmp_path, FLASHPODS_HTTP_TIMEOUT_S="5").list_jobs()
        with pytest.raises(BlockingIOError):
            proxy.accept()  # nobody knocked
    assert fake_api.requests[-1]["auth"] == f"Bearer {TOKEN}"


ERRORS = [
    # (status, body, call, words in the sentence)
    # wrong token: says which two things disagree
    (
        401,
        {"error": "bad token", "code": "unauthorized"},
        "list",
        "FLASHPODS_API_TOKEN does not match the host's token file",
    ),
    # unknown job: names the id and where to look
    (404, {"error": "no such job", "code": "not_found"}, "get", f"Unknown job {JOB}"),
    (
        429,
        {"error": "1000 jobs queued", "code": "queue_full"},
        "spawn",
        "job queue is full (host says: 1000 jobs queued)",
    ),
    (
        413,
        {"error": "upload exceeds 1 GiB", "code": "too_large"},
        "spawn",
        "Too large for the host (host says: upload exceeds 1 GiB)",
    ),
    # bad input: the host's own sentence, verbatim
    (
        400,
        {"error": "timeout_s must be at most 86400", "code": "bad_input"},
        "spawn",
        "timeout_s must be at most 86400",
    ),
    (409, {"error": "job is final", "code": "wrong_state"}, "kill", "job is final"),
    (
        503,
        {"error": "podman is not answering", "code": "podman_down"},
        "list",
        "not ready (host says: podman is not answering)",
    ),
    (500, b"<html>boom</html>", "list", "failed with HTTP 500"),
    (403, {"error": "peer 10.0.0.9 not allowed"}, "list", "allowed_peers"),
]

CALLS = {
    "list": ("GET", "/jobs", lambda c: c.list_jobs()),
    "get": ("GET", f"/jobs/{JOB}", lambda c: c.get_job(JOB)),
    "spawn": ("POST", "/jobs", lambda c: c.create_job({"kind": "worker", "command": "true"})),
    "kill": ("POST", f"/jobs/{JOB}/kill", lambda c: c.kill_job(JOB)),
}


@pytest.mark.parametrize(("status", "body", "call", "words"), ERRORS)
def test_http_errors_become_sentences(fake_api, tmp_path, status, body, call, words):
    method, path, fn = CALLS[call]
    fake_api.routes[(method, path)] = (status, body)
    with pytest.raises(FlashpodsError) as info:
        fn(client_for(fake_api.url, tmp_path))
    assert words in str(info.value)
    assert TOKEN not in str(info.value)


def test_bearer_token_is_sent(fake_api, tmp_path):
    fake_api.routes[("GET", "/jobs")] = (200, {"jobs": [{"id": JOB, "status": "running"}]})
    assert client_for(fake_api.url, tmp_path).list_jobs(status="running", limit=5)[0]["id"] == JOB
    assert fake_api.requests[-1]["auth"] == f"Bearer {TOKEN}"
    assert "status=running" in fake_api.requests[-1]["path"]


def test_slow_api_times_out(fake_api, tmp_path):
    def slow(handler):
        time.sleep(1.0)
        return (200, {"jobs": []})

    fake_api.routes[("GET", "/jobs")] = slow
    client = client_for(fake_api.url, tmp_path, FLASHPODS_HTTP_TIMEOUT_S="0.2")
    with pytest.raises(FlashpodsError, match="did not answer within 0.2 s"):
        client.list_jobs()


def test_not_json_is_explained(fake_api, tmp_path):
    fake_api.routes[("GET", "/jobs")] = (200, b"hello from some other server")
    with pytest.raises(FlashpodsError, match="not JSON"):
        client_for(fake_api.url, tmp_path).list_jobs()


@pytest.mark.parametrize("bad", ["../../etc/passwd", "job_short", "JOB_0123456789AB", ""])
def test_bad_job_ids_never_reach_the_network(fake_api, tmp_path, bad):
    with pytest.raises(FlashpodsError, match="is not a job id"):
        client_for(fake_api.url, tmp_path).get_job(bad)
    assert fake_api.requests == []


def test_upload_reservation_must_return_an_id(fake_api, tmp_path):
    fake_api.routes[("POST", "/uploads")] = (201, {"upload_id": "../x"})
    with pytest.raises(FlashpodsError, match="no valid upload id"):
        client_for(fake_api.url, tmp_path).create_upload("up_aaaaaaaaaaaaaaaa")
    assert fake_api.requests[-1]["json"] == {"basis": "up_aaaaaaaaaaaaaaaa"}


def read_to_the_end(readinto, block=1024 * 1024):
    buffer = memoryview(bytearray(block))
    got = bytearray()
    while n := readinto(buffer):
        got += buffer[:n]
    return bytes(got)


@pytest.fixture(params=["http.client", "urllib3"])
def body_path(request, monkeypatch):
    """Every download test runs on both ways ResponseBody reads: the http.client response
    under urllib3 (the fast path), and urllib3's read(n), taken if a urllib3 release
    stops exposing it."""
    if request.param == "urllib3":
        monkeypatch.setattr(client_module, "underlying_http_response", lambda raw: None)
    return request.param


def test_the_pinned_urllib3_exposes_the_http_client_response(fake_api, tmp_path):
    # Not correctness (both paths are), speed: if an upgrade loses the fast path, this says so.
    fake_api.routes[("GET", f"/jobs/{JOB}/artifacts.tar")] = (200, b"x" * 1000)
    with client_for(fake_api.url, tmp_path).open_artifacts_tar(JOB) as readinto:
        assert readinto.__self__._fast is not None
        assert read_to_the_end(readinto) == b"x" * 1000


def test_artifact_download_is_read_from_the_open_response(fake_api, tmp_path, body_path):
    payload = bytes(range(256)) * 8192  # 2 MiB: several reads
    fake_api.routes[("GET", f"/jobs/{JOB}/artifacts.tar")] = (200, payload)
    seen = []
    client = client_for(fake_api.url, tmp_path)
    with client.open_artifacts_tar(JOB, lambda done, total: seen.append((done, total))) as read:
        assert read_to_the_end(read) == payload
    assert seen[-1] == (len(payload), len(payload)) and len(seen) >= 2
    assert fake_api.requests[-1]["auth"] == f"Bearer {TOKEN}"


def promise_more_than_sent(promised, sent):
    """A route that announces `promised` bytes, sends `sent`, then hangs up."""

    def route(handler):
        handler.send_response(200)
        handler.send_header("Content-Length", str(promised))
        handler.end_headers()
        handler.wfile.write(b"x" * sent)
        handler.wfile.flush()
        handler.close_connection = True

    return route


@pytest.mark.parametrize("sent", [0, 5000, 3 * 1024 * 1024])
def test_artifact_download_that_breaks_off_says_how_far_it_got(fake_api, tmp_path, body_path, sent):
    fake_api.routes[("GET", f"/jobs/{JOB}/artifacts.tar")] = promise_more_than_sent(
        sent + 1000, sent
    )
    client = client_for(fake_api.url, tmp_path)
    with (
        pytest.raises(FlashpodsError) as info,
        client.open_artifacts_tar(JOB) as read,
    ):
        read_to_the_end(read)
    assert str(info.value) == (
        f"The artifact download of {JOB} from {fake_api.url} broke off after {sent} bytes; "
        "retry get_job_artifacts."
    )
    assert TOKEN not in str(info.value)


def test_artifact_download_of_an_unknown_job(fake_api, tmp_path):
    fake_api.routes[("GET", f"/jobs/{JOB}/artifacts.tar")] = (404, {"error": "no such job"})
    with (
        pytest.raises(FlashpodsError, match=f"Unknown job {JOB}"),
        client_for(fake_api.url, tmp_path).open_artifacts_tar(JOB),
    ):
        pass


def test_artifact_download_that_stalls_times_out_as_a_break(fake_api, tmp_path, body_path):
    def stall(handler):
        handler.send_response(200)
        handler.send_header("Content-Length", "10000")
        handler.end_headers()
        handler.wfile.write(b"x" * 100)
        handler.wfile.flush()
        time.sleep(1.0)  # longer than the read timeout below

    fake_api.routes[("GET", f"/jobs/{JOB}/artifacts.tar")] = stall
    client = client_for(fake_api.url, tmp_path, FLASHPODS_HTTP_TIMEOUT_S="0.2")
    with (
        pytest.raises(FlashpodsError, match="broke off after 100 bytes; retry") as info,
        client.open_artifacts_tar(JOB) as read,
    ):
        read_to_the_end(read, block=100)
    assert info.value.__cause__ is not None  # the timeout, kept for the traceback
