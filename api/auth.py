"""API keys, roles and the guard that checks them before anything else runs.

Keys are stored hashed: the service only ever holds SHA-256 digests, so a leaked key file
or environment dump grants nothing. A plain SHA-256 (no salt, no slow KDF) is enough
because minted keys carry 256 random bits; there is nothing to brute-force.

Two roles. ``decide`` is what a sending platform needs on its hot path: decisions,
cancel, outcome events, reason codes. ``admin`` also changes what decisions mean or reads
recipients' data: policy, preferences, timelines, user lifecycle, models, metrics. Only
the health probes and the API docs are open; any other route that declares no role needs
``admin``, so a new endpoint is closed to anonymous callers and ``decide`` keys until
someone decides otherwise.

The check is a litestar guard: guards run after routing and before the handler's
parameters are resolved, so an anonymous request is answered 401 without its body ever
being read or parsed (and a rate-limited key gets its 429 just as cheaply).
"""

from __future__ import annotations

import hashlib
import hmac
import math
import secrets
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Final, Literal

import msgspec
from litestar.connection import ASGIConnection
from litestar.handlers.base import BaseRouteHandler

from api.errors import ForbiddenError, PayloadTooLargeError, RateLimitedError, UnauthorizedError
from api.ratelimit import RateLimiter

Role = Literal["decide", "admin"]
ROLES: Final[tuple[Role, ...]] = ("decide", "admin")
#: what each role may do; admin includes everything decide may
_GRANTS: Final[dict[Role, frozenset[Role]]] = {"decide": frozenset({"decide"}),
                                               "admin": frozenset({"decide", "admin"})}
#: route handler ``opt`` naming the role an endpoint needs (``opt=DECIDE``)
DECIDE: Final[dict[str, Any]] = {"role": "decide"}
ADMIN: Final[dict[str, Any]] = {"role": "admin"}
#: where the guard leaves the authenticated key for the handler (request scope state)
_STATE_KEY = "sendwise_api_key"
KEY_PREFIX = "sw_"


class ApiKey(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One line of the key file; also what an env entry turns into."""

    sha256: str
    tenant: str
    role: Role
    #: a label for humans and logs (never the key itself)
    name: str = ""


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def mint_key() -> str:
    """256 random bits, URL-safe, with a prefix secret scanners can recognize."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


def find_key(keys: Mapping[str, ApiKey], authorization: str) -> ApiKey:
    """The key an ``Authorization: Bearer <key>`` header presents, or 401.

    Looked up by the digest of what was presented, in O(1) however many keys there are.
    Timing cannot leak a key: the lookup compares SHA-256 digests, and a client who varies
    the key it sends cannot steer the bytes of the digest toward a stored one. The final
    check uses ``hmac.compare_digest`` all the same."""
    scheme, _, presented = authorization.partition(" ")
    presented = presented.strip()
    if scheme.lower() != "bearer" or not presented:
        raise UnauthorizedError("missing bearer API key", field="Authorization")
    digest = hash_key(presented)
    found = keys.get(digest)
    if found is None or not hmac.compare_digest(found.sha256.encode(), digest.encode()):
        raise UnauthorizedError("unknown API key", field="Authorization")
    return found


#: probes a load balancer calls without credentials
HEALTH_PREFIX = "/health/"


def _under(path: str, prefix: str) -> bool:
    return path == prefix.rstrip("/") or path.startswith(prefix.rstrip("/") + "/")


def required_role(handler: BaseRouteHandler, path: str, docs_path: str | None) -> Role | None:
    """The handler's declared role; None (open) for the health probes and the API docs
    (``docs_path``, the app's OpenAPI path); ``admin`` for anything else."""
    declared = handler.opt.get("role")
    if declared is not None:
        if declared not in ROLES:
            raise ValueError(f"route handler declares unknown role {declared!r}")
        role: Role = declared
        return role
    if _under(path, HEALTH_PREFIX) or (docs_path is not None and _under(path, docs_path)):
        return None
    return "admin"


def _check_declared_length(connection: ASGIConnection[Any, Any, Any, Any], max_body: int) -> None:
    """A body announced larger than the limit is refused on every endpoint, including
    those that never read a body (cancel); litestar enforces the limit on the bytes
    actually received (chunked bodies too) wherever a body is read."""
    declared = connection.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_body:
        raise PayloadTooLargeError(f"request body is larger than {max_body} bytes")


def make_guard(keys: Mapping[str, ApiKey], limiter: RateLimiter | None,
               max_body: int) -> Callable[[ASGIConnection[Any, Any, Any, Any],
                                           BaseRouteHandler], Awaitable[None]]:
    """The app-wide guard. With no keys configured it only checks the announced body size:
    the tenant then comes from a header, which is only acceptable behind the operator's
    own gateway.

    A coroutine although it never awaits: litestar runs a plain function guard in a
    thread pool, which cost every request a thread hand-off (~4% of a decision's CPU
    under load, more on the trivial endpoint); everything here is in-memory work."""

    async def guard(connection: ASGIConnection[Any, Any, Any, Any],
                    handler: BaseRouteHandler) -> None:
        role: Role | None = None
        if keys:
            docs = connection.app.openapi_config.path if connection.app.openapi_config else None
            role = required_role(handler, connection.scope["path"], docs)
        if role is None:
            _check_declared_length(connection, max_body)
            return
        key = find_key(keys, connection.headers.get("authorization", ""))
        if limiter is not None:
            wait = limiter.take(key.sha256)
            if wait > 0:
                raise RateLimitedError(f"rate limit of this API key exceeded; retry in {wait:.3f} s",
                                       retry_after=max(1, math.ceil(wait)))
        if role not in _GRANTS[key.role]:
            raise ForbiddenError(f"this API key has role {key.role!r}; this endpoint needs {role!r}",
                                 field="Authorization")
        _check_declared_length(connection, max_body)
        connection.state[_STATE_KEY] = key

    return guard


def authenticated_key(connection: ASGIConnection[Any, Any, Any, Any]) -> ApiKey:
    """The key the guard accepted for this request; 401 if the guard did not run (an open
    endpoint asking for a tenant)."""
    key = connection.state.get(_STATE_KEY)
    if not isinstance(key, ApiKey):
        raise UnauthorizedError("missing bearer API key", field="Authorization")
    return key
