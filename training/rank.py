"""Offline ranking: what would the model choose for each user of a history file?

``sendwise rank`` and ``rank_users`` let anyone evaluate a trained model on their own
data with their own metric: every user's profile is rebuilt from the history strictly
before ``at`` (the same replay as training), and every (channel, instant) candidate of
the horizon is scored with the model (or with the heuristic fallback, without a model,
shrunk toward priors estimated from the given history: the tenant's own data).
``by_hour_of_day`` averages each local hour's score over the horizon (e.g. a week), so a
user's best hours are not judged on one (possibly weekend) day.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from models.features import FEATURE_INDEX, fallback_scores
from models.priors import DEFAULT_PRIORS, Priors
from models.scorer import Scorer
from models.vocab import ANY_CHANNEL, CHANNELS, category_bucket, channel_index
from training.dataset import Candidates, Logs, estimate_priors, featurize, localize
from training.fit import iso
from training.schema import NEVER, ActivityLog, MessageLog, detect_kind, load_activity, load_messages


@dataclass
class RankedSlot:
    channel: str
    instant: str   # UTC, ISO-8601
    local: str     # the user's wall clock, "YYYY-MM-DD HH:MM"
    score: float   # P(engaged) (classifier, fallback) or P(this slot | active that day) (ranker)
    hour_of_day: int  # local hour of the slot


@dataclass
class UserRanking:
    user_id: str
    time_zone: str
    slots: list[RankedSlot]


def load_history(paths: list[Path]) -> Logs:
    """Message and/or activity logs (the kind is detected from each file's columns)."""
    messages: MessageLog | None = None
    activity: ActivityLog | None = None
    for path in paths:
        if detect_kind(path) == "messages":
            messages = load_messages(path)
        else:
            activity = load_activity(path)
    return Logs.combine(messages, activity)


def _user_channels(logs: Logs, at: int) -> list[list[int]]:
    """Per user: the channels they were messaged on before ``at`` and did not leave."""
    sent: list[set[int]] = [set() for _ in logs.users]
    m = logs.messages
    if m is not None:
        before = np.flatnonzero(m.sent_at < at)
        for u, c in zip(logs.msg_user[before].tolist(), m.channel[before].tolist(),
                        strict=True):
            sent[u].add(c)
        gone = m.outcomes["unsubscribed_at"]
        for r in np.flatnonzero((gone != NEVER) & (gone < at)).tolist():
            sent[int(logs.msg_user[r])].discard(int(m.channel[r]))
    return [sorted(s) or [ANY_CHANNEL] for s in sent]


def history_priors(logs: Logs, at: int) -> Priors:
    """The tenant's priors from the history before ``at`` (built-in ones if it has none)."""
    stream = logs.stream(before=at)
    if not np.any(stream.kind >= 2):
        return DEFAULT_PRIORS
    return estimate_priors(logs, stream, at)


def _day_probabilities(scorer: Scorer, raw: npt.NDArray[np.float64], rows: npt.NDArray[np.float32],
                       key: npt.NDArray[np.int64]) -> npt.NDArray[np.float64]:
    """A ranker's calibrated P(slot | that day) within each group of slots sharing ``key``."""
    out = np.empty_like(raw)
    heuristic = rows[:, FEATURE_INDEX["heuristic_share"]].astype(np.float64)
    order = np.argsort(key, kind="stable")
    bounds = np.flatnonzero(np.diff(key[order])) + 1
    for members in np.split(order, bounds):
        out[members] = scorer.day_distribution(raw[members][None, :],
                                               heuristic[members][None, :])[0]
    return out


def rank_users(logs: Logs, at: int, *, scorer: Scorer | None, horizon_hours: int = 24,
               step_minutes: int = 60, channels: list[str] | None = None,
               category: str | None = None, users: list[str] | None = None,
               top: int | None = None, by_hour_of_day: bool = False) -> list[UserRanking]:
    """Rank (channel, instant) candidates in ``[at, at + horizon)`` for each user.

    With ``by_hour_of_day`` the result has one slot per (channel, local hour): the mean
    score of that hour over the horizon, dated at its first occurrence.
    """
    if horizon_hours <= 0 or step_minutes <= 0:
        raise ValueError("--horizon-hours and --step-minutes must be positive")
    wanted = range(len(logs.users)) if users is None else \
        [logs.users.index(u) for u in users if u in logs.users]
    fixed = None if channels is None else [channel_index(c) for c in channels]
    per_user = _user_channels(logs, at)
    offsets = np.arange(0, horizon_hours * 3600, step_minutes * 60, dtype=np.int64)
    snap_user, cand_snap, cand_channel = [], [], []
    for i, u in enumerate(wanted):
        snap_user.append(u)
        for c in fixed or per_user[u]:
            cand_snap.extend([i] * offsets.size)
            cand_channel.extend([c] * offsets.size)
    snapshot = np.array(cand_snap, dtype=np.int64)
    user_arr = np.array(snap_user, dtype=np.int64)
    instant = at + np.tile(offsets, max(1, snapshot.size // max(offsets.size, 1)))
    instant = instant[:snapshot.size]
    channel = np.array(cand_channel, dtype=np.int64)
    candidates = Candidates(
        snap_user=user_arr, snap_at=np.full(user_arr.size, at, dtype=np.int64),
        snapshot=snapshot, instant=instant, channel=channel,
        category=np.full(snapshot.size, category_bucket(category), dtype=np.int64),
        zone=logs.user_zone[user_arr][snapshot])
    priors = scorer.priors if scorer is not None else history_priors(logs, at)
    rows = featurize(logs, logs.stream(before=at), candidates, priors)
    local = localize(logs.zones, candidates.zone, instant)
    hour = (local % 86400) // 3600
    if scorer is None:
        scores = fallback_scores(rows)
    elif scorer.is_ranker:
        day_key = (snapshot * (ANY_CHANNEL + 1) + channel) * 100_000 + local // 86400
        scores = _day_probabilities(scorer, scorer.score(rows), rows, day_key)
    else:
        scores = scorer.score(rows)
    if by_hour_of_day:
        group = (snapshot * (ANY_CHANNEL + 1) + channel) * 24 + hour
        _, first, inverse = np.unique(group, return_index=True, return_inverse=True)
        mean = np.bincount(inverse, weights=scores) / np.bincount(inverse)
        keep = np.sort(first)
        scores = mean[inverse]
        mask = np.zeros(snapshot.size, dtype=np.bool_)
        mask[keep] = True
    else:
        mask = np.ones(snapshot.size, dtype=np.bool_)
    names = [*CHANNELS, "any"]
    result = []
    for i, u in enumerate(snap_user):
        mine = np.flatnonzero((snapshot == i) & mask)
        mine = mine[np.argsort(-scores[mine], kind="stable")][:top]
        result.append(UserRanking(
            user_id=logs.users[u], time_zone=logs.zones[int(logs.user_zone[u])],
            slots=[RankedSlot(channel=names[int(candidates.channel[j])],
                              instant=iso(int(instant[j])),
                              local=iso(int(local[j]))[:16].replace("T", " "),
                              score=round(float(scores[j]), 5),
                              hour_of_day=int(hour[j])) for j in mine]))
    return result


def format_rankings(rankings: list[UserRanking]) -> str:
    lines = []
    for r in rankings:
        lines.append(f"{r.user_id} ({r.time_zone})")
        lines.extend(f"  {k:3d}. {s.channel:9s} {s.local} local  ({s.instant})  {s.score:.4f}"
                     for k, s in enumerate(r.slots, 1))
    return "\n".join(lines)
