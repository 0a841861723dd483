"""Which job holds a connection, decided cheaply when it is accepted (for the connection caps).

Every job runs as the same uid, so the uid says nothing. The kernel fact is the caller's
PID namespace, walked up to the one just below the service's own: a job that creates
nested PID namespaces inside its container still counts as its container (a process of
a nested namespace is also in every ancestor). This is not attestation (that happens
per request, attest_peer.py); it only decides which bucket a connection counts against,
so it must never block and never ask Podman.

Reading another uid's PID namespace needs CAP_SYS_PTRACE (peer mode has it). Without
it (spire mode), the caller's cgroup stands in: on cgroup v2 every container has its own.
If neither can be read the connection counts against the global cap only.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket

from .attest_peer import SO_PEERPIDFD, ns_key, ns_key_of_path, pid_namespace_of, process_exited

NS_GET_PARENT = 0xB702  # _IO(0xb7, 0x2)
_MAX_DEPTH = 40  # the kernel allows 32 levels of PID namespaces


class PeerKeys:
    def __init__(self) -> None:
        self._own_ns = ns_key_of_path("/proc/self/ns/pid")

    def of(self, conn: socket.socket) -> str | None:
        """A stable name for the job behind conn, or None when the kernel will not say."""
        try:
            pidfd = conn.getsockopt(socket.SOL_SOCKET, SO_PEERPIDFD)
        except OSError:
            return None
        try:
            return self.of_pidfd(pidfd)
        finally:
            os.close(pidfd)

    def of_pidfd(self, pidfd: int) -> str | None:
        """The same name for the process behind a pidfd (the proxy in spire mode compares
        a connection's with the job's init: proxy_attest.py)."""
        return self._top_namespace(pidfd) or _cgroup(pidfd)

    def _top_namespace(self, pidfd: int) -> str | None:
        try:
            ns = pid_namespace_of(pidfd)
        except OSError:
            return None
        try:
            for _ in range(_MAX_DEPTH):
                key = ns_key(ns)
                if key == self._own_ns:
                    return "pidns:host"
                try:
                    parent = fcntl.ioctl(ns, NS_GET_PARENT, 0)
                except OSError:
                    # No parent we may see: ns is not below ours (another container
                    # runtime's host namespace); it is still a fine bucket of its own.
                    return f"pidns:{key[0]}:{key[1]}"
                if ns_key(parent) == self._own_ns:
                    os.close(parent)
                    return f"pidns:{key[0]}:{key[1]}"
                os.close(ns)
                ns = parent
            return None
        finally:
            with contextlib.suppress(OSError):
                os.close(ns)


def _cgroup(pidfd: int) -> str | None:
    """The caller's cgroup (world-readable in /proc), read through its pid safely."""
    try:
        with open(f"/proc/self/fdinfo/{pidfd}") as fh:
            pid = next(int(line.split()[1]) for line in fh if line.startswith("Pid:"))
        with open(f"/proc/{pid}/cgroup") as fh:
            text = fh.read(4096)
    except (OSError, StopIteration, ValueError, IndexError):
        return None
    # If the caller is still alive, the pid was not reused while we read its file.
    if pid <= 0 or process_exited(pidfd) or not text:
        return None
    return "cgroup:" + text.strip()
