"""The optimised scoring path (api/scoring.py: ``slot_instants``, ``score_slots``,
``choose``) pinned to the straightforward code it replaced: for any plan (channels, quiet
hours, zone, not_before/deadline), profile (none, empty, with history), send-time settings
(horizon, margin, exploration, value floor, history threshold, prices, fatigue), either
``channel_selection`` and any kind of scorer (the heuristic, a row-wise classifier, a
ranker), the ranked plan, the annotations and the notes are byte-for-byte those of the
reference below. The reference is deliberately naive: one numpy mask per block,
``utc_offsets`` per hour grid, numpy scalars and ``round`` per field, as the module was
before its hot path was tightened."""

from __future__ import annotations

import datetime as dt
import hashlib
from typing import Any
from zoneinfo import ZoneInfo

import msgspec
import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import api.scoring as scoring
from api.plan import Candidate, Plan
from api.policy import Policy
from api.reasons import ReasonCode
from api.scoring import HEURISTIC, SOURCE_PRIOR, SOURCE_PROFILE, ActiveModel, Choice
from models.features import FEATURE_INDEX, candidate_features, fallback_scores
from models.priors import DEFAULT_PRIORS
from models.profile import Profile
from models.scorer import Scorer
from models.timeutil import utc_offsets
from models.vocab import CHANNELS
from tests.modelkit import write_tiny_model
from tests.unit.test_plan import NOON, location, plan_for, request

HOUR_MS = 3_600_000
I64 = npt.NDArray[np.int64]
_json = msgspec.json.Encoder()


# ----------------------------------------------------------------- the reference


