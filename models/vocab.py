"""Closed vocabularies the model understands: channels and category buckets.

Both are part of the feature hash (``models.features``): a model trained with another
channel list or bucket count would read the columns wrongly, so serving refuses it.
"""

from __future__ import annotations

import zlib

CHANNELS: tuple[str, ...] = ("email", "push", "sms", "whatsapp", "in_app")
#: Channel index used for rows that are not about one channel (activity-log candidates).
ANY_CHANNEL = len(CHANNELS)
#: Categories are tenant-defined strings; a stable hash keeps the model's input closed
#: (no vocabulary file to ship) at the price of rare collisions between categories.
CATEGORY_BUCKETS = 32

_CHANNEL_INDEX = {name: index for index, name in enumerate(CHANNELS)}


class UnknownChannelError(ValueError):
    """A channel name outside ``CHANNELS``."""


def channel_index(name: str) -> int:
    """Index of ``name`` in ``CHANNELS`` (``"any"`` or ``""`` -> ``ANY_CHANNEL``)."""
    if name in ("", "any"):
        return ANY_CHANNEL
    try:
        return _CHANNEL_INDEX[name]
    except KeyError:
        raise UnknownChannelError(
            f"unknown channel {name!r}; known: {', '.join(CHANNELS)}"
        ) from None


def category_bucket(category: str | None) -> int:
    """Stable bucket of a category string (crc32, not ``hash()``, which is salted)."""
    if not category:
        return 0
    return zlib.crc32(category.strip().lower().encode("utf-8")) % CATEGORY_BUCKETS
