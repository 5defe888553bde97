"""Fit the LightGBM model and write the artifact (the only training module using lightgbm).

Two objectives, one per kind of log:

* ``lambdarank`` (activity logs): one query per (user, local day), 24 hour slots, labels
  = events in the hour. It learns to *order one user's hours within a day*, which is the
  decision; raw scores become P(hour | day) through a softmax with a temperature fitted on
  the tune slice (``fit_temperature``), because expected value needs probabilities.
* ``binary`` (message logs): P(engaged within the window | sent), already a probability.

Model selection happens on a later time slice than the one trained on (NDCG@3 for the
ranker, log-loss for the classifier); then the model is **refit on everything up to the
split** with the selected number of trees, so the served model has seen the latest data.
Small on purpose: serving scores ~100 candidates per request and LightGBM's cost grows
with trees x leaves. Seeds are fixed and ``deterministic`` is on, so the same data gives
the same model. ``fit_dask`` trains the same model on a Dask cluster.
"""

from __future__ import annotations

import shutil
import tempfile
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from models.artifact import (
    ARTIFACT_FORMAT_VERSION,
    MODEL_FILE,
    DataWindow,
    Manifest,
    file_sha256,
    write_manifest,
)
from models.features import CATEGORICAL_FEATURES, FEATURE_HASH, FEATURE_VERSION, FEATURES
from training.dataset import Progress

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]


#: LightGBM's listwise objectives (one query = one user-day): ``rank_xendcg`` is a softmax
#: cross-entropy over the day's hours, ``lambdarank`` optimises NDCG directly.
RANKING_OBJECTIVES = ("rank_xendcg", "lambdarank")


@dataclass(frozen=True)
class FitConfig:
    max_trees: int = 200
    num_leaves: int = 31
    learning_rate: float = 0.05
    min_data_in_leaf: int = 200
    early_stopping_rounds: int = 30
    seed: int = 7
    num_threads: int = 2
    #: "binary" for message logs; for activity logs one of ``RANKING_OBJECTIVES``.
    objective: str = "binary"
    refit: bool = True

    @property
    def ranking(self) -> bool:
        return self.objective in RANKING_OBJECTIVES

    def params(self) -> dict[str, Any]:
        ranking = self.ranking
        return {
            "objective": self.objective,
            "metric": "ndcg" if ranking else "binary_logloss",
            **({"eval_at": [3]} if ranking else {}),
            "learning_rate": self.learning_rate, "num_leaves": self.num_leaves,
            "min_data_in_leaf": self.min_data_in_leaf, "feature_fraction": 0.9,
            "bagging_fraction": 0.8, "bagging_freq": 1, "lambda_l2": 1.0,
            "max_bin": 127, "seed": self.seed, "deterministic": True,
            "force_row_wise": True, "num_threads": self.num_threads, "verbosity": -1,
        }


@dataclass
class FitResult:
    model_text: str
    best_iteration: int
    importance_gain: dict[str, float]
    tune_curve: list[float] = field(default_factory=list)
    refit_rows: int = 0
    #: The selected first-stage model's scores on the tune rows (not seen by it): what
    #: calibration is fitted on, since the refit model has seen the tune slice.
    tune_scores: F64 = field(default_factory=lambda: np.zeros(0))


@dataclass
class Split:
    """Rows, labels and (for the ranker) query sizes of one period."""

    x: F32
    y: npt.NDArray[np.int8]
    group: I64 | None = None


@dataclass
class Selection:
    """Choose the number of trees by a *decision* metric on other rows (higher is better).

    ``metric`` maps raw scores of ``x`` to a number, e.g. hit@3 of the actual hour among
    each held-out engagement's 24 slots: for a per-send classifier, per-send log-loss is
    not the decision, the ranking of a day's hours is.
    """

    x: F32
    metric: Callable[[F64], float]


def _dataset(lgb: Any, part: Split, reference: Any = None) -> Any:
    return lgb.Dataset(part.x, label=part.y, group=part.group, feature_name=list(FEATURES),
                       categorical_feature=list(CATEGORICAL_FEATURES), reference=reference,
                       free_raw_data=True)


def _best(curve: list[float], higher_is_better: bool) -> int:
    """1-based iteration with the best tune score (the earliest among equals)."""
    values = np.asarray(curve) * (-1 if higher_is_better else 1)
    return int(np.argmin(values)) + 1


