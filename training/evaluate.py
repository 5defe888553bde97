"""Held-out evaluation: the model against the simple baselines, on the later period.

Ranking task, as deployed: for each engagement in the held-out period (an opened message,
or an activity event for activity-only data) take the user's profile as of the local
midnight starting that day (every earlier event folded in, held-out ones included, as
serving would have) and rank the 24 local hours of that day (candidates at hh:30, on the
message's channel). Each method's scores are normalised over the day's 24 slots and scored
on the hour that actually happened: hit@1, hit@3 (the true hour is among the top 1 / 3)
and log-loss (-log p(true hour), nats). Point guesses (mode hour, fixed hour) are mixed
with 5% uniform so their log-loss is finite. When the log carries propensities, each
engagement is weighted by 1 / propensity, so the metrics estimate what they would be had
sends been spread uniformly over hours (the logging policy favours daytime).

Baselines: a fixed hour (10:30), the tenant's popular hours (its prior for that weekday),
the user's mode hour (undecayed counts), and the smoothed-histogram heuristic
(``models.features.heuristic_distribution``: the user's undecayed hour counts smoothed
±1 h plus 5 x the tenant's hour share); ``fallback_no_model`` is what serving does with
no model (``fallback_scores``), which ranks like the heuristic by construction.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from models.features import FEATURE_INDEX, fallback_scores
from training.dataset import Candidates, Logs, day_slots, localize

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]

HOURS = 24
UNIFORM_MIX = 0.05
FIXED_HOUR = 10
METHODS = ("model", "smoothed_histogram", "fallback_no_model", "user_mode_hour",
           "global_popular_hours", "fixed_hour")
#: Methods that are simple heuristics (candidates for the champion gate's opponent).
HEURISTICS = ("smoothed_histogram", "user_mode_hour", "global_popular_hours", "fixed_hour")
_POINT_GUESSES = ("user_mode_hour", "fixed_hour")
#: Buckets of the user's past events (undecayed) at the decision instant.
HISTORY_SEGMENTS = ((0.0, 1.0, "no history (0 events)"),
                    (1.0, 5.0, "1-4 events"),
                    (5.0, 15.0, "5-14 events"),
                    (15.0, 40.0, "15-39 events"),
                    (40.0, np.inf, "40+ events"))


@dataclass
class Segment:
    """Model vs the heuristic vs the no-model fallback on users with this much history."""

    label: str
    n: int
    model: dict[str, float]
    heuristic: dict[str, float]
    fallback: dict[str, float]


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
    local = localize(logs.zones, zone, at)
    slots = day_slots(logs, user, zone, local - local % 86400)
    slots.channel = np.repeat(channel, HOURS)
    slots.category = np.repeat(category, HOURS)
    weight = np.where(np.isfinite(propensity) & (propensity > 0), 1.0 / propensity, 1.0)
    return RankingSet(candidates=slots, actual_hour=(local % 86400) // 3600,
                      weight=weight / weight.mean(), user=user)


def _bump(center: I64) -> F64:
    hours = np.arange(HOURS)[None, :]
    distance = np.abs(hours - center[:, None])
    distance = np.minimum(distance, HOURS - distance)
    result: F64 = np.exp(-0.5 * (distance / 1.5) ** 2)
    return result


def method_scores(rows: F32, model_dist: F64, n: int) -> dict[str, F64]:
    """(n, 24) scores per method, higher = better hour; ``model_dist`` is (n, 24)."""
    def column(name: str) -> F64:
        return rows[:, FEATURE_INDEX[name]].reshape(n, HOURS).astype(np.float64)

    tenant = column("prior_share_how")
    counts = column("user_count_hour")
    mode = np.where(counts.sum(axis=1) > 0, np.argmax(counts, axis=1), np.argmax(tenant, axis=1))
    return {
        "model": model_dist,
        "smoothed_histogram": column("heuristic_share"),
        "fallback_no_model": fallback_scores(rows).reshape(n, HOURS),
        "user_mode_hour": _bump(mode),
        "global_popular_hours": tenant,
        "fixed_hour": _bump(np.full(n, FIXED_HOUR)),
    }


def ranking_metrics(scores: F64, actual: I64, weight: F64, *, mix: float = 0.0) -> dict[str, float]:
    """Weighted hit@1, hit@3 and log-loss of the actual hour under ``scores``.

    Scores are normalised over the 24 hours (``mix`` of uniform added for point guesses);
    ties rank by hour index, so a method cannot win by tying.
    """
    n = scores.shape[0]
    at = np.arange(n)
    mine = scores[at, actual][:, None]
    hours = np.arange(HOURS)[None, :]
    rank = ((scores > mine) | ((scores == mine) & (hours < actual[:, None]))).sum(axis=1)
    positive = np.clip(scores, 0, None)
    total = positive.sum(axis=1, keepdims=True)
    dist = np.where(total > 0, positive / np.where(total > 0, total, 1), 1.0 / HOURS)
    prob = np.maximum((1 - mix) * dist[at, actual] + mix / HOURS, 1e-12)
    w = weight / weight.sum()
    return {"hit@1": float((w * (rank < 1)).sum()), "hit@3": float((w * (rank < 3)).sum()),
            "log_loss": float(-(w * np.log(prob)).sum()), "n": float(n)}


def evaluate_ranking(rows: F32, model_dist: F64, ranking: RankingSet,
                     ) -> tuple[dict[str, dict[str, float]], list[Segment]]:
    """Metrics per method, and model / heuristic / fallback per amount of user history."""
    n = len(ranking)
    scores = method_scores(rows, model_dist, n)

    def metrics(name: str, sel: npt.NDArray[np.bool_] | slice) -> dict[str, float]:
        mix = UNIFORM_MIX if name in _POINT_GUESSES else 0.0
        return ranking_metrics(scores[name][sel], ranking.actual_hour[sel],
                               ranking.weight[sel], mix=mix)

    table = {name: metrics(name, slice(None)) for name in METHODS}
    events = rows[::HOURS, FEATURE_INDEX["user_events"]]
    segments: list[Segment] = []
    for lo, hi, label in HISTORY_SEGMENTS:
        sel = (events >= lo) & (events < hi)
        if sel.sum() < 20:
            continue
        segments.append(Segment(label, int(sel.sum()), metrics("model", sel),
                                metrics("smoothed_histogram", sel),
                                metrics("fallback_no_model", sel)))
    return table, segments


def champion_gate(table: dict[str, dict[str, float]]) -> dict[str, float | str | bool]:
    """Did the model beat the strongest heuristic on the held-out period, and by how much?

    Strongest = best hit@3 among ``HEURISTICS``. Passing needs a higher hit@3 *and* a
    lower log-loss: a model that ranks better but is worse calibrated (or the reverse) is
    not promoted over a heuristic that needs no training.
    """
    rival = max(HEURISTICS, key=lambda name: (table[name]["hit@3"], -table[name]["log_loss"]))
    model, best = table["model"], table[rival]
    deltas = {f"{k}_delta": model[k] - best[k] for k in ("hit@1", "hit@3", "log_loss")}
    return {"passed": bool(deltas["hit@3_delta"] > 0 and deltas["log_loss_delta"] < 0),
            "rival": rival, "better_than_chance": bool(model["hit@3"] > 3 / HOURS),
            **deltas, "n": model["n"]}


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

