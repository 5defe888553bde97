"""The model in the decision loop: which model scores, and how its scores pick a slot.

``ModelRegistry`` holds the active scorer: a LightGBM model that passed its champion gate
(``models.artifact.check_champion``; or was forced), else the smoothed-histogram
heuristic (``models.features.fallback_scores``, version ``HEURISTIC_VERSION``). A swap is
one reference assignment, so a decision scores wholly with the old or wholly with the
new model; a model that fails to load, has another feature hash or lost its gate is
refused and the active one stays.

``choose`` turns a plan (``api.plan.build_plan``: consent, quiet hours, jurisdiction
windows already applied) into ranked candidates for the one atomic commit:

* candidates: every permitted channel x {its first allowed instant, every local hour
  start} from ``not_before`` (or now) up to the deadline or ``send_time.horizon_minutes``,
  minus the plan's own time blocks (the rules are never recomputed here);
* one vectorised feature build (``models.features.candidate_features``) and one model
  call for all of them;
* expected value = P(engagement) x ``channel_values[ch]`` - ``channel_costs[ch]`` -
  ``fatigue_cost`` x the profile's deliveries in the 24 h before the slot (the model's own
  ``sends_24h``: already read with the profile, so no extra round trip; the ledger is only
  visible inside ``commit.lua``); each channel's first allowed instant gets the ``margin``
  bonus, so a later slot wins only when it beats sending now by that share;
* ``min_expected_value`` (off by default): a non-exempt message whose best expected value
  is below it is suppressed before the commit (``Choice.suppressed``; the engine cites
  ``low_expected_value``), unless it explores: exploration keeps covering every slot, so
  the logs can still value a lower floor;
* the ranked slots go to ``commit.lua`` (mode ``ranked``): it reserves the best one that
  still passes every cap and conflict; when caps take them all it falls back to the
  earliest instant any channel frees, exactly as without a model. The request's
  ``channel_selection: "ordered"`` ranks channel by channel instead, each channel's slots
  followed by its whole window, so the script (unchanged) takes a later channel only when
  an earlier one has no free instant at all.

Users with fewer than ``min_history_events`` profile events keep the earliest allowed
instant: their score says nothing about *this* user, and moving a message by hours on a
population prior alone is not worth the delay. They still explore at
``exploration_rate`` (a uniform slot, fixed by the message id so retries agree), or the
logs would never teach the model anything about new users; the earliest instant is then
logged with propensity ``1 - rate + rate / slots``. Exempt (transactional) messages never
move and never explore. Every decision is scored. Caps are evaluated only in Lua, so the
propensity reported is that of the ranking before caps.
"""

from __future__ import annotations

import bisect
import datetime as dt
import hashlib
import itertools
from dataclasses import dataclass, field
from pathlib import Path
from zoneinfo import ZoneInfo

import msgspec
import numpy as np
import numpy.typing as npt

from api.plan import Candidate, Plan
from api.policy import Policy, SendTimeSettings
from api.reasons import ReasonCode
from api.record_codes import FEATURE_SOURCES
from models.artifact import ArtifactError, NotChampionError, check_champion
from models.features import (
    FEATURE_INDEX,
    HEURISTIC_VERSION,
    candidate_features,
    fallback_from,
    fallback_scores,
)
from models.priors import DEFAULT_PRIORS, Priors
from models.profile import Profile
from models.scorer import Scorer
from models.timeutil import utc_offset, utc_offsets
from models.vocab import ANY_CHANNEL, CHANNELS, category_bucket, channel_index

HOUR_MS = 3_600_000
F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]

#: ``features_source`` values: the user's stored profile, or only the tenant's priors
#: (numbered in format-4 records by their position there)
SOURCE_PROFILE, SOURCE_PRIOR = FEATURE_SOURCES


class ModelRefusedError(ValueError):
    """A model directory that must not serve (unreadable, other feature hash, lost its
    champion gate); the message says which and what to do."""


