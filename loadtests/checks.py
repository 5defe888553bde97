"""The load test's answer checks: a load test that only counts HTTP 200s misses wrong answers.

``Checker`` knows what the suite itself wrote (each tenant's policy, the preferences of the
seeded recipients, hence each recipient's zone and quiet hours) and judges every decision
answer against it:

- the body decodes strictly as ``DecisionResponse`` (msgspec: types, required fields);
- it is about the message asked (message_id), a known decision with a coherent shape
  (send/defer: a requested channel and a ``send_at``, a defer later than ``decided_at``,
  before any deadline; suppress: neither) and known reason codes;
- it used the zone the suite set for that recipient, and ``send_at`` is outside every quiet
  window (the policy's and the recipient's own) that applies to the message, on the
  recipient's wall clock;
- a retry of the same ``message_id`` (same body) answers the same decision as the first
  time (only ``replayed`` differs), and every retry is byte-identical to the first retry.

``cap_violations`` is the end-of-run spot check: from a recipient's timeline (what was sent
or reserved), no cap of the policy and no frequency limit of the recipient holds more
messages than its limit in any window (rolling windows: any span shorter than the window;
calendar days: the recipient's local date).

Pure functions of their inputs, so tests/loadtests/test_checks.py can feed forged answers.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from typing import Any
from zoneinfo import ZoneInfo

import msgspec

from api.reasons import REASON_DOCS
from api.schemas import DecisionResponse, Timeline

_decoder = msgspec.json.Decoder(DecisionResponse)
_timeline = msgspec.json.Decoder(Timeline)
_KNOWN_REASONS = frozenset(str(code) for code in REASON_DOCS)
#: the server's clock and the send_at of a "send" may differ by rounding to the second
_SLACK = dt.timedelta(seconds=1)


def _minutes(hhmm: str) -> int:
    hours, minutes = hhmm.split(":")
    return int(hours) * 60 + int(minutes)


def in_window(local: dt.datetime, start: str, end: str) -> bool:
    """Is the wall-clock time ``local`` inside [start, end) (wrapping midnight)?"""
    now = local.hour * 60 + local.minute
    lo, hi = _minutes(start), _minutes(end)
    return lo <= now < hi if lo <= hi else now >= lo or now < hi


class Recipient(msgspec.Struct, frozen=True):
    """What the suite set for one recipient: their zone and own quiet windows and limits."""

    zone: str
    quiet_hours: list[dict[str, Any]] = []
    frequency_limits: list[dict[str, Any]] = []


class Checker:
    """Judges answers for the tenants the suite seeded (``policies``: tenant -> policy
    document; ``recipients``: tenant -> user id -> what its preferences say)."""

    def __init__(self, policies: Mapping[str, Mapping[str, Any]],
                 recipients: Mapping[str, Mapping[str, Recipient]]) -> None:
        self.policies = policies
        self.recipients = recipients
        #: (tenant, message_id) -> (first answer, first retry's raw bytes or None)
        self._first: dict[tuple[str, str], tuple[DecisionResponse, bytes | None]] = {}

    def recipient(self, tenant: str, user_id: str) -> Recipient:
        found = self.recipients.get(tenant, {}).get(user_id)
        if found is not None:
            return found
        return Recipient(zone=str(self.policies[tenant].get("default_timezone", "UTC")))

    def exempt(self, tenant: str, category: str) -> bool:
        return category in self.policies[tenant].get("exempt_categories", ["transactional"])

    def check_decision(self, tenant: str, body: Mapping[str, Any], raw: bytes,
                       *, retry: bool = False) -> str | None:
        """The first problem with answer ``raw`` to request ``body``, or None if it is right."""
        try:
            answer = _decoder.decode(raw)
        except msgspec.DecodeError as exc:  # ValidationError is a DecodeError
            return f"not a valid DecisionResponse: {exc}"
        problem = self._shape(body, answer) or self._quiet(tenant, body, answer)
        if problem is None:
            problem = self._retry(tenant, body, answer, raw, retry)
        return problem

    def _shape(self, body: Mapping[str, Any], answer: DecisionResponse) -> str | None:
        if answer.message_id != body["message_id"]:
            return f"answer is for message {answer.message_id!r}, not {body['message_id']!r}"
        unknown = {r.code for r in answer.reasons} - _KNOWN_REASONS
        if unknown:
            return f"unknown reason codes {sorted(unknown)}"
        if answer.decision == "suppress":
            if answer.channel is not None or answer.send_at is not None:
                return "a suppress answer carries a channel or send_at"
            return None
        if answer.channel not in body["channels"] or answer.send_at is None:
            return f"{answer.decision}: channel {answer.channel!r} not requested or no send_at"
        if answer.decision == "send" and answer.send_at > answer.decided_at + _SLACK:
            return f"send with send_at {answer.send_at} after decided_at {answer.decided_at}"
        if answer.decision == "defer" and answer.send_at <= answer.decided_at:
            return f"defer with send_at {answer.send_at} not after decided_at {answer.decided_at}"
        deadline = body.get("deadline")
        if deadline and answer.send_at > dt.datetime.fromisoformat(deadline) + _SLACK:
            return f"send_at {answer.send_at} after the deadline {deadline}"
        return None

    def _quiet(self, tenant: str, body: Mapping[str, Any],
               answer: DecisionResponse) -> str | None:
        who = self.recipient(tenant, body["user_id"])
        if answer.timezone != who.zone:
            return f"decided in zone {answer.timezone}, the recipient's is {who.zone}"
        category = body.get("category", "promotional")
        if answer.send_at is None or self.exempt(tenant, category):
            return None
        local = answer.send_at.astimezone(ZoneInfo(who.zone))
        for rule in self.policies[tenant].get("quiet_hours", []):
            if rule.get("weekdays") is not None:
                continue  # not used by the suite's policies; not modelled here
            if rule.get("channels") and answer.channel not in rule["channels"]:
                continue
            if rule.get("categories") and category not in rule["categories"]:
                continue
            if in_window(local, rule["start"], rule["end"]):
                return (f"send_at {local.isoformat()} is in quiet hours {rule['id']} "
                        f"({rule['start']}-{rule['end']} {who.zone})")
        for window in who.quiet_hours:
            if in_window(local, window["start"], window["end"]):
                return (f"send_at {local.isoformat()} is in the recipient's own quiet hours "
                        f"({window['start']}-{window['end']} {who.zone})")
        return None

    def _retry(self, tenant: str, body: Mapping[str, Any], answer: DecisionResponse,
               raw: bytes, retry: bool) -> str | None:
        key = (tenant, body["message_id"])
        if not retry:
            self._first.setdefault(key, (answer, None))
            return None
        first, first_retry = self._first.get(key, (None, None))
        if first is None:
            return None  # the original answer was not seen by this process
        if msgspec.structs.replace(answer, replayed=False) != first:
            return (f"retry answered {answer.decision}/{answer.send_at}, "
                    f"first {first.decision}/{first.send_at}")
        if not answer.replayed:
            return "a retry's answer is not marked replayed"
        if first_retry is None:
            self._first[key] = (first, raw)
        elif raw != first_retry:
            return "two retries of the same message are not byte-identical"
        return None


def _in_scope(entry: Mapping[str, Any], scope: Mapping[str, Any]) -> bool:
    return ((not scope.get("channels") or entry["channel"] in scope["channels"])
            and (not scope.get("categories") or entry["category"] in scope["categories"]))


def _rolling_excess(instants: Sequence[dt.datetime], limit: int, minutes: int) -> str | None:
    ordered = sorted(instants)
    span = dt.timedelta(minutes=minutes)
    for i, first in enumerate(ordered):
        inside = [t for t in ordered[i:] if t - first < span]
        if len(inside) > limit:
            return f"{len(inside)} messages within {minutes} min from {first.isoformat()}"
    return None


def _calendar_excess(entries: Sequence[Mapping[str, Any]], limit: int, calendar: str,
                     zone: ZoneInfo) -> str | None:
    counts: dict[tuple[int, int, int], int] = {}
    for entry in entries:
        day = dt.datetime.fromisoformat(entry["send_at"]).astimezone(zone).date()
        bucket = (day.year, day.isocalendar()[1], 0) if calendar == "week" else (
            day.year, day.month, day.day)
        counts[bucket] = counts.get(bucket, 0) + 1
    worst = max(counts.items(), key=lambda kv: kv[1], default=None)
    if worst is not None and worst[1] > limit:
        return f"{worst[1]} messages in calendar {calendar} {worst[0]}"
    return None


def cap_violations(policy: Mapping[str, Any], recipient: Recipient,
                   timeline: Mapping[str, Any]) -> list[str]:
    """Every cap (policy caps, the recipient's frequency limits) a timeline exceeds."""
    exempt = set(policy.get("exempt_categories", ["transactional"]))
    counted = [e for e in timeline["entries"] if e["category"] not in exempt]
    zone = ZoneInfo(recipient.zone)
    rules = [(str(cap["id"]), cap, cap.get("scope", {})) for cap in policy.get("caps", [])]
    rules += [(f"preferences.frequency_limits[{i}]", limit, limit)
              for i, limit in enumerate(recipient.frequency_limits)]
    problems: list[str] = []
    for name, rule, scope in rules:
        entries = [e for e in counted if _in_scope(e, scope)]
        if rule.get("calendar"):
            excess = _calendar_excess(entries, rule["limit"], rule["calendar"], zone)
        else:
            excess = _rolling_excess([dt.datetime.fromisoformat(e["send_at"]) for e in entries],
                                     rule["limit"], rule["window_minutes"])
        if excess:
            problems.append(f"{timeline['user_id']}: cap {name} (limit {rule['limit']}): {excess}")
    return problems


def decode_timeline(raw: bytes) -> dict[str, Any]:
    """A timeline answer, validated as ``Timeline`` then as plain JSON for the checks."""
    _timeline.decode(raw)
    value: dict[str, Any] = msgspec.json.decode(raw)
    return value
