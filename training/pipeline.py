"""``sendwise train``: logs in, artifact + evaluation + report out.

Time-based split of the logged period: ``[start, tune)`` trains, ``[tune, split)``
selects the number of trees (and the ranker's temperature), then the model is refit on
``[start, split)``; ``[split, end)`` is held out for every number we report and for the
champion gate. A training example needs its whole label window before the next period
starts, so no label peeks across a boundary. Profiles at any instant use every event
before it, as serving would (held-out events included, one by one).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec
import numpy as np
import numpy.typing as npt

from models.artifact import MANIFEST_FILE, ChampionGate, read_manifest, write_manifest
from models.features import FEATURE_INDEX
from models.scorer import Scorer
from models.vocab import ANY_CHANNEL, CHANNELS, category_bucket
from training.dataset import (
    LABELS,
    Candidates,
    DayExamples,
    Examples,
    Logs,
    Progress,
    day_examples,
    estimate_priors,
    featurize,
    localize,
    message_examples,
)
from training.evaluate import (
    HOURS,
    RankingSet,
    Segment,
    binary_metrics,
    calibration,
    champion_gate,
    evaluate_ranking,
    hour_of_week_grid,
    ranking_metrics,
    ranking_set,
)
from training.fit import (
    RANKING_OBJECTIVES,
    FitConfig,
    FitResult,
    Selection,
    Split,
    fit,
    fit_calibration,
    fit_dask,
    iso,
    write_artifact,
)
from training.offpolicy import DEFAULT_EXPLORATION, OffPolicyEstimate, estimate, target_probabilities
from training.schema import ActivityLog, LoadReport, MessageLog, load_activity, load_messages

if TYPE_CHECKING:
    from training.simulate import World

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]


@dataclass
class TrainConfig:
    out: Path
    messages: Path | None = None
    activity: Path | None = None
    truth: Path | None = None
    report: Path | None = None
    label: str = "opened"
    window_seconds: int = 7200
    valid_days: float = 14.0
    tune_days: float = 7.0
    #: Start of the held-out period (UTC instant); default: ``valid_days`` before the end.
    split: int | None = None
    max_train_rows: int = 3_000_000
    ranking_instances: int = 20_000
    oracle_pairs: int = 3_000
    seed: int = 7
    #: Address of a Dask scheduler: train there through LightGBM's Dask interface.
    dask: str | None = None
    fit: FitConfig = field(default_factory=FitConfig)
    progress: bool = True
    #: the new model's policy in the off-policy estimate: greedy plus this share uniform
    #: (``send_time.exploration_rate``'s default)
    exploration_rate: float = DEFAULT_EXPLORATION


#: fewer validation sends with a logged propensity than this: no off-policy estimate
MIN_LOGGED = 20


@dataclass
class TrainResult:
    out: Path
    report: Path | None
    metrics: dict[str, float]
    baselines: dict[str, dict[str, float]]
    segments: list[Segment]
    policies: dict[str, dict[str, float]]
    row_counts: dict[str, int]
    load_reports: list[LoadReport]
    seconds: float
    extras: dict[str, Any] = field(default_factory=dict)


def _concat(sets: list[Candidates]) -> tuple[Candidates, list[slice]]:
    """One candidate set from several (one profile replay serves them all)."""
    slices: list[slice] = []
    snap_offset = 0
    row = 0
    parts: dict[str, list[I64]] = {k: [] for k in Candidates.__dataclass_fields__}
    for s in sets:
        for name in parts:
            value = getattr(s, name)
            parts[name].append(value + snap_offset if name == "snapshot" else value)
        slices.append(slice(row, row + len(s)))
        row += len(s)
        snap_offset += int(s.snap_user.shape[0])
    joined = Candidates(**{k: np.concatenate(v) for k, v in parts.items()})
    return joined, slices


def _subset(examples: Examples, rows: npt.NDArray[np.intp]) -> Examples:
    c = examples.candidates
    return Examples(
        candidates=Candidates(snap_user=c.snap_user[rows], snap_at=c.snap_at[rows],
                              snapshot=np.arange(rows.size, dtype=np.int64),
                              instant=c.instant[rows], channel=c.channel[rows],
                              category=c.category[rows], zone=c.zone[rows]),
        label=examples.label[rows], propensity=examples.propensity[rows])


def _subset_days(days: DayExamples, keep: npt.NDArray[np.intp]) -> DayExamples:
    c = days.candidates
    rows = (keep[:, None] * HOURS + np.arange(HOURS)[None, :]).ravel()
    return DayExamples(
        candidates=Candidates(snap_user=c.snap_user[keep], snap_at=c.snap_at[keep],
                              snapshot=np.repeat(np.arange(keep.size, dtype=np.int64), HOURS),
                              instant=c.instant[rows], channel=c.channel[rows],
                              category=c.category[rows], zone=c.zone[rows]),
        label=days.label[rows], day_start=days.day_start[keep])


def _truth_ceiling(logs: Logs, world: World, ranking: RankingSet, rows: F32) -> dict[str, float]:
    """The ranking metrics of the simulator's true probabilities: the best any model can do.

    Engagement is random even at the best hour, so hit@1 is far from 1 for everyone.
    """
    c = ranking.candidates
    world_user = np.array([int(logs.users[u][1:]) for u in c.snap_user[c.snapshot]])
    truth = world.open_probability(
        world_user, np.minimum(c.channel, len(CHANNELS) - 1),
        localize(logs.zones, c.zone, c.instant), np.ones(len(c), dtype=np.int64),
        rows[:, FEATURE_INDEX["sends_24h"]].astype(np.float64),
        rows[:, FEATURE_INDEX["sends_7d"]].astype(np.float64))
    return ranking_metrics(truth.reshape(len(ranking), HOURS), ranking.actual_hour,
                           ranking.weight)


def _true_value(logs: Logs, world: World, off: RankingSet, rows: F32, scores: F64,
                rate: float) -> float:
    """The new policy's true value on the off-policy decisions (simulated data only): its
    probabilities times the simulator's true P(open) of each candidate hour, averaged."""
    c = off.candidates
    world_user = np.array([int(logs.users[u][1:]) for u in c.snap_user[c.snapshot]])
    truth = world.open_probability(
        world_user, np.minimum(c.channel, len(CHANNELS) - 1),
        localize(logs.zones, c.zone, c.instant), np.ones(len(c), dtype=np.int64),
        rows[:, FEATURE_INDEX["sends_24h"]].astype(np.float64),
        rows[:, FEATURE_INDEX["sends_7d"]].astype(np.float64)).reshape(-1, HOURS)
    return float((target_probabilities(scores, rate) * truth).sum(axis=1).mean())


