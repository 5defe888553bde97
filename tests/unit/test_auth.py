"""api/auth.py, the key settings in api/settings.py, api/ratelimit.py and ``sendwise keys``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from litestar import get

from api.auth import ADMIN, DECIDE, ApiKey, find_key, hash_key, mint_key, required_role
from api.errors import UnauthorizedError
from api.ratelimit import RateLimiter
from api.settings import Settings, SettingsError
from sendwise.cli import main

ID_KEY = "a2V5IGtleSBrZXkga2V5IGtleSBrZXkga2V5IGtleSE="
DIGEST = hash_key("sw_secret")


def from_env(**env: str) -> Settings:
    return Settings.from_env({"SENDWISE_ID_KEY": ID_KEY, **env})


def roles(settings: Settings) -> dict[str, tuple[str, str]]:
    return {k.sha256: (k.tenant, k.role) for k in settings.api_keys.values()}


# ----------------------------------------------------------------- env and file


def test_env_forms_and_their_roles() -> None:
    s = from_env(SENDWISE_API_KEYS=f"old:acme, new:acme:decide, sha256:{DIGEST.upper()}:beta:decide,"
                                   f"sha256:{hash_key('x')}:beta")
    assert roles(s) == {hash_key("old"): ("acme", "admin"),  # the original form keeps admin
                        hash_key("new"): ("acme", "decide"), DIGEST: ("beta", "decide"),
                        hash_key("x"): ("beta", "admin")}
    assert set(s.api_keys) == {k.sha256 for k in s.api_keys.values()}  # keyed by digest


@pytest.mark.parametrize(("raw", "why"), [
    ("k:acme:root", "role 'root'"), ("k:acme:decide:x", "key:tenant"),
    ("sha256:abc:acme:decide", "64 hex digits"), (f"sha256:{DIGEST}", "64 hex digits"),
    (f"sha256:{DIGEST}:a{{b}}:decide", "tenant"),
    ("k:acme:decide,k:beta:decide", "listed twice"),
])
def test_env_errors(raw: str, why: str) -> None:
    with pytest.raises(SettingsError, match="SENDWISE_API_KEYS") as exc:
        from_env(SENDWISE_API_KEYS=raw)
    assert why in str(exc.value)


def test_key_file_json_lines(tmp_path: Path) -> None:
    file = tmp_path / "keys.jsonl"
    file.write_text(f"# platform keys\n\n"
                    f'{{"sha256": "{DIGEST}", "tenant": "acme", "role": "decide", "name": "ci"}}\n'
                    f'  {{"sha256": "{hash_key("y")}", "tenant": "acme", "role": "admin"}}\n')
    s = from_env(SENDWISE_API_KEYS_FILE=str(file), SENDWISE_API_KEYS="z:beta:decide")
    assert roles(s) == {DIGEST: ("acme", "decide"), hash_key("y"): ("acme", "admin"),
                        hash_key("z"): ("beta", "decide")}
    assert s.api_keys[DIGEST].name == "ci"
    # the same key in both sources is fine when they agree, refused when they do not
    assert len(from_env(SENDWISE_API_KEYS_FILE=str(file),
                        SENDWISE_API_KEYS="sw_secret:acme:decide").api_keys) == 2
    with pytest.raises(SettingsError, match="listed twice"):
        from_env(SENDWISE_API_KEYS_FILE=str(file), SENDWISE_API_KEYS="sw_secret:acme:admin")


@pytest.mark.parametrize(("line", "why"), [
    ('{"sha256": "abc", "tenant": "acme", "role": "decide"}', "64 hex digits"),
    (f'{{"sha256": "{DIGEST}", "tenant": "acme"}}', "missing required field `role`"),
    (f'{{"sha256": "{DIGEST}", "tenant": "acme", "role": "owner"}}', "role"),
    (f'{{"sha256": "{DIGEST}", "tenant": "acme", "role": "admin", "key": "plain"}}',
     "unknown field `key`"),
    (f'{{"sha256": "{DIGEST}", "tenant": "a:b", "role": "admin"}}', "tenant"),
    ("sw_secret:acme", "line 1"),
])
def test_key_file_errors_name_the_line(tmp_path: Path, line: str, why: str) -> None:
    file = tmp_path / "keys.jsonl"
    file.write_text(line + "\n")
    with pytest.raises(SettingsError, match="SENDWISE_API_KEYS_FILE") as exc:
        from_env(SENDWISE_API_KEYS_FILE=str(file))
    assert why in str(exc.value)


def test_missing_key_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="cannot read"):
        from_env(SENDWISE_API_KEYS_FILE=str(tmp_path / "nope"))


def test_no_keys_means_empty_and_no_id_key_needed() -> None:
    s = Settings.from_env({"SENDWISE_API_KEYS": " , "})
    assert s.api_keys == {} and not s.api_keys and s.id_key is None


def test_keys_require_an_id_key_and_a_valid_one() -> None:
    with pytest.raises(SettingsError, match="SENDWISE_ID_KEY must be set"):
        Settings.from_env({"SENDWISE_API_KEYS": "k:acme"})
    with pytest.raises(SettingsError, match="SENDWISE_ID_KEY must hold at least 32 bytes"):
        Settings.from_env({"SENDWISE_ID_KEY": "c2hvcnQ="})


def test_previous_id_keys() -> None:
    s = from_env(SENDWISE_ID_KEY_PREVIOUS=f"{ID_KEY}, {ID_KEY.rstrip('=')}")
    assert len(s.id_keys_previous) == 2 and s.id_keys_previous[0] == s.id_key
    assert Settings.from_env({}).id_keys_previous == ()
    with pytest.raises(SettingsError, match="SENDWISE_ID_KEY_PREVIOUS"):
        from_env(SENDWISE_ID_KEY_PREVIOUS=f"{ID_KEY},c2hvcnQ=")


def test_settings_repr_shows_no_secret() -> None:
    s = from_env(SENDWISE_API_KEYS="sw_secret:acme")
    assert "sw_secret" not in repr(s) and "key key" not in repr(s)


# ------------------------------------------------------------------ bearer keys


def test_find_key() -> None:
    keys = {DIGEST: ApiKey(sha256=DIGEST, tenant="acme", role="decide")}
    assert find_key(keys, "Bearer sw_secret").tenant == "acme"
    assert find_key(keys, "bearer  sw_secret ").tenant == "acme"
    for header in ("", "Bearer", "Bearer ", "Basic sw_secret", "sw_secret", "Bearer sw_secre",
                   f"Bearer {DIGEST}"):  # the stored digest is not a key
        with pytest.raises(UnauthorizedError):
            find_key(keys, header)


def test_minted_keys_are_long_random_and_recognizable() -> None:
    a, b = mint_key(), mint_key()
    assert a != b and a.startswith("sw_") and len(a) >= 40


async def _handler() -> None: ...


@pytest.mark.parametrize(("path", "opt", "role"), [
    ("/v1/decide-thing", DECIDE, "decide"), ("/metrics", ADMIN, "admin"),
    # a route that declares nothing (a future /v1/users/* or /v1/models route, a UI page) is admin
    ("/v1/users/x/erase", {}, "admin"), ("/v1/models", {}, "admin"), ("/ui/users/x", {}, "admin"),
    ("/healthz", {}, "admin"), ("/docsearch", {}, "admin"),
    # only the probes and the docs are open
    ("/health/live", {}, None), ("/docs", {}, None), ("/docs/openapi.json", {}, None),
    ("/docs/assets/x.js", {}, None),
])
def test_required_role(path: str, opt: dict[str, str], role: str | None) -> None:
    assert required_role(get(path, opt=opt)(_handler), path, "/docs") == role


def test_unknown_role_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown role"):
        required_role(get("/v1/x", opt={"role": "root"})(_handler), "/v1/x", "/docs")


# ------------------------------------------------------------------- rate limit


class Ticker:
    def __init__(self) -> None:
        self.value = 50.0

    def __call__(self) -> float:
        return self.value


def test_token_bucket() -> None:
    t = Ticker()
    limiter = RateLimiter(4, 2, monotonic=t)
    assert [limiter.take("k") for _ in range(2)] == [0.0, 0.0]
    assert limiter.take("k") == pytest.approx(0.25)  # one token every 1/4 s
    assert limiter.take("other") == 0.0
    t.value += 0.125
    assert limiter.take("k") == pytest.approx(0.125)  # half a token: still refused
    t.value += 0.125
    assert limiter.take("k") == 0.0
    t.value += 3600  # refills to the burst, no further
    assert [limiter.take("k") for _ in range(3)][2] > 0
    with pytest.raises(ValueError, match="rate"):
        RateLimiter(0, 1)


# -------------------------------------------------------------------------- CLI


def test_cli_mints_a_key_whose_line_the_settings_accept(tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["keys", "new", "--tenant", "acme", "--role", "decide", "--name", "ci"]) == 0
    out, err = capsys.readouterr()
    key = err.strip().rsplit(" ", 1)[1]
    assert key.startswith("sw_") and key not in out
    line = json.loads(out)
    assert line == {"sha256": hash_key(key), "tenant": "acme", "role": "decide", "name": "ci"}
    (tmp_path / "keys.jsonl").write_text(out)
    s = from_env(SENDWISE_API_KEYS_FILE=str(tmp_path / "keys.jsonl"))
    assert find_key(s.api_keys, f"Bearer {key}").role == "decide"

    assert main(["keys", "new", "--tenant", "beta", "--role", "admin", "--format", "env"]) == 0
    out, err = capsys.readouterr()
    key = err.strip().rsplit(" ", 1)[1]
    assert find_key(from_env(SENDWISE_API_KEYS=out.strip()).api_keys,
                    f"Bearer {key}").tenant == "beta"

    assert main(["keys", "id-key"]) == 0
    assert from_env(SENDWISE_ID_KEY=capsys.readouterr().out.strip()).id_key is not None
    assert main(["keys", "new", "--tenant", "a{b}", "--role", "admin"]) == 2
