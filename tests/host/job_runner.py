"""Job containers for the host simulation, and what they try from inside.

`PodmanJobs` starts containers itself, as the job user's rootless Podman inside the
host namespace, with the flags the API uses (docs/design.md, "The job container
contract"); `container_probe` writes the busybox shell that tries each target from
inside a container and parses what came back.
"""

from __future__ import annotations

import json
import time
import uuid

from topology import HERE, PYTHON, Topology

IMAGE = "localhost/flashpods-worker:latest"
CONTRACT_FLAGS = (
    "--userns=keep-id",
    "--init",
    "--security-opt",
    "no-new-privileges",
    "--cap-drop",
    "ALL",
    "--read-only",
    "--tmpfs",
    "/tmp:rw,size=16m,mode=1777",
)


class PodmanJobs:
    """`user`: the container's uid (`--user`); with `--userns=keep-id`, any uid other
    than the job uid's own maps to one of the job user's subordinate uids on the host,
    which is what an escaped process gets by asking Podman for `--user 1`."""

    def __init__(self, t: Topology, user: str | None = None) -> None:
        self.t = t
        self.label = f"flashpods.instance=fp{t.tag}"
        self.flags = (*CONTRACT_FLAGS, *(("--user", user) if user is not None else ()))

    def _name(self) -> str:
        return f"fp{self.t.tag}-{uuid.uuid4().hex[:8]}"

    def run(self, script: str, network: str = "slirp4netns", timeout: float = 120) -> str:
        """Run `sh -c script` in a fresh job container; its stdout and stderr."""
        argv = ["run", "--rm", "--name", self._name(), "--label", self.label, *self.flags]
        result = self.t.podman(
            *argv, "--network", network, IMAGE, "sh", "-c", script, timeout=timeout, check=False
        )
        return result.stdout + result.stderr

    def start(self, script: str, network: str = "slirp4netns") -> str:
        """Start a long-running job container; its name."""
        name = self._name()
        argv = ["run", "-d", "--name", name, "--label", self.label, *self.flags]
        self.t.podman(*argv, "--network", network, IMAGE, "sh", "-c", script)
        return name

    def exec(self, name: str, script: str) -> str:
        result = self.t.podman("exec", name, "sh", "-c", script, check=False)
        return result.stdout + result.stderr

    def remove_all(self) -> None:
        listed = self.t.podman("ps", "-aq", "--filter", f"label={self.label}", check=False)
        ids = listed.stdout.split()
        if ids:
            self.t.podman("rm", "-f", "-t", "0", *ids, check=False)


def probe_script(targets: list[tuple[str, int]], dns: list[tuple[str, str]] = ()) -> str:
    """Busybox shell: one `PROBE addr port rc=N first-line` line per target."""
    lines = [
        "probe() {",
        '  out=$(printf \'GET /healthz HTTP/1.0\\r\\n\\r\\n\' | timeout 6 nc -w 3 "$1" "$2" 2>&1)',
        "  rc=$?",
        '  echo "PROBE $1 $2 rc=$rc $(echo "$out" | head -n 1)"',
        "}",
        "lookup() {",
        "  out=$(timeout 6 nslookup \"$1\" \"$2\" 2>&1 | tr '\\n' ' ')",
        '  echo "DNS $2 $1 $out"',
        "}",
    ]
    lines += [f"probe {addr} {port}" for addr, port in targets]
    lines += [f"lookup {name} {server}" for name, server in dns]
    return "\n".join(lines) + "\n"


def parse_probes(output: str) -> dict[str, dict]:
    """{"addr port": {"reached": bool, "line": text}} and {"dns server": text}."""
    results: dict[str, dict] = {}
    for line in output.splitlines():
        if line.startswith("PROBE "):
            _, addr, port, rc, *rest = line.split(" ")
            text = " ".join(rest)
            # nc exits 0 only after it connected; its own errors start with "nc:".
            reached = rc == "rc=0" or (text != "" and not text.startswith("nc:"))
            results[f"{addr} {port}"] = {"reached": reached, "line": text}
        elif line.startswith("DNS "):
            _, server, _name, *rest = line.split(" ")
            results[f"dns {server}"] = {"line": " ".join(rest)}
    return results


def container_probe(jobs, targets, network="slirp4netns", dns=()) -> dict[str, dict]:
    output = jobs.run(probe_script(list(targets), list(dns)), network=network)
    results = parse_probes(output)
    missing = [f"{a} {p}" for a, p in targets if f"{a} {p}" not in results]
    assert not missing, f"probe container gave no result for {missing}:\n{output}"
    return results


FINAL = {"succeeded", "failed", "timed_out", "killed", "lost"}


class ApiJobs:
    """Jobs started the real way: the laptop calls the API through the tunnel."""

    def __init__(self, t: Topology, host, role: str = "laptop") -> None:
        self.t = t
        self.host = host  # the DevHost: its podman() shares the API's image store
        self.api_url = host.api_url
        self.token = host.api_token
        self.role = role  # the namespace the calls come from

    def http(self, method: str, path: str, body=None, token: str | None = "", role=None):
        role = role or self.role
        spec = {
            "method": method,
            "url": self.api_url + path,
            "token": self.token if token == "" else token,
            "json": body,
        }
        out = self.t.sh(role, PYTHON, str(HERE / "laptop_http.py"), json.dumps(spec)).stdout
        return json.loads(out)

    def submit(self, command: str, kind: str = "worker", **extra) -> str:
        body = {"kind": kind, **({"command": command} if kind == "worker" else {"prompt": command})}
        got = self.http("POST", "/jobs", {**body, **extra})
        assert got["status"] == 201, got
        return json.loads(got["body"])["job"]["id"]

    def job(self, job_id: str) -> dict:
        got = self.http("GET", f"/jobs/{job_id}")
        assert got["status"] == 200, got
        return json.loads(got["body"])["job"]

    def wait(self, job_id: str, timeout: float = 120, until=FINAL) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            job = self.job(job_id)
            if job["status"] in until:
                return job
            assert time.monotonic() < deadline, f"{job_id} still {job['status']}"
            time.sleep(0.2)

    def logs(self, job_id: str) -> str:
        got = self.http("GET", f"/jobs/{job_id}/logs?offset=0&limit=1048576")
        assert got["status"] == 200, got
        return json.loads(got["body"])["data"]

    def run(self, script: str, network: str | None = None, timeout: float = 120) -> str:
        """Run `script` as a worker job to the end; its log."""
        job_id = self.submit(script)
        self.wait(job_id, timeout)
        return self.logs(job_id)

    def start(self, script: str, network: str | None = None) -> str:
        job_id = self.submit(script)
        self.wait(job_id, 60, until={"running"} | FINAL)
        return job_id

    def exec(self, job_id: str, script: str) -> str:
        result = self.host.podman("exec", job_id, "sh", "-c", script)
        return result.stdout + result.stderr

    def kill(self, job_id: str) -> None:
        self.http("POST", f"/jobs/{job_id}/kill")
