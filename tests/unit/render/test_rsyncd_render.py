"""The shared rsyncd template: a real daemon on loopback takes uploads and nothing else."""

import grp
import os
import pwd
import re
import shutil
import socket
import subprocess
import time
import uuid
from pathlib import Path

import pytest
from flashpods_devhost.render import RenderError, render_rsyncd

API_USER = "flashpods-api"
GROUP = "flashpods"


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _values(root: Path, port: int) -> dict:
    return dict(
        address="127.0.0.1",
        port=port,
        uploads=root / "uploads",
        laptop_addr="127.0.0.1",
        pid_file=root / "rsyncd.pid",
        lock_file=root / "rsyncd.lock",
        log_file=root / "rsyncd.log",
        uid=API_USER,
        gid=GROUP,
        use_chroot=True,
        max_connections=4,
    )


def test_every_placeholder_is_filled(tmp_path):
    text = render_rsyncd(**_values(tmp_path, 873))
    assert re.search(r"@[A-Z0-9_]+@", text) is None
    for line in (
        "path = " + str(tmp_path / "uploads"),
        "write only = yes",
        "read only = no",
        "list = no",
        "hosts allow = 127.0.0.1",
        "hosts deny = *",
        "reverse lookup = no",
        "use chroot = yes",
        "uid = flashpods-api",
    ):
        assert line in text
    assert re.search(r"^\s*munge symlinks", text, re.M) is None


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("address", "localhost", "address must be an IP address"),
        ("port", 70000, "port must be a port number"),
        ("uploads", "relative/dir", "uploads must be an absolute path"),
        ("uploads", "/tmp/a b", "uploads must be an absolute path"),
        ("laptop_addr", [], "at least one client address"),
        ("uid", "root; x", "uid must be a user/group name"),
        ("use_chroot", "yes", "use_chroot must be true or false"),
        ("max_connections", 0, "max_connections must be a positive integer"),
    ],
)
def test_bad_values_are_refused_with_a_reason(tmp_path, key, value, message):
    with pytest.raises(RenderError, match=message):
        render_rsyncd(**{**_values(tmp_path, 873), key: value})


def test_several_client_addresses_are_space_separated(tmp_path):
    text = render_rsyncd(**{**_values(tmp_path, 873), "laptop_addr": ["10.0.0.2", "fd00::2"]})
    assert "hosts allow = 10.0.0.2 fd00::2" in text


@pytest.fixture
def daemon():
    """A real rsync daemon, as root with chroot, on a free loopback port."""
    root = Path("/var/tmp/flashpods-test") / f"rsyncd-{uuid.uuid4().hex[:8]}"
    uploads = root / "uploads"
    uploads.mkdir(parents=True)
    os.chmod(root.parent, 0o755)
    api = pwd.getpwnam(API_USER).pw_uid
    gid = grp.getgrnam(GROUP).gr_gid
    os.chown(uploads, api, gid)
    os.chmod(uploads, 0o2770)
    port = _free_port()
    conf = root / "rsyncd.conf"
    conf.write_text(render_rsyncd(**_values(root, port)))
    proc = subprocess.Popen(["rsync", "--daemon", "--no-detach", f"--config={conf}"])
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert proc.poll() is None, (root / "rsyncd.log").read_text()
                assert time.monotonic() < deadline, "rsyncd did not start listening"
                time.sleep(0.05)
        yield {
            "root": root,
            "uploads": uploads,
            "url": f"rsync://127.0.0.1:{port}/uploads",
        }
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        shutil.rmtree(root)


def _rsync(*args, source="127.0.0.1"):
    return subprocess.run(
        ["rsync", f"--address={source}", "--contimeout=5", *args],
        check=False,
        capture_output=True,
        text=True,
        timeout=30,
    )


@pytest.fixture
def tree(tmp_path):
    src = tmp_path / "src"
    (src / "pkg").mkdir(parents=True)
    (src / "pkg" / "main.py").write_text("print('hi')\n")
    os.chmod(src / "pkg" / "main.py", 0o600)  # the laptop's private mode
    os.chmod(src / "pkg", 0o700)
    return src


