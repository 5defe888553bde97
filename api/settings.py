"""Service settings, read once from the environment and passed around explicitly.

A frozen msgspec Struct (not module-level globals) so tests build their own settings
without touching ``os.environ`` and nothing is cached at import time.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping
from pathlib import Path

import msgspec

from api.auth import ROLES, ApiKey, Role, hash_key
from api.ids import Secret, decode_secret
from api.record_codes import RECORD_FORMAT
from models.bundled_model import BUNDLED_MODEL_DIR, HEURISTIC_CHOICE


class SettingsError(ValueError):
    """An environment variable holds a value the service cannot use."""


def _int(env: Mapping[str, str], name: str, default: int, *, minimum: int = 0) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError as exc:
        raise SettingsError(f"{name} must be an integer, got {raw!r}") from exc
    if value < minimum:
        raise SettingsError(f"{name} must be >= {minimum}, got {value}")
    return value


def _stored_format(env: Mapping[str, str], name: str, formats: tuple[int, ...]) -> int:
    """A format to write stored values in: one of ``formats``, the last (newest) by default."""
    value = _int(env, name, formats[-1], minimum=formats[0])
    if value not in formats:
        choices = ", ".join(map(str, formats[:-1])) + f" or {formats[-1]}"
        raise SettingsError(f"{name} must be {choices}, got {value}")
    return value


def _duration(env: Mapping[str, str], name: str, default: float, *, zero_ok: bool) -> float:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError as exc:
        raise SettingsError(f"{name} must be a number of seconds, got {raw!r}") from exc
    if not math.isfinite(value) or value < 0 or (value == 0 and not zero_ok):
        bound = ">= 0" if zero_ok else "> 0"
        raise SettingsError(f"{name} must be a finite number of seconds {bound}, got {raw!r}")
    return value


def _model_dir(raw: str) -> str | None:
    """``SENDWISE_MODEL_DIR``: unset or empty, the bundled model; ``heuristic``, no model."""
    raw = raw.strip()
    if not raw:
        return str(BUNDLED_MODEL_DIR)
    return None if raw == HEURISTIC_CHOICE else raw


def _positive_seconds(env: Mapping[str, str], name: str, default: float) -> float:
    return _duration(env, name, default, zero_ok=False)


def _seconds(env: Mapping[str, str], name: str, default: float) -> float:
    """A duration that may be 0 (a feature turned off)."""
    return _duration(env, name, default, zero_ok=True)


def _flag(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise SettingsError(f"{name} must be a boolean (1/0, true/false, yes/no), got {raw!r}")


_TENANT = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")
_SHA256 = re.compile(r"^[0-9a-fA-F]{64}$")


def is_valid_tenant(value: str) -> bool:
    """The one rule for tenant names, wherever they come from (settings or a header)."""
    return bool(_TENANT.match(value))


def _tenant(name: str, value: str) -> str:
    if not is_valid_tenant(value):
        raise SettingsError(f"{name}: tenant {value!r} must be 1-64 of [A-Za-z0-9_.-]")
    return value


def _role(name: str, value: str) -> Role:
    for role in ROLES:
        if value == role:
            return role
    raise SettingsError(f"{name}: role {value!r} must be one of {', '.join(ROLES)}")


def _env_keys(raw: str) -> list[ApiKey]:
    """``SENDWISE_API_KEYS``, comma-separated entries of three forms:

    ``key:tenant`` (the original form: role ``admin``, so deployments that predate roles
    keep every permission they had), ``key:tenant:role``, and
    ``sha256:<hex digest of the key>:tenant[:role]`` so the plaintext need not sit in the
    environment at all."""
    name = "SENDWISE_API_KEYS"
    keys: list[ApiKey] = []
    for item in filter(None, (part.strip() for part in raw.split(","))):
        parts = item.split(":")
        if parts[0] == "sha256":
            if len(parts) not in (3, 4) or not _SHA256.match(parts[1]):
                raise SettingsError(f"{name} entries of the hashed form must look like "
                                    "sha256:<64 hex digits>:tenant[:role]")
            digest, rest = parts[1].lower(), parts[2:]
        else:
            if len(parts) not in (2, 3) or not parts[0]:
                raise SettingsError(f"{name} entries must look like key:tenant[:role] or "
                                    "sha256:<hex>:tenant[:role]")
            digest, rest = hash_key(parts[0]), parts[1:]
        role = _role(name, rest[1]) if len(rest) > 1 else "admin"
        keys.append(ApiKey(sha256=digest, tenant=_tenant(name, rest[0]), role=role))
    return keys


_key_line = msgspec.json.Decoder(ApiKey)


def _file_keys(path: str) -> list[ApiKey]:
    """``SENDWISE_API_KEYS_FILE``: JSON lines ``{"sha256", "tenant", "role", "name"}`` (what
    ``sendwise keys new`` prints); blank lines and ``#`` comments are skipped."""
    name = "SENDWISE_API_KEYS_FILE"
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise SettingsError(f"{name}: cannot read {path!r}: {exc.strerror}") from exc
    keys: list[ApiKey] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        try:
            key = _key_line.decode(line)
        except msgspec.DecodeError as exc:
            raise SettingsError(f"{name}: line {number}: {exc}") from exc
        if not _SHA256.match(key.sha256):
            raise SettingsError(f"{name}: line {number}: sha256 must be 64 hex digits")
        keys.append(msgspec.structs.replace(key, sha256=key.sha256.lower(),
                                            tenant=_tenant(name, key.tenant)))
    return keys


