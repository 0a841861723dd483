"""Job containers for the host simulation, and what they try from inside.

`PodmanJobs` starts containers itself, as the job user's rootless Podman inside the
host namespace, with the flags the API uses (docs/design.md, "The job container
contract"); `container_probe` writes the busybox shell that tries each target from
inside a container and parses what came back.
"""

from __future__ import annotations

import uuid

from topology import Topology

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
    def __init__(self, t: Topology) -> None:
        self.t = t
        self.label = f"flashpods.instance=fp{t.tag}"

    def _name(self) -> str:
        return f"fp{self.t.tag}-{uuid.uuid4().hex[:8]}"

    def run(self, script: str, network: str = "slirp4netns", timeout: float = 120) -> str:
        """Run `sh -c script` in a fresh job container; its stdout and stderr."""
        argv = ["run", "--rm", "--name", self._name(), "--label", self.label, *CONTRACT_FLAGS]
        result = self.t.podman(
            *argv, "--network", network, IMAGE, "sh", "-c", script, timeout=timeout, check=False
        )
        return result.stdout + result.stderr

    def start(self, script: str, network: str = "slirp4netns") -> str:
        """Start a long-running job container; its name."""
        name = self._name()
        argv = ["run", "-d", "--name", name, "--label", self.label, *CONTRACT_FLAGS]
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
