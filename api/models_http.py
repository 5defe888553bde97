"""``GET /v1/models`` and ``POST /v1/models/reload``: which model scores decisions.

Admin routes (undeclared role = admin, ``api/auth.py``). A reload vets the artifact and
publishes a pointer in Redis that every worker follows within ``SENDWISE_MODEL_REFRESH_
SECONDS`` (api/model_pointer.py); the worker answering the reload uses it at once.

Who may point what: a reload naming ``tenant`` sets that tenant's model and needs an admin
key *of that tenant* (403 otherwise); a reload without ``tenant`` sets the global default
every tenant without a model of its own scores with, and needs an admin key of the
deployment's default tenant (``SENDWISE_DEFAULT_TENANT``, the operator's own): one tenant's
admin must not change how every other tenant's messages are timed. Without API keys
configured (the trusted-gateway mode, where a header names the tenant) every caller may
do both.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import os
from typing import Any

import msgspec
from litestar import Request, Router, get, post
from litestar.datastructures import State
from litestar.status_codes import HTTP_200_OK

from api.app import tenant_of
from api.auth import authenticated_key
from api.body import BodyDecoder
from api.engine import Engine
from api.errors import ConflictError, ForbiddenError, InvalidRequestError
from api.localtime import ms_to_utc
from api.model_pointer import ModelPointer, Scope
from api.openapi import AUTHENTICATED, errors
from api.scoring import ModelRefusedError
from api.settings import is_valid_tenant

#: how long ``GET /v1/models`` waits for a model still loading before answering anyway
SETTLE_SECONDS = 5.0


class ModelReload(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``directory``: a model artifact every worker can read (default: the configured model
    directory); ``force``: serve it even though it did not pass its champion gate;
    ``tenant``: set this tenant's model (default: the global default model)."""

    directory: str | None = None
    force: bool = False
    tenant: str | None = None


