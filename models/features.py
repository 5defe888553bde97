"""The one feature definition shared by training and serving.

``FEATURES`` is the ordered column list of every row the model sees; ``FEATURE_HASH``
fingerprints it together with everything that changes a column's meaning (channels,
category buckets, decay half-life, smoothing strengths, ``FEATURE_VERSION``). A model
stores the hash in its manifest and ``models.scorer`` refuses a model whose hash differs.

``build_features`` is vectorised over candidates: serving passes one profile and ~100
(channel, instant) candidates, training passes one replayed profile per example. There
is no Python loop over candidates or features, so 96 candidates cost well under 1 ms.

The user's rhythm comes mostly from the profile's **long memory** (undecayed counts):
real users are sparse, and what predicts the hour of their next visit is every visit
they ever made, not the last three weeks (``docs/model.md`` has the measurements). The
**smoothed-histogram heuristic** (``heuristic_distribution``) is defined here once and
used three ways: as a feature, as the no-model fallback (``fallback_scores``) and as the
baseline the champion gate compares a model with:

    P(hour h) ∝ count[h-1] + count[h] + count[h+1]  +  K_PRIOR * tenant share of h

(circular ±1 h, undecayed counts over all days, tenant prior from ``models.priors``).
Other shrinkage: day-type share = (user's ±1 h count on that weekday/weekend type +
K_PRIOR * tenant day-type share) / (user's day-type events * 3 + K_PRIOR); recent share
= (decayed ±1 h mass + K_RECENT * heuristic share) / (3 * decayed mass + K_RECENT);
channel rate = (engaged sends + K_RATE * tenant channel rate) / (sends + K_RATE).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import numpy as np
import numpy.typing as npt

from models.priors import Priors
from models.profile import (
    ENGAGEMENTS_OFFSET,
    HALF_LIFE_SECONDS,
    SENDS_OFFSET,
    Profile,
    ProfileBatch,
    decay,
)
from models.timeutil import (
    HOURS_PER_WEEK,
    country_of_zone,
    holiday_flags,
    hour_of_week,
    local_seconds,
    zone,
)
from models.vocab import ANY_CHANNEL, CATEGORY_BUCKETS, CHANNELS, category_bucket

FEATURE_VERSION = 2
#: What decisions report as their model version when the heuristic scored them
#: (``fallback_scores``): it changes exactly when the features' definition does.
HEURISTIC_VERSION = f"heuristic-v{FEATURE_VERSION}"
HOURS = 24
#: Pseudo-events of the tenant prior in the heuristic (and the day-type share).
K_PRIOR = 5.0
#: Pseudo-events of the heuristic share in the recent (decayed) share.
K_RECENT = 3.0
#: Pseudo-sends of the tenant channel rate in the per-user channel rate.
K_RATE = 10.0

FEATURES: tuple[str, ...] = (
    # the candidate
    "cand_local_hour",          # local wall-clock hour incl. minutes, 0-24
    "cand_weekday",             # 0 = Monday
    "cand_is_weekend",
    "cand_is_holiday",          # public holiday in the user's country
    "channel",                  # categorical: index in CHANNELS, len(CHANNELS) = any
    "category",                 # categorical: crc32 bucket of the message category
    # the user's long memory (undecayed counts): how much we know and their rhythm
    "user_events",              # events ever counted: how far to trust the user's own hours
    "user_days_known",          # days since the first event (NaN: none)
    "heuristic_share",          # the smoothed-histogram heuristic's P(candidate hour), x24
    "user_count_hour",          # user's events in the candidate hour-of-day
    "user_count_3h",            # ... in the candidate hour +-1 h
    "user_share_hour",          # user_count_hour / user_events (NaN: no events)
    "user_share_daytype",       # +-1 h share on the candidate's day type, shrunk, x24
    "user_events_daytype",      # user's events on the candidate's day type (weekday/weekend)
    "user_count_how_3h",        # user's events on the candidate weekday, hour +-1 h
    "user_mode_distance",       # circular hours from candidate to the user's mode hour
    "user_hour_spread",         # 1 - circular concentration of the user's hours (0: one hour)
    # the short memory (decayed, 21-day half-life): what changed lately
    "recent_mass",              # decayed event mass
    "recent_share_3h",          # decayed +-1 h share shrunk toward the heuristic, x24
    # the tenant's own priors
    "prior_share_hour",         # tenant share of the candidate hour-of-day, x24
    "prior_share_how",          # tenant share of the candidate hour-of-week, x168
    # the channel
    "ch_sends",                 # decayed sends on the candidate channel
    "ch_engagements",           # decayed engaged sends on it
    "ch_rate",                  # smoothed engagement rate on it
    "user_rate",                # smoothed engagement rate over all channels
    "ch_rate_lift",             # ch_rate / population rate of the channel
    # recency and fatigue, measured at the candidate instant
    "hours_since_send_ch",
    "hours_since_engagement_ch",
    "hours_since_send",
    "hours_since_active",
    "sends_24h",
    "sends_7d",
    "sends_24h_ch",
    "sends_7d_ch",
)
FEATURE_INDEX = {name: index for index, name in enumerate(FEATURES)}
#: Column runs ``build_features`` fills with one assignment each (they must stay adjacent).
_RECENCY = slice(FEATURE_INDEX["hours_since_send_ch"], FEATURE_INDEX["hours_since_active"] + 1)
_FATIGUE = slice(FEATURE_INDEX["sends_24h"], FEATURE_INDEX["sends_7d_ch"] + 1)
if FEATURES[_RECENCY] != ("hours_since_send_ch", "hours_since_engagement_ch",
                          "hours_since_send", "hours_since_active") or \
        FEATURES[_FATIGUE] != ("sends_24h", "sends_7d", "sends_24h_ch", "sends_7d_ch"):
    raise RuntimeError("build_features fills these column runs in this order")
CATEGORICAL_FEATURES: tuple[str, ...] = ("channel", "category")


def _fingerprint() -> str:
    spec = {
        "version": FEATURE_VERSION,
        "features": FEATURES,
        "categorical": CATEGORICAL_FEATURES,
        "channels": CHANNELS,
        "category_buckets": CATEGORY_BUCKETS,
        "half_life_seconds": HALF_LIFE_SECONDS,
        "smoothing": [K_PRIOR, K_RECENT, K_RATE],
    }
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]


FEATURE_HASH = _fingerprint()

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]
Ints = npt.NDArray[np.integer]


def smooth3(hod: F64) -> F64:
    """Circular ±1 h sum over the last axis (24 hours): ``x[h-1] + x[h] + x[h+1]``.

    Two concatenations instead of ``np.roll`` (the same values, added in the same order):
    serving calls this five times per decision on tiny arrays, where ``np.roll``'s own
    overhead was a third of the feature build."""
    previous = np.concatenate([hod[..., -1:], hod[..., :-1]], axis=-1)
    following = np.concatenate([hod[..., 1:], hod[..., :1]], axis=-1)
    result: F64 = hod + previous + following
    return result


def heuristic_distribution(counts_hod: F64, prior_hod: F64) -> F64:
    """The smoothed-histogram heuristic: P(hour) for each row of 24 undecayed counts.

    ``(smooth3(counts) + K_PRIOR * prior) / (3 * events + K_PRIOR)``; with no events it
    is the tenant prior itself. Rows sum to 1.
    """
    return _normalised(smooth3(counts_hod) + K_PRIOR * prior_hod)


def _normalised(scores: F64) -> F64:
    """Rows scaled to sum to 1 (the heuristic's last step, shared with ``Rhythm``)."""
    result: F64 = scores / scores.sum(axis=-1, keepdims=True)
    return result


class Rhythm:
    """Per-profile long- and short-memory hour distributions (rows = profiles)."""

    __slots__ = ("counts_3h", "counts_hod", "counts_week", "events", "heuristic", "mode_hour",
                 "recent_3h_share", "recent_mass", "spread")

    def __init__(self, counts: F64, decayed_hist: F64, priors: Priors) -> None:
        week = counts.reshape(-1, 7, HOURS)
        self.counts_week: F64 = week
        self.counts_hod: F64 = week.sum(axis=1)
        self.events: F64 = counts.sum(axis=1)
        # heuristic_distribution, with its prior term (K_PRIOR x hour shares) from the
        # per-priors tables and the smoothed counts kept for the features
        self.counts_3h: F64 = smooth3(self.counts_hod)
        self.heuristic: F64 = _normalised(self.counts_3h + _PriorTables.of(priors).k_hod)
        # the raw mode; the heuristic only breaks ties (smoothing alone would tie h-1..h+1)
        self.mode_hour: F64 = np.argmax(self.counts_hod + 1e-3 * self.heuristic, axis=1) + 0.5
        resultant = np.hypot(self.counts_hod @ _HOUR_COS, self.counts_hod @ _HOUR_SIN)
        self.spread: F64 = np.where(self.events > 0,
                                    1.0 - resultant / np.maximum(self.events, 1e-9), np.nan)
        recent_hod = decayed_hist.reshape(-1, 7, HOURS).sum(axis=1)
        self.recent_mass: F64 = recent_hod.sum(axis=1)
        self.recent_3h_share: F64 = (
            (smooth3(recent_hod) + K_RECENT * self.heuristic)
            / (3 * self.recent_mass + K_RECENT)[:, None])


#: Angles of the 24 hour centres (for the circular spread), computed once.
_HOUR_ANGLE = 2 * np.pi * (np.arange(HOURS) + 0.5) / HOURS
_HOUR_COS = np.cos(_HOUR_ANGLE)
_HOUR_SIN = np.sin(_HOUR_ANGLE)


class _PriorTables:
    """What ``build_features`` derives from the priors alone, computed once per
    ``Priors`` (they are immutable) and kept in ``priors.derived``: the same arrays,
    computed by the same expressions, that serving used to rebuild for every decision."""

    __slots__ = ("hod_share", "how_share", "k_hod", "rates", "type_share")

    def __init__(self, priors: Priors) -> None:
        self.k_hod: F64 = K_PRIOR * priors.hod
        self.rates: F64 = np.append(priors.channel_rates, priors.overall_rate)
        prior_week = priors.how.reshape(7, HOURS)
        prior_type = np.stack([prior_week[:5].sum(axis=0), prior_week[5:].sum(axis=0)])
        prior_type /= prior_type.sum(axis=1, keepdims=True)
        self.type_share: F64 = K_PRIOR * prior_type[None]
        self.hod_share: F64 = priors.hod * HOURS
        self.how_share: F64 = priors.how * HOURS_PER_WEEK

    @staticmethod
    def of(priors: Priors) -> _PriorTables:
        tables = priors.derived.get("features")
        if not isinstance(tables, _PriorTables):
            tables = priors.derived["features"] = _PriorTables(priors)
        return tables


class _ProfileTables:
    """Everything ``build_features`` derives from the profiles alone (rows = profiles),
    before it gathers per candidate."""

    __slots__ = ("count_3h", "engaged_x", "last_eng_x", "last_send_x", "rates_x", "rhythm",
                 "sends_x", "type_events", "type_share", "user_rate", "week_3h")

    def __init__(self, profiles: ProfileBatch, now: I64, priors: Priors) -> None:
        scale = np.where(profiles.ref > 0, decay(now - profiles.ref), 0.0)
        decayed = profiles.decayed.astype(np.float64) * scale[:, None]
        rhythm = Rhythm(profiles.counts.astype(np.float64), decayed[:, :HOURS_PER_WEEK],
                        priors)
        self.rhythm = rhythm
        sends = decayed[:, SENDS_OFFSET:ENGAGEMENTS_OFFSET]
        engaged = decayed[:, ENGAGEMENTS_OFFSET:]
        total_sends = sends.sum(axis=1)
        total_engaged = engaged.sum(axis=1)
        self.user_rate: F64 = ((total_engaged + K_RATE * priors.overall_rate)
                               / (total_sends + K_RATE))
        # Column ANY_CHANNEL holds the all-channel aggregate, so "any" rows need no branch.
        self.sends_x: F64 = np.column_stack([sends, total_sends])
        self.engaged_x: F64 = np.column_stack([engaged, total_engaged])
        self.rates_x: F64 = ((self.engaged_x + K_RATE * _PriorTables.of(priors).rates)
                             / (self.sends_x + K_RATE))
        self.last_send_x: I64 = np.column_stack([profiles.last_send,
                                                 profiles.last_send.max(axis=1)])
        self.last_eng_x: I64 = np.column_stack([profiles.last_engagement,
                                                profiles.last_engagement.max(axis=1)])
        self.count_3h: F64 = rhythm.counts_3h
        week = rhythm.counts_week  # (profiles, 7, 24)
        type_hod = np.stack([week[:, :5].sum(axis=1), week[:, 5:].sum(axis=1)], axis=1)
        self.type_events: F64 = type_hod.sum(axis=2)  # (profiles, 2)
        self.type_share: F64 = ((smooth3(type_hod) + _PriorTables.of(priors).type_share)
                                / (3 * self.type_events + K_PRIOR)[:, :, None])
        self.week_3h: F64 = smooth3(week)

    @staticmethod
    def of_empty(priors: Priors) -> _ProfileTables:
        """The tables of a profile without any event (``ref`` 0: nothing decays, so they
        depend on the priors alone), computed once per ``Priors``: new users, and every
        user while Redis is unreachable, are scored with them."""
        tables = priors.derived.get("features.empty_profile")
        if not isinstance(tables, _ProfileTables):
            tables = _ProfileTables(ProfileBatch.view(Profile()),
                                    np.zeros(1, dtype=np.int64), priors)
            shared = [getattr(tables, name) for name in _ProfileTables.__slots__]
            shared += [getattr(tables.rhythm, name) for name in Rhythm.__slots__]
            for array in shared:  # shared by every caller: reading only
                if isinstance(array, np.ndarray):
                    array.flags.writeable = False
            priors.derived["features.empty_profile"] = tables
        return tables


def _no_events(profile: Profile) -> bool:
    """True when ``profile`` holds nothing ``_ProfileTables`` reads (whatever ``now`` is)."""
    return (profile.ref == 0 and not profile.counts.any() and not profile.decayed.any()
            and not profile.last_send.any() and not profile.last_engagement.any())


def _hours_since(instant: I64, last: I64) -> F64:
    """Hours from ``last`` to ``instant``; NaN when there was no such event (LightGBM's missing)."""
    hours = (instant - last).astype(np.float64) / 3600.0
    return np.where(last > 0, np.maximum(hours, 0.0), np.nan)


def build_features(
    profiles: ProfileBatch,
    *,
    now: I64,
    profile_index: Ints,
    channel: Ints,
    instant: I64,
    local: I64,
    holiday: npt.NDArray[np.bool_],
    category: Ints,
    priors: Priors,
    user: _ProfileTables | None = None,
) -> F32:
    """Rows (one per candidate, columns ``FEATURES``) as float32.

    ``profiles`` row ``profile_index[j]`` describes candidate ``j``'s user as of
    ``now[profile_index[j]]`` (serving: the request time; training: the example's
    instant). ``instant`` is the candidate send instant (UTC epoch seconds), ``local`` its
    local wall-clock seconds (``models.timeutil.local_seconds``), ``holiday`` whether that
    local day is a public holiday, ``channel`` an index into ``CHANNELS`` (or
    ``ANY_CHANNEL``), ``category`` a ``models.vocab.category_bucket``. ``user``: the
    profiles' tables when the caller already has them (``candidate_features``: the
    empty profile's, cached per priors).
    """
    n = int(instant.shape[0])
    p = np.asarray(profile_index, dtype=np.intp)
    ch = np.asarray(channel, dtype=np.intp)
    # One profile (serving): gather from its row directly. ``table[p, i]`` with p all
    # zeros is the same values as ``table[0][i]``, at a quarter of the indexing cost.
    single = len(profiles) == 1

    def pick(table: npt.NDArray[np.generic], *index: npt.NDArray[np.integer] | int
             ) -> npt.NDArray[Any]:
        picked: npt.NDArray[Any] = table[0][index] if single else table[(p, *index)]
        return picked

    if user is None:
        user = _ProfileTables(profiles, now, priors)
    tables = _PriorTables.of(priors)
    prior_rates = tables.rates
    rhythm = user.rhythm
    sends_x, engaged_x, rates_x = user.sends_x, user.engaged_x, user.rates_x
    last_send_x, last_eng_x, user_rate = user.last_send_x, user.last_eng_x, user.user_rate

    how = hour_of_week(local)
    seconds_of_day = local % 86400
    hod = seconds_of_day // 3600
    local_hour = seconds_of_day / 3600.0
    weekday = how // 24
    weekend = weekday >= 5
    rows = np.empty((n, len(FEATURES)), dtype=np.float32)
    col = FEATURE_INDEX

    rows[:, col["cand_local_hour"]] = local_hour
    rows[:, col["cand_weekday"]] = weekday
    rows[:, col["cand_is_weekend"]] = weekend
    rows[:, col["cand_is_holiday"]] = holiday
    rows[:, col["channel"]] = ch
    rows[:, col["category"]] = category

    # Per-profile tables first, then one gather per column: a (candidates, 168) copy of
    # the counts would cost gigabytes on a training set.
    events = rhythm.events[p]
    first_seen = profiles.first_seen[p]
    count_hour = pick(rhythm.counts_hod, hod)
    rows[:, col["user_events"]] = events
    rows[:, col["user_days_known"]] = np.where(
        first_seen > 0, np.maximum(instant - first_seen, 0) / 86400.0, np.nan)
    rows[:, col["heuristic_share"]] = pick(rhythm.heuristic, hod) * HOURS
    rows[:, col["user_count_hour"]] = count_hour
    rows[:, col["user_count_3h"]] = pick(user.count_3h, hod)
    rows[:, col["user_share_hour"]] = np.where(
        events > 0, count_hour / np.maximum(events, 1e-9), np.nan)
    day_type = weekend.astype(np.intp)
    rows[:, col["user_share_daytype"]] = pick(user.type_share, day_type, hod) * HOURS
    rows[:, col["user_events_daytype"]] = pick(user.type_events, day_type)
    rows[:, col["user_count_how_3h"]] = pick(user.week_3h, weekday, hod)
    distance = np.abs(local_hour - rhythm.mode_hour[p])
    rows[:, col["user_mode_distance"]] = np.minimum(distance, HOURS - distance)
    rows[:, col["user_hour_spread"]] = rhythm.spread[p]
    rows[:, col["recent_mass"]] = rhythm.recent_mass[p]
    rows[:, col["recent_share_3h"]] = pick(rhythm.recent_3h_share, hod) * HOURS
    rows[:, col["prior_share_hour"]] = tables.hod_share[hod]
    rows[:, col["prior_share_how"]] = tables.how_share[how]

    rows[:, col["ch_sends"]] = pick(sends_x, ch)
    rows[:, col["ch_engagements"]] = pick(engaged_x, ch)
    rows[:, col["ch_rate"]] = pick(rates_x, ch)
    rows[:, col["user_rate"]] = user_rate[p]
    rows[:, col["ch_rate_lift"]] = pick(rates_x, ch) / prior_rates[ch]

    # The four recency columns are adjacent (_RECENCY): one (n, 4) computation.
    lasts = np.column_stack([pick(last_send_x, ch), pick(last_eng_x, ch),
                             last_send_x[p, ANY_CHANNEL], profiles.last_active[p]])
    rows[:, _RECENCY] = _hours_since(instant[:, None], lasts)

    # (n or 1, RECENT_SENDS): one profile's row broadcasts against the candidates
    recent = profiles.recent_at[:1] if single else profiles.recent_at[p]
    recent_channel = profiles.recent_channel[:1] if single else profiles.recent_channel[p]
    age = instant[:, None] - recent
    valid = (recent > 0) & (age > 0)
    in_day = valid & (age <= 86400)
    in_week = valid & (age <= 7 * 86400)
    same_channel = (recent_channel == ch[:, None]) | (ch == ANY_CHANNEL)[:, None]
    # ... and so are the four fatigue counters (_FATIGUE): one stack, one sum
    rows[:, _FATIGUE] = np.stack([in_day, in_week, in_day & same_channel,
                                  in_week & same_channel], axis=1).sum(axis=2)
    return rows


def fallback_scores(rows: F32) -> F64:
    """Engagement estimate without a model: smoothed channel rate x the heuristic's lift.

    Within one channel it ranks hours exactly like the smoothed-histogram heuristic
    (``heuristic_distribution``, with the tenant priors the rows were built with), so the
    fallback is never worse than that heuristic; the channel rate turns it into a
    probability-like number serving can compare across channels and with a value floor.
    """
    return fallback_from(rows[:, FEATURE_INDEX["heuristic_share"]].astype(np.float64),
                         rows[:, FEATURE_INDEX["ch_rate"]].astype(np.float64))


def fallback_from(lift: F64, rate: F64) -> F64:
    """``fallback_scores`` from the two columns it reads (``heuristic_share``, ``ch_rate``,
    as float64): serving keeps those columns of memoised rows, not the rows."""
    result: F64 = np.clip(rate * lift, 0.0, 1.0)
    return result


def candidate_features(
    profile: Profile,
    *,
    now: int,
    channels: Ints,
    instants: I64,
    zone_name: str,
    priors: Priors,
    category: str | None = None,
    country: str | None = None,
) -> F32:
    """Serving's entry point: rows for one user's candidates (channel index, instant).

    ``country`` drives the holiday flag; by default it is the country of ``zone_name``.
    Raises ``models.timeutil.UnknownTimeZoneError`` for an unknown zone.
    """
    tz = zone(zone_name)
    instants = np.asarray(instants, dtype=np.int64)
    local = local_seconds(tz, instants)
    holiday = holiday_flags(country or country_of_zone(zone_name), local)
    n = instants.shape[0]
    return build_features(
        ProfileBatch.view(profile),
        user=_ProfileTables.of_empty(priors) if _no_events(profile) else None,
        now=np.array([now], dtype=np.int64),
        profile_index=np.zeros(n, dtype=np.intp),
        channel=np.asarray(channels, dtype=np.int64),
        instant=instants,
        local=local,
        holiday=holiday,
        category=np.full(n, category_bucket(category), dtype=np.int64),
        priors=priors,
    )
