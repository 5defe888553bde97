"""The support timeline: ``GET /ui/users/{user_id}``, one recipient's ledger on a local-time axis.

What a support engineer opens when a customer asks "why did I get this at 7:20?" or "why
didn't I get it?". One self-contained HTML page (inline CSS, no script, no font or CDN), so
it works wherever the API answers:

* one lane per channel, on the recipient's local clock, with the sends and reservations of
  the ledger (``Engine.timeline``: the same records the decisions were rendered from, so each
  mark carries the reasons its decision gave; hover for them, click for the table row);
* the instants each time rule forbids, shaded per lane: quiet hours (the policy's and the
  recipient's own), jurisdiction windows and holidays. These are the exact intervals
  ``api.plan.build_plan`` hands to the commit script, not a second implementation;
* "if a message were asked now": a dry-run decision through ``Engine.probe`` (the real
  decision path, nothing reserved), whose reasons name each cap or conflict that blocks and
  the instant it frees; those spans are drawn as cap windows ending at that instant.

Nothing here recomputes a rule: the page only lays out what the engine and the planner say.
The route takes the same tenant as the API (``tenant_of``); deployments expose it to support
staff only (the admin guard is attached where the app assembles its routes).
"""

from __future__ import annotations

import datetime as dt
import html
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any
from zoneinfo import ZoneInfo

from litestar import Request, Response, get
from litestar.datastructures import State
from litestar.enums import MediaType
from litestar.handlers import HTTPRouteHandler
from litestar.params import FromPath, FromQuery

from api import intervals
from api.engine import Engine
from api.errors import InvalidRequestError
from api.localtime import ms_to_utc, utc_to_ms
from api.plan import build_plan, pre_checks
from api.reasons import ReasonCode
from api.schemas import CHANNELS, DecisionRequest, DecisionResponse, ErrorBody, TimelineEntry

HOUR_MS = 3_600_000
DAY_MS = 24 * HOUR_MS
#: the axis shows at least this much history and future around now, at most 8 days each way
#: (the ledger keeps about 8 days of history)
MIN_PAST_MS, MIN_FUTURE_MS, MAX_SPAN_MS = DAY_MS, 2 * DAY_MS, 8 * DAY_MS
#: reasons whose ``until`` ends a span that depends on the ledger (drawn as cap windows)
CAP_CODES = frozenset({ReasonCode.FREQUENCY_CAP, ReasonCode.USER_FREQUENCY_LIMIT,
                       ReasonCode.JURISDICTION_CAP, ReasonCode.CONFLICTING_OFFER,
                       ReasonCode.DUPLICATE_OFFER})

TenantOf = Callable[[Request[Any, Any, State]], str]


@dataclass(frozen=True, slots=True)
class Span:
    """A shaded span of one lane: the rule that forbids (or caps) sending in [start, end)."""

    code: str
    rule: str
    start: int
    end: int


@dataclass(slots=True)
class Lane:
    channel: str
    #: why the channel is not permitted at all (no consent, opt-in required), if so
    blocked_by: str | None = None
    rules: list[Span] = field(default_factory=list)
    caps: list[Span] = field(default_factory=list)
    entries: list[tuple[int, TimelineEntry]] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class TimelinePage:
    user_id: str
    tenant: str
    timezone: str
    category: str
    now: int
    start: int
    end: int
    lanes: list[Lane]
    entries: list[TimelineEntry]
    probe: DecisionResponse


