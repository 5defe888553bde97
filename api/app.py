"""The litestar application: a thin HTTP shell around ``Engine``.

``create_app(settings, redis=..., clock=...)`` receives its resources so tests pass a real
Redis client and a fixed clock; without them the lifespan builds them from settings.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Annotated, Any, Literal

import msgspec
import structlog
from litestar import Litestar, Request, Response, delete, get, post, put
from litestar._openapi.plugin import OpenAPIPlugin  # serves the dict we patch once
from litestar.datastructures import State
from litestar.datastructures.response_header import ResponseHeader
from litestar.enums import MediaType
from litestar.exceptions import HTTPException, ValidationException
from litestar.openapi import OpenAPIConfig
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import FromPath, Parameter
from litestar.status_codes import HTTP_200_OK, HTTP_202_ACCEPTED, HTTP_204_NO_CONTENT

from api.auth import ADMIN, DECIDE, authenticated_key, make_guard
from api.body import BodyDecoder
from api.clock import Clock, SystemClock
from api.docs_assets import docs_handlers, render_plugins
from api.engine import STORE_DOWN, Engine, check_instant, check_location_fields
from api.errors import (
    ApiError,
    ConflictError,
    InvalidRequestError,
    NotFoundError,
    UnavailableError,
)
from api.locale import is_valid_zone
from api.localtime import utc_to_ms
from api.looplag import watch_loop_lag
from api.metrics import Metrics
from api.openapi import AUTHENTICATED, document_bodies, document_errors, errors
from api.policy import DEFAULT_POLICY, Policy, PolicyInvalidError, validate_policy
from api.ratelimit import RateLimiter
from api.reasons import REASON_DOCS
from api.redis_client import RedisClient, make_redis
from api.render import UnreadableRecordError
from api.requestlog import RequestLogMiddleware
from api.schemas import (
    CancelResponse,
    DecisionRequest,
    DecisionResponse,
    DecisionStatus,
    ErrorBody,
    EventBatch,
    EventsAccepted,
    Preferences,
    StoredPreferences,
    Timeline,
)
from api.settings import Settings, is_valid_tenant
from api.shadow import (
    PolicyDocument,
    PromoteResponse,
    ShadowReport,
    document,
    policy_of,
)
from api.store import PolicyConflictError, ShadowConflictError, Store
from api.ui import render_error_page, ui_handlers
from api.userstate import UnreadablePreferencesError

log = structlog.get_logger("sendwise.api")

#: how far ahead of the server's clock an event's ``at`` may be (clock skew between systems);
#: an event further in the future is refused rather than stored
MAX_EVENT_CLOCK_SKEW_MS = 24 * 3600 * 1000


def _engine(request: Request[Any, Any, State]) -> Engine:
    engine: Engine = request.app.state.engine
    return engine


def tenant_of(request: Request[Any, Any, State]) -> str:
    """API keys (when configured) decide the tenant: the app's guard checked the key, and
    its role, before the body was read. Otherwise the X-Sendwise-Tenant header does,
    defaulting to the settings' default tenant."""
    settings: Settings = request.app.state.settings
    if settings.api_keys:
        return authenticated_key(request).tenant
    tenant = request.headers.get("x-sendwise-tenant", settings.default_tenant)
    if not is_valid_tenant(tenant):
        raise InvalidRequestError("tenant must be 1-64 of [A-Za-z0-9_.-]", field="X-Sendwise-Tenant")
    return tenant


def _wants_html(request: Request[Any, Any, State]) -> bool:
    """A person's browser on a page (``/ui/``): its errors as a page. API clients, and any
    request that does not ask for HTML, get the JSON error body."""
    return (request.url.path.startswith("/ui/")
            and "text/html" in request.headers.get("accept", ""))


def _error(request: Request[Any, Any, State], status: int, body: ErrorBody,
           headers: dict[str, str] | None = None) -> Response[bytes]:
    if _wants_html(request):
        return Response(content=render_error_page(status, body).encode(), status_code=status,
                        media_type=MediaType.HTML, headers=headers)
    return Response(content=msgspec.json.encode(body), status_code=status,
                    media_type="application/json", headers=headers)


