"""Worker warm-up: pay every first-use cost before the worker accepts traffic.

A fresh worker used to answer its first decisions in 0.2-0.5 s instead of ~2 ms: each of
the following is built lazily on first use, inside whichever request needs it first.

- the holiday calendars the built-in jurisdiction packs consult (``holidays``, per country,
  subdivision and year) and the list of subdivisions that library knows;
- ``pycountry``'s ISO 3166 databases (countries, then the much larger subdivisions file);
- ``phonenumbers``' per-country metadata, geocoder and time-zone prefix tables;
- zone files (every IANA zone the API accepts is loaded once and kept by the scoring
  features' zone cache, ~20 ms in all) and the per-zone UTC offset buckets of
  api/localtime.py;
- msgspec's per-type decoders and encoders of the request and response bodies;
- the decision path itself: the policy cache, Redis connections and script loading, the
  plan, the model (or heuristic) scoring call and rendering.

``warm_up`` runs them all once, the decision path through ``Engine.probe`` (a dry run: the
same code as a real decision, reading Redis and writing nothing) for a reserved tenant
name and a spread of places and channels. uvicorn only accepts connections after the
lifespan's startup has finished, so calling it there keeps the cost out of every request.

Then the garbage collector: what warm-up (and importing litestar, numpy, LightGBM,
pycountry and holidays) allocated lives as long as the process. ``gc.freeze()`` moves it
to a permanent generation the collector never scans again, so a full collection walks
only what requests allocate instead of the ~100,000 start-up objects each time
(docs/benchmarks.md, "Stalls", has the measurements).

Nothing here may stop a worker from starting: with Redis unreachable the decision probes
are skipped (the offline parts still run) and the report says so.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import gc
import time
from typing import Any, cast

import msgspec
import structlog

from api.engine import STORE_DOWN, Engine
from api.jurisdictions import _holiday_countries, holiday_dates, load_builtin_packs
from api.locale import ZONE_NAMES, is_country, is_subdivision, is_valid_zone, parse_phone
from api.metrics import Metrics
from api.policy import Policy
from api.schemas import (
    CHANNELS,
    DecisionRequest,
    DecisionResponse,
    EventBatch,
    Preferences,
    StoredPreferences,
    Timeline,
)
from models.timeutil import zone as timeutil_zone

log = structlog.get_logger("sendwise.warmup")

#: the tenant the probes read as: a dry run writes nothing, and no real tenant is named so
WARMUP_TENANT = "_sendwise-warmup"

#: (zone, country, region) of the probes: every built-in pack's country and regions are
#: added to these, so the calendars and rules a real recipient meets are all exercised
PLACES: tuple[tuple[str, str | None, str | None], ...] = (
    ("UTC", None, None),
    ("America/New_York", "US", "NY"),
    ("America/Chicago", "US", "TX"),
    ("America/Denver", "US", "CO"),
    ("America/Los_Angeles", "US", "CA"),
    ("America/Sao_Paulo", "BR", None),
    ("Europe/London", "GB", None),
    ("Europe/Paris", "FR", None),
    ("Europe/Berlin", "DE", None),
    ("Africa/Lagos", "NG", None),
    ("Asia/Kolkata", "IN", None),
    ("Asia/Singapore", "SG", None),
    ("Asia/Tokyo", "JP", None),
    ("Australia/Sydney", "AU", None),
)

#: one valid number per prefix table commonly met, so phonenumbers loads their metadata
PHONES: tuple[str, ...] = ("+13055550123", "+14155550100", "+33612345678", "+447911123456",
                           "+4915123456789", "+5511987654321", "+919876543210", "+61412345678")

#: a pack country's representative zone, for probes that exercise its rules
_PACK_ZONES = {"US": "America/New_York", "FR": "Europe/Paris"}

#: young-generation threshold after warm-up (CPython's default is 700): requests free almost
#: everything they allocate by reference counting, so collections triggered every 700 net
#: allocations found little; at 10,000 a collection is rare (docs/benchmarks.md, "Stalls")
GC_GEN0_THRESHOLD = 10_000

#: the channels of one probe (a request lists at most six)
_PROBE_CHANNELS: list[str] = list(CHANNELS)


class WarmupReport(msgspec.Struct, kw_only=True):
    """What one warm-up did, logged once per worker (``worker_warmed_up``)."""

    seconds: float = 0.0
    zones: int = 0
    holiday_calendars: int = 0
    phones: int = 0
    probes: int = 0
    #: why the decision probes stopped early (Redis unreachable, ...); empty when all ran
    error: str = ""
    gc_frozen: int = 0


def _places() -> list[tuple[str, str | None, str | None]]:
    places = list(PLACES)
    for pack in load_builtin_packs():
        zone = _PACK_ZONES.get(pack.country, "UTC")
        regions: list[str | None] = [*pack.regions] or [None]
        for region in regions:
            if (zone, pack.country, region) not in places:
                places.append((zone, pack.country, region))
    return places


def warm_calendars(today: dt.date) -> int:
    """Every holiday calendar a built-in pack can consult this year and next (a look-ahead
    crosses New Year): the national one and each subdivision ``holidays`` knows, since the
    recipient's region selects it (api/jurisdictions.py ``_holiday_subdiv``)."""
    built = 0
    supported = _holiday_countries()
    for pack in load_builtin_packs():
        if not pack.blocked_public_holidays:
            continue
        subdivs: list[str | None] = [None, *sorted(supported.get(pack.country, frozenset()))]
        for subdiv in subdivs:
            for year in (today.year, today.year + 1):
                holiday_dates(pack.country, subdiv, year)
                built += 1
    return built


