"""Load a model artifact and score feature rows: the only module that touches LightGBM.

``Scorer.load`` refuses a model whose feature hash differs from this code's
``FEATURE_HASH``: feeding columns in another order or with another meaning would not
crash, it would silently produce wrong scores. ``Any`` from lightgbm stays in here.
"""

from __future__ import annotations

import ctypes
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

    __slots__ = ("_booster", "_num_threads", "_params", "_predict", "manifest", "priors",
                 "trees")

    def __init__(self, booster: Any, manifest: Manifest, *, num_threads: int = 0) -> None:
        self._booster = booster
        self._num_threads = num_threads
        self.manifest = manifest
        self.priors = Priors.from_dict(manifest.priors)
        #: number of trees (shown by the benchmarks beside the version)
        self.trees = int(booster.num_trees())
        #: the prediction parameters, encoded once (``Booster.predict`` deep-copies and
        #: re-encodes them on every call)
        self._params = (f"num_threads={num_threads}" if num_threads else "").encode()
        self._predict = _c_predictor()

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

    def window_distribution(self, scores: npt.NDArray[np.float64],
                            heuristic: npt.NDArray[np.float64], heads: npt.NDArray[np.intp],
                            sizes: npt.NDArray[np.intp]) -> npt.NDArray[np.float64]:
        """``day_distribution`` of several windows at once: window ``k`` is the ``sizes[k]``
        consecutive entries from ``heads[k]`` (every size >= 1, the windows cover the
        arrays in order). One pass of array operations instead of one call per window
        (serving scores one window per requested channel); equal to the per-window calls
        up to the order of the additions in each window's sum."""
        if self.is_ranker:
            m = self.manifest
            z = (m.score_weight * scores
                 + m.heuristic_weight * np.log(np.maximum(heuristic, 1e-12)))
            z = np.exp(z - np.repeat(np.maximum.reduceat(z, heads), sizes))
            result: npt.NDArray[np.float64] = z / np.repeat(np.add.reduceat(z, heads), sizes)
            return result
        total = np.repeat(np.add.reduceat(scores, heads), sizes)
        normalised: npt.NDArray[np.float64] = scores / np.where(total > 0, total, 1.0)
        return normalised

    def score(self, rows: npt.NDArray[np.float32]) -> npt.NDArray[np.float64]:
        """Model output for rows built by ``models.features`` (shape ``(n, len(FEATURES))``):
        P(engagement within the window) for a classifier, an ordering score for a ranker
        (``day_distribution`` turns a day's scores into probabilities)."""
        if rows.ndim != 2 or rows.shape[1] != len(FEATURES):
            raise ValueError(f"expected rows of {len(FEATURES)} features, got {rows.shape}")
        n = rows.shape[0]
        if n == 0:
            return np.zeros(0, dtype=np.float64)
        if self._predict is None or rows.dtype != np.float32:
            kwargs: dict[str, Any] = ({"num_threads": self._num_threads} if self._num_threads
                                      else {})
            result = self._booster.predict(rows, **kwargs)
            return np.asarray(result, dtype=np.float64)
        # The C entry point ``Booster.predict`` itself ends in (LGBM_BoosterPredictForMat,
        # normal prediction, all iterations), called directly: same trees, same float32
        # rows, same output, without its per-call Python checks and parameter copies.
        rows = np.ascontiguousarray(rows)
        out = np.empty(n, dtype=np.float64)
        written = ctypes.c_int64(0)
        code = self._predict(self._booster._handle, rows.ctypes.data, _C_API_DTYPE_FLOAT32,
                             n, rows.shape[1], _ROW_MAJOR, _PREDICT_NORMAL, 0, -1,
                             self._params, ctypes.byref(written), out.ctypes.data)
        if code != 0 or written.value != n:
            raise RuntimeError(f"LightGBM prediction failed: {_last_error()}")
        return out


#: LightGBM C API constants (c_api.h): float32 data, row-major, normal prediction
_C_API_DTYPE_FLOAT32 = 0
_ROW_MAJOR = 1
_PREDICT_NORMAL = 0


def _c_predictor() -> Any:
    """``LGBM_BoosterPredictForMat`` with its argument types declared once, or None when
    this lightgbm build does not expose it (``score`` then calls ``Booster.predict``)."""
    try:
        from lightgbm.basic import _LIB  # type: ignore[attr-defined]
    except ImportError:  # pragma: no cover - every lightgbm 3/4 has it
        return None
    try:  # item access: a function object of our own (attribute access would share,
        # and retype, the one lightgbm itself calls)
        function = _LIB["LGBM_BoosterPredictForMat"]
    except (AttributeError, TypeError):  # pragma: no cover
        return None
    function.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int, ctypes.c_int32,
                         ctypes.c_int32, ctypes.c_int, ctypes.c_int, ctypes.c_int,
                         ctypes.c_int, ctypes.c_char_p, ctypes.POINTER(ctypes.c_int64),
                         ctypes.c_void_p]
    function.restype = ctypes.c_int
    return function


def _last_error() -> str:
    from lightgbm.basic import _LIB  # type: ignore[attr-defined]

    message: bytes = _LIB.LGBM_GetLastError()
    return message.decode(errors="replace")
