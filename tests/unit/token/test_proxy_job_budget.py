"""A job's own budget as the proxy reads it (job_budget.py) and applies it (UsageBook):
the lower of the host's and the job's; a file that is there but fails a check never
falls back to the host default."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from flashpods_token.job_budget import MAX_FILE, BudgetUnreadable, read_job_budget
from flashpods_token.usage import UsageBook

JOB = "job_aaaaaaaaaaaa"


@pytest.fixture
def budgets(tmp_path: Path) -> Path:
    directory = tmp_path / "budgets"
    directory.mkdir(mode=0o750)
    os.chmod(directory, 0o2750)
    return directory


def write(directory: Path, job_id: str = JOB, tokens: object = 50, **extra: object) -> Path:
    path = directory / f"{job_id}.json"
    path.write_text(json.dumps({"job_id": job_id, "budget_tokens": tokens} | extra))
    os.chmod(path, 0o640)
    return path


def test_no_file_is_no_budget_of_its_own_and_a_good_file_is_read(budgets):
    assert read_job_budget(str(budgets), JOB) is None
    assert read_job_budget(str(budgets / "missing"), JOB) is None
    write(budgets)
    assert read_job_budget(str(budgets), JOB) == 50


def forge_symlink(d: Path) -> None:
    forged = d.parent / "forged.json"
    forged.write_text(json.dumps({"job_id": JOB, "budget_tokens": 10**9}))
    (d / f"{JOB}.json").symlink_to(forged)


def forge_fifo(d: Path) -> None:
    os.mkfifo(d / f"{JOB}.json", 0o640)  # would hang a reader without O_NONBLOCK


def forge_hard_link(d: Path) -> None:
    other = d.parent / "elsewhere.json"
    other.write_text(json.dumps({"job_id": JOB, "budget_tokens": 10**9}))
    os.chmod(other, 0o640)
    os.link(other, d / f"{JOB}.json")


# How a file in the directory can be wrong; each must refuse, never read as "no budget".
@pytest.mark.parametrize(
    ("forge", "says"),
    [
        (forge_symlink, "Too many levels of symbolic links"),
        (forge_fifo, "not a regular file"),
        (forge_hard_link, "other links"),
        (lambda d: write(d, tokens=10**9, pad="x" * MAX_FILE), "larger than"),
        (lambda d: (d / f"{JOB}.json").write_text("{not json"), "not JSON"),
        # another job's budget copied under this job's name
        (lambda d: (d / f"{JOB}.json").write_text(json.dumps(
            {"job_id": "job_bbbbbbbbbbbb", "budget_tokens": 10**9})), "does not name job"),
        (lambda d: write(d, tokens=0), "not a positive integer"),
        (lambda d: write(d, tokens=True), "not a positive integer"),
        (lambda d: write(d, tokens="100"), "not a positive integer"),
        (lambda d: os.chmod(write(d), 0o666), "writable by others"),
        (lambda d: (write(d), os.chmod(d, 0o2770)), "writable by group or others"),
    ],
)  # fmt: skip
def test_a_file_that_fails_a_check_is_refused(budgets, forge, says):
    forge(budgets)
    with pytest.raises(BudgetUnreadable, match=says):
        read_job_budget(str(budgets), JOB)


@pytest.mark.parametrize("bad_id", ["../etc/passwd", ".hidden", "a/b", "", "x" * 200])
def test_a_bad_job_id_never_touches_a_path(budgets, bad_id):
    with pytest.raises(BudgetUnreadable, match="not a job id"):
        read_job_budget(str(budgets), bad_id)


@pytest.mark.root
def test_a_file_of_another_owner_is_refused(budgets):
    assert os.geteuid() == 0, "needs root to give the file another owner"
    os.chown(write(budgets), 65534, -1)
    with pytest.raises(BudgetUnreadable, match="not owned"):
        read_job_budget(str(budgets), JOB)


def test_the_lower_of_host_and_job_applies_and_is_read_once(tmp_path, budgets):
    book = UsageBook(str(tmp_path / "usage"), 100, budget_dir=str(budgets))
    write(budgets, tokens=40)
    write(budgets, "job_bbbbbbbbbbbb", tokens=500)  # above the host's: the host's applies
    assert book.reserve(JOB, 64) == 40
    assert book.reserve("job_bbbbbbbbbbbb", 64) == 64 and book.budget_of("job_bbbbbbbbbbbb") == 100
    assert book.budget_of("job_cccccccccccc") == 100  # no file: the host default
    # Kept from the first read: a later change to the file is not seen.
    write(budgets, tokens=10**6)
    assert book.budget_of(JOB) == 40
    book.settle(JOB, 40, {"input_tokens": 10, "output_tokens": 30})
    usage = json.loads((tmp_path / "usage" / f"{JOB}.json").read_text())
    assert usage["budget_tokens"] == 40 and usage["budget_exhausted"] is True
    assert book.reserve(JOB, 1) == 0


def test_a_job_budget_applies_without_a_host_default(tmp_path, budgets):
    book = UsageBook(str(tmp_path / "usage"), None, budget_dir=str(budgets))
    assert book.reserve(JOB, 64) == 64  # no budget at all
    book.release(JOB, 64)
    write(budgets, "job_bbbbbbbbbbbb", tokens=20)
    assert book.reserve("job_bbbbbbbbbbbb", 64) == 20


def test_an_unreadable_file_refuses_and_is_read_again_next_time(tmp_path, budgets):
    book = UsageBook(str(tmp_path / "usage"), 100, budget_dir=str(budgets))
    forge_symlink(budgets)
    with pytest.raises(BudgetUnreadable):
        book.reserve(JOB, 64)
    (budgets / f"{JOB}.json").unlink()
    write(budgets, tokens=30)
    assert book.reserve(JOB, 64) == 30


def test_reservations_that_fill_the_budget_do_not_mark_it_exhausted(tmp_path):
    book = UsageBook(str(tmp_path / "usage"), 100)
    assert book.reserve(JOB, 100) == 100
    assert book.reserve(JOB, 10) == 0  # refused while the first call is out
    assert not book.get(JOB).budget_exhausted  # the reaper must not stop the job for it
    book.settle(JOB, 100, {"input_tokens": 5, "output_tokens": 20})
    assert book.reserve(JOB, 10) == 10 and not book.get(JOB).budget_exhausted