class ModelClear(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``tenant``: forget this tenant's model (it scores with the global one again);
    without it, forget the global model (the startup default applies again)."""

    tenant: str | None = None


class ModelInfo(msgspec.Struct, frozen=True, kw_only=True):
    #: a LightGBM model's sha256 prefix, or the heuristic's label (``heuristic-v2``)
    model_version: str
    kind: str
    directory: str | None
    note: str
    loaded_at: dt.datetime
    feature_hash: str | None = None
    champion: str | None = None
    #: the last refused load of a scope that applies here (the model in hand stayed),
    #: until a load of that scope succeeds
    last_error: str | None = None
    #: the tenant asked about (None: the global default)
    tenant: str | None = None
    #: where the model in force comes from: the tenant's pointer, the global pointer, or
    #: the worker's startup default (``--model`` / ``SENDWISE_MODEL_DIR``, else heuristic)
    scope: Scope = "startup"
    #: the pointer in force (None for the startup default)
    pointer: ModelPointer | None = None
    #: the worker process that answered: each worker follows the pointers on its own
    worker_pid: int = 0
    #: pointed models this worker holds, and at most (``SENDWISE_MODEL_CACHE_SIZE``)
    models_held: int = 0
    cache_size: int = 0
    #: a pointed model is still loading in this worker (the answer waited up to 5 s for it)
    loading: bool = False


def model_info(engine: Engine, tenant: str | None) -> ModelInfo:
    active, scope, pointer, error = engine.tenant_models.info(tenant)
    scorer = active.scorer
    gate = scorer.manifest.champion if scorer is not None else None
    return ModelInfo(
        model_version=active.version,
        kind="heuristic" if scorer is None else f"lightgbm:{scorer.manifest.objective}",
        directory=active.directory, note=active.note, loaded_at=active.loaded_at,
        feature_hash=None if scorer is None else scorer.manifest.feature_hash,
        champion=None if gate is None else gate.summary(),
        last_error=error, tenant=tenant, scope=scope, pointer=pointer, worker_pid=os.getpid(),
        models_held=engine.tenant_models.models_held,
        cache_size=engine.tenant_models.capacity, loading=engine.tenant_models.loading(tenant))


def _engine(request: Request[Any, Any, State]) -> Engine:
    engine: Engine = request.app.state.engine
    return engine


@get("/", summary="The model scoring this tenant's decisions in the answering worker",
     responses=errors(*AUTHENTICATED))
async def get_models(request: Request[Any, Any, State]) -> ModelInfo:
    """Re-checks the pointers (at most once per refresh interval) and waits for a load in
    progress (at most ``SETTLE_SECONDS``; past that ``loading`` says so), so the answer is
    this worker's state as of now."""
    engine = _engine(request)
    tenant = tenant_of(request)
    await engine.tenant_models.model_for(tenant)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(asyncio.shield(engine.tenant_models.settle()), SETTLE_SECONDS)
    return model_info(engine, tenant)


_RELOAD_BODY = BodyDecoder(ModelReload)


def _authorize(request: Request[Any, Any, State], target: str | None) -> str:
    """The module docstring's rule; returns who sets the pointer (for its ``set_by``)."""
    settings = _engine(request).settings
    if target is not None and not is_valid_tenant(target):
        raise InvalidRequestError("tenant must be 1-64 of [A-Za-z0-9_.-]", field="tenant")
    if not settings.api_keys:
        return "anonymous"
    key = authenticated_key(request)
    if target is not None and target != key.tenant:
        raise ForbiddenError(f"this API key belongs to tenant {key.tenant!r}; it may set only "
                             "that tenant's model", field="tenant")
    if target is None and key.tenant != settings.default_tenant:
        raise ForbiddenError("the global default model is set by an admin key of the default "
                             f"tenant ({settings.default_tenant!r}); name your own tenant in "
                             f"'tenant' to set its model", field="tenant")
    return key.name or f"{key.tenant}:{key.role}"


@post("/reload", status_code=HTTP_200_OK, summary="Vet a model artifact and point every "
      "worker at it", responses=errors(400, 403, 409, 413, 503, *AUTHENTICATED))
async def reload_model(request: Request[Any, Any, State]) -> ModelInfo:
    """Atomic: decisions score wholly with the old or wholly with the new model. A model
    that cannot be read, was trained with another feature hash, or did not pass its
    champion gate (unless ``force``) is refused with 409 ``model_refused``: nothing is
    published and every worker keeps its model. Otherwise the pointer is written and every
    worker follows it within ``SENDWISE_MODEL_REFRESH_SECONDS`` (default 1 s)."""
    engine = _engine(request)
    data = await _RELOAD_BODY.read(request)
    set_by = _authorize(request, data.tenant)
    directory = data.directory or engine.settings.model_dir
    if not directory:
        raise InvalidRequestError("no directory given and no SENDWISE_MODEL_DIR configured",
                                  field="directory")
    try:
        await engine.tenant_models.publish(data.tenant, directory, force=data.force,
                                           set_by=set_by,
                                           now=ms_to_utc(engine.clock.now_ms()))
    except ModelRefusedError as exc:
        raise ConflictError(str(exc), field="directory", code="model_refused") from exc
    return model_info(engine, data.tenant)


_CLEAR_BODY = BodyDecoder(ModelClear)


@post("/clear", status_code=HTTP_200_OK, summary="Delete a model pointer",
      responses=errors(400, 403, 413, 503, *AUTHENTICATED))
async def clear_model(request: Request[Any, Any, State]) -> ModelInfo:
    """The tenant (or, without ``tenant``, every tenant without a model of its own) goes
    back to the next model in line: in the answering worker at once, in every worker within
    ``SENDWISE_MODEL_REFRESH_SECONDS``. The same rule as a reload decides who may."""
    engine = _engine(request)
    data = await _CLEAR_BODY.read(request)
    _authorize(request, data.tenant)
    await engine.tenant_models.clear(data.tenant)
    return model_info(engine, data.tenant)


#: (path, method) -> body type, for the OpenAPI document (as app.REQUEST_BODIES)
MODEL_BODIES: dict[tuple[str, str], type[Any]] = {("/v1/models/reload", "POST"): ModelReload,
                                                  ("/v1/models/clear", "POST"): ModelClear}

models_router = Router(path="/v1/models", route_handlers=[get_models, reload_model,
                                                          clear_model], tags=["models"])
