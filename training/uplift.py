"""``sendwise uplift``: what messages, and sendwise's timing, are worth, from the exported
decision log (``sendwise export``: ``decisions.parquet`` + ``outcomes.parquet``).

Two comparisons, each a randomised experiment the service ran itself:

* **Treated vs held out** (``api/holdout.py``). Holdout membership is a keyed hash of the
  recipient, so the held-out recipients are a random sample of everyone asked about. The
  unit is the recipient: per campaign (recipient x campaign: held out if their decisions
  for the campaign were suppressed with reason ``holdout``, global or campaign group), all
  campaigns pooled (recipient x campaign units), and the **global control group**
  (recipients whose decisions were held out as group ``global`` vs everyone else). A
  recipient counts as having the outcome when an outcome event of that type arrives at or
  after their first decision in the unit (within ``window`` when given), attributed to the
  campaign by the event's ``campaign`` or by a message of that campaign (any event, for the
  global group). This is intent-to-treat: treated recipients whose message was later
  suppressed by a cap or consent stay in the treated arm, exactly as their counterparts
  in the held-out arm stay there, so nothing the platform does can favour one arm.
* **Model-timed vs exploration** (``policy.send_time.exploration_rate``). Among decisions
  where exploration could happen (the model ranked more than one slot: logged propensity
  below 1), a hash of the message id picks the explored ones, so the two arms are again a
  randomised split of one population and a **plain comparison** of their outcome rates is
  unbiased. Inverse propensity weighting is what estimates a policy that did *not* run
  from the logged one (``training/evaluate.py`` does that offline); both policies compared
  here ran, so weighting would only add variance. The unit is the decision (its message's
  outcome), so a recipient with several decisions counts several times: the intervals
  are somewhat optimistic when recipients get many messages.

Intervals (no statistics dependency; each formula is tested against published values):
Wilson score interval for each rate, Newcombe's hybrid score interval (method 10, 1998)
for the absolute difference, the Katz log interval for the ratio (relative lift).
Messages of exempt categories (``--exempt-category``, transactional by default) are never
held out, so they are left out of both arms.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from statistics import NormalDist
from typing import Any

OUTCOMES = ("delivered", "opened", "clicked", "converted", "unsubscribed")


# ------------------------------------------------------------------ intervals


def z_value(confidence: float) -> float:
    """The two-sided standard normal quantile (1.959964 for 95 %)."""
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    return NormalDist().inv_cdf(0.5 + confidence / 2.0)


def wilson(k: int, n: int, z: float) -> tuple[float, float]:
    """Wilson's score interval for k successes out of n (n > 0): unlike the Wald interval
    it stays inside [0, 1] and keeps its coverage for rare outcomes (a 2 % conversion)."""
    if n <= 0 or not 0 <= k <= n:
        raise ValueError(f"need 0 <= k <= n and n > 0, got k={k}, n={n}")
    p = k / n
    denominator = 1.0 + z * z / n
    center = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1.0 - p) / n + z * z / (4 * n * n)) / denominator
    # the bounds at k = 0 and k = n are exactly 0 and 1 (rounding would leave 1e-18)
    return (0.0 if k == 0 else max(0.0, center - half),
            1.0 if k == n else min(1.0, center + half))


def newcombe(k1: int, n1: int, k2: int, n2: int, z: float) -> tuple[float, float, float]:
    """p1 - p2 with Newcombe's hybrid score interval (method 10): each rate's Wilson
    interval combined by the square-and-add rule. Good coverage down to small counts,
    where the Wald difference interval does not."""
    p1, p2 = k1 / n1, k2 / n2
    l1, u1 = wilson(k1, n1, z)
    l2, u2 = wilson(k2, n2, z)
    d = p1 - p2
    return (d, d - math.sqrt((p1 - l1) ** 2 + (u2 - p2) ** 2),
            d + math.sqrt((u1 - p1) ** 2 + (p2 - l2) ** 2))


def relative_lift(k1: int, n1: int, k0: int, n0: int,
                  z: float) -> tuple[float, float, float] | None:
    """p1 / p0 - 1 with the Katz log interval of the risk ratio; None when either arm has
    no successes (the ratio or its interval is undefined)."""
    if k1 == 0 or k0 == 0:
        return None
    ratio = (k1 / n1) / (k0 / n0)
    se = math.sqrt(1 / k1 - 1 / n1 + 1 / k0 - 1 / n0)
    return (ratio - 1.0, math.exp(math.log(ratio) - z * se) - 1.0,
            math.exp(math.log(ratio) + z * se) - 1.0)


# --------------------------------------------------------------------- report


@dataclass(frozen=True)
class Arm:
    units: int
    outcomes: int
    rate: float | None
    ci: tuple[float, float] | None


@dataclass(frozen=True)
class Lift:
    estimate: float
    ci: tuple[float, float]


@dataclass(frozen=True)
class Comparison:
    """One row: ``treated`` (or model-timed) against ``control`` (held out, or explored)."""

    name: str
    unit: str
    treated: Arm
    control: Arm
    absolute_lift: Lift | None
    relative_lift: Lift | None
    #: units whose decisions fell in both arms (the salt or a percentage changed while the
    #: campaign ran, or a merge joined two ids of different groups): left out
    excluded_mixed: int = 0


@dataclass(frozen=True)
class UpliftReport:
    outcome: str
    confidence: float
    window_seconds: int | None
    holdout: list[Comparison]
    timing: Comparison | None
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _arm(k: int, n: int, z: float) -> Arm:
    return Arm(n, k, k / n if n else None, wilson(k, n, z) if n else None)


def compare(name: str, unit: str, treated: tuple[int, int], control: tuple[int, int], z: float,
            mixed: int = 0) -> Comparison:
    """``treated``/``control``: (units with the outcome, units)."""
    (k1, n1), (k0, n0) = treated, control
    absolute = relative = None
    if n1 and n0:
        d, lo, hi = newcombe(k1, n1, k0, n0, z)
        absolute = Lift(d, (lo, hi))
        rel = relative_lift(k1, n1, k0, n0, z)
        relative = None if rel is None else Lift(rel[0], (rel[1], rel[2]))
    return Comparison(name, unit, _arm(k1, n1, z), _arm(k0, n0, z), absolute, relative, mixed)


# ----------------------------------------------------------------------- data


@dataclass
class _Unit:
    start: int
    arms: set[str] = field(default_factory=set)
    messages: set[str] = field(default_factory=set)


def _column(table: Any, name: str) -> list[Any]:
    import pyarrow as pa

    column = table.column(name)
    if pa.types.is_timestamp(column.type):
        column = column.cast(pa.int64())
    values: list[Any] = column.to_pylist()
    return values


def _has_outcome(times: Sequence[tuple[int, str | None, str | None]], start: int,
                 window_ms: int | None, campaign: str | None, messages: set[str]) -> bool:
    for at, event_campaign, message in times:
        if at < start or (window_ms is not None and at >= start + window_ms):
            continue
        if campaign is None or event_campaign == campaign or (message in messages):
            return True
    return False


def analyse(decisions: dict[str, list[Any]], outcomes: dict[str, list[Any]], *,
            outcome: str = "converted", confidence: float = 0.95,
            window_seconds: int | None = None,
            exempt_categories: Iterable[str] = ("transactional",)) -> UpliftReport:
    """The report from column dicts (the Parquet files' columns; instants in epoch ms)."""
    if outcome not in OUTCOMES:
        raise ValueError(f"unknown outcome {outcome!r}; one of {', '.join(OUTCOMES)}")
    z = z_value(confidence)
    window_ms = None if window_seconds is None else window_seconds * 1000
    exempt = set(exempt_categories)

    by_campaign: dict[tuple[str, str], _Unit] = {}
    by_user: dict[str, _Unit] = {}
    timing = {"model": [0, 0], "exploration": [0, 0]}
    outcome_column = f"{outcome}_at"
    n = len(decisions["user_id"])
    for i in range(n):
        if decisions["category"][i] in exempt:
            continue
        user, decided = decisions["user_id"][i], decisions["decided_at"][i]
        group = decisions["holdout"][i]
        campaign, message = decisions["campaign"][i], decisions["message_id"][i]
        person = by_user.setdefault(user, _Unit(decided))
        person.start = min(person.start, decided)
        person.arms.add("held_out" if group == "global" else "treated")
        if campaign:
            unit = by_campaign.setdefault((user, campaign), _Unit(decided))
            unit.start = min(unit.start, decided)
            unit.arms.add("held_out" if group else "treated")
            unit.messages.add(message)
        propensity = decisions["propensity"][i]
        if (not group and decisions["decision"][i] in ("send", "defer")
                and propensity is not None and propensity < 1.0):
            arm = timing["exploration" if decisions["exploration"][i] else "model"]
            at = decisions[outcome_column][i]
            arm[1] += 1
            if at is not None and at >= decided and (window_ms is None
                                                     or at < decided + window_ms):
                arm[0] += 1

    events: dict[str, list[tuple[int, str | None, str | None]]] = {}
    for user, kind, at, message, campaign in zip(
            outcomes["user_id"], outcomes["type"], outcomes["at"], outcomes["message_id"],
            outcomes["campaign"], strict=True):
        if kind == outcome:
            events.setdefault(user, []).append((at, campaign, message))

    per_campaign: dict[str, dict[str, list[int]]] = {}
    mixed: dict[str, int] = {}
    for (user, campaign), unit in by_campaign.items():
        if len(unit.arms) > 1:
            mixed[campaign] = mixed.get(campaign, 0) + 1
            continue
        counts = per_campaign.setdefault(campaign, {"treated": [0, 0], "held_out": [0, 0]})
        cell = counts[next(iter(unit.arms))]
        cell[1] += 1
        cell[0] += _has_outcome(events.get(user, ()), unit.start, window_ms, campaign,
                                unit.messages)
    rows: list[Comparison] = []
    pooled = {"treated": [0, 0], "held_out": [0, 0]}
    for campaign in sorted(set(per_campaign) | set(mixed)):
        counts = per_campaign.get(campaign, {"treated": [0, 0], "held_out": [0, 0]})
        for side, cell in pooled.items():
            cell[0] += counts[side][0]
            cell[1] += counts[side][1]
        (k1, n1), (k0, n0) = counts["treated"], counts["held_out"]
        rows.append(compare(campaign, "recipient", (k1, n1), (k0, n0), z, mixed.get(campaign, 0)))
    if by_campaign:
        rows.append(compare("all campaigns", "recipient x campaign",
                            (pooled["treated"][0], pooled["treated"][1]),
                            (pooled["held_out"][0], pooled["held_out"][1]), z,
                            sum(mixed.values())))
    overall = {"treated": [0, 0], "held_out": [0, 0]}
    mixed_users = 0
    for user, person in by_user.items():
        if len(person.arms) > 1:
            mixed_users += 1
            continue
        cell = overall[next(iter(person.arms))]
        cell[1] += 1
        cell[0] += _has_outcome(events.get(user, ()), person.start, window_ms, None, set())
    rows.append(compare("global control group", "recipient",
                        (overall["treated"][0], overall["treated"][1]),
                        (overall["held_out"][0], overall["held_out"][1]), z, mixed_users))
    timing_row = compare("model-timed vs exploration", "decision",
                         (timing["model"][0], timing["model"][1]),
                         (timing["exploration"][0], timing["exploration"][1]), z)
    notes = []
    if outcome in ("delivered", "opened", "clicked"):
        notes.append(f"held-out recipients get no message, so they cannot have `{outcome}`: "
                     "compare treated vs held out on `converted` (or an outcome that does not "
                     "need the message)")
    if not timing["exploration"][1]:
        notes.append("no exploration decisions (exploration_rate 0, or no decision where the "
                     "model ranked more than one slot): no timing comparison")
    return UpliftReport(outcome, confidence, window_seconds, rows, timing_row, notes)


def load(data: Path) -> tuple[dict[str, list[Any]], dict[str, list[Any]]]:
    """The columns of ``data/decisions.parquet`` and ``data/outcomes.parquet``."""
    import pyarrow.parquet as pq

    found = []
    for name in ("decisions.parquet", "outcomes.parquet"):
        path = data / name
        if not path.is_file():
            raise ValueError(f"{path} not found: run `sendwise export` (it writes "
                             "decisions.parquet and outcomes.parquet)")
        table = pq.read_table(path)
        found.append({name: _column(table, name) for name in table.column_names})
    return found[0], found[1]


# --------------------------------------------------------------------- output


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f}%"


