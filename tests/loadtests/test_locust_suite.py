"""The locust suite end to end: a few seconds headless against a real service (embedded
redis-server + uvicorn, started by ``loadtests.locust_run`` itself), every answer checked.

Zero failures means every decision decoded, was coherent, respected the quiet hours the
suite set, retries repeated their first answer, and the cap spot check found nothing; the
checker's own power to fail a wrong answer is tests/loadtests/test_checks.py's job.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_the_suite_runs_headless_with_no_failures_and_writes_its_reports(tmp_path: Path) -> None:
    out = tmp_path / "results"
    run = subprocess.run(
        [sys.executable, "-m", "loadtests.locust_run", "--users", "8", "--duration", "3",
         "--processes", "1", "--population", "5000", "--seed-users", "100", "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)
    assert run.returncode == 0, run.stdout + run.stderr + (out / "locust.log").read_text()
    assert "failures: 0 " in run.stdout
    assert "cap spot check: 20 timelines, 0 violations" in run.stdout
    for name in ("sendwise_stats.csv", "sendwise_stats_history.csv", "sendwise_failures.csv",
                 "report.html", "locust.log"):
        assert (out / name).stat().st_size > 0, name
    stats = (out / "sendwise_stats.csv").read_text()
    for endpoint in ("/v1/decisions", "/v1/decisions (retry)", "/v1/events"):
        assert f",{endpoint}," in stats
