"""kill -9 of the whole service (supervisor, workers, embedded Redis) loses no acknowledged
decision once Redis has made it durable; a restart on the same data directory replays each
one exactly."""

from __future__ import annotations

import os
import re
import signal
import time
from pathlib import Path
from typing import Any

import pytest
import redis

from tests.process.serving import descendants, requires_linux, served, wait_gone


def _wait_aof_durable(url: str, timeout: float = 30.0) -> None:
    """Make everything acknowledged so far durable on disk, by Redis' own account: a
    BGREWRITEAOF writes the dataset as of its fork to a new file, fsyncs it and renames it
    over the old one. Done when INFO persistence reports no rewrite running or scheduled
    and a successful last one. (Waiting out ``appendfsync everysec`` on the clock would be
    the alternative.)"""
    client = redis.Redis.from_url(url)
    try:
        client.bgrewriteaof()
        deadline = time.monotonic() + timeout
        while True:
            info = client.info("persistence")
            if (info["aof_rewrite_in_progress"] == 0 and info["aof_rewrite_scheduled"] == 0
                    and info["aof_last_bgrewrite_status"] == "ok"):
                return
            assert time.monotonic() < deadline, info
    finally:
        client.close()


def _stable(answer: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in answer.items() if k != "replayed"}


@requires_linux()
@pytest.mark.slow
def test_acknowledged_decisions_survive_kill_of_the_process_group(tmp_path: Path) -> None:
    env = {"SENDWISE_DATA_DIR": str(tmp_path), "SENDWISE_LOG_DECISIONS": "0"}
    requests = [{"message_id": f"m{i}", "user_id": f"u{i % 4}",
                 "channels": ["email", "sms"], "timezone": "Pacific/Kiritimati",
                 "campaign_id": "c1"} for i in range(40)]
    with served("--workers", "2", env=env) as first:
        first.wait_workers(2)
        status, _ = first.request("PUT", "/v1/policy", {
            "quiet_hours": [], "caps": [{"id": "two", "limit": 2, "window_minutes": 1440}]})
        assert status == 200
        answers = []
        for body in requests:
            status, answer = first.request("POST", "/v1/decisions", body)
            assert status == 200 and not answer["replayed"]
            answers.append(answer)
        assert {a["decision"] for a in answers} >= {"send", "defer"}
        url = next(m.group(1) for line in first.stderr.lines
                   if (m := re.search(r"embedded redis-server at (\S+)", line)))
        _wait_aof_durable(url)
        tree = descendants(first.pid) | {first.pid}
        os.killpg(first.pid, signal.SIGKILL)
        first.proc.wait(timeout=10)
        assert wait_gone(tree, 20) == set()
        port = first.port

    with served(env=env, port=port) as again:
        again.wait_workers(1)
        for body, answer in zip(requests, answers, strict=True):
            status, replay = again.request("POST", "/v1/decisions", body)
            assert status == 200
            assert replay["replayed"] is True
            assert _stable(replay) == _stable(answer)
