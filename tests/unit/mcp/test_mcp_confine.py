"""Confinement: which `path`/`dest` a tool call may use, after resolving symlinks."""

import os
from pathlib import Path

import pytest
from flashpods_mcp.config import load_settings
from flashpods_mcp.confine import confine, roots_from_uris
from flashpods_mcp.errors import FlashpodsError


@pytest.fixture
def home(tmp_path):
    home = tmp_path / "home"
    for d in ("proj/src", "other", ".ssh", ".gnupg", ".aws", ".config/flashpods"):
        (home / d).mkdir(parents=True)
    (home / "secret-token").write_text("t")
    # a link inside the root that leads out of it, and one that leads into ~/.ssh
    (home / "proj" / "escape").symlink_to(home / "other")
    (home / "proj" / "keys").symlink_to(home / ".ssh")
    return home


@pytest.fixture
def settings(home):
    return load_settings(
        {
            "HOME": str(home),
            "FLASHPODS_API_TOKEN_FILE": str(home / "secret-token"),
            "FLASHPODS_ALLOWED_PATHS": str(home / "allowed"),
        }
    )


ALLOWED = [
    # (raw path, expected relative to home)
    ("proj", "proj"),
    ("proj/src", "proj/src"),
    ("{home}/proj/src/../src", "proj/src"),  # '..' that stays inside is fine
    ("proj/new-dest/deeper", "proj/new-dest/deeper"),  # dest may not exist yet
    ("{home}/allowed/x", "allowed/x"),  # the allow-list counts like a root
]

REFUSED = [
    # (raw path, words the refusal must contain)
    ("other", "outside the client's roots"),
    ("proj/../other", "outside the client's roots"),  # '..' that leaves the root
    ("proj/escape", "outside the client's roots"),  # symlink resolved before the check
    ("proj/escape/sub", "outside the client's roots"),
    ("proj/keys", ".ssh"),  # symlink into ~/.ssh
    ("{home}/.ssh", "never reads or writes"),
    ("{home}/.gnupg/x", "never reads or writes"),
    ("{home}/.aws", "never reads or writes"),
    ("{home}/.config/flashpods", "never reads or writes"),  # our own config and token
    ("{home}/secret-token", "never reads or writes"),
    ("{home}", "contains"),  # a parent of ~/.ssh would upload it
    ("/etc", "outside the client's roots"),
    ("~/.ssh", "never reads or writes"),
]


@pytest.mark.parametrize(("raw", "expected"), ALLOWED)
def test_allowed(home, settings, raw, expected):
    roots = [home / "proj"]
    got = confine(raw.format(home=home), what="path", base=home, roots=roots, settings=settings)
    assert got == (home / expected).resolve()


@pytest.mark.parametrize(("raw", "words"), REFUSED)
def test_refused(home, settings, monkeypatch, raw, words):
    monkeypatch.setenv("HOME", str(home))  # for '~'
    # base is home so that relative names like "other" resolve where the table means
    with pytest.raises(FlashpodsError, match="Refused") as info:
        confine(
            raw.format(home=home), what="path", base=home, roots=[home / "proj"], settings=settings
        )
    assert words in str(info.value)


def test_no_roots_and_no_allow_list_refuses_everything(home):
    settings = load_settings({"HOME": str(home)})
    with pytest.raises(FlashpodsError, match="FLASHPODS_ALLOWED_PATHS"):
        confine(home / "proj", what="path", base=home, roots=[], settings=settings)


def test_cli_mode_checks_only_secrets(home, settings):
    # roots=None is the human CLI: any directory but the secret ones
    assert confine(home / "other", what="path", base=home, roots=None, settings=settings)
    with pytest.raises(FlashpodsError, match="never reads or writes"):
        confine(home / ".ssh", what="dest", base=home, roots=None, settings=settings)


def test_roots_from_uris(tmp_path):
    (tmp_path / "a b").mkdir()
    uris = [f"file://{tmp_path}/a%20b", "https://example.invalid/x"]
    assert roots_from_uris(uris) == [(tmp_path / "a b").resolve()]


def test_symlinked_root_is_compared_resolved(tmp_path, settings):
    real = tmp_path / "real"
    real.mkdir()
    link = tmp_path / "link"
    os.symlink(real, link)
    # the client names the root through a link; the path is given by its real name
    roots = roots_from_uris([f"file://{link}"])
    assert confine(real / "x", what="dest", base=real, roots=roots, settings=settings) == Path(
        real / "x"
    )
