"""``sendwise rank``: every user gets candidates ranked by the model, best first."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from models.scorer import Scorer
from sendwise.cli import main
from training.pipeline import TrainResult
from training.rank import load_history, rank_users

AT = "2025-09-18T06:00:00+00:00"


def test_rank_users_orders_each_users_slots(trained: TrainResult, sim_dir: Path) -> None:
    logs = load_history([sim_dir / "messages.parquet", sim_dir / "activity.parquet"])
    at = 1_758_175_200  # AT
    users = logs.users[:5]
    rankings = rank_users(logs, at, scorer=Scorer.load(trained.out), users=users, top=6)
    assert [r.user_id for r in rankings] == users
    for ranking in rankings:
        scores = [slot.score for slot in ranking.slots]
        assert 0 < len(scores) <= 6
        assert scores == sorted(scores, reverse=True)
        assert all(slot.instant >= "2025-09-18T06:00:00Z" for slot in ranking.slots)
    heuristic = rank_users(logs, at, scorer=None, users=users[:1], channels=["email"], top=3)
    assert [s.channel for s in heuristic[0].slots] == ["email"] * 3


def test_rank_command(trained: TrainResult, sim_dir: Path,
                      capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["rank", "--model", str(trained.out), "--history",
                 str(sim_dir / "messages.parquet"), "--at", AT, "--user", "u000003",
                 "--top", "3", "--format", "json"])
    assert code == 0
    out = json.loads(capsys.readouterr().out)
    assert out[0]["user_id"] == "u000003"
    assert len(out[0]["slots"]) == 3


def test_rank_command_reports_bad_history(tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "h.csv"
    path.write_text("user_id,foo\nx,1\n")
    code = main(["rank", "--model", "none", "--history", str(path), "--at", AT])
    assert code == 1
    assert "neither a message log" in capsys.readouterr().err


def test_rank_by_hour_of_day_over_a_week(sim_dir: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    """Without a model: the heuristic with priors from the history, one slot per hour."""
    code = main(["rank", "--model", "none", "--history", str(sim_dir / "activity.parquet"),
                 "--at", AT, "--user", "u000003", "--by-hour-of-day", "--top", "24",
                 "--format", "json"])
    assert code == 0
    slots = json.loads(capsys.readouterr().out)[0]["slots"]
    assert sorted(s["hour_of_day"] for s in slots) == list(range(24))
    assert {"channel", "instant", "local", "score"} <= set(slots[0])
    scores = [s["score"] for s in slots]
    assert scores == sorted(scores, reverse=True)
    assert slots[-1]["instant"] < "2025-09-19T06:00:00Z"  # dated at its first occurrence
