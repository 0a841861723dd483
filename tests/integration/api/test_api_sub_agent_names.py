"""The sub-agent is spelled sub_agent: the real API and the real reaper refuse old
spellings with a sentence that names the new one (issue 17)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from api_it_support import Api

pytestmark = pytest.mark.slow

OLD = ["agent", "subagent", "sub-agent", "subAgent"]


def test_old_kind_spellings_are_refused_naming_sub_agent(devhost_factory):
    api = Api(devhost_factory())
    for old in OLD:
        resp = api.post("/jobs", {"kind": old, "prompt": "say hi"})
        assert resp.status_code == 400, resp.text
        body = resp.json()
        assert body["code"] == "bad_kind"
        assert f"'{old}' is an old name" in body["error"] and "'sub_agent'" in body["error"]
        listed = api.get("/jobs", params={"kind": old})
        assert listed.status_code == 400 and "'sub_agent'" in listed.json()["error"]
    # Nothing was stored for the refused requests.
    assert api.get("/jobs").json()["jobs"] == []
    # A key that is not a kind at all keeps the plain sentence.
    resp = api.post("/jobs", {"kind": "robot", "prompt": "x"})
    assert resp.json()["error"] == '\'kind\' must be "worker" or "sub_agent".'


@pytest.mark.parametrize(
    ("settings", "named"),
    [
        ({"agent": {"command": ["/a"]}}, "write sub_agent"),
        ({"warm_pool": {"agent": 1}}, "write warm_pool.sub_agent"),
        ({"images": {"sub-agent": "x"}}, "write images.sub_agent"),
    ],
)
def test_the_reaper_refuses_old_settings_keys_naming_the_new(tmp_path: Path, settings, named):
    config = tmp_path / "api.json"
    config.write_text(json.dumps(settings))
    venv = Path(os.environ.get("FLASHPODS_VENV", "/opt/flashpods/venv"))
    run = subprocess.run(
        [str(venv / "bin" / "flashpods-reaper"), "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert run.returncode != 0
    assert "old name of the sub-agent" in run.stderr and named in run.stderr
