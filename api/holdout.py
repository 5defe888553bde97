"""Holdout groups: recipients kept out of promotional messages so their outcomes show what
the messages (and sendwise's timing and capping) are worth.

Two kinds, both in the tenant policy (``holdout``):

* the **global control group**: ``global_percent`` % of recipients get no non-exempt
  message at all;
* **per-campaign holdouts**: ``campaigns[id]`` % of a campaign's recipients get none of that
  campaign's messages.

Membership is a pure function of (salt, tenant, user id, scope): a keyed hash mapped to a
uniform number in [0, 1), compared with the percentage. It needs no storage and no round
trip, a retry or another worker answers the same, and it does not depend on the message,
channel, time or anything the platform could influence, so the held-out group is a random
sample of the same population as the treated one (the uplift it shows cannot be gamed).
The campaign scope enters the hash, so a campaign's holdout is drawn independently of the
global group and of every other campaign's. Changing the salt redraws every group; raising
a percentage only adds members (a recipient's number does not change), lowering one only
releases some.

Exempt categories (transactional by default) are never held out: a password reset is not an
experiment. ``training/uplift.py`` reads what this decides from the decision log.
"""

from __future__ import annotations

import hashlib
from typing import Annotated

import msgspec
from msgspec import Meta

from api.schemas import Id

Percent = Annotated[float, Meta(ge=0.0, le=100.0)]
#: the ``rule`` a held-out decision cites: the policy field that put the recipient out
GLOBAL_RULE = "policy.holdout.global_percent"
CAMPAIGN_RULE_PREFIX = "policy.holdout.campaigns."
GLOBAL = "global"
CAMPAIGN = "campaign"

_pack = msgspec.msgpack.Encoder()


class HoldoutSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The policy's ``holdout`` field (absent: nobody is held out)."""

    #: keys the hash; a new salt draws new groups (so keep it while an experiment runs)
    salt: Annotated[str, Meta(min_length=1, max_length=128)]
    #: share of all recipients held out of every non-exempt message
    global_percent: Percent = 0.0
    #: campaign id -> share (0-100) of that campaign's recipients held out of its messages
    #: (keys and values checked by ``validate_holdout``, which names the campaign)
    campaigns: Annotated[dict[str, float], Meta(max_length=1000)] = {}


def validate_holdout(settings: HoldoutSettings) -> tuple[str, str] | None:
    """(field path, message) of the first invalid campaign entry, or None. Done here rather
    than by msgspec so the error names the campaign (``holdout.campaigns.spring-sale``)."""
    for campaign, percent in settings.campaigns.items():
        try:
            msgspec.convert(campaign, Id)
        except msgspec.ValidationError:
            return ("holdout.campaigns", f"invalid campaign id {campaign!r} (1-128 characters, "
                    "no control characters)")
        if not 0.0 <= percent <= 100.0:
            return f"holdout.campaigns.{campaign}", f"must be a percentage in [0, 100], got {percent}"
    return None


def unit(salt: str, tenant: str, user_id: str, scope: str) -> float:
    """A uniform number in [0, 1) fixed by (salt, tenant, user, scope). The fields are
    MessagePack-encoded before hashing, so no id can be chosen to collide with another
    field boundary; sha256 keeps it unpredictable without the salt."""
    digest = hashlib.sha256(_pack.encode(["sendwise-holdout-v1", salt, tenant, user_id, scope]))
    return int.from_bytes(digest.digest()[:8], "big") / 2**64


def campaign_scope(campaign_id: str) -> str:
    return f"campaign:{campaign_id}"


def in_global_group(settings: HoldoutSettings, tenant: str, user_id: str) -> bool:
    return (settings.global_percent > 0
            and unit(settings.salt, tenant, user_id, GLOBAL) * 100.0 < settings.global_percent)


def in_campaign_holdout(settings: HoldoutSettings, tenant: str, user_id: str,
                        campaign_id: str) -> bool:
    percent = settings.campaigns.get(campaign_id, 0.0)
    return (percent > 0 and
            unit(settings.salt, tenant, user_id, campaign_scope(campaign_id)) * 100.0 < percent)


def held_out_rule(settings: HoldoutSettings | None, *, tenant: str, user_id: str,
                  campaign_id: str | None, exempt: bool) -> str | None:
    """The rule that holds this message back, or None to decide it normally. The global
    group is checked first, so a member of both is reported as global."""
    if settings is None or exempt:
        return None
    if in_global_group(settings, tenant, user_id):
        return GLOBAL_RULE
    if campaign_id and in_campaign_holdout(settings, tenant, user_id, campaign_id):
        return CAMPAIGN_RULE_PREFIX + campaign_id
    return None


def group_of_rule(rule: str) -> str:
    """``global`` / ``campaign`` for a holdout reason's rule (the decision log's field)."""
    return GLOBAL if rule == GLOBAL_RULE else CAMPAIGN
