"""Remember, per host and source directory, the last upload a job used.

That upload id is offered as `basis` to the next `POST /uploads` of the same directory;
the host answers with a `link_dest` only if it still keeps that upload, so a stale or
lost entry costs nothing but a full upload.
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

_lock = threading.Lock()


class BasisMemory:
    def __init__(self, path: Path):
        self.path = path

    @staticmethod
    def _key(api_url: str, source: Path) -> str:
        return f"{api_url} {source}"

    def _load(self) -> dict[str, str]:
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError):
            # Missing or damaged cache: start over; the next upload is merely full size.
            return {}
        return (
            {k: v for k, v in data.items() if isinstance(v, str)} if isinstance(data, dict) else {}
        )

    def get(self, api_url: str, source: Path) -> str | None:
        with _lock:
            return self._load().get(self._key(api_url, source))

    def put(self, api_url: str, source: Path, upload_id: str) -> None:
        with _lock:
            data = self._load()
            data[self._key(api_url, source)] = upload_id
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_suffix(f".tmp.{os.getpid()}")
            tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
            os.replace(tmp, self.path)
