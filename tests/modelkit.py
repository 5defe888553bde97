"""A tiny, real LightGBM artifact for tests: trained in well under a second on synthetic
rows with this code's feature layout, so the model lifecycle can be tested without the
seconds a real training run takes."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import lightgbm
import numpy as np

from models.artifact import (
    ARTIFACT_FORMAT_VERSION,
    MODEL_FILE,
    ChampionGate,
    DataWindow,
    Manifest,
    file_sha256,
    write_manifest,
)
from models.features import (
    CATEGORICAL_FEATURES,
    FEATURE_HASH,
    FEATURE_INDEX,
    FEATURE_VERSION,
    FEATURES,
)
from models.priors import DEFAULT_PRIORS


def write_tiny_model(directory: Path, *, passed: bool = True, seed: int = 0,
                     feature_hash: str = FEATURE_HASH, objective: str = "binary") -> Path:
    """A binary classifier that likes the user's own hours (``user_count_3h``) and the
    evening; ``passed`` sets its champion gate verdict."""
    rng = np.random.default_rng(seed)
    n = 3000
    x = rng.normal(size=(n, len(FEATURES))).astype(np.float32)
    x[:, FEATURE_INDEX["channel"]] = rng.integers(0, 5, n)
    x[:, FEATURE_INDEX["category"]] = rng.integers(0, 32, n)
    x[:, FEATURE_INDEX["cand_local_hour"]] = rng.uniform(0, 24, n)
    x[:, FEATURE_INDEX["user_count_3h"]] = rng.poisson(2.0, n)
    logit = (0.8 * x[:, FEATURE_INDEX["user_count_3h"]] - 2.5
             + 0.5 * (x[:, FEATURE_INDEX["cand_local_hour"]] > 17))
    y = (rng.uniform(size=n) < 1 / (1 + np.exp(-logit))).astype(np.float64)
    data = lightgbm.Dataset(x, y, feature_name=list(FEATURES),
                            categorical_feature=list(CATEGORICAL_FEATURES), free_raw_data=False)
    booster = lightgbm.train({"objective": "binary", "num_leaves": 7, "verbose": -1,
                              "num_threads": 1, "seed": seed}, data, num_boost_round=15)
    directory.mkdir(parents=True, exist_ok=True)
    booster.save_model(str(directory / MODEL_FILE))
    write_manifest(directory, Manifest(
        format_version=ARTIFACT_FORMAT_VERSION, feature_version=FEATURE_VERSION,
        feature_hash=feature_hash, features=list(FEATURES),
        categorical_features=list(CATEGORICAL_FEATURES),
        lightgbm_version=lightgbm.__version__,
        created_at=dt.datetime.now(dt.UTC).isoformat(),
        model_sha256=file_sha256(directory / MODEL_FILE), label="opened",
        label_window_seconds=7200,
        data_window=DataWindow(start="2026-01-01T00:00:00Z", split="2026-02-01T00:00:00Z",
                               end="2026-02-15T00:00:00Z"),
        row_counts={"train": n}, metrics={}, priors=DEFAULT_PRIORS.to_dict(),
        objective=objective,
        champion=ChampionGate(passed=passed, rival="smoothed_histogram",
                              better_than_chance=True, hit1_delta=0.01 if passed else -0.01,
                              hit3_delta=0.01 if passed else -0.01,
                              log_loss_delta=-0.01 if passed else 0.01, n=100)))
    return directory
