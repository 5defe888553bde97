"""The one feature definition shared by training and serving.

``FEATURES`` is the ordered column list of every row the model sees; ``FEATURE_HASH``
fingerprints it together with everything that changes a column's meaning (channels,
category buckets, decay half-life, smoothing strengths, ``FEATURE_VERSION``). A model
stores the hash in its manifest and ``models.scorer`` refuses a model whose hash differs.

``build_features`` is vectorised over candidates: serving passes one profile and ~100
(channel, instant) candidates, training passes one replayed profile per example. There
is no Python loop over candidates or features, so 96 candidates cost well under 1 ms.

Smoothing (empirical Bayes with pseudo-counts, so a user with little data looks like the
population and a heavy user looks like themselves):

* hour-of-day share = (user's hour-of-day mass + K_HOD * global hour-of-day share)
  / (user's mass + K_HOD);
* hour-of-week share = (user's bin mass + K_HOW * hour-of-day share * P(weekday | hour))
  / (user's mass + K_HOW), i.e. weekday detail shrinks toward the user's own daily
  rhythm spread over the week like the population does;
* channel rate = (engaged sends + K_RATE * global channel rate) / (sends + K_RATE).
"""

from __future__ import annotations

import hashlib
import json

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

FEATURE_VERSION = 1
K_HOD = 8.0
K_HOW = 96.0
K_RATE = 10.0

FEATURES: tuple[str, ...] = (
    # the candidate
    "cand_local_hour",          # local wall-clock hour incl. minutes, 0-24
    "cand_weekday",             # 0 = Monday
    "cand_is_weekend",
    "cand_is_holiday",          # public holiday in the user's country
    "channel",                  # categorical: index in CHANNELS, len(CHANNELS) = any
    "category",                 # categorical: crc32 bucket of the message category
    # the user's rhythm (smoothed engagement histogram)
    "user_mass",                # decayed engagement count: how much we know
    "user_share_how",           # smoothed share of the candidate hour-of-week, x168
    "user_share_hod",           # smoothed share of the candidate hour-of-day, x24
    "user_share_next2h",        # share of [h, h+2): engagement comes after the send, x12
    "user_share_prev2h",        # share of [h-2, h), x12
    "user_raw_how",             # unsmoothed decayed count in the candidate bin
    "user_peak_distance",       # hours between candidate and the user's peak hour (circular)
    "user_weekend_lift",        # user's weekend share / population's weekend share
    "global_share_how",         # population share of the candidate hour-of-week, x168
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
CATEGORICAL_FEATURES: tuple[str, ...] = ("channel", "category")


def _fingerprint() -> str:
    spec = {
        "version": FEATURE_VERSION,
        "features": FEATURES,
        "categorical": CATEGORICAL_FEATURES,
        "channels": CHANNELS,
        "category_buckets": CATEGORY_BUCKETS,
        "half_life_seconds": HALF_LIFE_SECONDS,
        "smoothing": [K_HOD, K_HOW, K_RATE],
    }
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]


FEATURE_HASH = _fingerprint()

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]
Ints = npt.NDArray[np.integer]


