"""A model for a fresh install: simulate a small world and train on it, once.

``sendwise serve`` calls ``ensure_default_model`` so the decision path has a real model
from the first request (instead of only the heuristic), until the platform trains one on
its own logs. The simulated world is generic (many time zones, common daily rhythms), so
this model mostly encodes "people engage in their active hours, fatigue hurts" and
learns each user from their own profile features; it is no substitute for training on
real logs. Small on purpose: it builds in ~10-20 s on a 2-core machine.

It does **not** pass the champion gate (measured in ``docs/model.md``: on its 494 held-out
opens its hit@3 is 0.010 below the smoothed-histogram heuristic, its log-loss 0.033 nats
better), and its manifest says so: serving must keep the heuristic for a fresh install
unless it is forced (``models.artifact.check_champion``).
"""

from __future__ import annotations

import fcntl
import tempfile
from pathlib import Path

from models.artifact import is_artifact

#: Small enough to build in seconds on 2 busy cores; too small for the model to beat the
#: heuristic (see the module docstring).
DEFAULT_USERS = 3_000
DEFAULT_DAYS = 42


def ensure_default_model(directory: Path, *, progress: bool = False) -> Path:
    """Return ``directory``, first training a default model into it if it has none.

    Safe when several workers start at once: a lock file serialises the build and the
    artifact appears atomically, so the others find it ready.
    """
    directory = Path(directory)
    if is_artifact(directory):
        return directory
    directory.parent.mkdir(parents=True, exist_ok=True)
    lock_path = directory.parent / f".{directory.name}.lock"
    with lock_path.open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not is_artifact(directory):
            _build(directory, progress=progress)
    return directory


def _build(directory: Path, *, progress: bool) -> None:
    from training.fit import FitConfig
    from training.pipeline import TrainConfig, train
    from training.simulate import SimulationConfig, simulate

    with tempfile.TemporaryDirectory(prefix="sendwise-default-") as tmp:
        data = Path(tmp)
        simulate(SimulationConfig(users=DEFAULT_USERS, days=DEFAULT_DAYS, seed=7), data,
                 progress=progress)
        train(TrainConfig(out=directory, messages=data / "messages.parquet",
                          activity=data / "activity.parquet", valid_days=7, tune_days=4,
                          ranking_instances=3_000,
                          fit=FitConfig(max_trees=100, min_data_in_leaf=100, num_threads=1),
                          progress=progress))
