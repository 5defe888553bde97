"""``GET /v1/models`` and ``POST /v1/models/reload``: which model scores decisions.

Admin routes (undeclared role = admin, ``api/auth.py``). The model is per worker process:
``sendwise serve --model DIR`` / ``SENDWISE_MODEL_DIR`` loads it in every worker at start;
a reload reaches the worker that answers it (with ``--workers N``, restart the service
or repeat the call until every worker reports the version; docs/production.md).
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import msgspec
from litestar import Request, Router, get, post
from litestar.datastructures import State
from litestar.status_codes import HTTP_200_OK

from api.body import BodyDecoder
from api.engine import Engine
from api.errors import ConflictError, InvalidRequestError
from api.openapi import AUTHENTICATED, errors
from api.scoring import ActiveModel, ModelRefusedError


class ModelReload(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``directory``: a model artifact on the server (default: the configured model
    directory); ``force``: serve it even though it did not pass its champion gate."""

    directory: str | None = None
    force: bool = False


class ModelInfo(msgspec.Struct, frozen=True, kw_only=True):
    #: a LightGBM model's sha256 prefix, or the heuristic's label (``heuristic-v2``)
    model_version: str
    kind: str
    directory: str | None
    note: str
    loaded_at: dt.datetime
    feature_hash: str | None = None
    champion: str | None = None
    #: the last refused load (the active model stayed), until a load succeeds
    last_error: str | None = None


def model_info(engine: Engine) -> ModelInfo:
    active: ActiveModel = engine.models.active
    scorer = active.scorer
    gate = scorer.manifest.champion if scorer is not None else None
    return ModelInfo(
        model_version=active.version,
        kind="heuristic" if scorer is None else f"lightgbm:{scorer.manifest.objective}",
        directory=active.directory, note=active.note, loaded_at=active.loaded_at,
        feature_hash=None if scorer is None else scorer.manifest.feature_hash,
        champion=None if gate is None else gate.summary(),
        last_error=engine.models.last_error)


def _engine(request: Request[Any, Any, State]) -> Engine:
    engine: Engine = request.app.state.engine
    return engine


@get("/", summary="The model scoring decisions in this worker",
     responses=errors(*AUTHENTICATED))
async def get_models(request: Request[Any, Any, State]) -> ModelInfo:
    return model_info(_engine(request))


_RELOAD_BODY = BodyDecoder(ModelReload)


@post("/reload", status_code=HTTP_200_OK, summary="Load and activate a model artifact",
      responses=errors(400, 409, 413, *AUTHENTICATED))
async def reload_model(request: Request[Any, Any, State]) -> ModelInfo:
    """Atomic: decisions score wholly with the old or wholly with the new model. A model
    that cannot be read, was trained with another feature hash, or did not pass its
    champion gate (unless ``force``) is refused with 409 ``model_refused`` and the active
    model stays."""
    engine = _engine(request)
    data = await _RELOAD_BODY.read(request)
    directory = data.directory or engine.settings.model_dir
    if not directory:
        raise InvalidRequestError("no directory given and no SENDWISE_MODEL_DIR configured",
                                  field="directory")
    try:
        await engine.models.reload(directory, force=data.force)
    except ModelRefusedError as exc:
        engine.metrics.model_refused.inc()
        raise ConflictError(str(exc), field="directory", code="model_refused") from exc
    engine.metrics.set_model(engine.models.active.version)
    return model_info(engine)


#: (path, method) -> body type, for the OpenAPI document (as app.REQUEST_BODIES)
MODEL_BODIES: dict[tuple[str, str], type[Any]] = {("/v1/models/reload", "POST"): ModelReload}

models_router = Router(path="/v1/models", route_handlers=[get_models, reload_model],
                       tags=["models"])
