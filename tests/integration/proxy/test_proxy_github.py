"""GitHub through the credential proxy, for real (issue 15): a worker's `git clone`,
`git push`, `curl` and `gh` (agent image, through flashpods-init's relay) against a
stand-in GitHub whose git side is real `git http-backend`; the token arrives injected,
the job only ever holds the placeholder.

With `proxy.github_scope` on: a push to the job's own branches passes, a push to main,
a delete, a tag and a push mixing both are refused whole with a message git prints;
REST writes and GraphQL mutations are refused; malformed, giant and trickled
receive-pack streams get a clear refusal and the proxy keeps serving.
"""

from __future__ import annotations

import base64
import os
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from proxy_support import AGENT_IMAGE
from standin_git import GitBackend

pytestmark = [pytest.mark.root, pytest.mark.slow]

HERE = Path(__file__).parent
REPO = HERE.parents[2]
JOB_SCRIPT = (HERE / "github_job.sh").read_text()
SCOPED_SCRIPT = (HERE / "github_scoped_job.sh").read_text()
HOSTILE = (HERE / "hostile_push.py").read_text()
FOREIGN = "fpph.GITHUB_TOKEN.job_aaaaaaaaaaaa"
WORKER_IMAGE = "localhost/flashpods-worker:latest"


def images(agent_image: str) -> dict:
    return {"images": {"allowed": list(dict.fromkeys([WORKER_IMAGE, AGENT_IMAGE, agent_image]))}}


@pytest.fixture
def git_root() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="fp-proxy-git-", dir="/var/tmp") as tmp:
        yield Path(tmp)


def basic_password(record: dict) -> str:
    value = record["headers"]["authorization"].split(" ", 1)[1]
    return base64.b64decode(value).decode().partition(":")[2]


def git_requests(origin, host: str = "github.com") -> list[dict]:
    return [r for r in origin.requests if r.get("host") == host and "auth_ok" in r]


def pieces(secret: str) -> set[str]:
    return {secret[i : i + 8] for i in range(len(secret) - 7)}


def test_git_clone_push_curl_and_gh_with_the_token_injected(
    proxy_host, origin, git_root, agent_image
):
    api, keys = proxy_host(api=images(agent_image))
    token = keys["GITHUB_TOKEN"]
    origin.git = git = GitBackend(git_root, token)
    git.create_repo()
    seed = git.refs()["refs/heads/main"]
    job = api.spawn(kind="worker", command=JOB_SCRIPT, image=agent_image, timeout_s=300)
    final = api.wait(job["id"], timeout=300)
    log = api.logs(job["id"])
    text = log.decode(errors="replace")
    assert final["status"] == "succeeded", text[-3000:]
    lines = set(text.splitlines())
    placeholder = f"fpph.GITHUB_TOKEN.{job['id']}"

    # Full clone and push with real git: the commit is on the stand-in's branches.
    for step in ("clone", "push-main", "push-branch", "bearer"):
        assert f"{step}:0" in lines, (step, text)
    refs = git.refs()
    assert refs["refs/heads/main"] != seed
    assert refs[f"refs/heads/flashpods/{job['id']}/x"] == refs["refs/heads/main"]
    # curl and gh (Debian's, from the image) reach the API with the token injected.
    assert "curl:200" in lines and "gh:0" in lines, text
    assert any(line.startswith("gh version 2.") for line in lines), text
    assert re.search(r'"path":\s*"/user"', text), text
    users = origin.seen("/user")
    assert len(users) == 2 and all(u["headers"]["authorization"] == f"token {token}" for u in users)

    # Every authenticated git request carried the real token, put in by the proxy.
    authed = [r for r in git_requests(origin) if "authorization" in r["headers"]]
    assert {r["path"].split("?")[0].rsplit("/", 1)[-1] for r in authed} >= {
        "refs",
        "git-upload-pack",
        "git-receive-pack",
    }
    for r in authed:
        header = r["headers"]["authorization"]
        if header.startswith("Basic "):
            assert basic_password(r) == token, r
        else:
            assert header == f"Bearer {token}", r
        assert r["auth_ok"] is True
    # The same placeholder towards a host with no rule arrives unchanged (and fails there).
    other = [r for r in git_requests(origin, "other.example") if "authorization" in r["headers"]]
    assert other and all(basic_password(r) == placeholder for r in other)
    assert "other:0" not in lines
    # Another job's placeholder: refused at the proxy, never seen upstream.
    assert "foreign:0" not in lines and "403" in text, text
    basics = [r for r in authed if r["headers"]["authorization"].startswith("Basic ")]
    assert basics and not any(basic_password(r) == FOREIGN for r in basics)

    # The job never held the token: its environment, /tmp (the clone, git's config),
    # and its log hold the placeholder only.
    environ = api.artifact(job["id"], "environ.txt")
    assert placeholder.encode() in environ
    random_part = re.split(r"[_-]", token)[-1]
    for name, blob in {
        "log": log,
        "environ": environ,
        "tmp": api.artifact(job["id"], "tmp.tar"),
    }.items():
        found = sorted(p for p in pieces(random_part) if p.encode() in blob)
        assert not found, f"token pieces in {name}: {found}"

    # After the job ended, its placeholder is refused for everyone else.
    script = (
        f"git ls-remote https://x-access-token:{placeholder}@github.com/o/r.git 2>&1; echo ended:$?"
    )
    before = len(origin.requests)
    late = api.spawn(kind="worker", command=script, image=agent_image)
    api.wait(late["id"])
    late_text = api.logs(late["id"]).decode(errors="replace")
    assert "ended:0" not in late_text and "403" in late_text, late_text
    assert all("authorization" not in r["headers"] for r in origin.requests[before:]), (
        origin.requests[before:]
    )


