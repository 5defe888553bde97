"""From validated logs to model inputs: one user vocabulary, events, examples, rows.

Two kinds of examples, depending on what the platform has:

* **message log** (with or without activity): one example per message sent, at its
  ``sent_at`` on its channel; label = the chosen outcome (default: opened) within the
  label window after ``sent_at``. The activity log, when present, only enriches profiles.
* **activity log only** (``day_examples``): one *query* per user and local day with
  activity: the 24 local hours of that day (candidates at hh:30, channel "any", profile
  as of local midnight, exactly the decision serving makes), each labelled with the
  number of events in that hour. A ranking objective (LightGBM ``lambdarank``) learns to
  order one user's hours within their day, which is the decision; a per-instant binary
  "active soon" target mostly learns which users and days are active (``docs/model.md``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from models.features import FEATURES, build_features
from models.priors import Priors
from models.profile import ProfileBatch
from models.timeutil import (
    HOURS_PER_WEEK,
    country_of_zone,
    holiday_flags,
    hour_of_week,
    local_seconds,
    utc_offsets,
    zone,
)
from models.vocab import ANY_CHANNEL, CHANNELS, category_bucket
from training.replay import EventStream, replay_in_chunks
from training.schema import NEVER, ActivityLog, MessageLog

I64 = npt.NDArray[np.int64]
F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]
Bools = npt.NDArray[np.bool_]

#: Which outcome columns count as "engaged" for each label choice (first one wins).
LABELS: dict[str, tuple[str, ...]] = {
    "opened": ("opened_at", "clicked_at", "converted_at"),
    "clicked": ("clicked_at", "converted_at"),
    "converted": ("converted_at",),
}
#: What the profile counts as a message engagement (serving: first open or click).
PROFILE_ENGAGEMENT = LABELS["opened"]


def first_outcome(log: MessageLog, columns: tuple[str, ...]) -> I64:
    """Earliest of the given outcome instants per message (``NEVER`` if none)."""
    big = np.iinfo(np.int64).max
    first = np.full(len(log), big, dtype=np.int64)
    for name in columns:
        values = log.outcomes[name]
        first = np.minimum(first, np.where(values != NEVER, values, big))
    result: I64 = np.where(first == big, NEVER, first)
    return result


class Progress:
    """Timestamped progress lines on long steps (silent when disabled)."""

    def __init__(self, enabled: bool = True, prefix: str = "train") -> None:
        self.enabled = enabled
        self.prefix = prefix
        self.started = time.perf_counter()

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def __call__(self, text: str) -> None:
        if self.enabled:
            print(f"[{self.prefix} {self.elapsed():6.1f}s] {text}", flush=True)

    def fraction(self, what: str) -> Callable[[int, int], None]:
        last = [0.0]

        def report(done: int, total: int) -> None:
            now = time.perf_counter()
            if done == total or now - last[0] > 5:
                last[0] = now
                self(f"{what}: {done}/{total} ({100 * done / max(total, 1):.0f}%)")

        return report


@dataclass
class Logs:
    """Both logs in one user vocabulary (``users``), with a zone per user (the latest)."""

    users: list[str]
    messages: MessageLog | None
    activity: ActivityLog | None
    msg_user: I64 = field(default_factory=lambda: np.zeros(0, np.int64))
    act_user: I64 = field(default_factory=lambda: np.zeros(0, np.int64))
    zones: list[str] = field(default_factory=list)
    msg_zone: I64 = field(default_factory=lambda: np.zeros(0, np.int64))
    act_zone: I64 = field(default_factory=lambda: np.zeros(0, np.int64))
    user_zone: I64 = field(default_factory=lambda: np.zeros(0, np.int64))
    engaged_at: I64 = field(default_factory=lambda: np.zeros(0, np.int64))

    @classmethod
    def combine(cls, messages: MessageLog | None, activity: ActivityLog | None) -> Logs:
        if messages is None and activity is None:
            raise ValueError("need a message log, an activity log, or both")
        index: dict[str, int] = {}
        zone_index: dict[str, int] = {}

        def recode(names: list[str], codes: I64, table: dict[str, int]) -> I64:
            mapping = np.array([table.setdefault(n, len(table)) for n in names], np.int64)
            result: I64 = mapping[codes] if codes.size else np.zeros(0, np.int64)
            return result

        logs = cls(users=[], messages=messages, activity=activity)
        last_at: list[I64] = []
        all_users: list[I64] = []
        all_zones: list[I64] = []
        if messages is not None:
            logs.msg_user = recode(messages.users, messages.user, index)
            logs.msg_zone = recode(messages.zones, messages.zone, zone_index)
            logs.engaged_at = first_outcome(messages, PROFILE_ENGAGEMENT)
            last_at.append(messages.sent_at)
            all_users.append(logs.msg_user)
            all_zones.append(logs.msg_zone)
        if activity is not None:
            logs.act_user = recode(activity.users, activity.user, index)
            logs.act_zone = recode(activity.zones, activity.zone, zone_index)
            last_at.append(activity.occurred_at)
            all_users.append(logs.act_user)
            all_zones.append(logs.act_zone)
        logs.users = list(index)
        logs.zones = list(zone_index)
        users, at, zones = (np.concatenate(x) for x in (all_users, last_at, all_zones))
        order = np.lexsort((at, users))
        logs.user_zone = np.zeros(len(logs.users), dtype=np.int64)
        logs.user_zone[users[order]] = zones[order]  # the last write per user wins
        return logs

    def span(self) -> tuple[int, int]:
        """First and last logged instant."""
        instants = []
        if self.messages is not None:
            instants.append(self.messages.sent_at)
        if self.activity is not None:
            instants.append(self.activity.occurred_at)
        joined = np.concatenate(instants)
        return int(joined.min()), int(joined.max())

    def stream(self, before: int | None = None) -> EventStream:
        """All events as profile updates (optionally only those before ``before``)."""
        limit = np.iinfo(np.int64).max if before is None else before
        empty = np.zeros(0, dtype=np.int64)
        send = (empty, empty, empty)
        engagement = (empty, empty, empty, empty)
        activity = (empty, empty, empty)
        if self.messages is not None:
            m = self.messages
            sent = m.sent_at < limit
            send = (self.msg_user[sent], m.sent_at[sent], m.channel[sent])
            engaged = (self.engaged_at != NEVER) & (self.engaged_at < limit)
            how = hour_of_week(localize(self.zones, self.msg_zone[engaged],
                                        self.engaged_at[engaged]))
            engagement = (self.msg_user[engaged], self.engaged_at[engaged],
                          m.channel[engaged], how)
        if self.activity is not None:
            a = self.activity
            keep = a.occurred_at < limit
            how = hour_of_week(localize(self.zones, self.act_zone[keep], a.occurred_at[keep]))
            activity = (self.act_user[keep], a.occurred_at[keep], how)
        return EventStream.build(send=send, engagement=engagement, activity=activity)


def localize(zones: list[str], zone_code: I64, instants: I64) -> I64:
    """Local wall-clock seconds of each instant in its row's zone."""
    local = np.empty_like(instants)
    for code in np.unique(zone_code):
        rows = np.flatnonzero(zone_code == code)
        local[rows] = local_seconds(zone(zones[int(code)]), instants[rows])
    return local


