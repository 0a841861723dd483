"""Where the laptop finds the host: environment first, then the dev host's env file.

Every key can come from the process environment or from
`~/.config/flashpods/dev-host.env` (KEY=VALUE lines, written by the dev host when it
starts), so against a local dev host nothing needs setting up. The environment wins
key by key, except that a token given in the environment (inline or as a file)
replaces both token keys of the file: a token from one host paired with the URL of
another would only produce confusing 401s.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from .errors import FlashpodsError

DEFAULT_API_URL = "http://10.0.0.1:8080"
DEFAULT_RSYNC_URL = "rsync://10.0.0.1/uploads"
# Same default as the host's limits.upload_bytes: measured locally before any byte moves.
DEFAULT_MAX_UPLOAD_BYTES = 1024**3
ENV_FILE_NAME = "dev-host.env"

KNOWN_KEYS = (
    "FLASHPODS_API_URL",
    "FLASHPODS_API_TOKEN",
    "FLASHPODS_API_TOKEN_FILE",
    "FLASHPODS_RSYNC_URL",
    "FLASHPODS_ALLOWED_PATHS",
    "FLASHPODS_MAX_UPLOAD_BYTES",
    "FLASHPODS_HTTP_TIMEOUT_S",
)
TOKEN_KEYS = ("FLASHPODS_API_TOKEN", "FLASHPODS_API_TOKEN_FILE")


@dataclass(frozen=True)
class Settings:
    api_url: str
    rsync_url: str
    config_dir: Path
    cache_dir: Path
    home: Path
    token_file: Path | None = None
    # repr=False: the token must not show up in a traceback or a log line.
    inline_token: str | None = field(default=None, repr=False)
    allowed_paths: tuple[Path, ...] = ()
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES
    http_timeout_s: float = 30.0
    source: str = "defaults"

    @property
    def env_file(self) -> Path:
        return self.config_dir / ENV_FILE_NAME

    def token(self) -> str:
        """The bearer token, read when first needed so a bad file is a clear error."""
        if self.inline_token:
            return self.inline_token
        if self.token_file is None:
            raise FlashpodsError(
                "No API token configured: set FLASHPODS_API_TOKEN or "
                "FLASHPODS_API_TOKEN_FILE, or start the dev host (it writes "
                f"{self.env_file})."
            )
        try:
            token = self.token_file.read_text().strip()
        except OSError as exc:
            raise FlashpodsError(
                f"Cannot read the API token file {self.token_file} "
                f"({exc.strerror}); fix FLASHPODS_API_TOKEN_FILE or its permissions."
            ) from exc
        if not token:
            raise FlashpodsError(
                f"The API token file {self.token_file} is empty; copy the host's "
                "token file into it."
            )
        return token


def parse_env_file(text: str, path: Path) -> dict[str, str]:
    """KEY=VALUE lines; '#' comments, blank lines and an `export ` prefix are fine."""
    values: dict[str, str] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        line = line.removeprefix("export ").strip()
        key, sep, value = line.partition("=")
        key = key.strip()
        if not sep or not key:
            raise FlashpodsError(f"{path}, line {number}: expected KEY=VALUE, got {raw.strip()!r}.")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        values[key] = value
    return values


def _config_dir(environ: Mapping[str, str], home: Path) -> Path:
    base = environ.get("XDG_CONFIG_HOME") or str(home / ".config")
    return Path(base) / "flashpods"


def _cache_dir(environ: Mapping[str, str], home: Path) -> Path:
    base = environ.get("XDG_CACHE_HOME") or str(home / ".cache")
    return Path(base) / "flashpods"


def _positive_number(key: str, value: str, kind: type) -> float | int:
    try:
        number = kind(value)
    except ValueError:
        number = 0
    if number <= 0:
        raise FlashpodsError(f"{key} must be a positive number, got {value!r}.")
    return number


def load_settings(environ: Mapping[str, str] | None = None) -> Settings:
    """Build Settings from `environ` (default: os.environ) and the dev-host env file."""
    env = dict(os.environ if environ is None else environ)
    home = Path(env.get("HOME") or Path.home())
    config_dir = _config_dir(env, home)
    env_file = config_dir / ENV_FILE_NAME

    from_file: dict[str, str] = {}
    if env_file.is_file():
        try:
            from_file = parse_env_file(env_file.read_text(), env_file)
        except OSError as exc:
            raise FlashpodsError(
                f"Cannot read {env_file} ({exc.strerror}); fix its permissions or "
                "set FLASHPODS_API_URL and FLASHPODS_API_TOKEN in the environment."
            ) from exc

    merged = {k: v for k, v in from_file.items() if k in KNOWN_KEYS}
    if any(env.get(k) for k in TOKEN_KEYS):
        for k in TOKEN_KEYS:
            merged.pop(k, None)
    merged.update({k: env[k] for k in KNOWN_KEYS if env.get(k)})

    def relative_to_file(value: str) -> Path:
        # A relative path in the env file means "next to the env file".
        p = Path(value).expanduser()
        return p if p.is_absolute() else (config_dir / p)

    token_file = (
        relative_to_file(merged["FLASHPODS_API_TOKEN_FILE"])
        if merged.get("FLASHPODS_API_TOKEN_FILE")
        else None
    )
    allowed = tuple(
        Path(p).expanduser()
        for p in merged.get("FLASHPODS_ALLOWED_PATHS", "").split(os.pathsep)
        if p.strip()
    )
    for p in allowed:
        if not p.is_absolute():
            raise FlashpodsError(
                f"FLASHPODS_ALLOWED_PATHS entries must be absolute paths, got {str(p)!r}."
            )

    return Settings(
        api_url=merged.get("FLASHPODS_API_URL", DEFAULT_API_URL).rstrip("/"),
        rsync_url=merged.get("FLASHPODS_RSYNC_URL", DEFAULT_RSYNC_URL).rstrip("/"),
        config_dir=config_dir,
        cache_dir=_cache_dir(env, home),
        home=home,
        token_file=token_file,
        inline_token=merged.get("FLASHPODS_API_TOKEN") or None,
        allowed_paths=allowed,
        max_upload_bytes=int(
            _positive_number(
                "FLASHPODS_MAX_UPLOAD_BYTES",
                merged.get("FLASHPODS_MAX_UPLOAD_BYTES", str(DEFAULT_MAX_UPLOAD_BYTES)),
                int,
            )
        ),
        http_timeout_s=float(
            _positive_number(
                "FLASHPODS_HTTP_TIMEOUT_S",
                merged.get("FLASHPODS_HTTP_TIMEOUT_S", "30"),
                float,
            )
        ),
        source=str(env_file) if from_file else "environment",
    )