@pytest.mark.root  # a real rsync daemon as root (chroot, uid switch)
def test_laptop_uploads_and_group_flashpods_can_use_the_files(daemon, tree):
    result = _rsync("-r", "--perms", f"{tree}/", f"{daemon['url']}/up_a/")
    assert result.returncode == 0, result.stderr
    landed = daemon["uploads"] / "up_a" / "pkg"
    f = (landed / "main.py").stat()
    d = landed.stat()
    assert f.st_uid == pwd.getpwnam(API_USER).pw_uid
    assert f.st_gid == grp.getgrnam(GROUP).gr_gid
    assert f.st_mode & 0o777 == 0o660
    assert d.st_mode & 0o7777 == 0o2770


@pytest.mark.root  # a real rsync daemon as root (chroot, uid switch)
def test_other_client_address_is_denied(daemon, tree):
    result = _rsync("-r", f"{tree}/", f"{daemon['url']}/up_b/", source="127.0.0.2")
    assert result.returncode != 0
    # rsync hides an unlisted module from a denied host instead of naming it.
    assert "access denied" in result.stderr or "Unknown module" in result.stderr
    assert not (daemon["uploads"] / "up_b").exists()


@pytest.mark.root  # a real rsync daemon as root (chroot, uid switch)
def test_module_is_not_listed_and_cannot_be_read(daemon, tree):
    assert _rsync("-r", f"{tree}/", f"{daemon['url']}/up_c/").returncode == 0
    listing = _rsync(daemon["url"].rsplit("/", 1)[0] + "/")
    assert "uploads" not in listing.stdout
    download = _rsync("-r", f"{daemon['url']}/up_c/", str(daemon["root"] / "copy"))
    assert download.returncode != 0
    assert "write only" in download.stderr
    assert not (daemon["root"] / "copy").exists()


@pytest.mark.root  # a real rsync daemon as root (chroot, uid switch)
def test_kept_bases_are_usable_as_link_dest(daemon, tree):
    # -t: link-dest links files whose size and mtime match, as the MCP's uploads do.
    assert _rsync("-rt", f"{tree}/", f"{daemon['url']}/up_d/").returncode == 0
    bases = daemon["uploads"] / ".bases"
    bases.mkdir()
    os.rename(daemon["uploads"] / "up_d", bases / "up_d")
    # A re-upload links unchanged files to the kept base (the fast path).
    result = _rsync("-rt", "--link-dest=../.bases/up_d/", f"{tree}/", f"{daemon['url']}/up_e/")
    assert result.returncode == 0, result.stderr
    new = (daemon["uploads"] / "up_e" / "pkg" / "main.py").stat()
    assert new.st_ino == (bases / "up_d" / "pkg" / "main.py").stat().st_ino


@pytest.mark.root  # a real rsync daemon as root (chroot, uid switch)
def test_refused_options_are_refused(daemon, tree):
    result = _rsync("-r", "--temp-dir=/tmp", f"{tree}/", f"{daemon['url']}/up_f/")
    assert result.returncode != 0
    assert "temp-dir" in result.stderr
    result = _rsync("-r", "-b", "--backup-dir=/tmp", f"{tree}/", f"{daemon['url']}/up_g/")
    assert result.returncode != 0


@pytest.mark.root  # a real rsync daemon as root (chroot, uid switch)
def test_a_symlink_cannot_carry_writes_outside_the_module(daemon, tmp_path):
    outside = daemon["root"] / "outside"
    outside.mkdir()
    src = tmp_path / "evil"
    src.mkdir()
    (src / "esc").symlink_to(outside)
    assert _rsync("-rl", f"{src}/", f"{daemon['url']}/up_h/").returncode == 0
    # Second upload writes through the name of the link.
    payload = tmp_path / "payload"
    (payload / "esc").mkdir(parents=True)
    (payload / "esc" / "planted").write_text("x\n")
    _rsync("-r", "--keep-dirlinks", f"{payload}/", f"{daemon['url']}/up_h/")
    assert list(outside.iterdir()) == []
