"""Which local paths a tool call may read (upload) or write (artifacts).

The agent that picks `path` and `dest` reads untrusted text, so a prompt injection can
ask for anything. A path is accepted only if, after resolving every symlink, it lies
inside one of the client's MCP roots or the configured allow-list, and it neither is,
lies inside, nor contains a secret location (~/.ssh, ~/.gnupg, ~/.aws, this program's
config dir and token file). "Contains" matters: uploading or unpacking into $HOME would
otherwise reach ~/.ssh.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from urllib.parse import unquote, urlparse

from .config import Settings
from .errors import FlashpodsError

SECRET_HOME_DIRS = (".ssh", ".gnupg", ".aws")


def secret_paths(settings: Settings) -> list[Path]:
    """Locations never uploaded from and never written to."""
    paths = [settings.home / d for d in SECRET_HOME_DIRS]
    paths.append(settings.config_dir)
    if settings.token_file is not None:
        paths.append(settings.token_file)
    return [p.resolve() for p in paths]


def roots_from_uris(uris: Sequence[str]) -> list[Path]:
    """MCP roots are file:// URIs; anything else cannot name a local directory."""
    roots = []
    for uri in uris:
        parsed = urlparse(str(uri))
        if parsed.scheme == "file" and parsed.path:
            roots.append(Path(unquote(parsed.path)).resolve())
    return roots


def _inside(path: Path, parent: Path) -> bool:
    return path == parent or parent in path.parents


def confine(
    raw: str | Path,
    *,
    what: str,
    base: Path,
    roots: Sequence[Path] | None,
    settings: Settings,
) -> Path:
    """Return the resolved path or raise FlashpodsError saying why it is refused.

    `roots=None` means the caller is a human at a terminal (the CLI): only the secret
    locations are refused. Otherwise the path must lie in `roots` or the allow-list.
    """
    candidate = Path(raw).expanduser()
    if not candidate.is_absolute():
        candidate = base / candidate
    # strict=False: `dest` may not exist yet; the existing prefix still has its
    # symlinks resolved, so a link inside a root pointing at ~/.ssh is caught.
    resolved = candidate.resolve(strict=False)

    for secret in secret_paths(settings):
        if _inside(resolved, secret):
            raise FlashpodsError(
                f"Refused {what} {raw}: it resolves to {resolved}, inside {secret}, "
                "which Flashpods never reads or writes; pick a project directory."
            )
        if _inside(secret, resolved):
            raise FlashpodsError(
                f"Refused {what} {raw}: {resolved} contains {secret}, which Flashpods "
                "never reads or writes; pick a subdirectory that does not contain it."
            )

    if roots is None:
        return resolved
    allowed = [*roots, *(p.resolve() for p in settings.allowed_paths)]
    if not allowed:
        raise FlashpodsError(
            f"Refused {what} {raw}: the MCP client offers no roots and "
            "FLASHPODS_ALLOWED_PATHS is not set, so no local directory is allowed; "
            "add the project directory to FLASHPODS_ALLOWED_PATHS in the server's env."
        )
    if not any(_inside(resolved, a) for a in allowed):
        names = ", ".join(str(a) for a in allowed)
        raise FlashpodsError(
            f"Refused {what} {raw}: it resolves to {resolved}, which is outside the "
            f"client's roots and the allow-list ({names}); use a path inside one of them."
        )
    return resolved


def enclosing_root(path: Path, roots: Sequence[Path] | None, settings: Settings) -> Path | None:
    """The outermost root or allow-listed directory `path` lies in (None for the CLI,
    which has no roots): what a write to `path` must stay inside, staging included."""
    if roots is None:
        return None
    allowed = [*roots, *(p.resolve() for p in settings.allowed_paths)]
    inside = [a for a in allowed if _inside(path, a)]
    return min(inside, key=lambda a: len(a.parts)) if inside else None
