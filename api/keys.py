"""The Redis key schema: the only place that builds key names.

Every key of one user shares the hash tag ``{<tenant>:<user>}`` so each Lua script touches
one cluster slot and the same code runs on a single Redis or a Redis Cluster. Ids are
escaped so a ``{``, ``}``, ``:`` or ``%`` inside a tenant or user id can never move the tag
or make two (tenant, user) pairs share one.

    sw:{t:u}:ledger        ZSET  member = MessagePack [message_id, channel, category, campaign,
                                  tags, offer_id, offer_group, priority] (api/plan.py:
                                  ledger_member); score = send instant (ms); packed while
                                  members are <= zset-max-ziplist-value (api/redis_server.py)
    sw:{t:u}:prefs         HASH  doc (preferences JSON without its default fields,
                                  api/userstate.py encode_preferences: format 2, 0x02 then
                                  that JSON deflated against a frozen dictionary,
                                  api/prefs_deflate.py; format 1, the JSON as is), rev
                                  (int), optout:<channel> (ms),
                                  moved_into (the user id this one was merged into),
                                  merged_from:<user id> (ms: when that id was merged in)
    sw:{t:u}:conv          HASH  campaign_id -> converted-at (ms)
    sw:{t:u}:recs          HASH  the idempotency records: message id -> "<expiry ms> <record>",
                                  record = context JSON + "\n" + outcome JSON (+ "\n" +
                                  cancelled-at ms), or in format 6 (the default) the
                                  MessagePack array [context, outcome(, cancelled-at
                                  ms)] (api/render.py: record_parts); "" -> "<earliest record expiry> <the
                                  hash's expiry>" (ms; commit.lua drops expired fields in
                                  batches from the first, the hash's PEXPIRE is the second).
                                  Context formats (api/plan.py, each read by every reader):
                                  4 [now, key tag, ...]: format 3 with the instant first and
                                  the zone and reasons' codes and channels as numbers
                                  (api/record_codes.py); 3 [key tag, policy version, zone, now, fingerprint,
                                  model, features source(, user, ...)] (positional,
                                  trailing defaults left out) holds no decision id, no
                                  message id (the field) and no user id unless the record
                                  is not this user's own (decided for an id merged into
                                  it, or moved here by a merge): the reader re-seals the
                                  id (api/ids.py, the secret the tag names); 2
                                  {"did":…,"m":…,"u":…,"p":…} and the original
                                  {"v":1,"did":…,"mid":…} store all three. The outcome is
                                  a JSON object, or with a format-3 or 4 context
                                  positional: [d, ch, t, s, r, x, p] without trailing
                                  defaults (format 4: d, channels and reason codes as
                                  numbers; format 5: "5" and format 4's array, its
                                  instants counted from the context's and this release's
                                  own rules by number, api/record_codes.py; format 6:
                                  format 5's context and outcome values as MessagePack;
                                  api/render.py); its x names a displaced
                                  decision by its id, or (formats 3, 4) as [message id,
                                  key tag(, user)]
    sw:{t:u}:m:<message>   STR   an idempotency record written by a release before the hash
                                  (same record, expiry = the key's PTTL): read as a fallback
                                  until the last of them expires, never written
    sw:{t:u}:rp:<message>  STR   a deferral's compact plan (MessagePack, commit.lua), kept
                                  until it is due while preemption may displace it
    sw:{t:u}:profile       HASH  p (models.profile.Profile bytes), rev (int, bumped by every
                                  write), seen / eng (recent event and engaged-message
                                  fingerprints, 8 bytes each: api/profiles.py)
    sw:policy:{t}          HASH  the tenant's live policy: doc (JSON), version, updated_at,
                                  shadow (the shadow policy's version while one is installed)
    sw:policy:{t}:shadow   HASH  the candidate (shadow) policy: doc, version (its own counter,
                                  kept when the shadow is removed), installed_at, sample_rate
    sw:policy:{t}:shadow:report   HASH  the shadow's counts (api/shadow.py)
    sw:policy:{t}:shadow:samples  LIST  recent changed decisions (JSON), bounded
    sw:log:{t:b}           STREAM the decision and event log of bucket b (0..LOG_BUCKETS-1)
                                  of the tenant's users (api/decision_log.py)
    sw:pace:{t:c:s}:n      HASH  channel c's send counters of shard s: "<bucket ms>:<index>"
                                  -> sends reserved in that aligned second/minute
    sw:pace:{t:c:s}:i      ZSET  the same fields scored by their bucket's end (trimming)
    sw:pace:{t:c:s}:u      ZSET  conversation starts: "<user pseudonym>:<ms>" scored by ms
    sw:pace:{t:c:s}:l      ZSET  user pseudonym -> latest conversation start (ms)
                                  (api/pacing.py, api/lua/pace.lua, docs/pacing.md)
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
    #: prefix of the per-message record keys of the previous releases (read-only fallback)
    record_prefix: str
    #: SCAN MATCH pattern of every key of this user, whatever its kind (erasure, export)
    pattern: str
    #: the send-time profile the model's features are computed from (api/profiles.py)
    profile: str
    #: prefix of the deferrals' re-decision plans (preemption, api/lua/commit.lua)
    replan_prefix: str
    #: the idempotency records (one HASH per user: Redis packs a small hash, without the
    #: per-key overhead of one string key per message)
    records: str

    def record(self, message_id: str) -> str:
        """A previous release's per-message record key (read as a fallback, never written)."""
        return self.record_prefix + message_id

    def message_id_of(self, record_key: str) -> str | None:
        """Inverse of ``record``: the message id, or None for a key that is no such record."""
        if not record_key.startswith(self.record_prefix):
            return None
        return record_key[len(self.record_prefix):]


def user_keys(tenant: str, user_id: str) -> UserKeys:
    base = f"{PREFIX}:{{{_escape(tenant)}:{_escape(user_id)}}}:"
    return UserKeys(base + "ledger", base + "prefs", base + "conv", base + "m:",
                    _glob_escape(base) + "*", base + "profile", base + "rp:", base + "recs")


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


def shadow_key(tenant: str) -> str:
    """The shadow policy: same hash tag as the live policy, so one script can promote it."""
    return policy_key(tenant) + ":shadow"


def shadow_report_key(tenant: str) -> str:
    return shadow_key(tenant) + ":report"


def shadow_samples_key(tenant: str) -> str:
    return shadow_key(tenant) + ":samples"


class PaceKeys(NamedTuple):
    """One pacing shard of one (tenant, channel): four keys on one slot (``{t:c:s}``), so
    pace.lua is atomic per shard and never crosses slots."""

    counts: str
    ends: str
    starts: str
    latest: str


def pace_keys(tenant: str, channel: str, shard: int) -> PaceKeys:
    base = f"{PREFIX}:pace:{{{_escape(tenant)}:{_escape(channel)}:{shard}}}:"
    return PaceKeys(base + "n", base + "i", base + "u", base + "l")


#: the scope name of the global default model's pointer (no tenant can be named ``*``)
GLOBAL_MODEL_SCOPE = "*"


def model_pointer_key(tenant: str | None) -> str:
    """The pointer to the model a tenant's decisions score with; None: the global default."""
    return f"{PREFIX}:model:{{{GLOBAL_MODEL_SCOPE if tenant is None else _escape(tenant)}}}"
