"""A user's decision-relevant state as read from Redis in one round trip (read.lua)."""

from __future__ import annotations

import msgspec

from api.errors import ConflictError
from api.prefs_deflate import FORMAT_TAG, CorruptDocumentError, deflate, inflate
from api.schemas import Preferences

_PREF_FIELDS = frozenset(Preferences.__struct_fields__)
#: how many merge tombstones a lookup follows (each merge adds at most one hop)
MAX_MERGE_HOPS = 8


class UserState(msgspec.Struct, frozen=True, kw_only=True):
    preferences: Preferences
    revision: str
    #: channel -> opted-out-at (ms) from `unsubscribed`/`complained` events
    event_opt_outs: dict[str, int]
    #: the idempotency record of this message, if it was decided before
    record: bytes | None
    #: converted-at (ms) of the message's campaign, if a conversion was recorded
    converted_at: int | None
    #: set when this user id was merged into another: decisions follow it there
    moved_into: str | None = None
    #: the serialised send-time profile (``models.profile.Profile``), None without history
    profile: bytes | None = None
    #: the preferences hash as read (HGETALL: field, value, ...): the commit re-checks it
    #: (``CommitCheck``), so a decision never commits on preferences that changed since
    prefs_fields: tuple[bytes, ...] = ()


class CommitCheck(msgspec.Struct, frozen=True):
    """What commit.lua re-checks, atomically with the reservation, about the state a decision
    was planned with (besides the idempotency record and ``rev``, which it always checks):
    the whole preferences hash (document, event opt-outs, ``moved_into``, ``rev``), field by
    field, the campaign's conversion, and the send-time profile byte for byte (so a cached
    decision never scores with a profile that changed, or was erased, since its read: an
    erasure on another worker cannot leave this one scoring with the erased history). Any
    difference answers ``stale`` and the engine re-reads. This is what lets a decision plan
    from a cached state (api/statecache.py): exactness comes from this check, never from the
    cache. The whole hash, not ``rev`` alone, because ``rev`` restarts at 0 when the hash is
    deleted (erasure, eviction), so a revision number can come back with other contents;
    compared as a set of fields, not by a digest of HGETALL's reply, whose order is not
    stable (a hash table's incremental rehashing reorders an unchanged hash) and whose
    sorting in Lua would follow the server's locale."""

    #: the preferences hash the decision read, as HGETALL returned it
    prefs: tuple[bytes, ...]
    #: the message's campaign ('' when it has none: nothing to check)
    campaign: str
    #: the campaign's converted-at (ms) as read, '' when none was recorded
    converted: str
    #: the serialised send-time profile as read (the profile hash's ``p``), b'' when none
    profile: bytes = b""

    @classmethod
    def of(cls, state: UserState, campaign_id: str | None) -> CommitCheck:
        return cls(state.prefs_fields, campaign_id or "",
                   "" if state.converted_at is None else str(state.converted_at),
                   state.profile or b"")

    def args(self) -> list[bytes | str]:
        """commit.lua's last ARGV (after the annotations): the hash's fields and values,
        the campaign, its converted-at, the profile, and the number of fields."""
        return [*self.prefs, self.campaign, self.converted, self.profile,
                str(len(self.prefs) // 2)]


_json = msgspec.json.Encoder()


def _without_defaults(value: object) -> object:
    """A struct as JSON-ready builtins minus every field equal to its default (recursively:
    a channel's default consent, a limit's null window), dicts and lists walked through."""
    if isinstance(value, msgspec.Struct):
        out: dict[str, object] = {}
        for f in msgspec.structs.fields(value):
            v = getattr(value, f.name)
            default = (f.default_factory() if f.default_factory is not msgspec.NODEFAULT
                       else f.default)
            if default is not msgspec.NODEFAULT and v == default:
                continue
            out[f.encode_name] = _without_defaults(v)
        return out
    if isinstance(value, dict):
        return {k: _without_defaults(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_without_defaults(v) for v in value]
    return value


def encode_preferences(prefs: Preferences, *, document_format: int) -> bytes:
    """The stored document (``doc`` of the prefs hash): the struct's JSON without the
    fields that hold their default (nulls, empty lists and maps, ``unknown`` consent), which
    ``decode_preferences`` (of this release and the previous ones: every field has a
    default) fills back in. A typical document is about half the bytes of the full one, kept
    for every user (docs/benchmarks.md, "Compact records"). Format 2 (the default) deflates
    that JSON against a frozen dictionary (api/prefs_deflate.py), ~20 B instead of ~150;
    format 1 stores it as is, which releases before format 2 read
    (``SENDWISE_PREFERENCES_FORMAT``, a rolling upgrade)."""
    document = _json.encode(_without_defaults(prefs))
    return deflate(document) if document_format == 2 else document


class UnreadablePreferencesError(ConflictError, ValueError):
    """A stored preference document this worker cannot read: damaged, or written in a
    format of a newer release (a rolling upgrade that skipped its setting). Nothing about
    the recipient's consent, quiet hours or limits is known then, so no decision is made
    on a guess: the answer is this 409, which names the recipient, and a ``PUT`` of the
    preferences replaces the document (docs/architecture.md, "Unreadable preference documents").
    A ``ValueError`` too, for the callers that fall back to the policy's zone."""

    code = "preferences_unreadable"


def decode_preferences(raw: bytes | None) -> Preferences:
    """Either format (the first byte tells them apart). Stored documents tolerate fields
    this worker does not know (rolling deploys); one it cannot read at all is an
    ``UnreadablePreferencesError``, never a default."""
    if not raw:
        return Preferences()
    try:
        data = msgspec.json.decode(inflate(raw) if raw[:1] == FORMAT_TAG else raw)
        if isinstance(data, dict):
            data = {k: v for k, v in data.items() if k in _PREF_FIELDS}
        return msgspec.convert(data, Preferences)
    except (CorruptDocumentError, msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise UnreadablePreferencesError(
            "the stored preferences of this recipient cannot be read (damaged, or written "
            f"by a newer release: {exc}); PUT them again to replace them",
            field="user_id") from exc


def parse_read_reply(reply: list[object]) -> UserState:
    flat, record, conv = reply[:3]
    profile = reply[3] if len(reply) > 3 else None
    if not isinstance(flat, list):  # pragma: no cover - protocol violation
        raise TypeError("read.lua must return the prefs hash as a list")
    fields: dict[bytes, bytes] = dict(zip(flat[::2], flat[1::2], strict=True))
    opt_outs = {
        key[len(b"optout:"):].decode(): int(value)
        for key, value in fields.items() if key.startswith(b"optout:")
    }
    return UserState(
        preferences=decode_preferences(fields.get(b"doc")),
        revision=fields.get(b"rev", b"0").decode(),
        event_opt_outs=opt_outs,
        record=record if isinstance(record, bytes) else None,
        converted_at=int(conv) if isinstance(conv, bytes | str) else None,
        moved_into=fields[b"moved_into"].decode() if b"moved_into" in fields else None,
        profile=profile if isinstance(profile, bytes) else None,
        prefs_fields=tuple(flat),
    )
