"""Share of the oracle's gain captured by the decisions the API serves, measured through HTTP.

``training/oracle.py`` measures a *model* offline; this measures the *service*: simulated
users (``training.simulate``: sparse shoppers and dense app users, with known ground
truth) have their activity history posted to ``POST /v1/events``; then, at the local
midnight starting one day of each user, ``POST /v1/decisions`` is asked for a promotional
message with a 24 h deadline on the user's consented channels. Each served (channel,
local hour) is valued by the ``World``'s true engagement probability minus the channel's
cost, on the oracle set's slot of that hour (``hh:30``), and
``training.oracle.evaluate_policies`` (the offline definition, reused) reports
``(served - random) / (oracle - random)``.

The policy for the measurement: no quiet hours and no caps (the oracle's slots are every
hour of the day; with quiet hours the service could not reach some of them), no
opt-in-only channels (the request lists exactly the channels the simulated user consented
to), no exploration, and channel costs equal to the simulator's (the tenant's real costs). Users
without history before their day keep the earliest instant (``min_history_events``), as
the service does.

    python -m loadtests.oracle_api                          # the heuristic serves
    python -m loadtests.oracle_api --model artifacts/model  # a model (forced) serves

It runs the real app in-process (litestar's test client: the same ASGI app, routing,
decoding and Redis scripts as ``sendwise serve``; the fixed clock is the only stand-in)
against an embedded redis-server.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from api.clock import FixedClock
from models.priors import DEFAULT_PRIORS
from models.timeutil import zone
from models.vocab import CHANNELS
from training.dataset import Candidates, Logs, featurize
from training.oracle import OracleSet, evaluate_policies, oracle_set
from training.schema import load_activity
from training.simulate import COST, SimulationConfig, World, simulate, sparse_users

I64 = npt.NDArray[np.int64]
F64 = npt.NDArray[np.float64]
EVENTS_PER_BATCH = 400


@dataclass
class Population:
    world: World
    logs: Logs
    sparse: npt.NDArray[np.bool_]  # per world user
    day_start: int  # UTC midnight of the measured day (the oracle picks each user's local day)


def build_population(out: Path, *, users: int, days: int, seed: int) -> Population:
    """Simulate ``users`` for ``days`` and keep their activity log; the measured day is the
    simulation's second-to-last."""
    config = SimulationConfig(users=users, days=days, seed=seed, sparse_share=0.5)
    simulate(config, out, progress=False)
    logs = Logs.combine(None, load_activity(out / "activity.parquet"))
    start = int(dt.datetime.fromisoformat(config.start).replace(tzinfo=dt.UTC).timestamp())
    return Population(World.load(out / "truth.npz"), logs, sparse_users(config),
                      start + (days - 2) * 86400)


def policy_body() -> dict[str, Any]:
    return {"quiet_hours": [], "caps": [], "opt_in_only_channels": [], "send_time": {
        "exploration_rate": 0.0,
        "channel_costs": {name: float(COST[i]) for i, name in enumerate(CHANNELS)}}}


def _subset(oracle: OracleSet, keep: npt.NDArray[np.bool_]) -> tuple[OracleSet, I64]:
    """The oracle set restricted to the pairs in ``keep`` (pairs renumbered)."""
    renumber = np.cumsum(keep) - 1
    rows = keep[oracle.pair]
    c = oracle.candidates
    sub = OracleSet(
        candidates=Candidates(snap_user=c.snap_user[keep], snap_at=c.snap_at[keep],
                              snapshot=renumber[c.snapshot[rows]], instant=c.instant[rows],
                              channel=c.channel[rows], category=c.category[rows],
                              zone=c.zone[rows]),
        pair=renumber[oracle.pair[rows]], world_user=oracle.world_user[rows],
        local=oracle.local[rows], n_pairs=int(keep.sum()))
    return sub, np.flatnonzero(rows)


def _expect(response: Any, status: int) -> Any:
    """The answer's JSON; a measurement must not go on past an unexpected answer."""
    if response.status_code != status:
        raise RuntimeError(f"{response.status_code}: {response.text}")
    return response.json()


