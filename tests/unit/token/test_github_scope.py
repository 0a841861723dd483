"""github_scope.py on its own: the config block, branch patterns, the receive-pack
command list as a hostile job might send it (over a real socketpair), GraphQL kinds.
The real-git tests are tests/integration/proxy/test_proxy_github.py."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time

import pytest
from flashpods_token.github_scope import (
    GithubScope,
    ScopeError,
    ScopeRefused,
    graphql_operation_kinds,
    parse_scope,
    pkt,
)
from flashpods_token.proxy_config import ProxyConfigError, parse_proxy

JOB = "job_abcdefghijkl"
OLD, NEW, ZERO = "1" * 40, "2" * 40, "0" * 40
RULES = {"GITHUB_TOKEN": ["github.com", "api.github.com"]}
SCOPE = GithubScope()


def commands(*lines: str, caps: str = "report-status side-band-64k") -> bytes:
    out = b""
    for i, line in enumerate(lines):
        out += pkt(line.encode() + (b"\0" + caps.encode() if i == 0 else b"") + b"\n")
    return out + b"0000"


def push(body: bytes, chunked: bool = False, extra: bytes = b"", wait_s: float = 2.0) -> bytes:
    """Send body to admit() as the job would (in two halves); return what it forwards."""
    ours, theirs = socket.socketpair()
    try:
        if chunked:
            wire = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in (body[:5], body[5:]) if p)
            wire += b"0\r\n\r\n"
            headers = [("Transfer-Encoding", "chunked")]
        else:
            wire = body
            headers = [("Content-Length", str(len(body)))]
        theirs.sendall(wire[5:] + extra)
        return SCOPE.admit(
            JOB, ours, "POST", "/o/r.git/git-receive-pack", headers, wire[:5], wait_s
        )
    finally:
        ours.close()
        theirs.close()


@pytest.mark.parametrize(
    ("ref", "ok"),
    [
        (f"refs/heads/flashpods/{JOB}/x", True),
        (f"refs/heads/flashpods/{JOB}/a/b", True),
        ("refs/heads/main", False),
        ("refs/heads/flashpods/job_other/x", False),  # another job's branches
        (f"refs/tags/flashpods/{JOB}/x", False),  # tags are never branches
        (f"refs/heads/flashpods/{JOB}/../main", False),  # what check-ref-format refuses
        (f"refs/heads/flashpods/{JOB}/x.lock", False),
        (f"refs/heads/flashpods/{JOB}/", False),
        (f"refs/heads/flashpods/{JOB}", False),
    ],
)
def test_branch_patterns(ref: str, ok: bool) -> None:
    assert SCOPE.branch_allowed(JOB, ref) is ok


def test_a_push_inside_the_scope_is_forwarded_byte_for_byte() -> None:
    body = commands(f"{OLD} {NEW} refs/heads/flashpods/{JOB}/x") + b"PACK\0\0\0\2rest"
    assert push(body) == body
    chunked = push(body, chunked=True)
    assert chunked.startswith(b"5\r\n") and b"PACK" in chunked  # the framing as sent


def test_git_probe_and_empty_bodies_pass() -> None:
    assert push(b"0000") == b"0000"


@pytest.mark.parametrize(
    "line",
    [
        f"{OLD} {NEW} refs/heads/main",
        f"{OLD} {ZERO} refs/heads/flashpods/{JOB}/x",  # a delete, even of its own branch
        f"{ZERO} {NEW} refs/tags/v1",
    ],
)
def test_pushes_outside_are_refused_with_a_report_git_prints(line: str) -> None:
    body = commands(f"{OLD} {NEW} refs/heads/flashpods/{JOB}/ok", line) + b"PACK..."
    with pytest.raises(ScopeRefused) as info:
        push(body)
    answer = info.value.answer
    assert answer is not None and answer.startswith(b"HTTP/1.1 200 OK")
    ref = line.split(" ")[2]
    assert f"ng {ref} flashpods: outside the push scope".encode() in answer
    # the allowed ref is refused too: the whole push or nothing
    assert f"ng refs/heads/flashpods/{JOB}/ok flashpods: another ref".encode() in answer
    assert b"\x02flashpods: push refused" in answer  # side band 2: git shows "remote: ..."


def test_without_report_status_the_refusal_is_a_403() -> None:
    body = commands(f"{OLD} {NEW} refs/heads/main", caps="ofs-delta") + b"PACK"
    with pytest.raises(ScopeRefused) as info:
        push(body)
    assert info.value.answer is not None and info.value.answer.startswith(b"HTTP/1.1 403")


@pytest.mark.parametrize(
    ("body", "status", "words"),
    [
        (b"zzzz", 400, "not a git pkt-line"),
        (b"0001", 400, "length 1"),
        (b"ffff" + b"x" * 10, 400, "length 65535"),
        (pkt(b"hello world\n") + b"0000", 400, "not a command"),
        (pkt(f"{OLD} {NEW}\n".encode()) + b"0000", 400, "not a command"),
        (pkt(f"{OLD} {NEW} refs/heads/x\n".encode()), 400, "ended early"),
        (pkt(b"push-cert\0report-status\n") + b"0000", 403, "signed pushes"),
    ],
)
def test_malformed_command_lists_get_a_clear_refusal(body: bytes, status: int, words: str) -> None:
    with pytest.raises(ScopeRefused) as info:
        push(body)
    assert info.value.status == status and words in str(info.value)


def test_a_giant_command_list_is_refused_not_read_forever() -> None:
    line = pkt(f"{OLD} {NEW} refs/heads/flashpods/{JOB}/{'a' * 60000}\n".encode())
    body = line * 40  # 2.4 MB of commands and never a flush
    ours, theirs = socket.socketpair()
    sender = threading.Thread(target=lambda: _send_quietly(theirs, body), daemon=True)
    sender.start()
    try:
        with pytest.raises(ScopeRefused) as info:
            SCOPE.admit(
                JOB,
                ours,
                "POST",
                "/o/r.git/git-receive-pack",
                [("Content-Length", str(len(body)))],
                b"",
                5,
            )
        assert info.value.status == 413 and "exceeds" in str(info.value)
    finally:
        ours.close()
        theirs.close()


def _send_quietly(sock: socket.socket, data: bytes) -> None:
    with contextlib.suppress(OSError):  # the scope stops reading: expected
        sock.sendall(data)


def test_a_trickled_command_list_hits_the_deadline() -> None:
    ours, theirs = socket.socketpair()
    try:
        theirs.sendall(b"00")
        started = time.monotonic()
        with pytest.raises(ScopeRefused) as info:
            SCOPE.admit(
                JOB,
                ours,
                "POST",
                "/o/r.git/git-receive-pack",
                [("Transfer-Encoding", "chunked")],
                b"",
                0.5,
            )
        assert info.value.status == 408 and time.monotonic() - started < 3
    finally:
        ours.close()
        theirs.close()


@pytest.mark.parametrize(
    "wire",
    [
        b"0x4\r\n0000\r\n0\r\n\r\n",  # Python's int() reads it, a strict server does not
        b"+4\r\n0000\r\n0\r\n\r\n",
        b"4\r\n0000XX0\r\n\r\n",  # data not followed by CRLF
        b"1_0\r\n" + b"0" * 16 + b"\r\n0\r\n\r\n",
    ],
)
def test_lenient_chunk_framing_is_refused(wire: bytes) -> None:
    # What the scope reads must be what upstream reads: no differential to hide refs in.
    a, b = socket.socketpair()
    try:
        b.sendall(wire)
        with pytest.raises(ScopeRefused, match="chunked body is malformed"):
            SCOPE.admit(
                JOB,
                a,
                "POST",
                "/o/r.git/git-receive-pack",
                [("Transfer-Encoding", "chunked")],
                b"",
                1,
            )
    finally:
        a.close()
        b.close()


def test_receive_pack_by_another_method_is_refused() -> None:
    a, b = socket.socketpair()
    try:
        with pytest.raises(ScopeRefused, match="POST only"):
            SCOPE.admit(JOB, a, "GET", "/o/r.git/git-receive-pack", [], b"", 1)
    finally:
        a.close()
        b.close()


@pytest.mark.parametrize(
    "headers",
    [
        [("Content-Length", "10"), ("Transfer-Encoding", "chunked")],
        [("Content-Length", "10"), ("Content-Length", "11")],
        [("Transfer-Encoding", "gzip, chunked")],
        [("Content-Length", "10"), ("Content-Encoding", "gzip")],
        [],
    ],
)
def test_ambiguous_or_encoded_push_bodies_are_refused(headers: list[tuple[str, str]]) -> None:
    a, b = socket.socketpair()
    try:
        with pytest.raises(ScopeRefused):
            SCOPE.admit(JOB, a, "POST", "/o/r.git/git-receive-pack", headers, b"", 1)
    finally:
        a.close()
        b.close()


@pytest.mark.parametrize(
    ("method", "target", "headers", "ok"),
    [
        ("GET", "/repos/o/r", [], True),
        ("GET", "/o/r.git/info/refs?service=git-receive-pack", [], True),
        ("POST", "/o/r.git/git-upload-pack", [("Content-Length", "0")], True),
        ("POST", "/repos/o/r/issues", [("Content-Length", "0")], False),
        ("DELETE", "/repos/o/r", [], False),
        ("PATCH", "/repos/o/r/git/refs/heads/main", [], False),
        ("GET", "/repos/o/r", [("X-HTTP-Method-Override", "DELETE")], False),
        ("POST", "/o/r.git/info/lfs/objects/batch", [("Content-Length", "0")], False),
        # Only the exact fetch shape passes as a read: no endpoint can pose as one.
        ("POST", "/repos/o/r/issues/git-upload-pack", [("Content-Length", "0")], False),
        ("POST", "/o/r/issues%2F..%2Fgit-upload-pack", [("Content-Length", "0")], False),
        ("POST", "/../r/git-upload-pack", [("Content-Length", "0")], False),
        ("POST", "/repos/o/r/graphql", [("Content-Length", "0")], False),
        # a spelling of receive-pack is still checked as one (empty body: no commands)
        ("POST", "/o/r.git/git%2Dreceive-pack/", [("Content-Length", "0")], True),
    ],
)
def test_reads_pass_and_writes_need_api_write(
    method: str, target: str, headers: list[tuple[str, str]], ok: bool
) -> None:
    a, b = socket.socketpair()
    try:
        if ok:
            SCOPE.admit(JOB, a, method, target, headers, b"", 1)
        else:
            with pytest.raises(ScopeRefused) as info:
                SCOPE.admit(JOB, a, method, target, headers, b"", 1)
            assert info.value.code == "scope_refused" and "api_write" in str(info.value)
            GithubScope(api_write=True).admit(JOB, a, method, target, headers, b"", 1)
    finally:
        a.close()
        b.close()


def graphql(query: object) -> bytes:
    return json.dumps({"query": query, "variables": {}}).encode()


@pytest.mark.parametrize(
    ("query", "kinds"),
    [
        ("{ viewer { login } }", {"query"}),
        ("query Q($a: Int) { viewer { login } }", {"query"}),
        ("fragment F on User { login } query { viewer { ...F } }", {"query"}),
        ('mutation { addStar(input: {starrableId: "x"}) { clientMutationId } }', {"mutation"}),
        ('query { a(x: "mutation {") }\nmutation M { b }', {"query", "mutation"}),
        ("# mutation\n{ viewer { login } }", {"query"}),
        ("subscription { x }", {"subscription"}),
        ("{ unbalanced ", {"unreadable"}),
    ],
)
def test_graphql_operation_kinds(query: str, kinds: set[str]) -> None:
    assert graphql_operation_kinds(graphql(query)) == kinds


@pytest.mark.parametrize("body", [b"[]", b"not json", json.dumps([{"query": "{a}"}]).encode()])
def test_unreadable_graphql_is_not_a_query(body: bytes) -> None:
    assert graphql_operation_kinds(body) == {"unreadable"}


def test_graphql_mutation_refused_query_forwarded() -> None:
    for query, ok in (("{ viewer { login } }", True), ("mutation { x }", False)):
        body = graphql(query)
        a, b = socket.socketpair()
        try:
            b.sendall(body)
            headers = [("Content-Length", str(len(body)))]
            if ok:
                assert SCOPE.admit(JOB, a, "POST", "/graphql", headers, b"", 1) == body
            else:
                with pytest.raises(ScopeRefused, match="GraphQL mutations"):
                    SCOPE.admit(JOB, a, "POST", "/graphql", headers, b"", 1)
        finally:
            a.close()
            b.close()


@pytest.mark.parametrize(
    ("block", "words"),
    [
        ([], "must be an object"),
        ({"secret": "NOPE"}, "no host rule"),
        ({"push_branches": "main"}, "must list"),
        ({"push_branches": ["refs/heads/x"]}, "not a branch pattern"),
        ({"push_branches": ["a b"]}, "not a branch pattern"),
        ({"push_branches": ["{user}/x"]}, "not a branch pattern"),
        ({"api_write": "no"}, "true or false"),
        ({"read": "all"}, "unknown key 'read'"),
    ],
)
def test_bad_scope_blocks_say_what_to_change(block: object, words: str) -> None:
    with pytest.raises(ScopeError, match=words):
        parse_scope(block, RULES)


def test_the_scope_in_the_token_config() -> None:
    proxy = {
        "socket": "/run/x/proxy.sock",
        "ca_dir": "/var/lib/x",
        "firewall_template": "/etc/x/firewall.nft.in",
        "rules": {"GITHUB_TOKEN": ["github.com"]},
        "github_scope": {"api_write": True},
    }
    settings, _ = parse_proxy(proxy, {"GITHUB_TOKEN": "/s"}, None)
    assert settings is not None and settings.github_scope == GithubScope(api_write=True)
    settings, _ = parse_proxy(proxy | {"github_scope": None}, {"GITHUB_TOKEN": "/s"}, None)
    assert settings is not None and settings.github_scope is None
    with pytest.raises(ProxyConfigError, match="github_scope"):
        parse_proxy(proxy | {"github_scope": {"x": 1}}, {"GITHUB_TOKEN": "/s"}, None)
