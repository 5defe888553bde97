"""loadtests/bench_node.py: a decision's Redis commands, recorded from the engine and replayed
from a snapshot, must give the scripts' replies again (or the replayed CPU would not be the
recorded decisions' cost), and the per-kind table must account for every kind sent."""

from __future__ import annotations

import pytest

from loadtests.bench_model import resolve
from loadtests.bench_node import main, measure


def test_replay_repeats_the_decisions() -> None:
    cost = measure(40, 60, resolve("heuristic"), warmup=10, rounds=2, gaps=(0.5,))
    assert cost.differ == 0
    # every decision commits once and appends one log entry; the state cache spares some reads
    assert cost.per_decision["commit.lua"] == 1.0
    assert cost.per_decision["XADD"] == 1.0
    assert 0 < cost.per_decision["read.lua"] <= 1.0
    assert set(cost.modes) == {"pipelined", "one-by-one", "gap 0.5 ms"}
    assert all(len(cpus) == 2 and min(cpus) > 0 for cpus, _ in cost.modes.values())
    assert set(cost.inside_by_kind) == set(cost.per_decision)
    assert cost.ceiling == pytest.approx(1e6 / cost.saturated)
    table = cost.table()
    assert "| commit.lua | 1.00 |" in table and "| gap 0.5 ms |" in table


def test_command_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--users", "30", "--decisions", "30", "--warmup", "5", "--rounds", "1",
                 "--gap-ms", "", "--model", "heuristic"]) == 0
    out = capsys.readouterr().out
    assert "replies that differ from the first round: 0" in out
    assert "one Redis node's ceiling:" in out
    with pytest.raises(SystemExit):
        main(["--gap-ms", "0"])
