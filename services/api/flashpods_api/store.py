"""The job store: the only module that talks to SQLite (through `dataset`, WAL).

Several processes share the database (gunicorn workers, the reaper), so every state
change is a compare-and-set: one UPDATE ... WHERE status IN (expected). Write
transactions use BEGIN IMMEDIATE, so the check and the write happen under SQLite's one
write lock and a burst of claims can never overshoot the cap on running jobs.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import dataset
from sqlalchemy import event, text
from sqlalchemy.pool import QueuePool

from . import endnotice, kinds

FINAL = ("succeeded", "failed", "timed_out", "killed", "lost")
ACTIVE = ("starting", "running")
LIVE = ("queued", *ACTIVE)  # every status a job has before it ends
STATUSES = (*LIVE, *FINAL)
KINDS = kinds.KINDS
POOL_SIZE = 16  # SQLite connections kept open per process; busier moments open more

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS jobs (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        id TEXT NOT NULL UNIQUE,
        instance TEXT NOT NULL,
        kind TEXT NOT NULL,
        status TEXT NOT NULL,
        command TEXT, prompt TEXT, image TEXT NOT NULL,
        env TEXT NOT NULL, upload_id TEXT, timeout_s REAL NOT NULL,
        resources TEXT NOT NULL, artifacts_glob TEXT,
        created_at REAL NOT NULL, claimed_at REAL, started_at REAL, finished_at REAL,
        exit_code INTEGER, error TEXT, log_bytes INTEGER,
        artifacts_expire_at REAL, logs_expire_at REAL,
        limits_not_applied TEXT,
        stop_requested_at REAL, stop_reason TEXT, kill_sent_at REAL,
        log_capped INTEGER NOT NULL DEFAULT 0,
        workspace_changes TEXT,
        artifacts_deleted INTEGER NOT NULL DEFAULT 0,
        logs_deleted INTEGER NOT NULL DEFAULT 0,
        budget_tokens INTEGER
    )""",
    "CREATE INDEX IF NOT EXISTS jobs_queue ON jobs (instance, status, seq)",
    """CREATE TABLE IF NOT EXISTS uploads (
        id TEXT PRIMARY KEY,
        instance TEXT NOT NULL,
        state TEXT NOT NULL,
        created_at REAL NOT NULL,
        basis TEXT, used_by TEXT, used_at REAL, last_used_at REAL,
        base_deleted INTEGER NOT NULL DEFAULT 0
    )""",
    "CREATE INDEX IF NOT EXISTS uploads_state ON uploads (instance, state)",
    # Warm containers: created and started ahead of demand, named with the id of the job
    # that will claim them. Not jobs (never counted against the cap) until a job takes one.
    # creating -> ready -> taken (by the job of the same id) ; rows go when the job ends.
    """CREATE TABLE IF NOT EXISTS warm (
        id TEXT PRIMARY KEY,
        instance TEXT NOT NULL,
        kind TEXT NOT NULL,
        image TEXT NOT NULL,
        state TEXT NOT NULL,
        created_at REAL NOT NULL,
        taken_at REAL,
        limits_not_applied TEXT
    )""",
    """CREATE TABLE IF NOT EXISTS heartbeats (
        name TEXT PRIMARY KEY, at REAL NOT NULL, pid INTEGER NOT NULL
    )""",
    # The reaper's latest check of a dependency (Podman), so /healthz need not spawn one.
    """CREATE TABLE IF NOT EXISTS probes (
        name TEXT PRIMARY KEY, at REAL NOT NULL, ok INTEGER NOT NULL, detail TEXT NOT NULL
    )""",
)

# Columns added after a table was first made, (table, column, SQL type): a database of
# an older version gains them in place at start (ALTER TABLE ADD COLUMN keeps every
# row; old rows read NULL, which each column means as "not set").
_ADDED_COLUMNS = (("jobs", "budget_tokens", "INTEGER"),)

_JSON_FIELDS = ("env", "resources", "workspace_changes")


