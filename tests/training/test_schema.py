"""Bad rows are rejected with counts and reasons; unusable files fail loudly."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from training.schema import SchemaError, detect_kind, load_activity, load_messages

HEADER = "message_id,user_id,channel,category,sent_at,time_zone,opened_at,propensity\n"


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_csv_rows_with_bad_values_are_counted_with_reasons(tmp_path: Path) -> None:
    path = write(tmp_path, "messages.csv", HEADER + "\n".join([
        "m1,alice,email,promo,2025-03-01T09:00:00Z,Europe/Paris,2025-03-01T09:30:00Z,0.1",
        "m2,bob,push,news,2025-03-01 10:00:00,America/New_York,,",
        "m3,carol,email,promo,yesterday,Europe/Paris,,0.1",
        "m4,dave,email,promo,2025-03-01T09:00:00+01:00,Mars/Olympus,,0.1",
        "m5,erin,fax,promo,2025-03-01T09:00:00Z,Europe/Paris,,0.1",
        "m6,,email,promo,2025-03-01T09:00:00Z,Europe/Paris,,0.1",
        "m7,frank,email,promo,2025-03-01T09:00:00Z,Europe/Paris,2025-02-01T00:00:00Z,0.1",
        "m8,gina,email,promo,2025-03-01T09:00:00Z,Europe/Paris,,7",
        "m9,hank,email,promo,,Europe/Paris,,0.1",
    ]) + "\n")
    log = load_messages(path)
    report = log.report
    assert (report.rows_read, report.rows_kept, report.rows_rejected) == (9, 2, 7)
    assert report.reasons == {
        "sent_at: not a valid timestamp": 1,
        "time_zone: unknown zone 'Mars/Olympus'": 1,
        "channel: unknown channel 'fax' (known: email, push, sms, whatsapp, in_app)": 1,
        "user_id: empty": 1,
        "opened_at: before sent_at": 1,
        "propensity: not in (0, 1]": 1,
        "sent_at: missing": 1,
    }
    assert report.examples["sent_at: not a valid timestamp"] == [3]
    assert "7 rejected" in report.summary()
    assert log.users == ["alice", "bob"]
    assert log.sent_at.tolist() == [1740819600, 1740823200]  # naive = UTC
    assert log.outcomes["opened_at"].tolist() == [1740821400, 0]


def test_missing_columns_reject_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "m.csv", "user_id,sent_at\nalice,2025-03-01T09:00:00Z\n")
    with pytest.raises(SchemaError, match=r"missing required column.*channel, time_zone"):
        load_messages(path)


def test_a_file_with_only_bad_rows_is_an_error_not_an_empty_dataset(tmp_path: Path) -> None:
    path = write(tmp_path, "a.csv", "user_id,occurred_at,time_zone\n"
                                    "alice,not-a-date,Europe/Paris\nbob,2025-01-01,Nowhere/X\n")
    with pytest.raises(SchemaError, match="every row was rejected") as info:
        load_activity(path)
    assert "Nowhere/X" in str(info.value)


def test_parquet_timestamps_and_strings(tmp_path: Path) -> None:
    path = tmp_path / "activity.parquet"
    pq.write_table(pa.table({
        "user_id": ["a", "b", "c"],
        "occurred_at": pa.array([1_740_819_600, 1_740_819_601, None],
                                type=pa.int64()).cast(pa.timestamp("s", tz="UTC")),
        "time_zone": ["Asia/Kolkata", "UTC", "UTC"],
        "kind": ["session", "visit", "visit"],
    }), path)
    log = load_activity(path)
    assert log.report.rows_kept == 2
    assert log.report.reasons == {"occurred_at: missing": 1}
    assert detect_kind(path) == "activity"


def test_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(SchemaError, match="no such file"):
        load_messages(tmp_path / "nope.csv")
