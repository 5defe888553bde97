"""A holdout experiment with a known true effect, run through the real decision engine,
so ``sendwise uplift`` can be checked against the truth (``docs/uplift.md``).

Each simulated recipient gets one message of one campaign, decided by ``api.engine.Engine``
on a real Redis with a holdout policy on. Conversion follows the ground truth: a recipient
whose message was held out converts with ``base_rate``, one who was not with
``treated_rate`` (one uniform draw per recipient, so the two potential outcomes are
coupled and the true effect is exactly ``treated_rate - base_rate``). Conversions are
posted as ``converted`` events (treated: with their message id; held out: with the
campaign only, as a platform reports a purchase of someone it never messaged), the log is
exported with ``sendwise export``'s code and analysed with ``training.uplift``.

``python -m training.simulate_uplift`` runs it on a private embedded Redis and prints the
report; the tests run a smaller instance against their own Redis fixtures.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import random
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec

from api.engine import Engine
from api.policy import Policy, validate_policy
from api.reasons import ReasonCode
from api.schemas import DecisionRequest, Event
from training.export import export
from training.uplift import UpliftReport, analyse, format_report, load

#: decisions in flight at once (the engine is async; Redis serialises them anyway)
BATCH = 64
HOUR_MS = 3_600_000


@dataclass(frozen=True)
class UpliftSimulation:
    recipients: int = 50_000
    base_rate: float = 0.04
    treated_rate: float = 0.05
    global_percent: float = 5.0
    campaign_percent: float = 10.0
    campaign: str = "spring-sale"
    #: treated recipients click their message with this chance whatever its send time:
    #: the true effect of model timing vs exploration is 0 in this world
    click_rate: float = 0.10
    seed: int = 7
    tenant: str = "uplift-demo"

    @property
    def true_effect(self) -> float:
        return self.treated_rate - self.base_rate


@dataclass(frozen=True)
class SimulationResult:
    treated: int
    held_out: int
    conversions: int
    explored: int


def _instant(ms: int) -> dt.datetime:
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC)


async def run_through_engine(engine: Engine, config: UpliftSimulation,
                             advance: Callable[[int], None]) -> SimulationResult:
    """Put the holdout policy, decide every recipient's message, then (``advance``: move
    the engine's clock by ms) post the conversions the ground truth says."""
    now = engine.clock.now_ms()
    policy = msgspec.convert({
        "quiet_hours": [],
        # recipients have no history: let the tenant prior rank the slots, so exploration
        # (and the timing comparison) happens
        "send_time": {"min_history_events": 0},
        "holdout": {"salt": f"demo-{config.seed}", "global_percent": config.global_percent,
                    "campaigns": {config.campaign: config.campaign_percent}}}, Policy)
    validate_policy(policy)
    stored = await engine.store.put_policy(config.tenant, policy, None, now)
    engine.policies.put(config.tenant, stored)

    requests = [DecisionRequest(message_id=f"{config.campaign}-{i}", user_id=f"user-{i:06d}",
                                channels=["email"], category="promotional",
                                campaign_id=config.campaign, timezone="UTC")
                for i in range(config.recipients)]
    held: list[bool] = []
    explored = 0
    for start in range(0, len(requests), BATCH):
        answers = await asyncio.gather(*(engine.decide(config.tenant, r)
                                         for r in requests[start:start + BATCH]))
        if any(r.code == ReasonCode.POLICY_STORE_UNAVAILABLE for a in answers for r in a.reasons):
            raise RuntimeError("Redis timed out: a fallback decision would blur the experiment")
        held += [any(reason.code == ReasonCode.HOLDOUT for reason in a.reasons)
                 for a in answers]
        explored += sum(any(reason.code == ReasonCode.EXPLORATION for reason in a.reasons)
                        for a in answers)

    advance(2 * HOUR_MS)
    rng = random.Random(config.seed)
    events: list[Event] = []
    for request, out in zip(requests, held, strict=True):
        if rng.random() < (config.base_rate if out else config.treated_rate):
            events.append(Event(type="converted", user_id=request.user_id,
                                at=_instant(now + HOUR_MS), campaign_id=config.campaign,
                                message_id=None if out else request.message_id))
        if not out and rng.random() < config.click_rate:
            events.append(Event(type="clicked", user_id=request.user_id,
                                at=_instant(now + HOUR_MS), campaign_id=config.campaign,
                                message_id=request.message_id, channel="email"))
    for start in range(0, len(events), 1000):
        await engine.record_events(config.tenant, events[start:start + 1000])
    return SimulationResult(treated=held.count(False), held_out=held.count(True),
                            conversions=sum(e.type == "converted" for e in events),
                            explored=explored)