def _api_keys(env: Mapping[str, str]) -> dict[str, ApiKey]:
    """Both sources together, by digest. A digest listed twice must say the same thing."""
    keys: dict[str, ApiKey] = {}
    file = env.get("SENDWISE_API_KEYS_FILE")
    for key in [*_env_keys(env.get("SENDWISE_API_KEYS", "")), *(_file_keys(file) if file else [])]:
        known = keys.setdefault(key.sha256, key)
        if (known.tenant, known.role) != (key.tenant, key.role):
            raise SettingsError(f"SENDWISE_API_KEYS: key {key.sha256[:12]}... is listed twice with "
                                "different tenants or roles")
    return keys


def _id_key(env: Mapping[str, str], api_keys: Mapping[str, ApiKey]) -> Secret | None:
    raw = env.get("SENDWISE_ID_KEY")
    if not raw:
        if api_keys:
            raise SettingsError("SENDWISE_ID_KEY must be set when API keys are configured: every "
                                "host sharing the Redis needs the same decision-id secret "
                                "(make one with `sendwise keys id-key`)")
        return None
    try:
        return decode_secret(raw)
    except ValueError as exc:
        raise SettingsError(f"SENDWISE_ID_KEY {exc}") from exc


def _previous_id_keys(raw: str) -> tuple[Secret, ...]:
    """``SENDWISE_ID_KEY_PREVIOUS``: comma-separated retired secrets that still open ids."""
    try:
        return tuple(decode_secret(part) for part in raw.split(",") if part.strip())
    except ValueError as exc:
        raise SettingsError(f"SENDWISE_ID_KEY_PREVIOUS: every entry {exc}") from exc


