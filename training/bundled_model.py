"""Rebuild the model bundled with sendwise (``models/bundled_model.py``) from the real sample.

    python -m training.bundled_model [--activity ../shared/data/real_activity_sample.csv.gz]

The recipe lives here, once: ``sendwise train`` on the sample's activity log, the last two
months (from 2017-08-01, local midnight in New York) held out for the champion gate and the
month before them as the tune slice. The new artifact replaces the bundled one only when it
passed its gate, so the package never ships a model that loses to the heuristic. Run it after
a change of the feature layout (``models/features.py``): serving refuses an artifact whose
feature hash differs, and ``tests/models/test_bundled_model.py`` fails first to say so.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from models.artifact import MANIFEST_FILE, MODEL_FILE, read_manifest
from models.bundled_model import BUNDLED_MODEL_DIR

#: the real activity sample beside the repository (``../shared/data/README.md``)
REAL_SAMPLE = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / \
    "real_activity_sample.csv.gz"
#: held out from here on: the sample's last two months
SPLIT = "2017-08-01T04:00:00Z"
#: the month before the split tunes the ranker's calibration
TUNE_DAYS = "31"


def train_arguments(activity: Path, out: Path) -> list[str]:
    """The ``sendwise train`` command line of the recipe."""
    return ["train", "--activity", str(activity), "--split", SPLIT, "--tune-days", TUNE_DAYS,
            "--out", str(out), "--no-report"]


def rebuild(activity: Path, target: Path = BUNDLED_MODEL_DIR, *, quiet: bool = False) -> str:
    """Train by the recipe and, if the model passed its gate, replace ``target``'s files.

    Returns the new model version; raises ``SystemExit`` (leaving ``target`` as it was) when
    the gate failed.
    """
    from sendwise.cli import main as sendwise_main

    with tempfile.TemporaryDirectory(prefix="sendwise-bundled-") as tmp:
        out = Path(tmp) / "model"
        code = sendwise_main(train_arguments(activity, out) + (["--quiet"] if quiet else []))
        if code:
            raise SystemExit(code)
        manifest = read_manifest(out)
        gate = manifest.champion
        if gate is None or not gate.passed:
            raise SystemExit(f"the new model did not pass its champion gate "
                             f"({gate.summary() if gate else 'no gate'}); {target} unchanged")
        target.mkdir(parents=True, exist_ok=True)
        for name in (MODEL_FILE, MANIFEST_FILE):  # the manifest last: it names the trees' hash
            shutil.copyfile(out / name, target / f".{name}.new")
            (target / f".{name}.new").replace(target / name)
        return manifest.model_version


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.bundled_model",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--activity", type=Path, default=REAL_SAMPLE,
                        help="the real activity sample (default: %(default)s)")
    parser.add_argument("--out", type=Path, default=BUNDLED_MODEL_DIR,
                        help="artifact directory to replace (default: the bundled model)")
    parser.add_argument("--quiet", action="store_true", help="no progress lines")
    args = parser.parse_args(argv)
    if not args.activity.is_file():
        parser.error(f"--activity: no file at {args.activity}")
    version = rebuild(args.activity, args.out, quiet=args.quiet)
    print(f"bundled model {version} -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
