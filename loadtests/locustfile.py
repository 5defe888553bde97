"""Locust suite: a platform's realistic traffic against sendwise, every answer checked.

One documented command runs it headless and reports (``python -m loadtests.locust_run``;
README "Load testing"); this file also works with locust's web UI:

    .venv/bin/locust -f loadtests/locustfile.py --host http://127.0.0.1:8000 --sendwise-seed

What it WRITES to the target (``--sendwise-seed``, once at test start, from the master or
local runner, never from each worker): two tenants of its own, ``<prefix>-a`` and
``<prefix>-b`` (``--sendwise-tenant-prefix``, default ``loadtest``) -- their policies
(loadtests/population.py ``policy_document`` and ``policy_document_b``: different caps and
quiet hours) and the preferences of users ``u0000000`` .. of a sample of each tenant's
recipients (``--sendwise-seed-users``; half as many for tenant b). Then, while running:
decisions (reservations), retries, outcome events, preference re-saves of seeded users, and
cancels, all in those two tenants. Nothing of any other tenant is read or written, so it
can run against a shared deployment. Tenants come from ``X-Sendwise-Tenant``; against a
service with API keys pass ``--sendwise-keys a=KEY,b=KEY`` (admin keys of two tenants).

Mix per simulated platform connection (task weights): decisions 70 (recipients from a
Zipf distribution over ``--sendwise-users``: the head hits caps and quiet hours; 7 channel
lists, 10% transactional, 15% lifecycle/news, offers, deadlines), retries of a recent
message_id 8, event batches 10 (20% activity: session/visit/purchase; outcomes: delivered ..
converted, unsubscribed), preference
reads/re-saves 5, cancels of deferred decisions 2. 70% of connections act for tenant a.

Every answer is checked (loadtests/checks.py): schema, coherence, zone and quiet hours
against what the suite set, retries identical; a wrong answer is a locust *failure* with
the reason. At test stop the timelines of each tenant's 10 busiest recipients are checked
against every cap ("cap spot check" rows; a violation also sets exit code 1).

One locust process tops out near 2,500 req/s at a full core (one uvicorn worker serves
more): use several (``--processes``) and compare the generator's CPU with the server's
(``locust_run`` prints both).
"""

from __future__ import annotations

import collections
import datetime as dt
import os
import random
import sys
import time
from pathlib import Path
from typing import Any

from locust import FastHttpUser, between, events, tag, task
from locust.env import Environment
from locust.runners import WorkerRunner

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # locust -f from anywhere

from loadtests.checks import Checker, Recipient, cap_violations, decode_timeline
from loadtests.population import (
    RequestFactory,
    iso,
    policy_document,
    policy_document_b,
    preferences,
    user_id,
)

#: tenant suffix -> (policy, the second non-exempt category of its requests, preference seed)
TENANT_SHAPES: dict[str, tuple[dict[str, Any], str, int]] = {
    "a": (policy_document(), "lifecycle", 7),
    "b": (policy_document_b(), "news", 11),
}
#: share of platform connections acting for tenant a
SHARE_A = 0.7
#: what an ``activity`` event reports (a sign of life that feeds the send-time profile)
ACTIVITY_KINDS = ("session", "visit", "purchase")
#: recipients whose timelines are cap-checked at the end, per tenant (the Zipf head)
SPOT_CHECK_USERS = 10


@events.init_command_line_parser.add_listener
def _options(parser: Any) -> None:
    parser.add_argument("--sendwise-users", type=int, default=100_000, include_in_web_ui=True,
                        help="recipient population (user ids u0000000..)")
    parser.add_argument("--sendwise-seed-users", type=int, default=2_000, include_in_web_ui=True,
                        help="recipients of tenant a with stored preferences (b: half)")
    parser.add_argument("--sendwise-seed", action="store_true", default=False,
                        help="PUT both tenants' policies and the sample's preferences at start")
    parser.add_argument("--sendwise-tenant-prefix", default="loadtest", include_in_web_ui=True,
                        help="the suite's tenants are <prefix>-a and <prefix>-b")
    parser.add_argument("--sendwise-keys", default="", include_in_web_ui=False,
                        help="a=KEY,b=KEY: API keys of the two tenants (when the service has keys)")