def holidays_of(zones: list[str], zone_code: I64, local: I64) -> Bools:
    flags = np.zeros(local.shape, dtype=np.bool_)
    for code in np.unique(zone_code):
        rows = np.flatnonzero(zone_code == code)
        flags[rows] = holiday_flags(country_of_zone(zones[int(code)]), local[rows])
    return flags


def local_to_utc(zones: list[str], zone_code: I64, local: I64) -> I64:
    """Inverse of ``localize`` (a skipped local time maps to the instant after the gap)."""
    utc = np.empty_like(local)
    for code in np.unique(zone_code):
        rows = np.flatnonzero(zone_code == code)
        tz = zone(zones[int(code)])
        guess = local[rows] - utc_offsets(tz, local[rows])
        utc[rows] = local[rows] - utc_offsets(tz, guess)
    return utc


@dataclass
class Candidates:
    """Rows to build: candidate ``j`` is scored with the profile of snapshot ``snapshot[j]``.

    Snapshots are (user, instant) pairs: the user's profile from events strictly before
    the instant, evaluated at that instant. Training has one candidate per snapshot;
    evaluation and ranking share one snapshot among 24+ candidates.
    """

    snap_user: I64
    snap_at: I64
    snapshot: I64
    instant: I64
    channel: I64
    category: I64
    zone: I64

    def __len__(self) -> int:
        return int(self.instant.shape[0])


def featurize(logs: Logs, stream: EventStream, candidates: Candidates, priors: Priors,
              progress: Progress | None = None) -> F32:
    """Feature rows (``models.features.FEATURES``) for every candidate."""
    n = len(candidates)
    rows = np.empty((n, len(FEATURES)), dtype=np.float32)
    local = localize(logs.zones, candidates.zone, candidates.instant)
    holiday = holidays_of(logs.zones, candidates.zone, local)
    order = np.argsort(candidates.snapshot, kind="stable")
    sorted_snap = candidates.snapshot[order]

    def consume(snap_ids: npt.NDArray[np.intp], profiles: ProfileBatch) -> None:
        position = np.empty(int(candidates.snap_user.shape[0]), dtype=np.int64)
        position[snap_ids] = np.arange(snap_ids.size)
        lo = np.searchsorted(sorted_snap, snap_ids, "left")
        hi = np.searchsorted(sorted_snap, snap_ids, "right")
        cand = np.concatenate([order[a:b] for a, b in zip(lo.tolist(), hi.tolist(),
                                                          strict=True)])
        if cand.size == 0:
            return
        rows[cand] = build_features(
            profiles, now=candidates.snap_at[snap_ids],
            profile_index=position[candidates.snapshot[cand]],
            channel=candidates.channel[cand], instant=candidates.instant[cand],
            local=local[cand], holiday=holiday[cand], category=candidates.category[cand],
            priors=priors)

    replay_in_chunks(stream, candidates.snap_user, candidates.snap_at, consume,
                     progress=progress.fraction("replaying profiles") if progress else None)
    return rows