def _count_error(request: Request[Any, Any, State], code: str) -> None:
    engine: Engine | None = getattr(request.app.state, "engine", None)
    if engine is not None:  # None: before the lifespan built it
        engine.metrics.api_errors.labels(code=code).inc()


def _api_error(request: Request[Any, Any, State], exc: ApiError) -> Response[bytes]:
    _count_error(request, exc.code)
    if isinstance(exc, UnreadablePreferencesError):  # stored data, not the client's input
        log.warning("preferences_unreadable", error=exc.message)
    elif isinstance(exc, UnreadableRecordError):
        log.warning("record_unreadable", message_id=exc.message_id, error=str(exc.__cause__))
    return _error(request, exc.status, exc.body(), dict(exc.headers))


def _validation_error(request: Request[Any, Any, State],
                      exc: ValidationException) -> Response[bytes]:
    from api.errors import field_from_msgspec

    extra = exc.extra if isinstance(exc.extra, list) else []
    if extra and isinstance(extra[0], dict):
        message, field = field_from_msgspec(str(extra[0].get("message", exc.detail)))
        key = extra[0].get("key")
        if key and key != "data":
            # litestar reports the path as `key`; msgspec names a missing/unknown field
            # in the message, relative to that path
            field = f"{key}.{field}" if field and field != key else str(key)
        body = ErrorBody(code="invalid_field", message=message, field=field)
    else:
        code = "invalid_json" if "malformed" in exc.detail.lower() else "invalid_request"
        body = ErrorBody(code=code, message=exc.detail)
    _count_error(request, body.code)
    return _error(request, 400, body)


_HTTP_CODES = {401: "unauthorized", 404: "not_found", 405: "method_not_allowed",
               413: "payload_too_large", 415: "unsupported_media_type"}


def _http_error(request: Request[Any, Any, State], exc: HTTPException) -> Response[bytes]:
    code = _HTTP_CODES.get(exc.status_code, "invalid_request" if exc.status_code < 500
                           else "internal_error")
    if exc.status_code == 400 and "malformed" in exc.detail.lower():
        code = "invalid_json"
    response = _error(request, exc.status_code, ErrorBody(code=code, message=exc.detail))
    if exc.headers:  # e.g. Allow on a 405, as RFC 9110 requires
        response.headers.update(exc.headers)
    return response


def _store_down(request: Request[Any, Any, State], exc: Exception) -> Response[bytes]:
    _engine(request).metrics.redis_errors.labels("request").inc()
    err = UnavailableError("the state store (Redis) is unreachable; retry later")
    return _error(request, err.status, err.body())


def _internal(request: Request[Any, Any, State], exc: Exception) -> Response[bytes]:
    log.exception("unhandled_error", error=type(exc).__name__)
    return _error(request, 500, ErrorBody(code="internal_error", message="internal error"))


# --------------------------------------------------------------------- handlers


_DECISION_BODY = BodyDecoder(DecisionRequest)
_PREFERENCES_BODY = BodyDecoder(Preferences)
_EVENTS_BODY = BodyDecoder(EventBatch)
_POLICY_BODY = BodyDecoder(PolicyDocument)

#: (path, method) -> the body type its handler decodes strictly (for the OpenAPI document)
REQUEST_BODIES: dict[tuple[str, str], type[Any]] = {
    ("/v1/decisions", "POST"): DecisionRequest,
    ("/v1/users/{user_id}/preferences", "PUT"): Preferences,
    ("/v1/events", "POST"): EventBatch,
    ("/v1/policy", "PUT"): PolicyDocument,
}


#: the decision id of a decision answer, as a header too (proxies and access logs see it
#: without parsing the body)
DECISION_ID_HEADER = "X-Sendwise-Decision-Id"


@post("/v1/decisions", status_code=HTTP_200_OK, summary="Decide send / defer / suppress",
      responses=errors(400, 409, 413, *AUTHENTICATED), opt=DECIDE,
      response_headers=[ResponseHeader(name=DECISION_ID_HEADER, documentation_only=True, required=True,
                                       description="The answer's `decision_id`")])
