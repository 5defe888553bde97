"""A tiny end-to-end run: simulate -> train -> artifact + report, and the artifact's guards."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import msgspec
import numpy as np
import pytest

from models.artifact import (
    MANIFEST_FILE,
    MODEL_FILE,
    ArtifactError,
    NotChampionError,
    check_champion,
    read_manifest,
    write_manifest,
)
from models.features import FEATURE_HASH, FEATURES
from models.scorer import FeatureMismatchError, Scorer
from training.pipeline import TrainResult, summary_text


def test_training_writes_a_loadable_artifact(trained: TrainResult) -> None:
    manifest = read_manifest(trained.out)
    assert manifest.feature_hash == FEATURE_HASH
    assert manifest.features == list(FEATURES)
    assert manifest.row_counts["train"] > 0
    assert manifest.row_counts["valid"] > 0
    assert manifest.data_window.start < manifest.data_window.split < manifest.data_window.end
    assert set(manifest.baselines) == {"smoothed_histogram", "fallback_no_model",
                                       "user_mode_hour", "global_popular_hours", "fixed_hour",
                                       "oracle_truth"}
    gate = manifest.champion
    assert gate is not None
    model, rival = trained.baselines["model"], trained.baselines[gate.rival]
    assert gate.hit3_delta == pytest.approx(model["hit@3"] - rival["hit@3"])
    assert gate.passed == (gate.hit3_delta > 0 and gate.log_loss_delta < 0)
    assert summary_text(trained).startswith("Champion gate ")
    assert {"valid_log_loss", "valid_auc", "ranking_hit@1"} <= set(manifest.metrics)
    assert manifest.objective == "binary"  # a message log: P(open | sent)
    scorer = Scorer.load(trained.out)
    scores = scorer.score(np.zeros((3, len(FEATURES)), dtype=np.float32))
    assert scores.shape == (3,)
    assert np.all((scores > 0) & (scores < 1))


def test_model_learns_something_real(trained: TrainResult) -> None:
    """Even on a tiny world the model must beat chance and a fixed hour (not a perf claim)."""
    model = trained.baselines["model"]
    assert model["hit@3"] > 3 / 24
    assert model["log_loss"] < trained.baselines["fixed_hour"]["log_loss"]
    assert trained.metrics["valid_auc"] > 0.6
    policies = trained.policies
    assert policies["oracle"]["expected_value"] >= policies["model"]["expected_value"]
    assert policies["model"]["expected_value"] > policies["random"]["expected_value"]


def test_report_embeds_plots(trained: TrainResult) -> None:
    assert trained.report is not None
    html = trained.report.read_text()
    assert html.count("data:image/png;base64,") == 4
    assert "smoothed_histogram" in html
    assert "share of oracle gain" in html
    assert "hit@1" in summary_text(trained)


def copy_artifact(trained: TrainResult, tmp_path: Path) -> Path:
    target = tmp_path / "artifact"
    shutil.copytree(trained.out, target)
    return target


def test_scorer_refuses_another_feature_hash(trained: TrainResult, tmp_path: Path) -> None:
    target = copy_artifact(trained, tmp_path)
    manifest = json.loads((target / MANIFEST_FILE).read_text())
    manifest["feature_hash"] = "0123456789abcdef"
    (target / MANIFEST_FILE).write_text(json.dumps(manifest))
    with pytest.raises(FeatureMismatchError, match="trained with feature hash 0123456789abcdef"):
        Scorer.load(target)


def test_scorer_refuses_a_tampered_model(trained: TrainResult, tmp_path: Path) -> None:
    target = copy_artifact(trained, tmp_path)
    with (target / MODEL_FILE).open("a") as handle:
        handle.write("\n")
    with pytest.raises(ArtifactError, match="does not match the checksum"):
        Scorer.load(target)


@pytest.mark.parametrize(("content", "message"), [
    (None, "manifest.json missing"),
    ("{", "not JSON"),
    ('{"format_version": 1}', "invalid manifest"),
])
def test_scorer_refuses_broken_manifests(tmp_path: Path, content: str | None,
                                         message: str) -> None:
    if content is not None:
        (tmp_path / MANIFEST_FILE).write_text(content)
    with pytest.raises(ArtifactError, match=message):
        Scorer.load(tmp_path)


def test_training_is_reproducible(trained: TrainResult, sim_dir: Path, tmp_path: Path) -> None:
    from training.fit import FitConfig
    from training.pipeline import TrainConfig, train

    again = train(TrainConfig(
        out=tmp_path / "again", messages=sim_dir / "messages.parquet",
        activity=sim_dir / "activity.parquet", valid_days=5, tune_days=3,
        fit=FitConfig(max_trees=40, min_data_in_leaf=50, num_threads=1), progress=False))
    first = (trained.out / MODEL_FILE).read_text().split("parameters:")[0]
    second = (again.out / MODEL_FILE).read_text().split("parameters:")[0]
    assert first == second


def test_champion_gate_refuses_a_loser_unless_forced(trained: TrainResult, tmp_path: Path) -> None:
    target = copy_artifact(trained, tmp_path)
    manifest = read_manifest(target)
    assert manifest.champion is not None
    lost = msgspec.structs.replace(manifest.champion, passed=False, hit3_delta=-0.01)
    write_manifest(target, msgspec.structs.replace(manifest, champion=lost))
    with pytest.raises(NotChampionError, match="does NOT beat"):
        check_champion(read_manifest(target))
    check_champion(read_manifest(target), force=True)
    won = msgspec.structs.replace(lost, passed=True)
    write_manifest(target, msgspec.structs.replace(manifest, champion=won))
    check_champion(read_manifest(target))
    write_manifest(target, msgspec.structs.replace(manifest, champion=None))
    with pytest.raises(NotChampionError, match="no champion gate"):
        check_champion(read_manifest(target))
