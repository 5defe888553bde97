"""A tiny simulated world and a model trained on it, shared by the training tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from training.fit import FitConfig
from training.pipeline import TrainConfig, TrainResult, train
from training.simulate import SimulationConfig, simulate

TINY = SimulationConfig(users=400, days=21, seed=11)


@pytest.fixture(scope="session")
def sim_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("sim")
    simulate(TINY, out, progress=False)
    return out


@pytest.fixture(scope="session")
def trained(sim_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> TrainResult:
    out = tmp_path_factory.mktemp("model") / "artifact"
    return train(TrainConfig(
        out=out, messages=sim_dir / "messages.parquet", activity=sim_dir / "activity.parquet",
        truth=sim_dir / "truth.npz", report=out.parent / "report.html", valid_days=5,
        tune_days=3, oracle_pairs=300,
        # one thread: OpenMP threads spin on a busy machine (CI shares its cores)
        fit=FitConfig(max_trees=40, min_data_in_leaf=50, num_threads=1),
        progress=False))
