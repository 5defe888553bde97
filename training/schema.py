"""Input schema (version 1) of the two logs training reads, and their validating loaders.

**Message log** - one row per message sent (``MESSAGE_COLUMNS``):

============== ========= ====================================================
column         required  meaning
============== ========= ====================================================
user_id        yes       the recipient (any string)
channel        yes       one of ``models.vocab.CHANNELS``
sent_at        yes       when it was sent (UTC)
time_zone      yes       the recipient's IANA zone, e.g. ``Europe/Paris``
message_id     no        unique id (row number if absent)
category       no        tenant-defined category (``promo``, ``news``...)
campaign       no        campaign id (kept for the report, not a feature)
delivered_at   no        outcome instants (empty = did not happen)
opened_at      no
clicked_at     no
converted_at   no
unsubscribed_at no
propensity     no        probability the logging policy had of choosing this
                         (channel, local hour); enables unbiased evaluation
============== ========= ====================================================

**Activity log** - one row per sign of life (app session, visit, purchase, email open):
``user_id``, ``occurred_at`` (UTC), ``time_zone`` required; ``kind`` optional.

Instants: Parquet timestamps (a zone-less timestamp is taken as UTC) or ISO-8601
strings (``2025-03-01T09:30:00Z``, ``...+01:00``; no designator = UTC). Files are Parquet
(``.parquet``/``.pq``) or CSV (anything else). A row with a bad instant, an unknown time
zone, an unknown channel or an empty user id is rejected and counted with its reason; a
missing required column rejects the file; a file whose rows are all rejected is an error.
"""

from __future__ import annotations

import csv
import gzip
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt

from models.timeutil import is_known_zone
from models.vocab import CHANNELS, channel_index

SCHEMA_VERSION = 1

MESSAGE_REQUIRED = ("user_id", "channel", "sent_at", "time_zone")
MESSAGE_OPTIONAL = ("message_id", "category", "campaign", "delivered_at", "opened_at",
                    "clicked_at", "converted_at", "unsubscribed_at", "propensity")
MESSAGE_COLUMNS = MESSAGE_REQUIRED + MESSAGE_OPTIONAL
OUTCOME_COLUMNS = ("delivered_at", "opened_at", "clicked_at", "converted_at", "unsubscribed_at")
ACTIVITY_REQUIRED = ("user_id", "occurred_at", "time_zone")
ACTIVITY_OPTIONAL = ("kind",)
ACTIVITY_COLUMNS = ACTIVITY_REQUIRED + ACTIVITY_OPTIONAL

I64 = npt.NDArray[np.int64]
#: Instants before this (2000-01-01) are treated as garbage rather than history.
_MIN_INSTANT = 946_684_800
_MAX_INSTANT = 4_102_444_800  # 2100-01-01
NEVER = 0  # "no such outcome" in the int64 instant arrays


class SchemaError(ValueError):
    """A file that cannot be used at all (missing columns, unreadable, every row bad)."""


@dataclass
class LoadReport:
    """What happened to a file's rows: kept, rejected and why (with example row numbers)."""

    path: str
    rows_read: int = 0
    rows_kept: int = 0
    reasons: Counter[str] = field(default_factory=Counter)
    examples: dict[str, list[int]] = field(default_factory=dict)

    @property
    def rows_rejected(self) -> int:
        return self.rows_read - self.rows_kept

    def reject(self, reason: str, rows: npt.NDArray[np.intp]) -> None:
        if rows.size:
            self.reasons[reason] += int(rows.size)
            self.examples.setdefault(reason, []).extend((rows[:5] + 1).tolist())

    def summary(self) -> str:
        lines = [f"{self.path}: {self.rows_read} rows read, {self.rows_kept} kept, "
                 f"{self.rows_rejected} rejected"]
        for reason, count in self.reasons.most_common():
            rows = ", ".join(str(r) for r in self.examples.get(reason, [])[:5])
            lines.append(f"  - {count} x {reason} (e.g. data rows {rows})")
        return "\n".join(lines)


@dataclass
class MessageLog:
    """Validated message rows as arrays; users are indices into ``users``."""

    users: list[str]
    user: I64
    channel: I64
    category: list[str]
    campaign: list[str]
    sent_at: I64
    zone: I64
    zones: list[str]
    outcomes: dict[str, I64]
    propensity: npt.NDArray[np.float64]
    report: LoadReport

    def __len__(self) -> int:
        return int(self.user.shape[0])


@dataclass
class ActivityLog:
    users: list[str]
    user: I64
    occurred_at: I64
    zone: I64
    zones: list[str]
    report: LoadReport

    def __len__(self) -> int:
        return int(self.user.shape[0])