@dataclass(frozen=True)
class ActiveModel:
    """What scores decisions now. ``scorer`` None = the heuristic."""

    scorer: Scorer | None
    version: str
    priors: Priors
    directory: str | None = None
    #: why this one: "champion gate passed", "forced", or why the heuristic serves
    note: str = "no model configured: the smoothed-histogram heuristic scores decisions"
    loaded_at: dt.datetime = field(default_factory=lambda: dt.datetime.now(dt.UTC))
    #: this model's scores of blank-profile candidates on a local hour grid
    #: (``_blank_columns``): they are a pure function of the model and the grid key, and
    #: live exactly as long as the model (a swap starts empty; no other model can hit)
    blank_grid_scores: dict[tuple[str, int, int, int, int], F64] = field(
        default_factory=dict, compare=False, hash=False, repr=False)
    #: ... and of single blank-profile candidates off the grid (a window's first allowed
    #: instant: the request time), keyed by (zone, channel, category bucket, epoch
    #: second): every decision in the same second, zone, channel and category shares it
    blank_row_scores: dict[tuple[str, int, int, int], tuple[float, float, float, float]] = (
        field(default_factory=dict, compare=False, hash=False, repr=False))


HEURISTIC = ActiveModel(None, HEURISTIC_VERSION, DEFAULT_PRIORS)


class ModelRegistry:
    """One worker's startup default model (``--model`` / ``SENDWISE_MODEL_DIR``, else the
    heuristic) and the vetting every model goes through (``prepare``). Which model a
    tenant's decisions score with is ``api.model_pointer.TenantModels``' answer: the
    pointed models every worker follows, falling back to this one."""

    def __init__(self, *, num_threads: int = 1) -> None:
        self.active: ActiveModel = HEURISTIC
        #: the last refusal, shown by ``GET /v1/models`` until a load succeeds
        self.last_error: str | None = None
        self._num_threads = num_threads

    def prepare(self, directory: str | Path, *, force: bool = False) -> ActiveModel:
        """Load and vet ``directory`` without activating it; ``ModelRefusedError`` if it
        must not serve. Any failure of LightGBM on a corrupt file is a refusal too."""
        try:
            scorer = Scorer.load(directory, num_threads=self._num_threads)
            check_champion(scorer.manifest, force=force)
        except NotChampionError as exc:
            raise ModelRefusedError(f"refused: {exc} (reload with force to serve it anyway)"
                                    ) from exc
        except ArtifactError as exc:
            raise ModelRefusedError(f"refused: {exc}") from exc
        except Exception as exc:  # lightgbm raises its own errors on bad trees
            raise ModelRefusedError(f"refused: {directory} could not be loaded: "
                                    f"{type(exc).__name__}: {exc}") from exc
        gate = scorer.manifest.champion
        passed = gate is not None and gate.passed
        return ActiveModel(scorer, scorer.model_version, scorer.priors, str(directory),
                           "champion gate passed" if passed else
                           "forced: it did not pass its champion gate")

    def load(self, directory: str | Path, *, force: bool = False) -> ActiveModel:
        """Activate ``directory`` or raise (the active model stays)."""
        try:
            model = self.prepare(directory, force=force)
        except ModelRefusedError as exc:
            self.last_error = str(exc)
            raise
        self.active, self.last_error = model, None
        return model

    def use_heuristic(self, note: str) -> None:
        self.active = ActiveModel(None, HEURISTIC_VERSION, DEFAULT_PRIORS, note=note)


# ------------------------------------------------------------------- candidates


def model_channel(name: str) -> int:
    """The model's channel index; an API channel the model has no column for (web_push)
    is scored as "any channel" (the all-channel aggregate)."""
    return channel_index(name) if name in CHANNELS else ANY_CHANNEL



#: memo of ``slot_instants``' local hour grid, keyed by (zone, first hour start, hours):
#: the grid depends on nothing else, and a zone's next day of hour starts is the same for
#: every decision in that hour (cleared whole when full: bounded memory, no LRU upkeep).
#: Each grid is kept twice: as an array (scoring looks memoised scores up in it) and as a
#: tuple of ints (``_window_slots`` merges it with the window's few other instants in plain
#: Python, cheaper than numpy's per-call overhead on a few dozen values)
_HOUR_GRIDS: dict[tuple[str, int, int], tuple[I64, tuple[int, ...], bool]] = {}
_HOUR_GRIDS_MAX = 4096


