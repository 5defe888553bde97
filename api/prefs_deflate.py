"""Preference documents deflated against a frozen dictionary (preferences format 2).

Every recipient keeps a preference document in Redis, and most of its bytes are the
same in every document: the field names, ``{"consent":"opted_in"}`` per channel, and one
of a few hundred zone names. DEFLATE with a preset dictionary (zlib's ``zdict``) holding
all of that stores a typical document in ~20 bytes instead of ~150, so the prefs hash
drops from ~245 to ~125 B of Redis per recipient (docs/benchmarks.md, "Preference
documents deflated").

The stored value is one tag byte, ``FORMAT_TAG``, then a raw DEFLATE stream of the
document's JSON (what format 1 stores as is: it starts with ``{``, so the two never
collide). The dictionary, ``api/data/preferences.zdict`` (the IANA zone names of
``api/data/zone_codes.txt``, then the document's common JSON), is part of the stored
format: a document can only be inflated with the bytes it was deflated against, so the
file never changes (``tests/unit/test_prefs_deflate.py`` holds it to its digest); a
better dictionary would be a new tag.
"""

from __future__ import annotations

import zlib
from importlib import resources

#: the first byte of a deflated document (a JSON document starts with ``{``)
FORMAT_TAG = b"\x02"
#: the frozen preset dictionary (see the module's docstring)
DICTIONARY: bytes = resources.files("api").joinpath("data", "preferences.zdict").read_bytes()
#: a stored document inflating to more than this is refused: no document the API accepts
#: comes near it (request bodies are limited to far less), so only damage reaches it, and
#: inflating stays bounded whatever the stored bytes are
MAX_DOCUMENT_BYTES = 1 << 20
_WBITS = -15  # raw DEFLATE: the tag byte already says what follows; no zlib header or checksum


class CorruptDocumentError(ValueError):
    """A stored preferences document that does not inflate to a whole, bounded document."""


def deflate(document: bytes) -> bytes:
    """``document`` (JSON) as stored in format 2."""
    packer = zlib.compressobj(9, zlib.DEFLATED, _WBITS, 9, zlib.Z_DEFAULT_STRATEGY, DICTIONARY)
    return FORMAT_TAG + packer.compress(document) + packer.flush()


def inflate(stored: bytes) -> bytes:
    """The JSON of a format-2 document (``stored`` starts with ``FORMAT_TAG``)."""
    unpacker = zlib.decompressobj(_WBITS, DICTIONARY)
    try:
        document = unpacker.decompress(memoryview(stored)[1:], MAX_DOCUMENT_BYTES)
    except zlib.error as exc:
        raise CorruptDocumentError(f"stored preferences do not inflate: {exc}") from None
    if not unpacker.eof or unpacker.unconsumed_tail or unpacker.unused_data:
        raise CorruptDocumentError("stored preferences are truncated, too large, or have "
                                   "bytes after their end")
    return document
