"""cli.py: the entry points refuse a bad configuration with the reason."""

from __future__ import annotations

import pytest


def test_entry_points_refuse_a_bad_config_with_the_reason(tmp_path):
    from flashpods_api.cli import api_main, reaper_main

    for main in (api_main, reaper_main):
        with pytest.raises(SystemExit, match="Cannot read the API configuration"):
            main(["--config", str(tmp_path / "missing.json")])
