"""Global priors the per-user estimates shrink toward.

A user with three events has no reliable histogram of their own; features and the
fallback ranking blend the user's counts with these population-level distributions
(empirical-Bayes style pseudo-counts, see ``models.features``). They come from the
tenant's own data: training estimates them on its training period and stores them in the
artifact's manifest, so serving (and the no-model fallback) shrinks toward exactly what
the model saw, and ``sendwise rank --model none`` estimates them from the history it is
given. Built-in rhythms are wrong for most tenants (a grocery chain peaks at 15-19 h, a
news app at 7 h), so ``DEFAULT_PRIORS`` is only for a tenant with no data at all.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from models.timeutil import HOURS_PER_WEEK
from models.vocab import CHANNELS

F64 = npt.NDArray[np.float64]


class PriorsError(ValueError):
    """Priors with the wrong shape or impossible values."""


class Priors:
    """Population engagement by local hour-of-week and per channel. Immutable by convention."""

    __slots__ = ("channel_rates", "cond_day", "derived", "hod", "how", "overall_rate")

    def __init__(self, how: F64 | list[float], channel_rates: F64 | list[float],
                 overall_rate: float) -> None:
        how_arr = np.asarray(how, dtype=np.float64)
        rates = np.asarray(channel_rates, dtype=np.float64)
        if how_arr.shape != (HOURS_PER_WEEK,) or not np.all(how_arr > 0):
            raise PriorsError("how prior must be 168 positive numbers")
        if rates.shape != (len(CHANNELS),) or not np.all((rates > 0) & (rates < 1)):
            raise PriorsError(f"channel rates must be {len(CHANNELS)} numbers in (0, 1)")
        if not 0 < overall_rate < 1:
            raise PriorsError("overall rate must be in (0, 1)")
        #: Share of engagement in each local hour-of-week (sums to 1).
        self.how: F64 = how_arr / how_arr.sum()
        #: Share by local hour-of-day (sums to 1).
        self.hod: F64 = self.how.reshape(7, 24).sum(axis=0)
        #: P(weekday | hour-of-day): spreads an hour-of-day share over the week.
        self.cond_day: F64 = self.how.reshape(7, 24) / self.hod[None, :]
        #: P(engaged | sent) per channel, and over all channels.
        self.channel_rates: F64 = rates
        self.overall_rate = float(overall_rate)
        #: Tables other modules compute from these priors once instead of per call
        #: (``models.features`` keeps its prior-only arrays here: they were recomputed
        #: for every decision). Valid because a ``Priors`` is never mutated.
        self.derived: dict[str, Any] = {}

    def to_dict(self) -> dict[str, Any]:
        return {"how": [round(float(x), 8) for x in self.how],
                "channel_rates": [round(float(x), 8) for x in self.channel_rates],
                "overall_rate": round(self.overall_rate, 8)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Priors:
        try:
            return cls(data["how"], data["channel_rates"], float(data["overall_rate"]))
        except (KeyError, TypeError) as exc:
            raise PriorsError(f"malformed priors: {exc}") from exc

    @classmethod
    def estimate(cls, how_counts: F64, channel_sends: F64, channel_engagements: F64,
                 fallback: Priors | None = None) -> Priors:
        """Priors from the tenant's population counts.

        The hour-of-week shares add one pseudo-event per bin spread *uniformly* (not
        toward a built-in rhythm), so a tenant's own data decides its rhythm as soon as it
        has a few hundred events; channel rates, which need message outcomes the tenant
        may not have yet, shrink toward ``fallback`` (default ``DEFAULT_PRIORS``).
        """
        base = fallback or DEFAULT_PRIORS
        how = np.asarray(how_counts, np.float64) + 1.0
        sends = np.asarray(channel_sends, np.float64)
        engaged = np.asarray(channel_engagements, np.float64)
        rates = (engaged + 50.0 * base.channel_rates) / (sends + 50.0)
        overall = (engaged.sum() + 50.0 * base.overall_rate) / (sends.sum() + 50.0)
        return cls(how, np.clip(rates, 1e-4, 1 - 1e-4), float(np.clip(overall, 1e-4, 1 - 1e-4)))


def _default_how() -> F64:
    """A generic human rhythm: low at night, morning/lunch/evening peaks, later weekends."""
    hours = np.arange(24, dtype=np.float64) + 0.5

    def bump(center: float, width: float) -> F64:
        d = np.abs(hours - center)
        d = np.minimum(d, 24 - d)
        result: F64 = np.exp(-0.5 * (d / width) ** 2)
        return result

    weekday = 0.05 + 0.6 * bump(8.0, 1.2) + 0.7 * bump(12.5, 1.3) + 1.0 * bump(20.5, 1.8)
    weekend = 0.05 + 0.5 * bump(10.5, 1.8) + 0.6 * bump(14.0, 2.0) + 1.0 * bump(21.0, 1.8)
    return np.concatenate([np.tile(weekday, 5), np.tile(weekend, 2)])


DEFAULT_PRIORS = Priors(_default_how(), [0.05, 0.07, 0.10, 0.12, 0.08], 0.07)
