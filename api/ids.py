"""Opaque decision ids and log pseudonyms, both derived from one server secret.

A decision id must do three jobs: let ``cancel`` find the user's Redis Cluster slot and the
message without a global index, come out the same for a retried message, and tell an
outsider nothing (an email-address user id must not be readable from it) nor be forgeable.
Deterministic authenticated encryption does all three: the id is AES-SIV (RFC 5297) of
``(user_id, message_id)`` with the tenant as associated data. Same inputs, same id; any
changed byte, a different key or another tenant fails authentication. A keyed hash with a
server-side index would need a lookup before every cancel, and that index could not live
in the user's slot (the id would have to name the slot, i.e. the user, again).

The secret is ``SENDWISE_ID_KEY`` (base64, at least 32 bytes). Without it, the embedded
default keeps one in ``<SENDWISE_DATA_DIR>/id.key`` (created once, mode 0600), so ids stay
valid across restarts and every worker on the host shares it. Settings refuse to start
with API keys but no ``SENDWISE_ID_KEY``: hosts sharing a Redis must share the secret, and
a per-host file would silently break cancels across hosts.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import dataclasses
import hashlib
import hmac
import os
import secrets
from collections.abc import Sequence
from pathlib import Path

import msgspec
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESSIV
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

PREFIX = "d_"
ID_KEY_FILE = "id.key"
MIN_SECRET_BYTES = 32
#: an id sealing two 128-character ids (4 UTF-8 bytes each at worst) stays below this
_MAX_ID_CHARS = 1500

_pack = msgspec.msgpack.Encoder()
_unpack = msgspec.msgpack.Decoder(tuple[str, str])


@dataclasses.dataclass(frozen=True)
class Secret:
    """Key material that never shows up in a repr, a log line or a traceback."""

    value: bytes = dataclasses.field(repr=False)

    def __repr__(self) -> str:
        return "Secret(<redacted>)"


def decode_secret(raw: str) -> Secret:
    """``SENDWISE_ID_KEY``: standard or URL-safe base64 of at least 32 random bytes."""
    text = raw.strip()
    try:
        value = base64.b64decode(text.replace("-", "+").replace("_", "/") + "=" * (-len(text) % 4),
                                 validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError("must be base64") from exc
    if len(value) < MIN_SECRET_BYTES:
        raise ValueError(f"must hold at least {MIN_SECRET_BYTES} bytes, got {len(value)}")
    return Secret(value)


def new_secret() -> str:
    """A fresh ``SENDWISE_ID_KEY`` value."""
    return base64.urlsafe_b64encode(secrets.token_bytes(MIN_SECRET_BYTES)).decode()


def load_or_create_secret(data_dir: str | Path) -> Secret:
    """The embedded default's secret: read ``<data_dir>/id.key``, or create it once.

    Several workers may start at the same moment: each writes a private temporary file and
    hard-links it into place, so exactly one wins and nobody ever reads a half-written key.
    """
    directory = Path(data_dir)
    path = directory / ID_KEY_FILE
    with contextlib.suppress(FileNotFoundError):
        return decode_secret(path.read_text())
    directory.mkdir(parents=True, exist_ok=True)
    tmp = directory / f".{ID_KEY_FILE}.{os.getpid()}.{secrets.token_hex(4)}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(new_secret() + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        with contextlib.suppress(FileExistsError):  # another worker won the race: use its key
            os.link(tmp, path)
    finally:
        tmp.unlink()
    return decode_secret(path.read_text())


def _derive(secret: Secret, purpose: bytes, length: int) -> bytes:
    """Independent subkeys per purpose, so the id cipher and the log hash never share a key."""
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=None,
                info=b"sendwise/" + purpose).derive(secret.value)


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _key_tag(secret: Secret) -> str:
    """Three characters (16 bits) naming a secret: which of the current and previous
    secrets sealed a decision id that a record does not store. A derived value, so it
    tells nothing about the id key (2 bytes of an independent HKDF output)."""
    return _b64(_derive(secret, b"key-tag/v1", 2))


class IdKey:
    """Seals and opens decision ids; pseudonymizes values for logs. One per process.

    ``previous`` secrets (``SENDWISE_ID_KEY_PREVIOUS``) still open ids, so the secret can be
    rotated without making outstanding reservations uncancellable; only ``secret`` seals.
    """

    def __init__(self, secret: Secret, previous: Sequence[Secret] = ()) -> None:
        self._siv = AESSIV(_derive(secret, b"decision-id/v1", 64))
        self._openers = [self._siv, *(AESSIV(_derive(old, b"decision-id/v1", 64))
                                      for old in previous)]
        self._log_key = _derive(secret, b"log-pseudonym/v1", 32)
        #: key tag -> sealer, the current secret's tag winning a (2**-16) collision
        self._by_tag: dict[str, AESSIV] = {}
        for old, siv in reversed(list(zip([secret, *previous], self._openers, strict=True))):
            self._by_tag[_key_tag(old)] = siv
        self.tag = _key_tag(secret)

    def decision_id(self, tenant: str, user_id: str, message_id: str,
                    tag: str | None = None) -> str:
        """Deterministic (a retry gets the same id) and URL-safe; opaque without the key.

        ``tag``: the ``tag`` of the secret that sealed the id first (an idempotency record
        stores it instead of the id, api/plan.py): a record written before a rotation
        still renders the id it answered with, while that secret is a previous one. An
        unknown tag (a secret since retired) seals with the current secret: that id opens."""
        siv = self._siv if tag is None else self._by_tag.get(tag, self._siv)
        sealed = siv.encrypt(_pack.encode((user_id, message_id)), [tenant.encode()])
        return PREFIX + _b64(sealed)

    def parse_decision_id(self, tenant: str, value: str) -> tuple[str, str]:
        """(user_id, message_id) of an id this key sealed for this tenant; ValueError for
        anything else: other tenants' ids, other keys' ids, tampered or foreign values."""
        if not value.startswith(PREFIX) or len(value) > _MAX_ID_CHARS:
            raise ValueError("not a decision id")
        body = value[len(PREFIX):]
        try:
            sealed = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
        except (binascii.Error, ValueError) as exc:
            raise ValueError("not a decision id") from exc
        if _b64(sealed) != body:  # skipped characters or a non-canonical spelling
            raise ValueError("not a decision id")
        for siv in self._openers:
            try:
                return _unpack.decode(siv.decrypt(sealed, [tenant.encode()]))
            except (InvalidTag, ValueError):
                continue
        raise ValueError("not a decision id")

    def pseudonym(self, value: str) -> str:
        """A stable, keyed, truncated hash: log lines about one user can be correlated, but
        nobody without the secret can test a guessed email address or phone number."""
        return hmac.new(self._log_key, value.encode(), hashlib.sha256).hexdigest()[:16]