def _load(config: TrainConfig, say: Progress) -> tuple[Logs, list[LoadReport], str]:
    messages: MessageLog | None = None
    activity: ActivityLog | None = None
    reports: list[LoadReport] = []
    if config.messages is not None:
        messages = load_messages(config.messages)
        reports.append(messages.report)
        say(messages.report.summary())
    if config.activity is not None:
        activity = load_activity(config.activity)
        reports.append(activity.report)
        say(activity.report.summary())
    mode = "messages" if messages is not None else "activity"
    return Logs.combine(messages, activity), reports, mode


def _check_labels(name: str, label: npt.NDArray[np.int8]) -> None:
    if label.size == 0 or label.min() == label.max():
        raise ValueError(f"the {name} period has {label.size} examples, all with the same "
                         "label: not enough data to train")


def train(config: TrainConfig) -> TrainResult:
    say = Progress(config.progress)
    if config.label not in LABELS:
        raise ValueError(f"label must be one of {', '.join(LABELS)}")
    logs, reports, mode = _load(config, say)
    start, end = logs.span()
    end += 1
    split = config.split if config.split is not None else end - int(config.valid_days * 86400)
    tune = split - int(config.tune_days * 86400)
    if tune <= start + 86400 or split >= end:
        raise ValueError(f"the logs span {(end - start) / 86400:.1f} days ({iso(start)} .. "
                         f"{iso(end)}): too short for {config.tune_days} tune days before the "
                         f"split at {iso(split)} and a held-out period after it")
    window = config.window_seconds
    say(f"{len(logs.users)} users, {mode} examples, data {iso(start)} .. {iso(end)}, "
        f"tune from {iso(tune)}, held out from {iso(split)}")

    stream = logs.stream()
    priors = estimate_priors(logs, stream, split)
    rng = np.random.default_rng(config.seed)
    ranker = mode == "activity"
    objective = "binary"
    if ranker:
        objective = config.fit.objective if config.fit.ranking else RANKING_OBJECTIVES[0]
    fit_config = replace(config.fit, objective=objective)
    train_c: Candidates
    tune_c: Candidates
    valid_part: Examples | None = None
    tune_ranking: RankingSet | None = None
    if ranker:
        train_days = day_examples(logs, start, tune)
        tune_days = day_examples(logs, tune, split)
        limit = max(1, config.max_train_rows // HOURS)
        if len(train_days) > limit:
            train_days = _subset_days(train_days, np.sort(rng.choice(len(train_days), limit,
                                                                     replace=False)))
        for name, days in (("train", train_days), ("tune", tune_days)):
            if len(days) == 0:
                raise ValueError(f"the {name} period has no active user-day: not enough data")
        train_c, tune_c = train_days.candidates, tune_days.candidates
        train_y, tune_y = train_days.label, tune_days.label
        row_counts = {"train": int(train_y.size), "tune": int(tune_y.size),
                      "train_days": len(train_days), "tune_days": len(tune_days)}
        a = logs.activity
        if a is None:  # mode "activity" means there is an activity log
            raise ValueError("no activity log")
        later = np.flatnonzero(a.occurred_at >= split)
        pick = np.sort(rng.choice(later, min(later.size, config.ranking_instances),
                                  replace=False))
        n = pick.size
        ranking = ranking_set(logs, user=logs.act_user[pick], at=a.occurred_at[pick],
                              zone=logs.act_zone[pick],
                              channel=np.full(n, ANY_CHANNEL, np.int64),
                              category=np.full(n, category_bucket(None), np.int64),
                              propensity=np.full(n, np.nan))
    else:
        examples = message_examples(logs, config.label, window, end)
        instant = examples.candidates.instant
        train_rows = np.flatnonzero(instant + window <= tune)
        if train_rows.size > config.max_train_rows:
            train_rows = np.sort(rng.choice(train_rows, config.max_train_rows, replace=False))
        tune_rows = np.flatnonzero((instant >= tune) & (instant + window <= split))
        valid_rows = np.flatnonzero(instant >= split)
        parts = {name: _subset(examples, rows) for name, rows in
                 (("train", train_rows), ("tune", tune_rows), ("valid", valid_rows))}
        for name, part in parts.items():
            _check_labels(name, part.label)
        train_c, tune_c = parts["train"].candidates, parts["tune"].candidates
        train_y, tune_y = parts["train"].label, parts["tune"].label
        valid_part = parts["valid"]
        row_counts = {"train": int(train_rows.size), "tune": int(tune_rows.size),
                      "valid": int(valid_rows.size)}
        def engagements(part: Examples) -> RankingSet:
            hit = np.flatnonzero(part.label == 1)
            c = part.candidates
            pick = rng.choice(hit, min(hit.size, config.ranking_instances), replace=False)
            return ranking_set(logs, user=c.snap_user[pick], at=c.instant[pick],
                               zone=c.zone[pick], channel=c.channel[pick],
                               category=c.category[pick], propensity=part.propensity[pick])

        ranking = engagements(valid_part)
        # the tune slice's engagements choose the number of trees by the decision metric
        tune_ranking = engagements(parts["tune"])
    if len(ranking) == 0:
        raise ValueError(f"no engagement after the split at {iso(split)}: nothing to "
                         "evaluate on")
    sets = [train_c, tune_c, ranking.candidates]
    if valid_part is not None and tune_ranking is not None:
        sets.extend([valid_part.candidates, tune_ranking.candidates])
    world = None
    oracle = None
    oracle_index = -1
    if config.truth is not None:
        from training.oracle import oracle_set
        from training.simulate import World

        world = World.load(config.truth)
        oracle = oracle_set(logs, world, start=split, end=end, max_pairs=config.oracle_pairs,
                            seed=config.seed)
        oracle_index = len(sets)
        sets.append(oracle.candidates)
    # the off-policy estimate (training/offpolicy.py) needs logged propensities: the
    # service's own export has them (so does the simulator's log)
    offpolicy_in: tuple[int, RankingSet, F64, F64] | None = None
    if valid_part is not None:
        logged_p = valid_part.propensity
        usable = np.flatnonzero(np.isfinite(logged_p) & (logged_p > 0) & (logged_p <= 1))
        if usable.size >= MIN_LOGGED:
            off_rng = np.random.default_rng(config.seed + 1)  # keeps ``rng``'s draws as they were
            pick = np.sort(off_rng.choice(usable, min(usable.size, config.ranking_instances),
                                          replace=False))
            c = valid_part.candidates
            off = ranking_set(logs, user=c.snap_user[pick], at=c.instant[pick],
                              zone=c.zone[pick], channel=c.channel[pick],
                              category=c.category[pick], propensity=logged_p[pick])
            offpolicy_in = (len(sets), off, logged_p[pick],
                            valid_part.label[pick].astype(np.float64))
            sets.append(off.candidates)
    joined, slices = _concat(sets)
    say(f"building features for {len(joined)} rows ({len(train_y)} train, {len(tune_y)} "
        f"tune, {len(ranking.candidates)} held-out ranking candidates"
        + (f", {len(oracle.candidates)} oracle slots" if oracle else "") + ")")
    rows = featurize(logs, stream, joined, priors, say)
    group = (lambda y: np.full(y.size // HOURS, HOURS, np.int64)) if ranker else \
        (lambda y: None)
    train_split = Split(rows[slices[0]], train_y, group(train_y))
    tune_split = Split(rows[slices[1]], tune_y, group(tune_y))
    say(f"features built; fitting LightGBM ({fit_config.objective})"
        + (f" on the Dask cluster {config.dask}" if config.dask else ""))
    select = None
    if tune_ranking is not None and len(tune_ranking):
        tr = tune_ranking

        def tune_hit3(raw: F64) -> float:
            return ranking_metrics(raw.reshape(-1, HOURS), tr.actual_hour, tr.weight)["hit@3"]

        select = Selection(rows[slices[4]], tune_hit3)
    fitted: FitResult = (
        fit_dask(config.dask, train_split, tune_split, fit_config, say, select)
        if config.dask else fit(train_split, tune_split, fit_config, say, select))
    calib_weights = (1.0, 0.0)
    heuristic_col = FEATURE_INDEX["heuristic_share"]
    if ranker:
        calib_weights = fit_calibration(
            fitted.tune_scores.reshape(-1, HOURS),
            tune_split.x[:, heuristic_col].astype(np.float64).reshape(-1, HOURS),
            tune_y.reshape(-1, HOURS))
    say(f"{fitted.best_iteration} trees"
        + (f", calibration P(hour) ~ exp({calib_weights[0]:.3f} * score + "
           f"{calib_weights[1]:.3f} * log heuristic)" if ranker else "")
        + "; writing the artifact and evaluating")

    row_counts.update({"refit": fitted.refit_rows, "users": len(logs.users),
                       "events": len(stream),
                       "rejected": sum(r.rows_rejected for r in reports)})
    sources = [str(p) for p in (config.messages, config.activity) if p is not None]
    params = {"label": config.label, "mode": mode, "best_iteration": fitted.best_iteration,
              "tune_split": iso(tune), "dask": config.dask or "",
              **{k: v for k, v in asdict(fit_config).items()}}
    label_text = f"{config.label} within {window // 60} min of the send" if mode == "messages" \
        else "events per local hour of an active day (one query per user-day)"
    write_artifact(config.out, fitted, label=label_text, window=window,
                   data_window=(start, split, end), row_counts=row_counts, metrics={},
                   baselines={}, policies={}, priors=priors.to_dict(), params=params,
                   sources=sources, objective=fit_config.objective,
                   calibration=calib_weights)
    scorer = Scorer.load(config.out)  # evaluate exactly what serving will load

    ranking_rows = rows[slices[2]]
    ranking_dist = scorer.day_distribution(
        scorer.score(ranking_rows).reshape(-1, HOURS),
        ranking_rows[:, heuristic_col].astype(np.float64).reshape(-1, HOURS))
    baselines, segments = evaluate_ranking(ranking_rows, ranking_dist, ranking)
    gate = champion_gate(baselines)
    if world is not None:
        baselines["oracle_truth"] = _truth_ceiling(logs, world, ranking, ranking_rows)
    metrics: dict[str, float] = {}
    observed_hour = np.zeros(ranking_dist.shape)
    observed_hour[np.arange(len(ranking)), ranking.actual_hour] = 1.0
    if valid_part is not None:
        valid_rows_x = rows[slices[3]]
        predicted = scorer.score(valid_rows_x)
        metrics.update(binary_metrics(valid_part.label, predicted, valid_rows_x))
        calib = calibration(valid_part.label, predicted)
        grids = (hour_of_week_grid(valid_rows_x, predicted),
                 hour_of_week_grid(valid_rows_x, valid_part.label.astype(np.float64)))
    else:
        calib = calibration(observed_hour.ravel().astype(np.int8), ranking_dist.ravel())
        grids = (hour_of_week_grid(ranking_rows, ranking_dist.ravel()),
                 hour_of_week_grid(ranking_rows, observed_hour.ravel()))
        metrics["tune_ndcg@3"] = max(fitted.tune_curve) if fitted.tune_curve else float("nan")
        metrics["calibration_score_weight"] = calib_weights[0]
        metrics["calibration_heuristic_weight"] = calib_weights[1]
    for key, value in baselines["model"].items():
        metrics[f"ranking_{key}"] = value
    policies: dict[str, dict[str, float]] = {}
    if oracle is not None and world is not None:
        from training.oracle import evaluate_policies

        oracle_rows = rows[slices[oracle_index]]
        policies = evaluate_policies(oracle, world, oracle_rows, scorer.score(oracle_rows))
    offpolicy: OffPolicyEstimate | None = None
    if offpolicy_in is not None:
        index, off, logged_p, reward = offpolicy_in
        off_rows = rows[slices[index]]
        off_scores = scorer.score(off_rows).reshape(-1, HOURS)
        offpolicy = estimate(off_scores, off.actual_hour, logged_p, reward,
                             exploration_rate=config.exploration_rate, seed=config.seed)
        metrics.update(offpolicy.metrics())
        if world is not None:
            metrics["snips_true_value"] = _true_value(logs, world, off, off_rows, off_scores,
                                                      config.exploration_rate)
    manifest = read_manifest(config.out)
    manifest = msgspec.structs.replace(
        manifest, metrics=metrics,
        baselines={k: v for k, v in baselines.items() if k != "model"}, policies=policies,
        champion=ChampionGate(passed=bool(gate["passed"]), rival=str(gate["rival"]),
                              better_than_chance=bool(gate["better_than_chance"]),
                              hit1_delta=float(gate["hit@1_delta"]),
                              hit3_delta=float(gate["hit@3_delta"]),
                              log_loss_delta=float(gate["log_loss_delta"]),
                              n=int(gate["n"])))
    write_manifest(config.out, manifest)
    extras = {
        "calibration": calib,
        "calibration_of": "P(engaged within the window | sent), validation sends"
        if valid_part is not None else "P(hour | active day), held-out days",
        "grid_predicted": grids[0],
        "grid_observed": grids[1],
        "importance": fitted.importance_gain,
        "mode": mode,
        "label": label_text,
        "data_window": (iso(start), iso(split), iso(end)),
        "model_version": manifest.model_version,
        "best_iteration": fitted.best_iteration,
        "champion": manifest.champion,
        "offpolicy": offpolicy,
    }
    train_result = TrainResult(out=config.out, report=config.report, metrics=metrics,
                               baselines=baselines, segments=segments, policies=policies,
                               row_counts=row_counts, load_reports=reports,
                               seconds=say.elapsed(), extras=extras)
    if config.report is not None:
        from training.report import write_report

        write_report(config.report, train_result)
        say(f"report written to {config.report}")
    train_result.seconds = say.elapsed()
    say(f"done in {train_result.seconds:.1f}s: {config.out / MANIFEST_FILE}")
    return train_result


def summary_text(result: TrainResult) -> str:
    """The evaluation tables as plain text (what ``sendwise train`` prints).

    The first line is the champion gate's verdict: whether to serve this model at all.
    """
    gate: ChampionGate = result.extras["champion"]
    lines = [gate.summary(), "",
             "Ranking the 24 local hours of the day of each held-out engagement "
             f"({int(result.baselines['model']['n'])} engagements; log-loss in nats):",
             f"  {'method':24s} {'hit@1':>7s} {'hit@3':>7s} {'log-loss':>9s}"]
    for name, m in result.baselines.items():
        lines.append(f"  {name:24s} {m['hit@1']:7.3f} {m['hit@3']:7.3f} {m['log_loss']:9.4f}")
    lines.append("  chance                     0.042   0.125    3.1781")
    lines.append("By amount of user history (events before the day), hit@1 / hit@3 / log-loss:")
    for seg in result.segments:
        cells = "  ".join(f"{name} {m['hit@1']:.3f} / {m['hit@3']:.3f} / {m['log_loss']:.3f}"
                          for name, m in (("model", seg.model), ("heuristic", seg.heuristic),
                                          ("fallback", seg.fallback)))
        lines.append(f"  {seg.label:22s} n={seg.n:6d}  {cells}")
    met = result.metrics
    if "valid_log_loss" in met:
        lines.append(f"Per-send probabilities on the validation period: log-loss "
                     f"{met['valid_log_loss']:.4f} (base rate {met['base_rate_log_loss']:.4f}, "
                     f"heuristic {met['heuristic_log_loss']:.4f}), AUC {met['valid_auc']:.3f} "
                     f"(heuristic {met['heuristic_auc']:.3f})")
    else:
        lines.append(f"Ranker: tune NDCG@3 {met['tune_ndcg@3']:.4f}; calibrated P(hour | day) = "
                     f"softmax({met['calibration_score_weight']:.3f} * score + "
                     f"{met['calibration_heuristic_weight']:.3f} * log heuristic share), "
                     "weights fitted on the tune slice")
    calib = result.extras["calibration"]
    if calib:
        lines.append(f"Calibration of {result.extras['calibration_of']} (mean predicted -> "
                     "observed, by decile): " + ", ".join(f"{p:.3f}->{o:.3f}"
                                                          for p, o, _ in calib))
    offpolicy: OffPolicyEstimate | None = result.extras.get("offpolicy")
    if offpolicy is not None:
        lines.append(offpolicy.summary())
        if "snips_true_value" in met:
            lines.append(f"  (simulated data: its true value is {met['snips_true_value']:.4f})")
    if result.policies:
        lines.append("Expected value per decision against the simulator's truth "
                     "(P(open in window) - channel cost):")
        for name, p in result.policies.items():
            if name.startswith("_"):
                continue
            lines.append(f"  {name:12s} {p['expected_value']:.4f}   share of oracle gain "
                         f"{p['share_of_oracle_gain']:6.1%}")
    lines.append(f"Rows: {json.dumps(result.row_counts)}; {result.seconds:.1f}s")
    return "\n".join(lines)
