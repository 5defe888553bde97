"""api/keys.py (hash tags), api/errors.py (msgspec messages -> field paths), api/settings.py."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from api.auth import hash_key
from api.errors import (
    ApiError,
    ConflictError,
    field_from_msgspec,
)
from api.keys import policy_key, user_keys
from api.policy import Policy
from api.schemas import DecisionRequest, Preferences
from api.settings import Settings, SettingsError
from models.bundled_model import BUNDLED_MODEL_DIR

# ----------------------------------------------------------------------------- keys


def hash_tag(key: str) -> str:
    """Redis Cluster's rule: the text between the first '{' and the next '}', if non-empty."""
    start = key.find("{")
    if start < 0:
        return key
    end = key.find("}", start + 1)
    if end < 0 or end == start + 1:
        return key
    return key[start + 1:end]


nasty = st.text(alphabet=st.characters(codec="utf-8"), min_size=1, max_size=20) | st.sampled_from(
    ["{", "}", "{}", "}{", "%", "%7B", "%7D", "%25", "a{b}c", "{x}", "%{", ":", "u:1"])
#: what app.tenant_of accepts from the X-Sendwise-Tenant header
tenants = st.text(alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-",
                  min_size=1, max_size=64)


@given(tenant=tenants | nasty, user=nasty, message=nasty)
def test_every_key_of_a_user_shares_one_hash_tag(tenant: str, user: str, message: str) -> None:
    keys = user_keys(tenant, user)
    fixed = [keys.ledger, keys.prefs, keys.conv]
    for key in fixed:
        assert key.count("{") == 1 and key.count("}") == 1
        assert key.index("{") < key.index("}")
    tags = {hash_tag(k) for k in [*fixed, keys.record(message)]}
    assert len(tags) == 1
    (tag,) = tags
    assert fixed[0] == f"sw:{{{tag}}}:ledger"
    assert keys.record(message) == f"sw:{{{tag}}}:m:{message}"
    assert len({keys.ledger, keys.prefs, keys.conv, keys.record(message)}) == 4


@given(tenant=tenants, a=nasty, b=nasty)
def test_distinct_users_never_share_a_tag(tenant: str, a: str, b: str) -> None:
    assert (hash_tag(user_keys(tenant, a).ledger) == hash_tag(user_keys(tenant, b).ledger)) \
        == (a == b)


@given(t1=tenants, t2=tenants, a=nasty, b=nasty)
def test_distinct_tenants_never_share_a_tag(t1: str, t2: str, a: str, b: str) -> None:
    same = hash_tag(user_keys(t1, a).ledger) == hash_tag(user_keys(t2, b).ledger)
    assert same == ((t1, a) == (t2, b))
    assert (policy_key(t1) == policy_key(t2)) == (t1 == t2)


def test_brace_in_user_id_cannot_move_the_tag() -> None:
    keys = user_keys("acme", "}evil{")
    assert keys.ledger == "sw:{acme:%7Devil%7B}:ledger"
    assert hash_tag(keys.ledger) == hash_tag(user_keys("acme", "}evil{").record("{m}"))
    assert user_keys("acme", "%7B").ledger != user_keys("acme", "{").ledger
    assert policy_key("a{b") == "sw:policy:{a%7Bb}"


def test_tenant_with_colon_cannot_collide_with_another_tenant() -> None:
    """Defense in depth: settings refuse such tenant names, and keys escape ':' anyway."""
    with pytest.raises(SettingsError, match="SENDWISE_API_KEYS"):
        Settings.from_env({"SENDWISE_API_KEYS": "k1:a:b,k2:a"})
    with pytest.raises(SettingsError, match="SENDWISE_DEFAULT_TENANT"):
        Settings.from_env({"SENDWISE_DEFAULT_TENANT": "a{b}"})
    assert user_keys("a:b", "c").ledger != user_keys("a", "b:c").ledger


# --------------------------------------------------------------------------- errors


def error_of(body: bytes, typ: Any = DecisionRequest) -> str:
    with pytest.raises(msgspec.ValidationError) as exc:
        msgspec.json.decode(body, type=typ)
    return str(exc.value)


BASE = b'"message_id":"m","user_id":"u","channels":["email"]'


@pytest.mark.parametrize(("body", "field", "text"), [
    (b'{' + BASE + b',"priority":"x"}', "priority", "Expected `int`, got `str`"),
    (b'{' + BASE + b',"priority":11}', "priority", "Expected `int` <= 10"),
    (b'{' + BASE + b',"offer":{"id":1,"group":"g"}}', "offer.id", "Expected `str`, got `int`"),
    (b'{' + BASE + b',"foo":1}', "foo", "Object contains unknown field `foo`"),
    (b'{' + BASE + b',"offer":{"id":"o","group":"g","x":1}}', "offer.x",
     "Object contains unknown field `x`"),
    (b'{"message_id":"m","channels":["email"]}', "user_id",
     "Object missing required field `user_id`"),
    (b'{' + BASE + b',"offer":{"id":"o"}}', "offer.group",
     "Object missing required field `group`"),
    (b'{"message_id":"m","user_id":"u","channels":["email","fax"]}', "channels[1]",
     "Invalid enum value 'fax'"),
    (b'{' + BASE + b',"tags":["a",""]}', "tags[1]", "Expected `str` of length >= 1"),
    (b'{"message_id":"m","user_id":"u","channels":[]}', "channels",
     "Expected `array` of length >= 1"),
    (b'[1]', None, "Expected `object`, got `array`"),
])
def test_field_from_msgspec(body: bytes, field: str | None, text: str) -> None:
    message = error_of(body)
    got_text, got_field = field_from_msgspec(message)
    assert got_field == field
    assert got_text == message.partition(" - at `")[0]
    assert got_text.startswith(text)


