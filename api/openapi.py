"""What the OpenAPI document says beyond what litestar infers: error responses and bodies.

Two facts litestar cannot see by itself:

* every error is ``ErrorBody`` (``{code, message, field}``) with the statuses each operation
  can really return; handlers declare them with ``errors(...)``;
* request bodies are decoded strictly by ``api.body`` from the raw bytes (litestar's own
  conversion is lenient), so litestar sees no ``data`` parameter. ``document_bodies`` adds
  each body to the generated document, with msgspec's JSON Schema of the very type the
  strict decoder uses: the document and the decoder cannot disagree.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import msgspec
from litestar.openapi.datastructures import ResponseSpec
from litestar.openapi.spec import Example

from api.schemas import ErrorBody

#: every error status the API answers with, and when
ERROR_STATUSES: dict[int, str] = {
    400: "Invalid request: the body or a parameter breaks the contract (`field` names it)",
    401: "Missing or unknown API key",
    403: "The API key's role does not allow this operation",
    404: "No such resource",
    409: "Conflict: idempotency key reuse, a policy version mismatch, concurrent updates, or "
         "stored state no worker can read (`preferences_unreadable`, `record_unreadable`)",
    413: "The request body is larger than the configured limit",
    429: "Rate limited: retry after the number of seconds in the Retry-After header",
    503: "The state store (Redis) is unreachable; retry later",
}

#: what each error status looks like on the wire (real bodies of the service)
ERROR_EXAMPLES: dict[int, dict[str, Any]] = {
    400: {"code": "invalid_field", "message": "Invalid enum value 'fax'",
          "field": "channels[0]"},
    401: {"code": "unauthorized", "message": "missing bearer API key", "field": "Authorization"},
    403: {"code": "forbidden", "message": "this API key's role does not allow this operation",
          "field": "Authorization"},
    404: {"code": "not_found", "message": "no such decision (or it has expired)",
          "field": "decision_id"},
    409: {"code": "idempotency_conflict", "message": "message_id was already decided for a "
          "different message (idempotency key reuse)", "field": "message_id"},
    413: {"code": "payload_too_large", "message": "Request Entity Too Large", "field": None},
    429: {"code": "rate_limited", "message": "too many requests; retry later", "field": None},
    503: {"code": "store_unavailable",
          "message": "the state store (Redis) is unreachable; retry later", "field": None},
}

#: the statuses every authenticated operation can return
AUTHENTICATED = (401, 403, 429)

_REF = "#/components/schemas/{name}"


def errors(*statuses: int) -> dict[int, ResponseSpec]:
    """Response documentation for the given error statuses, all with the ``ErrorBody`` shape."""
    return {status: ResponseSpec(data_container=ErrorBody, description=ERROR_STATUSES[status],
                                 generate_examples=False,
                                 examples=[Example(id=ERROR_EXAMPLES[status]["code"],
                                                   summary=ERROR_STATUSES[status],
                                                   value=ERROR_EXAMPLES[status])])
            for status in sorted(set(statuses))}


def document_errors(schema: dict[str, Any]) -> None:
    """Make every documented 4xx/5xx of every operation the ``ErrorBody`` it really is, in
    place.

    Litestar adds a 400 to each operation that has parameters, with the body of *its*
    validation exception (``{status_code, detail, extra}``); this service never answers with
    that shape (``api/app.py`` maps every error to ``{code, message, field}``), and a client
    generated from the document would otherwise expect it. Responses that name a schema of
    their own (``/health/ready``'s 503 is a ``Health``) are left as they are."""
    ref = {"$ref": _REF.format(name=ErrorBody.__name__)}
    for operations in schema.get("paths", {}).values():
        for operation in operations.values():
            if not isinstance(operation, dict):
                continue
            for status, response in operation.get("responses", {}).items():
                if not str(status).isdigit() or int(status) < 400:
                    continue
                media = response.setdefault("content", {}).setdefault("application/json", {})
                if "$ref" not in media.get("schema", {}):  # litestar's inline default
                    media["schema"] = ref
                    media.pop("examples", None)
                    response["description"] = ERROR_STATUSES.get(int(status),
                                                                 response.get("description", ""))


#: named examples of the main request bodies (each is decoded by the strict decoder in
#: tests/api/test_generated_client.py, so an example can never drift from the contract)
REQUEST_EXAMPLES: dict[tuple[str, str], dict[str, dict[str, Any]]] = {
    ("/v1/decisions", "POST"): {
        "promotional": {"summary": "A promotion, email preferred, push allowed", "value": {
            "message_id": "promo-1", "user_id": "ada", "channels": ["email", "push"],
            "campaign_id": "spring"}},
        "deadline_and_offer": {"summary": "An SMS offer that is worthless after its deadline",
                               "value": {
            "message_id": "promo-4", "user_id": "ada", "channels": ["sms"],
            "campaign_id": "spring", "offer": {"id": "bogo-1", "group": "spring-sale"},
            "deadline": "2026-11-24T18:00:00Z", "phone": "+33612345678"}},
        "transactional": {"summary": "A receipt: exempt from caps and quiet hours", "value": {
            "message_id": "receipt-9", "user_id": "ada", "channels": ["email"],
            "category": "transactional"}},
    },
    ("/v1/users/{user_id}/preferences", "PUT"): {
        "berlin_two_a_day": {"summary": "Berlin, at most 2 messages per rolling 24 h, no SMS",
                             "value": {
            "timezone": "Europe/Berlin",
            "frequency_limits": [{"limit": 2, "window_minutes": 1440}],
            "channels": {"sms": {"consent": "opted_out"}, "whatsapp": {"consent": "opted_in"}},
            "quiet_hours": [{"start": "22:00", "end": "07:30"}]}},
    },
    ("/v1/events", "POST"): {
        "outcomes": {"summary": "Delivered, clicked, then converted", "value": {"events": [
            {"type": "delivered", "user_id": "ada", "at": "2026-11-23T15:40:00Z",
             "message_id": "promo-1", "channel": "email"},
            {"type": "clicked", "user_id": "ada", "at": "2026-11-23T15:52:00Z",
             "message_id": "promo-1", "channel": "email"},
            {"type": "converted", "user_id": "ada", "at": "2026-11-23T16:05:00Z",
             "campaign_id": "spring"}]}},
    },
    ("/v1/policy", "PUT"): {
        "caps_and_quiet_hours": {"summary": "Two caps and quiet hours (replaces the policy)",
                                 "value": {
            "caps": [{"id": "promo-daily", "limit": 2, "window_minutes": 1440,
                      "scope": {"categories": ["promotional"]}},
                     {"id": "sms-weekly", "limit": 3, "calendar": "week",
                      "scope": {"channels": ["sms"]}}],
            "quiet_hours": [{"id": "night", "start": "21:00", "end": "08:00"}]}},
    },
}


def document_bodies(schema: dict[str, Any], bodies: Mapping[tuple[str, str], type[Any]]) -> None:
    """Add a required JSON ``requestBody`` to each ``(path, method)`` in ``bodies``, and the
    body types' schemas (from msgspec) to the document's components, in place, with the
    ``REQUEST_EXAMPLES`` of that operation.

    ``schema`` is the dict litestar serves at ``/docs/openapi.json`` (it builds it once and
    caches it), so patching it once at startup is what every client sees.
    """
    types = list(dict.fromkeys(bodies.values()))
    (refs, components) = msgspec.json.schema_components(types, ref_template=_REF)
    schemas: dict[str, Any] = schema.setdefault("components", {}).setdefault("schemas", {})
    schemas.update(components)
    for (path, method), kind in bodies.items():
        operation = schema["paths"][path][method.lower()]
        media: dict[str, Any] = {"schema": refs[types.index(kind)]}
        if (path, method) in REQUEST_EXAMPLES:
            media["examples"] = REQUEST_EXAMPLES[(path, method)]
        operation["requestBody"] = {"required": True, "content": {"application/json": media}}
