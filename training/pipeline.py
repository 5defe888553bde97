"""``sendwise train``: logs in, artifact + evaluation + report out.

Time-based split of the logged period: ``[start, tune)`` trains, ``[tune, split)``
decides early stopping, ``[split, end)`` is held out for every number we report.
A training example needs its whole label window before the next period starts, so no
label peeks across a boundary. Profiles at any instant use every event before it,
as serving would.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec
import numpy as np
import numpy.typing as npt

from models.artifact import MANIFEST_FILE, read_manifest, write_manifest
from models.features import FEATURE_INDEX
from models.scorer import Scorer
from models.vocab import ANY_CHANNEL, CHANNELS, category_bucket
from training.dataset import (
    LABELS,
    Candidates,
    Examples,
    Logs,
    Progress,
    activity_examples,
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
    evaluate_ranking,
    hour_of_week_grid,
    ranking_metrics,
    ranking_set,
    user_mode_hours,
)
from training.fit import FitConfig, fit, iso, write_artifact
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
    max_train_rows: int = 3_000_000
    ranking_instances: int = 20_000
    oracle_pairs: int = 3_000
    samples_per_day: int = 3
    seed: int = 7
    fit: FitConfig = field(default_factory=FitConfig)
    progress: bool = True


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


def train(config: TrainConfig) -> TrainResult:
    say = Progress(config.progress)
    if config.label not in LABELS:
        raise ValueError(f"label must be one of {', '.join(LABELS)}")
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
    logs = Logs.combine(messages, activity)
    start, end = logs.span()
    end += 1
    split = end - int(config.valid_days * 86400)
    tune = split - int(config.tune_days * 86400)
    if tune <= start + 86400:
        raise ValueError(f"the logs span {(end - start) / 86400:.1f} days: too short for "
                         f"{config.tune_days} tune + {config.valid_days} validation days")
    window = config.window_seconds
    mode = "messages" if messages is not None else "activity"
    say(f"{len(logs.users)} users, {mode} examples, data {iso(start)} .. {iso(end)}, "
        f"validation from {iso(split)}")

    stream = logs.stream()
    priors = estimate_priors(logs, stream, split)
    if mode == "messages":
        examples = message_examples(logs, config.label, window, end)
    else:
        examples = activity_examples(logs, window, end, samples_per_day=config.samples_per_day,
                                     seed=config.seed)
    instant = examples.candidates.instant
    rng = np.random.default_rng(config.seed)
    train_rows = np.flatnonzero(instant + window <= tune)
    if train_rows.size > config.max_train_rows:
        train_rows = np.sort(rng.choice(train_rows, config.max_train_rows, replace=False))
    tune_rows = np.flatnonzero((instant >= tune) & (instant + window <= split))
    valid_rows = np.flatnonzero(instant >= split)
    parts = {name: _subset(examples, rows) for name, rows in
             (("train", train_rows), ("tune", tune_rows), ("valid", valid_rows))}
    for name, part in parts.items():
        if part.label.size == 0 or part.label.min() == part.label.max():
            raise ValueError(f"the {name} period has {part.label.size} examples, all with "
                             "the same label: not enough data to train")

    # ranking instances: engagements in the validation period
    valid = parts["valid"]
    if mode == "messages":
        hit = np.flatnonzero(valid.label == 1)
        c = valid.candidates
        pick = rng.choice(hit, min(hit.size, config.ranking_instances), replace=False)
        ranking = ranking_set(logs, user=c.snap_user[pick], at=c.instant[pick],
                              zone=c.zone[pick], channel=c.channel[pick],
                              category=c.category[pick], propensity=valid.propensity[pick])
    elif logs.activity is not None:
        later = np.flatnonzero(logs.activity.occurred_at >= split)
        pick = rng.choice(later, min(later.size, config.ranking_instances), replace=False)
        n = pick.size
        ranking = ranking_set(logs, user=logs.act_user[pick],
                              at=logs.activity.occurred_at[pick], zone=logs.act_zone[pick],
                              channel=np.full(n, ANY_CHANNEL, np.int64),
                              category=np.full(n, category_bucket(None), np.int64),
                              propensity=np.full(n, np.nan))
    else:
        raise ValueError("no log to evaluate on")
    sets = [parts["train"].candidates, parts["tune"].candidates, valid.candidates,
            ranking.candidates]
    world = None
    oracle = None
    if config.truth is not None:
        from training.oracle import oracle_set
        from training.simulate import World

        world = World.load(config.truth)
        oracle = oracle_set(logs, world, start=split, end=end, max_pairs=config.oracle_pairs,
                            seed=config.seed)
        sets.append(oracle.candidates)
    joined, slices = _concat(sets)
    say(f"building features for {len(joined)} rows ({len(parts['train'].label)} train, "
        f"{len(parts['tune'].label)} tune, {len(valid.label)} validation, "
        f"{len(ranking.candidates)} ranking candidates"
        + (f", {len(oracle.candidates)} oracle slots" if oracle else "") + ")")
    rows = featurize(logs, stream, joined, priors, say)
    say("features built; fitting LightGBM")
    result = fit(rows[slices[0]], parts["train"].label, rows[slices[1]], parts["tune"].label,
                 config.fit, say)
    say(f"best iteration {result.best_iteration}; writing the artifact and evaluating")

    row_counts = {"train": int(train_rows.size), "tune": int(tune_rows.size),
                  "valid": int(valid_rows.size), "users": len(logs.users),
                  "events": len(stream),
                  "rejected": sum(r.rows_rejected for r in reports)}
    sources = [str(p) for p in (config.messages, config.activity) if p is not None]
    params = {"label": config.label, "mode": mode, "best_iteration": result.best_iteration,
              **{k: v for k, v in asdict(config.fit).items()}}
    label_text = f"{config.label} within {window // 60} min of the send" if mode == "messages" \
        else f"activity within {window // 60} min"
    write_artifact(config.out, result, label=label_text, window=window,
                   data_window=(start, split, end), row_counts=row_counts, metrics={},
                   baselines={}, policies={}, priors=priors.to_dict(), params=params,
                   sources=sources)
    scorer = Scorer.load(config.out)  # evaluate exactly what serving will load

    valid_rows_x = rows[slices[2]]
    predicted = scorer.score(valid_rows_x)
    metrics = binary_metrics(valid.label, predicted, valid_rows_x)
    ranking_rows = rows[slices[3]]
    ranking_scores = scorer.score(ranking_rows)
    baselines, segments = evaluate_ranking(ranking_rows, ranking_scores, ranking,
                                           user_mode_hours(logs, split))
    if world is not None:
        baselines["oracle_truth"] = _truth_ceiling(logs, world, ranking, ranking_rows)
    for key, value in baselines["model"].items():
        metrics[f"ranking_{key}"] = value
    policies: dict[str, dict[str, float]] = {}
    if oracle is not None and world is not None:
        from training.oracle import evaluate_policies

        oracle_rows = rows[slices[4]]
        policies = evaluate_policies(oracle, world, oracle_rows, scorer.score(oracle_rows))
    manifest = read_manifest(config.out)
    manifest = msgspec.structs.replace(
        manifest, metrics=metrics,
        baselines={k: v for k, v in baselines.items() if k != "model"}, policies=policies)
    if "oracle_truth" in baselines:  # keep it last in the tables
        baselines["oracle_truth"] = baselines.pop("oracle_truth")
    write_manifest(config.out, manifest)
    extras = {
        "calibration": calibration(valid.label, predicted),
        "grid_predicted": hour_of_week_grid(valid_rows_x, predicted),
        "grid_observed": hour_of_week_grid(valid_rows_x, valid.label.astype(np.float64)),
        "importance": result.importance_gain,
        "mode": mode,
        "label": label_text,
        "data_window": (iso(start), iso(split), iso(end)),
        "model_version": manifest.model_version,
        "best_iteration": result.best_iteration,
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
    """The evaluation tables as plain text (what ``sendwise train`` prints)."""
    lines = ["", "Ranking the 24 hours of the day of each held-out engagement "
             f"({int(result.baselines['model']['n'])} engagements):",
             f"  {'method':24s} {'hit@1':>7s} {'hit@3':>7s} {'log-loss':>9s}"]
    for name, m in result.baselines.items():
        lines.append(f"  {name:24s} {m['hit@1']:7.3f} {m['hit@3']:7.3f} {m['log_loss']:9.4f}")
    model, heuristic = result.baselines["model"], result.baselines["smoothed_histogram"]
    lines.append(f"  model vs smoothed histogram: hit@1 {model['hit@1'] - heuristic['hit@1']:+.3f}"
                 f", hit@3 {model['hit@3'] - heuristic['hit@3']:+.3f}, log-loss "
                 f"{model['log_loss'] - heuristic['log_loss']:+.4f} (lower is better)")
    for seg in result.segments:
        m, h = seg.model, seg.heuristic
        lines.append(f"    {seg.label:36s} n={seg.n:6d}  hit@1 model "
                     f"{m['hit@1']:.3f} vs {h['hit@1']:.3f}, log-loss {m['log_loss']:.4f} vs "
                     f"{h['log_loss']:.4f}")
    met = result.metrics
    lines.append(f"Per-send probabilities on the validation period: log-loss "
                 f"{met['valid_log_loss']:.4f} (base rate {met['base_rate_log_loss']:.4f}, "
                 f"heuristic {met['heuristic_log_loss']:.4f}), AUC {met['valid_auc']:.3f} "
                 f"(heuristic {met['heuristic_auc']:.3f})")
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
