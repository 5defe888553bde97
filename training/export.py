"""``sendwise export``: the API's decision and event log (Redis Streams,
``api/decision_log.py``) as training input in schema version 1 (``training/schema.py``).

* ``messages.parquet``: one row per logged send/defer decision whose instant has passed
  (a reservation is what the platform was told to send), with the outcomes its events
  reported (first ``delivered``/``opened``/``clicked``/``converted``/``unsubscribed``
  instant per message id), the decision's ``propensity`` (so evaluation can weight by
  it) and its category and campaign. Channels the model has no column for (``web_push``)
  are left out.
* ``activity.parquet``: one row per ``activity`` event, in the zone it was counted in.
* ``decisions.parquet``: every logged decision, suppressions included (what ``sendwise
  uplift`` compares, ``training/uplift.py``): reason codes, holdout group, exploration
  flag, propensity, model version, and the first outcome of each type its message got.
* ``outcomes.parquet``: every outcome event (``delivered`` ... ``unsubscribed``) with its
  message and campaign, so outcomes of held-out recipients (who got no message: a
  conversion arrives with the campaign only) can be counted too.

Stream entries older than the API's retention (``SENDWISE_DECISION_LOG`` settings) are
gone: export at least that often to keep a full history.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from api.keys import LOG_BUCKETS, log_key
from api.log_entry import decode_entry
from models.vocab import CHANNELS

OUTCOME_OF = {"delivered": "delivered_at", "opened": "opened_at", "clicked": "clicked_at",
              "converted": "converted_at", "unsubscribed": "unsubscribed_at"}


def read_log(client: Any, tenant: str) -> list[dict[str, str]]:
    """Every entry of the tenant's log streams (``client``: a sync redis-py client)."""
    entries: list[dict[str, str]] = []
    for bucket in range(LOG_BUCKETS):
        last = "-"
        while True:
            batch = client.xrange(log_key(tenant, bucket), min=last, max="+", count=10_000)
            if last != "-":
                batch = batch[1:]  # the inclusive start repeats the previous last entry
            if not batch:
                break
            for _, fields in batch:
                entries.append(decode_entry(fields))
            last = batch[-1][0].decode()
    return entries


