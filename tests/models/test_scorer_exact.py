"""The serving scorer returns LightGBM's own predictions (issue 8): the float32 rows
``models.features`` builds go to the booster unchanged, nothing is approximated."""

from __future__ import annotations

from pathlib import Path

import lightgbm
import numpy as np

from models.features import FEATURES, candidate_features
from models.priors import DEFAULT_PRIORS
from models.profile import Profile
from models.scorer import Scorer
from tests.modelkit import write_tiny_model

NOW = 1_781_107_200  # 2026-06-10T16:00:00Z


def test_scorer_equals_lightgbm_predict_on_random_inputs(tmp_path: Path) -> None:
    directory = write_tiny_model(tmp_path / "m", seed=5)
    scorer = Scorer.load(directory, num_threads=1)
    booster = lightgbm.Booster(model_file=str(directory / "model.txt"))
    rng = np.random.default_rng(11)
    # arbitrary rows, NaNs (LightGBM's missing) included, in float64 for the reference
    rows = rng.normal(scale=5.0, size=(500, len(FEATURES))).astype(np.float32)
    rows[rng.uniform(size=rows.shape) < 0.05] = np.nan
    rows[:, 4] = rng.integers(0, 6, 500)
    rows[:, 5] = rng.integers(0, 32, 500)
    np.testing.assert_allclose(scorer.score(rows), booster.predict(rows.astype(np.float64)),
                               rtol=0, atol=1e-6)
    # and rows as serving builds them, from random profiles and candidates
    for seed in range(5):
        r = np.random.default_rng(seed)
        profile = Profile()
        for _ in range(int(r.integers(0, 40))):
            at = NOW - int(r.uniform(60, 90 * 86400))
            profile.record_activity(at, int(r.integers(0, 168)))
            if r.random() < 0.5:
                profile.record_send(at, int(r.integers(0, 5)))
        n = int(r.integers(1, 169))
        built = candidate_features(
            profile, now=NOW, channels=r.integers(0, 6, n),
            instants=NOW + r.integers(0, 7 * 86400, n), zone_name="Asia/Kolkata",
            priors=DEFAULT_PRIORS, category="promotional")
        assert built.dtype == np.float32 and built.shape == (n, len(FEATURES))
        np.testing.assert_allclose(scorer.score(built),
                                   booster.predict(built.astype(np.float64)), rtol=0,
                                   atol=1e-6)
