"""Load a model artifact and score feature rows: the only module that touches LightGBM.

``Scorer.load`` refuses a model whose feature hash differs from this code's
``FEATURE_HASH``: feeding columns in another order or with another meaning would not
crash, it would silently produce wrong scores. ``Any`` from lightgbm stays in here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from models.artifact import MODEL_FILE, ArtifactError, Manifest, file_sha256, read_manifest
from models.features import FEATURE_HASH, FEATURES
from models.priors import Priors


class FeatureMismatchError(ArtifactError):
    """The model was trained on a different feature definition than this code builds."""


class Scorer:
    """A loaded model: ``score(rows)``, and ``day_distribution`` for probabilities."""

    __slots__ = ("_booster", "_num_threads", "manifest", "priors")

    def __init__(self, booster: Any, manifest: Manifest, *, num_threads: int = 0) -> None:
        self._booster = booster
        self._num_threads = num_threads
        self.manifest = manifest
        self.priors = Priors.from_dict(manifest.priors)

    @property
    def model_version(self) -> str:
        return self.manifest.model_version

    @classmethod
    def load(cls, directory: Path | str, *, num_threads: int = 0) -> Scorer:
        """Load and verify ``directory`` (manifest, feature hash, model checksum).

        ``num_threads`` 0 is LightGBM's default; serving measures what suits it.
        """
        directory = Path(directory)
        manifest = read_manifest(directory)
        if manifest.feature_hash != FEATURE_HASH or tuple(manifest.features) != FEATURES:
            raise FeatureMismatchError(
                f"model in {directory} was trained with feature hash {manifest.feature_hash} "
                f"({len(manifest.features)} features, feature version "
                f"{manifest.feature_version}) but this code builds {FEATURE_HASH} "
                f"({len(FEATURES)} features); retrain it with this version "
                "(`sendwise train`) or run the sendwise version that trained it")
        model_path = directory / MODEL_FILE
        if not model_path.is_file():
            raise ArtifactError(f"{directory}: {MODEL_FILE} missing")
        if file_sha256(model_path) != manifest.model_sha256:
            raise ArtifactError(f"{model_path} does not match the checksum in its manifest")
        import lightgbm  # deferred: keeps `import models.scorer` cheap for the CLI

        booster = lightgbm.Booster(model_file=str(model_path))
        if tuple(booster.feature_name()) != FEATURES:
            raise FeatureMismatchError(f"{model_path} lists other feature names than its "
                                       "manifest")
        return cls(booster, manifest, num_threads=num_threads)

    @property
    def is_ranker(self) -> bool:
        return self.manifest.objective != "binary"

    def day_distribution(self, scores: npt.NDArray[np.float64],
                         heuristic: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        """P(slot) over each row of ``scores`` (one row = the slots of one day, e.g. 24).

        ``heuristic`` is the rows' ``heuristic_share`` column in the same shape. A ranker's
        scores only order slots, so they go through the calibration fitted at training
        (softmax of the score and the heuristic's log-share, weights in the manifest); a
        classifier's probabilities are just normalised.
        """
        if self.is_ranker:
            m = self.manifest
            z = (m.score_weight * scores
                 + m.heuristic_weight * np.log(np.maximum(heuristic, 1e-12)))
            z = np.exp(z - z.max(axis=-1, keepdims=True))
            result: npt.NDArray[np.float64] = z / z.sum(axis=-1, keepdims=True)
            return result
        total = scores.sum(axis=-1, keepdims=True)
        normalised: npt.NDArray[np.float64] = scores / np.where(total > 0, total, 1.0)
        return normalised

    def score(self, rows: npt.NDArray[np.float32]) -> npt.NDArray[np.float64]:
        """Model output for rows built by ``models.features`` (shape ``(n, len(FEATURES))``):
        P(engagement within the window) for a classifier, an ordering score for a ranker
        (``day_distribution`` turns a day's scores into probabilities)."""
        if rows.ndim != 2 or rows.shape[1] != len(FEATURES):
            raise ValueError(f"expected rows of {len(FEATURES)} features, got {rows.shape}")
        if rows.shape[0] == 0:
            return np.zeros(0, dtype=np.float64)
        kwargs: dict[str, Any] = {"num_threads": self._num_threads} if self._num_threads else {}
        result = self._booster.predict(rows, **kwargs)
        return np.asarray(result, dtype=np.float64)
