"""SPIFFE IDs of jobs: the role is the kind, spelled sub_agent (issue 17)."""

from __future__ import annotations

import pytest
from flashpods_token.identity import IdentityError, identity_for_kind, parse_spiffe_id

TD = "flashpods.internal"


@pytest.mark.parametrize("kind", ["worker", "sub_agent"])
def test_a_job_identity_ends_in_its_kind_and_parses_back(kind):
    made = identity_for_kind(TD, "job_abc", kind)
    assert made.spiffe_id == f"spiffe://{TD}/job/job_abc/{kind}" and made.role == kind
    assert parse_spiffe_id(TD, made.spiffe_id) == made


@pytest.mark.parametrize("old", ["agent", "subagent", "sub-agent", "subAgent"])
def test_an_old_sub_agent_path_is_refused_naming_the_new(old):
    with pytest.raises(IdentityError, match=f"ends in /{old}, an old name .*/sub_agent"):
        parse_spiffe_id(TD, f"spiffe://{TD}/job/job_abc/{old}")


@pytest.mark.parametrize("old", ["agent", "subagent"])
def test_an_old_kind_label_gives_no_identity(old):
    with pytest.raises(IdentityError, match="worker or sub_agent"):
        identity_for_kind(TD, "job_abc", old)