async def build_page(engine: Engine, tenant: str, user_id: str, *, category: str,
                     channels: Sequence[str]) -> TimelinePage:
    """Everything the page shows, from the engine and the planner."""
    now = engine.clock.now_ms()
    probe_id = f"_timeline-probe-{now}"
    request = DecisionRequest(message_id=probe_id, user_id=user_id, channels=list(channels),  # type: ignore[arg-type]
                              category=category, dry_run=True)
    probe = await engine.probe(tenant, request)
    timeline = await engine.timeline(tenant, user_id)
    policy = await engine.policies.get(tenant)
    state = await engine.store.read_user(tenant, user_id, probe_id, None, now=now)
    location = engine.locate(None, state.preferences, policy)

    at = [utc_to_ms(e.send_at) for e in timeline.entries]
    instants = at + [utc_to_ms(r.until) for r in probe.reasons if r.until is not None]
    start = max(min([now - MIN_PAST_MS, *instants]), now - MAX_SPAN_MS) // HOUR_MS * HOUR_MS
    end = -(-min(max([now + MIN_FUTURE_MS, *instants]) + 6 * HOUR_MS, now + MAX_SPAN_MS)
            // HOUR_MS) * HOUR_MS

    lanes = {channel: Lane(channel) for channel in channels}
    _, pre, _ = pre_checks(request, policy, state, now, tenant=tenant)
    for reason in pre:
        if reason.channel in lanes:
            lanes[reason.channel].blocked_by = reason.code
    # the planner's time blocks from the axis' start: exactly what a decision would avoid
    plan = build_plan(request, policy, state, location, now=start, idempotency_ttl_ms=0,
                      candidate_channels=list(channels), pre_suppressed=False)
    for candidate in plan.cands:
        lane = lanes[candidate.ch]
        for block in plan.blocks_of(candidate):
            lane.rules.extend(Span(block.c, block.r, a, b)
                              for a, b in intervals.clip(block.iv, start, end))
    for cited in probe.reasons:
        if cited.code in CAP_CODES and cited.until is not None:
            until = utc_to_ms(cited.until)
            for lane in lanes.values():
                if cited.channel in (None, lane.channel) and until > now:
                    lane.caps.append(Span(cited.code, cited.rule, now, min(until, end)))
    for when, entry in zip(at, timeline.entries, strict=True):
        if entry.channel in lanes:
            lanes[entry.channel].entries.append((when, entry))
    return TimelinePage(user_id=user_id, tenant=tenant, timezone=timeline.timezone,
                        category=category, now=now, start=start, end=end,
                        lanes=list(lanes.values()), entries=timeline.entries, probe=probe)


# ------------------------------------------------------------------ rendering

_CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:1.5rem;color:#1d2433}
h1{font-size:1.3rem;margin:0 0 .3rem}code{font-family:ui-monospace,monospace}
.meta{color:#555;margin:0 0 1rem}
#probe{border:1px solid #c9d3e6;background:#f4f7fc;padding:.6rem .8rem;margin-bottom:1rem}
#timeline{border:1px solid #c9d3e6;padding:.5rem 0}
.row{display:flex;align-items:stretch;height:34px;border-top:1px solid #eef1f6}
.label{width:110px;flex:none;padding:0 .6rem;display:flex;align-items:center;font-weight:600}
.label small{font-weight:400;color:#a33;margin-left:.3rem}
.lane{position:relative;flex:1;overflow:hidden}
.axis .lane{height:30px}
.tick{position:absolute;top:0;bottom:0;border-left:1px solid #d5dbe6;font-size:11px;
 color:#555;padding-left:2px;white-space:nowrap}
.tick.day{border-left:2px solid #8a94a6;font-weight:600}
.shade{position:absolute;top:0;bottom:0}
.shade.quiet_hours,.shade.user_quiet_hours{background:rgba(72,96,160,.18)}
.shade.jurisdiction_window{background:repeating-linear-gradient(45deg,rgba(180,120,0,.22) 0 6px,
 transparent 6px 12px)}
.shade.not_before,.shade.user_frequency_limit{background:rgba(120,120,120,.18)}
.cap{position:absolute;top:60%;height:6px;background:#c0392b;border-radius:3px}
.cap::after{content:"";position:absolute;right:-1px;top:-6px;height:18px;border-right:3px solid #c0392b}
.entry{position:absolute;top:6px;width:12px;height:12px;margin-left:-6px;border-radius:50%;
 border:2px solid #1d2433;background:#2e9d57;text-decoration:none}
.entry.scheduled{background:#fff;border-color:#2e6bd9}
.now{position:absolute;top:0;bottom:0;border-left:2px dashed #c0392b}
table{border-collapse:collapse;margin-top:1rem;width:100%}
td,th{border-bottom:1px solid #e3e7ef;padding:.3rem .5rem;text-align:left;vertical-align:top}
tr:target{background:#fff4c2}
ul.reasons{margin:0;padding-left:1rem}
.legend span{display:inline-block;margin-right:1rem}
.legend i{display:inline-block;width:14px;height:10px;margin-right:.3rem;vertical-align:middle}
"""


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _local(ms: int, zone: ZoneInfo) -> str:
    return ms_to_utc(ms).astimezone(zone).strftime("%a %d %b %H:%M")


def _reason_text(rule: str, until: dt.datetime | None, channel: str | None,
                 zone: ZoneInfo) -> str:
    text = rule
    if channel:
        text += f" on {channel}"
    if until is not None:
        text += f" until {_local(utc_to_ms(until), zone)}"
    return text


class _Axis:
    def __init__(self, start: int, end: int) -> None:
        self.start, self.span = start, end - start

    def x(self, ms: int) -> float:
        return round((ms - self.start) * 100 / self.span, 4)

    def box(self, start: int, end: int) -> str:
        return f"left:{self.x(start)}%;width:{round((end - start) * 100 / self.span, 4)}%"


def _ticks(page: TimelinePage, zone: ZoneInfo, axis: _Axis) -> list[str]:
    """A tick at every local 00:00, 06:00, 12:00 and 18:00 (15-minute scan: zones with
    half-hour offsets and DST days get their ticks at the right wall-clock instants)."""
    out = []
    step = 15 * 60_000
    for t in range(page.start - page.start % step, page.end, step):
        local = ms_to_utc(t).astimezone(zone)
        if t < page.start or local.minute or local.hour % 6:
            continue
        day = local.hour == 0
        label = local.strftime("%a %d" if day else "%H:%M")
        out.append(f'<div class="tick{" day" if day else ""}" style="left:{axis.x(t)}%">'
                   f"{_e(label)}</div>")
    return out


def render_page(page: TimelinePage) -> str:
    zone = ZoneInfo(page.timezone)
    axis = _Axis(page.start, page.end)
    index = {id(e): i for i, e in enumerate(page.entries)}
    probe = page.probe
    probe_reasons = "".join(
        f"<li><code>{_e(r.code)}</code> {_e(_reason_text(r.rule, r.until, r.channel, zone))}</li>"
        for r in probe.reasons) or "<li>nothing blocks it</li>"
    probe_at = (f" on <b>{_e(probe.channel)}</b> at <b>{_e(_local(utc_to_ms(probe.send_at), zone))}</b>"
                if probe.send_at is not None and probe.channel else "")
    parts = [
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>sendwise timeline: {_e(page.user_id)}</title><style>{_CSS}</style></head><body>",
        f"<h1>Timeline of <code>{_e(page.user_id)}</code></h1>",
        f"<p class='meta'>tenant <code>{_e(page.tenant)}</code> · recipient time zone "
        f"<code>{_e(page.timezone)}</code> · now {_e(_local(page.now, zone))} local · "
        f"policy version {_e(probe.policy_version)} · {len(page.entries)} ledger entries</p>",
        f"<section id='probe' data-decision='{_e(probe.decision)}' "
        f"data-channel='{_e(probe.channel or '')}' "
        f"data-send-at='{_e(probe.send_at.isoformat() if probe.send_at else '')}'>"
        f"A <b>{_e(page.category)}</b> message asked now would be: "
        f"<b class='decision'>{_e(probe.decision)}</b>{probe_at}"
        f"<ul class='reasons'>{probe_reasons}</ul></section>",
        f"<section id='timeline' data-timezone='{_e(page.timezone)}' "
        f"data-start='{_e(ms_to_utc(page.start).isoformat())}' "
        f"data-end='{_e(ms_to_utc(page.end).isoformat())}'>",
        "<div class='row axis'><div class='label'>local time</div><div class='lane'>",
        *_ticks(page, zone, axis), "</div></div>",
    ]
    for lane in page.lanes:
        blocked = f"<small>{_e(lane.blocked_by)}</small>" if lane.blocked_by else ""
        parts.append(f"<div class='row' data-channel='{_e(lane.channel)}' "
                     f"data-blocked-by='{_e(lane.blocked_by or '')}'>"
                     f"<div class='label'>{_e(lane.channel)}{blocked}</div><div class='lane'>")
        for span in lane.rules:
            title = (f"{span.code} ({span.rule}): no sends {_local(span.start, zone)} to "
                     f"{_local(span.end, zone)}")
            parts.append(f"<div class='shade {_e(span.code)}' data-code='{_e(span.code)}' "
                         f"data-rule='{_e(span.rule)}' style='{axis.box(span.start, span.end)}' "
                         f"title='{_e(title)}'></div>")
        for span in lane.caps:
            title = f"{span.code} ({span.rule}): full now, frees at {_local(span.end, zone)}"
            parts.append(f"<div class='cap' data-code='{_e(span.code)}' data-rule='{_e(span.rule)}' "
                         f"data-until='{_e(ms_to_utc(span.end).isoformat())}' "
                         f"style='{axis.box(span.start, span.end)}' title='{_e(title)}'></div>")
        for at, entry in lane.entries:
            reasons = "; ".join(f"{r.code} ({_reason_text(r.rule, r.until, r.channel, zone)})"
                                for r in entry.reasons or []) or "no reason: nothing blocked it"
            title = (f"{entry.message_id}: {entry.decision or 'reserved'} {entry.status} at "
                     f"{_local(at, zone)} ({entry.category}) · {reasons}")
            parts.append(f"<a class='entry {_e(entry.status)}' href='#entry-{index[id(entry)]}' "
                         f"data-message-id='{_e(entry.message_id)}' "
                         f"data-status='{_e(entry.status)}' style='left:{axis.x(at)}%' "
                         f"title='{_e(title)}'></a>")
        parts.append(f"<div class='now' style='left:{axis.x(page.now)}%'></div></div></div>")
    parts.append("</section><p class='legend'>"
                 "<span><i style='background:rgba(72,96,160,.35)'></i>quiet hours</span>"
                 "<span><i style='background:rgba(180,120,0,.4)'></i>jurisdiction window</span>"
                 "<span><i style='background:#c0392b'></i>cap full until the bar's end</span>"
                 "<span><i style='background:#2e9d57;border-radius:50%'></i>sent</span>"
                 "<span><i style='border:2px solid #2e6bd9;border-radius:50%'></i>scheduled</span>"
                 "</p>")
    parts.append("<table id='ledger'><thead><tr><th>local time</th><th>channel</th>"
                 "<th>message</th><th>status</th><th>decision</th><th>reasons</th></tr></thead><tbody>")
    for i, entry in enumerate(page.entries):
        reasons = "".join(
            f"<li><code>{_e(r.code)}</code> {_e(_reason_text(r.rule, r.until, r.channel, zone))}</li>"
            for r in entry.reasons or []) or "<li>none: nothing blocked it</li>"
        parts.append(f"<tr id='entry-{i}' data-message-id='{_e(entry.message_id)}'>"
                     f"<td>{_e(entry.local_send_at.strftime('%a %d %b %H:%M'))}</td>"
                     f"<td>{_e(entry.channel)}</td><td><code>{_e(entry.message_id)}</code>"
                     f"{' · ' + _e(entry.campaign_id) if entry.campaign_id else ''}</td>"
                     f"<td>{_e(entry.status)}</td><td>{_e(entry.decision or '')}</td>"
                     f"<td><ul class='reasons'>{reasons}</ul></td></tr>")
    if not page.entries:
        parts.append("<tr><td colspan='6'>no sends or reservations in the ledger</td></tr>")
    parts.append("</tbody></table></body></html>")
    return "".join(parts)


def render_error_page(status: int, body: ErrorBody) -> str:
    """An error answer as a page, for a person's browser on ``/ui/`` (api/app.py ``_error``):
    the same status, machine code, message and field as the JSON body, which API clients
    still get. A recipient whose stored preferences this release cannot read gets 409
    ``preferences_unreadable`` here as everywhere, with what to do about it."""
    field_line = (f"<p class='meta'>field <code id='error-field'>{_e(body.field)}</code></p>"
                  if body.field else "")
    return (
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>"
        f"<title>sendwise: {status} {_e(body.code)}</title><style>{_CSS}</style></head><body>"
        f"<h1 id='error' data-status='{status}' data-code='{_e(body.code)}'>{status} "
        f"<code>{_e(body.code)}</code></h1>"
        f"<p id='error-message'>{_e(body.message)}</p>{field_line}</body></html>")


def ui_handlers(tenant_of: TenantOf) -> list[HTTPRouteHandler]:
    """The page's route, bound to the API's tenant resolution (kept out of the OpenAPI
    document: it is HTML for people, not part of the v1 contract)."""

    @get("/ui/users/{user_id:str}", include_in_schema=False, media_type=MediaType.HTML)
    async def user_timeline_page(request: Request[Any, Any, State], user_id: FromPath[str],
                                 category: FromQuery[str] = "promotional",
                                 channels: FromQuery[str | None] = None) -> Response[str]:
        """``?category=`` (default promotional) and ``?channels=email,sms`` (default all) say
        which message the "asked now" probe and the shading are for."""
        tenant = tenant_of(request)
        if not 1 <= len(user_id) <= 128:
            raise InvalidRequestError("user_id must be 1-128 characters", field="user_id")
        wanted = [c for c in (channels or ",".join(CHANNELS)).split(",") if c]
        unknown = [c for c in wanted if c not in CHANNELS]
        if unknown or not wanted or len(set(wanted)) != len(wanted):
            raise InvalidRequestError(f"channels must be distinct names from {', '.join(CHANNELS)}",
                                      field="channels", code="invalid_field")
        engine: Engine = request.app.state.engine
        page = await build_page(engine, tenant, user_id, category=category, channels=wanted)
        return Response(render_page(page), media_type=MediaType.HTML)

    return [user_timeline_page]