# -- examples ------------------------------------------------------------------------------
@dataclass
class Examples:
    candidates: Candidates
    label: npt.NDArray[np.int8]
    propensity: F64


def message_examples(logs: Logs, label: str, window: int, end: int) -> Examples:
    """One example per message sent at least ``window`` before ``end`` (uncensored)."""
    m = logs.messages
    if m is None:
        raise ValueError("no message log")
    labelled = first_outcome(m, LABELS[label])
    keep = np.flatnonzero(m.sent_at + window <= end)
    sent = m.sent_at[keep]
    hit = (labelled[keep] != NEVER) & (labelled[keep] - sent <= window)
    buckets = np.array([category_bucket(c) for c in m.category], dtype=np.int64)[keep] \
        if m.category else np.zeros(keep.size, np.int64)
    n = keep.size
    return Examples(
        candidates=Candidates(snap_user=logs.msg_user[keep], snap_at=sent,
                              snapshot=np.arange(n, dtype=np.int64), instant=sent,
                              channel=m.channel[keep], category=buckets,
                              zone=logs.msg_zone[keep]),
        label=hit.astype(np.int8), propensity=m.propensity[keep])


def day_slots(logs: Logs, user: I64, zone_code: I64, day_start_local: I64) -> Candidates:
    """The 24 hh:30 candidates of each (user, local day), profiles as of local midnight."""
    n = int(user.shape[0])
    snap_at = local_to_utc(logs.zones, zone_code, day_start_local)
    slots = (day_start_local[:, None] + np.arange(24)[None, :] * 3600 + 1800).ravel()
    rep_zone = np.repeat(zone_code, 24)
    return Candidates(snap_user=user, snap_at=snap_at,
                      snapshot=np.repeat(np.arange(n, dtype=np.int64), 24),
                      instant=local_to_utc(logs.zones, rep_zone, slots),
                      channel=np.full(n * 24, ANY_CHANNEL, np.int64),
                      category=np.zeros(n * 24, np.int64), zone=rep_zone)


@dataclass
class DayExamples:
    """One query per (user, local day): ``candidates`` has 24 rows per day, in hour order."""

    candidates: Candidates
    label: npt.NDArray[np.int8]      # events in that local hour, capped at MAX_RELEVANCE
    day_start: I64                   # UTC instant of each day's local midnight

    def __len__(self) -> int:
        return int(self.day_start.shape[0])


MAX_RELEVANCE = 3


def day_examples(logs: Logs, start: int, end: int) -> DayExamples:
    """Every (user, local day) with activity whose local midnight is in ``[start, end)``."""
    a = logs.activity
    if a is None:
        raise ValueError("no activity log")
    local = localize(logs.zones, logs.act_zone, a.occurred_at)
    day = local // 86400
    key = logs.act_user * 1_000_000 + day
    pairs, first = np.unique(key, return_index=True)
    user, zone_code, local_day = logs.act_user[first], logs.act_zone[first], day[first]
    cands = day_slots(logs, user, zone_code, local_day * 86400)
    keep = np.flatnonzero((cands.snap_at >= start) & (cands.snap_at < end))
    hour = (local % 86400) // 3600
    counts = np.zeros((pairs.size, 24), dtype=np.int64)
    np.add.at(counts, (np.searchsorted(pairs, key), hour), 1)
    rows = (keep[:, None] * 24 + np.arange(24)[None, :]).ravel()
    c = cands
    return DayExamples(
        candidates=Candidates(snap_user=c.snap_user[keep], snap_at=c.snap_at[keep],
                              snapshot=np.repeat(np.arange(keep.size, dtype=np.int64), 24),
                              instant=c.instant[rows], channel=c.channel[rows],
                              category=c.category[rows], zone=c.zone[rows]),
        label=np.minimum(counts[keep], MAX_RELEVANCE).astype(np.int8).ravel(),
        day_start=c.snap_at[keep])


def priors_from_logs(logs: Logs, before: int) -> Priors:
    """The tenant's priors from its own events before ``before`` (one replay-free pass)."""
    return estimate_priors(logs, logs.stream(before=before), before)


def estimate_priors(logs: Logs, stream: EventStream, before: int) -> Priors:
    """Population priors from events before ``before`` (the training period only)."""
    past = stream.at < before
    how_events = past & (stream.kind >= 2)  # engagements and activity carry an hour
    how_counts = np.bincount(stream.b[how_events], minlength=HOURS_PER_WEEK).astype(float)
    sends = past & (stream.kind == 1)
    engaged = past & (stream.kind == 2)
    n = len(CHANNELS)
    return Priors.estimate(how_counts,
                           np.bincount(stream.a[sends], minlength=n)[:n].astype(float),
                           np.bincount(stream.a[engaged], minlength=n)[:n].astype(float))
