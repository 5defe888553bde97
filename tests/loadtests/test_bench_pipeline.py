"""loadtests/bench_pipeline.py: both client paths run side by side and the table names each
with its numbers, and the iterations per round trip on both loops (what they must be is
tests/process/test_redis_client.py's to assert, on a loop held longer per iteration)."""

from __future__ import annotations

import re

import pytest

from loadtests.bench_pipeline import main


def test_command_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--concurrency", "1", "4", "--seconds", "0.2", "--rounds", "1"]) == 0
    out = capsys.readouterr().out
    rows = re.findall(r"^(auto-pipelined|per-command)\s+(\d+)\s+([\d,]+)\s+([\d.]+)$", out, re.M)
    assert sorted((path, int(callers)) for path, callers, _, _ in rows) == [
        ("auto-pipelined", 1), ("auto-pipelined", 4), ("per-command", 1), ("per-command", 4)]
    assert all(float(rate.replace(",", "")) > 0 and float(cpu) > 0 for _, _, rate, cpu in rows)
    for path in ("auto-pipelined", "per-command"):
        assert re.search(rf"iterations per round trip, {path}: \d+ on asyncio's loop, \d+ on "
                         "uvloop", out)
