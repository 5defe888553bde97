"""The model the benchmarks score with: a real trained LightGBM model, built once and cached.

A decision benchmark that scores with the smoothed-histogram heuristic measures a cheaper
decision than production makes (``sendwise serve`` scores with the LightGBM model that
passed its champion gate), so every decision benchmark (``bench_decisions``, ``bench_engine``,
``bench_limits``) scores with the model this module provides unless ``--model heuristic``
asks for the heuristic (for comparison) or ``--model DIR`` names an artifact.

Which model: trained on the real activity sample ``../shared/data/real_activity_sample.csv.gz``
(``sendwise train --activity ... --split 2017-08-01T04:00:00Z --tune-days 31``; it passes its
champion gate, ~35 s on 2 cores) when the sample is there, else the simulated default
model (``training.default_model.ensure_default_model``, ~15 s), which does *not* pass its
gate and is therefore forced. Either is built once into a cache directory outside the
repository (``$XDG_CACHE_HOME/sendwise/bench-model-<source>-<feature hash>``, default
``~/.cache``) and reused by later runs: the feature hash in the name means a change of the
feature definition builds a new one instead of being refused at load.
"""

from __future__ import annotations

import argparse
import fcntl
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from models.artifact import is_artifact, read_manifest
from models.features import FEATURE_HASH, HEURISTIC_VERSION

ROOT = Path(__file__).resolve().parent.parent
#: the real activity sample (outside the repository: ../shared/data/README.md);
#: ``SENDWISE_BENCH_ACTIVITY`` names it for a checkout that is not beside ``shared``
REAL_SAMPLE = Path(os.environ.get("SENDWISE_BENCH_ACTIVITY")
                   or ROOT.parent / "shared" / "data" / "real_activity_sample.csv.gz")
#: train before it, hold out from it (the sample's last two months)
REAL_SPLIT = "2017-08-01T04:00:00Z"
REAL_TUNE_DAYS = "31"
#: ``--model`` value that scores with the heuristic instead of a model
HEURISTIC = "heuristic"
#: ``--model`` value for the cached benchmark model (the default)
DEFAULT = "lightgbm"


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


def cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "sendwise"


def _trees(directory: Path) -> int:
    import lightgbm

    return int(lightgbm.Booster(model_file=str(directory / "model.txt")).num_trees())


def _describe_dir(directory: Path, source: str) -> BenchModel:
    manifest = read_manifest(directory)
    gate = manifest.champion
    return BenchModel(directory, force=gate is None or not gate.passed,
                      version=manifest.model_version, trees=_trees(directory), source=source)


def _build_real(target: Path) -> None:
    """``sendwise train`` on the real sample into a temporary sibling, renamed into place
    when complete (a run interrupted mid-build leaves no half artifact behind)."""
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        cmd = [sys.executable, "-m", "sendwise", "train", "--activity", str(REAL_SAMPLE),
               "--split", REAL_SPLIT, "--tune-days", REAL_TUNE_DAYS, "--out", str(tmp / "m"),
               "--no-report", "--quiet"]
        subprocess.run(cmd, cwd=ROOT, check=True, stdout=subprocess.DEVNULL)  # noqa: S603
        (tmp / "m").rename(target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def ensure_bench_model(*, progress: bool = True) -> BenchModel:
    """The cached benchmark model, built on first use (module docstring)."""
    root = cache_root()
    root.mkdir(parents=True, exist_ok=True)
    real = REAL_SAMPLE.is_file()
    source = "real activity sample" if real else "simulated default model"
    target = root / f"bench-model-{'real' if real else 'simulated'}-{FEATURE_HASH}"
    if not is_artifact(target):
        # (not ``ensure_default_model``'s own lock file: flock on a second descriptor of
        # the same file would wait for ourselves)
        with (root / f".{target.name}.building").open("w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # concurrent benchmarks build it once
            if not is_artifact(target):
                t0 = time.perf_counter()
                if progress:
                    print(f"building the benchmark model ({source}) into {target}; "
                          "once, later runs reuse it ...", file=sys.stderr, flush=True)
                if real:
                    _build_real(target)
                else:
                    from training.default_model import ensure_default_model

                    ensure_default_model(target)
                if progress:
                    print(f"built in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    return _describe_dir(target, source)


def resolve(choice: str | None) -> BenchModel:
    """``--model``: ``lightgbm`` (default, the cached model), ``heuristic``, or a directory."""
    if choice in (None, DEFAULT):
        return ensure_bench_model()
    if choice == HEURISTIC:
        return BenchModel(None, force=False, version=HEURISTIC_VERSION, trees=0,
                          source="heuristic")
    return _describe_dir(Path(choice), f"artifact {choice}")


def add_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model", default=DEFAULT,
        help=f"what scores the decisions: '{DEFAULT}' (default: a LightGBM model trained on "
             "the real activity sample, else the simulated default model, cached under "
             f"$XDG_CACHE_HOME/sendwise and built on first use), '{HEURISTIC}' (the "
             "smoothed-histogram heuristic, for comparison), or a model artifact directory "
             "(forced if it did not pass its champion gate)")