def test_field_paths_inside_lists_of_structs() -> None:
    body = b'{"caps":[{"id":"a","limit":1},{"id":"b","limit":0}]}'
    assert field_from_msgspec(error_of(body, Policy))[1] == "caps[1].limit"
    body = b'{"frequency_limits":[{"limit":1,"weekly":true}]}'
    assert field_from_msgspec(error_of(body, Preferences)) == (
        "Object contains unknown field `weekly`", "frequency_limits[0].weekly")
    body = b'{"quiet_hours":[{"start":"08:00"}]}'
    assert field_from_msgspec(error_of(body, Preferences))[1] == "quiet_hours[0].end"


def test_api_error_bodies() -> None:
    err = ConflictError("taken", field="message_id", code="idempotency_conflict")
    assert (err.status, err.body().code, err.body().field) == (409, "idempotency_conflict",
                                                               "message_id")
    assert ApiError("x").body().code == "invalid_request"
    assert ConflictError("x").code == "conflict"  # the class default is untouched


# ------------------------------------------------------------------------- settings


def test_settings_defaults() -> None:
    s = Settings.from_env({})
    # the one default the environment adds: the bundled model (a bare Settings() is for
    # tests and embedding code, which choose their model)
    assert s == Settings(model_dir=str(BUNDLED_MODEL_DIR))
    assert (s.redis_url, s.redis_cluster, s.default_tenant, s.api_keys) == (None, False,
                                                                            "default", {})
    assert (s.fallback_defer_seconds, s.redis_timeout_seconds, s.redis_max_connections) == (
        3600, 0.25, 64)
    assert (s.idempotency_ttl_seconds, s.max_body_bytes, s.max_events_per_batch) == (
        72 * 3600, 64 * 1024, 1000)
    assert (s.log_level, s.log_decisions, s.data_dir) == ("info", True, ".sendwise")
    assert (s.record_format, s.preferences_format) == (6, 2)


def test_settings_parse_every_variable() -> None:
    s = Settings.from_env({
        "REDIS_URL": "redis://h:1/0", "SENDWISE_REDIS_CLUSTER": "TRUE",
        "SENDWISE_DEFAULT_TENANT": "t", "SENDWISE_API_KEYS": " k1:acme , ,k2:beta:decide,",
        "SENDWISE_ID_KEY": "a2V5IGtleSBrZXkga2V5IGtleSBrZXkga2V5IGtleSE=",
        "SENDWISE_RATE_LIMIT_PER_SECOND": "5", "SENDWISE_RATE_LIMIT_BURST": "7",
        "SENDWISE_MODEL_DIR": "/m", "SENDWISE_DATA_DIR": "/d",
        "SENDWISE_FALLBACK_DEFER_SECONDS": "60", "SENDWISE_REDIS_TIMEOUT_SECONDS": "1.5",
        "SENDWISE_REDIS_MAX_CONNECTIONS": "8", "SENDWISE_IDEMPOTENCY_TTL_SECONDS": "60",
        "SENDWISE_MAX_BODY_BYTES": "2048", "SENDWISE_MAX_EVENTS_PER_BATCH": "5",
        "SENDWISE_LOG_LEVEL": "debug", "SENDWISE_LOG_DECISIONS": "0",
        "SENDWISE_PREFERENCES_FORMAT": "1"})
    assert (s.redis_url, s.redis_cluster, s.default_tenant) == ("redis://h:1/0", True, "t")
    assert {k.sha256: (k.tenant, k.role) for k in s.api_keys.values()} == {
        hash_key("k1"): ("acme", "admin"), hash_key("k2"): ("beta", "decide")}
    assert s.id_key is not None and s.id_key.value == b"key key key key key key key key!"
    assert (s.rate_limit_per_second, s.rate_limit_burst) == (5, 7)
    assert (s.model_dir, s.data_dir, s.fallback_defer_seconds) == ("/m", "/d", 60)
    assert (s.redis_timeout_seconds, s.redis_max_connections) == (1.5, 8)
    assert (s.idempotency_ttl_seconds, s.max_body_bytes, s.max_events_per_batch) == (60, 2048, 5)
    assert (s.log_level, s.log_decisions, s.preferences_format) == ("debug", False, 1)


