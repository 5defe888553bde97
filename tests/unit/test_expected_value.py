"""The arithmetic of the model in the loop (api/scoring.py): expected value with the
fatigue cost, the value floor, ``channel_selection`` and the logged propensities."""

from __future__ import annotations

from typing import Any

import msgspec
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from api.plan import Plan, commit_members, commit_notes, encode_plan
from api.policy import Policy
from api.scoring import HEURISTIC, choose, expected_value, score_slots
from models.profile import Profile
from models.vocab import channel_index
from tests.unit.test_plan import NOON, plan_for, request

NY = "America/New_York"
HOUR_S = 3600


def send_time(**fields: Any) -> Policy:
    return msgspec.convert({"quiet_hours": [], "caps": [], "send_time": fields}, Policy)


def profile(*, deliveries_hours_ago: tuple[float, ...] = ()) -> Profile:
    """Two weeks of evening activity, and deliveries that many hours before NOON."""
    p = Profile()
    now_s = NOON // 1000
    for day in range(1, 15):
        p.record_activity(now_s - day * 86400 + 7 * HOUR_S, 3 * 24 + 19)
    for ago in deliveries_hours_ago:
        p.record_send(int(now_s - ago * HOUR_S), channel_index("email"))
    return p


def test_expected_value_is_value_times_p_minus_cost_minus_fatigue() -> None:
    ev = expected_value(np.array([0.1, 0.2, 0.0]), np.array([10.0, 1.0, 1.0]),
                        np.array([0.5, 0.0, 0.0]), np.array([2.0, 0.0, 16.0]), 0.25)
    assert np.allclose(ev, [0.1 * 10 - 0.5 - 2 * 0.25, 0.2, -4.0])


def test_fatigue_counts_the_deliveries_in_the_24_hours_before_each_slot() -> None:
    user = profile(deliveries_hours_ago=(2.0, 2.0, 30.0))
    plain = score_slots(HEURISTIC, plan_for(request()), user, zone_name=NY,
                        category="promotional", policy=send_time(), now=NOON)
    tired = score_slots(HEURISTIC, plan_for(request()), user, zone_name=NY,
                        category="promotional", policy=send_time(fatigue_cost=0.5), now=NOON)
    hours = (plain.at - NOON) / 3_600_000
    # the two deliveries 2 h ago count until 22 h from now; the one 30 h ago never does
    assert np.array_equal(plain.sends, np.where(hours <= 22, 2.0, 0.0))
    assert np.allclose(plain.ev - tired.ev, 0.5 * plain.sends)
    assert np.array_equal(plain.p, tired.p)  # fatigue is a cost, not a score change


def test_the_floor_suppresses_with_the_best_slots_note_and_an_empty_plan() -> None:
    plan = plan_for(request(channels=["email", "sms"]))
    user = profile()
    kept = choose(HEURISTIC, plan, user, zone_name=NY, category="promotional",
                  message_id="m1", exempt=False, policy=send_time(exploration_rate=0.0,
                                                                   min_expected_value=0.0),
                  now=NOON)
    assert kept.suppressed is None and kept.plan.mode == "ranked"
    low = choose(HEURISTIC, plan, user, zone_name=NY, category="promotional",
                 message_id="m1", exempt=False,
                 policy=send_time(exploration_rate=0.1, min_expected_value=0.99), now=NOON)
    assert low.plan.cands == [] and low.annotations == []
    assert low.suppressed is not None and low.suppressed[2] == 0.9
    scored = score_slots(HEURISTIC, plan, user, zone_name=NY, category="promotional",
                         policy=send_time(), now=NOON)
    assert low.suppressed[0] == round(float(scored.p[np.argmax(scored.ev)]), 6)
    exempt = choose(HEURISTIC, plan, user, zone_name=NY, category="transactional",
                    message_id="m1", exempt=True, policy=send_time(min_expected_value=0.99),
                    now=NOON)
    assert exempt.suppressed is None


def _slots(plan: Plan) -> list[tuple[str, int, int]]:
    return [(c.ch, c.a, c.s) for c in plan.cands]


