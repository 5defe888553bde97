"""The commands parse their options and return exit codes (the work is tested elsewhere)."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from models.artifact import is_artifact
from sendwise.cli import build_parser, main
from training.cli import RANKING_CHOICES
from training.fit import RANKING_OBJECTIVES


def test_simulate_then_train(tmp_path: Path, sim_dir: Path,
                             capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["simulate", "--out", str(tmp_path / "sim"), "--users", "30", "--days", "7",
                 "--quiet"]) == 0
    assert (tmp_path / "sim" / "messages.parquet").is_file()
    out = tmp_path / "model"
    assert main(["train", "--data", str(sim_dir), "--out", str(out), "--valid-days", "5",
                 "--tune-days", "3", "--trees", "15", "--window", "2h", "--no-report",
                 "--threads", "1", "--quiet"]) == 0
    assert is_artifact(out)
    out = capsys.readouterr().out
    assert "smoothed_histogram" in out
    assert "\nChampion gate " in out  # the first line of the train summary


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


@pytest.mark.parametrize("command", ["simulate", "train", "rank", "uplift"])
def test_every_option_has_help_with_its_default(command: str,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for action in sub.choices[command]._actions:
        if action.dest != "help":
            assert action.help, f"{command} {action.option_strings} has no help"
    with pytest.raises(SystemExit):
        main([command, "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "(default:" in text
    if command == "train":
        assert "--dask ADDRESS" in text
        assert "(default: rank_xendcg)" in text


def test_cli_objectives_match_the_trainer() -> None:
    assert RANKING_CHOICES == RANKING_OBJECTIVES


def test_header_only_csv_is_a_clear_error(tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "activity.csv"
    path.write_text("user_id,occurred_at,time_zone,kind\n")
    assert main(["train", "--activity", str(path), "--out", str(tmp_path / "m")]) == 1
    assert "no data rows" in capsys.readouterr().err
    assert main(["rank", "--model", "none", "--history", str(path), "--at",
                 "2025-01-01T00:00:00Z"]) == 1
    assert "no data rows" in capsys.readouterr().err