# -- reading -----------------------------------------------------------------------------
def _read_table(path: Path, wanted: tuple[str, ...]) -> dict[str, Any]:
    """Columns of ``path`` that are in ``wanted``, as pyarrow arrays (CSV: all strings)."""
    import pyarrow as pa
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    if not path.is_file():
        raise SchemaError(f"{path}: no such file")
    try:
        if path.suffix.lower() in (".parquet", ".pq"):
            names = pq.read_schema(path).names
            table = pq.read_table(path, columns=[c for c in names if c in wanted])
        else:
            # pyarrow decompresses .csv.gz / .csv.bz2 by extension; the header too must
            opener = gzip.open if path.suffix.lower() == ".gz" else open
            with opener(path, "rt", newline="", encoding="utf-8") as handle:
                names = next(csv.reader(handle), [])
            table = pacsv.read_csv(path, convert_options=pacsv.ConvertOptions(
                column_types={name: pa.string() for name in names},
                include_columns=[c for c in names if c in wanted],
                strings_can_be_null=True))
    except (OSError, pa.ArrowException, UnicodeDecodeError) as exc:
        raise SchemaError(f"{path}: cannot read: {exc}") from exc
    return {name: table.column(name).combine_chunks() for name in table.column_names}


def _require(path: Path, columns: dict[str, Any], required: tuple[str, ...]) -> None:
    missing = [c for c in required if c not in columns]
    if missing:
        raise SchemaError(f"{path}: missing required column(s) {', '.join(missing)}; "
                          f"found {', '.join(columns) or 'none'} (schema v{SCHEMA_VERSION}, "
                          "see training/schema.py)")


def _parse_iso(text: str) -> int | None:
    try:
        parsed = datetime.fromisoformat(text.strip())
    except ValueError:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return int(parsed.timestamp())


def _instants(column: Any) -> tuple[I64, npt.NDArray[np.bool_], npt.NDArray[np.bool_]]:
    """(epoch seconds, is-null, is-invalid) for a timestamp or string column."""
    import pyarrow as pa
    import pyarrow.compute as pc

    arr: pa.Array = column
    null = np.asarray(arr.is_null().to_numpy(zero_copy_only=False), dtype=np.bool_)
    if pa.types.is_timestamp(arr.type):
        seconds = pc.cast(pc.cast(arr, pa.timestamp("s", tz=arr.type.tz)), pa.int64())
        values = np.asarray(seconds.fill_null(0).to_numpy(), dtype=np.int64)
        invalid = np.zeros(values.shape, dtype=np.bool_)
    elif pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type):
        null |= np.asarray(pc.equal(pc.utf8_trim_whitespace(arr), "").fill_null(True)
                           .to_numpy(zero_copy_only=False), dtype=np.bool_)
        encoded = arr.dictionary_encode()
        parsed = [_parse_iso(s) for s in encoded.dictionary.to_pylist()]
        lookup = np.array([NEVER if p is None else p for p in parsed] + [NEVER], np.int64)
        bad = np.array([p is None for p in parsed] + [False], dtype=np.bool_)
        codes = np.asarray(encoded.indices.fill_null(len(parsed)).to_numpy(), dtype=np.int64)
        values = lookup[codes]
        invalid = bad[codes] & ~null
    elif pa.types.is_integer(arr.type):  # epoch seconds
        values = np.asarray(arr.fill_null(0).to_numpy(), dtype=np.int64)
        invalid = np.zeros(values.shape, dtype=np.bool_)
    else:
        raise SchemaError(f"instant column of type {arr.type} (want timestamp or ISO string)")
    invalid |= ~null & ((values < _MIN_INSTANT) | (values > _MAX_INSTANT))
    values = np.where(null | invalid, NEVER, values)
    return values, null, invalid


def _strings(column: Any, n: int, default: str = "") -> list[str]:
    if column is None:
        return [default] * n
    values: list[str | None] = column.cast("string").to_pylist()
    return [default if v is None else str(v).strip() for v in values]


def _factorize(values: list[str]) -> tuple[list[str], I64]:
    index: dict[str, int] = {}
    codes = np.fromiter((index.setdefault(v, len(index)) for v in values), dtype=np.int64,
                        count=len(values))
    return list(index), codes


def _check_common(report: LoadReport, n: int, user_ids: list[str],
                  zone_names: list[str]) -> tuple[npt.NDArray[np.bool_], list[str], I64]:
    ok = np.ones(n, dtype=np.bool_)
    empty_user = np.array([not u for u in user_ids], dtype=np.bool_)
    report.reject("user_id: empty", np.flatnonzero(empty_user))
    ok &= ~empty_user
    zones, zone_codes = _factorize(zone_names)
    known = np.array([is_known_zone(z) for z in zones], dtype=np.bool_)
    unknown_rows = ~known[zone_codes] & ok if zones else np.zeros(n, np.bool_)
    for code in np.flatnonzero(~known):
        rows = np.flatnonzero(unknown_rows & (zone_codes == code))
        report.reject(f"time_zone: unknown zone {zones[code]!r}", rows)
    ok &= ~unknown_rows
    return ok, zones, zone_codes


def _finish(report: LoadReport, ok: npt.NDArray[np.bool_]) -> None:
    report.rows_kept = int(ok.sum())
    if report.rows_read and not report.rows_kept:
        raise SchemaError(f"every row was rejected\n{report.summary()}")


