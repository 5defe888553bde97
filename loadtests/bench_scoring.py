"""Scoring time of one decision's candidates: features + model, beside LightGBM's plain
``predict``.

For 1, 24, 96 and 168 candidates of one user (a profile with a few weeks of history),
times, per call (median and p99 of ``--repeat`` calls, one thread):

* ``features``: ``models.features.candidate_features`` (the float32 matrix, filled by
  column index, no pandas, no loop over candidates or features);
* ``scorer``: ``models.scorer.Scorer.score`` on those rows (what serving calls);
* ``lgb.predict``: ``lightgbm.Booster.predict`` on the same rows, the plain baseline;
* ``heuristic``: ``models.features.fallback_scores`` (no model);
* ``choose``: ``api.scoring.score_slots`` on a real plan with the same number of slots per
  channel (slot generation + features + model + expected value), what ``Engine.decide``
  adds.

    python -m loadtests.bench_scoring --model artifacts/model
    python -m loadtests.bench_scoring            # the bundled model (what a fresh install serves)
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import lightgbm
import numpy as np

from models.bundled_model import BUNDLED_MODEL_DIR
from models.features import candidate_features, fallback_scores
from models.profile import Profile
from models.scorer import Scorer

NOW = 1_781_107_200  # 2026-06-10T16:00:00Z


def profile_with_history(rng: np.random.Generator) -> Profile:
    profile = Profile()
    for _ in range(60):
        at = NOW - int(rng.uniform(3600, 60 * 86400))
        profile.record_activity(at, int(rng.integers(0, 168)))
    for _ in range(20):
        at = NOW - int(rng.uniform(3600, 30 * 86400))
        channel = int(rng.integers(0, 5))
        profile.record_send(at, channel)
        if rng.random() < 0.3:
            profile.record_engagement(at + 600, channel, int(rng.integers(0, 168)))
    return profile


def timed(fn: Callable[[], object], repeat: int) -> tuple[float, float]:
    fn()  # warm up (holiday tables, lightgbm's first-call setup)
    samples = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    samples.sort()
    return statistics.median(samples) * 1e6, samples[int(0.99 * (len(samples) - 1))] * 1e6


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtests.bench_scoring",
                                     description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, help="model artifact (default: build one)")
    parser.add_argument("--repeat", type=int, default=500)
    parser.add_argument("--threads", type=int, default=1, help="LightGBM threads")
    args = parser.parse_args(argv)
    directory = args.model
    if directory is None:
        directory = BUNDLED_MODEL_DIR
    scorer = Scorer.load(directory, num_threads=args.threads)
    booster = lightgbm.Booster(model_file=str(Path(directory) / "model.txt"))
    rng = np.random.default_rng(1)
    profile = profile_with_history(rng)
    print(f"model {scorer.model_version} ({scorer.manifest.objective}, "
          f"{booster.num_trees()} trees), lightgbm {lightgbm.__version__}, "
          f"{args.threads} thread(s), {args.repeat} calls each; microseconds per call, "
          "median / p99")
    print(f"{'candidates':>10} {'features':>16} {'scorer':>16} {'lgb.predict':>16} "
          f"{'heuristic':>16} {'feat+scorer':>16}")
    for n in (1, 24, 96, 168):
        channels = np.arange(n, dtype=np.int64) % 2
        instants = NOW + 3600 * (np.arange(n, dtype=np.int64) // 2)

        def features(channels: np.ndarray = channels, instants: np.ndarray = instants
                     ) -> np.ndarray:
            return candidate_features(profile, now=NOW, channels=channels, instants=instants,
                                      zone_name="America/New_York", priors=scorer.priors,
                                      category="promotional")

        rows = features()
        if not np.allclose(scorer.score(rows), booster.predict(rows), atol=1e-6):
            raise SystemExit("the scorer disagrees with lightgbm")
        cols = [timed(features, args.repeat),
                timed(lambda rows=rows: scorer.score(rows), args.repeat),
                timed(lambda rows=rows: booster.predict(rows, num_threads=args.threads),
                      args.repeat),
                timed(lambda rows=rows: fallback_scores(rows), args.repeat),
                timed(lambda: scorer.score(features()), args.repeat)]
        print(f"{n:>10} " + " ".join(f"{m:>8.0f} / {p:>5.0f}" for m, p in cols))
    return 0


if __name__ == "__main__":
    sys.exit(main())
