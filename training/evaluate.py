"""Held-out evaluation: the model against the simple baselines, on the later period.

Ranking task: for each engagement in the validation period (an opened message, or an
activity event for activity-only data) take the user's profile as of the local midnight
starting that day and rank the 24 local hours of that day (candidates at hh:30, on the
message's channel). Each method turns its scores into a distribution over the hours
(mixed with 5% uniform so a point guess has a finite log-loss) and is scored on the hour
that actually happened: hit@1, hit@3, log-loss. When the log carries propensities, each
engagement is weighted by 1 / propensity, so the metrics estimate what they would be had
sends been spread uniformly over hours (the logging policy favours daytime).

Baselines: a fixed hour (10:30), the global popular hours (the population prior for that
weekday), the user's historical mode hour (from the training period), and the user's
smoothed histogram with a global prior (``models.features`` ``user_share_how``: also the
serving fallback, the strongest simple heuristic).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from models.features import FEATURE_INDEX, fallback_scores
from training.dataset import Candidates, Logs, local_to_utc, localize
from training.schema import NEVER

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]

HOURS = 24
UNIFORM_MIX = 0.05
FIXED_HOUR = 10
METHODS = ("model", "smoothed_histogram", "user_mode_hour", "global_popular_hours",
           "fixed_hour")
MASS_SEGMENTS = ((0.0, 5.0, "little history (<5 decayed events)"),
                 (5.0, 30.0, "some history (5-30)"),
                 (30.0, np.inf, "rich history (>=30)"))


@dataclass
class Segment:
    """Model vs the strongest heuristic on users with a given amount of history."""

    label: str
    n: int
    model: dict[str, float]
    heuristic: dict[str, float]


@dataclass
class RankingSet:
    """``n`` engagements x 24 candidate hours, flattened as ``candidates`` (24 per row)."""

    candidates: Candidates
    actual_hour: I64
    weight: F64
    user: I64

    def __len__(self) -> int:
        return int(self.actual_hour.shape[0])


def ranking_set(logs: Logs, *, user: I64, at: I64, zone: I64, channel: I64, category: I64,
                propensity: F64) -> RankingSet:
    """Candidates for the engagements (user, at) described by the arrays."""
    n = int(user.shape[0])
    local = localize(logs.zones, zone, at)
    day_start = local - local % 86400
    snap_at = local_to_utc(logs.zones, zone, day_start)
    slots = (day_start[:, None] + np.arange(HOURS)[None, :] * 3600 + 1800).ravel()
    rep_zone = np.repeat(zone, HOURS)
    instants = local_to_utc(logs.zones, rep_zone, slots)
    weight = np.where(np.isfinite(propensity) & (propensity > 0), 1.0 / propensity, 1.0)
    return RankingSet(
        candidates=Candidates(snap_user=user, snap_at=snap_at,
                              snapshot=np.repeat(np.arange(n, dtype=np.int64), HOURS),
                              instant=instants, channel=np.repeat(channel, HOURS),
                              category=np.repeat(category, HOURS), zone=rep_zone),
        actual_hour=(local % 86400) // 3600, weight=weight / weight.mean(), user=user)


def user_mode_hours(logs: Logs, before: int) -> I64:
    """Each user's most frequent local hour of engagement/activity before ``before`` (-1: none)."""
    counts = np.zeros((len(logs.users), HOURS), dtype=np.float64)
    if logs.messages is not None:
        hit = (logs.engaged_at != NEVER) & (logs.engaged_at < before)
        local = localize(logs.zones, logs.msg_zone[hit], logs.engaged_at[hit])
        np.add.at(counts, (logs.msg_user[hit], (local % 86400) // 3600), 1.0)
    if logs.activity is not None:
        past = logs.activity.occurred_at < before
        local = localize(logs.zones, logs.act_zone[past], logs.activity.occurred_at[past])
        np.add.at(counts, (logs.act_user[past], (local % 86400) // 3600), 1.0)
    mode: I64 = np.where(counts.sum(axis=1) > 0, np.argmax(counts, axis=1), -1)
    return mode


def _bump(center: I64) -> F64:
    hours = np.arange(HOURS)[None, :]
    distance = np.abs(hours - center[:, None])
    distance = np.minimum(distance, HOURS - distance)
    result: F64 = np.exp(-0.5 * (distance / 1.5) ** 2)
    return result


def method_scores(rows: F32, model_scores: F64, ranking: RankingSet,
                  mode_hour: I64) -> dict[str, F64]:
    """(n, 24) scores per method, higher = better hour."""
    n = len(ranking)
    global_scores = rows[:, FEATURE_INDEX["global_share_how"]].reshape(n, HOURS).astype(float)
    mode = mode_hour[ranking.user]
    global_mode = np.argmax(global_scores, axis=1)
    return {
        "model": model_scores.reshape(n, HOURS),
        "smoothed_histogram":
            rows[:, FEATURE_INDEX["user_share_how"]].reshape(n, HOURS).astype(float),
        "user_mode_hour": _bump(np.where(mode >= 0, mode, global_mode)),
        "global_popular_hours": global_scores,
        "fixed_hour": _bump(np.full(n, FIXED_HOUR)),
    }


def ranking_metrics(scores: F64, actual: I64, weight: F64) -> dict[str, float]:
    """Weighted hit@1, hit@3 and log-loss of the actual hour under ``scores``."""
    n = scores.shape[0]
    at = np.arange(n)
    mine = scores[at, actual][:, None]
    hours = np.arange(HOURS)[None, :]
    # rank = hours scored higher, ties broken by hour index (deterministic)
    rank = ((scores > mine) | ((scores == mine) & (hours < actual[:, None]))).sum(axis=1)
    positive = np.clip(scores, 0, None)
    total = positive.sum(axis=1, keepdims=True)
    dist = np.where(total > 0, positive / np.where(total > 0, total, 1), 1.0 / HOURS)
    prob = (1 - UNIFORM_MIX) * dist[at, actual] + UNIFORM_MIX / HOURS
    w = weight / weight.sum()
    return {"hit@1": float((w * (rank < 1)).sum()), "hit@3": float((w * (rank < 3)).sum()),
            "log_loss": float(-(w * np.log(prob)).sum()), "n": float(n)}


def evaluate_ranking(rows: F32, model_scores: F64, ranking: RankingSet,
                     mode_hour: I64) -> tuple[dict[str, dict[str, float]], list[Segment]]:
    """Metrics per method, and model-vs-heuristic per history-size segment."""
    scores = method_scores(rows, model_scores, ranking, mode_hour)
    table = {name: ranking_metrics(scores[name], ranking.actual_hour, ranking.weight)
             for name in METHODS}
    mass = rows[::HOURS, FEATURE_INDEX["user_mass"]]
    segments: list[Segment] = []
    for lo, hi, label in MASS_SEGMENTS:
        sel = (mass >= lo) & (mass < hi)
        if sel.sum() < 20:
            continue
        model = ranking_metrics(scores["model"][sel], ranking.actual_hour[sel],
                                ranking.weight[sel])
        heuristic = ranking_metrics(scores["smoothed_histogram"][sel],
                                    ranking.actual_hour[sel], ranking.weight[sel])
        segments.append(Segment(label, int(sel.sum()), model, heuristic))
    return table, segments


def _auc(y: npt.NDArray[np.int8], p: F64) -> float:
    positives = int(y.sum())
    negatives = int(y.size - positives)
    if positives == 0 or negatives == 0:
        return float("nan")
    order = np.argsort(p, kind="mergesort")
    ranks = np.empty(p.size, dtype=np.float64)
    ranks[order] = np.arange(1, p.size + 1)
    # average ranks of ties
    sorted_p = p[order]
    _, first, counts = np.unique(sorted_p, return_index=True, return_counts=True)
    for start, count in zip(first[counts > 1].tolist(), counts[counts > 1].tolist(),
                            strict=True):
        ranks[order[start:start + count]] = start + (count + 1) / 2
    return float((ranks[y == 1].sum() - positives * (positives + 1) / 2)
                 / (positives * negatives))


def _log_loss(y: npt.NDArray[np.int8], p: F64) -> float:
    p = np.clip(p, 1e-6, 1 - 1e-6)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


def binary_metrics(y: npt.NDArray[np.int8], predicted: F64, rows: F32) -> dict[str, float]:
    """Per-send quality of the probabilities on the validation rows."""
    base = float(y.mean()) if y.size else 0.0
    heuristic = fallback_scores(rows)
    return {
        "valid_log_loss": _log_loss(y, predicted),
        "valid_auc": _auc(y, predicted),
        "valid_base_rate": base,
        "valid_mean_predicted": float(predicted.mean()) if y.size else 0.0,
        "base_rate_log_loss": _log_loss(y, np.full(y.shape, base)),
        "heuristic_log_loss": _log_loss(y, heuristic),
        "heuristic_auc": _auc(y, heuristic),
    }


def calibration(y: npt.NDArray[np.int8], predicted: F64, bins: int = 10) -> list[list[float]]:
    """[mean predicted, observed rate, count] per predicted-probability quantile bin."""
    if y.size == 0:
        return []
    edges = np.unique(np.quantile(predicted, np.linspace(0, 1, bins + 1)))
    which = np.clip(np.searchsorted(edges, predicted, "right") - 1, 0, len(edges) - 2)
    out = []
    for b in range(len(edges) - 1):
        sel = which == b
        if sel.any():
            out.append([float(predicted[sel].mean()), float(y[sel].mean()), float(sel.sum())])
    return out


def hour_of_week_grid(rows: F32, values: F64) -> F64:
    """7 x 24 mean of ``values`` by the rows' candidate local weekday and hour (NaN: none)."""
    how = (rows[:, FEATURE_INDEX["cand_weekday"]].astype(np.int64) * 24
           + rows[:, FEATURE_INDEX["cand_local_hour"]].astype(np.int64))
    sums = np.bincount(how, weights=values, minlength=168)
    counts = np.bincount(how, minlength=168)
    grid: F64 = np.where(counts > 0, sums / np.maximum(counts, 1), np.nan).reshape(7, 24)
    return grid

