"""The closed set of reason codes a decision can carry: the one source of truth.

Codes are stable API: clients branch on them, dashboards count them. Add codes, never
rename them. ``REASON_DOCS`` is what the README and ``GET /v1/reason-codes`` publish.
"""

from __future__ import annotations

from enum import StrEnum


class ReasonCode(StrEnum):
    FREQUENCY_CAP = "frequency_cap"
    USER_FREQUENCY_LIMIT = "user_frequency_limit"
    JURISDICTION_CAP = "jurisdiction_cap"
    QUIET_HOURS = "quiet_hours"
    USER_QUIET_HOURS = "user_quiet_hours"
    JURISDICTION_WINDOW = "jurisdiction_window"
    NOT_BEFORE = "not_before"
    CONFLICTING_OFFER = "conflicting_offer"
    DUPLICATE_OFFER = "duplicate_offer"
    NO_CONSENT = "no_consent"
    OPT_IN_REQUIRED = "opt_in_required"
    TOPIC_OPTED_OUT = "topic_opted_out"
    ALREADY_CONVERTED = "already_converted"
    DEADLINE_EXCEEDED = "deadline_exceeded"
    MAX_DEFER_EXCEEDED = "max_defer_exceeded"
    NO_CHANNEL_AVAILABLE = "no_channel_available"
    POLICY_STORE_UNAVAILABLE = "policy_store_unavailable"
    BETTER_SEND_TIME = "better_send_time"
    EXPLORATION = "exploration"
    HOLDOUT = "holdout"
    PREEMPTED = "preempted"
    CHANNEL_PACING = "channel_pacing"
    LOW_EXPECTED_VALUE = "low_expected_value"


REASON_DOCS: dict[ReasonCode, str] = {
    ReasonCode.FREQUENCY_CAP: "A policy frequency cap is full; `until` is when it frees.",
    ReasonCode.USER_FREQUENCY_LIMIT: "The recipient's own frequency limit is reached; `until` is "
    "when it frees.",
    ReasonCode.JURISDICTION_CAP: "A jurisdiction pack's message cap (e.g. Florida's 3 per 24 h) "
    "is reached; `rule` names the pack and version.",
    ReasonCode.QUIET_HOURS: "The instant falls in the policy's quiet hours in the recipient's "
    "local time; `until` is when they end.",
    ReasonCode.USER_QUIET_HOURS: "The instant falls in the recipient's own quiet hours.",
    ReasonCode.JURISDICTION_WINDOW: "A jurisdiction pack forbids sending then (hours, weekday "
    "or public holiday); `rule` names the pack and version.",
    ReasonCode.NOT_BEFORE: "The request's `not_before` is later than now.",
    ReasonCode.CONFLICTING_OFFER: "The recipient holds another offer of the same conflict "
    "group inside the group's window; `until` is when it expires.",
    ReasonCode.DUPLICATE_OFFER: "The same offer was already sent or reserved (on any channel) "
    "inside the conflict window.",
    ReasonCode.NO_CONSENT: "The recipient opted out of this channel (preferences or an "
    "`unsubscribed`/`complained` event).",
    ReasonCode.OPT_IN_REQUIRED: "The channel needs an explicit recorded opt-in (policy "
    "`opt_in_only_channels`, default WhatsApp) and there is none.",
    ReasonCode.TOPIC_OPTED_OUT: "The recipient opted out of a topic the message carries (its "
    "category or one of its tags).",
    ReasonCode.ALREADY_CONVERTED: "A `converted` event was recorded for this campaign; further "
    "messages of the campaign are suppressed until `until`.",
    ReasonCode.DEADLINE_EXCEEDED: "No allowed instant exists before the request's `deadline`.",
    ReasonCode.MAX_DEFER_EXCEEDED: "No allowed instant exists within the policy's "
    "`max_defer_minutes` (the request had no deadline).",
    ReasonCode.NO_CHANNEL_AVAILABLE: "None of the requested channels is permitted.",
    ReasonCode.POLICY_STORE_UNAVAILABLE: "Redis could not be reached; this is the documented "
    "fallback decision (transactional: send, others: defer), nothing was reserved.",
    ReasonCode.BETTER_SEND_TIME: "The model (or the heuristic, see `model_version`) expects "
    "more engagement at the chosen later slot than now, by more than the policy's "
    "`send_time.margin`; `rule` names the model version.",
    ReasonCode.EXPLORATION: "This message was picked for exploration (policy "
    "`send_time.exploration_rate`): a random allowed slot, so the logs keep showing how "
    "other hours do; `propensity` is the chance it had.",
    ReasonCode.HOLDOUT: "The recipient is in a holdout group (policy `holdout`): the global "
    "control group (`rule` `policy.holdout.global_percent`) or this campaign's holdout (`rule` "
    "`policy.holdout.campaigns.<id>`), kept out so `sendwise uplift` can measure what the "
    "messages are worth. Exempt categories are never held out.",
    ReasonCode.PREEMPTED: "A higher-priority message took this reservation's cap slot before "
    "it was due (policy `preemption`); `rule` names the cap. The message was moved to its "
    "next allowed instant (`defer`, the reasons after this one say why then) or, with none "
    "left, suppressed: confirm with `GET /v1/decisions/{id}` before sending.",
    ReasonCode.CHANNEL_PACING: "The tenant's send rate on this channel (policy `pacing`) is "
    "used up at the instant the recipient's rules allowed; `rule` names the limit "
    "(`pacing.channels.sms.per_second`) and `until` is the first instant with capacity.",
    ReasonCode.LOW_EXPECTED_VALUE: "The message is promotional and its best slot's expected "
    "value (model score x channel value - channel cost - fatigue cost, before caps) is below "
    "the policy's `send_time.min_expected_value`; nothing was reserved. `score` and "
    "`score_now` are that slot's, `model_version` the scorer's. Exempt categories and "
    "explored messages are never suppressed this way.",
}