def _hour_grid(zone_name: str, tz: ZoneInfo, first: int, count: int, offset: int
               ) -> tuple[I64, tuple[int, ...], bool]:
    """``count`` local hour starts from ``first`` (ms), each moved by the change of UTC offset
    since ``offset`` so a DST change inside the horizon keeps them on local hour starts, as
    an array, a tuple, and whether they are in ascending order (a change of offset by more
    than an hour could break it: then the window filters the grid element by element).
    Read-only: shared by every decision of the same (zone, hour)."""
    key = (zone_name, first, count)
    grid = _HOUR_GRIDS.get(key)
    if grid is None:
        plain = np.arange(count, dtype=np.int64) * HOUR_MS + first
        array = plain + (offset - utc_offsets(tz, plain // 1000) * 1000)
        array.flags.writeable = False
        starts = tuple(array.tolist())
        grid = (array, starts, all(x <= y for x, y in itertools.pairwise(starts)))
        if len(_HOUR_GRIDS) >= _HOUR_GRIDS_MAX:
            _HOUR_GRIDS.clear()
        _HOUR_GRIDS[key] = grid
    return grid


def slot_instants(plan: Plan, cand: Candidate, zone_name: str, horizon_ms: int) -> I64:
    """Allowed instants (ms) of one channel window: its first allowed instant, the ends of
    its blocks (the first moment after quiet hours etc.) and every local hour start,
    within ``[cand.a, min(cand.b, cand.a + horizon))``, ascending, without blocked ones.

    The window's blocks are merged into disjoint intervals once, then one sweep keeps the
    instants outside them (blocked means inside any block); the hour grid comes from
    ``_hour_grid``. ``ref_slot_instants`` in tests/unit/test_scoring_reference.py is the
    plain version this must equal."""
    return _window_slots(plan, cand, zone_name, horizon_ms)[0]


#: the hour grid a window's slots were drawn from: its ``_HOUR_GRIDS`` key and the grid
GridRef = tuple[tuple[str, int, int], I64] | None


def _window_slots(plan: Plan, cand: Candidate, zone_name: str, horizon_ms: int
                  ) -> tuple[I64, GridRef]:
    """``slot_instants`` and the hour grid (key, array) they were drawn from (None: no
    hour start in the window), so scoring can reuse what it computed for that grid."""
    a = cand.a
    end = min(cand.b, a + horizon_ms)
    tz = ZoneInfo(zone_name)
    offset = utc_offset(tz, a // 1000) * 1000
    first = ((a + offset) // HOUR_MS + 1) * HOUR_MS - offset
    count = max(0, -((first - end) // HOUR_MS))  # len(range(first, end, HOUR_MS))
    intervals = sorted([iv for i in cand.pb for iv in plan.blocks[i].iv])
    # the window's first instant, every block end inside it, and its hour starts
    instants = {a}
    instants.update(e for _, e in intervals if a < e < end)
    grid_ref: GridRef = None
    if count:
        grid, hours, ascending = _hour_grid(zone_name, tz, first, count, offset)
        grid_ref = ((zone_name, first, count), grid)
        if ascending:
            instants.update(hours[bisect.bisect_left(hours, a):bisect.bisect_left(hours, end)])
        else:
            instants.update(t for t in hours if a <= t < end)
    ordered = sorted(t for t in instants if t < end)
    if intervals:
        # blocked = inside the union of the intervals: merge them (sorted by start), then
        # one sweep, each instant checked against the first merged interval ending after it
        merged: list[list[int]] = []
        for s, e in intervals:
            if e <= s:
                continue  # empty: blocks nothing (its end above is still a slot)
            if merged and s <= merged[-1][1]:
                if e > merged[-1][1]:
                    merged[-1][1] = e
            else:
                merged.append([s, e])
        kept: list[int] = []
        j, m = 0, len(merged)
        for t in ordered:
            while j < m and merged[j][1] <= t:
                j += 1
            if j == m or t < merged[j][0]:
                kept.append(t)
        ordered = kept
    return np.array(ordered, dtype=np.int64), grid_ref


@dataclass
class Scored:
    """Every candidate slot of one decision with its probability and expected value."""

    cand: npt.NDArray[np.intp]       # index into plan.cands (the channel window)
    at: I64                          # instant, ms
    p: F64                           # P(engagement) estimate
    ev: F64                          # expected value
    first: npt.NDArray[np.bool_]     # the channel's first allowed instant ("now")
    sends: F64                       # messages delivered in the 24 h before the slot
    version: str
    source: str
    heads: npt.NDArray[np.intp]      # index of each channel window's first slot
    sizes: list[int]                 # each window's number of slots (scored or not)


def expected_value(p: F64, values: F64, costs: F64, sends: F64, fatigue_cost: float) -> F64:
    """``P(engagement) x value - cost - fatigue_cost x sends in the 24 h before the slot``,
    element-wise: the one formula the ranking and the value floor use (README, "The model
    in the decision loop")."""
    result: F64 = p * values - costs - fatigue_cost * sends
    return result


def score_slots(model: ActiveModel, plan: Plan, profile: Profile | None, *, zone_name: str,
                category: str, policy: Policy, now: int, heads_only: bool = False) -> Scored:
    """All slots of all channel windows, scored in one feature build and one model call.

    ``heads_only``: score only each window's first allowed instant (the returned arrays
    then hold one slot per window; ``sizes`` still counts every slot), when the scorer's
    score of a row depends on that row alone (the heuristic, a classifier); a ranker
    normalises over a window's slots, so it ignores the flag. ``choose`` sets it when a
    new user keeps the earliest instant, which needs nothing but those scores."""
    heads_only = heads_only and (model.scorer is None or not model.scorer.is_ranker)
    settings = policy.send_time
    horizon = settings.horizon_minutes * 60_000
    slots = [_window_slots(plan, c, zone_name, horizon) for c in plan.cands]
    # a window without an allowed slot in the horizon is still scored at its start (it
    # may be the fallback that gets reserved)
    per = [s if s.size else np.array([c.a], dtype=np.int64)
           for (s, _), c in zip(slots, plan.cands, strict=True)]
    sizes = [s.size for s in per]
    n_windows = len(per)
    cand = np.repeat(np.arange(n_windows, dtype=np.intp), sizes)
    at = np.concatenate(per) if n_windows > 1 else per[0]
    heads = np.zeros(n_windows, dtype=np.intp)
    np.cumsum(sizes[:-1], out=heads[1:])
    if heads_only:
        cand = np.arange(n_windows, dtype=np.intp)
        at = at[heads]
        heads = cand
    first = np.zeros(at.size, dtype=np.bool_)
    first[heads] = True
    channels = [c.ch for c in plan.cands]
    ch_windows = [model_channel(c) for c in channels]
    scorer = model.scorer
    if profile is None or profile.is_blank():
        # a user without any recorded event: every column is a pure function of the
        # candidate, so the hour grid's scores are memoised per model (``_blank_columns``)
        # (heads only: one slot per window, usually off the grid, built directly)
        columns = _blank_columns(model, [s[:1] for s in per] if heads_only else per,
                                 [None] * n_windows if heads_only else [g for _, g in slots],
                                 ch_windows, zone_name, category, now)
    else:
        ch_model = np.array(ch_windows, dtype=np.int64)[cand]
        rows = candidate_features(profile, now=now // 1000, channels=ch_model,
                                  instants=at // 1000, zone_name=zone_name,
                                  priors=model.priors, category=category)
        columns = _columns(scorer, rows)
    raw, heuristic, rate, recent = columns
    if scorer is None:
        p = fallback_from(heuristic, rate)
    elif not scorer.is_ranker:
        p = np.clip(raw, 0.0, 1.0)
    else:
        # a ranker orders slots: its calibrated distribution over each channel's slots,
        # times the number of slots (mean lift 1, like the heuristic's share x 24), times
        # the channel's smoothed rate (never heads-only: each window's slots are
        # contiguous, so one segmented pass covers them all)
        sizes_array = np.asarray(sizes, dtype=np.intp)
        dist = scorer.window_distribution(raw, heuristic, heads, sizes_array)
        p = np.clip(rate * dist * np.repeat(sizes_array, sizes_array), 0.0, 1.0)
    values_of, costs_of = _prices(settings)
    values = np.array([values_of.get(c, 1.0) for c in channels])[cand]
    costs = np.array([costs_of.get(c, 0.0) for c in channels])[cand]
    # the fatigue counter the model itself sees (the profile's recent deliveries, read with
    # it in the decision's one read): no extra round trip, and exact per slot, so a slot
    # after older sends have aged out of the 24 h costs less than one right after a burst
    ev = expected_value(p, values, costs, recent, settings.fatigue_cost)
    events = float(profile.counts.sum()) if profile is not None else 0.0
    sends = float(profile.sends.sum()) if profile is not None else 0.0
    return Scored(cand=cand, at=at, p=p, ev=ev, first=first, sends=recent,
                  version=model.version,
                  source=SOURCE_PROFILE if events + sends > 0 else SOURCE_PRIOR,
                  heads=heads, sizes=sizes)


#: what scoring reads of a candidate's row: the model's raw score (NaN for the heuristic),
#: ``heuristic_share``, ``ch_rate`` and ``sends_24h``, as float64, one array each
Columns = tuple[F64, F64, F64, F64]
_HEURISTIC_SHARE = FEATURE_INDEX["heuristic_share"]
_CH_RATE = FEATURE_INDEX["ch_rate"]
_SENDS_24H = FEATURE_INDEX["sends_24h"]
#: ``ActiveModel.blank_grid_scores`` entries per model (cleared whole when full): one per
#: (zone, hour, horizon hours, channel, category) in use, ~1 KB each
_BLANK_GRIDS_MAX = 8192
#: ``ActiveModel.blank_row_scores`` entries per model (cleared whole when full), ~250 B
#: each: the keys turn over every second, so this bounds memory, not the hit rate
_BLANK_ROWS_MAX = 16384


def _columns(scorer: Scorer | None, rows: npt.NDArray[np.float32]) -> Columns:
    """The ``Columns`` of feature rows (one model call for all of them)."""
    raw = scorer.score(rows) if scorer is not None else np.full(rows.shape[0], np.nan)
    return (raw, rows[:, _HEURISTIC_SHARE].astype(np.float64),
            rows[:, _CH_RATE].astype(np.float64), rows[:, _SENDS_24H].astype(np.float64))


def _blank_columns(model: ActiveModel, per: list[I64], grids: list[GridRef],
                   ch_windows: list[int], zone_name: str, category: str, now: int
                   ) -> Columns:
    """``Columns`` of the windows' slots ``per`` for a blank profile (no event at all).

    Its rows depend on nothing but the model's priors and the candidate (zone, channel,
    category, instant), and a row's score on the row alone: so the scores of a window's
    hour grid (``_window_slots``; the same for every decision in that zone and hour) are
    computed once per (model, grid, channel, category bucket) and kept on the model, and
    only the other slots (the window's first allowed instant, block ends) are built and
    scored per decision, all windows in one feature build and one model call. The
    memoised values are those an unmemoised call computes for the same rows, exactly."""
    bucket = category_bucket(category)
    memo = model.blank_grid_scores
    parts: list[F64] = []
    missing: list[npt.NDArray[np.intp]] = []
    offset = 0
    for instants, grid_ref, ch in zip(per, grids, ch_windows, strict=True):
        n = instants.size
        table = np.full((4, n), np.nan)
        hit = np.zeros(n, dtype=np.bool_)
        if grid_ref is not None:
            grid_key, grid = grid_ref
            key = (*grid_key, ch, bucket)
            scored = memo.get(key)
            if scored is None:
                rows = candidate_features(Profile(), now=now // 1000,
                                          channels=np.full(grid.size, ch, dtype=np.int64),
                                          instants=grid // 1000, zone_name=zone_name,
                                          priors=model.priors, category=category)
                scored = np.stack(_columns(model.scorer, rows))
                scored.flags.writeable = False
                if len(memo) >= _BLANK_GRIDS_MAX:
                    memo.clear()
                memo[key] = scored
            index = np.minimum(np.searchsorted(grid, instants), grid.size - 1)
            hit = grid[index] == instants
            table[:, hit] = scored[:, index[hit]]
        parts.append(table)
        missing.append(np.flatnonzero(~hit) + offset)
        offset += n
    columns = np.concatenate(parts, axis=1) if len(parts) > 1 else parts[0]
    todo = np.concatenate(missing) if len(missing) > 1 else missing[0]
    if todo.size:
        # off the grid: one row each (the windows' first instants), memoised per second
        at = np.concatenate(per) if len(per) > 1 else per[0]
        ch_all = np.repeat(np.array(ch_windows, dtype=np.int64), [s.size for s in per])
        seconds = (at[todo] // 1000).tolist()
        channels = ch_all[todo].tolist()
        rows_memo = model.blank_row_scores
        keys = [(zone_name, ch, bucket, t) for ch, t in zip(channels, seconds, strict=True)]
        known = [rows_memo.get(key) for key in keys]
        unknown = [k for k, value in enumerate(known) if value is None]
        if unknown:
            rows = candidate_features(Profile(), now=now // 1000,
                                      channels=np.array([channels[k] for k in unknown],
                                                        dtype=np.int64),
                                      instants=np.array([seconds[k] for k in unknown],
                                                        dtype=np.int64),
                                      zone_name=zone_name, priors=model.priors,
                                      category=category)
            if len(rows_memo) + len(unknown) > _BLANK_ROWS_MAX:
                rows_memo.clear()
            for k, values in zip(unknown, np.stack(_columns(model.scorer, rows)).T.tolist(),
                                 strict=True):
                known[k] = rows_memo[keys[k]] = (values[0], values[1], values[2], values[3])
        columns[:, todo] = np.array(known, dtype=np.float64).T
    return columns[0], columns[1], columns[2], columns[3]


#: ``_prices`` memo: the last policy settings seen and their value and cost tables (a
#: tenant's policy object is shared by its decisions until the policy changes)
_PRICES: dict[int, tuple[SendTimeSettings, dict[str, float], dict[str, float]]] = {}


def _prices(settings: SendTimeSettings) -> tuple[dict[str, float], dict[str, float]]:
    """``channel_values`` and ``channel_costs`` keyed by plain channel name, built once per
    settings object (kept alive by the memo, so its id cannot be reused meanwhile)."""
    hit = _PRICES.get(id(settings))
    if hit is not None and hit[0] is settings:
        return hit[1], hit[2]
    values = {str(k): v for k, v in settings.channel_values.items()}
    costs = {str(k): v for k, v in settings.channel_costs.items()}
    if len(_PRICES) >= 256:
        _PRICES.clear()
    _PRICES[id(settings)] = (settings, values, costs)
    return values, costs


def score_without_profile(model: ActiveModel, channel: str, instants: list[int], *,
                          zone_name: str, category: str, now: int) -> list[float]:
    """P(engagement) of one channel at ``instants`` (ms) for a user whose profile cannot be
    read (Redis down): the tenant prior alone, so even the fallback answer has a score."""
    rows = candidate_features(Profile(), now=now // 1000,
                              channels=np.full(len(instants), model_channel(channel)),
                              instants=np.asarray(instants, dtype=np.int64) // 1000,
                              zone_name=zone_name, priors=model.priors, category=category)
    scorer = model.scorer
    if scorer is None:
        p = fallback_scores(rows)
    elif not scorer.is_ranker:
        p = np.clip(scorer.score(rows), 0.0, 1.0)
    else:  # one slot at a time: the calibrated distribution is 1, P is the channel rate
        p = rows[:, FEATURE_INDEX["ch_rate"]].astype(np.float64)
    return [round(float(x), 6) for x in p]


# ---------------------------------------------------------------------- choice


#: the rule cited by a ``low_expected_value`` suppression
FLOOR_RULE = "policy.send_time.min_expected_value"


class Choice(msgspec.Struct, frozen=True):
    plan: Plan
    #: one JSON ``[score, score_now, propensity]`` per plan candidate (commit.lua copies
    #: the chosen one into the outcome, so the record and its replays carry it)
    annotations: list[bytes]
    version: str | None
    source: str | None
    #: set when the value floor suppressed the message (``plan`` then has no candidates):
    #: the best slot's ``[score, score_now, propensity]``, for the answer and the log
    suppressed: tuple[float, float, float] | None = None


_json = msgspec.json.Encoder()
#: the ``why`` of a ranked slot (plain strings: no enum lookup per slot)
_EXPLORATION = ReasonCode.EXPLORATION.value
_EXPLORATION_RULE = "policy.send_time.exploration_rate"
_BETTER_SEND_TIME = ReasonCode.BETTER_SEND_TIME.value


def _unit(message_id: str, salt: str) -> float:
    """A uniform number in [0, 1) fixed by the message: retries explore identically."""
    digest = hashlib.sha256(f"{salt}\x1f{message_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def choose(model: ActiveModel, plan: Plan, profile: Profile | None, *, zone_name: str,
           category: str, message_id: str, exempt: bool, policy: Policy,
           now: int, selection: str = "best") -> Choice:
    """Rank the plan's slots (module docstring). ``plan.cands`` empty: nothing to do.
    ``selection`` is the request's ``channel_selection``: "best" ranks every slot of every
    channel by expected value; "ordered" ranks the first channel's slots, then its whole
    window, then the next channel's, so ``commit.lua`` (mode ``ranked``, unchanged) takes
    a later channel only when caps leave the earlier ones no instant at all."""
    if not plan.cands:
        return Choice(plan, [], model.version, SOURCE_PRIOR)
    ordered = selection == "ordered"
    settings = policy.send_time
    events = float(profile.counts.sum()) if profile is not None else 0.0
    rate = settings.exploration_rate if not exempt else 0.0
    explores = rate > 0 and _unit(message_id, "explore") < rate
    new_user = exempt or events < settings.min_history_events
    # a new user who does not explore keeps the earliest instant: only each window's first
    # slot is ever read (its score, the floor, the notes), so only those need a score
    scored = score_slots(model, plan, profile, zone_name=zone_name, category=category,
                         policy=policy, now=now, heads_only=new_user and not explores)
    n_windows = len(plan.cands)
    # each window's first allowed instant's P, rounded once for every annotation
    now_p = [round(x, 6) for x in scored.p[scored.heads].tolist()]
    n = scored.at.size
    # the slots the policy itself picks from (before caps): "ordered" never leaves the
    # first channel unless caps make it, so it neither ranks nor explores the others first
    pool = np.flatnonzero(scored.cand == 0) if ordered else np.arange(n)
    n_pool = scored.sizes[0] if ordered else sum(scored.sizes)
    # the value floor judges the message by the best slot it could be given: any slot
    # with history, a channel's first allowed instant without (the prior's score then)
    below: int | None = None
    floor = settings.min_expected_value
    if floor is not None and not exempt:
        eligible = np.flatnonzero(scored.first) if new_user else np.arange(n)
        best = int(eligible[np.argmax(scored.ev[eligible])])
        if scored.ev[best] < floor:
            below = best
    if below is not None and not explores:
        # suppressed before the commit: nothing to reserve; the propensity is that of not
        # exploring (an explored message is sent anyway, so logs keep covering it)
        note = (round(float(scored.p[below]), 6), now_p[int(scored.cand[below])],
                round(1.0 - rate, 6))
        empty = msgspec.structs.replace(plan, cands=[])
        return Choice(empty, [], scored.version, scored.source, suppressed=note)
    if new_user and not explores:
        # the earliest allowed instant, as without a model (mode ``first`` keeps the
        # caller's channel order); the score is that of each channel's first slot,
        # taken unless exploration picked another slot (exempt: always). The most common
        # path of all (every new user): it needs neither the propensities nor a sort
        kept = round(1.0 - rate + rate / n_pool, 6)
        earliest = [_json.encode([now_p[i], now_p[i], kept]) for i in range(n_windows)]
        kept_plan = msgspec.structs.replace(plan, mode="first") if ordered else plan
        return Choice(kept_plan, earliest, scored.version, scored.source)
    propensity = np.zeros(n)
    propensity[pool] = rate / n_pool
    if new_user:
        if ordered:  # the first channel's first allowed instant, else the next channel's
            greedy = int(np.lexsort((scored.at, scored.cand, ~scored.first))[0])
        else:  # the earliest allowed instant of any channel
            greedy = int(np.lexsort((scored.cand, scored.at, ~scored.first))[0])
        # a user without history explores like any other (so the logs teach the model
        # about new users): a uniform slot, in time order so retries pick the same one
        chronological = pool[np.lexsort((scored.cand[pool], scored.at[pool]))]
        explored = int(chronological[min(int(_unit(message_id, "slot") * n_pool),
                                         n_pool - 1)])
        if below is None:
            propensity[greedy] += 1.0 - rate
        return _ranked(plan, scored, np.array([explored]), explored, propensity, now_p,
                       ordered=ordered)

    adjusted = np.where(scored.first, scored.ev + settings.margin * np.abs(scored.ev),
                        scored.ev)
    # best first; ties: earlier instant, then the request's channel order ("ordered": the
    # request's channel order first)
    order = (np.lexsort((scored.at, -adjusted, scored.cand)) if ordered
             else np.lexsort((scored.cand, scored.at, -adjusted)))
    if below is None:
        propensity[int(order[0])] += 1.0 - rate
    explored = -1
    if explores:  # the pool comes first in ``order``
        explored = int(order[min(int(_unit(message_id, "slot") * n_pool), n_pool - 1)])
        order = np.concatenate([[explored], order[order != explored]])
    return _ranked(plan, scored, order, explored, propensity, now_p, ordered=ordered)


def _ranked(plan: Plan, scored: Scored, order: npt.NDArray[np.intp], explored: int,
            propensity: F64, now_p: list[float], *, ordered: bool = False) -> Choice:
    """The plan in ``ranked`` mode: the slots of ``order``, then the plan's own windows (when
    caps take every slot, the earliest instant any channel frees). ``ordered``: after each
    channel's slots, that channel's whole window as a scored candidate (``s`` 1), so its
    earliest free instant wins before any later channel is tried; ``order`` must then list
    the channels' slots channel by channel. ``now_p``: each window's first slot's P,
    already rounded.

    One loop over plain Python lists (``tolist`` once, not a numpy scalar per slot and
    field): this loop builds every ranked candidate, so it is most of ``choose``'s own
    cost for a user with history."""
    slots: list[Candidate] = []
    notes: list[bytes] = []
    model_rule = f"send_time.model:{scored.version}"
    fallback_notes = [_json.encode([x, x, 1.0]) for x in now_p]
    cand = scored.cand.tolist()
    at = scored.at.tolist()
    p = scored.p.tolist()
    first = scored.first.tolist()
    prop = propensity.tolist()
    windows = plan.cands
    order_list = order.tolist()
    groups = ([[j for j in order_list if cand[j] == i] for i in range(len(windows))]
              if ordered else [order_list])
    for i, group in enumerate(groups):
        for j in group:
            c = cand[j]
            window = windows[c]
            t = at[j]
            why = ([_EXPLORATION, _EXPLORATION_RULE] if j == explored else [] if first[j]
                   else [_BETTER_SEND_TIME, model_rule])
            slots.append(Candidate(window.ch, t, t + 1, window.pb, s=1, why=why))
            notes.append(_json.encode([round(p[j], 6), now_p[c], round(prop[j], 6)]))
        if ordered:
            slots.append(msgspec.structs.replace(windows[i], s=1))
            notes.append(fallback_notes[i])
    # the plan's own windows stay last (unscored, ``s`` 0): the fallback of mode ``ranked``
    # and what a preemptible deferral keeps for its re-decision
    cands = [*slots, *windows]
    ranked = msgspec.structs.replace(plan, cands=cands, mode="ranked")
    return Choice(ranked, [*notes, *fallback_notes], scored.version, scored.source)