async def create_decision(request: Request[Any, Any, State]) -> Response[DecisionResponse]:
    """Decide one message. A send/defer answer is a reservation that already counts against
    every cap; the same ``message_id`` always returns the same decision. With Redis
    unreachable the answer is the documented fallback (reason ``policy_store_unavailable``),
    never an error."""
    tenant = tenant_of(request)
    data = await _DECISION_BODY.read(request)
    answer = await _engine(request).decide(tenant, data)
    return Response(answer, headers={DECISION_ID_HEADER: answer.decision_id})


@post("/v1/decisions/{decision_id:str}/cancel", status_code=HTTP_200_OK,
      summary="Release a reservation", responses=errors(404, 503, *AUTHENTICATED),
      opt=DECIDE)
async def cancel_decision(request: Request[Any, Any, State], decision_id: FromPath[str]) -> CancelResponse:
    return await _engine(request).cancel(tenant_of(request), decision_id)


@get("/v1/decisions/{decision_id:str}", summary="A decision as it stands now",
     responses=errors(404, 409, 503, *AUTHENTICATED), opt=DECIDE)
async def get_decision(request: Request[Any, Any, State],
                       decision_id: FromPath[str]) -> DecisionStatus:
    """Confirm a deferred message just before sending it: ``state`` is ``cancelled`` or
    ``preempted`` (a higher-priority message took its slot) when it must not go out.
    Another tenant's id, or an expired one, is a 404."""
    return await _engine(request).status(tenant_of(request), decision_id)


def _check_user_id(user_id: str) -> None:
    if not 1 <= len(user_id) <= 128:
        raise InvalidRequestError("user_id must be 1-128 characters", field="user_id")


@get("/v1/users/{user_id:str}/preferences", summary="Read a recipient's preferences",
     responses=errors(400, 409, 503, *AUTHENTICATED))
async def get_preferences(request: Request[Any, Any, State], user_id: FromPath[str]) -> StoredPreferences:
    _check_user_id(user_id)
    return await _engine(request).store.get_preferences(tenant_of(request), user_id)


@put("/v1/users/{user_id:str}/preferences", summary="Replace a recipient's preferences",
     responses=errors(400, 409, 413, 503, *AUTHENTICATED))
async def put_preferences(request: Request[Any, Any, State],
                          user_id: FromPath[str]) -> StoredPreferences:
    tenant = tenant_of(request)
    data = await _PREFERENCES_BODY.read(request)
    _check_user_id(user_id)
    check_location_fields(data.timezone, data.phone, data.country, data.region)
    for i, limit in enumerate(data.frequency_limits):
        if (limit.window_minutes is None) == (limit.calendar is None):
            raise InvalidRequestError("a limit needs exactly one of window_minutes or calendar",
                                 field=f"frequency_limits[{i}].window_minutes")
    engine = _engine(request)
    await engine.store.put_preferences(tenant, user_id, data)
    engine.state_cache.drop(tenant, user_id)
    return await engine.store.get_preferences(tenant, user_id)


@get("/v1/users/{user_id:str}/timeline", summary="What was sent or reserved, when and why",
     responses=errors(400, 409, 503, *AUTHENTICATED))
async def get_timeline(request: Request[Any, Any, State], user_id: FromPath[str]) -> Timeline:
    _check_user_id(user_id)
    return await _engine(request).timeline(tenant_of(request), user_id)


@post("/v1/events", status_code=HTTP_202_ACCEPTED, summary="Report outcome events",
      responses=errors(400, 413, 503, *AUTHENTICATED), opt=DECIDE)
async def post_events(request: Request[Any, Any, State]) -> EventsAccepted:
    """Validated whole before anything is written: one bad event rejects the batch."""
    tenant = tenant_of(request)
    data = await _EVENTS_BODY.read(request)
    engine = _engine(request)
    latest = engine.clock.now_ms() + MAX_EVENT_CLOCK_SKEW_MS
    if len(data.events) > engine.settings.max_events_per_batch:
        raise InvalidRequestError(f"at most {engine.settings.max_events_per_batch} events per batch",
                             field="events")
    for i, event in enumerate(data.events):
        check_instant(event.at, f"events[{i}].at")
        if utc_to_ms(event.at) > latest:
            raise InvalidRequestError("the event is in the future (more than 24 h ahead of the "
                                      "server's clock)", field=f"events[{i}].at",
                                      code="invalid_field")
        if event.timezone is not None and not is_valid_zone(event.timezone):
            raise InvalidRequestError(f"unknown IANA time zone {event.timezone!r}",
                                      field=f"events[{i}].timezone", code="invalid_timezone")
        if event.type == "converted" and not event.campaign_id:
            raise InvalidRequestError("a converted event needs campaign_id",
                                 field=f"events[{i}].campaign_id")
    return await engine.record_events(tenant, data.events)