class SmoothedRhythm:
    """Per-profile smoothed shares (rows = profiles), computed once and gathered per candidate."""

    __slots__ = ("hod_share", "how_share", "mass", "peak_hour", "weekend_lift")

    def __init__(self, hist: F64, priors: Priors) -> None:
        mass = hist.sum(axis=1)
        week = hist.reshape(-1, 7, 24)
        hod = week.sum(axis=1)
        self.mass: F64 = mass
        self.hod_share: F64 = (hod + K_HOD * priors.hod) / (mass + K_HOD)[:, None]
        spread = self.hod_share[:, None, :] * priors.cond_day[None, :, :]
        how = (week + K_HOW * spread) / (mass + K_HOW)[:, None, None]
        self.how_share: F64 = how.reshape(-1, HOURS_PER_WEEK)
        self.peak_hour: F64 = np.argmax(self.hod_share, axis=1) + 0.5
        prior_weekend = priors.how[5 * 24:].sum()
        self.weekend_lift: F64 = self.how_share[:, 5 * 24:].sum(axis=1) / prior_weekend


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
) -> F32:
    """Rows (one per candidate, columns ``FEATURES``) as float32.

    ``profiles`` row ``profile_index[j]`` describes candidate ``j``'s user as of
    ``now[profile_index[j]]`` (serving: the request time; training: the example's
    instant). ``instant`` is the candidate send instant (UTC epoch seconds), ``local`` its
    local wall-clock seconds (``models.timeutil.local_seconds``), ``holiday`` whether that
    local day is a public holiday, ``channel`` an index into ``CHANNELS`` (or
    ``ANY_CHANNEL``), ``category`` a ``models.vocab.category_bucket``.
    """
    n = int(instant.shape[0])
    p = np.asarray(profile_index, dtype=np.intp)
    ch = np.asarray(channel, dtype=np.intp)
    scale = np.where(profiles.ref > 0, decay(now - profiles.ref), 0.0)
    decayed = profiles.decayed.astype(np.float64) * scale[:, None]
    rhythm = SmoothedRhythm(decayed[:, :HOURS_PER_WEEK], priors)

    sends = decayed[:, SENDS_OFFSET:ENGAGEMENTS_OFFSET]
    engaged = decayed[:, ENGAGEMENTS_OFFSET:]
    total_sends = sends.sum(axis=1)
    total_engaged = engaged.sum(axis=1)
    user_rate = (total_engaged + K_RATE * priors.overall_rate) / (total_sends + K_RATE)
    prior_rates = np.append(priors.channel_rates, priors.overall_rate)
    # Column ANY_CHANNEL holds the all-channel aggregate, so "any" rows need no branch.
    sends_x = np.column_stack([sends, total_sends])
    engaged_x = np.column_stack([engaged, total_engaged])
    rates_x = (engaged_x + K_RATE * prior_rates) / (sends_x + K_RATE)
    last_send_x = np.column_stack([profiles.last_send, profiles.last_send.max(axis=1)])
    last_eng_x = np.column_stack([profiles.last_engagement,
                                  profiles.last_engagement.max(axis=1)])

    how = hour_of_week(local)
    seconds_of_day = local % 86400
    hod = seconds_of_day // 3600
    local_hour = seconds_of_day / 3600.0
    weekday = how // 24
    hod_share = rhythm.hod_share[p]  # (n, 24): small, and makes the window sums simple
    rows = np.empty((n, len(FEATURES)), dtype=np.float32)
    col = FEATURE_INDEX

    rows[:, col["cand_local_hour"]] = local_hour
    rows[:, col["cand_weekday"]] = weekday
    rows[:, col["cand_is_weekend"]] = weekday >= 5
    rows[:, col["cand_is_holiday"]] = holiday
    rows[:, col["channel"]] = ch
    rows[:, col["category"]] = category
    rows[:, col["user_mass"]] = rhythm.mass[p]
    rows[:, col["user_share_how"]] = rhythm.how_share[p, how] * HOURS_PER_WEEK
    at = np.arange(n)
    rows[:, col["user_share_hod"]] = hod_share[at, hod] * 24
    rows[:, col["user_share_next2h"]] = (hod_share[at, hod] + hod_share[at, (hod + 1) % 24]) * 12
    rows[:, col["user_share_prev2h"]] = (hod_share[at, (hod - 1) % 24]
                                         + hod_share[at, (hod - 2) % 24]) * 12
    rows[:, col["user_raw_how"]] = decayed[p, how]
    distance = np.abs(local_hour - rhythm.peak_hour[p])
    rows[:, col["user_peak_distance"]] = np.minimum(distance, 24 - distance)
    rows[:, col["user_weekend_lift"]] = rhythm.weekend_lift[p]
    rows[:, col["global_share_how"]] = priors.how[how] * HOURS_PER_WEEK

    rows[:, col["ch_sends"]] = sends_x[p, ch]
    rows[:, col["ch_engagements"]] = engaged_x[p, ch]
    rows[:, col["ch_rate"]] = rates_x[p, ch]
    rows[:, col["user_rate"]] = user_rate[p]
    rows[:, col["ch_rate_lift"]] = rates_x[p, ch] / prior_rates[ch]

    rows[:, col["hours_since_send_ch"]] = _hours_since(instant, last_send_x[p, ch])
    rows[:, col["hours_since_engagement_ch"]] = _hours_since(instant, last_eng_x[p, ch])
    rows[:, col["hours_since_send"]] = _hours_since(instant, last_send_x[p, ANY_CHANNEL])
    rows[:, col["hours_since_active"]] = _hours_since(instant, profiles.last_active[p])

    recent = profiles.recent_at[p]  # (n, RECENT_SENDS)
    age = instant[:, None] - recent
    valid = (recent > 0) & (age > 0)
    in_day = valid & (age <= 86400)
    in_week = valid & (age <= 7 * 86400)
    same_channel = (profiles.recent_channel[p] == ch[:, None]) | (ch[:, None] == ANY_CHANNEL)
    rows[:, col["sends_24h"]] = in_day.sum(axis=1)
    rows[:, col["sends_7d"]] = in_week.sum(axis=1)
    rows[:, col["sends_24h_ch"]] = (in_day & same_channel).sum(axis=1)
    rows[:, col["sends_7d_ch"]] = (in_week & same_channel).sum(axis=1)
    return rows


def fallback_scores(rows: F32) -> F64:
    """Engagement estimate without a model: smoothed channel rate x the user's hour lift.

    The strongest simple heuristic (the user's smoothed histogram, shrunk toward the
    global prior) turned into a probability-like number so serving can rank candidates
    and compare them with a value floor the same way it does with model scores.
    """
    lift = rows[:, FEATURE_INDEX["user_share_how"]].astype(np.float64)
    rate = rows[:, FEATURE_INDEX["ch_rate"]].astype(np.float64)
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
        ProfileBatch.of(profile),
        now=np.array([now], dtype=np.int64),
        profile_index=np.zeros(n, dtype=np.intp),
        channel=np.asarray(channels, dtype=np.int64),
        instant=instants,
        local=local,
        holiday=holiday,
        category=np.full(n, category_bucket(category), dtype=np.int64),
        priors=priors,
    )
