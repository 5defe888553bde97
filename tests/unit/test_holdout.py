"""api/holdout.py and the holdout pre-check: stable keyed membership, the promised
proportions, independence from everything but the recipient, exempt categories never held
out, and a policy field validated with errors naming the field path."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from api.errors import field_from_msgspec
from api.holdout import (
    CAMPAIGN_RULE_PREFIX,
    GLOBAL_RULE,
    HoldoutSettings,
    group_of_rule,
    in_campaign_holdout,
    in_global_group,
    unit,
)
from api.plan import PreReason, pre_checks
from api.policy import Policy, PolicyInvalidError, validate_policy
from api.reasons import REASON_DOCS, ReasonCode
from api.schemas import Preferences
from tests.unit.test_plan import NOON, request, state

USERS = 100_000


def policy(**holdout: Any) -> Policy:
    return msgspec.convert({"holdout": {"salt": "s1", **holdout}}, Policy)


def test_unit_is_stable_across_processes_and_releases() -> None:
    """Pinned values: a change of the hash would silently reshuffle every running
    experiment, so it must show up here first."""
    assert unit("s", "acme", "u1", "global") == pytest.approx(0.8368676658648356, abs=0)
    assert unit("s", "acme", "u1", "campaign:c") == pytest.approx(0.4695811794003109, abs=0)


def test_every_input_of_the_hash_matters() -> None:
    base = unit("s", "acme", "u1", "global")
    assert len({base, unit("t", "acme", "u1", "global"), unit("s", "beta", "u1", "global"),
                unit("s", "acme", "u2", "global"), unit("s", "acme", "u1", "campaign:c")}) == 5
    # field boundaries cannot be shifted to collide
    assert unit("ab", "c", "u", "global") != unit("a", "bc", "u", "global")


def test_proportions_on_100k_users() -> None:
    """5 % global, 10 % campaign: each within 5 binomial standard deviations, and the two
    groups independent (the campaign's share inside the global group is still 10 %)."""
    holdout = HoldoutSettings(salt="s1", global_percent=5.0, campaigns={"spring": 10.0})
    users = [f"user-{i}" for i in range(USERS)]
    in_global = [in_global_group(holdout, "acme", u) for u in users]
    in_campaign = [in_campaign_holdout(holdout, "acme", u, "spring") for u in users]
    assert abs(sum(in_global) - 5_000) < 5 * (USERS * 0.05 * 0.95) ** 0.5
    assert abs(sum(in_campaign) - 10_000) < 5 * (USERS * 0.10 * 0.90) ** 0.5
    both = sum(g and c for g, c in zip(in_global, in_campaign, strict=True))
    assert abs(both - 500) < 5 * (USERS * 0.005 * 0.995) ** 0.5
    # another campaign's holdout is drawn independently of this one
    other = [in_campaign_holdout(HoldoutSettings(salt="s1", campaigns={"fall": 10.0}),
                                 "acme", u, "fall") for u in users]
    overlap = sum(a and b for a, b in zip(in_campaign, other, strict=True))
    assert abs(overlap - 1_000) < 5 * (USERS * 0.01 * 0.99) ** 0.5


def test_raising_a_percentage_only_adds_members() -> None:
    users = [f"user-{i}" for i in range(2_000)]
    small = {u for u in users if in_global_group(HoldoutSettings(salt="s", global_percent=5),
                                                  "t", u)}
    large = {u for u in users if in_global_group(HoldoutSettings(salt="s", global_percent=20),
                                                  "t", u)}
    assert small < large
    reshuffled = {u for u in users
                  if in_global_group(HoldoutSettings(salt="new", global_percent=5), "t", u)}
    assert reshuffled != small  # a new salt draws a new group


requests = st.fixed_dictionaries({
    "message_id": st.text(st.characters(min_codepoint=33, max_codepoint=126), min_size=1,
                          max_size=20),
    "channels": st.lists(st.sampled_from(["email", "sms", "push", "in_app"]), min_size=1,
                         max_size=4, unique=True),
    "tags": st.lists(st.sampled_from(["a", "b", "sale"]), max_size=3, unique=True),
    "priority": st.integers(0, 10),
    "timezone": st.sampled_from(["America/New_York", "Europe/Paris", "Asia/Tokyo"]),
    "dry_run": st.booleans(),
})


@settings(max_examples=200, deadline=None)
@given(user=st.integers(0, 10_000), fields=requests, now=st.integers(0, 2**41))
def test_membership_depends_on_the_recipient_alone(user: int, fields: dict[str, Any],
                                                   now: int) -> None:
    """Message, channels, tags, time zone, priority, dry run and the clock change nothing:
    a recipient is held out of every message of the campaign or of none."""
    pol = policy(global_percent=20.0, campaigns={"spring": 30.0})
    first = pre_checks(request(user_id=f"u{user}", campaign_id="spring"), pol, state(), NOON,
                       tenant="acme")
    other = pre_checks(request(user_id=f"u{user}", campaign_id="spring", **fields), pol,
                       state(), now, tenant="acme")
    held = [r for r in first[1] if r.code == ReasonCode.HOLDOUT]
    assert held == [r for r in other[1] if r.code == ReasonCode.HOLDOUT]
    expected = (GLOBAL_RULE if in_global_group(pol.holdout, "acme", f"u{user}")  # type: ignore[arg-type]
                else CAMPAIGN_RULE_PREFIX + "spring"
                if in_campaign_holdout(pol.holdout, "acme", f"u{user}", "spring")  # type: ignore[arg-type]
                else None)
    assert [r.rule for r in held] == ([] if expected is None else [expected])


def _held_user(pol: Policy, campaign: str | None = None) -> str:
    return next(f"u{i}" for i in range(1000)
                if pre_checks(request(user_id=f"u{i}", campaign_id=campaign), pol, state(),
                              NOON, tenant="acme")[1][:1]
                and pre_checks(request(user_id=f"u{i}", campaign_id=campaign), pol, state(),
                               NOON, tenant="acme")[1][0].code == ReasonCode.HOLDOUT)


def test_a_held_out_message_is_suppressed_before_anything_else() -> None:
    """The holdout comes first: a held-out recipient who also opted out of the topic is
    reported as held out, so the held-out group is a sample of everyone asked about."""
    pol = policy(global_percent=50.0)
    user = _held_user(pol)
    opted_out = state(Preferences(topic_opt_outs=["promotional"]))
    assert pre_checks(request(user_id=user), pol, opted_out, NOON, tenant="acme") == (
        [], [PreReason(ReasonCode.HOLDOUT, GLOBAL_RULE)], True)


def test_campaign_holdout_applies_to_its_campaign_only() -> None:
    pol = policy(campaigns={"spring": 50.0})
    user = _held_user(pol, "spring")
    assert pre_checks(request(user_id=user, campaign_id="spring"), pol, state(), NOON,
                      tenant="acme") == ([], [PreReason("holdout", "policy.holdout.campaigns.spring")],
                                         True)
    for campaign in ("fall", None):
        assert pre_checks(request(user_id=user, campaign_id=campaign), pol, state(), NOON,
                          tenant="acme") == (["email"], [], False)


@pytest.mark.parametrize("category", ["transactional", "receipts"])
def test_exempt_categories_are_never_held_out(category: str) -> None:
    pol = msgspec.convert({"categories": ["transactional", "promotional", "receipts"],
                           "exempt_categories": ["transactional", "receipts"],
                           "holdout": {"salt": "s", "global_percent": 100.0,
                                       "campaigns": {"c": 100.0}}}, Policy)
    validate_policy(pol)
    for i in range(200):
        permitted, reasons, suppressed = pre_checks(
            request(user_id=f"u{i}", category=category, campaign_id="c"), pol, state(), NOON,
            tenant="acme")
        assert (permitted, reasons, suppressed) == (["email"], [], False)
    held = pre_checks(request(category="promotional"), pol, state(), NOON, tenant="acme")
    assert held[1] == [PreReason("holdout", GLOBAL_RULE)]


def test_no_holdout_by_default_and_at_zero_percent() -> None:
    assert Policy().holdout is None
    zero = policy(global_percent=0.0, campaigns={"c": 0.0})
    for i in range(200):
        assert pre_checks(request(user_id=f"u{i}", campaign_id="c"), zero, state(), NOON,
                          tenant="acme")[2] is False


def test_a_merged_id_takes_the_membership_of_the_id_it_was_merged_into() -> None:
    """The engine passes the person's current id (``user_id``), not the request's."""
    pol = policy(global_percent=50.0)
    held = _held_user(pol)
    free = next(f"u{i}" for i in range(1000) if not in_global_group(pol.holdout, "acme",  # type: ignore[arg-type]
                                                                       f"u{i}"))
    assert pre_checks(request(user_id=free), pol, state(), NOON, tenant="acme",
                      user_id=held)[2] is True
    assert pre_checks(request(user_id=held), pol, state(), NOON, tenant="acme",
                      user_id=free)[2] is False


def test_group_of_rule() -> None:
    assert group_of_rule(GLOBAL_RULE) == "global"
    assert group_of_rule(CAMPAIGN_RULE_PREFIX + "x") == "campaign"
    assert ReasonCode.HOLDOUT in REASON_DOCS


@pytest.mark.parametrize(("holdout", "field"), [
    ({"global_percent": 5.0}, "holdout.salt"),
    ({"salt": "", "global_percent": 5.0}, "holdout.salt"),
    ({"salt": "s", "global_percent": 100.5}, "holdout.global_percent"),
    ({"salt": "s", "global_percent": -1}, "holdout.global_percent"),
    ({"salt": "s", "global_percent": "5"}, "holdout.global_percent"),
    ({"salt": "s", "campaigns": {"spring": "x"}}, "holdout.campaigns[...]"),
    ({"salt": "s", "percent": 5}, "holdout.percent"),
])
def test_structural_errors_name_the_field(holdout: dict[str, Any], field: str) -> None:
    with pytest.raises(msgspec.ValidationError) as info:
        msgspec.convert({"holdout": holdout}, Policy)
    assert field_from_msgspec(str(info.value))[1] == field


@pytest.mark.parametrize(("campaigns", "field"), [
    ({"spring-sale": 150.0}, "holdout.campaigns.spring-sale"),
    ({"spring-sale": -0.5}, "holdout.campaigns.spring-sale"),
    ({"": 5.0}, "holdout.campaigns"),
    ({"x" * 129: 5.0}, "holdout.campaigns"),
])
def test_campaign_errors_name_the_campaign(campaigns: dict[str, float], field: str) -> None:
    pol = policy(campaigns=campaigns)
    with pytest.raises(PolicyInvalidError) as info:
        validate_policy(pol)
    assert info.value.field == field
