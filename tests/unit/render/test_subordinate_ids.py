"""The firewall's subordinate uid ranges come from /etc/subuid as newuidmap reads it."""

from pathlib import Path

import pytest
from flashpods_devhost.accounts import Account, Accounts, subordinate_ids
from flashpods_devhost.host import DevHost
from flashpods_devhost.pytest_plugin import new_settings

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


@pytest.mark.root  # reads this machine's /etc/subuid for the real job user
def test_the_dev_host_refuses_a_service_user_inside_the_job_users_range():
    # Such a service would be one the job user can become, and the firewall would hold
    # it to the job rules: refused before any table is rendered or loaded.
    job = Account.named("flashpods")
    first, _last = subordinate_ids(job)[0]
    inside = Account("flashpods-api", first + 5, first + 5, Path("/nonexistent"))
    host = DevHost(
        new_settings(
            firewall=True,
            firewall_values={"wg_if": "lo", "laptop_addr": "127.0.0.1", "resolvers": []},
        )
    )
    host._accounts = Accounts(
        podman=job,
        api=inside,
        token=Account.named("flashpods-token"),
        sandbox_group="flashpods",
        sandbox_gid=job.gid,
        separated=True,
    )
    with pytest.raises(RuntimeError, match=rf"flashpods-api \(uid {first + 5}\) is inside"):
        host._load_firewall()