def _iso(seconds: int) -> str:
    return dt.datetime.fromtimestamp(seconds, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


async def measure(client: Any, clock: FixedClock, population: Population, *,
                  max_pairs: int, seed: int) -> dict[str, Any]:
    """Post every sampled user's history, ask one decision per user-day, evaluate.

    ``client`` is an HTTP client of the app (litestar's ``AsyncTestClient`` or any
    ``httpx.AsyncClient``-like one) whose server reads ``clock``."""
    world, logs = population.world, population.logs
    oracle = oracle_set(logs, world, start=population.day_start,
                        end=population.day_start + 2 * 86400, max_pairs=max_pairs, seed=seed)
    c = oracle.candidates
    rows = featurize(logs, logs.stream(), c, DEFAULT_PRIORS)
    _expect(await client.put("/v1/policy", json=policy_body()), 200)
    activity = logs.activity
    if activity is None:
        raise ValueError("the population has no activity log")
    slot = {(int(p), int(ch), int(local % 86400) // 3600): j for j, (p, ch, local)
            in enumerate(zip(oracle.pair, c.channel, oracle.local, strict=True))}
    served = np.zeros(len(c), dtype=np.float64)
    missing = 0
    histories = []
    for p in range(oracle.n_pairs):
        user_ix = int(c.snap_user[p])
        user, zone_name = logs.users[user_ix], logs.zones[int(logs.user_zone[user_ix])]
        now = int(c.snap_at[p])  # local midnight starting the user's day
        mine = (logs.act_user == user_ix) & (activity.occurred_at < now)
        events = [{"type": "activity", "user_id": user, "at": _iso(int(t)),
                   "timezone": logs.zones[int(z)]}
                  for t, z in zip(activity.occurred_at[mine], logs.act_zone[mine],
                                  strict=True)]
        histories.append(len(events))
        clock.value = now * 1000
        for i in range(0, len(events), EVENTS_PER_BATCH):
            _expect(await client.post("/v1/events",
                                      json={"events": events[i:i + EVENTS_PER_BATCH]}), 202)
        channels = [CHANNELS[int(ch)] for ch in np.unique(c.channel[oracle.pair == p])]
        answer = _expect(await client.post("/v1/decisions", json={
            "message_id": f"oracle-{p}", "user_id": user, "channels": channels,
            "category": "promotional", "timezone": zone_name,
            "deadline": _iso(now + 86400)}), 200)
        if answer["send_at"] is None:
            missing += 1
            continue
        at = int(dt.datetime.fromisoformat(answer["send_at"]).timestamp())
        local = at + int(zone(zone_name).utcoffset(
            dt.datetime.fromtimestamp(at, dt.UTC)).total_seconds())
        j = slot.get((p, CHANNELS.index(answer["channel"]), (local % 86400) // 3600))
        if j is None:
            missing += 1
            continue
        served[j] = 1e6  # evaluate_policies' "model" picks the served slot
    result: dict[str, Any] = {"all": evaluate_policies(oracle, world, rows, served)}
    world_of_pair = np.array([int(logs.users[int(u)][1:]) for u in c.snap_user])
    sparse_pair = population.sparse[world_of_pair]
    for name, keep in (("sparse", sparse_pair), ("dense", ~sparse_pair)):
        if keep.any():
            sub, index = _subset(oracle, keep)
            result[name] = evaluate_policies(sub, world, rows[index], served[index])
    result["missing"] = missing
    result["history_events"] = {"median": float(np.median(histories)),
                                "none": int(sum(h == 0 for h in histories))}
    return result


def share(result: dict[str, Any], part: str = "all") -> float:
    """The served decisions' share of the oracle gain (``evaluate_policies``' "model")."""
    return float(result[part]["model"]["share_of_oracle_gain"])


def report(result: dict[str, Any]) -> str:
    lines = []
    for part in ("all", "dense", "sparse"):
        if part not in result:
            continue
        r = result[part]
        lines.append(f"{part:6s} pairs {int(r['_meta']['pairs']):4d}: served share of oracle "
                     f"gain {share(result, part):6.1%} (offline heuristic "
                     f"{r['heuristic']['share_of_oracle_gain']:6.1%}); value per decision "
                     f"served {r['model']['expected_value']:.4f}, random "
                     f"{r['random']['expected_value']:.4f}, oracle "
                     f"{r['oracle']['expected_value']:.4f}")
    lines.append(f"decisions without a matching slot: {result['missing']}; history events "
                 f"per user: median {result['history_events']['median']:.0f}, "
                 f"{result['history_events']['none']} users with none")
    return "\n".join(lines)


async def _run(args: argparse.Namespace) -> dict[str, Any]:
    from litestar.testing import AsyncTestClient

    from api.app import create_app
    from api.redis_server import EmbeddedRedis
    from api.settings import Settings

    with tempfile.TemporaryDirectory() as tmp, EmbeddedRedis() as server:
        population = build_population(Path(tmp) / "sim", users=args.users, days=args.days,
                                      seed=args.seed)
        clock = FixedClock(population.day_start * 1000)
        settings = Settings(redis_url=server.url, log_decisions=False, model_dir=None,
                            data_dir=str(Path(tmp) / "data"), decision_log=False,
                            rate_limit_per_second=0, log_level="warning")
        app = create_app(settings, clock=clock)
        async with AsyncTestClient(app=app) as client:
            if args.model:
                _expect(await client.post("/v1/models/reload",
                                          json={"directory": args.model, "force": True}), 200)
            return await measure(client, clock, population, max_pairs=args.pairs,
                                 seed=args.seed)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=400, help="simulated users")
    parser.add_argument("--days", type=int, default=35, help="simulated days of history")
    parser.add_argument("--pairs", type=int, default=400, help="user-days decided")
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--model", help="model directory to serve (forced); default: none")
    args = parser.parse_args(argv)
    print(report(asyncio.run(_run(args))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