@get("/v1/policy", summary="The tenant's policy document",
     responses=errors(503, *AUTHENTICATED))
async def get_policy(request: Request[Any, Any, State]) -> Policy:
    engine = _engine(request)
    tenant = tenant_of(request)
    policy = await engine.store.get_policy(tenant)
    return policy if policy is not None else DEFAULT_POLICY


@put("/v1/policy", summary="Replace the tenant's policy, or install a shadow policy",
     responses=errors(400, 409, 413, 503, *AUTHENTICATED))
async def put_policy(request: Request[Any, Any, State]) -> PolicyDocument:
    """A ``version`` in the body must equal the current version (409 otherwise); the
    server assigns the next one. ``"mode": "shadow"`` stores the document as the tenant's
    shadow policy instead (validated the same way, with its own version): evaluated beside
    the live policy on every decision, without effect (``GET /v1/policy/shadow/report``)."""
    tenant = tenant_of(request)
    data = await _POLICY_BODY.read(request)
    try:
        validate_policy(data)
    except PolicyInvalidError as exc:
        raise InvalidRequestError(exc.message, field=exc.field, code="invalid_policy") from exc
    if data.mode == "live" and data.sample_rate is not None:
        raise InvalidRequestError("sample_rate applies to a shadow policy only "
                                  '("mode": "shadow")', field="sample_rate",
                                  code="invalid_policy")
    engine = _engine(request)
    expected = data.version if data.version else None
    policy = policy_of(data)
    try:
        if data.mode == "shadow":
            rate = 1.0 if data.sample_rate is None else data.sample_rate
            return await engine.shadow.install(engine, tenant, policy, rate, expected)
        stored = await engine.store.put_policy(tenant, policy, expected, engine.clock.now_ms())
    except PolicyConflictError as exc:
        which = "shadow policy" if isinstance(exc, ShadowConflictError) else "policy"
        raise ConflictError(f"{which} version is {exc.current}, not {expected}", field="version",
                       code="policy_version_conflict") from exc
    engine.policies.put(tenant, stored)
    return document(stored, "live", None)


#: the optimistic-concurrency guards of the shadow routes (409 when one does not match)
ShadowVersion = Annotated[int | None, Parameter(
    ge=0, description="Act only if the shadow policy still has this version (409 otherwise)")]
LiveVersion = Annotated[int | None, Parameter(
    ge=0, description="Act only if the live policy still has this version (409 otherwise)")]


def _no_shadow() -> NotFoundError:
    return NotFoundError("this tenant has no shadow policy (PUT /v1/policy with "
                         '"mode": "shadow" installs one)', field="mode")


@get("/v1/policy/shadow", summary="The tenant's shadow policy",
     responses=errors(404, 503, *AUTHENTICATED))
async def get_shadow_policy(request: Request[Any, Any, State]) -> PolicyDocument:
    found = await _engine(request).shadow.get(tenant_of(request))
    if found is None:
        raise _no_shadow()
    return found


@delete("/v1/policy/shadow", status_code=HTTP_204_NO_CONTENT,
        summary="Remove the shadow policy and its report",
        responses=errors(400, 404, 409, 503, *AUTHENTICATED))
async def delete_shadow_policy(request: Request[Any, Any, State],
                               version: ShadowVersion = None) -> None:
    """``?version=`` guards against removing a shadow someone has just replaced (409)."""
    tenant = tenant_of(request)
    expected = version
    try:
        removed = await _engine(request).shadow.remove(tenant, expected)
    except ShadowConflictError as exc:
        raise ConflictError(f"shadow policy version is {exc.current}, not {expected}",
                            field="version", code="policy_version_conflict") from exc
    if not removed:
        raise _no_shadow()


@post("/v1/policy/shadow/promote", status_code=HTTP_200_OK,
      summary="Make the shadow policy the live one, in one step",
      responses=errors(400, 404, 409, 503, *AUTHENTICATED))