def ref_slot_instants(plan: Plan, cand: Candidate, zone_name: str, horizon_ms: int) -> I64:
    end = min(cand.b, cand.a + horizon_ms)
    tz = ZoneInfo(zone_name)
    offset = int(utc_offsets(tz, np.array([cand.a // 1000], dtype=np.int64))[0]) * 1000
    first = ((cand.a + offset) // HOUR_MS + 1) * HOUR_MS - offset
    hours = np.arange(first, end, HOUR_MS, dtype=np.int64)
    if hours.size:
        hours = hours + (offset - utc_offsets(tz, hours // 1000) * 1000)
    ends = [e for block in plan.blocks_of(cand) for _, e in block.iv if cand.a < e < end]
    instants = np.unique(np.concatenate([np.array([cand.a, *ends], dtype=np.int64), hours]))
    instants = instants[(instants >= cand.a) & (instants < end)]
    mask = np.zeros(instants.shape[0], dtype=np.bool_)
    for block in plan.blocks_of(cand):
        if block.iv:
            iv = np.asarray(block.iv, dtype=np.int64)
            mask |= ((instants[:, None] >= iv[None, :, 0])
                     & (instants[:, None] < iv[None, :, 1])).any(axis=1)
    result: I64 = instants[~mask]
    return result


def ref_score(model: ActiveModel, plan: Plan, profile: Profile | None, zone_name: str,
              policy: Policy, now: int) -> dict[str, Any]:
    st_ = policy.send_time
    per = [ref_slot_instants(plan, c, zone_name, st_.horizon_minutes * 60_000)
           for c in plan.cands]
    per = [s if s.size else np.array([c.a], dtype=np.int64) for s, c in zip(per, plan.cands,
                                                                          strict=True)]
    cand = np.concatenate([np.full(s.size, i, dtype=np.intp) for i, s in enumerate(per)])
    at = np.concatenate(per)
    first = np.concatenate([np.arange(s.size) == 0 for s in per])
    channels = [c.ch for c in plan.cands]
    ch_model = np.array([scoring.model_channel(c) for c in channels], dtype=np.int64)[cand]
    rows = candidate_features(profile or Profile(), now=now // 1000, channels=ch_model,
                              instants=at // 1000, zone_name=zone_name, priors=model.priors,
                              category="promotional")
    scorer = model.scorer
    if scorer is None:
        p = fallback_scores(rows)
    elif not scorer.is_ranker:
        p = np.clip(scorer.score(rows), 0.0, 1.0)
    else:
        raw = scorer.score(rows)
        heuristic = rows[:, FEATURE_INDEX["heuristic_share"]].astype(np.float64)
        rate = rows[:, FEATURE_INDEX["ch_rate"]].astype(np.float64)
        p = np.empty_like(raw)
        for i in range(len(plan.cands)):
            sel = cand == i
            dist = scorer.day_distribution(raw[sel][None, :], heuristic[sel][None, :])[0]
            p[sel] = np.clip(rate[sel] * dist * sel.sum(), 0.0, 1.0)
    values_of = {str(k): v for k, v in st_.channel_values.items()}
    costs_of = {str(k): v for k, v in st_.channel_costs.items()}
    values = np.array([values_of.get(c, 1.0) for c in channels])[cand]
    costs = np.array([costs_of.get(c, 0.0) for c in channels])[cand]
    recent = rows[:, FEATURE_INDEX["sends_24h"]].astype(np.float64)
    ev = p * values - costs - st_.fatigue_cost * recent
    events = float(profile.counts.sum()) if profile is not None else 0.0
    sends = float(profile.sends.sum()) if profile is not None else 0.0
    return {"cand": cand, "at": at, "p": p, "ev": ev, "first": first,
            "source": SOURCE_PROFILE if events + sends > 0 else SOURCE_PRIOR}


def _unit(message_id: str, salt: str) -> float:
    digest = hashlib.sha256(f"{salt}\x1f{message_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def ref_choose(model: ActiveModel, plan: Plan, profile: Profile | None, *, zone_name: str,
               message_id: str, exempt: bool, policy: Policy, now: int,
               selection: str) -> Choice:
    if not plan.cands:
        return Choice(plan, [], model.version, SOURCE_PRIOR)
    ordered = selection == "ordered"
    s = ref_score(model, plan, profile, zone_name, policy, now)
    cand, at, p, ev, first = s["cand"], s["at"], s["p"], s["ev"], s["first"]
    st_ = policy.send_time
    now_p = {i: float(p[(cand == i) & first][0]) for i in range(len(plan.cands))}
    events = float(profile.counts.sum()) if profile is not None else 0.0
    rate = st_.exploration_rate if not exempt else 0.0
    n = at.size
    pool = np.flatnonzero(cand == 0) if ordered else np.arange(n)
    n_pool = int(pool.size)
    explores = rate > 0 and _unit(message_id, "explore") < rate
    new_user = exempt or events < st_.min_history_events
    below = None
    if st_.min_expected_value is not None and not exempt:
        eligible = np.flatnonzero(first) if new_user else np.arange(n)
        best = int(eligible[np.argmax(ev[eligible])])
        if ev[best] < st_.min_expected_value:
            below = best
    if below is not None and not explores:
        note = (round(float(p[below]), 6), round(now_p[int(cand[below])], 6),
                round(1.0 - rate, 6))
        empty = msgspec.structs.replace(plan, cands=[])
        return Choice(empty, [], model.version, s["source"], suppressed=note)
    propensity = np.zeros(n)
    propensity[pool] = rate / n_pool
    if new_user:
        greedy = int(np.lexsort((at, cand, ~first))[0] if ordered
                     else np.lexsort((cand, at, ~first))[0])
        if not explores:
            kept = round(1.0 - rate + rate / n_pool, 6)
            notes = [_json.encode([round(now_p[i], 6), round(now_p[i], 6), kept])
                     for i in range(len(plan.cands))]
            kept_plan = msgspec.structs.replace(plan, mode="first") if ordered else plan
            return Choice(kept_plan, notes, model.version, s["source"])
        chronological = pool[np.lexsort((cand[pool], at[pool]))]
        explored = int(chronological[min(int(_unit(message_id, "slot") * n_pool), n_pool - 1)])
        if below is None:
            propensity[greedy] += 1.0 - rate
        order = np.array([explored])
    else:
        adjusted = np.where(first, ev + st_.margin * np.abs(ev), ev)
        order = (np.lexsort((at, -adjusted, cand)) if ordered
                 else np.lexsort((cand, at, -adjusted)))
        if below is None:
            propensity[int(order[0])] += 1.0 - rate
        explored = -1
        if explores:
            explored = int(order[min(int(_unit(message_id, "slot") * n_pool), n_pool - 1)])
            order = np.concatenate([[explored], order[order != explored]])
    slots: list[Candidate] = []
    notes = []
    rule = f"send_time.model:{model.version}"
    fallback = [_json.encode([round(now_p[i], 6), round(now_p[i], 6), 1.0])
                for i in range(len(plan.cands))]
    groups = ([[j for j in order.tolist() if cand[j] == i] for i in range(len(plan.cands))]
              if ordered else [order.tolist()])
    for i, group in enumerate(groups):
        for j in group:
            window = plan.cands[int(cand[j])]
            t = int(at[j])
            why = ([ReasonCode.EXPLORATION.value, "policy.send_time.exploration_rate"]
                   if j == explored else [] if first[j]
                   else [ReasonCode.BETTER_SEND_TIME.value, rule])
            slots.append(Candidate(window.ch, t, t + 1, window.pb, s=1, why=why))
            notes.append(_json.encode([round(float(p[j]), 6), round(now_p[int(cand[j])], 6),
                                       round(float(propensity[j]), 6)]))
        if ordered:
            slots.append(msgspec.structs.replace(plan.cands[i], s=1))
            notes.append(fallback[i])
    ranked = msgspec.structs.replace(plan, cands=[*slots, *plan.cands], mode="ranked")
    return Choice(ranked, [*notes, *fallback], model.version, s["source"])


# ------------------------------------------------------------------ the property


class RowWise:
    """A classifier stand-in: each row's score depends on that row alone (like LightGBM's
    binary models), computed with exact arithmetic only (no SIMD-dependent ``exp``)."""

    is_ranker = False

    def score(self, rows: npt.NDArray[np.float32]) -> npt.NDArray[np.float64]:
        x = (rows[:, FEATURE_INDEX["heuristic_share"]].astype(np.float64)
             * rows[:, FEATURE_INDEX["ch_rate"]] + 0.01 * rows[:, FEATURE_INDEX["sends_24h"]])
        result: npt.NDArray[np.float64] = x / (1.0 + x)
        return result


class WindowRanker(RowWise):
    """A ranker stand-in: its P of a slot depends on the window's other slots."""

    is_ranker = True

    def day_distribution(self, raw: npt.NDArray[np.float64], heuristic: npt.NDArray[np.float64]
                         ) -> npt.NDArray[np.float64]:
        weights = raw + 0.5 * heuristic
        result: npt.NDArray[np.float64] = weights / weights.sum(axis=1, keepdims=True)
        return result

    def window_distribution(self, raw: npt.NDArray[np.float64],
                            heuristic: npt.NDArray[np.float64], heads: npt.NDArray[np.intp],
                            sizes: npt.NDArray[np.intp]) -> npt.NDArray[np.float64]:
        """Its ``day_distribution`` window by window (``Scorer.window_distribution``'s
        contract; tests/models/test_scorer_windows.py pins the real one to the loop)."""
        out = np.empty_like(raw)
        for lo, size in zip(heads.tolist(), sizes.tolist(), strict=True):
            sel = slice(lo, lo + size)
            out[sel] = self.day_distribution(raw[sel][None, :], heuristic[sel][None, :])[0]
        return out


RANKER = ActiveModel(WindowRanker(), "ranker-1", DEFAULT_PRIORS)  # type: ignore[arg-type]
ROW_WISE = ActiveModel(RowWise(), "rowwise-1", DEFAULT_PRIORS)  # type: ignore[arg-type]


def iso(ms: int) -> str:
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).isoformat()


def user_profile(events: int, sends: int, seed: int) -> Profile:
    rng = np.random.default_rng(seed)
    now_s = NOON // 1000
    profile = Profile()
    for _ in range(events):
        profile.record_activity(now_s - int(rng.uniform(3600, 40 * 86400)),
                                int(rng.integers(0, 168)))
    for _ in range(sends):
        at = now_s - int(rng.uniform(600, 5 * 86400))
        channel = int(rng.integers(0, len(CHANNELS)))
        profile.record_send(at, channel)
        if rng.random() < 0.4:
            profile.record_engagement(at + 600, channel, int(rng.integers(0, 168)))
    return profile


ZONES = ("America/New_York", "Europe/Berlin", "Asia/Kolkata", "Australia/Lord_Howe", "UTC")
HHMM = st.sampled_from(["00:00", "06:30", "08:00", "09:15", "12:00", "20:00", "21:45", "23:00"])
API_CHANNELS = ["email", "push", "sms", "in_app", "web_push", "whatsapp"]


@st.composite
def cases(draw: st.DrawFn) -> dict[str, Any]:
    channels = draw(st.lists(st.sampled_from(API_CHANNELS), min_size=1, max_size=4,
                             unique=True))
    zone = draw(st.sampled_from(ZONES))
    # around NOON and around the 2026 DST changes (the hour grid moves there)
    now = draw(st.sampled_from([NOON, 1_774_746_000_000, 1_792_890_000_000,
                                1_772_928_000_000])) + draw(st.integers(0, 86_400_000))
    quiet = [{"id": f"q{i}", "start": draw(HHMM), "end": draw(HHMM),
              "channels": draw(st.lists(st.sampled_from(channels), max_size=2, unique=True))}
             for i in range(draw(st.integers(0, 2)))]
    quiet = [q for q in quiet if q["start"] != q["end"]]
    send_time: dict[str, Any] = {
        "horizon_minutes": draw(st.sampled_from([60, 90, 600, 1440, 2880])),
        "margin": draw(st.sampled_from([0.0, 0.1, 0.5])),
        "min_history_events": draw(st.sampled_from([0, 1, 5, 50])),
        "exploration_rate": draw(st.sampled_from([0.0, 0.05, 0.5, 1.0])),
        "fatigue_cost": draw(st.sampled_from([0.0, 0.01, 0.2])),
        "channel_costs": {"sms": draw(st.sampled_from([0.0, 0.005, 0.3]))},
        "channel_values": {"email": draw(st.sampled_from([1.0, 2.0]))},
    }
    floor = draw(st.sampled_from([None, 0.0, 0.01, 0.05, 0.3]))
    if floor is not None:
        send_time["min_expected_value"] = floor
    window: dict[str, Any] = {}
    if draw(st.booleans()):
        window["not_before"] = iso(now + draw(st.integers(-2, 30)) * HOUR_MS)
    if draw(st.booleans()):
        window["deadline"] = iso(now + draw(st.integers(1, 72)) * HOUR_MS + 7_000)
    return {"channels": channels, "zone": zone, "now": now, "quiet": quiet,
            "send_time": send_time, "window": window,
            "profile": draw(st.sampled_from([None, (0, 0), (3, 2), (40, 12), (200, 30)])),
            "seed": draw(st.integers(0, 5)),
            "message_id": f"m{draw(st.integers(0, 60))}",
            "exempt": draw(st.booleans()),
            "selection": draw(st.sampled_from(["best", "ordered"])),
            "model": draw(st.sampled_from([HEURISTIC, ROW_WISE, RANKER]))}


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cases())
def test_choose_equals_the_reference(case: dict[str, Any]) -> None:
    pol = msgspec.convert({"quiet_hours": case["quiet"], "caps": [],
                           "send_time": case["send_time"]}, Policy)
    fields: dict[str, Any] = {"channels": case["channels"], "timezone": case["zone"],
                              **case["window"]}
    req = request(**fields)
    plan = plan_for(req, pol, loc=location(case["zone"]), now=case["now"])
    profile = None
    if case["profile"] is not None:
        events, sends = case["profile"]
        profile = user_profile(events, sends, case["seed"])
    kwargs: dict[str, Any] = {"zone_name": case["zone"], "message_id": case["message_id"],
                              "exempt": case["exempt"], "policy": pol, "now": case["now"],
                              "selection": case["selection"]}
    got = scoring.choose(case["model"], plan, profile, category="promotional", **kwargs)
    want = ref_choose(case["model"], plan, profile, **kwargs)
    assert msgspec.json.encode(got.plan) == msgspec.json.encode(want.plan)
    assert got.plan == want.plan
    assert got.annotations == want.annotations
    assert (got.version, got.source, got.suppressed) == (want.version, want.source,
                                                         want.suppressed)
    for window in plan.cands:
        for horizon in (60, 1440):
            assert np.array_equal(
                scoring.slot_instants(plan, window, case["zone"], horizon * 60_000),
                ref_slot_instants(plan, window, case["zone"], horizon * 60_000))


def test_the_memoised_hour_grid_is_read_only_and_shared() -> None:
    plan = plan_for(request(), now=NOON)
    once = scoring.slot_instants(plan, plan.cands[0], "America/New_York", 86_400_000)
    again = scoring.slot_instants(plan, plan.cands[0], "America/New_York", 86_400_000)
    assert np.array_equal(once, again)
    once[:] = 0  # the caller's copy, never the memo
    assert np.array_equal(again, ref_slot_instants(plan, plan.cands[0], "America/New_York",
                                                   86_400_000))
    assert all(not grid.flags.writeable for grid, _, _ in scoring._HOUR_GRIDS.values())



# ------------------------------------------------- a real LightGBM model, memoised grids


@pytest.fixture(scope="module")
def lightgbm_models(tmp_path_factory: pytest.TempPathFactory) -> tuple[ActiveModel, ...]:
    """A tiny real LightGBM classifier, and the same trees read as a ranker (calibration
    weights set), each as the serving registry would hold it."""
    directory = write_tiny_model(tmp_path_factory.mktemp("lgbm") / "m", seed=9)
    classifier = Scorer.load(directory, num_threads=1)
    ranker = Scorer.load(directory, num_threads=1)
    ranker.manifest = msgspec.structs.replace(ranker.manifest, objective="rank_xendcg",
                                              score_weight=0.8, heuristic_weight=0.5)
    return (ActiveModel(classifier, "lgbm-binary", classifier.priors),
            ActiveModel(ranker, "lgbm-ranker", ranker.priors))


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=cases(), which=st.integers(0, 1))
def test_score_slots_with_lightgbm_equals_the_reference(
        lightgbm_models: tuple[ActiveModel, ...], case: dict[str, Any], which: int) -> None:
    """Scores and expected values of every slot, with a real model: the blank-profile grid
    memo (shared by every example, so later examples hit what earlier ones stored, across
    zones, channels and plans), the direct prediction call and the one-pass ranker
    calibration against the plain per-window computation."""
    model = lightgbm_models[which]
    pol = msgspec.convert({"quiet_hours": case["quiet"], "caps": [],
                           "send_time": case["send_time"]}, Policy)
    req = request(channels=case["channels"], timezone=case["zone"], **case["window"])
    plan = plan_for(req, pol, loc=location(case["zone"]), now=case["now"])
    if not plan.cands:
        return
    profile = None if case["profile"] is None else user_profile(*case["profile"], case["seed"])
    for _ in range(2):  # the second call reads the memo the first one filled
        got = scoring.score_slots(model, plan, profile, zone_name=case["zone"],
                                  category="promotional", policy=pol, now=case["now"])
        want = ref_score(model, plan, profile, case["zone"], pol, case["now"])
        assert np.array_equal(got.cand, want["cand"]) and np.array_equal(got.at, want["at"])
        assert np.array_equal(got.first, want["first"])
        np.testing.assert_allclose(got.p, want["p"], rtol=1e-12, atol=1e-15)
        np.testing.assert_allclose(got.ev, want["ev"], rtol=1e-12, atol=1e-15)
        assert got.source == want["source"]


def test_the_blank_profile_memo_is_per_model_and_keyed_by_zone() -> None:
    """A model's memos live on it (a new model starts empty), and their keys carry the
    zone, the grid or second, the channel and the category bucket: another zone never
    reads them."""
    model = ActiveModel(RowWise(), "rowwise-memo", DEFAULT_PRIORS)  # type: ignore[arg-type]
    assert model.blank_grid_scores == {} and model.blank_row_scores == {}
    plan = plan_for(request(channels=["email", "push"]), now=NOON)
    policy = msgspec.convert({"caps": []}, Policy)
    for zone in ("America/New_York", "Asia/Kolkata"):
        got = scoring.score_slots(model, plan, None, zone_name=zone, category="promotional",
                                  policy=policy, now=NOON)
        want = ref_score(model, plan, None, zone, policy, NOON)
        assert np.array_equal(got.p, want["p"]) and np.array_equal(got.ev, want["ev"])
    zones = {key[0] for key in model.blank_grid_scores}
    assert zones == {"America/New_York", "Asia/Kolkata"}
    assert {key[0] for key in model.blank_row_scores} == zones
    assert min(key[3] for key in model.blank_row_scores) == NOON // 1000  # the request
    assert all(not table.flags.writeable for table in model.blank_grid_scores.values())
    assert ActiveModel(RowWise(), "other", DEFAULT_PRIORS).blank_grid_scores == {}  # type: ignore[arg-type]