def _arm_text(arm: Arm) -> str:
    if arm.ci is None:
        return f"{arm.outcomes}/{arm.units}"
    return (f"{arm.outcomes}/{arm.units} = {_pct(arm.rate)} "
            f"[{_pct(arm.ci[0])}, {_pct(arm.ci[1])}]")


def _lift_text(lift: Lift | None, *, points: bool) -> str:
    if lift is None:
        return "-"
    scale, unit = (100, " pp") if points else (100, "%")
    return (f"{scale * lift.estimate:+.2f}{unit} "
            f"[{scale * lift.ci[0]:+.2f}, {scale * lift.ci[1]:+.2f}]")


def format_report(report: UpliftReport) -> str:
    level = f"{100 * report.confidence:g}%"
    window = ("" if report.window_seconds is None
              else f" within {report.window_seconds} s of the first decision")
    lines = [f"outcome: {report.outcome}{window}; {level} intervals (Wilson per rate, "
             "Newcombe hybrid score for the difference, Katz log for the ratio)", ""]
    header: tuple[str, ...] = ("", "treated", "control", "absolute lift", "relative lift",
                               "mixed")
    rows: list[tuple[str, ...]] = [header]

    def add(c: Comparison) -> None:
        rows.append((c.name, _arm_text(c.treated), _arm_text(c.control),
                     _lift_text(c.absolute_lift, points=True),
                     _lift_text(c.relative_lift, points=False), str(c.excluded_mixed)))

    for comparison in report.holdout:
        add(comparison)

    def render(block: list[tuple[str, ...]]) -> list[str]:
        widths = [max(len(r[i]) for r in block) for i in range(len(header))]
        return ["  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip()
                for r in block]

    lines.append("treated vs held out (control = held out; unit: recipient, all campaigns: "
                 "recipient x campaign)")
    lines += render(rows)
    if report.timing is not None:
        rows = [("", "model-timed", "exploration", "absolute lift", "relative lift", "")]
        add(report.timing)
        rows[1] = (*rows[1][:-1], "")
        lines += ["", "model-timed vs exploration (control = exploration; unit: decision)",
                  *render(rows)]
    lines += [f"note: {note}" for note in report.notes]
    return "\n".join(lines)
