"""Oracle-gain evaluation on simulated data, where the true engagement odds are known.

For sampled (user, validation day) pairs we list every slot a policy could pick - each
channel the user still consents to x each local hour of the day (at hh:30) - and ask the
simulator's ``World`` for the true value of each: P(open within the label window) minus
the channel's cost. A policy picks one slot per pair; its value is the truth at that slot.
``share of oracle gain = (policy - random) / (oracle - random)``: 0 is no better than a
random slot, 1 is as good as knowing the truth.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from models.features import FEATURE_INDEX, fallback_scores
from models.vocab import CHANNELS, category_bucket
from training.dataset import Candidates, Logs, local_to_utc, localize
from training.schema import NEVER
from training.simulate import CATEGORIES, COST, World

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]

POLICIES = ("random", "fixed_hour", "heuristic", "model", "oracle")
EVAL_CATEGORY = "news"


@dataclass
class OracleSet:
    candidates: Candidates
    pair: I64          # pair index of each candidate
    world_user: I64    # simulator user of each candidate
    local: I64
    n_pairs: int


def oracle_set(logs: Logs, world: World, *, start: int, end: int, max_pairs: int,
               seed: int) -> OracleSet:
    """Sample (user, local day) pairs in [start, end) and list their candidate slots."""
    rng = np.random.default_rng(seed)
    known = np.array([u.startswith("u") and u[1:].isdigit() and int(u[1:]) < world.n_users
                      for u in logs.users], dtype=np.bool_)
    users = np.flatnonzero(known)
    if users.size == 0:
        raise ValueError("no user of the logs exists in the simulated world")
    n = min(max_pairs, users.size)
    user = rng.choice(users, size=n, replace=False).astype(np.int64)
    world_user = np.array([int(logs.users[u][1:]) for u in user], dtype=np.int64)
    days = max(1, (end - start) // 86400 - 1)
    instant = start + 86400 * rng.integers(0, days, n) + 43200
    zone = logs.user_zone[user]
    local = localize(logs.zones, zone, instant)
    day_start = local - local % 86400
    snap_at = local_to_utc(logs.zones, zone, day_start)
    consent = world.consent[world_user].copy()
    if logs.messages is not None:  # channels the user unsubscribed from before that day
        gone = logs.messages.outcomes["unsubscribed_at"]
        rows = np.flatnonzero(gone != NEVER)
        position = {int(u): i for i, u in enumerate(user.tolist())}
        for r in rows.tolist():
            i = position.get(int(logs.msg_user[r]))
            if i is not None and gone[r] < snap_at[i]:
                consent[i, logs.messages.channel[r]] = False
    pair_ix, channel_ix = np.nonzero(consent)
    slots = pair_ix.size
    pair = np.repeat(pair_ix, 24)
    channel = np.repeat(channel_ix, 24)
    hour = np.tile(np.arange(24), slots)
    slot_local = day_start[pair] + hour * 3600 + 1800
    return OracleSet(
        candidates=Candidates(snap_user=user, snap_at=snap_at, snapshot=pair.astype(np.int64),
                              instant=local_to_utc(logs.zones, zone[pair], slot_local),
                              channel=channel.astype(np.int64),
                              category=np.full(pair.size, category_bucket(EVAL_CATEGORY)),
                              zone=zone[pair]),
        pair=pair.astype(np.int64), world_user=world_user[pair], local=slot_local,
        n_pairs=n)


def _pick(pair: I64, score: F64, n_pairs: int) -> I64:
    """Index of the best-scoring candidate of each pair (pairs with no candidate: -1)."""
    order = np.lexsort((-score, pair))
    first = np.full(n_pairs, -1, dtype=np.int64)
    sorted_pair = pair[order]
    is_first = np.ones(order.size, dtype=np.bool_)
    is_first[1:] = sorted_pair[1:] != sorted_pair[:-1]
    first[sorted_pair[is_first]] = order[is_first]
    return first


def evaluate_policies(oracle: OracleSet, world: World, rows: F32,
                      model_scores: F64) -> dict[str, dict[str, float]]:
    """Mean true value per policy and its share of the oracle's gain over random."""
    c = oracle.candidates
    category = CATEGORIES.index(EVAL_CATEGORY)
    truth = world.open_probability(
        oracle.world_user, c.channel, oracle.local, np.full(len(c), category),
        rows[:, FEATURE_INDEX["sends_24h"]].astype(np.float64),
        rows[:, FEATURE_INDEX["sends_7d"]].astype(np.float64))
    value = truth - COST[c.channel]
    has = np.bincount(oracle.pair, minlength=oracle.n_pairs) > 0
    counts = np.maximum(np.bincount(oracle.pair, minlength=oracle.n_pairs), 1)
    random_value = np.bincount(oracle.pair, weights=value, minlength=oracle.n_pairs) / counts
    hour = (oracle.local % 86400) // 3600
    fixed = hour == 10
    fixed_value = (np.bincount(oracle.pair[fixed], weights=value[fixed],
                               minlength=oracle.n_pairs)
                   / np.maximum(np.bincount(oracle.pair[fixed], minlength=oracle.n_pairs), 1))
    chosen = {
        "heuristic": _pick(oracle.pair, fallback_scores(rows) - COST[c.channel],
                           oracle.n_pairs),
        "model": _pick(oracle.pair, model_scores - COST[c.channel], oracle.n_pairs),
        "oracle": _pick(oracle.pair, value, oracle.n_pairs),
    }
    per_pair = {"random": random_value, "fixed_hour": fixed_value}
    for name, index in chosen.items():
        per_pair[name] = np.where(index >= 0, value[np.maximum(index, 0)], 0.0)
    means = {name: float(per_pair[name][has].mean()) for name in POLICIES}
    gain = means["oracle"] - means["random"]
    result: dict[str, dict[str, float]] = {}
    for name in POLICIES:
        share = (means[name] - means["random"]) / gain if gain > 0 else float("nan")
        result[name] = {"expected_value": means[name], "share_of_oracle_gain": share}
    picked = chosen["model"][has]
    result["model"]["picks_oracle_channel"] = float(np.mean(
        c.channel[picked] == c.channel[chosen["oracle"][has]]))
    result["_meta"] = {"pairs": float(has.sum()), "slots": float(len(c)),
                       "channels": float(len(CHANNELS))}
    return result