def warm_offline(today: dt.date) -> WarmupReport:
    """The parts that need no Redis: calendars, ISO 3166, phone metadata, zones, codecs."""
    report = WarmupReport(holiday_calendars=warm_calendars(today))
    for name in sorted(ZONE_NAMES):
        if is_valid_zone(name):
            timeutil_zone(name)  # holds the ZoneInfo, so zoneinfo's own cache keeps it
            report.zones += 1
    for _zone, country, region in _places():
        if country is not None:
            is_country(country)
            if region is not None:
                is_subdivision(country, region)
    for phone in PHONES:
        with contextlib.suppress(ValueError):  # an invalid number has loaded the metadata too
            parse_phone(phone)
            report.phones += 1
    # msgspec builds each type's decoder/encoder state on first use
    sample = DecisionRequest(message_id="warmup", user_id="warmup", channels=["email"])
    msgspec.json.decode(msgspec.json.encode(sample), type=DecisionRequest)
    for kind in (Preferences, EventBatch, Policy, StoredPreferences, Timeline, DecisionResponse):
        msgspec.json.Decoder(kind)
    return report


class _Unmetered:
    """Stands in for the engine's ``Metrics`` while the probes run: they are not traffic,
    and counting them would put every worker's warm-up into the decision and Redis series
    operators alert on. Any metric, label set, ``.time()`` or ``.inc()`` is a no-op."""

    def __getattr__(self, name: str) -> _Unmetered:
        return self

    def __call__(self, *args: Any, **kwargs: Any) -> _Unmetered:
        return self

    def __enter__(self) -> _Unmetered:
        return self

    def __exit__(self, *exc: object) -> None:
        return None


def _probe(zone: str, country: str | None, region: str | None, i: int,
           category: str) -> DecisionRequest:
    return DecisionRequest(message_id=f"warmup-{i}", user_id=f"warmup-{i}",
                           channels=_PROBE_CHANNELS, category=category,  # type: ignore[arg-type]
                           timezone=zone, country=country, region=region, dry_run=True)


async def warm_up(engine: Engine, *, freeze_gc: bool = True) -> WarmupReport:
    """Warm one worker (module docstring); returns and logs what was done."""
    t0 = time.perf_counter()
    report = WarmupReport()
    metrics, engine.metrics = engine.metrics, cast(Metrics, _Unmetered())
    try:
        report = warm_offline(dt.datetime.now(dt.UTC).date())
        policy = await engine.policies.get(WARMUP_TENANT)
        categories = policy.categories[:2]
        for i, (zone, country, region) in enumerate(_places()):
            for category in categories:
                answer = await engine.probe(WARMUP_TENANT, _probe(zone, country, region, i, category))
                msgspec.json.encode(answer)
                report.probes += 1
    except STORE_DOWN as exc:
        report.error = f"Redis unreachable: {type(exc).__name__}"
    except Exception as exc:  # never fail a worker's start over a warm-up
        report.error = f"{type(exc).__name__}: {exc}"
    finally:
        engine.metrics = metrics
    if freeze_gc:
        gc.collect()
        gc.freeze()
        gc.set_threshold(GC_GEN0_THRESHOLD, *gc.get_threshold()[1:])
        report.gc_frozen = gc.get_freeze_count()
    report.seconds = round(time.perf_counter() - t0, 3)
    if report.error:
        log.warning("worker_warmup_incomplete", **msgspec.structs.asdict(report))
    else:
        log.info("worker_warmed_up", **msgspec.structs.asdict(report))
    return report
