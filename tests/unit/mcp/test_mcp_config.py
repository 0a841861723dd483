"""Config loading: environment, the dev host's env file, and how they combine."""

from pathlib import Path

import pytest
from flashpods_mcp.config import DEFAULT_API_URL, DEFAULT_RSYNC_URL, load_settings
from flashpods_mcp.errors import FlashpodsError


def write_env_file(home: Path, text: str) -> Path:
    path = home / ".config" / "flashpods" / "dev-host.env"
    path.parent.mkdir(parents=True)
    path.write_text(text)
    return path


def test_defaults_without_env_or_file(tmp_path):
    s = load_settings({"HOME": str(tmp_path)})
    assert (s.api_url, s.rsync_url) == (DEFAULT_API_URL, DEFAULT_RSYNC_URL)
    with pytest.raises(FlashpodsError, match="FLASHPODS_API_TOKEN or FLASHPODS_API_TOKEN_FILE"):
        s.token()


def test_dev_host_env_file_is_enough(tmp_path):
    token = tmp_path / "tok"
    token.write_text("s3cret\n")
    write_env_file(
        tmp_path,
        "# written by flashpods-devhost\n"
        "FLASHPODS_API_URL=http://127.0.0.1:9999/\n"
        f"export FLASHPODS_API_TOKEN_FILE='{token}'\n"
        'FLASHPODS_RSYNC_URL="rsync://127.0.0.1:8873/uploads"\n',
    )
    s = load_settings({"HOME": str(tmp_path)})
    assert s.api_url == "http://127.0.0.1:9999"  # trailing slash dropped
    assert s.rsync_url == "rsync://127.0.0.1:8873/uploads"
    assert s.token() == "s3cret"


def test_environment_wins_key_by_key(tmp_path):
    write_env_file(
        tmp_path, "FLASHPODS_API_URL=http://a:1\nFLASHPODS_RSYNC_URL=rsync://a/uploads\n"
    )
    s = load_settings({"HOME": str(tmp_path), "FLASHPODS_API_URL": "http://b:2"})
    assert s.api_url == "http://b:2"
    assert s.rsync_url == "rsync://a/uploads"


def test_token_in_env_replaces_both_token_keys_of_the_file(tmp_path):
    # A file token from another host must not shadow (or be shadowed by) the env one.
    write_env_file(tmp_path, f"FLASHPODS_API_TOKEN_FILE={tmp_path}/missing\n")
    s = load_settings({"HOME": str(tmp_path), "FLASHPODS_API_TOKEN": "inline"})
    assert s.token_file is None
    assert s.token() == "inline"


def test_relative_token_file_is_next_to_the_env_file(tmp_path):
    env_file = write_env_file(tmp_path, "FLASHPODS_API_TOKEN_FILE=api-token\n")
    (env_file.parent / "api-token").write_text("t\n")
    assert load_settings({"HOME": str(tmp_path)}).token() == "t"


def test_token_never_in_repr(tmp_path):
    s = load_settings({"HOME": str(tmp_path), "FLASHPODS_API_TOKEN": "very-secret"})
    assert "very-secret" not in repr(s)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        # an unreadable token file names the file and the variable to fix
        ({"FLASHPODS_API_TOKEN_FILE": "/nonexistent/tok"}, "Cannot read the API token file"),
        ({"FLASHPODS_MAX_UPLOAD_BYTES": "lots"}, "FLASHPODS_MAX_UPLOAD_BYTES must be a positive"),
        ({"FLASHPODS_HTTP_TIMEOUT_S": "-1"}, "FLASHPODS_HTTP_TIMEOUT_S must be a positive"),
        ({"FLASHPODS_ALLOWED_PATHS": "relative/dir"}, "must be absolute"),
    ],
)
def test_bad_values_are_sentences(tmp_path, env, message):
    with pytest.raises(FlashpodsError, match=message):
        load_settings({"HOME": str(tmp_path), **env}).token()


def test_empty_token_file(tmp_path):
    (tmp_path / "tok").write_text("\n")
    s = load_settings({"HOME": str(tmp_path), "FLASHPODS_API_TOKEN_FILE": str(tmp_path / "tok")})
    with pytest.raises(FlashpodsError, match="is empty"):
        s.token()


def test_malformed_env_file_line(tmp_path):
    write_env_file(tmp_path, "FLASHPODS_API_URL http://x\n")
    with pytest.raises(FlashpodsError, match="line 1: expected KEY=VALUE"):
        load_settings({"HOME": str(tmp_path)})


def test_allowed_paths_and_xdg_dirs(tmp_path):
    s = load_settings(
        {
            "HOME": str(tmp_path),
            "XDG_CONFIG_HOME": str(tmp_path / "cfg"),
            "XDG_CACHE_HOME": str(tmp_path / "cache"),
            "FLASHPODS_ALLOWED_PATHS": f"{tmp_path}/a:{tmp_path}/b",
        }
    )
    assert s.allowed_paths == (tmp_path / "a", tmp_path / "b")
    assert s.config_dir == tmp_path / "cfg" / "flashpods"
    assert s.cache_dir == tmp_path / "cache" / "flashpods"
