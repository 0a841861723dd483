"""The warm pool's control root never lies where the container uid can write.

The shared storage dirs (uploads, workspaces, artifacts, logs) are group flashpods 2770
without the sticky bit: an escaped job could rename a control root inside them and plant
a link, and the API would write the next hand-over (command, environment) through it.
"""

from __future__ import annotations

import pytest
from flashpods_api import config

STORAGE = {
    "uploads": "/srv/fp/uploads",
    "workspaces": "/srv/fp/workspaces",
    "artifacts": "/srv/fp/artifacts",
    "logs": "/srv/fp/logs",
}


def test_default_control_root_is_beside_the_workspaces_not_inside():
    cfg = config.from_dict({"storage": dict(STORAGE)})
    assert str(cfg.control_dir) == "/srv/fp/control"


@pytest.mark.parametrize(
    "control",
    [
        "/srv/fp/workspaces/.control",  # the old default
        "/srv/fp/logs",
        "/srv/fp/artifacts/x/y",
        "/srv/fp/uploads/.bases/control",
    ],
)
def test_control_root_inside_a_job_writable_dir_is_refused_naming_it(control):
    with pytest.raises(config.ConfigError, match="storage.control .* is inside /srv/fp/"):
        config.from_dict({"storage": {**STORAGE, "control": control}})


def test_control_root_elsewhere_is_taken():
    cfg = config.from_dict({"storage": {**STORAGE, "control": "/var/lib/fp-control"}})
    assert str(cfg.control_dir) == "/var/lib/fp-control"
