"""A deterministic synthetic tenant: policy, recipients' preferences, and decision requests.

Shared by the benchmarks and the locust scenario so every tool exercises the same traffic
shape: recipients spread over time zones (so quiet hours defer some of them whatever the
hour of the run), a few with their own limits, quiet hours, opt-outs and US-state
jurisdiction rules, and requests with several channels, campaigns, offers and deadlines.
Everything is derived from ``random.Random(seed)`` so two runs send the same population.
"""

from __future__ import annotations

import datetime as dt
import random
from typing import Any

#: (IANA zone, country, region or None); weighted toward where recipients usually are
ZONES: tuple[tuple[str, str, str | None], ...] = (
    ("America/New_York", "US", "NY"),
    ("America/New_York", "US", "FL"),
    ("America/Chicago", "US", "OK"),
    ("America/Chicago", "US", "TX"),
    ("America/Denver", "US", "CO"),
    ("America/Los_Angeles", "US", "CA"),
    ("America/Los_Angeles", "US", "WA"),
    ("America/Sao_Paulo", "BR", None),
    ("Europe/London", "GB", None),
    ("Europe/Paris", "FR", None),
    ("Europe/Berlin", "DE", None),
    ("Africa/Lagos", "NG", None),
    ("Asia/Kolkata", "IN", None),
    ("Asia/Singapore", "SG", None),
    ("Asia/Tokyo", "JP", None),
    ("Australia/Sydney", "AU", None),
)

CHANNEL_SETS: tuple[list[str], ...] = (
    ["email", "push"],
    ["push", "email"],
    ["email"],
    ["push", "email", "sms"],
    ["sms", "email"],
    ["whatsapp", "email"],
    ["in_app", "push"],
)

TAGS: tuple[str, ...] = ("sale", "newsletter", "product", "reminder", "recommendation")


def policy_document() -> dict[str, Any]:
    """The benchmark tenant's policy: the defaults plus a channel cap and an offer group,
    so the commit script evaluates several cap scopes and a conflict window per message."""
    return {
        "categories": ["transactional", "promotional", "lifecycle"],
        "exempt_categories": ["transactional"],
        "caps": [
            {"id": "promotional-daily", "limit": 3, "window_minutes": 1440,
             "scope": {"categories": ["promotional"]}},
            {"id": "promotional-weekly", "limit": 10, "window_minutes": 10080,
             "scope": {"categories": ["promotional"]}},
            {"id": "sms-calendar-day", "limit": 1, "calendar": "day",
             "scope": {"channels": ["sms"]}},
            {"id": "lifecycle-weekly", "limit": 5, "window_minutes": 10080,
             "scope": {"categories": ["lifecycle"]}},
        ],
        "quiet_hours": [{"id": "default-quiet-hours", "start": "21:00", "end": "08:00"}],
        "conflict_groups": [{"group": "*", "window_minutes": 4320},
                            {"group": "winback", "window_minutes": 10080}],
        "opt_in_only_channels": ["whatsapp"],
        "default_timezone": "UTC",
        "max_defer_minutes": 10080,
    }


def policy_document_b() -> dict[str, Any]:
    """A second tenant's different policy: stricter caps over every channel, later quiet
    hours on its own default zone, and an SMS-only quiet window (channel-scoped rules)."""
    return {
        "categories": ["transactional", "promotional", "news"],
        "exempt_categories": ["transactional"],
        "caps": [
            {"id": "any-daily", "limit": 4, "window_minutes": 1440},
            {"id": "email-daily", "limit": 2, "window_minutes": 1440,
             "scope": {"channels": ["email"]}},
            {"id": "news-calendar-day", "limit": 1, "calendar": "day",
             "scope": {"categories": ["news"]}},
        ],
        "quiet_hours": [{"id": "night", "start": "22:00", "end": "07:00"},
                        {"id": "sms-evening", "start": "19:00", "end": "09:00",
                         "channels": ["sms"]}],
        "default_timezone": "America/Chicago",
        "max_defer_minutes": 4320,
    }


def user_id(index: int) -> str:
    return f"u{index:07d}"