def test_github_scope_push_only_to_the_jobs_branches(proxy_host, origin, git_root, agent_image):
    api, keys = proxy_host(proxy={"github_scope": {}, "read_timeout_s": 5}, api=images(agent_image))
    token = keys["GITHUB_TOKEN"]
    origin.git = git = GitBackend(git_root, token)
    git.create_repo()
    seed = git.refs()["refs/heads/main"]
    command = f"cat > /tmp/hostile_push.py <<'PY'\n{HOSTILE}PY\n{SCOPED_SCRIPT}"
    job = api.spawn(kind="worker", command=command, image=agent_image, timeout_s=240)
    final = api.wait(job["id"], timeout=300)
    text = api.logs(job["id"]).decode(errors="replace")
    assert final["status"] == "succeeded", text[-3000:]
    lines = set(text.splitlines())
    mine = f"refs/heads/flashpods/{job['id']}"

    # Inside the scope: pushed (the big one chunked), the token injected.
    assert {"clone:0", "push-mine:0", "push-big:0"} <= lines, text
    refs = git.refs()
    assert f"{mine}/x" in refs and f"{mine}/big" in refs

    # Outside: refused whole, with a line git prints per ref and the reason from the proxy.
    for step in ("push-main", "push-delete", "push-tag", "push-two"):
        assert f"{step}:0" not in lines and f"{step}:1" in lines, (step, text)
    assert "! [remote rejected] HEAD -> main (flashpods: outside the push scope)" in text
    assert "remote: flashpods: push refused: refs/heads/main outside this job's push scope" in text
    assert (
        f"! [remote rejected] flashpods/{job['id']}/x (flashpods: outside the push scope)" in text
    )
    assert "! [remote rejected] v1 -> v1 (flashpods: outside the push scope)" in text
    assert (
        f"! [remote rejected] HEAD -> flashpods/{job['id']}/y "
        "(flashpods: another ref is outside the scope)"
    ) in text
    assert refs["refs/heads/main"] == seed and f"{mine}/y" not in refs
    assert "refs/tags/v1" not in refs and "refs/heads/other" not in refs
    # A refused push never reached the stand-in.
    pushed = [r for r in origin.requests if r["path"].endswith("/git-receive-pack")]
    assert not any(b"refs/heads/main" in r["body"] or b"refs/tags" in r["body"] for r in pushed)

    # REST writes and GraphQL mutations: refused; reads and queries: answered.
    assert "api-post:403" in lines and "api-delete:403" in lines and "scope_refused" in text
    assert not origin.seen("/repos/o/r/issues")
    assert "gh-post:0" not in lines and "api_write is false" in text
    assert "gh-query:0" in lines and "gh-mutation:0" not in lines
    assert "GraphQL mutations are refused" in text
    graphql = origin.seen("/graphql")
    assert len(graphql) == 1 and b"viewer" in graphql[0]["body"]
    assert graphql[0]["headers"]["authorization"] == f"token {token}"

    # Streams git would never send: a clear refusal each, no hang, the proxy still serves.
    assert "garbage:400" in lines and "not a git pkt-line" in text, text
    assert "giant:413" in lines and "exceeds" in text, text
    assert "trickle:408" in lines, text
    assert "api-get:200" in lines and "gh-get:0" in lines, text
    assert api.host._services["proxy"].running
    assert os.path.exists(api.host.proxy_socket)
