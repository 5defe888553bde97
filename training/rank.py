"""Offline ranking: what would the model choose for each user of a history file?

``sendwise rank`` and ``rank_users`` let anyone evaluate a trained model on their own
data with their own metric: every user's profile is rebuilt from the history strictly
before ``at`` (the same replay as training), and every (channel, instant) candidate of
the horizon is scored with the model (or with the heuristic fallback, without a model).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from models.features import fallback_scores
from models.priors import DEFAULT_PRIORS
from models.scorer import Scorer
from models.vocab import ANY_CHANNEL, CHANNELS, category_bucket, channel_index
from training.dataset import Candidates, Logs, featurize, localize
from training.fit import iso
from training.schema import NEVER, ActivityLog, MessageLog, detect_kind, load_activity, load_messages


@dataclass
class RankedSlot:
    channel: str
    instant: str   # UTC, ISO-8601
    local: str     # the user's wall clock, "YYYY-MM-DD HH:MM"
    score: float


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


def rank_users(logs: Logs, at: int, *, scorer: Scorer | None, horizon_hours: int = 24,
               step_minutes: int = 60, channels: list[str] | None = None,
               category: str | None = None, users: list[str] | None = None,
               top: int | None = None) -> list[UserRanking]:
    """Rank (channel, instant) candidates in ``[at, at + horizon)`` for each user."""
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
    candidates = Candidates(
        snap_user=user_arr, snap_at=np.full(user_arr.size, at, dtype=np.int64),
        snapshot=snapshot, instant=instant, channel=np.array(cand_channel, dtype=np.int64),
        category=np.full(snapshot.size, category_bucket(category), dtype=np.int64),
        zone=logs.user_zone[user_arr][snapshot])
    priors = scorer.priors if scorer is not None else DEFAULT_PRIORS
    rows = featurize(logs, logs.stream(before=at), candidates, priors)
    scores = scorer.score(rows) if scorer is not None else fallback_scores(rows)
    local = localize(logs.zones, candidates.zone, instant)
    names = [*CHANNELS, "any"]
    result = []
    for i, u in enumerate(snap_user):
        mine = np.flatnonzero(snapshot == i)
        mine = mine[np.argsort(-scores[mine], kind="stable")][:top]
        result.append(UserRanking(
            user_id=logs.users[u], time_zone=logs.zones[int(logs.user_zone[u])],
            slots=[RankedSlot(channel=names[int(candidates.channel[j])],
                              instant=iso(int(instant[j])),
                              local=iso(int(local[j]))[:16].replace("T", " "),
                              score=round(float(scores[j]), 5)) for j in mine]))
    return result


def format_rankings(rankings: list[UserRanking]) -> str:
    lines = []
    for r in rankings:
        lines.append(f"{r.user_id} ({r.time_zone})")
        lines.extend(f"  {k:3d}. {s.channel:9s} {s.local} local  ({s.instant})  {s.score:.4f}"
                     for k, s in enumerate(r.slots, 1))
    return "\n".join(lines)
