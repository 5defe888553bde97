"""``sendwise simulate | train | rank | export | uplift``: the ML commands, plugged into ``sendwise.cli``.

Everything heavy (numpy-heavy modules, pyarrow, lightgbm, matplotlib) is imported inside
the command functions so ``sendwise --help`` and ``sendwise serve`` stay fast.
"""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime
from pathlib import Path

#: Kept in step with ``training.fit.RANKING_OBJECTIVES`` (a test checks), so ``--help``
#: does not import LightGBM.
RANKING_CHOICES = ("rank_xendcg", "lambdarank")


def _instant(text: str) -> int:
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not an ISO-8601 instant: {text!r}") from exc
    return int((parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).timestamp())


def _duration(text: str) -> int:
    """``7200``, ``120m``, ``2h``, ``1d`` -> seconds."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    try:
        if text[-1:] in units:
            return int(float(text[:-1]) * units[text[-1]])
        return int(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (e.g. 2h)") from exc


def _simulate(args: argparse.Namespace) -> int:
    from training.simulate import SimulationConfig, simulate

    config = SimulationConfig(users=args.users, days=args.days, start=args.start,
                              seed=args.seed, sends_per_day=args.sends_per_day,
                              activity_per_day=args.activity_per_day, explore=args.explore,
                              sparse_share=args.sparse_share)
    summary = simulate(config, Path(args.out), progress=not args.quiet)
    print(f"{summary['messages']} messages, {summary['activity']} activity events for "
          f"{summary['users']} users in {summary['seconds']} s -> {summary['out']}")
    return 0


def _export(args: argparse.Namespace) -> int:
    import os

    import redis

    from training.export import export

    url = args.redis_url or os.environ.get("REDIS_URL")
    if not url:
        print("sendwise export: give --redis-url or set REDIS_URL", file=sys.stderr)
        return 2
    client = (redis.RedisCluster.from_url(url) if args.cluster
              else redis.Redis.from_url(url))
    counts = export(client, args.tenant, Path(args.out))
    print(f"wrote {counts['messages']} messages, {counts['activity']} activity rows, "
          f"{counts['decisions']} decisions and {counts['outcomes']} outcome events "
          f"to {args.out}")
    return 0


def _train(args: argparse.Namespace) -> int:
    from training.fit import FitConfig
    from training.pipeline import TrainConfig, summary_text, train
    from training.schema import SchemaError

    data = Path(args.data) if args.data else None
    messages = Path(args.messages) if args.messages else None
    activity = Path(args.activity) if args.activity else None
    truth = Path(args.truth) if args.truth else None
    if data is not None:  # a `sendwise simulate` directory (or any with these names)
        messages = messages or (data / "messages.parquet" if not args.activity_only else None)
        activity = activity or data / "activity.parquet"
        truth = truth or (data / "truth.npz" if (data / "truth.npz").is_file() else None)
        if messages is not None and not messages.is_file():
            messages = None
        if not activity.is_file():
            activity = None
    if messages is None and activity is None:
        print("sendwise train: give --data DIR, --messages FILE and/or --activity FILE",
              file=sys.stderr)
        return 2
    config = TrainConfig(
        out=Path(args.out), messages=messages, activity=activity, truth=truth,
        report=None if args.no_report else Path(args.report or Path(args.out) / "report.html"),
        label=args.label, window_seconds=args.window, valid_days=args.valid_days,
        tune_days=args.tune_days, split=args.split, max_train_rows=args.max_rows,
        seed=args.seed, dask=args.dask,
        fit=FitConfig(max_trees=args.trees, num_leaves=args.leaves, seed=args.seed,
                      learning_rate=args.learning_rate, num_threads=args.threads,
                      objective=args.objective),
        progress=not args.quiet)
    try:
        result = train(config)
    except (SchemaError, ValueError, ImportError) as exc:
        print(f"sendwise train: {exc}", file=sys.stderr)
        return 1
    print(summary_text(result))
    print(f"artifact: {result.out}" + (f"\nreport:   {result.report}" if result.report else ""))
    return 0


def _uplift(args: argparse.Namespace) -> int:
    import json

    from training.uplift import analyse, format_report, load

    try:
        decisions, outcomes = load(Path(args.data))
        report = analyse(decisions, outcomes, outcome=args.outcome, confidence=args.confidence,
                         window_seconds=args.window,
                         exempt_categories=args.exempt_category or ["transactional"])
    except ValueError as exc:
        print(f"sendwise uplift: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(report.to_json(), indent=1) if args.json else format_report(report))
    return 0


def _rank(args: argparse.Namespace) -> int:
    import json
    from dataclasses import asdict

    from models.scorer import Scorer
    from training.rank import format_rankings, load_history, rank_users
    from training.schema import SchemaError

    try:
        scorer = None if args.model == "none" else Scorer.load(args.model)
        logs = load_history([Path(p) for p in args.history])
        horizon = args.horizon_hours or (168 if args.by_hour_of_day else 24)
        rankings = rank_users(logs, args.at, scorer=scorer, horizon_hours=horizon,
                              step_minutes=args.step_minutes, channels=args.channel,
                              category=args.category, users=args.user, top=args.top,
                              by_hour_of_day=args.by_hour_of_day)
    except (SchemaError, ValueError) as exc:
        print(f"sendwise rank: {exc}", file=sys.stderr)
        return 1
    gate = scorer.manifest.champion if scorer is not None else None
    if scorer is not None and (gate is None or not gate.passed):
        print("sendwise rank: warning: " + (gate.summary() if gate else "this model has no "
              "champion gate result (trained by an older sendwise)"), file=sys.stderr)
    if args.format == "json":
        print(json.dumps([asdict(r) for r in rankings], indent=1))
    else:
        print(format_rankings(rankings))
    return 0


class _DefaultsShown(argparse.ArgumentDefaultsHelpFormatter):
    """Shows each option's default, except ``None``: an option whose default depends on
    others (``--horizon-hours``) says so in its own help text."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None:
            return action.help
        return super()._get_help_string(action)