class _Rows(NamedTuple):
    """What both loaders share once a file is read: its columns, the report, user ids,
    zones, the row instant, and which rows are still good."""

    columns: dict[str, Any]
    n: int
    report: LoadReport
    user_ids: list[str]
    ok: npt.NDArray[np.bool_]
    zones: list[str]
    zone_codes: I64
    instants: I64


def _read_rows(path: Path, wanted: tuple[str, ...], required: tuple[str, ...],
               instant_column: str) -> _Rows:
    """Read, require columns, and check the fields every log has: user id, time zone and
    the row's instant (missing and malformed ones rejected with their reason)."""
    columns = _read_table(path, wanted)
    _require(path, columns, required)
    n = len(columns["user_id"])
    if n == 0:  # a header and nothing else: say so, rather than fail later on empty arrays
        raise SchemaError(f"{path}: no data rows (the file has a header but no rows)")
    report = LoadReport(str(path), rows_read=n)
    user_ids = _strings(columns["user_id"], n)
    ok, zones, zone_codes = _check_common(report, n, user_ids,
                                          _strings(columns["time_zone"], n))
    instants, null, bad = _instants(columns[instant_column])
    report.reject(f"{instant_column}: missing", np.flatnonzero(null & ok))
    report.reject(f"{instant_column}: not a valid timestamp", np.flatnonzero(bad & ok))
    ok &= ~(null | bad)
    return _Rows(columns, n, report, user_ids, ok, zones, zone_codes, instants)


def load_messages(path: Path | str) -> MessageLog:
    """Read and validate a message log; bad rows are dropped and counted in ``.report``."""
    columns, n, report, user_ids, ok, zones, zone_codes, sent_at = _read_rows(
        Path(path), MESSAGE_COLUMNS, MESSAGE_REQUIRED, "sent_at")
    channel_names = _strings(columns["channel"], n)
    channel_codes = np.full(n, -1, dtype=np.int64)
    names, codes = _factorize([c.lower() for c in channel_names])
    for code, name in enumerate(names):
        rows = np.flatnonzero(codes == code)
        if name in CHANNELS:
            channel_codes[rows] = channel_index(name)
        else:
            report.reject(f"channel: unknown channel {name!r} (known: {', '.join(CHANNELS)})",
                          rows[ok[rows]])
    ok &= channel_codes >= 0
    outcomes: dict[str, I64] = {}
    for name in OUTCOME_COLUMNS:
        if name not in columns:
            outcomes[name] = np.zeros(n, dtype=np.int64)
            continue
        values, _null, bad = _instants(columns[name])
        report.reject(f"{name}: not a valid timestamp", np.flatnonzero(bad & ok))
        ok &= ~bad
        early = (values != NEVER) & (values < sent_at) & ok
        report.reject(f"{name}: before sent_at", np.flatnonzero(early))
        ok &= ~early
        outcomes[name] = values
    propensity = np.full(n, np.nan)
    if "propensity" in columns:
        raw = np.array([np.nan if v in (None, "") else float(v)
                        for v in columns["propensity"].to_pylist()])
        bad = ~np.isnan(raw) & ((raw <= 0) | (raw > 1))
        report.reject("propensity: not in (0, 1]", np.flatnonzero(bad & ok))
        ok &= ~bad
        propensity = raw
    _finish(report, ok)
    keep = np.flatnonzero(ok)
    users, user_codes = _factorize([user_ids[i] for i in keep])
    category = _strings(columns.get("category"), n)
    campaign = _strings(columns.get("campaign"), n)
    return MessageLog(
        users=users, user=user_codes, channel=channel_codes[keep],
        category=[category[i] for i in keep], campaign=[campaign[i] for i in keep],
        sent_at=sent_at[keep], zone=zone_codes[keep], zones=zones,
        outcomes={k: v[keep] for k, v in outcomes.items()}, propensity=propensity[keep],
        report=report)


def load_activity(path: Path | str) -> ActivityLog:
    """Read and validate an activity log; bad rows are dropped and counted in ``.report``."""
    _, _, report, user_ids, ok, zones, zone_codes, at = _read_rows(
        Path(path), ACTIVITY_COLUMNS, ACTIVITY_REQUIRED, "occurred_at")
    _finish(report, ok)
    keep = np.flatnonzero(ok)
    users, user_codes = _factorize([user_ids[i] for i in keep])
    return ActivityLog(users=users, user=user_codes, occurred_at=at[keep],
                       zone=zone_codes[keep], zones=zones, report=report)


def detect_kind(path: Path | str) -> str:
    """``"messages"`` or ``"activity"``, from the columns a file has."""
    columns = _read_table(Path(path), MESSAGE_COLUMNS + ACTIVITY_COLUMNS)
    if "sent_at" in columns:
        return "messages"
    if "occurred_at" in columns:
        return "activity"
    raise SchemaError(f"{path}: neither a message log (sent_at) nor an activity log "
                      "(occurred_at)")
