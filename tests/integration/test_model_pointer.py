"""Model pointers (api/model_pointer.py): a reload reaches every worker, tenants get their own
models over a global default, a worker that cannot load keeps its model, memory is bounded.

Two ``Engine`` objects on one Redis are two workers; each follows the pointers with its own
hand-moved monotonic clock, and ``settle()`` waits for a background load instead of time.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from api.clock import FixedClock
from api.engine import Engine
from api.keys import model_pointer_key
from api.metrics import Metrics
from api.model_pointer import TenantModels
from api.redis_client import RedisClient, make_redis
from api.scoring import ModelRefusedError
from api.settings import Settings
from api.store import Store
from models.features import HEURISTIC_VERSION
from models.scorer import Scorer
from tests.conftest import TEST_ID_KEY
from tests.integration.conftest import TENANT, req
from tests.modelkit import write_tiny_model

NOW = dt.datetime(2026, 6, 10, 16, 0, tzinfo=dt.UTC)


class Ticker:
    def __init__(self) -> None:
        self.value = 100.0

    def __call__(self) -> float:
        return self.value


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("models")
    return {name: write_tiny_model(root / name, seed=seed)
            for seed, name in enumerate(("one", "two", "three", "four"))}


def version(directory: Path) -> str:
    return Scorer.load(directory).model_version


def worker(redis_client: RedisClient, clock: FixedClock, *, capacity: int = 4,
           model_dir: str | None = None) -> tuple[Engine, Ticker]:
    settings = Settings(redis_url="unused", id_key=TEST_ID_KEY, model_dir=model_dir)
    engine = Engine(Store(redis_client), settings, clock, Metrics())
    ticker = Ticker()
    engine.tenant_models = TenantModels(engine.store, engine.models, engine.metrics,
                                        capacity=capacity, monotonic=ticker)
    return engine, ticker


async def decide(engine: Engine, message_id: str, tenant: str = TENANT) -> str | None:
    answer = await engine.decide(tenant, req(message_id=message_id))
    return answer.model_version


async def test_a_reload_reaches_every_worker(redis_client: RedisClient, clock: FixedClock,
                                            artifacts: dict[str, Path]) -> None:
    a, _ = worker(redis_client, clock)
    b, b_time = worker(redis_client, clock)
    assert await decide(b, "before") == HEURISTIC_VERSION  # b has checked the pointers
    pointer = await a.tenant_models.publish(None, artifacts["one"], force=False,
                                            set_by="test", now=NOW)
    new = version(artifacts["one"])
    assert pointer.revision == 1 and pointer.model_version == new
    assert await decide(a, "a1") == new  # the answering worker: at once
    # b re-reads the pointer only once its refresh interval has passed: no round trip
    # per decision
    assert await decide(b, "b1") == HEURISTIC_VERSION
    b_time.value += 1.0
    # the check starts the load off the event loop; this decision keeps the model in hand
    assert await decide(b, "b2") == HEURISTIC_VERSION
    await b.tenant_models.settle()
    assert await decide(b, "b3") == new
    model, scope, seen, error = b.tenant_models.info(TENANT)
    assert (model.version, scope, error) == (new, "global", None)
    assert seen is not None and seen.revision == 1 and seen.set_by == "test"
    assert seen.directory == str(artifacts["one"].absolute())
    assert f'sendwise_model_info{{model_version="{new}"}} 1.0' in b.metrics.scrape().decode()

    # a restarted worker finds the pointer where it was left
    c, _ = worker(redis_client, clock, model_dir=str(artifacts["two"]))
    assert c.tenant_models.peek(TENANT).version == version(artifacts["two"])  # startup
    await c.tenant_models.model_for(TENANT)
    await c.tenant_models.settle()
    assert await decide(c, "c1") == new  # the global pointer beats the startup default


async def test_a_tenant_scores_with_its_model_else_the_global_else_the_startup_default(
        redis_client: RedisClient, clock: FixedClock, artifacts: dict[str, Path]) -> None:
    startup = version(artifacts["three"])
    a, a_time = worker(redis_client, clock, model_dir=str(artifacts["three"]))
    assert await decide(a, "s1") == startup
    assert await decide(a, "s2", tenant="other") == startup
    await a.tenant_models.publish(TENANT, artifacts["one"], force=False, set_by="t", now=NOW)
    assert await decide(a, "t1") == version(artifacts["one"])
    assert await decide(a, "t2", tenant="other") == startup
    await a.tenant_models.publish(None, artifacts["two"], force=False, set_by="g", now=NOW)
    assert await decide(a, "t3") == version(artifacts["one"])
    assert await decide(a, "t4", tenant="other") == version(artifacts["two"])
    # deleting a tenant's pointer returns it to the global model at the next check
    await redis_client.delete(model_pointer_key(TENANT))
    a_time.value += 1.0
    assert await decide(a, "t5") == version(artifacts["two"])


async def test_a_pointer_cleared_and_written_again_between_two_checks_is_seen(
        redis_client: RedisClient, clock: FixedClock, artifacts: dict[str, Path]) -> None:
    """Redis restarts a deleted hash's revision at 1: workers compare the pointer's id,
    unique per write, so a worker that missed the clear still sees the new model."""
    a, _ = worker(redis_client, clock)
    b, b_time = worker(redis_client, clock)
    first = await a.tenant_models.publish(TENANT, artifacts["one"], force=False, set_by="t",
                                          now=NOW)
    await b.tenant_models.model_for(TENANT)
    await b.tenant_models.settle()
    assert b.tenant_models.peek(TENANT).version == version(artifacts["one"])
    await a.tenant_models.clear(TENANT)
    assert a.tenant_models.peek(TENANT).version == HEURISTIC_VERSION  # at once, here
    second = await a.tenant_models.publish(TENANT, artifacts["two"], force=False,
                                           set_by="t", now=NOW)
    assert first.revision == second.revision == 1 and first.id != second.id
    b_time.value += 1.0
    await b.tenant_models.model_for(TENANT)
    await b.tenant_models.settle()
    assert b.tenant_models.peek(TENANT).version == version(artifacts["two"])


async def test_a_worker_that_cannot_load_the_pointed_model_keeps_its_own(
        redis_client: RedisClient, clock: FixedClock, artifacts: dict[str, Path],
        tmp_path: Path) -> None:
    a, _ = worker(redis_client, clock)
    b, b_time = worker(redis_client, clock)
    moving = write_tiny_model(tmp_path / "moving", seed=7)
    await a.tenant_models.publish(None, moving, force=False, set_by="t", now=NOW)
    # on b's host the directory now holds another model than the pointer names
    write_tiny_model(moving, seed=8)
    await b.tenant_models.model_for(TENANT)
    await b.tenant_models.settle()
    model, scope, _, error = b.tenant_models.info(TENANT)
    assert (model.version, scope) == (HEURISTIC_VERSION, "startup")
    assert error is not None and "pointer names" in error
    assert "sendwise_model_refused_total 1.0" in b.metrics.scrape().decode()
    # the same revision is not retried on every check
    b_time.value += 1.0
    await b.tenant_models.model_for(TENANT)
    await b.tenant_models.settle()
    assert "sendwise_model_refused_total 1.0" in b.metrics.scrape().decode()

    # a good global model, then a tenant pointer to a corrupt file: the tenant keeps the
    # global model it was scoring with
    await a.tenant_models.publish(None, artifacts["one"], force=False, set_by="t", now=NOW)
    broken = write_tiny_model(tmp_path / "broken", seed=9)
    await a.tenant_models.publish(TENANT, broken, force=False, set_by="t", now=NOW)
    (broken / "model.txt").write_text("tree\nnot a model\n")
    b_time.value += 1.0
    await b.tenant_models.model_for(TENANT)
    await b.tenant_models.settle()
    assert await decide(b, "kept") == version(artifacts["one"])
    assert "checksum" in (b.tenant_models.info(TENANT)[3] or "")
    # a refused reload publishes nothing
    with pytest.raises(ModelRefusedError):
        await a.tenant_models.publish(None, broken, force=True, set_by="t", now=NOW)
    assert int(await redis_client.hget(model_pointer_key(None), "rev") or 0) == 2


async def test_a_worker_holds_at_most_its_capacity_of_models(
        redis_client: RedisClient, clock: FixedClock, artifacts: dict[str, Path]) -> None:
    a, _ = worker(redis_client, clock)
    b, b_time = worker(redis_client, clock, capacity=2)
    tenants = {f"t{i}": artifacts[name] for i, name in enumerate(("one", "two", "three"))}
    for tenant, directory in tenants.items():
        await a.tenant_models.publish(tenant, directory, force=False, set_by="t", now=NOW)
    for round_ in range(3):
        b_time.value += 1.0
        for tenant in tenants:
            await b.tenant_models.model_for(tenant)
            await b.tenant_models.settle()
            assert b.tenant_models.models_held <= 2
            assert await decide(b, f"m{round_}", tenant) == version(tenants[tenant])
    # the evicted tenant scores with the global model (here: the heuristic) until its
    # next check reloads it
    assert b.tenant_models.peek("t0").version == HEURISTIC_VERSION


async def test_concurrent_decisions_and_reloads_each_see_one_whole_model(
        redis_client: RedisClient, clock: FixedClock, artifacts: dict[str, Path]) -> None:
    a, a_time = worker(redis_client, clock)
    b, b_time = worker(redis_client, clock)
    old, new = version(artifacts["one"]), version(artifacts["two"])
    await a.tenant_models.publish(None, artifacts["one"], force=False, set_by="t", now=NOW)
    results = await asyncio.gather(
        *(decide(a, f"d{i}") for i in range(40)),
        a.tenant_models.publish(None, artifacts["two"], force=False, set_by="a", now=NOW),
        b.tenant_models.publish(None, artifacts["three"], force=False, set_by="b", now=NOW),
        *(decide(b, f"e{i}") for i in range(40)))
    versions = {r for r in results if isinstance(r, str)}
    assert versions <= {HEURISTIC_VERSION, old, new, version(artifacts["three"])}
    revisions = sorted(r.revision for r in results if not isinstance(r, str | None))
    assert revisions == [2, 3]  # Redis numbered the two writes; neither was lost
    # at their next check both workers end on the pointer's last revision
    for engine, ticker in ((a, a_time), (b, b_time)):
        ticker.value += 1.0
        await engine.tenant_models.model_for(TENANT)
        await engine.tenant_models.settle()
    last = next(r for r in results if not isinstance(r, str | None) and r.revision == 3)
    assert a.tenant_models.peek(TENANT).version == last.model_version
    assert b.tenant_models.peek(TENANT).version == last.model_version


_TINY: dict[str, Path] = {}


def tiny(name: str) -> Path:
    """Three tiny artifacts shared by every hypothesis example (trained once)."""
    if not _TINY:
        root = Path(tempfile.mkdtemp(prefix="sendwise-pointer-"))
        for seed, n in enumerate(("m0", "m1", "m2")):
            _TINY[n] = write_tiny_model(root / n, seed=seed + 20)
    return _TINY[name]


_steps = st.lists(st.tuples(st.sampled_from(["publish", "check", "clear"]),
                            st.sampled_from([None, "t0", "t1", "t2"]),
                            st.sampled_from(["m0", "m1", "m2"])), min_size=1, max_size=12)


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(steps=_steps, capacity=st.integers(2, 3))
async def test_every_worker_settles_on_the_latest_pointers_within_its_capacity(
        redis_settings: Settings, steps: list[tuple[str | None, str | None, str]],
        capacity: int) -> None:
    """Any interleaving of reloads, clears (on either worker) and checks: a worker never holds more
    than its capacity, and once it has checked and settled, each tenant scores with its own
    latest pointed model, else the latest global one, else the startup default.

    A client of its own per example: each store's auto-pipeline keeps one of its client's
    connections for as long as the client lives, so examples sharing the test's client ran
    its pool dry after a few dozen (``No connection available``, then a pointer check that
    failed and left a worker on an older model)."""
    redis_client = make_redis(redis_settings)
    try:
        await check_interleaving(redis_client, steps, capacity)
    finally:
        await redis_client.aclose()


async def check_interleaving(redis_client: RedisClient,
                             steps: list[tuple[str | None, str | None, str]],
                             capacity: int) -> None:
    await redis_client.flushdb()
    clock = FixedClock(0)
    pair = [worker(redis_client, clock, capacity=capacity) for _ in range(2)]
    latest: dict[str | None, str] = {}
    for i, (op, scope, name) in enumerate(steps):
        engine, ticker = pair[i % 2]
        if op == "publish":
            await engine.tenant_models.publish(scope, tiny(name), force=False, set_by="p",
                                               now=NOW)
            latest[scope] = name
        elif op == "clear":
            await engine.tenant_models.clear(scope)
            latest.pop(scope, None)
        else:
            ticker.value += 1.0
            await engine.tenant_models.model_for(scope)
            await engine.tenant_models.settle()
        assert engine.tenant_models.models_held <= capacity
    for engine, ticker in pair:
        for tenant in ("t0", "t1", "t2"):
            ticker.value += 1.0
            await engine.tenant_models.model_for(tenant)
            await engine.tenant_models.settle()
            got = engine.tenant_models.peek(tenant)
            name = latest.get(tenant) or latest.get(None)
            assert got.version == (version(tiny(name)) if name else HEURISTIC_VERSION)
            assert engine.tenant_models.models_held <= capacity