def test_ordered_hands_commit_each_channels_slots_then_its_whole_window() -> None:
    plan = plan_for(request(channels=["email", "sms", "push"]))
    values = {"email": 1.0, "sms": 50.0, "push": 20.0}
    choice = choose(HEURISTIC, plan, profile(), zone_name=NY, category="promotional",
                    message_id="m1", exempt=False, now=NOON, selection="ordered",
                    policy=send_time(exploration_rate=0.0, channel_values=values))
    ranked = choice.plan
    assert ranked.mode == "ranked"
    assert len(ranked.cands) == len(choice.annotations)
    channels = [c.ch for c in ranked.cands]
    # email's scored slots, email's window (s 1), sms..., push..., then the plain windows
    n_email = channels.index("sms") - 1
    assert channels[:n_email + 1] == ["email"] * (n_email + 1)
    assert ranked.cands[n_email] == msgspec.structs.replace(plan.cands[0], s=1)
    assert [c for c in ranked.cands[-3:]] == plan.cands
    windows = [i for i, c in enumerate(ranked.cands) if c.b - c.a > 1]
    assert [ranked.cands[i].ch for i in windows] == ["email", "sms", "push"] * 2
    assert [ranked.cands[i].s for i in windows] == [1, 1, 1, 0, 0, 0]
    args = encode_plan(ranked, choice.annotations)
    for cand, member, note in zip(ranked.cands, commit_members(args), commit_notes(args),
                                  strict=True):
        assert msgspec.msgpack.decode(member)[1] == cand.ch
        assert note is not None and len(msgspec.json.decode(note)) == 3
    assert commit_notes(args) == choice.annotations
    best = choose(HEURISTIC, plan, profile(), zone_name=NY, category="promotional",
                  message_id="m1", exempt=False, now=NOON,
                  policy=send_time(exploration_rate=0.0, channel_values=values))
    assert best.plan.cands[0].ch == "sms"  # by value, whatever the order


@settings(max_examples=40, deadline=None)
@given(rate=st.sampled_from([0.0, 0.05, 0.5, 1.0]),
       floor=st.sampled_from([None, -10.0, 10.0]),
       selection=st.sampled_from(["best", "ordered"]),
       message_id=st.text(min_size=1, max_size=8))
def test_logged_propensities_are_a_distribution_over_what_the_policy_may_pick(
        rate: float, floor: float | None, selection: str, message_id: str) -> None:
    """Over the slots the policy picks from (every slot; "ordered": the first channel's),
    the propensities add up to 1, or to the exploration share when the greedy action is
    the floor's suppression; the slot reserved first is the explored or the greedy one."""
    plan = plan_for(request(channels=["email", "sms"]))
    choice = choose(HEURISTIC, plan, profile(), zone_name=NY, category="promotional",
                    message_id=message_id, exempt=False, now=NOON, selection=selection,
                    policy=send_time(exploration_rate=rate, min_expected_value=floor))
    if choice.suppressed is not None:
        assert floor == 10.0 and choice.plan.cands == []
        assert choice.suppressed[2] == round(1 - rate, 6)
        return
    notes = [msgspec.json.decode(a) for a in choice.annotations]
    scored = [(c, n) for c, n in zip(choice.plan.cands, notes, strict=True) if c.b - c.a == 1]
    pool = [n[2] for c, n in scored if selection == "best" or c.ch == "email"]
    assert all(n[2] == 0 for c, n in scored if selection == "ordered" and c.ch != "email")
    total = rate if floor == 10.0 else 1.0
    assert abs(sum(pool) - total) < 1e-4 * len(pool)
    assert choice.plan.cands[0].s == 1 and notes[0][2] > 0


def test_the_fingerprint_of_a_default_request_did_not_change_with_channel_selection() -> None:
    """Records written before the field existed still match their retries."""
    import datetime as dt

    from api.plan import fingerprint
    from api.schemas import DecisionRequest, Offer

    fields: dict[str, Any] = {"message_id": "m", "user_id": "u", "channels": ["email", "sms"],
                              "tags": ["a"], "offer": Offer("o", "g"),
                              "not_before": dt.datetime(2026, 1, 1, tzinfo=dt.UTC)}
    # the value computed by the code before ``channel_selection`` was added
    assert fingerprint(DecisionRequest(**fields)) == "9f4641b97aa418a91496"
    assert fingerprint(DecisionRequest(**fields, channel_selection="ordered")) != \
        "9f4641b97aa418a91496"
