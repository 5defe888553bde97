"""api/ids.py: opaque decision ids (AES-SIV, tenant as associated data) and log pseudonyms."""

from __future__ import annotations

import base64
import os
import stat
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from api.ids import ID_KEY_FILE, IdKey, Secret, decode_secret, load_or_create_secret, new_secret

KEY = IdKey(Secret(b"0123456789abcdef0123456789abcdef"))
OTHER_KEY = IdKey(Secret(b"fedcba9876543210fedcba9876543210"))

ids = st.text(alphabet=st.characters(codec="utf-8"), min_size=1, max_size=128) | st.sampled_from(
    [".", "..", "a.b", "d_", "d_x.y", '"', "\\", "{}", "%7B", "é😀", "==", "ada@example.com"])
tenants = st.text(alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-",
                  min_size=1, max_size=64)
URL_SAFE = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-")


@given(tenant=tenants, user=ids, message=ids)
def test_round_trip_is_deterministic_and_url_safe(tenant: str, user: str, message: str) -> None:
    did = KEY.decision_id(tenant, user, message)
    assert did == KEY.decision_id(tenant, user, message)  # a retry gets the same id
    assert did.startswith("d_") and set(did) <= URL_SAFE
    assert KEY.parse_decision_id(tenant, did) == (user, message)


@given(a=st.tuples(ids, ids), b=st.tuples(ids, ids))
def test_ids_are_injective(a: tuple[str, str], b: tuple[str, str]) -> None:
    assert (KEY.decision_id("t", *a) == KEY.decision_id("t", *b)) == (a == b)


def b64(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).rstrip(b"=").decode()


