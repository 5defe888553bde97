"""The top-level command line: version and help with examples."""

from __future__ import annotations

import re
from importlib.metadata import version
from pathlib import Path

import pytest

from sendwise.cli import main


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.strip() == f"sendwise {version('sendwise')}"


def test_help_lists_commands_and_examples(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert "examples:" in out and "sendwise serve" in out and "REDIS_URL=" in out
    for command in ("serve", "simulate", "train", "rank"):
        assert command in out


def test_serve_help_has_defaults_and_every_environment_variable(
        capsys: pytest.CaptureFixture[str]) -> None:
    """Every variable the service reads (api/settings.py, api/serve.py) is listed, so the
    help cannot drift from the code."""
    with pytest.raises(SystemExit):
        main(["serve", "--help"])
    out = capsys.readouterr().out
    assert "(default: 127.0.0.1)" in out and "(default: 8000)" in out and "(default: 1)" in out
    assert "embedded redis-server" in out
    root = Path(__file__).resolve().parents[2]
    read = set()
    for source in ("api/settings.py", "api/serve.py"):
        read |= set(re.findall(r'"((?:SENDWISE_[A-Z_]+)|REDIS_URL)"', (root / source).read_text()))
    assert read, "no variables found: the pattern is out of date"
    internal = {"SENDWISE_SUPERVISOR_PID"}  # set by serve for its own workers
    missing = sorted(name for name in read - internal if name not in out)
    assert not missing, missing
