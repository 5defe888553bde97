"""The Redis key schema: the only place that builds key names.

Every key of one user shares the hash tag ``{<tenant>:<user>}`` so each Lua script touches
one cluster slot and the same code runs on a single Redis or a Redis Cluster. Ids are
escaped so a ``{``, ``}``, ``:`` or ``%`` inside a tenant or user id can never move the tag
or make two (tenant, user) pairs share one.

    sw:{t:u}:ledger        ZSET  member = MessagePack [message_id, channel, category, campaign,
                                  tags, offer_id, offer_group]; score = send instant (ms)
    sw:{t:u}:prefs         HASH  doc (preferences JSON), rev (int), optout:<channel> (ms),
                                  moved_into (the user id this one was merged into),
                                  merged_from:<user id> (ms: when that id was merged in)
    sw:{t:u}:conv          HASH  campaign_id -> converted-at (ms)
    sw:{t:u}:m:<message>   STR   idempotency record: context JSON + "\n" + outcome JSON
    sw:{t:u}:profile       HASH  p (models.profile.Profile bytes), rev (int, bumped by every
                                  write), seen / eng (recent event and engaged-message
                                  fingerprints, 8 bytes each: api/profiles.py)
    sw:policy:{t}          STR   the tenant's policy document (JSON, with its version)
    sw:log:{t:b}           STREAM the decision and event log of bucket b (0..LOG_BUCKETS-1)
                                  of the tenant's users (api/decision_log.py)
    sw:model:{t}           HASH  the tenant's model pointer: doc (JSON), id (unique per write),
                                  rev (int, bumped by every write); every worker follows it
                                  (api/model_pointer.py)
    sw:model:{*}           HASH  the same for the global default model (``*`` is no tenant
                                  name: tenants are [A-Za-z0-9_.-])
"""

from __future__ import annotations

from typing import NamedTuple

PREFIX = "sw"


def _escape(part: str) -> str:
    """Percent-escape the characters that delimit the tag and its two parts, so distinct
    (tenant, user) pairs can never produce the same tag."""
    return (part.replace("%", "%25").replace("{", "%7B").replace("}", "%7D")
            .replace(":", "%3A"))


class UserKeys(NamedTuple):
    ledger: str
    prefs: str
    conv: str
    record_prefix: str
    #: SCAN MATCH pattern of every key of this user, whatever its kind (erasure, export)
    pattern: str
    #: the send-time profile the model's features are computed from (api/profiles.py)
    profile: str

    def record(self, message_id: str) -> str:
        return self.record_prefix + message_id

    def message_id_of(self, record_key: str) -> str | None:
        """Inverse of ``record``: the message id, or None for a key that is no record."""
        if not record_key.startswith(self.record_prefix):
            return None
        return record_key[len(self.record_prefix):]


def user_keys(tenant: str, user_id: str) -> UserKeys:
    base = f"{PREFIX}:{{{_escape(tenant)}:{_escape(user_id)}}}:"
    return UserKeys(base + "ledger", base + "prefs", base + "conv", base + "m:",
                    _glob_escape(base) + "*", base + "profile")


def _glob_escape(text: str) -> str:
    """Redis glob patterns treat ``*?[]\\`` as special: ids may contain them."""
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)


#: a tenant's log is sharded by user so one busy tenant spreads over LOG_BUCKETS cluster
#: slots instead of one
LOG_BUCKETS = 16


def log_bucket(user_id: str) -> int:
    import zlib

    return zlib.crc32(user_id.encode()) % LOG_BUCKETS


def log_key(tenant: str, bucket: int) -> str:
    return f"{PREFIX}:log:{{{_escape(tenant)}:{bucket}}}"


def policy_key(tenant: str) -> str:
    return f"{PREFIX}:policy:{{{_escape(tenant)}}}"


#: the scope name of the global default model's pointer (no tenant can be named ``*``)
GLOBAL_MODEL_SCOPE = "*"


def model_pointer_key(tenant: str | None) -> str:
    """The pointer to the model a tenant's decisions score with; None: the global default."""
    return f"{PREFIX}:model:{{{GLOBAL_MODEL_SCOPE if tenant is None else _escape(tenant)}}}"