def export_and_analyse(client: Any, config: UpliftSimulation, out: Path, *,
                       outcome: str = "converted") -> UpliftReport:
    export(client, config.tenant, out)
    decisions, outcomes = load(out)
    return analyse(decisions, outcomes, outcome=outcome)


def main(argv: list[str] | None = None) -> int:
    import redis

    from api.clock import FixedClock
    from api.ids import Secret
    from api.redis_client import make_redis
    from api.redis_server import EmbeddedRedis
    from api.settings import Settings
    from api.store import Store

    parser = argparse.ArgumentParser(prog="python -m training.simulate_uplift",
                                     description=__doc__.split("\n\n")[0] if __doc__ else None)
    defaults = UpliftSimulation()
    parser.add_argument("--recipients", type=int, default=defaults.recipients)
    parser.add_argument("--base-rate", type=float, default=defaults.base_rate)
    parser.add_argument("--treated-rate", type=float, default=defaults.treated_rate)
    parser.add_argument("--global-percent", type=float, default=defaults.global_percent)
    parser.add_argument("--campaign-percent", type=float, default=defaults.campaign_percent)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--out", help="export directory (default: a temporary one)")
    args = parser.parse_args(argv)
    config = UpliftSimulation(recipients=args.recipients, base_rate=args.base_rate,
                              treated_rate=args.treated_rate,
                              global_percent=args.global_percent,
                              campaign_percent=args.campaign_percent, seed=args.seed)

    with EmbeddedRedis() as server:
        # a generous timeout: on a busy machine a 0.25 s one would turn some decisions
        # into the Redis-down fallback and drop some log appends, blurring the experiment
        settings = Settings(redis_url=server.url, log_decisions=False, redis_timeout_seconds=10.0,
                            id_key=Secret(b"sendwise uplift simulation key!!"))
        clock = FixedClock(int(dt.datetime(2026, 3, 2, 15, tzinfo=dt.UTC).timestamp() * 1000))

        async def decide() -> SimulationResult:
            client = make_redis(settings)
            try:
                engine = Engine(Store(client), settings, clock)
                result = await run_through_engine(engine, config, clock.advance)
                if engine.log.failures:
                    raise RuntimeError(f"{engine.log.failures} decision log appends failed")
                return result
            finally:
                await client.aclose()

        result = asyncio.run(decide())
        sync = redis.Redis.from_url(server.url)
        try:
            with tempfile.TemporaryDirectory() as tmp:
                out = Path(args.out or tmp)
                report = export_and_analyse(sync, config, out)
                clicks = analyse(*load(out), outcome="clicked")
        finally:
            sync.close()
    print(f"{config.recipients} recipients, {result.treated} treated ({result.explored} "
          f"explored), {result.held_out} held out, {result.conversions} conversions; true "
          f"effect {100 * config.base_rate:.2f}% -> {100 * config.treated_rate:.2f}% "
          f"({100 * config.true_effect:+.2f} pp); clicks {100 * config.click_rate:.0f}% "
          "whatever the send time (true timing effect 0)\n")
    print(format_report(report))
    print("\n" + format_report(clicks))
    campaign = next(c for c in report.holdout if c.name == config.campaign)
    lift = campaign.absolute_lift
    inside = lift is not None and lift.ci[0] <= config.true_effect <= lift.ci[1]
    timing = clicks.timing.absolute_lift if clicks.timing else None
    null_inside = timing is not None and timing.ci[0] <= 0.0 <= timing.ci[1]
    print(f"\ntrue effect {100 * config.true_effect:+.2f} pp inside the campaign's interval: "
          f"{'yes' if inside else 'NO'}; true timing effect 0 inside the timing interval: "
          f"{'yes' if null_inside else 'NO'}")
    return 0 if inside and null_inside else 1


if __name__ == "__main__":
    raise SystemExit(main())
