"""Locust scenario for operators: a platform's realistic traffic against a running sendwise.

Mix per simulated client (task weights): ~85% decisions (Zipf-ish recipients: a few very
active, a long tail; several channel lists, campaigns, offers, deadlines, 10% transactional),
~10% outcome-event batches (delivered/opened/clicked, some converted and unsubscribed),
~5% preference reads and replacements, and occasional cancels of deferred decisions.
Tasks are tagged (decisions, events, preferences, cancel) so ``--tags decisions`` isolates one.

One locust process tops out near 2,500 req/s at a full core (measured on the 2-core
development box), which is less than ONE uvicorn worker serves, so always use several
locust processes to find a ceiling, and record locust's CPU beside the server's
(``top``/``pidstat``). On the 2-core box the generator and the server share the cores:
prefer ``python -m loadtests.bench_decisions`` (wrk) for ceilings, and this file for the
realistic mix and for a remote/staging target.

Run the service, then locust headless with worker processes (locust >= 2.19):

    .venv/bin/sendwise serve --port 8000 --workers 2 &
    .venv/bin/locust -f loadtests/locustfile.py --headless --host http://127.0.0.1:8000 \\
        --processes 2 -u 200 -r 50 -t 60s --sendwise-seed --sendwise-users 10000 \\
        --csv /tmp/sendwise-locust

``--sendwise-seed`` installs the benchmark policy and every recipient's preferences once at
test start (from the master/local runner, never from each worker); leave it off against a
tenant whose policy you do not want replaced. ``--processes -1`` forks one worker per core.
Point ``--host`` only at a deployment you are allowed to load.
"""

from __future__ import annotations

import collections
import datetime as dt
import json
import os
import random
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from locust import FastHttpUser, between, events, tag, task
from locust.env import Environment
from locust.runners import WorkerRunner

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # locust -f from anywhere

from loadtests.population import (
    RequestFactory,
    iso,
    policy_document,
    preferences,
    user_id,
)


@events.init_command_line_parser.add_listener
def _options(parser: Any) -> None:
    parser.add_argument("--sendwise-users", type=int, default=10_000, include_in_web_ui=True,
                        help="recipient population (user ids u0000000..)")
    parser.add_argument("--sendwise-seed", action="store_true", default=False,
                        help="PUT the benchmark policy and all preferences at test start")
    parser.add_argument("--sendwise-tenant", default="", help="X-Sendwise-Tenant header")


def _put(url: str, doc: dict[str, Any], tenant: str) -> None:
    data = json.dumps(doc).encode()
    req = urllib.request.Request(url, data=data, method="PUT",  # noqa: S310 - operator's --host
                                 headers={"Content-Type": "application/json",
                                          **({"X-Sendwise-Tenant": tenant} if tenant else {})})
    with urllib.request.urlopen(req, timeout=10) as resp:  # noqa: S310
        resp.read()


@events.test_start.add_listener
def _seed(environment: Environment, **_: Any) -> None:
    """Seed once, from the process that coordinates (locust's monkey-patched sockets make
    the urllib calls cooperative, so a gevent pool runs them concurrently)."""
    opts = environment.parsed_options
    if opts is None or not opts.sendwise_seed or isinstance(environment.runner, WorkerRunner):
        return
    from gevent.pool import Pool

    host = (environment.host or "").rstrip("/")
    tenant = opts.sendwise_tenant
    t0 = time.perf_counter()
    _put(f"{host}/v1/policy", policy_document(), tenant)
    pool = Pool(32)
    for i in range(opts.sendwise_users):
        pool.spawn(_put, f"{host}/v1/users/{user_id(i)}/preferences", preferences(i), tenant)
    pool.join()
    print(f"sendwise: seeded policy + {opts.sendwise_users:,} preferences in "
          f"{time.perf_counter() - t0:.1f} s", file=sys.stderr)


class Platform(FastHttpUser):
    """One sending platform's connection: decides messages, reports outcomes, syncs the
    preference centre, and cancels some deferred sends (a campaign was pulled)."""

    wait_time = between(0.0, 0.02)

    def on_start(self) -> None:
        opts = self.environment.parsed_options
        self.users = opts.sendwise_users if opts is not None else 10_000
        tenant = opts.sendwise_tenant if opts is not None else ""
        self.headers = {"X-Sendwise-Tenant": tenant} if tenant else {}
        self.rng = random.Random()
        self.factory = RequestFactory(self.users, prefix=f"l{os.getpid()}-{id(self)}-{time.time_ns()}",
                                      seed=self.rng.randrange(1 << 30), zipf=True)
        #: recently decided (user, campaign, message) for events; deferred ids for cancels
        self.sent: collections.deque[tuple[str, str, str]] = collections.deque(maxlen=200)
        self.deferred: collections.deque[str] = collections.deque(maxlen=100)

    @tag("decisions")
    @task(85)
    def decide(self) -> None:
        body = self.factory.body()
        with self.client.post("/v1/decisions", json=body, headers=self.headers,
                              name="/v1/decisions", catch_response=True) as resp:
            if resp.status_code != 200:
                resp.failure(f"HTTP {resp.status_code}: {(resp.text or '')[:200]}")
                return
            answer = resp.json()
            if answer["decision"] == "send":
                self.sent.append((body["user_id"], body.get("campaign_id", ""), body["message_id"]))
            elif answer["decision"] == "defer":
                self.deferred.append(answer["decision_id"])

    @tag("events")
    @task(10)
    def report_events(self) -> None:
        now = iso(dt.datetime.now(dt.UTC))
        batch: list[dict[str, Any]] = []
        for _ in range(self.rng.randint(1, 20)):
            if self.sent:
                uid, campaign, mid = self.sent[self.rng.randrange(len(self.sent))]
            else:
                uid, campaign, mid = user_id(self.factory.pick_user()), "c0", "unknown"
            roll = self.rng.random()
            kind = ("delivered" if roll < 0.6 else "opened" if roll < 0.85 else "clicked"
                    if roll < 0.96 else "converted" if roll < 0.995 else "unsubscribed")
            event: dict[str, Any] = {"type": kind, "user_id": uid, "at": now, "message_id": mid}
            if campaign:
                event["campaign_id"] = campaign
            if kind == "unsubscribed":
                event["channel"] = "email"
            batch.append(event)
        with self.client.post("/v1/events", json={"events": batch}, headers=self.headers,
                              name="/v1/events", catch_response=True) as resp:
            if resp.status_code != 202:
                resp.failure(f"HTTP {resp.status_code}: {(resp.text or '')[:200]}")

    @tag("preferences")
    @task(5)
    def preference_centre(self) -> None:
        index = self.rng.randrange(self.users)  # preference-centre visits: any recipient
        path = f"/v1/users/{user_id(index)}/preferences"
        if self.rng.random() < 0.7:
            self.client.get(path, headers=self.headers, name="/v1/users/[id]/preferences GET")
            return
        doc = preferences(index)  # the same recipient, re-saved (sometimes re-opting in)
        if self.rng.random() < 0.5:
            doc["channels"]["email"] = {"consent": "opted_in"}
        self.client.put(path, json=doc, headers=self.headers, name="/v1/users/[id]/preferences PUT")

    @tag("cancel")
    @task(1)
    def cancel_deferred(self) -> None:
        if not self.deferred:
            return
        decision = self.deferred.popleft()
        self.client.post(f"/v1/decisions/{decision}/cancel", headers=self.headers,
                         name="/v1/decisions/[id]/cancel")
