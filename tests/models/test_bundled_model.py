"""The model bundled with sendwise is what ``sendwise serve`` scores with out of the box:
it loads and passes its champion gate without force, matches the feature layout serving
computes, and is exactly what the recipe in ``training.bundled_model`` builds from the
real activity sample."""

from __future__ import annotations

from pathlib import Path

import pytest

from api.scoring import ModelRegistry
from api.settings import Settings
from models.artifact import MODEL_FILE, file_sha256, read_manifest
from models.bundled_model import BUNDLED_MODEL_DIR
from models.features import FEATURE_HASH, HEURISTIC_VERSION
from training.bundled_model import REAL_SAMPLE, rebuild

REBUILD = "python -m training.bundled_model"


def test_the_bundled_model_matches_the_feature_layout() -> None:
    manifest = read_manifest(BUNDLED_MODEL_DIR)
    assert manifest.feature_hash == FEATURE_HASH, (
        f"the feature layout changed since the bundled model was trained: run `{REBUILD}`")
    assert file_sha256(BUNDLED_MODEL_DIR / MODEL_FILE) == manifest.model_sha256


def test_the_bundled_model_serves_without_force() -> None:
    registry = ModelRegistry()
    active = registry.load(BUNDLED_MODEL_DIR)
    gate = read_manifest(BUNDLED_MODEL_DIR).champion
    assert gate is not None and gate.passed and gate.rival == "smoothed_histogram"
    assert active.version == read_manifest(BUNDLED_MODEL_DIR).model_version != HEURISTIC_VERSION
    assert active.note == "champion gate passed"


@pytest.mark.parametrize(("raw", "expected"), [
    (None, str(BUNDLED_MODEL_DIR)),
    ("", str(BUNDLED_MODEL_DIR)),
    ("heuristic", None),
    (" heuristic ", None),
    ("/srv/models/v7", "/srv/models/v7"),
])
def test_sendwise_model_dir_defaults_to_the_bundled_model(raw: str | None,
                                                          expected: str | None) -> None:
    env = {} if raw is None else {"SENDWISE_MODEL_DIR": raw}
    assert Settings.from_env(env).model_dir == expected
    assert Settings().model_dir is None  # embedding code and tests: the heuristic


@pytest.mark.slow
@pytest.mark.skipif(not REAL_SAMPLE.is_file(),
                    reason=f"real activity sample not found at {REAL_SAMPLE} (expected in "
                           "../shared/data beside the repository)")
def test_the_recipe_rebuilds_the_bundled_model_bit_for_bit(tmp_path: Path) -> None:
    version = rebuild(REAL_SAMPLE, tmp_path / "bundled", quiet=True)
    shipped = read_manifest(BUNDLED_MODEL_DIR)
    assert version == shipped.model_version, (
        f"the recipe now builds another model: run `{REBUILD}` and commit models/bundled")
    assert (tmp_path / "bundled" / MODEL_FILE).read_bytes() == \
        (BUNDLED_MODEL_DIR / MODEL_FILE).read_bytes()