@pytest.mark.parametrize(("env", "value"), [
    ({"REDIS_URL": ""}, None), ({"SENDWISE_MODEL_DIR": ""}, str(BUNDLED_MODEL_DIR)),
    ({"SENDWISE_FALLBACK_DEFER_SECONDS": ""}, 3600),
])
def test_settings_empty_values_mean_default(env: dict[str, str], value: object) -> None:
    s = Settings.from_env(env)
    name = next(iter(env))
    attr = {"REDIS_URL": "redis_url", "SENDWISE_MODEL_DIR": "model_dir",
            "SENDWISE_FALLBACK_DEFER_SECONDS": "fallback_defer_seconds"}[name]
    assert getattr(s, attr) == value


@pytest.mark.parametrize("value", ["0", "false", "no"])
def test_settings_log_decisions_off(value: str) -> None:
    assert Settings.from_env({"SENDWISE_LOG_DECISIONS": value}).log_decisions is False


@pytest.mark.parametrize("raw", ["nocolon", "k:", ":tenant", "k1:a,bad"])
def test_settings_api_keys_format(raw: str) -> None:
    with pytest.raises(SettingsError, match="SENDWISE_API_KEYS"):
        Settings.from_env({"SENDWISE_API_KEYS": raw})


@pytest.mark.parametrize(("name", "raw", "why"), [
    ("SENDWISE_FALLBACK_DEFER_SECONDS", "1h", "must be an integer"),
    ("SENDWISE_REDIS_MAX_CONNECTIONS", "many", "must be an integer"),
    ("SENDWISE_REDIS_MAX_CONNECTIONS", "0", "must be >= 1"),
    ("SENDWISE_IDEMPOTENCY_TTL_SECONDS", "3.5", "must be an integer"),
    ("SENDWISE_IDEMPOTENCY_TTL_SECONDS", "59", "must be >= 60"),
    ("SENDWISE_MAX_BODY_BYTES", "100", "must be >= 1024"),
    ("SENDWISE_MAX_EVENTS_PER_BATCH", "0", "must be >= 1"),
    ("SENDWISE_FALLBACK_DEFER_SECONDS", "-1", "must be >= 0"),
    ("SENDWISE_REDIS_TIMEOUT_SECONDS", "fast", "must be a number"),
    ("SENDWISE_RECORD_FORMAT", "7", "must be 2, 3, 4, 5 or 6"),
    ("SENDWISE_PREFERENCES_FORMAT", "3", "must be 1 or 2"),
    ("SENDWISE_PREFERENCES_FORMAT", "0", "must be >= 1"),
])
def test_settings_errors_name_the_variable(name: str, raw: str, why: str) -> None:
    with pytest.raises(SettingsError, match=why) as exc:
        Settings.from_env({name: raw})
    assert str(exc.value).startswith(name)
    assert repr(raw) in str(exc.value) or raw in str(exc.value)


@pytest.mark.parametrize("raw", ["-1", "0", "nan", "inf"])
def test_settings_refuse_unusable_timeouts(raw: str) -> None:
    with pytest.raises(SettingsError, match="SENDWISE_REDIS_TIMEOUT_SECONDS"):
        Settings.from_env({"SENDWISE_REDIS_TIMEOUT_SECONDS": raw})


@pytest.mark.parametrize("value", ["False", "NO"])
def test_settings_log_decisions_case_insensitive(value: str) -> None:
    assert Settings.from_env({"SENDWISE_LOG_DECISIONS": value}).log_decisions is False


def test_settings_state_cache() -> None:
    """On by default (a few seconds, tens of thousands of recipients); 0 turns it off."""
    s = Settings.from_env({})
    assert (s.state_cache_seconds, s.state_cache_size) == (5.0, 20_000)
    s = Settings.from_env({"SENDWISE_STATE_CACHE_SECONDS": "0.5",
                           "SENDWISE_STATE_CACHE_SIZE": "10"})
    assert (s.state_cache_seconds, s.state_cache_size) == (0.5, 10)
    assert Settings.from_env({"SENDWISE_STATE_CACHE_SECONDS": "0"}).state_cache_seconds == 0
    for bad in ("-1", "inf", "soon"):
        with pytest.raises(SettingsError, match="SENDWISE_STATE_CACHE_SECONDS"):
            Settings.from_env({"SENDWISE_STATE_CACHE_SECONDS": bad})


@pytest.mark.parametrize(("name", "attr", "default", "value", "bad"), [
    ("SENDWISE_DECISION_LOG_MAX_LEN", "decision_log_max_len", 1_000_000, 50_000, ["10", "lots"]),
    ("SENDWISE_DECISION_LOG_RETENTION_DAYS", "decision_log_retention_days", 30, 7, ["0", "-1"]),
])
def test_settings_decision_log_bounds(name: str, attr: str, default: int, value: int,
                                      bad: list[str]) -> None:
    """The log's length bound and retention are the operator's: memory per tenant follows."""
    assert getattr(Settings.from_env({}), attr) == default
    assert getattr(Settings.from_env({name: str(value)}), attr) == value
    for raw in bad:
        with pytest.raises(SettingsError, match=name):
            Settings.from_env({name: raw})