async def promote_shadow_policy(request: Request[Any, Any, State], version: ShadowVersion = None,
                                live_version: LiveVersion = None) -> PromoteResponse:
    """Atomically: the shadow becomes the live policy (next live version), the shadow and
    its report are removed, and the final report is answered. ``?version=`` and
    ``?live_version=`` guard against promoting a shadow or replacing a live policy that
    changed meanwhile (409)."""
    tenant = tenant_of(request)
    engine = _engine(request)
    try:
        promoted = await engine.shadow.promote(engine, tenant, version, live_version)
    except ShadowConflictError as exc:
        raise ConflictError(f"shadow policy version is {exc.current}, not {version}",
                            field="version", code="policy_version_conflict") from exc
    except PolicyConflictError as exc:
        raise ConflictError(f"policy version is {exc.current}, not {live_version}",
                            field="live_version", code="policy_version_conflict") from exc
    if promoted is None:
        raise _no_shadow()
    return promoted


@get("/v1/policy/shadow/report", summary="What the shadow policy would have changed",
     responses=errors(404, 503, *AUTHENTICATED))
async def shadow_report(request: Request[Any, Any, State]) -> ShadowReport:
    engine = _engine(request)
    report = await engine.shadow.report(engine, tenant_of(request))
    if report is None:
        raise _no_shadow()
    return report


class ReasonDoc(msgspec.Struct, frozen=True):
    code: str
    description: str


@get("/v1/reason-codes", summary="The closed set of reason codes", opt=DECIDE,
     responses=errors(*AUTHENTICATED))
async def reason_codes() -> list[ReasonDoc]:
    return [ReasonDoc(code=str(code), description=text) for code, text in REASON_DOCS.items()]


class Health(msgspec.Struct, frozen=True, omit_defaults=True):
    status: Literal["ok", "redis_unreachable"]
    #: the global model scoring decisions in this worker (``/health/ready`` only)
    model_version: str | None = None


@get("/health/live", summary="The process is up")
async def live() -> Health:
    return Health("ok")


@get("/health/ready", summary="Redis is reachable",
     responses={503: ResponseSpec(data_container=Health, generate_examples=False,
                                  description="Redis is unreachable")})
async def ready(request: Request[Any, Any, State]) -> Response[Health]:
    try:
        ok = await _engine(request).store.ping()
    except STORE_DOWN:
        ok = False
    # the global model in force in this worker (a tenant's own model: GET /v1/models)
    model = await _engine(request).tenant_models.model_for(None)
    return Response(Health("ok" if ok else "redis_unreachable", model.version),
                    status_code=200 if ok else 503)


@get("/metrics", summary="Prometheus metrics (all workers when served by `sendwise serve`)",
     media_type="text/plain", opt=ADMIN, responses=errors(*AUTHENTICATED))
async def metrics(request: Request[Any, Any, State]) -> Response[bytes]:
    return Response(content=_engine(request).metrics.scrape(),
                    media_type="text/plain; version=0.0.4")


@post("/v1/_trivial", status_code=HTTP_200_OK, include_in_schema=False, opt=DECIDE)
async def trivial(request: Request[Any, Any, State]) -> dict[str, str]:
    """The benchmark's yardstick: same app, same decoding, no Redis (docs/benchmarks.md).
    Routed only with ``SENDWISE_BENCHMARK_ENDPOINTS=1`` (the benchmarks set it): a production
    service has no use for an endpoint that parses bodies without authentication."""
    data = await _DECISION_BODY.read(request)
    return {"message_id": data.message_id}


@post("/v1/_floor", status_code=HTTP_200_OK, include_in_schema=False, opt=DECIDE)
async def floor(request: Request[Any, Any, State]) -> dict[str, str]:
    """The benchmark's other yardstick: the trivial endpoint plus one trivial Redis script
    call on the request's user slot, i.e. the least any decision must cost (one HTTP request,
    one round trip). Routed only with ``SENDWISE_BENCHMARK_ENDPOINTS=1``, like ``trivial``."""
    data = await _DECISION_BODY.read(request)
    await _engine(request).store.floor_call(tenant_of(request), data.user_id)
    return {"message_id": data.message_id}