class Suite:
    """Per process: the tenants, their request headers, and the checker (all derived from
    the options, so master and workers agree without talking)."""

    def __init__(self, opts: Any) -> None:
        self.population = int(opts.sendwise_users)
        self.seeded = min(int(opts.sendwise_seed_users), self.population)
        keys = dict(part.split("=", 1) for part in opts.sendwise_keys.split(",") if "=" in part)
        self.tenants: dict[str, str] = {}  # suffix -> tenant name
        self.headers: dict[str, dict[str, str]] = {}
        for suffix in TENANT_SHAPES:
            tenant = f"{opts.sendwise_tenant_prefix}-{suffix}"
            self.tenants[suffix] = tenant
            self.headers[tenant] = ({"Authorization": f"Bearer {keys[suffix]}"} if keys
                                    else {"X-Sendwise-Tenant": tenant})
        recipients = {self.tenants[s]: {user_id(i): self.recipient(s, i)
                                        for i in range(self.seeded_of(s))}
                      for s in TENANT_SHAPES}
        self.checker = Checker({self.tenants[s]: TENANT_SHAPES[s][0] for s in TENANT_SHAPES},
                               recipients)

    def seeded_of(self, suffix: str) -> int:
        return self.seeded if suffix == "a" else self.seeded // 2

    @staticmethod
    def preferences(suffix: str, index: int) -> dict[str, Any]:
        return preferences(index, seed=TENANT_SHAPES[suffix][2])

    def recipient(self, suffix: str, index: int) -> Recipient:
        doc = self.preferences(suffix, index)
        return Recipient(zone=doc["timezone"], quiet_hours=doc.get("quiet_hours", []),
                         frequency_limits=doc.get("frequency_limits", []))


_suite: Suite | None = None


def suite(environment: Environment) -> Suite:
    global _suite
    if _suite is None:
        _suite = Suite(environment.parsed_options)
    return _suite


def _record(environment: Environment, name: str, started: float, error: str | None) -> None:
    environment.events.request.fire(
        request_type="CHECK", name=name, response_time=(time.perf_counter() - started) * 1000,
        response_length=0, exception=AssertionError(error) if error else None, context={})


@events.test_start.add_listener
def _seed(environment: Environment, **_: Any) -> None:
    """Seed once, from the coordinating process (gevent makes the PUTs concurrent)."""
    opts = environment.parsed_options
    if opts is None or not opts.sendwise_seed or isinstance(environment.runner, WorkerRunner):
        return
    from gevent.pool import Pool
    from locust.contrib.fasthttp import FastHttpSession
    from locust.event import EventHook

    s = suite(environment)
    # its own request event: seeding is setup, not load, and stays out of the statistics
    session = FastHttpSession((environment.host or "").rstrip("/"), EventHook(), None,
                              concurrency=32)
    failures: list[str] = []

    def put(path: str, doc: dict[str, Any], tenant: str) -> None:
        resp = session.put(path, json=doc, headers=s.headers[tenant], name="seed")
        if resp.status_code != 200:
            failures.append(f"PUT {path} ({tenant}): HTTP {resp.status_code} {resp.text[:200]}")

    t0 = time.perf_counter()
    for suffix, tenant in s.tenants.items():
        put("/v1/policy", TENANT_SHAPES[suffix][0], tenant)
    pool = Pool(32)
    for suffix, tenant in s.tenants.items():
        for i in range(s.seeded_of(suffix)):
            pool.spawn(put, f"/v1/users/{user_id(i)}/preferences", s.preferences(suffix, i), tenant)
    pool.join()
    if failures:
        environment.process_exit_code = 1
        print(f"sendwise: seeding failed ({len(failures)}): {failures[0]}", file=sys.stderr)
        if environment.runner is not None:
            environment.runner.quit()
        return
    print(f"sendwise: seeded tenants {', '.join(s.tenants.values())}: 2 policies + "
          f"{sum(s.seeded_of(x) for x in s.tenants):,} preferences in "
          f"{time.perf_counter() - t0:.1f} s", file=sys.stderr)


@events.test_stop.add_listener
def _spot_check_caps(environment: Environment, **_: Any) -> None:
    """The busiest recipients' timelines against every cap (loadtests/checks.py)."""
    if isinstance(environment.runner, WorkerRunner) or environment.parsed_options is None:
        return
    from locust.contrib.fasthttp import FastHttpSession

    s = suite(environment)
    session = FastHttpSession((environment.host or "").rstrip("/"), environment.events.request,
                              None)
    checked, violations = 0, []
    for suffix, tenant in s.tenants.items():
        policy = TENANT_SHAPES[suffix][0]
        for i in range(min(SPOT_CHECK_USERS, s.population)):
            started = time.perf_counter()
            resp = session.get(f"/v1/users/{user_id(i)}/timeline", headers=s.headers[tenant],
                               name="timeline (spot check)")
            if resp.status_code != 200 or resp.content is None:
                continue  # already counted as a failure by the session
            found = cap_violations(policy, s.checker.recipient(tenant, user_id(i)),
                                   decode_timeline(resp.content))
            checked += 1
            violations += found
            _record(environment, "cap spot check", started, "; ".join(found) or None)
    if violations:
        environment.process_exit_code = 1
    print(f"sendwise: cap spot check: {checked} timelines, {len(violations)} violations"
          + "".join(f"\n  {v}" for v in violations[:10]), file=sys.stderr)


