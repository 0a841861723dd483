"""Copy-in (step 1 of the container contract), run directly on the host with
FLASHPODS_INPUT_DIR / FLASHPODS_WORKSPACE_DIR pointing into a scratch dir."""

from __future__ import annotations

import os
import socket
import stat
import subprocess
from pathlib import Path

from helper_support import base_env, run_helper

MARKER = ".flashpods-ready"


def make_input(root: Path) -> Path:
    src = root / "input"
    (src / "pkg" / "deep" / "er").mkdir(parents=True)
    (src / "README.md").write_text("hello\n")
    (src / "run.sh").write_text("#!/bin/sh\necho run\n")
    (src / "run.sh").chmod(0o750)
    (src / "pkg" / "data.bin").write_bytes(os.urandom(300_000))  # > one copy buffer
    (src / "pkg" / "deep" / "er" / "leaf.txt").write_text("leaf")
    (src / "pkg" / "deep" / "er" / "leaf.txt").chmod(0o604)
    (src / "private").write_text("p")
    (src / "private").chmod(0o600)
    (src / "empty").mkdir()
    (src / "readonly-dir").mkdir()
    (src / "readonly-dir" / "inside").write_text("x")
    (src / "readonly-dir").chmod(0o555)
    os.symlink("pkg/data.bin", src / "link-in")
    os.symlink("/etc/passwd", src / "link-out")  # points outside: kept as a link
    os.symlink("../../README.md", src / "pkg" / "deep" / "up")
    os.symlink("does-not-exist", src / "dangling")
    os.symlink("pkg", src / "link-dir")  # a link to a directory is not descended
    os.mkfifo(src / "fifo")  # would block a naive copy
    unix = socket.socket(socket.AF_UNIX)
    unix.bind(str(src / "sock"))
    unix.close()
    os.utime(src / "README.md", (1_600_000_000, 1_600_000_000))
    os.utime(src / "pkg" / "deep", (1_500_000_000, 1_500_000_000))
    return src


def copy_env(root: Path, src: Path, dst: Path) -> dict[str, str]:
    return base_env(root, FLASHPODS_INPUT_DIR=str(src), FLASHPODS_WORKSPACE_DIR=str(dst))


