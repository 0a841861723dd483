"""Fixtures for the token service's unit tests: a test CA, secret files, a stand-in
Podman API, and a real token server on a unix socket in a thread."""

from __future__ import annotations

import http.client
import json
import os
import shutil
import socket
import sys
import tempfile
import threading
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from fake_podman import FakePodman  # noqa: E402
from flashpods_token.app import build_server  # noqa: E402
from flashpods_token.config import parse_config  # noqa: E402
from svid_ca import TestCA  # noqa: E402

SECRETS = {"ANTHROPIC_API_KEY": "sk-unit-anthropic-9f2c", "GITHUB_TOKEN": "ghp-unit-github-77aa"}
ROLES = {"worker": ["GITHUB_TOKEN"], "sub_agent": ["ANTHROPIC_API_KEY", "GITHUB_TOKEN"]}
INSTANCE = "unit"


class UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float = 10):
        super().__init__("token", timeout=timeout)
        self._path = path

    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self._path)


def exchange(
    path: str, *, token: str | None = None, body: object = None, accept: str | None = None
) -> tuple[int, dict | str, dict]:
    conn = UnixHTTPConnection(path)
    headers = {}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    if accept:
        headers["Accept"] = accept
    data = b"" if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
    headers["Content-Length"] = str(len(data))
    conn.request("POST", "/v1/exchange", body=data, headers=headers)
    resp = conn.getresponse()
    raw = resp.read()
    conn.close()
    ctype = resp.getheader("Content-Type", "")
    payload = json.loads(raw) if ctype.startswith("application/json") else raw.decode()
    return resp.status, payload, dict(resp.getheaders())


@pytest.fixture(scope="session")
def ca() -> TestCA:
    return TestCA()


@pytest.fixture
def secret_files(tmp_path: Path) -> dict[str, str]:
    d = tmp_path / "secrets"
    d.mkdir(mode=0o700)
    paths = {}
    for name, value in SECRETS.items():
        p = d / name.lower()
        p.write_text(value + "\n")
        p.chmod(0o600)
        paths[name] = str(p)
    return paths


@pytest.fixture
def sock_dir():
    # Unix socket paths are limited to 108 bytes: pytest's tmp_path can be longer.
    d = tempfile.mkdtemp(prefix="fpt-", dir="/tmp")
    yield Path(d)
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def podman(sock_dir: Path):
    fake = FakePodman(str(sock_dir / "podman.sock"), INSTANCE)
    yield fake
    fake.close()


@pytest.fixture
def bundle_file(tmp_path: Path, ca: TestCA) -> Path:
    p = tmp_path / "bundle.json"
    p.write_text(json.dumps(ca.server_bundle()))
    return p


def base_config(tmp_path: Path, secret_files, podman, **overrides) -> dict:
    cfg = {
        "socket": str(Path(podman.path).parent / "token.sock"),
        "socket_group": None,
        "mode": "spire",
        "trust_domain": "flashpods.internal",
        "podman_url": podman.url,
        "instance": INSTANCE,
        "roles": ROLES,
        "secrets": secret_files,
        "env_delivery": sorted(secret_files),  # these tests check the exchange of values
        "audit_log": str(tmp_path / "audit.log"),
        "spire": {"bundle_file": None, "agent_socket": None, "audience": "flashpods-token"},
    }
    cfg.update(overrides)
    return cfg


class RunningServer:
    def __init__(self, config: dict):
        self.config = config
        self.server, self._cleanup = build_server(parse_config(config))
        self.socket = config["socket"]
        self.audit_path = Path(config["audit_log"])
        self._thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()

    def audit_lines(self) -> list[dict]:
        if not self.audit_path.exists():
            return []
        return [json.loads(line) for line in self.audit_path.read_text().splitlines()]

    def stop(self):
        self.server.shutdown()
        self.server.server_close()
        self._cleanup()


@pytest.fixture
def start_server():
    servers: list[RunningServer] = []

    def start(config: dict) -> RunningServer:
        s = RunningServer(config)
        servers.append(s)
        return s

    yield start
    for s in servers:
        s.stop()


@pytest.fixture
def spire_server(tmp_path, secret_files, podman, bundle_file, start_server):
    cfg = base_config(
        tmp_path,
        secret_files,
        podman,
        spire={
            "bundle_file": str(bundle_file),
            "agent_socket": None,
            "audience": "flashpods-token",
        },
    )
    return start_server(cfg)


def read_all_files(root: Path) -> bytes:
    out = b""
    for dirpath, _dirs, files in os.walk(root):
        for f in files:
            p = Path(dirpath) / f
            if p.is_file() and not p.is_socket():
                out += p.read_bytes()
    return out
