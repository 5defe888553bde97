"""loadtests/bench_memory.py: the per-user breakdown names every kind of key the engine
writes, and the preference-document format it is asked for is the one it measures."""

from __future__ import annotations

import re

import pytest

from loadtests.bench_memory import main


def _per_user(out: str) -> dict[str, int]:
    return {kind: int(size) for kind, size in
            re.findall(r"per active user \(\d+\): (\w+)\s+(\d+) B", out)}


def test_command_line_and_both_preference_formats(capsys: pytest.CaptureFixture[str]) -> None:
    measured = {}
    for document_format in (1, 2):
        assert main(["--users", "20", "--decisions", "60",
                     "--preferences-format", str(document_format)]) == 0
        out = capsys.readouterr().out
        assert re.search(r"^60 decisions, 20 users: \d+ records, mean stored \d+ B", out, re.M)
        assert "| 80 events, 20 sends | 3 |" in out  # the profile table
        measured[document_format] = _per_user(out)
    assert set(measured[1]) == set(measured[2]) >= {"ledger", "prefs", "record"}
    assert measured[2]["prefs"] < measured[1]["prefs"] * 0.7, measured
