"""One entry of the decision and event log (``api/decision_log.py`` writes them,
``training/export.py`` reads them, erasure finds a user's): the layout's one source of
truth.

An entry is two stream fields: ``u``, the user id (erasure finds a user's entries
without decoding anything), and ``d`` (a decision) or ``e`` (an event), a JSON array of
the strings ``DECISION_FIELDS`` or ``EVENT_FIELDS`` name, in that order, trailing empty
ones left out. One field per name was 38 ``XADD`` arguments per decision, ~1.4 µs of Redis
CPU more than these 10 (docs/benchmarks.md, "Fewer script arguments"). ``decode_entry``
reads both layouts, so streams written by earlier releases export the same way.
"""

from __future__ import annotations

from collections.abc import Mapping

import msgspec

#: a decision entry's values (field ``d``), in order; ``reason`` is ``preempted`` for a
#: displaced reservation's new state
DECISION_FIELDS = ("message_id", "decision", "channel", "send_at", "decided_at", "timezone",
                   "category", "campaign", "score", "propensity", "model_version",
                   "features_source", "reasons", "holdout", "reason")
#: an event entry's values (field ``e``), in order
EVENT_FIELDS = ("type", "at", "message_id", "channel", "campaign", "event_kind", "timezone")
_LAYOUTS = {b"d": ("decision", DECISION_FIELDS), b"e": ("event", EVENT_FIELDS)}
#: by kind: the stream field, the names in order, the names as a set (checked per entry)
_BY_KIND = {kind: (field.decode(), names, frozenset(names))
            for field, (kind, names) in _LAYOUTS.items()}
_json = msgspec.json.Encoder()
_values = msgspec.json.Decoder(list[str])


def encode_entry(kind: str, user_id: str, fields: Mapping[str, str]) -> tuple[str | bytes, ...]:
    """An entry's stream fields, flat: ``fields`` by name (a name of the layout left out is
    "", a name it lacks is an error), in the order of ``kind``'s layout."""
    field, names, known = _BY_KIND[kind]
    if not known.issuperset(fields):
        raise ValueError(f"not in the {kind} entry layout: {sorted(fields.keys() - known)}")
    values = [fields.get(name, "") for name in names]
    while values and not values[-1]:
        values.pop()
    return ("u", user_id, field, _json.encode(values))


def decode_entry(fields: Mapping[bytes, bytes]) -> dict[str, str]:
    """A stream entry as ``{name: value}`` with ``kind`` and ``user_id``: every field of
    its layout ("" when left out); an entry of the one-field-per-name layout as stored."""
    for field, (kind, names) in _LAYOUTS.items():
        raw = fields.get(field)
        if raw is not None:
            values = _values.decode(raw)
            out = {"kind": kind, "user_id": fields[b"u"].decode()}
            for i, name in enumerate(names):
                out[name] = values[i] if i < len(values) else ""
            return out
    return {k.decode(): v.decode() for k, v in fields.items()}


def entry_user(fields: Mapping[bytes, bytes]) -> bytes | None:
    """The user id of a stream entry of either layout (erasure)."""
    return fields.get(b"u", fields.get(b"user_id"))
