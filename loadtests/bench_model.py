"""The model the benchmarks score with: by default the one ``sendwise serve`` scores with.

A decision benchmark that scores with the smoothed-histogram heuristic measures a cheaper
decision than production makes, so every decision benchmark (``bench_decisions``,
``bench_engine``, ``bench_limits``, ``bench_choose``, ``bench_admission``) scores with the
bundled LightGBM model (``models/bundled_model.py``: trained on the real activity sample,
champion gate passed) unless ``--model heuristic`` asks for the heuristic (for comparison)
or ``--model DIR`` names another artifact (forced if it did not pass its gate).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

from models.artifact import read_manifest
from models.bundled_model import BUNDLED_MODEL_DIR, HEURISTIC_CHOICE
from models.features import HEURISTIC_VERSION

#: ``--model`` value that scores with the heuristic instead of a model
HEURISTIC = HEURISTIC_CHOICE
#: ``--model`` value for the bundled model (the default)
DEFAULT = "bundled"


@dataclass(frozen=True)
class BenchModel:
    """What a benchmark scores with. ``directory`` None: the heuristic."""

    directory: Path | None
    #: the model must be forced (it did not pass its champion gate)
    force: bool
    #: the ``model_version`` decisions scored by it report
    version: str
    trees: int
    source: str

    def describe(self) -> str:
        if self.directory is None:
            return f"scoring with the heuristic ({self.version}; --model {HEURISTIC})"
        return (f"scoring with LightGBM model {self.version} ({self.trees} trees, "
                f"{self.source}{', forced: it did not pass its champion gate' if self.force else ''}"
                f"; {self.directory})")


def _trees(directory: Path) -> int:
    import lightgbm

    return int(lightgbm.Booster(model_file=str(directory / "model.txt")).num_trees())


def _describe_dir(directory: Path, source: str) -> BenchModel:
    manifest = read_manifest(directory)
    gate = manifest.champion
    return BenchModel(directory, force=gate is None or not gate.passed,
                      version=manifest.model_version, trees=_trees(directory), source=source)


def resolve(choice: str | None) -> BenchModel:
    """``--model``: ``bundled`` (default), ``heuristic``, or an artifact directory."""
    if choice in (None, DEFAULT):
        return _describe_dir(BUNDLED_MODEL_DIR, "the bundled model, trained on real activity")
    if choice == HEURISTIC:
        return BenchModel(None, force=False, version=HEURISTIC_VERSION, trees=0,
                          source="heuristic")
    return _describe_dir(Path(choice), f"artifact {choice}")


def add_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model", default=DEFAULT,
        help=f"what scores the decisions: '{DEFAULT}' (default: the model `sendwise serve` "
             f"scores with, models/bundled), '{HEURISTIC}' (the smoothed-histogram "
             "heuristic, for comparison), or a model artifact directory (forced if it did "
             "not pass its champion gate)")