# ----------------------------------------------------------------------- app


def create_app(settings: Settings, *, redis: RedisClient | None = None,
               clock: Clock | None = None,
               monotonic: Callable[[], float] = time.monotonic, warm_up: bool = False) -> Litestar:
    """``monotonic`` drives the per-key rate limiter (tests move it instead of sleeping).
    ``warm_up`` (served workers) pays first-use costs before traffic (api/warmup.py)."""
    owned = redis is None
    limiter = (RateLimiter(settings.rate_limit_per_second, settings.rate_limit_burst,
                           monotonic=monotonic) if settings.rate_limit_per_second else None)

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        client = redis if redis is not None else make_redis(settings)
        store = Store(client, max_in_flight=settings.redis_max_connections,
                      auto_pipeline=settings.redis_auto_pipeline,
                      preferences_format=settings.preferences_format)
        app.state.engine = Engine(store, settings, clock or SystemClock(), Metrics())
        app.state.settings = settings
        if warm_up:
            from api.warmup import warm_up as warm

            app.state.warmup = await warm(app.state.engine)
        app.state.engine.metrics.watch_gc()  # after the warm-up's own collections
        lag = asyncio.ensure_future(watch_loop_lag(app.state.engine.metrics.loop_lag.observe))
        # the worker counts in /metrics from here on (its Metrics exist)
        log.info("app_started", pid=os.getpid())
        try:
            yield
        finally:
            lag.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await lag
            try:  # this worker's unflushed shadow report counts (api/shadow.py)
                await app.state.engine.shadow.flush_all(app.state.engine)
            finally:
                app.state.engine.metrics.close()
            # the decision log's appends whose replies nobody awaited (api/decision_log.py)
            await app.state.engine.store.settle()
            if owned:
                await client.aclose()

    logging.getLogger("httpx").setLevel(logging.WARNING)
    from api.lifecycle import LIFECYCLE_BODIES, lifecycle_router  # imports tenant_of from here
    from api.models_http import MODEL_BODIES, models_router

    app = Litestar(
        route_handlers=[create_decision, cancel_decision, get_decision, get_preferences,
                        put_preferences, get_timeline, post_events, get_policy, put_policy,
                        get_shadow_policy, delete_shadow_policy, promote_shadow_policy,
                        shadow_report, reason_codes, live,
                        ready, metrics, *docs_handlers(), *ui_handlers(tenant_of), lifecycle_router,
                        models_router, *([trivial, floor] if settings.benchmark_endpoints else [])],
        lifespan=[lifespan],
        guards=[make_guard(settings.api_keys, limiter, settings.max_body_bytes)],
        exception_handlers={
            ApiError: _api_error,
            ValidationException: _validation_error,
            HTTPException: _http_error,
            **dict.fromkeys(STORE_DOWN, _store_down),
            Exception: _internal,
        },
        request_max_body_size=settings.max_body_bytes,
        openapi_config=OpenAPIConfig(
            title="sendwise", version="1",
            description="Send-time and frequency-capping decisions.",
            path="/docs",
            render_plugins=render_plugins(),
        ),
        debug=False,
    )
    document_bodies(app.plugins.get(OpenAPIPlugin).provide_openapi_schema(),
                    {**REQUEST_BODIES, **LIFECYCLE_BODIES, **MODEL_BODIES})
    document_errors(app.plugins.get(OpenAPIPlugin).provide_openapi_schema())
    # around litestar's whole handler (not as route middleware), so 404s and 405s of unknown
    # routes get a request id and an access line too
    app.asgi_handler = RequestLogMiddleware(
        app.asgi_handler, access_log=settings.log_level.lower() in ("debug", "info"))
    return app


def app_from_env() -> Litestar:
    """Factory for uvicorn workers: settings (and the Redis URL) come from the environment.
    Each worker first sets up logging and ties its life to the supervisor's."""
    from api.serve import prepare_worker

    settings = Settings.from_env()
    prepare_worker(settings)
    # SENDWISE_WARMUP=0 only to measure what warm-up buys (docs/benchmarks.md, "Stalls")
    return create_app(settings, warm_up=os.environ.get("SENDWISE_WARMUP", "1") != "0")