def _join(a: Split, b: Split) -> Split:
    group = None if a.group is None or b.group is None else np.concatenate([a.group, b.group])
    return Split(np.concatenate([a.x, b.x]), np.concatenate([a.y, b.y]), group)


def fit(train: Split, tune: Split, config: FitConfig, progress: Progress,
        select: Selection | None = None) -> FitResult:
    """Select the number of trees on ``tune`` (or by ``select``), then refit on train + tune
    with that many."""
    import lightgbm as lgb

    params = config.params()
    train_set = _dataset(lgb, train)
    tune_set = _dataset(lgb, tune, reference=train_set)
    record: dict[str, dict[str, list[float]]] = {}

    def log(env: Any) -> None:
        if env.iteration % 25 == 0 or env.iteration + 1 == env.end_iteration:
            scores = ", ".join(f"{name} {value:.5f}" for _, name, value, _ in
                               env.evaluation_result_list)
            progress(f"tree {env.iteration + 1}: tune {scores}")

    booster = lgb.train(params, train_set, num_boost_round=config.max_trees,
                        valid_sets=[tune_set], valid_names=["tune"],
                        callbacks=[lgb.early_stopping(config.early_stopping_rounds,
                                                      verbose=False),
                                   lgb.record_evaluation(record), log])
    curve = next(iter(record["tune"].values()))
    best = _best(curve, config.ranking)
    if select is not None:
        curve = selection_curve(booster, select)
        best = _best(curve, True)
    return _refit(booster, best, curve, train, tune, config, progress, "up to the split",
                  lambda rows: lgb.train(params, _dataset(lgb, rows), num_boost_round=best))


def _refit(booster: Any, best: int, curve: list[float], train: Split, tune: Split,
           config: FitConfig, progress: Progress, where: str,
           grow: Callable[[Split], Any]) -> FitResult:
    """The common end of both trainers: score the tune slice with the selected number of
    trees (for calibration), then, unless ``config.refit`` is off, grow ``best`` trees on
    train + tune with ``grow``."""
    tune_scores = np.asarray(booster.predict(tune.x, num_iteration=best), np.float64)
    if not config.refit:
        return _result(booster, best, curve, 0, tune_scores)
    everything = _join(train, tune)
    progress(f"best iteration {best} on the tune slice; refitting on all "
             f"{everything.x.shape[0]} rows {where}")
    return _result(grow(everything), best, curve, int(everything.x.shape[0]), tune_scores)


def _result(booster: Any, best: int, curve: list[float], refit_rows: int,
            tune_scores: F64) -> FitResult:
    gains = booster.feature_importance(importance_type="gain", iteration=best)
    return FitResult(model_text=booster.model_to_string(num_iteration=best),
                     best_iteration=best,
                     importance_gain={n: float(g) for n, g in zip(FEATURES, gains, strict=True)},
                     tune_curve=[float(v) for v in curve], refit_rows=refit_rows,
                     tune_scores=tune_scores)


def _dask_arrays(client: Any, part: Split, groups_per_chunk: int) -> tuple[Any, Any, Any]:
    """The rows as Dask arrays whose partitions never split a query (24-row days).

    Each partition is scattered to the workers once and referenced by the arrays, rather
    than embedded in the task graph (which Dask warns about and ships on every compute).
    """
    import dask.array as da

    n = int(part.x.shape[0])
    if part.group is None:
        step = max(1, groups_per_chunk * 24)
        cuts = [*range(step, n, step), n]
        groups: list[npt.NDArray[np.int64]] = []
    else:
        ends = np.cumsum(part.group)
        cuts = ends[groups_per_chunk - 1::groups_per_chunk].tolist()
        if not cuts or cuts[-1] != n:
            cuts.append(n)
        first = np.searchsorted(ends, [0, *cuts[:-1]], "right")
        last = np.searchsorted(ends, cuts, "right")
        groups = [part.group[a:b] for a, b in zip(first.tolist(), last.tolist(), strict=True)]
    starts = [0, *cuts[:-1]]
    xs = [part.x[a:b] for a, b in zip(starts, cuts, strict=True)]
    ys = [part.y[a:b].astype(np.float64) for a, b in zip(starts, cuts, strict=True)]

    def to_dask(chunks: list[npt.NDArray[Any]]) -> Any:
        futures = client.scatter(chunks)
        return da.concatenate([da.from_delayed(f, shape=c.shape, dtype=c.dtype)
                               for f, c in zip(futures, chunks, strict=True)])

    return to_dask(xs), to_dask(ys), (to_dask(groups) if groups else None)