def add_subcommands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    fmt = _DefaultsShown  # every option's help shows its default
    sim = sub.add_parser("simulate", help="generate message + activity logs with known truth",
                         formatter_class=fmt)
    sim.add_argument("--out", default="data/sim", help="output directory")
    sim.add_argument("--users", type=int, default=20_000, help="simulated users")
    sim.add_argument("--days", type=int, default=56, help="simulated days")
    sim.add_argument("--start", default="2025-09-01", help="first simulated day (UTC date)")
    sim.add_argument("--seed", type=int, default=7, help="random seed (same seed, same logs)")
    sim.add_argument("--sends-per-day", type=float, default=1.1,
                     help="mean messages per user and day (0: activity log only)")
    sim.add_argument("--activity-per-day", type=float, default=1.5,
                     help="mean activity events per day of the dense users")
    sim.add_argument("--sparse-share", type=float, default=0.5,
                     help="share of sparse, irregular users (shopper-like: ~33 events in 9 "
                          "months, a quarter under 15)")
    sim.add_argument("--explore", type=float, default=0.5,
                     help="share of logged sends at a uniformly random hour")
    sim.add_argument("--quiet", action="store_true", help="no progress lines")
    sim.set_defaults(func=_simulate)

    tr = sub.add_parser("train", help="train the send-time model, write artifact + report",
                        formatter_class=fmt)
    tr.add_argument("--data", help="directory with messages.parquet / activity.parquet "
                                   "(/ truth.npz), e.g. the output of `sendwise simulate`")
    tr.add_argument("--messages", help="message log (Parquet or CSV, .csv.gz too)")
    tr.add_argument("--activity", help="activity log (Parquet or CSV, .csv.gz too)")
    tr.add_argument("--activity-only", action="store_true",
                    help="with --data: ignore the message log")
    tr.add_argument("--truth", help="simulator truth.npz: adds oracle-gain evaluation")
    tr.add_argument("--out", default="artifacts/model", help="artifact directory")
    tr.add_argument("--report", help="HTML report path (default: OUT/report.html)")
    tr.add_argument("--no-report", action="store_true", help="skip the HTML report")
    tr.add_argument("--label", choices=("opened", "clicked", "converted"), default="opened",
                    help="message outcome that counts as engagement (message logs)")
    tr.add_argument("--window", type=_duration, default=7200,
                    help="label window after the send in seconds or e.g. 2h (message logs)")
    tr.add_argument("--split", type=_instant,
                    help="start of the held-out period, ISO-8601 (default: --valid-days "
                         "before the end of the data)")
    tr.add_argument("--valid-days", type=float, default=14.0,
                    help="held-out days at the end of the data (when --split is not given)")
    tr.add_argument("--tune-days", type=float, default=7.0,
                    help="days before the split that select the number of trees and the "
                         "calibration; the final model is refit on everything before it")
    tr.add_argument("--max-rows", type=int, default=3_000_000,
                    help="training rows kept (a random sample of days or sends beyond it)")
    tr.add_argument("--objective", choices=RANKING_CHOICES, default=RANKING_CHOICES[0],
                    help="ranking objective for activity logs (one query per user-day); "
                         "message logs always use binary log-loss")
    tr.add_argument("--trees", type=int, default=200, help="most trees (early stopping picks)")
    tr.add_argument("--leaves", type=int, default=31, help="leaves per tree")
    tr.add_argument("--learning-rate", type=float, default=0.05, help="LightGBM learning rate")
    tr.add_argument("--threads", type=int, default=2, help="LightGBM threads (single machine)")
    tr.add_argument("--dask", metavar="ADDRESS",
                    help="train on this Dask scheduler (e.g. tcp://10.0.0.5:8786) through "
                         "LightGBM's Dask interface; needs `pip install sendwise[dask]`")
    tr.add_argument("--seed", type=int, default=7, help="random seed (same data, same model)")
    tr.add_argument("--quiet", action="store_true", help="no progress lines")
    tr.set_defaults(func=_train)

    rk = sub.add_parser("rank", help="rank channels/hours per user of a history file",
                        formatter_class=fmt)
    rk.add_argument("--model", required=True,
                    help="artifact directory, or 'none' for the heuristic fallback (priors "
                         "estimated from the history)")
    rk.add_argument("--history", required=True, action="append",
                    help="message or activity log (repeatable)")
    rk.add_argument("--at", required=True, type=_instant,
                    help="decision instant (ISO-8601); profiles use the history before it")
    rk.add_argument("--horizon-hours", type=int,
                    help="candidates in [at, at + horizon) (default: 24, or 168 with "
                         "--by-hour-of-day)")
    rk.add_argument("--step-minutes", type=int, default=60, help="minutes between candidates")
    rk.add_argument("--by-hour-of-day", action="store_true",
                    help="rank local hours of the day by their mean score over the horizon "
                         "(a week by default) instead of single instants")
    rk.add_argument("--channel", action="append",
                    help="only these channels (repeatable; default: the user's channels)")
    rk.add_argument("--category", help="message category of the candidates")
    rk.add_argument("--user", action="append", help="only these users (repeatable)")
    rk.add_argument("--top", type=int, default=5, help="slots listed per user")
    rk.add_argument("--format", choices=("text", "json"), default="text", help="output format")
    rk.set_defaults(func=_rank)

    ex = sub.add_parser("export", help="the API's decision and event log as training input "
                        "(messages.parquet + activity.parquet; decisions.parquet + outcomes.parquet for "
                        "`sendwise uplift`)", formatter_class=fmt)
    ex.add_argument("--tenant", required=True)
    ex.add_argument("--out", required=True, help="directory to write (then `sendwise train "
                    "--data DIR`)")
    ex.add_argument("--redis-url", default=None,
                    help="the API's Redis (default: $REDIS_URL)")
    ex.add_argument("--cluster", action="store_true", help="REDIS_URL is a Redis Cluster")
    ex.set_defaults(func=_export)

    from training.uplift import OUTCOMES  # stdlib only at import: --help stays fast

    up = sub.add_parser("uplift", help="outcome rates of treated vs held-out recipients and of "
                        "model-timed vs exploration decisions, with confidence intervals "
                        "(docs/uplift.md)", formatter_class=fmt)
    up.add_argument("--data", required=True,
                    help="a `sendwise export` directory (decisions.parquet + outcomes.parquet)")
    up.add_argument("--outcome", choices=OUTCOMES, default="converted",
                    help="the outcome event whose rate is compared")
    up.add_argument("--window", type=_duration,
                    help="count an outcome only this long (seconds, or e.g. 7d) after the "
                         "recipient's first decision (default: any time up to the export)")
    up.add_argument("--confidence", type=float, default=0.95,
                    help="confidence level of every interval")
    up.add_argument("--exempt-category", action="append",
                    help="categories never held out, left out of both arms (repeatable; "
                         "default: transactional)")
    up.add_argument("--json", action="store_true", help="the report as JSON")
    up.set_defaults(func=_uplift)
