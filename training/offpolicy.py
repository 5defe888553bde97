"""Off-policy value of a new model on logged traffic: self-normalised inverse propensity.

Why: the held-out ranking metrics say how well a model orders hours, not what serving it
would *earn*. The service logs, for every decision, the probability its policy had of
picking the slot it picked (``propensity``: the greedy slot's ``1 - rate + rate / n``,
every other slot's ``rate / n``, ``send_time.exploration_rate``). Re-weighting each logged
outcome by how much more (or less) likely the new policy is to pick that same slot gives
an estimate of the new policy's value without deploying it:

    w_i = pi_new(logged slot_i) / propensity_i,   SNIPS = sum(w_i * r_i) / sum(w_i)

Self-normalised (dividing by ``sum(w)`` instead of ``n``) trades a small bias for far less
variance, and is invariant to a constant factor in the propensities. The new policy
(``target_probabilities``) is what serving does with the model: greedy top-1 over the
candidate hours (exact ties share the greedy mass equally), mixed with ``exploration_rate``
uniform over the hours. Support matters: a new policy that picks hours the logging policy
almost never tried leans on a handful of decisions; the effective sample size ``ESS =
(sum w)^2 / sum(w^2)`` says how many decisions the estimate is really worth, and below
``MIN_ESS`` the estimate is reported as too thin to trust (more exploration, or more days
of logs, fix it). The interval is a percentile bootstrap over decisions.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import numpy.typing as npt

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]

#: below this effective sample size the estimate is flagged as too thin to trust
MIN_ESS = 100.0
BOOTSTRAP = 300
LEVEL = 0.95
#: the serving default (``send_time.exploration_rate``): the new policy as it would serve
DEFAULT_EXPLORATION = 0.05


@dataclass(frozen=True)
class OffPolicyEstimate:
    """The new policy's estimated value (mean reward per decision) on the logged traffic."""

    value: float
    low: float
    high: float
    #: the logging policy's own value: the plain mean reward of the logged decisions
    logged_value: float
    ess: float
    n: int
    #: logged decisions whose slot is the new policy's greedy choice (the rest weigh only
    #: through its exploration share)
    matched: int
    exploration_rate: float

    @property
    def thin(self) -> bool:
        return self.ess < MIN_ESS

    def metrics(self) -> dict[str, float]:
        """Flat ``snips_*`` numbers for the manifest's metrics (``snips_thin`` 1: too thin
        to trust)."""
        return {**{f"snips_{k}": float(v) for k, v in asdict(self).items()},
                "snips_thin": float(self.thin)}

    def summary(self) -> str:
        text = (f"Off-policy value of the new model on {self.n} logged sends (SNIPS, greedy "
                f"+ {self.exploration_rate:.0%} uniform exploration): {self.value:.4f} "
                f"[{LEVEL:.0%} CI {self.low:.4f} .. {self.high:.4f}] vs the logging "
                f"policy's {self.logged_value:.4f}; effective sample size {self.ess:.0f} "
                f"({self.matched} sends matched)")
        if self.thin:
            text += (f". TOO THIN to trust: ESS below {MIN_ESS:.0f}, the logs rarely tried "
                     "the hours this model picks (raise exploration or log longer)")
        return text


def target_probabilities(scores: F64, exploration_rate: float = DEFAULT_EXPLORATION) -> F64:
    """(n, k) probabilities of the new policy over each decision's ``k`` candidates:
    ``(1 - rate)`` shared by the top-scoring candidates (exact ties split it), plus
    ``rate / k`` each."""
    k = scores.shape[1]
    top = scores == scores.max(axis=1, keepdims=True)
    greedy = top / top.sum(axis=1, keepdims=True)
    result: F64 = (1.0 - exploration_rate) * greedy + exploration_rate / k
    return result


def snips(target: F64, propensity: F64, reward: F64, *, exploration_rate: float,
          greedy: npt.NDArray[np.bool_] | None = None, bootstrap: int = BOOTSTRAP,
          seed: int = 0) -> OffPolicyEstimate:
    """SNIPS of a policy giving ``target`` probability to each logged action (module
    docstring); ``greedy`` marks the decisions whose logged action is its greedy one
    (default: any with a positive probability). Decisions without a usable propensity
    (missing, 0, above 1) are dropped."""
    ok = np.isfinite(propensity) & (propensity > 0) & (propensity <= 1) & np.isfinite(target)
    hits = (target > 0) if greedy is None else greedy
    t, p, r = target[ok], propensity[ok], reward[ok].astype(np.float64)
    n = int(t.size)
    if n == 0:
        nan = float("nan")
        return OffPolicyEstimate(nan, nan, nan, nan, 0.0, 0, 0, exploration_rate)
    w = t / p
    total = float(w.sum())
    value = float((w * r).sum() / total) if total > 0 else float("nan")
    ess = total ** 2 / float((w * w).sum()) if total > 0 else 0.0
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, n, size=(bootstrap, n))
    bw = w[draws]
    sums = bw.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        boot = (bw * r[draws]).sum(axis=1) / sums
    boot = boot[np.isfinite(boot)]
    alpha = (1.0 - LEVEL) / 2
    low, high = ((float(np.quantile(boot, alpha)), float(np.quantile(boot, 1 - alpha)))
                 if boot.size else (float("nan"), float("nan")))
    return OffPolicyEstimate(value=value, low=low, high=high, logged_value=float(r.mean()),
                             ess=float(ess), n=n, matched=int(hits[ok].sum()),
                             exploration_rate=exploration_rate)


def estimate(scores: F64, logged: I64, propensity: F64, reward: F64, *,
             exploration_rate: float = DEFAULT_EXPLORATION, seed: int = 0
             ) -> OffPolicyEstimate:
    """SNIPS of the policy serving ``scores`` ((n, k): each logged decision's candidates,
    higher is better) where decision ``i`` took candidate ``logged[i]``."""
    probs = target_probabilities(scores, exploration_rate)
    rows = np.arange(scores.shape[0])
    greedy = scores[rows, logged] == scores.max(axis=1)
    return snips(probs[rows, logged], propensity, reward, exploration_rate=exploration_rate,
                 greedy=greedy, seed=seed)
