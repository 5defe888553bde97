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

from api.schemas import ErrorBody

#: every error status the API answers with, and when
ERROR_STATUSES: dict[int, str] = {
    400: "Invalid request: the body or a parameter breaks the contract (`field` names it)",
    401: "Missing or unknown API key",
    403: "The API key's role does not allow this operation",
    404: "No such resource",
    409: "Conflict: idempotency key reuse, a policy version mismatch, or concurrent updates",
    413: "The request body is larger than the configured limit",
    429: "Rate limited: retry after the number of seconds in the Retry-After header",
    503: "The state store (Redis) is unreachable; retry later",
}

#: the statuses every authenticated operation can return
AUTHENTICATED = (401, 403, 429)

_REF = "#/components/schemas/{name}"


def errors(*statuses: int) -> dict[int, ResponseSpec]:
    """Response documentation for the given error statuses, all with the ``ErrorBody`` shape."""
    return {status: ResponseSpec(data_container=ErrorBody, description=ERROR_STATUSES[status],
                                 generate_examples=False)
            for status in sorted(set(statuses))}


def document_bodies(schema: dict[str, Any], bodies: Mapping[tuple[str, str], type[Any]]) -> None:
    """Add a required JSON ``requestBody`` to each ``(path, method)`` in ``bodies``, and the
    body types' schemas (from msgspec) to the document's components, in place.

    ``schema`` is the dict litestar serves at ``/docs/openapi.json`` (it builds it once and
    caches it), so patching it once at startup is what every client sees.
    """
    types = list(dict.fromkeys(bodies.values()))
    (refs, components) = msgspec.json.schema_components(types, ref_template=_REF)
    schemas: dict[str, Any] = schema.setdefault("components", {}).setdefault("schemas", {})
    schemas.update(components)
    for (path, method), kind in bodies.items():
        operation = schema["paths"][path][method.lower()]
        operation["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": refs[types.index(kind)]}},
        }
