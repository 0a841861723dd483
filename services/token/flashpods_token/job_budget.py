"""Per-job model budgets as the API hands them to the credential proxy.

The API writes `<budget_dir>/<job_id>.json` = `{"job_id": ..., "budget_tokens": N}`
before the job starts (cold or warm), atomically, as the API user, into a directory
that is the API's (mode 2750, group of the token user) and that no container mounts:
the job can neither write nor read it. Container labels do not work here: a warm
container is made before its job exists.

Read with the same suspicion as anything on disk: the job id is checked before it is
joined into a path, the file is opened with O_NOFOLLOW (and O_NONBLOCK, so a FIFO
cannot hang the proxy), it must be a regular file of the directory's owner, not
writable by group or others, with one link, at most MAX_FILE bytes, and name the same
job inside. A file that is there but fails a check is `BudgetUnreadable`: the proxy
refuses the job's model calls rather than fall back to the (higher) host default.
No file: the job has no budget of its own.
"""

from __future__ import annotations

import json
import os
import stat

from .identity import JOB_ID_RE

MAX_FILE = 4096
MAX_TOKENS = 2**53  # above any real budget; keeps the number exact in JSON


class BudgetUnreadable(Exception):
    """The job's budget file exists but cannot be trusted (the message says why)."""


def _checked_id(job_id: str) -> str:
    if not JOB_ID_RE.match(job_id) or job_id.startswith("."):
        raise BudgetUnreadable(f"not a job id: {job_id[:80]!r}")
    return job_id


def read_job_budget(directory: str, job_id: str) -> int | None:
    """The job's own budget in tokens, None when it has none (no file)."""
    name = f"{_checked_id(job_id)}.json"
    try:
        dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise BudgetUnreadable(f"budget directory {directory}: {exc.strerror}") from None
    try:
        dir_st = os.fstat(dir_fd)
        if dir_st.st_mode & 0o022:
            raise BudgetUnreadable(f"budget directory {directory} is writable by group or others")
        try:
            fd = os.open(
                name,
                os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY,
                dir_fd=dir_fd,
            )
        except FileNotFoundError:
            return None
        except OSError as exc:  # ELOOP: a symbolic link; EACCES; ...
            raise BudgetUnreadable(f"{name}: {exc.strerror}") from None
    finally:
        os.close(dir_fd)
    with os.fdopen(fd, "rb") as fh:
        st = os.fstat(fh.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise BudgetUnreadable(f"{name} is not a regular file")
        if st.st_uid != dir_st.st_uid:
            raise BudgetUnreadable(f"{name} is not owned by the budget directory's owner")
        if st.st_mode & 0o022 or st.st_nlink != 1:
            raise BudgetUnreadable(f"{name} is writable by others or has other links")
        raw = fh.read(MAX_FILE + 1)
    if len(raw) > MAX_FILE:
        raise BudgetUnreadable(f"{name} is larger than {MAX_FILE} bytes")
    try:
        data = json.loads(raw)
    except ValueError:
        raise BudgetUnreadable(f"{name} is not JSON") from None
    if not isinstance(data, dict) or data.get("job_id") != job_id:
        raise BudgetUnreadable(f"{name} does not name job {job_id}")
    tokens = data.get("budget_tokens")
    if isinstance(tokens, bool) or not isinstance(tokens, int) or not 1 <= tokens <= MAX_TOKENS:
        raise BudgetUnreadable(f"{name}: budget_tokens is not a positive integer")
    return tokens