def export(client: Any, tenant: str, out: Path, *, now_ms: int | None = None) -> dict[str, int]:
    """Write ``out/messages.parquet`` and ``out/activity.parquet``; returns row counts."""
    now = now_ms if now_ms is not None else int(dt.datetime.now(dt.UTC).timestamp() * 1000)
    entries = read_log(client, tenant)
    outcomes: dict[tuple[str, str], dict[str, int]] = {}
    activity: dict[str, list[Any]] = {"user_id": [], "occurred_at": [], "time_zone": [],
                                      "kind": []}
    for e in entries:
        if e.get("kind") != "event":
            continue
        if e["type"] == "activity":
            if not e.get("timezone"):
                continue
            activity["user_id"].append(e["user_id"])
            activity["occurred_at"].append(int(e["at"]))
            activity["time_zone"].append(e["timezone"])
            activity["kind"].append(e.get("event_kind") or None)
        elif e["type"] in OUTCOME_OF and e.get("message_id"):
            slot = outcomes.setdefault((e["user_id"], e["message_id"]), {})
            column, at = OUTCOME_OF[e["type"]], int(e["at"])
            slot[column] = min(slot.get(column, at), at)
    columns = ("user_id", "channel", "sent_at", "time_zone", "message_id", "category",
               "campaign", "propensity", *OUTCOME_OF.values())
    messages: dict[str, list[Any]] = {c: [] for c in columns}
    for e in entries:
        if (e.get("kind") != "decision" or e["decision"] not in ("send", "defer")
                or e["channel"] not in CHANNELS or not e["send_at"] or int(e["send_at"]) > now):
            continue
        found = outcomes.get((e["user_id"], e["message_id"]), {})
        sent = int(e["send_at"])
        row: dict[str, Any] = {"user_id": e["user_id"], "channel": e["channel"], "sent_at": sent,
               "time_zone": e["timezone"], "message_id": e["message_id"],
               "category": e["category"], "campaign": e["campaign"] or None,
               "propensity": float(e["propensity"]) if e["propensity"] else None}
        for column in OUTCOME_OF.values():
            when = found.get(column)
            row[column] = when if when is not None and when >= sent else None
        for c in columns:
            messages[c].append(row[c])
    out.mkdir(parents=True, exist_ok=True)
    # whole seconds: the schema's instants are epoch seconds (``training/schema.py``)
    ts = pa.timestamp("s")
    for column in ("sent_at", *OUTCOME_OF.values()):
        messages[column] = [None if v is None else v // 1000 for v in messages[column]]
    activity["occurred_at"] = [v // 1000 for v in activity["occurred_at"]]
    message_types = {c: ts for c in ("sent_at", *OUTCOME_OF.values())}
    pq.write_table(pa.table({c: pa.array(v, type=message_types.get(c, pa.float64()
                                                                  if c == "propensity"
                                                                  else pa.string()))
                             for c, v in messages.items()}), out / "messages.parquet")
    pq.write_table(pa.table({c: pa.array(v, type=ts if c == "occurred_at" else pa.string())
                             for c, v in activity.items()}), out / "activity.parquet")
    decided, outcome_events = write_uplift_tables(entries, out)
    return {"messages": len(messages["user_id"]), "activity": len(activity["user_id"]),
            "decisions": decided, "outcomes": outcome_events}


def write_uplift_tables(entries: list[dict[str, str]], out: Path) -> tuple[int, int]:
    """``decisions.parquet`` and ``outcomes.parquet`` (module docstring); instants in epoch
    milliseconds (UTC). Entries logged before these fields existed read as having no
    reasons and no holdout. Returns the row counts."""
    events: dict[str, list[Any]] = {"user_id": [], "type": [], "at": [], "message_id": [],
                                    "campaign": []}
    first: dict[tuple[str, str], dict[str, int]] = {}
    for e in entries:
        if e.get("kind") != "event" or e.get("type") not in OUTCOME_OF:
            continue
        at = int(e["at"])
        events["user_id"].append(e["user_id"])
        events["type"].append(e["type"])
        events["at"].append(at)
        events["message_id"].append(e.get("message_id") or None)
        events["campaign"].append(e.get("campaign") or None)
        if e.get("message_id"):
            slot = first.setdefault((e["user_id"], e["message_id"]), {})
            slot[e["type"]] = min(slot.get(e["type"], at), at)
    names = ("user_id", "message_id", "campaign", "category", "decision", "channel", "send_at",
             "decided_at", "reasons", "holdout", "exploration", "propensity", "model_version")
    rows: dict[str, list[Any]] = {c: [] for c in (*names, *OUTCOME_OF.values())}
    for e in entries:
        if e.get("kind") != "decision":
            continue
        reasons = e.get("reasons", "")
        decided_at = int(e["decided_at"])
        found = first.get((e["user_id"], e["message_id"]), {})
        values: dict[str, Any] = {
            "user_id": e["user_id"], "message_id": e["message_id"],
            "campaign": e.get("campaign") or None, "category": e["category"],
            "decision": e["decision"], "channel": e.get("channel") or None,
            "send_at": int(e["send_at"]) if e.get("send_at") else None,
            "decided_at": decided_at, "reasons": reasons, "holdout": e.get("holdout") or None,
            "exploration": "exploration" in reasons.split(","),
            "propensity": float(e["propensity"]) if e.get("propensity") else None,
            "model_version": e.get("model_version") or None}
        for kind, column in OUTCOME_OF.items():
            when = found.get(kind)
            values[column] = when if when is not None and when >= decided_at else None
        for c, v in values.items():
            rows[c].append(v)
    ms = pa.timestamp("ms", tz="UTC")
    types = {"send_at": ms, "decided_at": ms, "exploration": pa.bool_(),
             "propensity": pa.float64(), **dict.fromkeys(OUTCOME_OF.values(), ms)}
    pq.write_table(pa.table({c: pa.array(v, type=types.get(c, pa.string()))
                             for c, v in rows.items()}), out / "decisions.parquet")
    pq.write_table(pa.table({c: pa.array(v, type=ms if c == "at" else pa.string())
                             for c, v in events.items()}), out / "outcomes.parquet")
    return len(rows["user_id"]), len(events["user_id"])
