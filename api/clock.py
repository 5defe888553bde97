"""The one source of "now". Production uses the API host's clock (NTP-disciplined); tests
inject a settable clock so nothing sleeps. All API workers must share a synchronized
clock: the ledger orders reservations by these instants."""

from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    def now_ms(self) -> int: ...


class SystemClock:
    def now_ms(self) -> int:
        return time.time_ns() // 1_000_000


class FixedClock:
    """A clock tests move by hand."""

    def __init__(self, now_ms: int) -> None:
        self.value = now_ms

    def now_ms(self) -> int:
        return self.value

    def advance(self, ms: int) -> None:
        self.value += ms