def fit_dask(address: str, train: Split, tune: Split, config: FitConfig, progress: Progress,
             select: Selection | None = None, *, groups_per_chunk: int = 2000) -> FitResult:
    """The same model as ``fit``, trained by LightGBM's Dask interface on a cluster.

    The rows go to the workers as Dask partitions that never split a query; each worker
    trains on its partitions and LightGBM's network reduces the histograms. Early stopping
    is not available through Dask, so all ``max_trees`` are grown, the tune curve is
    computed here (``tune_curve``, the same metric ``fit`` stops on) and the best
    iteration is the same choice ``fit`` makes; the refit on train + tune then runs on the
    cluster too. Feature rows are built on this machine (the profile replay is one pass
    over the events); only the boosting is distributed.
    """
    from distributed import Client
    from lightgbm.dask import DaskLGBMClassifier, DaskLGBMRanker

    params = config.params()
    for key in ("num_threads", "metric", "eval_at"):  # per worker / evaluated here instead
        params.pop(key, None)
    ranking = config.ranking
    estimator_cls = DaskLGBMRanker if ranking else DaskLGBMClassifier
    try:
        client = Client(address)
    except (OSError, TimeoutError) as exc:
        raise ValueError(f"cannot reach the Dask scheduler at {address}: {exc}") from exc
    with client:
        progress(f"training on the Dask cluster at {address} "
                 f"({len(client.scheduler_info()['workers'])} workers)")

        def grow(part: Split, trees: int) -> Any:
            x, y, group = _dask_arrays(client, part, groups_per_chunk)
            model = estimator_cls(client=client, n_estimators=trees, **params)
            kwargs: dict[str, Any] = {"categorical_feature": list(CATEGORICAL_FEATURES),
                                      "feature_name": list(FEATURES)}
            if group is not None:
                kwargs["group"] = group
            with warnings.catch_warnings():
                # the sklearn-style estimator always carries n_jobs, which the Dask path
                # replaces by each worker's own thread count, and says so
                warnings.filterwarnings("ignore", message="Parameter n_jobs will be ignored")
                model.fit(x, y, **kwargs)
            return model

        first = grow(train, config.max_trees).booster_
        if select is not None:
            curve = selection_curve(first, select)
            best = _best(curve, True)
        else:
            curve = tune_curve(first, tune, ranking)
            best = _best(curve, ranking)
        return _refit(first, best, curve, train, tune, config, progress, "on the cluster",
                      lambda rows: grow(rows, best).booster_)


def ndcg_at_3(scores: F64, label: npt.NDArray[np.integer]) -> float:
    """Mean NDCG@3 over queries of equal size (rows of ``scores``/``label``), LightGBM's
    definition: gain 2^label - 1, discount 1 / log2(rank + 1), empty queries count 1."""
    gain = np.exp2(np.asarray(label, np.float64)) - 1
    discount = 1 / np.log2(np.arange(2, 5))
    top = np.argsort(-scores, axis=1, kind="stable")[:, :3]
    dcg = (np.take_along_axis(gain, top, axis=1) * discount).sum(axis=1)
    ideal = (-np.sort(-gain, axis=1)[:, :3] * discount).sum(axis=1)
    return float(np.where(ideal > 0, dcg / np.where(ideal > 0, ideal, 1), 1.0).mean())


def tune_curve(booster: Any, tune: Split, ranking: bool) -> list[float]:
    """The tune metric after each tree (NDCG@3 for a ranker, log-loss for a classifier),
    computed here from one pass of per-tree predictions, so it covers the whole tune slice
    (LightGBM's Dask evaluation only sees each worker's share)."""
    raw = np.zeros(tune.x.shape[0])
    curve: list[float] = []
    y = tune.y.astype(np.float64)
    for k in range(booster.current_iteration()):
        raw += booster.predict(tune.x, start_iteration=k, num_iteration=1, raw_score=True)
        if ranking:
            curve.append(ndcg_at_3(raw.reshape(-1, 24), tune.y.reshape(-1, 24)))
        else:
            p = np.clip(1 / (1 + np.exp(-raw)), 1e-7, 1 - 1e-7)
            curve.append(float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p))))
    return curve


def selection_curve(booster: Any, select: Selection) -> list[float]:
    """``select.metric`` after each tree (one pass of per-tree raw predictions)."""
    raw = np.zeros(select.x.shape[0])
    curve: list[float] = []
    for k in range(booster.current_iteration()):
        raw += booster.predict(select.x, start_iteration=k, num_iteration=1, raw_score=True)
        curve.append(select.metric(raw))
    return curve


