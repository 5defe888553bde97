"""Service settings, read once from the environment and passed around explicitly.

A frozen msgspec Struct (not module-level globals) so tests build their own settings
without touching ``os.environ`` and nothing is cached at import time.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping

import msgspec


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


def _positive_seconds(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError as exc:
        raise SettingsError(f"{name} must be a number of seconds, got {raw!r}") from exc
    if not math.isfinite(value) or value <= 0:
        raise SettingsError(f"{name} must be a positive, finite number of seconds, got {raw!r}")
    return value


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


def is_valid_tenant(value: str) -> bool:
    """The one rule for tenant names, wherever they come from (settings or a header)."""
    return bool(_TENANT.match(value))


def _tenant(name: str, value: str) -> str:
    if not is_valid_tenant(value):
        raise SettingsError(f"{name}: tenant {value!r} must be 1-64 of [A-Za-z0-9_.-]")
    return value


def _api_keys(raw: str) -> dict[str, str]:
    """Parse ``key1:tenantA,key2:tenantB`` into {key: tenant}."""
    keys: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in raw.split(","))):
        key, sep, tenant = item.partition(":")
        if not sep or not key or not tenant:
            raise SettingsError("SENDWISE_API_KEYS entries must look like key:tenant")
        keys[key] = _tenant("SENDWISE_API_KEYS", tenant)
    return keys


class Settings(msgspec.Struct, frozen=True, kw_only=True):
    """Everything the service reads from its environment.

    ``redis_url`` None means "start the embedded redis-server" (only the CLI does that;
    ``create_app`` always receives a concrete URL or client).
    """

    redis_url: str | None = None
    #: treat REDIS_URL as a Redis Cluster seed node (keys are hash-tagged per user)
    redis_cluster: bool = False
    default_tenant: str = "default"
    #: API key -> tenant. Empty: no authentication, tenant from X-Sendwise-Tenant header.
    api_keys: dict[str, str] = msgspec.field(default_factory=dict)
    model_dir: str | None = None
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
    max_body_bytes: int = 64 * 1024
    max_events_per_batch: int = 1000
    log_level: str = "info"
    log_decisions: bool = True
    #: serve ``POST /v1/_trivial`` (the benchmarks' yardstick); off in production
    benchmark_endpoints: bool = False

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        return cls(
            redis_url=env.get("REDIS_URL") or None,
            redis_cluster=_flag(env, "SENDWISE_REDIS_CLUSTER", False),
            default_tenant=_tenant("SENDWISE_DEFAULT_TENANT",
                                   env.get("SENDWISE_DEFAULT_TENANT", "default")),
            api_keys=_api_keys(env.get("SENDWISE_API_KEYS", "")),
            model_dir=env.get("SENDWISE_MODEL_DIR") or None,
            data_dir=env.get("SENDWISE_DATA_DIR", ".sendwise"),
            fallback_defer_seconds=_int(env, "SENDWISE_FALLBACK_DEFER_SECONDS", 3600),
            redis_timeout_seconds=_positive_seconds(env, "SENDWISE_REDIS_TIMEOUT_SECONDS", 0.25),
            redis_max_connections=_int(env, "SENDWISE_REDIS_MAX_CONNECTIONS", 64, minimum=1),
            idempotency_ttl_seconds=_int(env, "SENDWISE_IDEMPOTENCY_TTL_SECONDS", 72 * 3600,
                                         minimum=60),
            max_body_bytes=_int(env, "SENDWISE_MAX_BODY_BYTES", 64 * 1024, minimum=1024),
            max_events_per_batch=_int(env, "SENDWISE_MAX_EVENTS_PER_BATCH", 1000, minimum=1),
            log_level=env.get("SENDWISE_LOG_LEVEL", "info"),
            log_decisions=_flag(env, "SENDWISE_LOG_DECISIONS", True),
            benchmark_endpoints=_flag(env, "SENDWISE_BENCHMARK_ENDPOINTS", False),
        )
