"""The firewall's subordinate uid ranges come from /etc/subuid as newuidmap reads it."""

from pathlib import Path

import pytest
from flashpods_devhost.accounts import Account, subordinate_ids

JOB = Account("flashpods", 1001, 1001, Path("/home/flashpods"))


def test_every_line_of_the_user_by_name_or_uid_counts(tmp_path):
    subuid = tmp_path / "subuid"
    subuid.write_text(
        "alice:100000:65536\n"
        "flashpods:165536:65536\n"
        "1001:400000:10\n"  # newuidmap also matches the numeric uid
        "flashpodsx:500000:65536\n"  # another user whose name starts the same
        "flashpods:600000:0\n"  # an empty range grants nothing
        "\n"
    )
    assert subordinate_ids(JOB, subuid) == [(165536, 231071), (400000, 400009)]


def test_a_missing_file_means_no_ranges(tmp_path):
    assert subordinate_ids(JOB, tmp_path / "absent") == []


def test_a_broken_line_of_the_user_is_named(tmp_path):
    subuid = tmp_path / "subuid"
    subuid.write_text("alice:1:2\nflashpods:lots\n")
    with pytest.raises(RuntimeError, match=r"subuid:2 is not 'name:first:count'"):
        subordinate_ids(JOB, subuid)


@pytest.mark.root  # the dev host's users exist where CI runs as root
def test_the_job_user_of_this_machine_has_an_explicit_range():
    ranges = subordinate_ids(Account.named("flashpods"))
    assert ranges, "scripts/lib/users.sh gives the job user a range in /etc/subuid"