def fit_calibration(scores: F64, heuristic: F64, label: npt.NDArray[np.integer]) -> tuple[float, float]:
    """Weights ``(a, b)`` of P(hour | day) = softmax(a * score + b * log heuristic share).

    Fitted by Newton's method on the tune slice (``scores``, ``heuristic`` and ``label`` =
    events per hour are all (days, 24)); the log-loss is convex in (a, b). Ranking scores
    only order hours, and their scale is arbitrary, so they need a calibration step to
    become probabilities (expected value needs them); letting the heuristic's own
    log-probability in means the calibrated model is never much worse than the heuristic
    where the ranker is unsure ((0, 1) *is* the heuristic).
    """
    y = np.asarray(label, dtype=np.float64)
    features = np.stack([scores, np.log(np.maximum(heuristic, 1e-12))], axis=-1)  # (d, 24, 2)
    totals = y.sum(axis=1)
    observed = np.einsum("dh,dhk->k", y, features)

    def loss_grad_hess(theta: F64) -> tuple[float, F64, F64]:
        z = features @ theta
        z = z - z.max(axis=1, keepdims=True)
        log_p = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
        p = np.exp(log_p)
        mean = np.einsum("dh,dhk->dk", p, features)
        loss = float(-(y * log_p).sum())
        grad = totals @ mean - observed
        second = np.einsum("dh,dhk,dhl->dkl", p, features, features)
        hess = np.einsum("d,dkl->kl", totals, second - mean[:, :, None] * mean[:, None, :])
        return loss, grad, hess

    theta = np.array([0.0, 1.0])
    loss, grad, hess = loss_grad_hess(theta)
    for _ in range(50):
        step = np.linalg.solve(hess + 1e-9 * np.eye(2), grad)
        shrink = 1.0
        while shrink > 1e-4:
            candidate = theta - shrink * step
            new_loss, new_grad, new_hess = loss_grad_hess(candidate)
            if new_loss <= loss:
                break
            shrink /= 2
        else:
            break
        converged = loss - new_loss < 1e-9 * max(1.0, abs(loss))
        theta, loss, grad, hess = candidate, new_loss, new_grad, new_hess
        if converged:
            break
    return float(theta[0]), float(theta[1])


def lightgbm_version() -> str:
    import lightgbm as lgb

    return str(lgb.__version__)


def iso(instant: int) -> str:
    return datetime.fromtimestamp(instant, UTC).isoformat().replace("+00:00", "Z")


def write_artifact(out_dir: Path, result: FitResult, *, label: str, window: int,
                   data_window: tuple[int, int, int], row_counts: dict[str, int],
                   metrics: dict[str, float], baselines: dict[str, dict[str, float]],
                   policies: dict[str, dict[str, float]], priors: dict[str, object],
                   params: dict[str, object], sources: list[str], objective: str = "binary",
                   calibration: tuple[float, float] = (1.0, 0.0)) -> Path:
    """Write ``model.txt`` + ``manifest.json`` atomically (a reader never sees half a model)."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}-", dir=out_dir.parent))
    model_path = staging / MODEL_FILE
    model_path.write_text(result.model_text)
    manifest = Manifest(
        format_version=ARTIFACT_FORMAT_VERSION, feature_version=FEATURE_VERSION,
        feature_hash=FEATURE_HASH, features=list(FEATURES),
        categorical_features=list(CATEGORICAL_FEATURES), lightgbm_version=lightgbm_version(),
        created_at=iso(int(datetime.now(UTC).timestamp())),
        model_sha256=file_sha256(model_path), label=label, label_window_seconds=window,
        data_window=DataWindow(start=iso(data_window[0]), split=iso(data_window[1]),
                               end=iso(data_window[2])),
        row_counts=row_counts, metrics=metrics, baselines=baselines, policies=policies,
        priors=priors, params=params, sources=sources, objective=objective,
        score_weight=calibration[0], heuristic_weight=calibration[1])
    write_manifest(staging, manifest)
    if out_dir.exists():
        backup = out_dir.with_name(f".{out_dir.name}-old")
        shutil.rmtree(backup, ignore_errors=True)
        out_dir.rename(backup)
        staging.rename(out_dir)
        shutil.rmtree(backup, ignore_errors=True)
    else:
        staging.rename(out_dir)
    return out_dir
