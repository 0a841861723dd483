"""Peer attestation (dev host): which job container is the process on the other end?

Rootless containers on a cgroup v1 host have no cgroup of their own, so the kernel
fact used is the caller's PID namespace. The caller is taken with SO_PEERPIDFD (a
pidfd names exactly the process that connected, so pid reuse cannot fool it), its
PID namespace is fetched with the PIDFD_GET_PID_NAMESPACE ioctl, and (st_dev, st_ino)
of that namespace is compared with the namespaces of each running job container's
init process.

Those namespaces are held open here (one nsfd and one pidfd per container): a held
namespace stays alive, so its inode cannot be handed to a new namespace while we
compare against it. Inode numbers read from /proc and cached, or cached pids, would
be wrong: both are reused. `podman exec` processes share the
container's PID namespace and are attributed to it, as they should be.

Reading another uid's namespace through a pidfd needs CAP_SYS_PTRACE (measured), so
the service runs with it as an ambient capability and checks that at startup.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import select
import socket
import threading
import time
from dataclasses import dataclass

from .identity import IdentityError, JobIdentity, identity_for_kind
from .podman import PodmanClient, PodmanError, RunningContainer, is_live_job
from .ratelimit import RateLimiter

SO_PEERPIDFD = getattr(socket, "SO_PEERPIDFD", 77)  # Python 3.11 lacks the constant
PIDFD_GET_PID_NAMESPACE = 0xFF05  # _IO(0xFF, 5), kernel >= 6.11
CAP_SYS_PTRACE = 19


class AttestationError(Exception):
    """The caller is not a running job container; `check` names what failed."""

    def __init__(self, check: str, message: str):
        super().__init__(message)
        self.check = check


@dataclass
class _Entry:
    container_id: str
    pid: int
    identity: JobIdentity
    pidfd: int
    nsfd: int
    ns_key: tuple[int, int]


def pid_namespace_of(pidfd: int) -> int:
    """A new fd for the PID namespace of the process behind pidfd."""
    return fcntl.ioctl(pidfd, PIDFD_GET_PID_NAMESPACE, 0)


def ns_key(fd: int) -> tuple[int, int]:
    st = os.fstat(fd)
    return (st.st_dev, st.st_ino)


def process_exited(pidfd: int) -> bool:
    """A pidfd polls readable once its process has exited."""
    return bool(select.select([pidfd], [], [], 0)[0])


def has_cap_sys_ptrace() -> bool:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("CapEff:"):
                return bool(int(line.split()[1], 16) >> CAP_SYS_PTRACE & 1)
    return False


def check_capability(podman_socket: str) -> None:
    """Fail at startup, with what to do, if namespaces of job containers are unreadable."""
    if os.geteuid() == 0 or has_cap_sys_ptrace():
        return
    try:
        owner = os.stat(podman_socket).st_uid
    except OSError:
        owner = None
    if owner == os.geteuid():
        return  # containers run as our own uid (non-root dev host): no capability needed
    raise SystemExit(
        "flashpods-token: peer mode needs CAP_SYS_PTRACE to read the PID namespace of job "
        "container processes (they run as another uid). Start it with e.g. `setpriv "
        "--reuid=flashpods-token --regid=flashpods-token --init-groups "
        "--inh-caps=+sys_ptrace --ambient-caps=+sys_ptrace flashpods-token` or "
        "AmbientCapabilities=CAP_SYS_PTRACE."
    )


class PeerAttestor:
    def __init__(
        self,
        podman: PodmanClient,
        trust_domain: str,
        instance: str,
        miss_limiter: RateLimiter | None = None,
    ):
        self._podman = podman
        self._miss_limiter = miss_limiter
        self._last_refresh_started = 0.0
        self._trust_domain = trust_domain
        self._instance = instance
        self._entries: dict[str, _Entry] = {}  # container id -> entry
        self._dead_jobs: set[str] = set()
        self._lock = threading.Lock()
        self._refresh_lock = threading.Lock()
        self._own_ns = ns_key_of_path("/proc/self/ns/pid")

    # -- the cache of running job containers -------------------------------------------

    def refresh(self) -> None:
        """Bring the held namespaces in line with Podman's running job containers."""
        self._last_refresh_started = time.monotonic()
        running = {c.id: c for c in self._podman.running_jobs()}
        with self._lock:
            stale = [
                cid
                for cid, e in self._entries.items()
                if cid not in running or running[cid].pid != e.pid or process_exited(e.pidfd)
            ]
            for cid in stale:
                entry = self._entries.pop(cid)
                # Job ids are never reused: once a job's container is gone or its init
                # exited, no later container may speak for that job (re-created with
                # the same name and labels, or restarted).
                self._dead_jobs.add(entry.identity.job_id)
                self._close(entry)
            known = set(self._entries)
        for cid, c in running.items():
            if cid in known:
                continue
            opened = self._open(c)
            if opened is not None:
                with self._lock:
                    old = self._entries.pop(cid, None)
                    if old:
                        self._close(old)
                    self._entries[cid] = opened

    def _open(self, c: RunningContainer) -> _Entry | None:
        if c.job in self._dead_jobs or c.name != c.job:
            return None  # a finished job, or not the API's container (named after its job)
        try:
            identity = identity_for_kind(self._trust_domain, c.job, c.kind)
        except IdentityError:
            return None
        try:
            pidfd = os.pidfd_open(c.pid)
        except OSError:
            return None  # exited between list and open
        try:
            nsfd = pid_namespace_of(pidfd)
        except OSError:
            os.close(pidfd)
            return None
        # Close the list -> open race: the pid we opened must still be this
        # container's init, and the container still a live job.
        try:
            data = self._podman.inspect(c.id)
        except PodmanError:
            data = None
        if not data or not is_live_job(data, self._instance, c.job, pid=c.pid):
            os.close(nsfd)
            os.close(pidfd)
            return None
        key = ns_key(nsfd)
        if key == self._own_ns:
            # A job container sharing the host's PID namespace would make every host
            # process look like that job: never attest through it.
            os.close(nsfd)
            os.close(pidfd)
            return None
        return _Entry(c.id, c.pid, identity, pidfd, nsfd, key)

    @staticmethod
    def _close(entry: _Entry) -> None:
        for fd in (entry.nsfd, entry.pidfd):
            with contextlib.suppress(OSError):
                os.close(fd)

    def close(self) -> None:
        with self._lock:
            for entry in self._entries.values():
                self._close(entry)
            self._entries.clear()

    def _lookup(self, key: tuple[int, int]) -> tuple[_Entry | None, bool]:
        """(the single live entry for this namespace, whether it is ambiguous)."""
        with self._lock:
            hits = [e for e in self._entries.values() if e.ns_key == key]
            live = [e for e in hits if not process_exited(e.pidfd)]
        if len({e.identity for e in live}) > 1:
            return None, True
        return (live[0] if live else None), False

    # -- attesting one connection -------------------------------------------------------

    def attest(self, conn: socket.socket) -> JobIdentity:
        try:
            caller_pidfd = conn.getsockopt(socket.SOL_SOCKET, SO_PEERPIDFD)
        except OSError as exc:
            raise AttestationError("peer_pidfd", f"cannot identify the caller: {exc}") from None
        try:
            try:
                caller_ns = pid_namespace_of(caller_pidfd)
            except OSError as exc:
                raise AttestationError(
                    "peer_namespace", f"cannot read the caller's PID namespace: {exc.strerror}"
                ) from None
            try:
                key = ns_key(caller_ns)
            finally:
                os.close(caller_ns)
            entry, ambiguous = self._lookup(key)
            if entry is None and not ambiguous:
                # Maybe a container started since the last look: ask Podman once more.
                # Misses cost a Podman call, so they are rate-limited per namespace, and
                # concurrent misses share one refresh that started after they arrived.
                missed_at = time.monotonic()
                if self._miss_limiter and not self._miss_limiter.allow(f"ns:{key[0]}:{key[1]}")[0]:
                    raise AttestationError("rate_limit", "too many unattested exchanges")
                with self._refresh_lock:
                    entry, ambiguous = self._lookup(key)
                    if entry is None and not ambiguous and self._last_refresh_started < missed_at:
                        try:
                            self.refresh()
                        except PodmanError as exc:
                            raise AttestationError(
                                "job_running", f"cannot ask Podman which jobs run: {exc}"
                            ) from None
                        entry, ambiguous = self._lookup(key)
            if ambiguous:
                raise AttestationError(
                    "peer_container", "the caller's PID namespace is shared by several jobs"
                )
            if entry is None:
                raise AttestationError(
                    "peer_container", "the caller is not a process of a running job container"
                )
            if process_exited(caller_pidfd):
                raise AttestationError("peer_pidfd", "the caller exited")
            return entry.identity
        finally:
            os.close(caller_pidfd)


def ns_key_of_path(path: str) -> tuple[int, int]:
    st = os.stat(path)
    return (st.st_dev, st.st_ino)
