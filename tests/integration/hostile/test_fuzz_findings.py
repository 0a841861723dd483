"""What the API fuzzing found, each kept as a plain test on a real dev host.

Every answer must be one GET /openapi.json documents: no 500 for an offset past any
file system's largest file, no 201 for a body of the wrong JSON type.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parents[1] / "api"))
from api_it_support import Api  # noqa: E402

pytestmark = pytest.mark.slow

# Past ext4's largest file (16 TiB): lseek() there fails with EINVAL, not a short read.
BEYOND_ANY_FILE = 32541826878841


def test_log_offsets_past_the_largest_file_read_nothing(devhost_factory):
    api = Api(devhost_factory())
    job = api.submit("echo hello")
    api.wait(job["id"])
    logs = f"/jobs/{job['id']}/logs"
    for params in ({}, {"format": "raw"}, {"follow": "1"}):
        answer = api.get(logs, params={"offset": BEYOND_ANY_FILE, **params})
        assert answer.status_code == 200, (params, answer.text)
        if params:
            assert answer.content == b"", params
        else:
            body = answer.json()
            assert (body["data"], body["next_offset"]) == ("", BEYOND_ANY_FILE), body
    assert api.get(logs).json()["data"] == "hello\n"


def test_an_upload_body_that_is_no_object_is_refused(devhost_factory):
    api = Api(devhost_factory())
    # What the fuzzer sent ([] was taken as "no basis" and answered 201), and kin.
    bodies = [json.dumps(b) for b in ([], "", 0, False, None, ["basis"], {"basis": 1})]
    bodies += [json.dumps({"basis": "up_"}), "\x0c", " \x0b "]  # \x0c was taken as empty
    for body in bodies:
        answer = api.post("/uploads", data=body)
        assert answer.status_code == 400, (body, answer.text)
        assert answer.json()["code"] in ("bad_json", "bad_basis"), answer.text
    # JSON's own whitespace alone is no JSON text either (seed 357646606 sent a tab)
    for body in (" \r\n\t", "\t"):
        answer = api.post("/uploads", data=body)
        assert answer.status_code == 400 and answer.json()["code"] == "bad_json", answer.text
    assert api.post("/uploads").status_code == 201  # an empty body is still fine
