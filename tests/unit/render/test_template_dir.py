"""Where the renderer finds modules/flashpods/*.in: env var, packaged copy, checkout."""

from pathlib import Path

import pytest
from flashpods_devhost import render

REPO_TEMPLATES = Path(__file__).resolve().parents[3] / "modules" / "flashpods"


def _templates(where: Path) -> Path:
    where.mkdir(parents=True)
    for name in (render.FIREWALL_TEMPLATE, render.RSYNCD_TEMPLATE):
        (where / name).write_text((REPO_TEMPLATES / name).read_text())
    return where


def test_the_env_var_wins(tmp_path, monkeypatch):
    monkeypatch.setenv(render.TEMPLATE_DIR_ENV, str(tmp_path))
    monkeypatch.setattr(render, "PACKAGED_TEMPLATES", _templates(tmp_path / "packaged"))
    assert render.template_dir() == tmp_path


def test_packaged_templates_come_before_the_checkout(tmp_path, monkeypatch):
    monkeypatch.delenv(render.TEMPLATE_DIR_ENV, raising=False)
    packaged = _templates(tmp_path / "packaged")
    monkeypatch.setattr(render, "PACKAGED_TEMPLATES", packaged)
    monkeypatch.setattr(render, "REPOSITORY_TEMPLATES", _templates(tmp_path / "repo"))
    assert render.template_dir() == packaged


def test_the_checkout_serves_an_editable_install(tmp_path, monkeypatch):
    monkeypatch.delenv(render.TEMPLATE_DIR_ENV, raising=False)
    monkeypatch.setattr(render, "PACKAGED_TEMPLATES", tmp_path / "absent")
    monkeypatch.setattr(render, "REPOSITORY_TEMPLATES", REPO_TEMPLATES)
    assert render.template_dir() == REPO_TEMPLATES
    assert "table inet flashpods" in render._read(render.FIREWALL_TEMPLATE)


def test_no_templates_anywhere_says_what_to_do(tmp_path, monkeypatch):
    monkeypatch.delenv(render.TEMPLATE_DIR_ENV, raising=False)
    monkeypatch.setattr(render, "PACKAGED_TEMPLATES", tmp_path / "absent")
    monkeypatch.setattr(render, "REPOSITORY_TEMPLATES", tmp_path / "also-absent")
    with pytest.raises(render.RenderError, match="scripts/lib/venv.sh.*FLASHPODS_TEMPLATE_DIR"):
        render.template_dir()


def test_an_env_var_without_the_templates_names_them(tmp_path, monkeypatch):
    monkeypatch.setenv(render.TEMPLATE_DIR_ENV, str(tmp_path))
    with pytest.raises(render.RenderError, match="firewall.nft.in and rsyncd.conf.in"):
        render._read(render.RSYNCD_TEMPLATE)
