"""Fit the LightGBM model and write the artifact (the only training module using lightgbm).

Small on purpose: serving scores ~100 candidates per request and LightGBM's cost grows
with trees x depth (shared/MEASURED.md), so at most ``max_trees`` trees of
``num_leaves`` leaves, with early stopping on a later time slice than the one trained on.
Seeds are fixed and ``deterministic`` is on, so the same data gives the same model.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from models.artifact import (
    ARTIFACT_FORMAT_VERSION,
    MODEL_FILE,
    DataWindow,
    Manifest,
    file_sha256,
    write_manifest,
)
from models.features import CATEGORICAL_FEATURES, FEATURE_HASH, FEATURE_VERSION, FEATURES
from training.dataset import Progress

F32 = npt.NDArray[np.float32]


@dataclass(frozen=True)
class FitConfig:
    max_trees: int = 200
    num_leaves: int = 31
    learning_rate: float = 0.08
    min_data_in_leaf: int = 200
    early_stopping_rounds: int = 20
    seed: int = 7
    num_threads: int = 2

    def params(self) -> dict[str, Any]:
        return {
            "objective": "binary", "metric": "binary_logloss",
            "learning_rate": self.learning_rate, "num_leaves": self.num_leaves,
            "min_data_in_leaf": self.min_data_in_leaf, "feature_fraction": 0.9,
            "bagging_fraction": 0.8, "bagging_freq": 1, "lambda_l2": 1.0,
            "max_bin": 127, "seed": self.seed, "deterministic": True,
            "force_row_wise": True, "num_threads": self.num_threads, "verbosity": -1,
        }


@dataclass
class FitResult:
    model_text: str
    best_iteration: int
    importance_gain: dict[str, float]


def fit(train_x: F32, train_y: npt.NDArray[np.int8], tune_x: F32,
        tune_y: npt.NDArray[np.int8], config: FitConfig, progress: Progress) -> FitResult:
    """Train with early stopping on the tune slice; returns the native model text."""
    import lightgbm as lgb

    names = list(FEATURES)
    train_set = lgb.Dataset(train_x, label=train_y, feature_name=names,
                            categorical_feature=list(CATEGORICAL_FEATURES), free_raw_data=True)
    tune_set = lgb.Dataset(tune_x, label=tune_y, reference=train_set)

    def log(env: Any) -> None:
        if env.iteration % 25 == 0 or env.iteration + 1 == env.end_iteration:
            scores = ", ".join(f"{name} {value:.5f}" for _, name, value, _ in
                               env.evaluation_result_list)
            progress(f"tree {env.iteration + 1}: tune {scores}")

    booster = lgb.train(config.params(), train_set, num_boost_round=config.max_trees,
                        valid_sets=[tune_set], valid_names=["tune"],
                        callbacks=[lgb.early_stopping(config.early_stopping_rounds,
                                                      verbose=False), log])
    best = int(booster.best_iteration) or config.max_trees
    gains = booster.feature_importance(importance_type="gain", iteration=best)
    return FitResult(model_text=booster.model_to_string(num_iteration=best),
                     best_iteration=best,
                     importance_gain={n: float(g) for n, g in zip(names, gains, strict=True)})


def lightgbm_version() -> str:
    import lightgbm as lgb

    return str(lgb.__version__)


def iso(instant: int) -> str:
    return datetime.fromtimestamp(instant, UTC).isoformat().replace("+00:00", "Z")


def write_artifact(out_dir: Path, result: FitResult, *, label: str, window: int,
                   data_window: tuple[int, int, int], row_counts: dict[str, int],
                   metrics: dict[str, float], baselines: dict[str, dict[str, float]],
                   policies: dict[str, dict[str, float]], priors: dict[str, object],
                   params: dict[str, object], sources: list[str]) -> Path:
    """Write ``model.txt`` + ``manifest.json`` atomically (a reader never sees half a model)."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}-", dir=out_dir.parent))
    model_path = staging / MODEL_FILE
    model_path.write_text(result.model_text)
    manifest = Manifest(
        format_version=ARTIFACT_FORMAT_VERSION, feature_version=FEATURE_VERSION,
        feature_hash=FEATURE_HASH, features=list(FEATURES),
        categorical_features=list(CATEGORICAL_FEATURES), lightgbm_version=lightgbm_version(),
        created_at=iso(int(datetime.now(UTC).timestamp())),
        model_sha256=file_sha256(model_path), label=label, label_window_seconds=window,
        data_window=DataWindow(start=iso(data_window[0]), split=iso(data_window[1]),
                               end=iso(data_window[2])),
        row_counts=row_counts, metrics=metrics, baselines=baselines, policies=policies,
        priors=priors, params=params, sources=sources)
    write_manifest(staging, manifest)
    if out_dir.exists():
        backup = out_dir.with_name(f".{out_dir.name}-old")
        shutil.rmtree(backup, ignore_errors=True)
        out_dir.rename(backup)
        staging.rename(out_dir)
        shutil.rmtree(backup, ignore_errors=True)
    else:
        staging.rename(out_dir)
    return out_dir
