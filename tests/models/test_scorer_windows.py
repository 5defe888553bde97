"""The scorer's fast paths against LightGBM's own API and the plain per-window loop:
``Scorer.score`` calls the C prediction entry point directly (it must return exactly what
``Booster.predict`` returns for the same float32 rows), and ``window_distribution`` is
``day_distribution`` window by window in one pass (equal up to the order of additions)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import lightgbm
import msgspec
import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import models.scorer as scorer_module
from models.features import FEATURES
from models.scorer import Scorer
from tests.modelkit import write_tiny_model


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_model(tmp_path_factory.mktemp("tiny") / "m", seed=3)


def _rows(rng: np.random.Generator, n: int) -> npt.NDArray[np.float32]:
    rows = rng.normal(scale=5.0, size=(n, len(FEATURES))).astype(np.float32)
    rows[rng.uniform(size=rows.shape) < 0.05] = np.nan
    rows[:, 4] = rng.integers(0, 6, n)
    rows[:, 5] = rng.integers(0, 32, n)
    return rows


@pytest.mark.parametrize("threads", [0, 1, 2])
def test_score_is_booster_predict_exactly(tiny: Path, threads: int) -> None:
    scorer = Scorer.load(tiny, num_threads=threads)
    booster = lightgbm.Booster(model_file=str(tiny / "model.txt"))
    rng = np.random.default_rng(threads)
    for n in (1, 2, 45, 333):
        rows = _rows(rng, n)
        kwargs = {"num_threads": threads} if threads else {}
        assert np.array_equal(scorer.score(rows), booster.predict(rows, **kwargs))
        # a non-contiguous view and float64 rows give the same answer too
        wide = np.repeat(rows, 2, axis=0)[::2]
        assert np.array_equal(scorer.score(wide), scorer.score(rows))
        assert np.array_equal(scorer.score(rows.astype(np.float64)), scorer.score(rows))
    assert scorer.trees == booster.num_trees()
    assert scorer.score(np.zeros((0, len(FEATURES)), dtype=np.float32)).shape == (0,)


def _ranker(tiny: Path, objective: str) -> Scorer:
    scorer = Scorer.load(tiny)
    scorer.manifest = msgspec.structs.replace(scorer.manifest, objective=objective,
                                              score_weight=0.7, heuristic_weight=0.4)
    return scorer


@settings(max_examples=120, deadline=None)
@given(sizes=st.lists(st.integers(1, 60), min_size=1, max_size=6),
       seed=st.integers(0, 10_000), objective=st.sampled_from(["rank_xendcg", "binary"]),
       spread=st.sampled_from([0.1, 3.0, 40.0]))
def test_window_distribution_is_day_distribution_per_window(
        tiny: Path, sizes: list[int], seed: int, objective: str, spread: float) -> None:
    scorer = _ranker(tiny, objective)
    rng = np.random.default_rng(seed)
    n = sum(sizes)
    scores = (rng.normal(scale=spread, size=n) if objective != "binary"
              else rng.uniform(0, 1, size=n) * (rng.uniform(size=n) > 0.1))
    heuristic = rng.uniform(0, 3, size=n) * (rng.uniform(size=n) > 0.05)
    sizes_array = np.asarray(sizes, dtype=np.intp)
    heads = np.concatenate([[0], np.cumsum(sizes_array)[:-1]]).astype(np.intp)
    got = scorer.window_distribution(scores, heuristic, heads, sizes_array)
    for lo, size in zip(heads.tolist(), sizes, strict=True):
        sel = slice(lo, lo + size)
        want = scorer.day_distribution(scores[sel][None, :], heuristic[sel][None, :])[0]
        np.testing.assert_allclose(got[sel], want, rtol=1e-12, atol=1e-15)


def test_serving_loads_the_model_without_importing_the_lightgbm_package(tiny: Path) -> None:
    """The API worker's scorer goes through LightGBM's shared library: the Python package
    (and the pandas/pyarrow/scipy/scikit-learn it pulls in, ~175 MB per worker) stays out."""
    code = (f"import sys; from models.scorer import Scorer, NativeBooster; "
            f"s = Scorer.load({str(tiny)!r}); "
            "assert isinstance(s._booster, NativeBooster), type(s._booster); "
            "import numpy as np; from models.features import FEATURES; "
            "assert s.score(np.zeros((3, len(FEATURES)), dtype=np.float32)).shape == (3,); "
            "assert 'lightgbm' not in sys.modules and 'pandas' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_without_the_shared_library_the_package_booster_scores_the_same(
        tiny: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    native = Scorer.load(tiny)
    monkeypatch.setattr(scorer_module, "_NATIVE", [None])  # as if no library were found
    fallback = Scorer.load(tiny)
    assert isinstance(fallback._booster, lightgbm.Booster)
    rows = _rows(np.random.default_rng(9), 200)
    assert np.array_equal(native.score(rows), fallback.score(rows))
    assert native.trees == fallback.trees
