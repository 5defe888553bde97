"""The commands parse their options and return exit codes (the work is tested elsewhere)."""

from __future__ import annotations

from pathlib import Path

import pytest

from models.artifact import is_artifact
from sendwise.cli import main


def test_simulate_then_train(tmp_path: Path, sim_dir: Path,
                             capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["simulate", "--out", str(tmp_path / "sim"), "--users", "30", "--days", "7",
                 "--quiet"]) == 0
    assert (tmp_path / "sim" / "messages.parquet").is_file()
    out = tmp_path / "model"
    assert main(["train", "--data", str(sim_dir), "--out", str(out), "--valid-days", "5",
                 "--tune-days", "3", "--trees", "15", "--window", "2h", "--no-report",
                 "--quiet"]) == 0
    assert is_artifact(out)
    assert "smoothed_histogram" in capsys.readouterr().out


def test_train_explains_what_is_missing(tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "--out", str(tmp_path / "m")]) == 2
    assert "--messages" in capsys.readouterr().err
    bad = tmp_path / "m.csv"
    bad.write_text("user_id\nx\n")
    assert main(["train", "--messages", str(bad), "--out", str(tmp_path / "m")]) == 1
    assert "missing required column" in capsys.readouterr().err


def test_too_short_history_is_a_clear_error(sim_dir: Path, tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "--data", str(sim_dir), "--out", str(tmp_path / "m"),
                 "--valid-days", "30", "--quiet", "--no-report"]) == 1
    assert "too short" in capsys.readouterr().err