def preferences(index: int, seed: int = 7) -> dict[str, Any]:
    """Recipient ``index``'s preference document (a pure function of index and seed)."""
    rng = random.Random(seed * 1_000_003 + index)
    zone, country, region = ZONES[rng.randrange(len(ZONES))]
    doc: dict[str, Any] = {"timezone": zone, "country": country}
    if region is not None:
        doc["region"] = region
    channels: dict[str, dict[str, str]] = {
        "email": {"consent": "opted_out" if rng.random() < 0.03 else "opted_in"},
        "push": {"consent": "opted_in" if rng.random() < 0.6 else "unknown"},
    }
    if rng.random() < 0.4:
        channels["sms"] = {"consent": "opted_in"}
    if rng.random() < 0.2:
        channels["whatsapp"] = {"consent": "opted_in"}
    doc["channels"] = channels
    if rng.random() < 0.10:
        doc["frequency_limits"] = [{"limit": 2, "window_minutes": 1440}]
    if rng.random() < 0.10:
        doc["quiet_hours"] = [{"start": "12:00", "end": "14:00"}]
    if rng.random() < 0.03:
        doc["topic_opt_outs"] = ["sale"]
    return doc


#: share of recipients with a send-time history (the rest are new: scored from the prior)
HISTORY_SHARE = 0.5
ACTIVITY_KINDS = ("session", "visit", "purchase")


def history_events(index: int, now: dt.datetime, seed: int = 11) -> list[dict[str, Any]]:
    """Recipient ``index``'s past activity (a pure function of index, seed and ``now``):
    half of the population has 3-40 signs of life over the last 28 days, clustered around
    two habitual local hours, so their decisions are scored from a profile, not only from
    the prior; the other half has none (new recipients)."""
    rng = random.Random(seed * 1_000_003 + index)
    if rng.random() >= HISTORY_SHARE:
        return []
    habits = (rng.randrange(24), rng.randrange(24))
    out: list[dict[str, Any]] = []
    for _ in range(rng.randint(3, 40)):
        day = now - dt.timedelta(days=rng.randint(1, 28))
        hour = habits[rng.random() < 0.3] if rng.random() < 0.8 else rng.randrange(24)
        at = day.replace(hour=hour, minute=rng.randrange(60), second=0, microsecond=0)
        out.append({"type": "activity", "user_id": user_id(index), "at": iso(at),
                    "kind": ACTIVITY_KINDS[rng.randrange(len(ACTIVITY_KINDS))]})
    return out


def iso(instant: dt.datetime) -> str:
    return instant.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class RequestFactory:
    """Decision request bodies with unique message ids over ``users`` recipients.

    ``zipf`` picks recipients with a heavy head (a few very active users, the long tail
    rarely), which is what a real send stream looks like; uniform spreads them evenly.
    """

    def __init__(self, users: int, *, prefix: str, seed: int = 1, zipf: bool = False,
                 second_category: str = "lifecycle") -> None:
        self.users = users
        self.second_category = second_category
        self.prefix = prefix
        self.rng = random.Random(seed)
        self.counter = 0
        self.zipf = zipf
        self.deadline = iso(dt.datetime.now(dt.UTC) + dt.timedelta(days=2))

    def pick_user(self) -> int:
        if not self.zipf:
            return self.rng.randrange(self.users)
        # log-uniform rank ~ Zipf(s=1) over the population: with 10,000 users the top
        # recipient gets ~7% of the traffic and the top 100 half of it
        return min(int(self.users ** self.rng.random()) - 1, self.users - 1)

    def body(self) -> dict[str, Any]:
        rng = self.rng
        self.counter += 1
        body: dict[str, Any] = {
            "message_id": f"{self.prefix}-{self.counter}",
            "user_id": user_id(self.pick_user()),
            "channels": CHANNEL_SETS[rng.randrange(len(CHANNEL_SETS))],
        }
        roll = rng.random()
        if roll < 0.10:
            body["category"] = "transactional"
        elif roll < 0.25:
            body["category"] = self.second_category
        body["campaign_id"] = f"c{rng.randrange(50)}"
        if rng.random() < 0.3:
            body["tags"] = [TAGS[rng.randrange(len(TAGS))]]
        if rng.random() < 0.15:
            body["offer"] = {"id": f"o{rng.randrange(200)}",
                             "group": "winback" if rng.random() < 0.3 else f"g{rng.randrange(10)}"}
        if rng.random() < 0.2:
            body["deadline"] = self.deadline
        return body
