"""Load a model artifact and score feature rows: the only module that touches LightGBM.

``Scorer.load`` refuses a model whose feature hash differs from this code's
``FEATURE_HASH``: feeding columns in another order or with another meaning would not
crash, it would silently produce wrong scores. ``Any`` from lightgbm stays in here.

Serving loads the model through LightGBM's own shared library (``lib_lightgbm.so`` of the
installed lightgbm package, by ctypes: ``NativeBooster``) instead of ``import lightgbm``:
the Python package imports pandas, pyarrow, scipy and scikit-learn when they are installed
(the training stack is), ~175 MB of resident memory in every API worker for three C calls
(load, count trees, predict). Same library, same model file, same prediction entry point,
so the same numbers (tests/models/test_scorer_windows.py). Where the library cannot be
found, the lightgbm package is used as before.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib.util
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
        self._predict = (booster.predict_for_mat if isinstance(booster, NativeBooster)
                         else _c_predictor())

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
        booster: Any = NativeBooster.load(model_path)
        if booster is None:  # no shared library found: the lightgbm package's own Booster
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
        if self._predict is None:
            kwargs: dict[str, Any] = ({"num_threads": self._num_threads} if self._num_threads
                                      else {})
            result = self._booster.predict(rows, **kwargs)
            return np.asarray(result, dtype=np.float64)
        # The C entry point ``Booster.predict`` itself ends in (LGBM_BoosterPredictForMat,
        # normal prediction, all iterations), called directly: same trees, same rows (float32
        # as built, anything else as float64, as Booster.predict converts them), same
        # output, without its per-call Python checks and parameter copies.
        dtype = _C_API_DTYPE_FLOAT32 if rows.dtype == np.float32 else _C_API_DTYPE_FLOAT64
        rows = np.ascontiguousarray(rows, dtype=np.float32 if dtype == _C_API_DTYPE_FLOAT32
                                    else np.float64)
        out = np.empty(n, dtype=np.float64)
        written = ctypes.c_int64(0)
        code = self._predict(self._booster._handle, rows.ctypes.data, dtype,
                             n, rows.shape[1], _ROW_MAJOR, _PREDICT_NORMAL, 0, -1,
                             self._params, ctypes.byref(written), out.ctypes.data)
        if code != 0 or written.value != n:
            raise RuntimeError(f"LightGBM prediction failed: {_last_error(self._booster)}")
        return out


#: LightGBM C API constants (c_api.h): float32/float64 data, row-major, normal prediction
_C_API_DTYPE_FLOAT32 = 0
_C_API_DTYPE_FLOAT64 = 1
_ROW_MAJOR = 1
_PREDICT_NORMAL = 0


def _library_path() -> Path | None:
    """``lib_lightgbm.so`` (``.dylib``, ``.dll``) of the installed lightgbm package, found
    without importing the package."""
    spec = importlib.util.find_spec("lightgbm")
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        for name in ("lib_lightgbm.so", "lib_lightgbm.dylib", "lib_lightgbm.dll"):
            for candidate in (Path(location) / "lib" / name, Path(location) / name):
                if candidate.is_file():
                    return candidate
    return None


_NATIVE: list[Any] = []  # the loaded library (at most one), once looked up


def _native_library() -> Any:
    if not _NATIVE:
        path = _library_path()
        library: Any = None
        if path is not None:
            try:
                library = ctypes.cdll.LoadLibrary(str(path))
            except OSError:  # pragma: no cover - a broken install: the package path decides
                library = None
        if library is not None:
            library.LGBM_GetLastError.restype = ctypes.c_char_p
            create = library.LGBM_BoosterCreateFromModelfile
            create.argtypes = [ctypes.c_char_p, ctypes.POINTER(ctypes.c_int),
                               ctypes.POINTER(ctypes.c_void_p)]
            create.restype = ctypes.c_int
            count = library.LGBM_BoosterNumberOfTotalModel
            count.argtypes = [ctypes.c_void_p, ctypes.POINTER(ctypes.c_int)]
            count.restype = ctypes.c_int
            library.LGBM_BoosterFree.argtypes = [ctypes.c_void_p]
            library.LGBM_BoosterFree.restype = ctypes.c_int
            predict = library.LGBM_BoosterPredictForMat
            predict.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int, ctypes.c_int32,
                                ctypes.c_int32, ctypes.c_int, ctypes.c_int, ctypes.c_int,
                                ctypes.c_int, ctypes.c_char_p, ctypes.POINTER(ctypes.c_int64),
                                ctypes.c_void_p]
            predict.restype = ctypes.c_int
        _NATIVE.append(library)
    return _NATIVE[0]


class NativeBooster:
    """A model loaded by LightGBM's shared library directly (module docstring): the three
    things serving asks of a ``lightgbm.Booster``, without importing the package."""

    __slots__ = ("_handle", "_library", "_names", "predict_for_mat")

    def __init__(self, library: Any, handle: ctypes.c_void_p, names: tuple[str, ...]) -> None:
        self._library = library
        self._handle = handle
        self._names = names
        self.predict_for_mat = library.LGBM_BoosterPredictForMat

    @classmethod
    def load(cls, model_path: Path) -> NativeBooster | None:
        """The model in ``model_path`` (LightGBM's text format), or None when the shared
        library is not found. A model the library refuses raises ``ArtifactError``."""
        library = _native_library()
        if library is None:
            return None
        handle = ctypes.c_void_p()
        iterations = ctypes.c_int(0)
        if library.LGBM_BoosterCreateFromModelfile(str(model_path).encode(),
                                                   ctypes.byref(iterations),
                                                   ctypes.byref(handle)) != 0:
            raise ArtifactError(f"{model_path}: LightGBM cannot load it: "
                                f"{library.LGBM_GetLastError().decode(errors='replace')}")
        return cls(library, handle, _feature_names(model_path))

    def feature_name(self) -> list[str]:
        return list(self._names)

    def num_trees(self) -> int:
        trees = ctypes.c_int(0)
        if self._library.LGBM_BoosterNumberOfTotalModel(self._handle, ctypes.byref(trees)):
            raise RuntimeError(f"LightGBM: {self._library.LGBM_GetLastError().decode()}")
        return trees.value

    def __del__(self) -> None:
        handle = getattr(self, "_handle", None)
        if handle is not None and handle.value:
            # at interpreter exit the library may already be unloaded: nothing left to free
            with contextlib.suppress(Exception):
                self._library.LGBM_BoosterFree(handle)
            handle.value = None


def _feature_names(model_path: Path) -> tuple[str, ...]:
    """The ``feature_names=`` line of a LightGBM text model's header (before the trees)."""
    with model_path.open("rb") as model:
        for line in model:
            if line.startswith(b"feature_names="):
                return tuple(line[len(b"feature_names="):].decode().split())
            if line.startswith(b"Tree="):
                break
    return ()


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


def _last_error(booster: Any) -> str:
    if isinstance(booster, NativeBooster):
        native: bytes = booster._library.LGBM_GetLastError()
        return native.decode(errors="replace")
    from lightgbm.basic import _LIB  # type: ignore[attr-defined]

    message: bytes = _LIB.LGBM_GetLastError()
    return message.decode(errors="replace")
