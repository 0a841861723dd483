# Shared by every Flashpods VM test (prepended to each testScript by
# lib/nodes.nix's `preamble`, which first sets API_TOKEN, API, PODMAN_URL and
# HOST_DATA_DIRS from the host's configuration). The test driver provides
# the machines (host, laptop, stranger, internet) and `subtest`; everything
# here talks to the API from the laptop, like the MCP server does, and to
# Podman on the host as the flashpods user.
import json
import shlex

FINAL = ("succeeded", "failed", "timed_out", "killed", "lost")


def api(method, path, body=None, token=None, node=None):
    """One API call from the laptop (or `node`); returns (status, decoded body)."""
    node = node or laptop  # noqa: F821 (a driver global)
    token = API_TOKEN if token is None else token  # noqa: F821 (set by the test)
    parts = ["curl", "-sS", "-m", "30", "-X", method, "-w", "\\n%{http_code}"]
    if token:
        parts += ["-H", f"Authorization: Bearer {token}"]
    if body is not None:
        parts += ["-H", "Content-Type: application/json", "--data-binary", json.dumps(body)]
    parts.append(API + path)  # noqa: F821 (set by the preamble)
    out = node.succeed(" ".join(shlex.quote(p) for p in parts))
    text, _, code = out.rpartition("\n")
    try:
        decoded = json.loads(text) if text.strip() else None
    except ValueError:
        decoded = text
    return int(code), decoded


def start_job(command=None, kind="worker", prompt=None, **extra):
    body = {"kind": kind, **extra}
    if kind == "worker":
        body["command"] = command
    else:
        body["prompt"] = prompt if prompt is not None else command
    code, job = api("POST", "/jobs", body)
    assert code == 201, f"POST /jobs: {code} {job}"
    return job["job"]["id"]


def wait_final(job_id, timeout=180):
    laptop.wait_until_succeeds(  # noqa: F821
        f"curl -sf -m 10 -H 'Authorization: Bearer {API_TOKEN}' {API}/jobs/{job_id}"  # noqa: F821
        f" | jq -e '.job.status | IN({', '.join(json.dumps(s) for s in FINAL)})'",
        timeout=timeout,
    )
    return api("GET", f"/jobs/{job_id}")[1]["job"]


def job_ids():
    code, body = api("GET", "/jobs?limit=500")
    assert code == 200, (code, body)
    return {job["id"] for job in body["jobs"]}


def job_log(job_id):
    code, text = api("GET", f"/jobs/{job_id}/logs")
    assert code == 200, f"logs of {job_id}: {code}"
    return text if isinstance(text, str) else json.dumps(text)


def run_job(command, kind="worker", timeout=180, **extra):
    """Start a job, wait for its end, return (job, output)."""
    job_id = start_job(command, kind=kind, **extra)
    job = wait_final(job_id, timeout=timeout)
    return job, job_log(job_id)


def as_flashpods(command):
    """A shell command as the flashpods user, with its rootless Podman environment."""
    uid = host.succeed("id -u flashpods").strip()  # noqa: F821
    env = f"XDG_RUNTIME_DIR=/run/user/{uid} DBUS_SESSION_BUS_ADDRESS=unix:path=/run/user/{uid}/bus"
    return f"su -s /bin/sh flashpods -c {shlex.quote(f'cd /tmp && {env} {command}')}"


# A probe run inside containers: one line per target, REACHED or BLOCKED. curl
# exit 7 (refused/rejected) and 28 (timeout) mean no connection; anything else
# (0, 52 empty reply, 56 reset after connect) means a connection was made.
PROBE = r"""
probe() {
  rc=0; curl -s -m 4 -o /dev/null "http://$1/" || rc=$?
  case $rc in 7|28) echo "PROBE $1 BLOCKED";; *) echo "PROBE $1 REACHED rc=$rc";; esac
}
"""


def probe_results(output):
    results = {}
    for line in output.splitlines():
        fields = line.split()
        if len(fields) >= 3 and fields[0] == "PROBE":
            results[fields[1]] = fields[2]
    return results


def probe_command(targets):
    return PROBE + "\n".join(f"probe {t}" for t in targets)


def assert_probes(output, reached=(), blocked=()):
    results = probe_results(output)
    for target in reached:
        assert results.get(target) == "REACHED", f"{target} must be reachable: {results}\n{output}"
    for target in blocked:
        assert results.get(target) == "BLOCKED", f"{target} must be blocked: {results}\n{output}"


def wait_for_host():
    host.wait_for_unit("flashpods-api.service")  # noqa: F821
    host.wait_for_unit("flashpods-token.service")  # noqa: F821
    host.wait_for_unit("flashpods-rsyncd.service")  # noqa: F821
    host.wait_for_unit("flashpods-images.service")  # noqa: F821
    laptop.wait_for_unit("wireguard-wg0.service")  # noqa: F821
    laptop.wait_until_succeeds(  # noqa: F821
        f"curl -sf -m 5 -H 'Authorization: Bearer {API_TOKEN}' {API}/healthz",  # noqa: F821
        timeout=180,
    )


def assert_no_secret_leaked(values):
    """V15: no secret value in the DB, logs, workspaces, artifacts, uploads or Podman."""
    for value in values:
        for where in HOST_DATA_DIRS:  # noqa: F821 (set by the preamble)
            host.succeed(f"grep -rF -- {shlex.quote(value)} {shlex.quote(where)}; test $? -eq 1")  # noqa: F821
        host.succeed(  # noqa: F821
            f"podman --url {PODMAN_URL} ps -aq"  # noqa: F821 (set by the preamble)
            f" | xargs -r podman --url {PODMAN_URL} inspect"  # noqa: F821
            f" | grep -F -- {shlex.quote(value)}; test $? -eq 1"
        )
        host.succeed(f"journalctl -o cat | grep -F -- {shlex.quote(value)}; test $? -eq 1")  # noqa: F821
