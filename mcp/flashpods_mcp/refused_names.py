"""Which names from a job's output the laptop never writes: files that tools run or obey
without being asked (git hooks and config, editor tasks, direnv), judged by name alone.

A job's /artifacts is written by whatever its input told it to do. Unpacked into the
project, `.git/hooks/pre-commit` runs at the next commit, `.git/config` with
`core.fsmonitor` at the next `git status` (which many shell prompts run on every
prompt), `.vscode/tasks.json` when the folder is opened. So a path is refused when any
of its components is one of these names, compared the way the laptop's file system
might compare them (macOS folds case and ignores some invisible code points; NTFS, also
under WSL, drops trailing dots and spaces, reads `name:stream` as `name` and answers to
8.3 short names like `GIT~1`).

The list is in docs/mcp.md ("What get_job_artifacts never writes"); keep the two alike.
"""

from __future__ import annotations

import re
import unicodedata

# Directories whose contents a tool runs or obeys when it works in the project.
REFUSED_DIRS = {
    ".git": "git metadata (hooks and config run code)",
    ".hg": "Mercurial metadata (hooks in .hg/hgrc run code)",
    ".svn": "Subversion metadata",
    ".bzr": "Bazaar metadata",
    ".jj": "Jujutsu metadata (its config runs commands)",
    ".husky": "git hooks (husky points core.hooksPath here)",
    ".vscode": "editor settings and tasks (VS Code runs folder-open tasks)",
    ".idea": "editor settings and run configurations (JetBrains IDEs)",
    ".fleet": "editor settings (JetBrains Fleet)",
    ".zed": "editor settings and tasks (Zed)",
    ".helix": "editor settings (Helix starts language servers from them)",
    ".devcontainer": "dev container definition (editors run its commands)",
    ".mise": "mise configuration (tasks and hooks run commands)",
}
# Single files with the same effect. Also refused as directory names: on a
# case-insensitive or NTFS laptop a directory of that name is just as bad.
REFUSED_FILES = {
    ".gitmodules": "git submodule configuration",
    ".gitattributes": "git attributes (filter and diff drivers)",
    ".lfsconfig": "git LFS configuration",
    ".pre-commit-config.yaml": "pre-commit hooks (commands run at every commit)",
    ".pre-commit-config.yml": "pre-commit hooks (commands run at every commit)",
    "lefthook.yml": "lefthook git hooks",
    "lefthook.yaml": "lefthook git hooks",
    ".lefthook.yml": "lefthook git hooks",
    ".lefthook.yaml": "lefthook git hooks",
    "lefthook-local.yml": "lefthook git hooks",
    "lefthook-local.yaml": "lefthook git hooks",
    ".envrc": "direnv script (runs when a shell enters the directory)",
    ".env": "environment file (direnv, dotenv and compose load it)",
    "mise.toml": "mise configuration (tasks and hooks run commands)",
    ".mise.toml": "mise configuration (tasks and hooks run commands)",
    "mise.local.toml": "mise configuration (tasks and hooks run commands)",
    ".mise.local.toml": "mise configuration (tasks and hooks run commands)",
    ".exrc": "vi/vim startup script (read with 'exrc' set)",
    ".vimrc": "vim startup script (read with 'exrc' set)",
    ".nvimrc": "neovim startup script (read with 'exrc' set)",
    ".nvim.lua": "neovim startup script (read with 'exrc' set)",
    ".dir-locals.el": "Emacs directory variables (can evaluate code)",
    ".dir-locals-2.el": "Emacs directory variables (can evaluate code)",
    ".devcontainer.json": "dev container definition (editors run its commands)",
}
# A file named HEAD beside `objects/` and `refs/` makes its directory a bare git
# repository, whose config and hooks git obeys in any command run inside it.
HEAD_FILE = "head"
REFUSED_PREFIXES = {".env.": "environment file (dotenv and compose load .env.* files)"}
# NTFS short names (8.3): `GIT~1` can name `.git`, `GITMOD~1` `.gitmodules`; any such
# name could alias a refused one, so none is written.
SHORT_NAME = re.compile(r"[^.~]{1,8}~[0-9]+(\.[^.]{0,3})?")
# Code points HFS+ and APFS's git-aware checks ignore in names (the list git itself
# uses in is_hfs_dotgit); every other format character (Unicode category Cf) too.
_IGNORED = {0x200C, 0x200D, 0x200E, 0x200F, *range(0x202A, 0x202F), *range(0x206A, 0x2070), 0xFEFF}


def fold(component: str) -> str:
    """The name as a case-insensitive, Unicode-folding or NTFS file system may see it."""
    kept = "".join(
        c for c in component if ord(c) not in _IGNORED and unicodedata.category(c) != "Cf"
    )
    folded = unicodedata.normalize("NFKC", kept).casefold()
    folded = folded.split(":", 1)[0]  # NTFS: `.git::$INDEX_ALLOCATION` is `.git`
    return folded.rstrip(" .") or folded  # NTFS drops trailing dots and spaces


def refused_component(component: str, *, last: bool, is_dir: bool) -> str | None:
    """Why `component` is never written, or None. `last`: it is the member's own name
    (not a directory above it); `is_dir`: the member is a directory."""
    name = fold(component)
    why = REFUSED_DIRS.get(name) or REFUSED_FILES.get(name)
    if why is None:
        why = next((w for p, w in REFUSED_PREFIXES.items() if name.startswith(p)), None)
    if why is None and SHORT_NAME.fullmatch(name):
        why = "an NTFS short name (it could stand for .git or another refused name)"
    if why is None and last and not is_dir and name == HEAD_FILE:
        why = "a file named HEAD (with objects/ and refs/ it makes a git repository)"
    if why is not None and name != component:
        why += f"; the laptop may read the name as {name!r}"
    return why


def refused_path(parts: tuple[str, ...], *, is_dir: bool) -> tuple[tuple[str, ...], str] | None:
    """The first refused prefix of a member's path and why, or None if it may be written."""
    for index, component in enumerate(parts):
        why = refused_component(component, last=index == len(parts) - 1, is_dir=is_dir)
        if why is not None:
            prefix = parts[: index + 1]
            return prefix, f"refused: {'/'.join(prefix)} is {why}"
    return None
