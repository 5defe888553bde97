"""The HTML training report: one self-contained file (plots embedded as base64 PNG).

Self-contained so it can be attached to a pull request or a ticket and opened anywhere.
matplotlib runs with the non-interactive Agg backend (no display needed on servers).
"""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from training.evaluate import METHODS
from training.offpolicy import MIN_ESS, OffPolicyEstimate

if TYPE_CHECKING:
    from training.pipeline import TrainResult

_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;margin:2rem auto;max-width:1100px;
color:#222;line-height:1.45}
h1{margin-bottom:.2rem} .sub{color:#666;margin-top:0}
table{border-collapse:collapse;margin:.6rem 0 1.2rem} td,th{padding:.25rem .7rem;
border-bottom:1px solid #ddd;text-align:right} th{background:#f5f5f5}
td:first-child,th:first-child{text-align:left} .best{font-weight:700;color:#0a6} .bad{color:#b00}
.worse{color:#b00} img{max-width:100%} .note{color:#555;font-size:.92rem}
pre{background:#f7f7f7;padding:.6rem;overflow:auto}
"""


def _png(fig: Any) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    data = base64.b64encode(buffer.getvalue()).decode("ascii")
    return f'<img alt="plot" src="data:image/png;base64,{data}">'


def _calibration(points: list[list[float]]) -> str:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 4.2))
    if points:
        pred, obs, count = (np.array(x) for x in zip(*points, strict=True))
        top = float(max(pred.max(), obs.max()) * 1.1)
        ax.plot([0, top], [0, top], color="#999", lw=1, ls="--", label="perfect")
        ax.plot(pred, obs, "o-", color="#0a6", label="model")
        for x, y, c in zip(pred, obs, count, strict=True):
            ax.annotate(f"{int(c)}", (x, y), fontsize=7, xytext=(3, -9),
                        textcoords="offset points", color="#666")
    ax.set_xlabel("predicted probability (decile mean)")
    ax.set_ylabel("observed rate")
    ax.set_title("Calibration on the validation period")
    ax.legend()
    return _png(fig)


def _heatmaps(predicted: Any, observed: Any) -> str:
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 3.4), sharey=True)
    top = float(np.nanmax([np.nanmax(predicted), np.nanmax(observed)]))
    for ax, grid, title in ((axes[0], predicted, "predicted"), (axes[1], observed, "observed")):
        image = ax.imshow(grid, aspect="auto", cmap="viridis", vmin=0, vmax=top)
        ax.set_title(f"{title} engagement by local hour-of-week")
        ax.set_yticks(range(7), _DAYS)
        ax.set_xticks(range(0, 24, 3))
        ax.set_xlabel("local hour of the send")
    fig.colorbar(image, ax=axes, shrink=0.9)
    return _png(fig)


def _lift(baselines: dict[str, dict[str, float]], policies: dict[str, dict[str, float]]) -> str:
    import matplotlib.pyplot as plt

    panels = 2 if policies else 1
    fig, axes = plt.subplots(1, panels, figsize=(6 * panels, 3.8), squeeze=False)
    ax = axes[0][0]
    names = [m for m in METHODS if m in baselines]
    x = np.arange(len(names))
    for offset, metric, color in ((-0.2, "hit@1", "#0a6"), (0.2, "hit@3", "#69c")):
        ax.bar(x + offset, [baselines[n][metric] for n in names], 0.4, label=metric,
               color=color)
    ax.axhline(1 / 24, color="#999", ls=":", lw=1)
    ax.axhline(3 / 24, color="#999", ls=":", lw=1)
    ax.set_xticks(x, [n.replace("_", "\n") for n in names], fontsize=8)
    ax.set_title("Chosen hour = actual engagement hour (held out)")
    ax.legend()
    if policies:
        ax = axes[0][1]
        names = [n for n in policies if not n.startswith("_")]
        values = [policies[n]["expected_value"] for n in names]
        bars = ax.bar(names, values, color=["#bbb", "#bbb", "#69c", "#0a6", "#333"][:len(names)])
        for bar, name in zip(bars, names, strict=True):
            share = policies[name]["share_of_oracle_gain"]
            ax.annotate(f"{share:.0%}", (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                        ha="center", va="bottom", fontsize=8)
        ax.set_title("True expected value per decision (% = share of oracle gain)")
    return _png(fig)


def _importance(importance: dict[str, float]) -> str:
    import matplotlib.pyplot as plt

    items = sorted(importance.items(), key=lambda kv: kv[1])[-20:]
    total = sum(importance.values()) or 1.0
    fig, ax = plt.subplots(figsize=(6, 5.5))
    ax.barh([k for k, _ in items], [v / total for _, v in items], color="#69c")
    ax.set_xlabel("share of total split gain")
    ax.set_title("Feature importance")
    return _png(fig)


def _table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _offpolicy(result: TrainResult) -> str:
    """The off-policy section (training/offpolicy.py); empty without logged propensities."""
    est: OffPolicyEstimate | None = result.extras.get("offpolicy")
    if est is None:
        return ""
    rows = [["new model (SNIPS)", f"{est.value:.4f}", f"{est.low:.4f} .. {est.high:.4f}"],
            ["logging policy (logged mean)", f"{est.logged_value:.4f}", ""]]
    true_value = result.metrics.get("snips_true_value")
    if true_value is not None:
        rows.append(["new model, true value (simulator)", f"{true_value:.4f}", ""])
    verdict = (f'<p class="bad"><b>Too thin to trust:</b> effective sample size '
               f"{est.ess:.0f} &lt; {MIN_ESS:.0f}. The logs rarely tried the hours this model "
               "picks; raise <code>send_time.exploration_rate</code> or log longer.</p>"
               if est.thin else "")
    return ("<h2>Value on logged traffic (off-policy)</h2>" + verdict + _table(
        ["policy", "engagement per send", "95% interval (bootstrap)"], rows)
        + f'<p class="note">Self-normalised inverse-propensity estimate over {est.n} '
        f"validation sends with a logged propensity ({est.matched} of them are sends the new "
        f"model could have made; effective sample size {est.ess:.0f}). The new model's policy: "
        f"greedy top-1 over the 24 local hours of the send's day on its logged channel "
        f"(ties share), mixed with {est.exploration_rate:.0%} uniform exploration as serving "
        "does. Each send weighs its new-policy probability over its logged propensity. Exact "
        "when the logged channel choice had the same probability for every send (one "
        "requested channel); the instants quiet hours forbade are not in the log, so a "
        "model that prefers them is credited only through the sends that happened.</p>")


def render(result: TrainResult) -> str:
    import matplotlib

    matplotlib.use("Agg")
    extras = result.extras
    base = result.baselines
    real = {k: v for k, v in base.items() if k != "oracle_truth"}
    best = {k: max(v[k] for v in real.values()) for k in ("hit@1", "hit@3")}
    best["log_loss"] = min(v["log_loss"] for v in real.values())

    def cell(name: str, metric: str) -> str:
        value = base[name][metric]
        cls = ' class="best"' if value == best[metric] else ""
        return f"<span{cls}>{value:.3f}</span>"

    ranking = _table(["method", "hit@1", "hit@3", "log-loss"],
                     [[html.escape(n), cell(n, "hit@1"), cell(n, "hit@3"),
                       cell(n, "log_loss")] for n in base])
    segments = _table(["users with", "n", "model hit@1 / hit@3 / log-loss",
                       "heuristic", "fallback (no model)"],
                      [[html.escape(s.label), str(s.n)]
                       + [f"{m['hit@1']:.3f} / {m['hit@3']:.3f} / {m['log_loss']:.3f}"
                          for m in (s.model, s.heuristic, s.fallback)]
                       for s in result.segments])
    metrics = _table(["metric", "value"], [[html.escape(k), f"{v:.4f}"]
                                           for k, v in result.metrics.items()])
    policies = ""
    if result.policies:
        policies = "<h2>Against the simulator's truth</h2>" + _table(
            ["policy", "expected value", "share of oracle gain"],
            [[html.escape(n), f"{p['expected_value']:.4f}", f"{p['share_of_oracle_gain']:.1%}"]
             for n, p in result.policies.items() if not n.startswith("_")]) + (
            '<p class="note">Value = true P(open within the window) minus channel cost, '
            "for sampled (user, held-out day) pairs over every consented channel x local "
            "hour. Random = a uniformly random slot; oracle = the best slot.</p>")
    offpolicy = _offpolicy(result)
    loads = "".join(f"<pre>{html.escape(r.summary())}</pre>" for r in result.load_reports)
    start, split, end = extras["data_window"]
    gate = extras["champion"]
    m, h = base["model"], base[gate.rival]
    return f"""<!doctype html><html><head><meta charset="utf-8">
<title>sendwise model {html.escape(str(extras['model_version']))}</title>
<style>{_CSS}</style></head><body>
<h1>sendwise send-time model</h1>
<p class="sub">model {html.escape(str(extras['model_version']))} &middot;
label: {html.escape(str(extras['label']))} &middot; trained on {start} .. {split},
held out {split} .. {end} &middot; {extras['best_iteration']} trees &middot;
{result.seconds:.0f} s</p>
<p class="{'best' if gate.passed else 'bad'}"><b>{html.escape(gate.summary())}</b></p>
<p>Model vs {html.escape(gate.rival)}: hit@1 {m['hit@1']:.3f} vs {h['hit@1']:.3f},
hit@3 {m['hit@3']:.3f} vs {h['hit@3']:.3f}, log-loss {m['log_loss']:.4f} vs
{h['log_loss']:.4f}.</p>
<h2>Ranking the hours of the day</h2>{ranking}
<p class="note">For each held-out engagement, every method ranks the 24 local hours of
that day from the profile as of that day's local midnight; hit@k = the actual hour is in
its top k; log-loss = -log p(actual hour), scores normalised over the day's 24 slots (point
guesses, i.e. mode and fixed hour, mixed with 5% uniform). Weighted by 1/propensity when the log has
propensities. Chance: hit@1 0.042, hit@3 0.125, log-loss 3.178. <i>oracle_truth</i> (simulated
data only) ranks by the true probabilities: the ceiling, since engagement is random even at
the best hour.</p>
{_lift(base, result.policies)}
<h3>By amount of user history</h3>{segments}
{policies}
{offpolicy}
<h2>Probabilities</h2><p class="note">Calibration: {html.escape(str(extras['calibration_of']))}.</p>{metrics}
<div style="display:flex;gap:1rem;flex-wrap:wrap">{_calibration(extras['calibration'])}
{_importance(extras['importance'])}</div>
{_heatmaps(extras['grid_predicted'], extras['grid_observed'])}
<p class="note">Validation sends only: hours the logging policy rarely used are noisy.</p>
<h2>Data</h2>{_table(["rows", "count"], [[k, str(v)] for k, v in result.row_counts.items()])}
{loads}
</body></html>
"""


def write_report(path: Path, result: TrainResult) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render(result), encoding="utf-8")
    return path
