"""Which model each tenant's decisions score with, in every worker: Redis-published pointers.

A model is not pushed to workers; it is *pointed at*. ``POST /v1/models/reload`` vets the
artifact (``ModelRegistry.prepare``: readable, same feature hash, champion gate unless
forced) and then writes a pointer document to ``api.keys.model_pointer_key(tenant)`` (one
tenant) or ``model_pointer_key(None)`` (the global default), with an id unique to the write
and a revision Redis bumps atomically (``lua/model_pointer_put.lua``). Every worker follows
the pointers the way ``api/policy_cache.py`` follows policies: a scope's pointer id is
re-read at most every ``refresh_seconds`` (one small HMGET, never a round trip per decision
beyond that), and a new pointer is loaded off the event loop (``asyncio.to_thread``) while
decisions keep scoring with the model they had; the swap is one dict assignment.
``POST /v1/models/clear`` deletes a pointer (the next scope applies again). So a reload answered by
one worker reaches all of them within about a second, and a restarted worker finds the
pointers where it left them.

Precedence for a decision of tenant ``t``: ``t``'s pointed model, else the global pointed
model, else the startup default (``sendwise serve --model DIR`` / ``SENDWISE_MODEL_DIR``),
else the smoothed-histogram heuristic. A worker that cannot load a pointed model (the
directory is gone on this host, the file is corrupt, it now holds another model than the
pointer names) keeps scoring with what it had, logs ``model_pointer_refused``, counts it in
``sendwise_model_refused_total`` and reports it in ``GET /v1/models`` ``last_error``; it
does not retry that pointer (write a new one, i.e. reload again, once the cause is fixed).

Memory is bounded whatever the requests: at most ``capacity`` pointed models are held per
worker (least recently used evicted; the startup default is held besides), loads run one at
a time per worker, each scope triggers at most one load per refresh interval, and at most
``MAX_SCOPES`` tenants' pointer states are remembered. A tenant whose model was evicted
scores with the global model until its next check reloads it: size the cache (``SENDWISE_
MODEL_CACHE_SIZE``) to the number of distinct models in use.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import msgspec
import structlog
from redis.exceptions import RedisError

from api.keys import GLOBAL_MODEL_SCOPE, model_pointer_key
from api.metrics import Metrics
from api.scoring import ActiveModel, ModelRefusedError, ModelRegistry
from api.store import Store

log = structlog.get_logger("sendwise.models")

#: Redis failures a pointer check survives (the model in hand keeps scoring: a pointer
#: that cannot be read must never fail a decision)
_STORE_DOWN = (RedisError, ConnectionError, TimeoutError, OSError)
#: tenants whose pointer state one worker remembers (without API keys a header names the
#: tenant, so the set of names is the caller's to choose)
MAX_SCOPES = 10_000

Scope = Literal["tenant", "global", "startup"]


class ModelPointer(msgspec.Struct, frozen=True, kw_only=True):
    """The pointer document: what every worker must load for one scope."""

    #: the artifact directory; every worker must be able to read it (a shared volume)
    directory: str
    #: the model's version (sha256 prefix of ``model.txt``): a worker refuses a directory
    #: that now holds another model
    model_version: str
    model_sha256: str | None = None
    #: served although it did not pass its champion gate
    force: bool = False
    #: the tenant it applies to; None: the global default
    tenant: str | None = None
    #: who wrote it: the API key's name (or its tenant and role), "anonymous" without keys
    set_by: str
    set_at: dt.datetime
    #: unique per write: what workers compare to see a change (a revision alone would
    #: repeat after the pointer was deleted and written again)
    id: str = ""
    #: Redis's revision of this scope's pointer (filled on read; not part of the stored doc)
    revision: int = 0


_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder(ModelPointer).decode
_ModelKey = tuple[str, str, bool]


@dataclass
class _ScopeState:
    #: the pointer whose model is in force here (None: no pointer)
    pointer: ModelPointer | None = None
    key: _ModelKey | None = None
    checked_at: float = float("-inf")
    #: the latest pointer id this worker has seen (a load of an older one is dropped)
    wanted: str | None = None
    #: a pointer id that failed to load on this worker: not retried until it changes
    refused: str | None = None
    last_error: str | None = None
    loading: bool = False


def _absolute(directory: str | Path) -> str:
    """Workers may run with another working directory than the one answering the reload:
    the pointer names the absolute path (no I/O: the path is not resolved on disk)."""
    return os.path.abspath(directory)


class TenantModels:
    """One worker's view of the pointers, and the models they point at (module docstring)."""

    def __init__(self, store: Store, registry: ModelRegistry, metrics: Metrics, *,
                 refresh_seconds: float = 1.0, capacity: int = 4,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        """``monotonic`` is injectable so tests move time instead of sleeping."""
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self._store = store  # its gate bounds the connections pointer reads take too
        self.registry = registry
        self._metrics = metrics
        self._refresh = refresh_seconds
        self.capacity = capacity
        self._monotonic = monotonic
        self._scopes: OrderedDict[str, _ScopeState] = OrderedDict()
        self._models: OrderedDict[_ModelKey, ActiveModel] = OrderedDict()
        self._load_lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[None]] = set()

    # ------------------------------------------------------------------ lookups

    @staticmethod
    def _scope_name(tenant: str | None) -> str:
        return GLOBAL_MODEL_SCOPE if tenant is None else tenant

    def _state(self, name: str) -> _ScopeState:
        state = self._scopes.get(name)
        if state is None:
            state = self._scopes[name] = _ScopeState()
            while len(self._scopes) > MAX_SCOPES:  # forget the oldest tenant, never global
                oldest = next(iter(self._scopes))
                if oldest == GLOBAL_MODEL_SCOPE:
                    self._scopes.move_to_end(oldest)
                    continue
                del self._scopes[oldest]
        return state

    def _held(self, name: str) -> ActiveModel | None:
        state = self._scopes.get(name)
        if state is None or state.key is None:
            return None
        model = self._models.get(state.key)
        if model is not None:
            self._models.move_to_end(state.key)
        return model

    def resolve(self, tenant: str | None) -> tuple[ActiveModel, Scope]:
        """The model in force for ``tenant`` (None: the global default) and where it comes
        from, without any I/O."""
        if tenant is not None:
            model = self._held(tenant)
            if model is not None:
                return model, "tenant"
        model = self._held(GLOBAL_MODEL_SCOPE)
        if model is not None:
            return model, "global"
        return self.registry.active, "startup"

    def peek(self, tenant: str | None) -> ActiveModel:
        return self.resolve(tenant)[0]

    async def model_for(self, tenant: str | None) -> ActiveModel:
        """``peek`` after re-checking the tenant's and the global pointer if their last
        check is older than the refresh interval (a changed pointer starts loading in the
        background; this decision still scores with the model in hand)."""
        names = [GLOBAL_MODEL_SCOPE] if tenant is None else [tenant, GLOBAL_MODEL_SCOPE]
        now = self._monotonic()
        stale = [n for n in names if now - self._state(n).checked_at >= self._refresh]
        if stale:
            await asyncio.gather(*(self._check(n, now) for n in stale))
        return self.peek(tenant)

    def info(self, tenant: str | None) -> tuple[ActiveModel, Scope, ModelPointer | None,
                                               str | None]:
        """For ``GET /v1/models``: the model in force, its scope, its pointer, and the last
        error of the scopes that apply (the tenant's first)."""
        model, scope = self.resolve(tenant)
        pointer = None
        if scope != "startup":
            state = self._scopes.get(tenant if scope == "tenant" and tenant else
                                     GLOBAL_MODEL_SCOPE)
            pointer = state.pointer if state is not None else None
        errors = [self._scopes[n].last_error for n in
                  ([tenant] if tenant is not None else []) + [GLOBAL_MODEL_SCOPE]
                  if n in self._scopes]
        error = next((e for e in errors if e), None) or (
            self.registry.last_error if scope == "startup" else None)
        return model, scope, pointer, error

    def loading(self, tenant: str | None) -> bool:
        """A pointer of a scope that applies to ``tenant`` is being loaded right now."""
        names = ([tenant] if tenant is not None else []) + [GLOBAL_MODEL_SCOPE]
        return any(self._scopes[n].loading for n in names if n in self._scopes)

    @property
    def models_held(self) -> int:
        return len(self._models)

    async def settle(self) -> None:
        """Wait for the loads in progress (tests, and ``GET /v1/models``, which reports
        the state after them)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    # ----------------------------------------------------------------- following

    async def _check(self, name: str, now: float) -> None:
        state = self._state(name)
        state.checked_at = now  # concurrent decisions do not check again meanwhile
        key = model_pointer_key(None if name == GLOBAL_MODEL_SCOPE else name)
        try:
            raw, = await self._store.hash_fields(key, ["id"])
            if raw is None:  # no pointer (or it was cleared): the next scope applies
                self._clear(name, state)
                return
            seen = raw.decode()
            evicted = state.key is not None and state.key not in self._models
            current = state.pointer.id if state.pointer is not None else None
            if state.loading or seen == state.refused or (seen == current and not evicted):
                return
            rev_raw, doc = await self._store.hash_fields(key, ["rev", "doc"])
        except _STORE_DOWN as exc:
            log.warning("model_pointer_unreadable", scope=name, error=type(exc).__name__)
            return
        try:
            pointer = msgspec.structs.replace(_decode(doc or b""), revision=int(rev_raw or 0))
        except (msgspec.DecodeError, ValueError) as exc:
            self._refuse(state, name, seen, f"refused: unreadable model pointer: {exc}")
            return
        state.loading, state.wanted = True, pointer.id
        task = asyncio.create_task(self._load(name, pointer))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _load(self, name: str, pointer: ModelPointer) -> None:
        state = self._state(name)
        try:
            model = await self._prepare(pointer.directory, pointer.force,
                                        pointer.model_version)
            if model.version != pointer.model_version:
                raise ModelRefusedError(
                    f"refused: {pointer.directory} now holds model {model.version}, the "
                    f"pointer names {pointer.model_version}; reload it again")
        except ModelRefusedError as exc:
            self._refuse(state, name, pointer.id, str(exc))
            return
        finally:
            state.loading = False
        if pointer.id == state.wanted:  # else a newer pointer was published meanwhile
            self._install(name, pointer, model)

    async def _prepare(self, directory: str, force: bool,
                       version: str | None = None) -> ActiveModel:
        """The held model when this worker has the pointed version already (another tenant
        points at it too), else a vetted load from disk, one at a time per worker: parsing
        trees is CPU the decisions need too."""
        async with self._load_lock:
            held = None if version is None else self._models.get((directory, version, force))
            if held is not None:
                return held
            return await asyncio.to_thread(self.registry.prepare, directory, force=force)

    def _refuse(self, state: _ScopeState, name: str, pointer_id: str, error: str) -> None:
        state.refused, state.last_error = pointer_id, error
        self._metrics.model_refused.inc()
        log.error("model_pointer_refused", scope=name, pointer=pointer_id, error=error)

    def _clear(self, name: str, state: _ScopeState) -> None:
        if state.key is not None and name == GLOBAL_MODEL_SCOPE:
            self._metrics.set_model(self.registry.active.version)
        state.pointer, state.key, state.wanted, state.refused = None, None, None, None

    def _install(self, name: str, pointer: ModelPointer, model: ActiveModel) -> None:
        state = self._state(name)
        key: _ModelKey = (pointer.directory, model.version, pointer.force)
        self._models[key] = model
        self._models.move_to_end(key)
        while len(self._models) > self.capacity:
            self._models.popitem(last=False)
        state.pointer, state.key, state.wanted = pointer, key, pointer.id
        state.refused, state.last_error = None, None
        if name == GLOBAL_MODEL_SCOPE:
            self._metrics.set_model(model.version)
        log.info("model_pointer_loaded", scope=name, revision=pointer.revision,
                 model_version=model.version, pid=os.getpid())

    # ----------------------------------------------------------------- publishing

    async def publish(self, tenant: str | None, directory: str | Path, *, force: bool,
                      set_by: str, now: dt.datetime) -> ModelPointer:
        """Vet ``directory``, point the scope at it and use it in this worker at once.
        ``ModelRefusedError`` (nothing written) if it must not serve."""
        name = self._scope_name(tenant)
        state = self._state(name)
        path = _absolute(directory)
        try:
            model = await self._prepare(path, force)
        except ModelRefusedError as exc:
            state.last_error = str(exc)
            self._metrics.model_refused.inc()
            raise
        scorer = model.scorer
        pointer = ModelPointer(directory=path, model_version=model.version,
                               model_sha256=None if scorer is None
                               else scorer.manifest.model_sha256,
                               force=force, tenant=tenant, set_by=set_by, set_at=now,
                               id=uuid.uuid4().hex)
        state.wanted = pointer.id  # a load of an older pointer finishing later is dropped
        revision = await self._store.put_model_pointer(model_pointer_key(tenant),
                                                       _encode(pointer), pointer.id)
        pointer = msgspec.structs.replace(pointer, revision=revision)
        if state.wanted == pointer.id:  # else another publish on this worker came after
            self._install(name, pointer, model)
        state.checked_at = self._monotonic()
        return pointer

    async def clear(self, tenant: str | None) -> None:
        """Delete the scope's pointer: the tenant falls back to the global model (the
        global default to the startup default), here at once, elsewhere at the next
        check."""
        name = self._scope_name(tenant)
        await self._store.delete_key(model_pointer_key(tenant))
        self._clear(name, self._state(name))
        self._state(name).checked_at = self._monotonic()
