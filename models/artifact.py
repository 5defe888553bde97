"""The model artifact: a directory with the native LightGBM ``model.txt`` and a manifest.

Native text (not pickle) so any LightGBM >= 4 can load it and a human can diff it; the
manifest records what serving needs to trust it: the feature hash it was trained with,
the priors its features were smoothed toward, where the data came from, and how it did
against the baselines, and whether it passed the **champion gate** (beat the strongest
simple heuristic on held-out time). Written by ``training``; read by ``models.scorer``.
Serving promotes a model only through ``check_champion``: a model that lost to the
heuristic is refused unless forced, and the heuristic (``models.features.fallback_scores``)
keeps serving.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import msgspec

ARTIFACT_FORMAT_VERSION = 2
MODEL_FILE = "model.txt"
MANIFEST_FILE = "manifest.json"

Metric = dict[str, float]


class ArtifactError(ValueError):
    """A model directory that cannot be used (missing files, bad manifest, wrong format)."""


class DataWindow(msgspec.Struct, kw_only=True):
    """UTC ISO-8601 instants: training used [start, split), validation [split, end)."""

    start: str
    split: str
    end: str


class NotChampionError(ArtifactError):
    """The model did not beat the strongest heuristic on held-out time (or was not judged)."""


class ChampionGate(msgspec.Struct, kw_only=True):
    """The held-out comparison with the strongest heuristic (deltas: model - heuristic)."""

    passed: bool
    rival: str
    better_than_chance: bool
    hit1_delta: float
    hit3_delta: float
    log_loss_delta: float   # negative = the model is better
    n: int

    def summary(self) -> str:
        verdict = "PASSED: the model beats" if self.passed else \
            "FAILED: the model does NOT beat"
        chance = "" if self.better_than_chance else " It is no better than chance."
        return (f"Champion gate {verdict} {self.rival} on the held-out period "
                f"({self.n} events): hit@3 {self.hit3_delta:+.3f}, hit@1 "
                f"{self.hit1_delta:+.3f}, log-loss {self.log_loss_delta:+.4f} nats "
                f"(negative is better).{chance}"
                + ("" if self.passed else " Serving keeps the heuristic unless forced."))


class Manifest(msgspec.Struct, kw_only=True):
    """Everything about a trained model except its trees. New fields need defaults."""

    format_version: int
    feature_version: int
    feature_hash: str
    features: list[str]
    categorical_features: list[str]
    lightgbm_version: str
    created_at: str
    model_sha256: str
    label: str
    label_window_seconds: int
    data_window: DataWindow
    row_counts: dict[str, int]
    metrics: Metric
    baselines: dict[str, Metric] = msgspec.field(default_factory=dict)
    policies: dict[str, Metric] = msgspec.field(default_factory=dict)
    priors: dict[str, object] = msgspec.field(default_factory=dict)
    params: dict[str, object] = msgspec.field(default_factory=dict)
    sources: list[str] = msgspec.field(default_factory=list)
    #: "lambdarank" (scores order a day's hours) or "binary" (scores are probabilities).
    objective: str = "binary"
    #: A ranker's P(hour | day) = softmax(score_weight * score + heuristic_weight * log
    #: heuristic share) over the day's slots; both weights are fitted on the tune slice.
    score_weight: float = 1.0
    heuristic_weight: float = 0.0
    champion: ChampionGate | None = None

    @property
    def model_version(self) -> str:
        """Short stable id of the trees (what decisions report as the model version)."""
        return self.model_sha256[:12]


def file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def write_manifest(directory: Path, manifest: Manifest) -> Path:
    path = directory / MANIFEST_FILE
    path.write_bytes(msgspec.json.format(msgspec.json.encode(manifest), indent=2) + b"\n")
    return path


def read_manifest(directory: Path) -> Manifest:
    """Parse ``directory/manifest.json``; ``ArtifactError`` says what is wrong."""
    path = directory / MANIFEST_FILE
    if not path.is_file():
        raise ArtifactError(f"{directory} is not a model artifact: {MANIFEST_FILE} missing")
    try:
        manifest = msgspec.json.decode(path.read_bytes(), type=Manifest)
    except msgspec.ValidationError as exc:
        raise ArtifactError(f"{path}: invalid manifest: {exc}") from exc
    except msgspec.DecodeError as exc:
        raise ArtifactError(f"{path}: not JSON: {exc}") from exc
    if manifest.format_version != ARTIFACT_FORMAT_VERSION:
        raise ArtifactError(f"{path}: artifact format {manifest.format_version}, this "
                            f"sendwise reads format {ARTIFACT_FORMAT_VERSION}")
    return manifest


def is_artifact(directory: Path) -> bool:
    return (directory / MANIFEST_FILE).is_file() and (directory / MODEL_FILE).is_file()


def check_champion(manifest: Manifest, *, force: bool = False) -> None:
    """Raise ``NotChampionError`` unless the model passed its champion gate (or ``force``).

    Serving calls this before promoting a model: a model that did not beat the smoothed
    histogram on held-out time would make decisions worse than no model at all.
    """
    if force:
        return
    gate = manifest.champion
    if gate is None:
        raise NotChampionError(f"model {manifest.model_version} has no champion gate result "
                               "(trained by an older sendwise); retrain it or force it")
    if not gate.passed:
        raise NotChampionError(f"model {manifest.model_version}: {gate.summary()}")