class UploadUnavailable(Exception):
    """The upload id is unknown, already used by another job, or expired."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason  # "unknown" | "used" | "expired"


class QueueFull(Exception):
    pass


class Store:
    def __init__(self, db_path: str | Path, instance: str) -> None:
        self.instance = instance
        self._local = threading.local()
        self.end_notice = endnotice.path_for(db_path)
        self.db = dataset.connect(
            f"sqlite:///{db_path}",
            # dataset hands its connection back after every transaction: a pool keeps
            # it open for the next one. Without one (NullPool) each request opened a
            # new SQLite connection and re-ran the connect pragmas, ~0.5 ms of a 0.8 ms
            # GET /jobs/<id> (measured in-process).
            engine_kwargs={
                "poolclass": QueuePool,
                "pool_size": POOL_SIZE,
                "max_overflow": -1,  # more threads at once: opened and closed as before
                "connect_args": {"timeout": 30, "check_same_thread": False},
            },
        )
        # Take transaction control away from Python's sqlite3 module so BEGIN is ours.
        event.listen(self.db.engine, "connect", _autocommit_driver)
        event.listen(self.db.engine, "begin", self._begin)
        with self._tx(write=True):
            for statement in _SCHEMA:
                self.db.executable.execute(text(statement))
            self._migrate()
        self.jobs = self.db["jobs"]
        self.uploads = self.db["uploads"]
        self.heartbeats = self.db["heartbeats"]
        endnotice.ensure(self.end_notice)

    def _migrate(self) -> None:
        """Add the columns of _ADDED_COLUMNS that this database lacks (inside the start's
        write transaction: two processes starting at once add each column once)."""
        for table, column, sql_type in _ADDED_COLUMNS:
            have = {row[1] for row in self._exec(f"PRAGMA table_info({table})").fetchall()}
            if column not in have:
                self._exec(f"ALTER TABLE {table} ADD COLUMN {column} {sql_type}")

    def _begin(self, conn: Any) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE" if getattr(self._local, "write", False) else "BEGIN")

    @contextmanager
    def _tx(self, write: bool = False) -> Iterator[None]:
        conn = self.db.executable
        if conn.in_transaction() and not self.db.in_transaction:
            conn.commit()  # end a read that dataset left open (SQLAlchemy autobegin)
        self._local.write = write
        try:
            with self.db:
                yield
        except BaseException:
            # A COMMIT that failed (SQLITE_FULL on a full disk) leaves SQLAlchemy's
            # transaction open on this pooled connection, and every later BEGIN on it
            # failed: the reaper failed each tick even after the space was back.
            with suppress(Exception):
                conn.rollback()
            raise
        finally:
            self._local.write = False

    def _exec(self, sql: str, **params: Any) -> Any:
        return self.db.executable.execute(text(sql), params)

    def _rows(self, sql: str, **params: Any) -> list[dict[str, Any]]:
        with self._tx():
            return [dict(r._mapping) for r in self._exec(sql, **params).fetchall()]

    def close(self) -> None:
        self.db.close()

    # -- uploads -------------------------------------------------------------

    def add_upload(self, upload_id: str, basis: str | None) -> None:
        now = time.time()
        with self._tx(write=True):
            self.uploads.insert(
                {
                    "id": upload_id,
                    "instance": self.instance,
                    "state": "reserved",
                    "created_at": now,
                    "basis": basis,
                }
            )
            if basis:
                self._exec("UPDATE uploads SET last_used_at=:now WHERE id=:id", now=now, id=basis)

    def get_upload(self, upload_id: str) -> dict[str, Any] | None:
        rows = self._rows(
            "SELECT * FROM uploads WHERE id=:id AND instance=:i", id=upload_id, i=self.instance
        )
        return rows[0] if rows else None

    def uploads_in(self, state: str) -> list[dict[str, Any]]:
        return self._rows(
            "SELECT * FROM uploads WHERE instance=:i AND state=:s", i=self.instance, s=state
        )

    def set_upload(self, upload_id: str, expected_state: str, **fields: Any) -> bool:
        return self._cas("uploads", upload_id, (expected_state,), fields, state_col="state")

    def used_bases_to_expire(self, before: float) -> list[dict[str, Any]]:
        """Kept upload bases whose job is final and whose last use is older than `before`."""
        return self._rows(
            """SELECT u.* FROM uploads u JOIN jobs j ON j.id = u.used_by
               WHERE u.instance=:i AND u.state='used' AND u.base_deleted=0
                 AND j.status IN ('succeeded','failed','timed_out','killed','lost')
                 AND coalesce(u.last_used_at, u.used_at) < :before""",
            i=self.instance,
            before=before,
        )

    # -- jobs ----------------------------------------------------------------

    def submit(
        self,
        record: dict[str, Any],
        queue_limit: int,
        claim_cap: int | None = None,
        warm: tuple[str, str] | None = None,
    ) -> tuple[dict[str, Any], bool]:
        """POST /jobs in one write transaction: insert the job queued, consuming its upload.

        With `warm` (kind, image), first take a ready warm container for it (only if the
        job could start at once); the job then carries that container's id. With
        `claim_cap`, claim the job in the same transaction if it heads the queue and
        fewer than `claim_cap` jobs are active (status 'starting'). A refusal (full
        queue, used upload) rolls everything back, the warm container included.
        Returns (the job, whether it took a warm container).
        """
        now = time.time()
        row = {**record, "instance": self.instance, "status": "queued", "created_at": now}
        for key in _JSON_FIELDS:
            if key in row and row[key] is not None:
                row[key] = json.dumps(row[key], sort_keys=True)
        took_warm = False
        with self._tx(write=True):
            queued = self._exec(
                "SELECT count(*) FROM jobs WHERE instance=:i AND status='queued'", i=self.instance
            ).scalar()
            if queued >= queue_limit:
                raise QueueFull()
            if warm is not None and claim_cap is not None:
                warm_id = self._take_warm(warm[0], warm[1], claim_cap, now)
                if warm_id:
                    row["id"] = warm_id
                    took_warm = True
            upload_id = record.get("upload_id")
            if upload_id:
                taken = self._exec(
                    """UPDATE uploads
                       SET state='used', used_by=:job, used_at=:now, last_used_at=:now
                       WHERE id=:id AND instance=:i AND state='reserved'""",
                    job=row["id"],
                    now=now,
                    id=upload_id,
                    i=self.instance,
                ).rowcount
                if taken != 1:
                    state = self._exec(
                        "SELECT state FROM uploads WHERE id=:id", id=upload_id
                    ).scalar()
                    raise UploadUnavailable({None: "unknown", "used": "used"}.get(state, "expired"))
            columns = ", ".join(row)
            marks = ", ".join(f":{k}" for k in row)
            self._exec(f"INSERT INTO jobs ({columns}) VALUES ({marks})", **row)
            if claim_cap is not None:
                self._claim(claim_cap, row["id"])
            job = self._exec("SELECT * FROM jobs WHERE id=:id", id=row["id"]).fetchone()
        return _decode(dict(job._mapping)), took_warm

    def get_job(self, job_id: str) -> dict[str, Any] | None:
        rows = self._rows(
            "SELECT * FROM jobs WHERE id=:id AND instance=:i", id=job_id, i=self.instance
        )
        return _decode(rows[0]) if rows else None

    def list_jobs(
        self, status: str | None, kind: str | None, limit: int, before_seq: int | None
    ) -> list[dict[str, Any]]:
        clauses = ["instance=:i"]
        params: dict[str, Any] = {"i": self.instance, "limit": limit}
        if status:
            clauses.append("status=:status")
            params["status"] = status
        if kind:
            clauses.append("kind=:kind")
            params["kind"] = kind
        if before_seq is not None:
            clauses.append("seq < :before")
            params["before"] = before_seq
        sql = f"SELECT * FROM jobs WHERE {' AND '.join(clauses)} ORDER BY seq DESC LIMIT :limit"
        return [_decode(r) for r in self._rows(sql, **params)]

    def jobs_in(self, statuses: tuple[str, ...]) -> list[dict[str, Any]]:
        marks = ",".join(f":s{n}" for n in range(len(statuses)))
        params = {f"s{n}": s for n, s in enumerate(statuses)}
        sql = f"SELECT * FROM jobs WHERE instance=:i AND status IN ({marks}) ORDER BY seq"
        return [_decode(r) for r in self._rows(sql, i=self.instance, **params)]

    def job_ids(self) -> set[str]:
        return {
            r["id"] for r in self._rows("SELECT id FROM jobs WHERE instance=:i", i=self.instance)
        }

    def queue_position(self, job: dict[str, Any]) -> int:
        rows = self._rows(
            "SELECT count(*) AS n FROM jobs WHERE instance=:i AND status='queued' AND seq <= :seq",
            i=self.instance,
            seq=job["seq"],
        )
        return int(rows[0]["n"])

    def count_active(self) -> int:
        rows = self._rows(
            "SELECT count(*) AS n FROM jobs WHERE instance=:i AND status IN ('starting','running')",
            i=self.instance,
        )
        return int(rows[0]["n"])

    def claim(self, cap: int, job_id: str | None = None) -> str | None:
        """Atomically move the queue's head to 'starting' if fewer than `cap` jobs are active.

        With `job_id`, claims only if that job is the head. Returns the claimed job id or None.
        """
        with self._tx(write=True):
            return self._claim(cap, job_id)

    def _claim(self, cap: int, job_id: str | None) -> str | None:
        only = "AND id=:id" if job_id else ""
        row = self._exec(
            f"""UPDATE jobs SET status='starting', claimed_at=:now
                WHERE seq = (SELECT min(seq) FROM jobs WHERE instance=:i AND status='queued')
                  AND status='queued' {only}
                  AND (SELECT count(*) FROM jobs
                       WHERE instance=:i AND status IN ('starting','running')) < :cap
                RETURNING id""",
            now=time.time(),
            i=self.instance,
            cap=cap,
            id=job_id,
        ).fetchone()
        return row[0] if row else None

    def transition(self, job_id: str, expected: tuple[str, ...], **fields: Any) -> bool:
        """Compare-and-set: apply `fields` only if the job's status is one of `expected`.

        A job made final wakes the server-side waiters (endnotice), after the commit."""
        done = self._cas("jobs", job_id, expected, fields, state_col="status")
        if done and fields.get("status") in FINAL:
            endnotice.announce(self.end_notice)
        return done

    def _cas(
        self,
        table: str,
        row_id: str,
        expected: tuple[str, ...],
        fields: dict[str, Any],
        state_col: str,
    ) -> bool:
        sets = ", ".join(f"{k}=:f_{k}" for k in fields)
        marks = ",".join(f":e{n}" for n in range(len(expected)))
        params = {
            f"f_{k}": (json.dumps(v) if k in _JSON_FIELDS and v is not None else v)
            for k, v in fields.items()
        }
        params.update({f"e{n}": s for n, s in enumerate(expected)})
        with self._tx(write=True):
            count = self._exec(
                f"UPDATE {table} SET {sets}"
                f" WHERE id=:id AND instance=:i AND {state_col} IN ({marks})",
                id=row_id,
                i=self.instance,
                **params,
            ).rowcount
        return bool(count == 1)

    def expired_files(self, now: float) -> list[dict[str, Any]]:
        return [
            _decode(r)
            for r in self._rows(
                """SELECT * FROM jobs WHERE instance=:i AND status IN
                     ('succeeded','failed','timed_out','killed','lost')
                   AND ((artifacts_deleted=0 AND artifacts_expire_at < :now)
                     OR (logs_deleted=0 AND logs_expire_at < :now))""",
                i=self.instance,
                now=now,
            )
        ]

    # -- warm containers -----------------------------------------------------

    def add_warm(self, warm_id: str, kind: str, image: str) -> None:
        with self._tx(write=True):
            self.db["warm"].insert(
                {
                    "id": warm_id,
                    "instance": self.instance,
                    "kind": kind,
                    "image": image,
                    "state": "creating",
                    "created_at": time.time(),
                }
            )

    def set_warm(self, warm_id: str, expected: tuple[str, ...], **fields: Any) -> bool:
        return self._cas("warm", warm_id, expected, fields, state_col="state")

    def get_warm(self, warm_id: str) -> dict[str, Any] | None:
        rows = self._rows(
            "SELECT * FROM warm WHERE id=:id AND instance=:i", id=warm_id, i=self.instance
        )
        return rows[0] if rows else None

    def warm_rows(self) -> list[dict[str, Any]]:
        return self._rows(
            "SELECT * FROM warm WHERE instance=:i ORDER BY created_at", i=self.instance
        )

    def delete_warm(self, warm_id: str) -> None:
        with self._tx(write=True):
            self._exec("DELETE FROM warm WHERE id=:id AND instance=:i", id=warm_id, i=self.instance)

    def _take_warm(self, kind: str, image: str, cap: int, now: float) -> str | None:
        """Compare-and-set ready -> taken, only when a new job could start at once.

        A job that has to wait in the queue starts cold later and leaves the warm
        container to the next one.
        """
        row = self._exec(
            """UPDATE warm SET state='taken', taken_at=:now
               WHERE id = (SELECT id FROM warm WHERE instance=:i AND kind=:kind
                           AND image=:image AND state='ready'
                           ORDER BY created_at LIMIT 1)
                 AND state='ready'
                 AND NOT EXISTS (SELECT 1 FROM jobs WHERE instance=:i AND status='queued')
                 AND (SELECT count(*) FROM jobs
                      WHERE instance=:i AND status IN ('starting','running')) < :cap
               RETURNING id""",
            now=now,
            i=self.instance,
            kind=kind,
            image=image,
            cap=cap,
        ).fetchone()
        return row[0] if row else None

    def warm_ready_counts(self) -> dict[str, int]:
        rows = self._rows(
            "SELECT kind, count(*) AS n FROM warm"
            " WHERE instance=:i AND state='ready' GROUP BY kind",
            i=self.instance,
        )
        return {r["kind"]: int(r["n"]) for r in rows}

    # -- heartbeats ----------------------------------------------------------

    def beat(self, name: str, pid: int) -> None:
        with self._tx(write=True):
            self._exec(
                "INSERT INTO heartbeats (name, at, pid) VALUES (:n, :at, :pid)"
                " ON CONFLICT(name) DO UPDATE SET at=:at, pid=:pid",
                n=f"{self.instance}:{name}",
                at=time.time(),
                pid=pid,
            )

    def record_probe(self, name: str, ok: bool, detail: str) -> None:
        with self._tx(write=True):
            self._exec(
                "INSERT INTO probes (name, at, ok, detail) VALUES (:n, :at, :ok, :d)"
                " ON CONFLICT(name) DO UPDATE SET at=:at, ok=:ok, detail=:d",
                n=f"{self.instance}:{name}",
                at=time.time(),
                ok=int(ok),
                d=detail,
            )

    def ping(self) -> None:
        self._rows("SELECT 1 AS one")

    def health_snapshot(self) -> dict[str, Any]:
        """The reaper's heartbeats and its last checks in one query (for /healthz).

        {"reaper_at": float | None (a tick started), "reaper_done_at": float | None (a tick
        got through), "podman": {"at", "ok", "detail"} | None, "reaper": same | None}
        """
        row = self._rows(
            "SELECT (SELECT at FROM heartbeats WHERE name=:beat) AS reaper_at,"
            " (SELECT at FROM heartbeats WHERE name=:done) AS reaper_done_at,"
            " p.at AS at, p.ok AS ok, p.detail AS detail,"
            " r.at AS r_at, r.ok AS r_ok, r.detail AS r_detail"
            " FROM (SELECT 1) LEFT JOIN probes p ON p.name=:probe"
            " LEFT JOIN probes r ON r.name=:reaper",
            beat=f"{self.instance}:reaper",
            done=f"{self.instance}:reaper_done",
            probe=f"{self.instance}:podman",
            reaper=f"{self.instance}:reaper",
        )[0]
        podman = reaper = None
        if row["at"] is not None:
            podman = {"at": row["at"], "ok": bool(row["ok"]), "detail": row["detail"]}
        if row["r_at"] is not None:
            reaper = {"at": row["r_at"], "ok": bool(row["r_ok"]), "detail": row["r_detail"]}
        return {
            "reaper_at": row["reaper_at"],
            "reaper_done_at": row["reaper_done_at"],
            "podman": podman,
            "reaper": reaper,
        }


def _autocommit_driver(dbapi_connection: Any, _record: Any) -> None:
    dbapi_connection.isolation_level = None
    # WAL: readers never block the writer and a commit is one append, not a journal
    # dance. synchronous=NORMAL: a commit survives any crash of our processes (kill -9
    # included); only a power cut may lose the last commits, which the reaper's
    # reconcile against `podman ps` repairs like any other crash.
    dbapi_connection.execute("PRAGMA journal_mode=WAL")
    dbapi_connection.execute("PRAGMA synchronous=NORMAL")


def _decode(row: dict[str, Any]) -> dict[str, Any]:
    out = dict(row)
    for key in _JSON_FIELDS:
        if out.get(key) is not None:
            out[key] = json.loads(out[key])
    return out
