"""logs.py: decoding Podman's k8s-file log, the log cap, finalizing, UTF-8 trimming."""

from __future__ import annotations

from pathlib import Path

import pytest
from flashpods_api import logs

J = "job_aaaaaaaaaaaa"  # logs only take real job ids


def _ctr(path: Path, *lines: str) -> None:
    with open(path, "a") as fh:
        for line in lines:
            fh.write(line + "\n")


def test_decoder_joins_partial_lines_and_keeps_spaces(tmp_path):
    path = tmp_path / f"{J}.ctr.log"
    _ctr(path, "T stdout P a b ", "T stderr F  c", "T stdout F ", "T stdout F tab\there")
    assert logs.read(tmp_path, J, 0, 100, 1000) == b"a b  c\n\ntab\there\n"


def test_decoder_holds_back_an_unfinished_line(tmp_path):
    path = tmp_path / f"{J}.ctr.log"
    path.write_bytes(b"T stdout F one\nT stdout F tw")
    decoder = logs.decoded_size(path)
    assert decoder.decoded == 4
    with open(path, "ab") as fh:
        fh.write(b"o\n")
    assert logs.decoded_size(path, decoder).decoded == 8


def test_finalize_caps_notes_and_is_idempotent(tmp_path):
    _ctr(tmp_path / f"{J}.ctr.log", *[f"T stdout F {'x' * 9}"] * 5)
    size, capped = logs.finalize(tmp_path, J, 25)
    data = (tmp_path / f"{J}.log").read_bytes()
    assert capped and data.startswith(b"x" * 9 + b"\n" + b"x" * 9 + b"\n" + b"xxxxx")
    assert data.endswith(logs.cap_note(25)) and size == len(data)
    assert not (tmp_path / f"{J}.ctr.log").exists()
    assert logs.finalize(tmp_path, J, 25) == (size, True)  # second run after a crash
    assert logs.read(tmp_path, J, 20, 5, 25) == b"xxxxx"


def test_live_reads_stop_at_the_cap(tmp_path):
    _ctr(tmp_path / f"{J}.ctr.log", *[f"T stdout F {'y' * 9}"] * 5)
    assert logs.read(tmp_path, J, 0, 1000, 15) == b"y" * 9 + b"\n" + b"y" * 5


@pytest.mark.parametrize(
    ("data", "kept"),
    [
        (b"abc", b"abc"),
        ("aé".encode(), "aé".encode()),
        ("aé".encode()[:2], b"a"),
        ("a€".encode()[:3], b"a"),
    ],
)
def test_trim_utf8(data, kept):
    assert logs.trim_utf8(data) == kept
