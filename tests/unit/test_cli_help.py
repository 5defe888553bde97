"""The top-level command line: version and help with examples."""

from __future__ import annotations

from importlib.metadata import version

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
