"""A simulated world with known ground truth, and the logs a platform would have of it.

Why: to test the pipeline, demo it, and above all to measure how much of the *oracle's*
gain a policy captures, which real logs can never tell. The world is deliberately
richer than the model's features (personal multi-peak rhythms, later weekends, holidays,
channel-specific attention, fatigue, quiet-hour unsubscribes), so the model has to learn
it from the logs rather than read it off.

Ground truth (``World``): user ``u`` is active as a Poisson process whose hourly rate is
``level[u] * rhythm[u, weekend_or_holiday, local_hour]``. A message on channel ``c``
sent at ``t`` is delivered with ``DELIVERY[c]``; the user notices it at the first
"attention moment", a Poisson process ``ATTENTION[c]`` times their activity rate; on
noticing they engage (open) with probability ``interest[u, c] * category effect *
exp(-FATIGUE_24H * sends_24h - FATIGUE_7D * sends_7d)``. So P(open within the window W)
= delivery * that probability * (1 - exp(-ATTENTION[c] * activity mass in [t, t+W))).
Every send risks an unsubscribe from its channel, more so when the user is fatigued and
much more in local quiet hours (22:00-07:00).

Two kinds of users. *Dense* users (app-like: ~1.5 events a day, personal multi-peak
rhythms). *Sparse* users (``sparse_share`` of them) look like real shoppers: a median of
~33 events in nine months and a quarter under 15 (lognormal rate), an afternoon/early
evening weekday rhythm (peaks 15-19 h) with a later-morning weekend one, and irregular
days (each day's rate is multiplied by a Gamma(0.3) draw, so visits come in bursts and
gaps). They are what made a short-memory profile fail on real data; a simulator of dense
users alone hides that failure.

Logging policy (known, randomised): each day a user gets Poisson(send rate) messages;
each picks a channel uniformly among the consented ones and a local hour uniformly from
0-23 with probability ``explore``, else uniformly from 09-20; the minute is uniform.
The logged ``propensity`` is P(channel) * P(local hour).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from models.timeutil import country_of_zone, holiday_flags, utc_offsets, zone
from models.vocab import CHANNELS

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]
Bools = npt.NDArray[np.bool_]

ZONES: tuple[tuple[str, float], ...] = (
    ("America/New_York", 0.12), ("America/Chicago", 0.06), ("America/Los_Angeles", 0.08),
    ("America/Sao_Paulo", 0.06), ("America/Mexico_City", 0.04), ("America/St_Johns", 0.01),
    ("Europe/London", 0.08), ("Europe/Paris", 0.07), ("Europe/Berlin", 0.07),
    ("Europe/Madrid", 0.04), ("Africa/Lagos", 0.03), ("Asia/Dubai", 0.03),
    ("Asia/Kolkata", 0.08), ("Asia/Kathmandu", 0.01), ("Asia/Jakarta", 0.04),
    ("Asia/Singapore", 0.04), ("Asia/Tokyo", 0.05), ("Australia/Sydney", 0.04),
    ("Australia/Adelaide", 0.01), ("Pacific/Auckland", 0.02),
)
CONSENT = np.array([0.95, 0.6, 0.3, 0.2, 0.5])
INTEREST = np.array([0.25, 0.3, 0.45, 0.5, 0.35])
ATTENTION = np.array([1.5, 4.0, 5.0, 4.0, 1.0])
DELIVERY = np.array([0.97, 0.92, 0.98, 0.97, 0.99])
#: Cost of a send in units of "one engagement" (SMS and WhatsApp cost money).
COST = np.array([0.001, 0.0005, 0.03, 0.015, 0.0])
CATEGORIES = ("promo", "news", "reminder", "transactional")
CATEGORY_WEIGHTS = np.array([0.5, 0.3, 0.15, 0.05])
CATEGORY_EFFECT = np.array([0.8, 1.0, 1.3, 1.8])
FATIGUE_24H = 0.12
FATIGUE_7D = 0.04
UNSUBSCRIBE_BASE = 0.002
QUIET_START, QUIET_END = 22, 7
#: (mean centre hour, mean width, probability a user has this peak)
PEAKS = ((7.5, 1.0, 0.6), (12.5, 0.8, 0.5), (17.0, 1.5, 0.4), (20.5, 1.3, 0.8),
         (23.0, 1.0, 0.2))
ENGAGEMENT_HORIZON_HOURS = 48
#: Sparse users: events per day (median 33 in 270 days; sigma puts a quarter under 15).
SPARSE_MEDIAN_PER_DAY = 33 / 270
SPARSE_SIGMA = 1.17
#: Shape of the per-day Gamma multiplier of sparse users' rates (mean 1; small = bursty).
SPARSE_DAY_SHAPE = 0.3


@dataclass(frozen=True)
class SimulationConfig:
    users: int = 20_000
    days: int = 56
    start: str = "2025-09-01"
    seed: int = 7
    sends_per_day: float = 1.1
    activity_per_day: float = 1.5
    explore: float = 0.5
    label_window_seconds: int = 7200
    sparse_share: float = 0.5


class World:
    """The ground truth of a simulation: every user's rhythm, interests and consent."""

    def __init__(self, *, config: SimulationConfig, zones: list[str], user_zone: I64,
                 level: F64, rhythm: F64, interest: F64, consent: Bools) -> None:
        self.config = config
        self.zones = zones
        self.user_zone = user_zone
        self.level = level
        self.rhythm = rhythm  # (users, 2 = weekday/weekend-or-holiday, 24) per-hour shares
        self.interest = interest
        self.consent = consent
        start_day = _day_number(config.start)
        # Holiday table per zone over the simulated local days (plus margins).
        self.day0 = start_day - 2
        days = np.arange(self.day0, start_day + config.days + 4, dtype=np.int64)
        self.holiday = np.stack([holiday_flags(country_of_zone(z), days * 86400 + 43200)
                                 for z in zones])

    @property
    def n_users(self) -> int:
        return int(self.level.shape[0])

    def user_ids(self) -> list[str]:
        return [f"u{i:06d}" for i in range(self.n_users)]

    def hourly_rate(self, users: I64, local_hour: I64) -> F64:
        """Expected activity events in the local hour ``local_hour`` (hours since epoch)."""
        day = local_hour // 24
        weekend = ((day + 3) % 7) >= 5
        row = np.clip(day - self.day0, 0, self.holiday.shape[1] - 1)
        kind = (weekend | self.holiday[self.user_zone[users], row]).astype(np.int64)
        result: F64 = self.level[users] * self.rhythm[users, kind, local_hour % 24]
        return result

    def activity_mass(self, users: I64, local: I64, seconds: int) -> F64:
        """Expected activity events in the local interval [local, local + seconds)."""
        start_hour = local // 3600
        total = np.zeros(local.shape, dtype=np.float64)
        for k in range(seconds // 3600 + 2):
            hour = start_hour + k
            lo = np.maximum(local, hour * 3600)
            hi = np.minimum(local + seconds, (hour + 1) * 3600)
            cover = np.clip(hi - lo, 0, None) / 3600.0
            if not np.any(cover):
                continue
            total += cover * self.hourly_rate(users, hour)
        return total

    def open_probability(self, users: I64, channel: I64, local: I64, category: I64,
                         sends_24h: F64 | I64, sends_7d: F64 | I64) -> F64:
        """True P(opened within the label window | sent now), for each candidate."""
        window = self.config.label_window_seconds
        noticed = 1.0 - np.exp(-ATTENTION[channel] * self.activity_mass(users, local, window))
        result: F64 = DELIVERY[channel] * self._willingness(
            users, channel, category, sends_24h, sends_7d) * noticed
        return result

    def _willingness(self, users: I64, channel: I64, category: I64,
                     sends_24h: F64 | I64, sends_7d: F64 | I64) -> F64:
        fatigue = np.exp(-FATIGUE_24H * np.asarray(sends_24h, np.float64)
                         - FATIGUE_7D * np.asarray(sends_7d, np.float64))
        result: F64 = np.clip(self.interest[users, channel] * CATEGORY_EFFECT[category]
                              * fatigue, 0.0, 0.97)
        return result

    def save(self, path: Path) -> None:
        np.savez_compressed(path, config=json.dumps(asdict(self.config)),
                            zones=np.array(self.zones), user_zone=self.user_zone,
                            level=self.level, rhythm=self.rhythm, interest=self.interest,
                            consent=self.consent)

    @classmethod
    def load(cls, path: Path | str) -> World:
        with np.load(path, allow_pickle=False) as data:
            return cls(config=SimulationConfig(**json.loads(str(data["config"]))),
                       zones=[str(z) for z in data["zones"]], user_zone=data["user_zone"],
                       level=data["level"], rhythm=data["rhythm"], interest=data["interest"],
                       consent=data["consent"])


def _day_number(iso_date: str) -> int:
    return int(datetime.fromisoformat(iso_date).replace(tzinfo=UTC).timestamp()) // 86400


def _bump(hours: F64, center: F64, width: F64) -> F64:
    distance = np.abs(hours[None, :] - center[:, None])
    distance = np.minimum(distance, 24 - distance)
    result: F64 = np.exp(-0.5 * (distance / width[:, None]) ** 2)
    return result


def make_world(config: SimulationConfig, rng: np.random.Generator) -> World:
    """Draw users: zone, activity level, a personal weekday/weekend rhythm, interests."""
    n = config.users
    names = [z for z, _ in ZONES]
    weights = np.array([w for _, w in ZONES])
    user_zone = rng.choice(len(names), size=n, p=weights / weights.sum())
    sigma = 0.6
    level = config.activity_per_day * rng.lognormal(-sigma**2 / 2, sigma, size=n)
    hours: F64 = np.arange(24, dtype=np.float64) + 0.5
    weekday: F64 = np.full((n, 24), 0.02)
    weekend: F64 = np.full((n, 24), 0.02)
    has_any = np.zeros(n, dtype=np.bool_)
    for i, (center, width, share) in enumerate(PEAKS):
        has = rng.random(n) < share
        if i == len(PEAKS) - 2:  # the evening peak: everyone has at least one peak
            has |= ~has_any
        has_any |= has
        c: F64 = center + rng.normal(0, 0.8, n)
        w: F64 = width * rng.uniform(0.7, 1.4, n)
        a: F64 = rng.uniform(0.5, 1.5, n) * has.astype(np.float64)
        weekday += a[:, None] * _bump(hours, c, w)
        later: F64 = rng.uniform(0.5, 2.5, n) if center < 15 else rng.uniform(0.0, 1.0, n)
        weekend += (a * rng.uniform(0.6, 1.4, n))[:, None] * _bump(hours, c + later, w * 1.3)
    day_total = weekday.sum(axis=1, keepdims=True)
    weekend_level = rng.uniform(0.6, 1.5, n)[:, None]
    rhythm = np.stack([weekday / day_total,
                       weekend / weekend.sum(axis=1, keepdims=True) * weekend_level], axis=1)
    general = rng.lognormal(-0.08, 0.4, n)
    interest = np.clip(INTEREST[None, :] * general[:, None]
                       * rng.lognormal(-0.125, 0.5, (n, len(CHANNELS))), 0.0, 0.95)
    consent = rng.random((n, len(CHANNELS))) < CONSENT[None, :]
    consent[~consent.any(axis=1), 0] = True
    sparse = sparse_users(config)
    if sparse.any():
        k = int(sparse.sum())
        level[sparse] = SPARSE_MEDIAN_PER_DAY * rng.lognormal(0.0, SPARSE_SIGMA, k)
        rhythm[sparse] = _shopper_rhythm(k, rng)
    return World(config=config, zones=names, user_zone=user_zone.astype(np.int64),
                 level=level, rhythm=rhythm, interest=interest, consent=consent)


def sparse_users(config: SimulationConfig) -> Bools:
    """Which users are sparse: the last ``sparse_share`` of the ids (deterministic)."""
    n = config.users
    flags = np.zeros(n, dtype=np.bool_)
    flags[n - round(n * config.sparse_share):] = True
    return flags


def _shopper_rhythm(n: int, rng: np.random.Generator) -> F64:
    """(n, 2, 24) weekday/weekend hour shares of shopper-like users (peaks 15-19 h)."""
    hours: F64 = np.arange(24, dtype=np.float64) + 0.5
    night = 0.005
    main = _bump(hours, rng.normal(16.5, 2.0, n), rng.uniform(1.5, 3.0, n))
    late_morning = _bump(hours, rng.normal(11.0, 1.5, n), rng.uniform(1.0, 2.0, n))
    weekday = night + main + (rng.random(n) < 0.5)[:, None] * rng.uniform(0.3, 0.8, n)[:, None] \
        * late_morning
    weekend = night + _bump(hours, rng.normal(13.0, 2.0, n), rng.uniform(2.0, 3.5, n))
    weekend_level = rng.uniform(0.9, 1.4, n)[:, None]
    result: F64 = np.stack([weekday / weekday.sum(axis=1, keepdims=True),
                            weekend / weekend.sum(axis=1, keepdims=True) * weekend_level], axis=1)
    return result


def _to_utc(world: World, users: I64, local: I64) -> I64:
    """Local wall-clock seconds -> UTC instants (two fixed-point steps handle DST)."""
    utc = np.empty_like(local)
    for z in np.unique(world.user_zone[users]):
        rows = np.flatnonzero(world.user_zone[users] == z)
        tz = zone(world.zones[int(z)])
        guess = local[rows] - utc_offsets(tz, local[rows])
        utc[rows] = local[rows] - utc_offsets(tz, guess)
    return utc


def _to_local(world: World, users: I64, utc: I64) -> I64:
    local = np.empty_like(utc)
    for z in np.unique(world.user_zone[users]):
        rows = np.flatnonzero(world.user_zone[users] == z)
        local[rows] = utc[rows] + utc_offsets(zone(world.zones[int(z)]), utc[rows])
    return local


def _simulate_activity(world: World, rng: np.random.Generator) -> tuple[I64, I64]:
    """(user, UTC instant) of activity events, chunked over users to bound memory."""
    config = world.config
    first_hour = _day_number(config.start) * 24
    hours = first_hour + np.arange(config.days * 24, dtype=np.int64)
    sparse = sparse_users(config)
    users_out: list[I64] = []
    at_out: list[I64] = []
    for lo in range(0, world.n_users, 2000):
        users = np.arange(lo, min(lo + 2000, world.n_users), dtype=np.int64)
        grid_users = np.repeat(users, hours.size)
        grid_hours = np.tile(hours, users.size)
        rate = world.hourly_rate(grid_users, grid_hours)
        # sparse users' days are irregular: one Gamma(shape, 1/shape) factor per user-day
        day_factor = rng.gamma(SPARSE_DAY_SHAPE, 1 / SPARSE_DAY_SHAPE, (users.size, config.days))
        bursty = np.repeat(sparse[users], hours.size)
        rate = np.where(bursty, rate * np.repeat(day_factor, 24, axis=1).ravel(), rate)
        counts = rng.poisson(rate)
        ev_users = np.repeat(grid_users, counts)
        local = np.repeat(grid_hours, counts) * 3600 + rng.integers(0, 3600, ev_users.size)
        users_out.append(ev_users)
        at_out.append(_to_utc(world, ev_users, local))
    users_all = np.concatenate(users_out)
    at_all = np.concatenate(at_out)
    # 5% background noise: events at uniformly random instants (bots, stray taps), spread
    # over users in proportion to their own activity (a sparse user gets few stray taps).
    noise = int(0.05 * users_all.size)
    start = first_hour * 3600
    noise_users = rng.choice(world.n_users, size=noise, p=world.level / world.level.sum())
    noise_at = rng.integers(start, start + config.days * 86400, noise)
    return np.concatenate([users_all, noise_users]), np.concatenate([at_all, noise_at])


def _prior_counts(user: I64, at: I64, seconds: int) -> I64:
    """For (user, at) sorted, how many earlier rows of the same user are in [at-seconds, at)."""
    key = user * (1 << 34) + at
    result: I64 = np.searchsorted(key, key, "left") - np.searchsorted(key, key - seconds, "left")
    return result


def _sample_notice(world: World, users: I64, channel: I64, local: I64,
                   rng: np.random.Generator) -> I64:
    """Seconds after the send until the user notices it (-1: not within the horizon)."""
    delay = np.full(users.size, -1, dtype=np.int64)
    for lo in range(0, users.size, 100_000):
        sl = slice(lo, lo + 100_000)
        u, c, start = users[sl], channel[sl], local[sl]
        threshold = rng.exponential(1.0, u.size)
        cumulative = np.zeros(u.size)
        found = np.full(u.size, -1, dtype=np.int64)
        for k in range(ENGAGEMENT_HORIZON_HOURS):
            hour = start // 3600 + k
            begin = np.maximum(start, hour * 3600)
            rate = ATTENTION[c] * world.hourly_rate(u, hour) / 3600.0  # per second
            mass = rate * ((hour + 1) * 3600 - begin)
            hit = (found < 0) & (cumulative + mass >= threshold)
            offset = (threshold[hit] - cumulative[hit]) / np.maximum(rate[hit], 1e-12)
            found[hit] = begin[hit] + offset.astype(np.int64) - start[hit]
            cumulative += mass
        delay[sl] = found
    return delay


def simulate(config: SimulationConfig, out_dir: Path, *, progress: bool = True) -> dict[str, Any]:
    """Write ``messages.parquet``, ``activity.parquet`` and ``truth.npz`` into ``out_dir``."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    started = time.perf_counter()

    def say(text: str) -> None:
        if progress:
            print(f"[simulate {time.perf_counter() - started:6.1f}s] {text}", flush=True)

    rng = np.random.default_rng(config.seed)
    world = make_world(config, rng)
    say(f"{config.users} users in {len(world.zones)} time zones, {config.days} days")
    act_user, act_at = _simulate_activity(world, rng)
    say(f"{act_user.size} activity events")

    # -- the logging policy's planned sends ------------------------------------------
    start_day = _day_number(config.start)
    rate = config.sends_per_day * rng.lognormal(-0.18, 0.6, config.users)
    per_day = rng.poisson(np.repeat(rate, config.days))
    user = np.repeat(np.repeat(np.arange(config.users, dtype=np.int64), config.days), per_day)
    day = np.repeat(np.tile(np.arange(config.days, dtype=np.int64) + start_day, config.users),
                    per_day)
    explore = rng.random(user.size) < config.explore
    hour = np.where(explore, rng.integers(0, 24, user.size), rng.integers(9, 21, user.size))
    hour_p = config.explore / 24 + (1 - config.explore) / 12 * ((hour >= 9) & (hour < 21))
    n_consent = world.consent.sum(axis=1)
    pick = (rng.random(user.size) * n_consent[user]).astype(np.int64)
    consent_order = np.argsort(~world.consent, axis=1, kind="stable")  # consented first
    channel = consent_order[user, pick]
    propensity = hour_p / n_consent[user]
    category = rng.choice(len(CATEGORIES), size=user.size, p=CATEGORY_WEIGHTS)
    local = day * 86400 + hour * 3600 + rng.integers(0, 3600, user.size)
    sent_at = _to_utc(world, user, local)
    order = np.lexsort((sent_at, user))
    user, channel, category, sent_at, local, propensity = (
        a[order] for a in (user, channel, category, sent_at, local, propensity))

    # -- unsubscribes: the policy stops using a channel after its unsubscribe ---------
    sends_7d = _prior_counts(user, sent_at, 7 * 86400)
    local_hour = (local % 86400) // 3600
    quiet = (local_hour >= QUIET_START) | (local_hour < QUIET_END)
    p_unsub = UNSUBSCRIBE_BASE * (1 + sends_7d / 3) * np.where(quiet, 4.0, 1.0)
    unsub = rng.random(user.size) < p_unsub
    pair = user * len(CHANNELS) + channel
    first_unsub = np.full(config.users * len(CHANNELS), np.iinfo(np.int64).max)
    np.minimum.at(first_unsub, pair[unsub], sent_at[unsub])
    keep = sent_at <= first_unsub[pair]
    user, channel, category, sent_at, local, propensity = (
        a[keep] for a in (user, channel, category, sent_at, local, propensity))
    unsubscribed = sent_at == first_unsub[user * len(CHANNELS) + channel]
    say(f"{user.size} messages sent by the logging policy, {int(unsubscribed.sum())} "
        "unsubscribes")

    # -- outcomes ----------------------------------------------------------------------
    sends_24h = _prior_counts(user, sent_at, 86400)
    sends_7d = _prior_counts(user, sent_at, 7 * 86400)
    delivered = rng.random(user.size) < DELIVERY[channel]
    willing = rng.random(user.size) < world._willingness(user, channel, category,
                                                         sends_24h, sends_7d)
    notice = _sample_notice(world, user, channel, local, rng)
    opened = delivered & willing & (notice >= 0)
    clicked = opened & (rng.random(user.size) < 0.3)
    converted = clicked & (rng.random(user.size) < 0.1)
    delivered_at = sent_at + rng.exponential(30, user.size).astype(np.int64) + 1
    opened_at = np.maximum(sent_at + notice, delivered_at)
    clicked_at = opened_at + rng.exponential(90, user.size).astype(np.int64) + 1
    converted_at = clicked_at + rng.exponential(1800, user.size).astype(np.int64) + 1
    unsubscribed_at = sent_at + rng.exponential(600, user.size).astype(np.int64) + 1
    if user.size:
        say(f"open rate {opened.mean():.3f}, opened within "
            f"{config.label_window_seconds // 3600} h "
            f"{(opened & (notice <= config.label_window_seconds)).mean():.3f}")

    # -- write -------------------------------------------------------------------------
    out_dir.mkdir(parents=True, exist_ok=True)
    ids = world.user_ids()
    zone_names = np.array(world.zones)

    def ts(values: I64, present: Bools | None = None) -> Any:
        mask = None if present is None else ~present
        return pa.array(values, type=pa.int64(), mask=mask).cast(pa.timestamp("s", tz="UTC"))

    campaign_week = (sent_at - (sent_at.min() if sent_at.size else 0)) // (7 * 86400)
    messages = pa.table({
        "message_id": pa.array([f"m{i:08d}" for i in range(user.size)]),
        "user_id": pa.array(np.array(ids)[user]),
        "channel": pa.array(np.array(CHANNELS)[channel]),
        "category": pa.array(np.array(CATEGORIES)[category]),
        "campaign": pa.array([f"{CATEGORIES[c]}-w{w:02d}" for c, w in
                              zip(category.tolist(), campaign_week.tolist(), strict=True)]),
        "sent_at": ts(sent_at),
        "time_zone": pa.array(zone_names[world.user_zone[user]]),
        "delivered_at": ts(delivered_at, delivered),
        "opened_at": ts(opened_at, opened),
        "clicked_at": ts(clicked_at, clicked),
        "converted_at": ts(converted_at, converted),
        "unsubscribed_at": ts(unsubscribed_at, unsubscribed),
        "propensity": pa.array(propensity),
    })
    if user.size:  # --sends-per-day 0: an activity log only, like a platform before messaging
        pq.write_table(messages, out_dir / "messages.parquet")
    order = np.lexsort((act_at, act_user))
    act_user, act_at = act_user[order], act_at[order]
    kinds = np.array(["session", "visit", "purchase"])[
        rng.choice(3, size=act_user.size, p=[0.7, 0.25, 0.05])]
    activity = pa.table({
        "user_id": pa.array(np.array(ids)[act_user]),
        "occurred_at": ts(act_at),
        "time_zone": pa.array(zone_names[world.user_zone[act_user]]),
        "kind": pa.array(kinds),
    })
    pq.write_table(activity, out_dir / "activity.parquet")
    world.save(out_dir / "truth.npz")
    summary = {"users": config.users, "days": config.days, "messages": int(user.size),
               "activity": int(act_user.size), "open_rate":
               round(float(opened.mean()), 4) if user.size else 0.0,
               "seconds": round(time.perf_counter() - started, 1), "out": str(out_dir)}
    (out_dir / "simulation.json").write_text(json.dumps(
        {"config": asdict(config), "summary": summary}, indent=2) + "\n")
    say(f"wrote {out_dir}/messages.parquet, activity.parquet, truth.npz")
    return summary