def tree(root: Path) -> dict[str, tuple[str, int, str | bytes]]:
    """path -> (kind, permission bits, content or link target)."""
    out: dict[str, tuple[str, int, str | bytes]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            rel = str(path.relative_to(root))
            st = path.lstat()
            bits = stat.S_IMODE(st.st_mode)
            if stat.S_ISLNK(st.st_mode):
                out[rel] = ("link", 0, os.readlink(path))
            elif stat.S_ISDIR(st.st_mode):
                out[rel] = ("dir", bits, "")
            elif stat.S_ISREG(st.st_mode):
                out[rel] = ("file", bits, path.read_bytes())
            else:
                out[rel] = ("special", bits, "")
    return out


def test_copy_keeps_files_modes_links_and_skips_specials(helper, workdir):
    src = make_input(workdir)
    dst = workdir / "workspace"
    dst.mkdir()

    result = run_helper(helper, ["--", "/bin/true"], copy_env(workdir, src, dst))

    assert result.returncode == 0, result.stderr
    expected = {k: v for k, v in tree(src).items() if v[0] != "special"}
    copied = tree(dst)
    marker = copied.pop(MARKER)
    assert copied == expected
    assert marker[0] == "file"
    assert b"files=" in marker[2]
    assert os.readlink(dst / "link-out") == "/etc/passwd"  # not followed, not resolved
    assert (dst / "link-dir").is_symlink()
    assert not (dst / "fifo").exists() and not (dst / "sock").exists()
    assert "skipped 2 special file(s)" in result.stderr
    assert (dst / "README.md").stat().st_mtime == 1_600_000_000
    assert (dst / "pkg" / "deep").stat().st_mtime == 1_500_000_000


def test_marker_prevents_a_second_copy(helper, workdir):
    src = make_input(workdir)
    dst = workdir / "workspace"
    dst.mkdir()
    env = copy_env(workdir, src, dst)
    assert run_helper(helper, ["--", "/bin/true"], env).returncode == 0
    # The job changed its workspace; a restart of the same job must keep that.
    (dst / "README.md").write_text("changed by the job\n")
    (dst / "pkg" / "data.bin").unlink()

    result = run_helper(helper, ["--", "/bin/true"], env)

    assert result.returncode == 0, result.stderr
    assert (dst / "README.md").read_text() == "changed by the job\n"
    assert not (dst / "pkg" / "data.bin").exists()
    assert result.stderr == ""


def test_interrupted_copy_is_redone_over_leftovers(helper, workdir):
    src = make_input(workdir)
    dst = workdir / "workspace"
    dst.mkdir()
    # Leftovers of a copy that died before writing the marker.
    (dst / "README.md").write_text("half")
    os.symlink("/etc", dst / "run.sh")  # a link where a file belongs: replaced, not followed
    (dst / "pkg").mkdir()
    (dst / "pkg").chmod(0o500)
    (dst / "link-in").write_text("a file where a link belongs")

    result = run_helper(helper, ["--", "/bin/true"], copy_env(workdir, src, dst))

    assert result.returncode == 0, result.stderr
    assert (dst / "README.md").read_text() == "hello\n"
    assert not (dst / "run.sh").is_symlink()
    assert (dst / "run.sh").read_text() == "#!/bin/sh\necho run\n"
    assert os.readlink(dst / "link-in") == "pkg/data.bin"
    assert stat.S_IMODE((dst / "pkg").stat().st_mode) == stat.S_IMODE((src / "pkg").stat().st_mode)
    assert (dst / MARKER).exists()


def test_no_input_means_no_copy_and_no_marker(helper, workdir):
    dst = workdir / "workspace"
    dst.mkdir()
    env = copy_env(workdir, workdir / "absent", dst)

    result = run_helper(helper, ["--", "/bin/true"], env)

    assert result.returncode == 0, result.stderr
    assert list(dst.iterdir()) == []


def test_marker_in_the_upload_is_not_taken_for_ours(helper, workdir):
    src = make_input(workdir)
    (src / MARKER).write_text("uploaded by the user")
    dst = workdir / "workspace"
    dst.mkdir()

    result = run_helper(helper, ["--", "/bin/true"], copy_env(workdir, src, dst))

    assert result.returncode == 0, result.stderr
    assert (dst / "README.md").exists()
    assert b"files=" in (dst / MARKER).read_bytes()


def test_missing_workspace_is_an_error(helper, workdir):
    src = make_input(workdir)

    result = run_helper(
        helper, ["--", "/bin/true"], copy_env(workdir, src, workdir / "no-such-workspace")
    )

    assert result.returncode == 125
    assert "cannot open the workspace" in result.stderr
    assert result.stderr.count("\n") == 1


def test_input_that_is_a_file_is_an_error(helper, workdir):
    src = workdir / "input-file"
    src.write_text("x")
    dst = workdir / "workspace"
    dst.mkdir()

    result = run_helper(helper, ["--", "/bin/true"], copy_env(workdir, src, dst))

    assert result.returncode == 125
    assert "is not a directory" in result.stderr


def test_unreadable_source_file_fails_without_marker(helper, workdir):
    # As the flashpods user (root would read anything): a file it cannot read
    # stops the job, names the file, and leaves no marker behind.
    src = workdir / "input"
    src.mkdir()
    (src / "ok.txt").write_text("ok")
    (src / "secret.txt").write_text("no")
    (src / "secret.txt").chmod(0o600)  # root-owned: unreadable for flashpods
    dst = workdir / "workspace"
    dst.mkdir()
    os.chown(dst, 1001, 1001)
    env = copy_env(workdir, src, dst)

    result = run_helper(
        Path("/usr/bin/setpriv"),
        ["--reuid=1001", "--regid=1001", "--clear-groups", str(helper), "--", "/bin/true"],
        env,
    )

    assert result.returncode == 125
    assert "copy-in of secret.txt failed" in result.stderr
    assert "Permission denied" in result.stderr
    assert not (dst / MARKER).exists()


def test_deep_tree_with_a_low_descriptor_limit(helper, workdir):
    # Two descriptors per level: 400 levels need more than a soft limit of
    # 256; the helper raises it for the copy and gives the command the
    # limit it was started with.
    src = workdir / "input"
    deep = src.joinpath(*["d"] * 400)
    deep.mkdir(parents=True)
    (deep / "bottom.txt").write_text("bottom")
    dst = workdir / "workspace"
    dst.mkdir()
    env = copy_env(workdir, src, dst)

    result = subprocess.run(
        ["/bin/sh", "-c", 'ulimit -Sn 256 && exec "$0" -- /bin/sh -c "ulimit -Sn"', str(helper)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert result.returncode == 0, result.stderr
    assert result.stdout == "256\n"
    assert dst.joinpath(*["d"] * 400, "bottom.txt").read_text() == "bottom"


def test_message_about_a_strange_file_name_stays_one_line(helper, workdir):
    src = workdir / "input"
    src.mkdir()
    strange = src / "bad\nname\x1b[31m"
    strange.write_text("x")
    strange.chmod(0o600)  # root-owned: unreadable for flashpods
    dst = workdir / "workspace"
    dst.mkdir()
    os.chown(dst, 1001, 1001)

    result = run_helper(
        Path("/usr/bin/setpriv"),
        ["--reuid=1001", "--regid=1001", "--clear-groups", str(helper), "--", "/bin/true"],
        copy_env(workdir, src, dst),
    )

    assert result.returncode == 125
    lines = [line for line in result.stderr.splitlines() if "copy-in" in line]
    assert len(lines) == 1
    assert "bad?name?[31m" in lines[0]
