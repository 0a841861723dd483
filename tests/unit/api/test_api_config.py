"""config.py: a mistake in the API's configuration is refused with its key named."""

from __future__ import annotations

import json

import pytest
from flashpods_api.config import ConfigError, from_dict, load


@pytest.mark.parametrize(
    ("raw", "words"),
    [
        ({"instanse": "x"}, "Unknown key 'instanse'"),
        ({"storage": {"upload": "/x"}}, "storage.'upload'"),
        ({"max_concurrent_jobs": 0}, "max_concurrent_jobs"),
        ({"max_concurrent_jobs": True}, "max_concurrent_jobs"),
        ({"default_timeout_s": 100, "max_timeout_s": 10}, "default_timeout_s"),
        ({"network_mode": "host"}, "network_mode"),
        ({"attestation": "none"}, "attestation"),
        ({"images": {"worker": "evil:1"}}, "images.allowed"),
        ({"sub_agent": {"command": "claude -p"}}, "sub_agent.command"),
        ({"allowed_peers": "10.0.0.2"}, "allowed_peers"),
        ({"retention": {"logs_s": -1}}, "retention.logs_s"),
    ],
)
def test_config_mistakes_are_named(raw, words):
    with pytest.raises(ConfigError, match=words.replace("(", r"\(").replace(".", r"\.")):
        from_dict(raw)


def test_config_file_errors(tmp_path, monkeypatch):
    monkeypatch.delenv("FLASHPODS_API_CONFIG", raising=False)
    with pytest.raises(ConfigError, match="--config"):
        load()
    bad = tmp_path / "api.json"
    bad.write_text("{nope")
    with pytest.raises(ConfigError, match="not valid JSON"):
        load(bad)
    with pytest.raises(ConfigError, match="Cannot read"):
        load(tmp_path / "missing.json")
    bad.write_text(json.dumps({"instance": "x", "limits": {"log_bytes": 10}}))
    cfg = load(bad)
    assert cfg.limits == {**cfg.limits, "log_bytes": 10} and cfg.kill_grace_s == 10