class Settings(msgspec.Struct, frozen=True, kw_only=True):
    """Everything the service reads from its environment.

    ``redis_url`` None means "start the embedded redis-server" (only the CLI does that;
    ``create_app`` always receives a concrete URL or client).
    """

    redis_url: str | None = None
    #: treat REDIS_URL as a Redis Cluster seed node (keys are hash-tagged per user)
    redis_cluster: bool = False
    #: coalesce concurrent script calls into shared writes (one Redis only; api/redis_client.py)
    redis_auto_pipeline: bool = True
    default_tenant: str = "default"
    #: SHA-256 hex digest of an API key -> that key's tenant and role. Empty exactly when no
    #: keys are configured: no authentication, tenant from the X-Sendwise-Tenant header.
    api_keys: dict[str, ApiKey] = msgspec.field(default_factory=dict)
    #: the secret sealing decision ids; None: the embedded default's file in ``data_dir``
    id_key: Secret | None = None
    #: retired id secrets: they still open ids issued before a rotation, never seal new ones
    id_keys_previous: tuple[Secret, ...] = ()
    #: per API key and per worker process (N workers: up to N x this); 0 turns it off
    rate_limit_per_second: int = 1000
    rate_limit_burst: int = 2000
    #: the startup default model (api/engine.py); None: the heuristic. ``from_env`` makes
    #: it the bundled model (models/bundled_model.py) unless ``SENDWISE_MODEL_DIR`` names
    #: another artifact or ``heuristic``; a bare ``Settings()`` (tests) keeps the heuristic
    model_dir: str | None = None
    #: how often a worker re-reads the model pointers (api/model_pointer.py)
    model_refresh_seconds: float = 1.0
    #: pointed models one worker holds at most (least recently used evicted)
    model_cache_size: int = 4
    data_dir: str = ".sendwise"
    #: Fallback when Redis is unreachable: promotional messages are deferred by this much.
    fallback_defer_seconds: int = 3600
    #: Per-command Redis timeout; past it the decision degrades instead of hanging.
    redis_timeout_seconds: float = 0.25
    #: connections per worker process; requests queue for one when all are busy
    redis_max_connections: int = 64
    #: how long a decision is replayed for a retried message_id (the ledger still dedups
    #: a message for as long as its reservation is inside the longest cap window)
    idempotency_ttl_seconds: int = 72 * 3600
    #: the format new idempotency records are written in (api/plan.py): 5, format 4 with
    #: the outcome's instants relative to the decision's and the rules this release names
    #: itself as numbers (api/record_codes.py); 4 (format 3 with its repeated names as
    #: numbers) while workers of a release that reads formats up to 4 still serve; 3 (no
    #: decision, message or user id) while workers that read up to 3 do; 2 while workers
    #: that read only formats 1 and 2 do (a rolling upgrade: docs/architecture.md)
    record_format: int = RECORD_FORMAT
    #: the format preference documents are written in (api/userstate.py): 2, deflated
    #: against a frozen dictionary (api/prefs_deflate.py); 1, plain JSON, while workers of
    #: a release that reads only JSON still serve (a rolling upgrade: docs/architecture.md)
    preferences_format: int = 2
    max_body_bytes: int = 64 * 1024
    max_events_per_batch: int = 1000
    log_level: str = "info"
    log_decisions: bool = True
    #: serve ``POST /v1/_trivial`` (the benchmarks' yardstick); off in production
    benchmark_endpoints: bool = False
    #: append decisions and events to the tenant's Redis Streams (api/decision_log.py)
    decision_log: bool = True
    decision_log_max_len: int = 1_000_000
    decision_log_retention_days: int = 30
    #: how long a worker plans from a recipient's cached read state (api/statecache.py):
    #: the commit re-checks everything the plan used from it; 0 turns the cache off
    state_cache_seconds: float = 5.0
    #: recipients one worker's state cache holds at most (least recently used evicted)
    state_cache_size: int = 20_000
    #: decisions one worker runs at once (more wait their turn, first come first served:
    #: api/admission.py); 0: no limit
    decision_concurrency: int = 0

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        api_keys = _api_keys(env)
        return cls(
            redis_url=env.get("REDIS_URL") or None,
            redis_cluster=_flag(env, "SENDWISE_REDIS_CLUSTER", False),
            redis_auto_pipeline=_flag(env, "SENDWISE_REDIS_AUTO_PIPELINE", True),
            default_tenant=_tenant("SENDWISE_DEFAULT_TENANT",
                                   env.get("SENDWISE_DEFAULT_TENANT", "default")),
            api_keys=api_keys,
            id_key=_id_key(env, api_keys),
            id_keys_previous=_previous_id_keys(env.get("SENDWISE_ID_KEY_PREVIOUS", "")),
            rate_limit_per_second=_int(env, "SENDWISE_RATE_LIMIT_PER_SECOND", 1000),
            rate_limit_burst=_int(env, "SENDWISE_RATE_LIMIT_BURST", 2000, minimum=1),
            model_dir=_model_dir(env.get("SENDWISE_MODEL_DIR", "")),
            model_refresh_seconds=_positive_seconds(env, "SENDWISE_MODEL_REFRESH_SECONDS", 1.0),
            model_cache_size=_int(env, "SENDWISE_MODEL_CACHE_SIZE", 4, minimum=1),
            data_dir=env.get("SENDWISE_DATA_DIR", ".sendwise"),
            fallback_defer_seconds=_int(env, "SENDWISE_FALLBACK_DEFER_SECONDS", 3600),
            redis_timeout_seconds=_positive_seconds(env, "SENDWISE_REDIS_TIMEOUT_SECONDS", 0.25),
            redis_max_connections=_int(env, "SENDWISE_REDIS_MAX_CONNECTIONS", 64, minimum=1),
            idempotency_ttl_seconds=_int(env, "SENDWISE_IDEMPOTENCY_TTL_SECONDS", 72 * 3600,
                                         minimum=60),
            record_format=_stored_format(env, "SENDWISE_RECORD_FORMAT", (2, 3, 4, 5, 6)),
            preferences_format=_stored_format(env, "SENDWISE_PREFERENCES_FORMAT", (1, 2)),
            max_body_bytes=_int(env, "SENDWISE_MAX_BODY_BYTES", 64 * 1024, minimum=1024),
            max_events_per_batch=_int(env, "SENDWISE_MAX_EVENTS_PER_BATCH", 1000, minimum=1),
            log_level=env.get("SENDWISE_LOG_LEVEL", "info"),
            log_decisions=_flag(env, "SENDWISE_LOG_DECISIONS", True),
            benchmark_endpoints=_flag(env, "SENDWISE_BENCHMARK_ENDPOINTS", False),
            decision_log=_flag(env, "SENDWISE_DECISION_LOG", True),
            decision_log_max_len=_int(env, "SENDWISE_DECISION_LOG_MAX_LEN", 1_000_000,
                                      minimum=1000),
            decision_log_retention_days=_int(env, "SENDWISE_DECISION_LOG_RETENTION_DAYS", 30,
                                             minimum=1),
            state_cache_seconds=_seconds(env, "SENDWISE_STATE_CACHE_SECONDS", 5.0),
            state_cache_size=_int(env, "SENDWISE_STATE_CACHE_SIZE", 20_000),
            decision_concurrency=_int(env, "SENDWISE_DECISION_CONCURRENCY", 0),
        )