@pytest.mark.parametrize("user", ["ada@example.com", "+14155550123", "customer-4711"])
def test_id_reveals_neither_the_user_id_nor_its_base64(user: str) -> None:
    did = KEY.decision_id("acme", user, "promo-1")
    for needle in (user, b64(user), b64(user)[:-2], b64("promo-1")[:-2], "example", "4711"):
        assert needle not in did
    # short: the ids themselves plus a 16-byte tag and 3 bytes of framing, in base64
    assert len(did) == 2 + -(-4 * (16 + 3 + len(user) + len("promo-1")) // 3)


def test_other_tenant_and_other_key_are_rejected() -> None:
    did = KEY.decision_id("acme", "ada@example.com", "m1")
    with pytest.raises(ValueError, match="not a decision id"):
        KEY.parse_decision_id("beta", did)
    with pytest.raises(ValueError, match="not a decision id"):
        OTHER_KEY.parse_decision_id("acme", did)


@given(user=ids, message=ids, data=st.data())
def test_any_tampering_is_rejected(user: str, message: str, data: st.DataObject) -> None:
    did = KEY.decision_id("acme", user, message)
    position = data.draw(st.integers(min_value=2, max_value=len(did) - 1))
    replacement = data.draw(st.sampled_from(sorted(URL_SAFE - {did[position]})))
    tampered = did[:position] + replacement + did[position + 1:]
    with pytest.raises(ValueError, match="not a decision id"):
        KEY.parse_decision_id("acme", tampered)
    with pytest.raises(ValueError, match="not a decision id"):
        KEY.parse_decision_id("acme", did[:-1])


@pytest.mark.parametrize("value", [
    "", "x", "d_", "d_bogus", "d_dTE.bm9wZQ",  # the old, readable format
    "e_" + KEY.decision_id("acme", "u", "m")[2:],
    KEY.decision_id("acme", "u", "m") + "=",
    KEY.decision_id("acme", "u", "m") + "!",
    KEY.decision_id("acme", "u", "m")[:10] + "\n" + KEY.decision_id("acme", "u", "m")[10:],
    "d_" + "A" * 5000,
])
def test_foreign_values_are_rejected(value: str) -> None:
    with pytest.raises(ValueError, match="not a decision id"):
        KEY.parse_decision_id("acme", value)


def test_rotation_previous_secrets_open_but_never_seal() -> None:
    old_id = OTHER_KEY.decision_id("acme", "ada@example.com", "m1")
    rotated = IdKey(Secret(b"0123456789abcdef0123456789abcdef"),
                    previous=[Secret(b"fedcba9876543210fedcba9876543210")])
    assert rotated.parse_decision_id("acme", old_id) == ("ada@example.com", "m1")
    assert rotated.decision_id("acme", "ada@example.com", "m1") == \
        KEY.decision_id("acme", "ada@example.com", "m1")
    with pytest.raises(ValueError, match="not a decision id"):
        rotated.parse_decision_id("beta", old_id)
    with pytest.raises(ValueError, match="not a decision id"):
        KEY.parse_decision_id("acme", old_id)


def test_key_tags_reseal_an_id_with_the_secret_that_sealed_it() -> None:
    """A format-3 record stores the tag, not the id (api/plan.py): after a rotation the
    tag picks the previous secret, so the replay shows the id the first answer gave."""
    old, new = Secret(b"0123456789abcdef0123456789abcdef"), Secret(b"n" * 32)
    rotated = IdKey(new, previous=[old])
    assert len(KEY.tag) == 3 and KEY.tag == IdKey(old).tag != rotated.tag
    first = KEY.decision_id("t", "u", "m")
    assert rotated.decision_id("t", "u", "m", KEY.tag) == first
    assert rotated.decision_id("t", "u", "m", rotated.tag) == rotated.decision_id("t", "u", "m")
    # a tag no secret has any more (retired): the current secret seals, and that id opens
    assert rotated.decision_id("t", "u", "m", "zzz") == rotated.decision_id("t", "u", "m")
    assert rotated.parse_decision_id("t", rotated.decision_id("t", "u", "m", "zzz")) == ("u", "m")


def test_pseudonyms_are_keyed_stable_and_short() -> None:
    p = KEY.pseudonym("ada@example.com")
    assert p == KEY.pseudonym("ada@example.com") and len(p) == 16
    assert p != OTHER_KEY.pseudonym("ada@example.com") != KEY.pseudonym("bob@example.com")


def test_secret_never_shows_in_repr() -> None:
    secret = Secret(b"super secret bytes, 32 of them!!")
    assert "super" not in repr(secret) and "super" not in str(secret)


def test_decode_secret() -> None:
    raw = new_secret()
    assert len(decode_secret(raw).value) == 32
    assert decode_secret(raw.rstrip("=")) == decode_secret(raw)
    assert decode_secret(base64.b64encode(b"\xfb" * 40).decode()).value == b"\xfb" * 40
    with pytest.raises(ValueError, match="at least 32 bytes"):
        decode_secret(base64.b64encode(b"short").decode())
    with pytest.raises(ValueError, match="base64"):
        decode_secret("not base64 at all!")


def test_data_dir_secret_is_created_once_private_and_stable(tmp_path: Path) -> None:
    directory = tmp_path / "data"
    first = load_or_create_secret(directory)
    path = directory / ID_KEY_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_or_create_secret(directory) == first  # a restart, or another worker
    assert os.listdir(directory) == [ID_KEY_FILE]  # no temporary file left behind
    did = IdKey(first).decision_id("acme", "u", "m")
    assert IdKey(load_or_create_secret(directory)).parse_decision_id("acme", did) == ("u", "m")


def test_data_dir_secret_race_keeps_the_winner(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """Two workers starting together: the one whose link lands second adopts the first's key."""
    winner = new_secret()
    real_link = os.link

    def link_after_another_worker(src: str, dst: str) -> None:
        Path(dst).write_text(winner + "\n")
        real_link(src, dst)

    monkeypatch.setattr(os, "link", link_after_another_worker)
    assert load_or_create_secret(tmp_path) == decode_secret(winner)
    assert os.listdir(tmp_path) == [ID_KEY_FILE]