class Platform(FastHttpUser):
    """One sending platform's connection for one tenant: decides messages (and retries some),
    reports outcomes, syncs the preference centre, cancels some deferred sends."""

    wait_time = between(0.0, 0.02)

    def on_start(self) -> None:
        s = self.suite = suite(self.environment)
        self.rng = random.Random()
        self.suffix = "a" if self.rng.random() < SHARE_A else "b"
        self.tenant = s.tenants[self.suffix]
        self.headers = s.headers[self.tenant]
        self.factory = RequestFactory(
            s.population, prefix=f"l{os.getpid()}-{id(self)}-{time.time_ns()}",
            seed=self.rng.randrange(1 << 30), zipf=True,
            second_category=TENANT_SHAPES[self.suffix][1])
        #: recent request bodies (retries), decided (user, campaign, message) for events,
        #: deferred decision ids for cancels
        self.recent: collections.deque[dict[str, Any]] = collections.deque(maxlen=50)
        self.sent: collections.deque[tuple[str, str, str]] = collections.deque(maxlen=200)
        self.deferred: collections.deque[tuple[str, str]] = collections.deque(maxlen=100)

    def _decide(self, body: dict[str, Any], *, retry: bool) -> None:
        name = "/v1/decisions (retry)" if retry else "/v1/decisions"
        with self.client.post("/v1/decisions", json=body, headers=self.headers, name=name,
                              catch_response=True) as resp:
            if resp.status_code != 200 or resp.content is None:
                resp.failure(f"HTTP {resp.status_code}: {(resp.text or '')[:200]}")
                return
            problem = self.suite.checker.check_decision(self.tenant, body, resp.content,
                                                        retry=retry)
            if problem is not None:
                resp.failure(f"wrong answer: {problem}")
                return
            if retry:
                return
            self.recent.append(body)
            answer = resp.json()
            if answer["decision"] == "send":
                self.sent.append((body["user_id"], body.get("campaign_id", ""), body["message_id"]))
            elif answer["decision"] == "defer":
                self.deferred.append((answer["decision_id"], body["message_id"]))

    @tag("decisions")
    @task(70)
    def decide(self) -> None:
        self._decide(self.factory.body(), retry=False)

    @tag("decisions")
    @task(8)
    def retry(self) -> None:
        """A platform retrying after a timeout: the same message, the same answer."""
        if self.recent:
            self._decide(self.recent[self.rng.randrange(len(self.recent))], retry=True)

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
            if self.rng.random() < 0.2:  # activity: a sign of life in the app, no message
                batch.append({"type": "activity", "user_id": uid, "at": now,
                              "kind": ACTIVITY_KINDS[self.rng.randrange(len(ACTIVITY_KINDS))]})
                continue
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
        """Seeded recipients only: their zone and quiet hours stay what the checker expects
        (a re-save may flip email consent, which changes no time rule)."""
        seeded = self.suite.seeded_of(self.suffix)
        if not seeded:
            return
        index = self.rng.randrange(seeded)
        path = f"/v1/users/{user_id(index)}/preferences"
        if self.rng.random() < 0.7:
            self.client.get(path, headers=self.headers, name="/v1/users/[id]/preferences GET")
            return
        doc = self.suite.preferences(self.suffix, index)
        if self.rng.random() < 0.5:
            doc["channels"]["email"] = {"consent": "opted_in"}
        self.client.put(path, json=doc, headers=self.headers, name="/v1/users/[id]/preferences PUT")

    @tag("cancel")
    @task(2)
    def cancel_deferred(self) -> None:
        if not self.deferred:
            return
        decision, message_id = self.deferred.popleft()
        # a cancelled message's replay carries cancelled_at: this connection retries it no more
        self.recent = collections.deque((b for b in self.recent if b["message_id"] != message_id),
                                        maxlen=self.recent.maxlen)
        self.client.post(f"/v1/decisions/{decision}/cancel", headers=self.headers,
                         name="/v1/decisions/[id]/cancel")
