"""Statistics over runs and items: per-item counts, item-level bootstrap CIs, paired comparisons, McNemar."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from misalign.bench.metrics import METRIC_NAMES, Totals, joint_drop_of, mean_over_runs, rates, spread_of

TRADE_OFFS: tuple[str, ...] = ("spread", "joint_drop")
"""The trade-off figures of :func:`trade_offs` (see :func:`misalign.bench.metrics.spread_of`, ``joint_drop_of``)."""


@dataclass(frozen=True)
class Counts(Totals):
    """Per-item, per-run confusion counts: ``tp``, ``pos``, ``fp``, ``neg`` arrays of shape (items, runs)."""

    @classmethod
    def from_responses(cls, item: np.ndarray, run: np.ndarray, y: np.ndarray, flag: np.ndarray,
                       n_items: int, n_runs: int) -> Counts:
        """Aggregate response-level arrays (item index, run index, gold 1=misaligned, flag 1=flagged)."""
        def acc(mask: np.ndarray) -> np.ndarray:
            out = np.zeros((n_items, n_runs), dtype=np.float64)
            np.add.at(out, (item[mask], run[mask]), 1.0)
            return out

        y, flag = y.astype(bool), flag.astype(bool)
        return cls(tp=acc(y & flag), pos=acc(y), fp=acc(~y & flag), neg=acc(~y))

    def only(self, items: np.ndarray) -> Counts:
        """These counts with every item outside the boolean mask ``items`` zeroed (the shape is kept)."""
        keep = items[:, None].astype(np.float64)
        return Counts(tp=self.tp * keep, pos=self.pos * keep, fp=self.fp * keep, neg=self.neg * keep)

    def per_run_totals(self) -> Totals:
        """Totals of each run, shape (runs,)."""
        return Totals(*(a.sum(axis=0) for a in (self.tp, self.pos, self.fp, self.neg)))

    def weighted(self, weights: np.ndarray) -> Totals:
        """Totals under item weights of shape (k, items): shape (k, runs) (bootstrap resamples)."""
        return Totals(*(weights @ a for a in (self.tp, self.pos, self.fp, self.neg)))


def per_run(c: Counts) -> list[dict[str, float]]:
    """Every metric for each run."""
    figs = rates(c.per_run_totals())
    return [{k: float(v[r]) for k, v in figs.items()} for r in range(c.tp.shape[1])]


def resample_weights(n: int, n_boot: int, rng: np.random.Generator, chunk: int = 100) -> np.ndarray:
    """(n_boot, n) counts of each item in ``n_boot`` resamples with replacement, drawn ``chunk`` at a time."""
    weights = np.empty((n_boot, n), dtype=np.float64)
    for start in range(0, n_boot, chunk):
        idx = rng.integers(0, n, size=(min(chunk, n_boot - start), n))
        for j, row in enumerate(idx):
            weights[start + j] = np.bincount(row, minlength=n)
    return weights


def bootstrap_ci(c: Counts, *, n_boot: int = 1000, seed: int = 0, level: float = 0.95,
                 weights: np.ndarray | None = None) -> dict[str, list[float]]:
    """Percentile bootstrap CI of each metric (averaged over runs), resampling items with replacement.

    Both responses of an item, in every run, move together, so the interval reflects which items were drawn.
    ``weights``: the resamples, when already drawn (``resample_weights(n, n_boot, default_rng(seed))``, the same
    for every scope of a run; drawn here otherwise).
    """
    n = c.tp.shape[0]
    if n == 0:
        return {k: [float("nan"), float("nan")] for k in METRIC_NAMES}
    if weights is None:
        weights = resample_weights(n, n_boot, np.random.default_rng(seed))
    figs = mean_over_runs(c.weighted(weights))
    return {k: percentile_interval(figs[k], level) for k in METRIC_NAMES}


def percentile_interval(values: np.ndarray, level: float = 0.95) -> list[float]:
    """The central ``level`` percentile interval of the defined (non-NaN) bootstrap ``values``; NaNs without any."""
    vals = values[~np.isnan(values)]
    alpha = (1 - level) / 2
    return ([float(np.quantile(vals, alpha)), float(np.quantile(vals, 1 - alpha))] if vals.size
            else [float("nan"), float("nan")])


def _trade_off_figures(c: Counts, masks: np.ndarray, weights: np.ndarray) -> dict[str, np.ndarray]:
    """spread and joint_drop under item ``weights`` (k, items); ``masks`` (4, items): the three dimensions, then
    all three. Each scope's AS is micro-averaged within a run, then averaged over runs, as in the blocks."""
    per_scope = np.stack([mean_over_runs(c.only(m).weighted(weights))["alignment_score"] for m in masks], axis=-1)
    return {"spread": spread_of(per_scope[:, :3]), "joint_drop": joint_drop_of(per_scope[:, :3], per_scope[:, 3])}


def trade_offs(c: Counts, dimensions: np.ndarray, all_three: np.ndarray, *, n_boot: int = 1000, seed: int = 0,
               level: float = 0.95, weights: np.ndarray | None = None) -> dict[str, tuple[float, list[float]]]:
    """Each of :data:`TRADE_OFFS` with its percentile bootstrap CI: ``{name: (value, [low, high])}`` (NaN: undefined).

    ``dimensions`` is a (3, items) boolean array (items carrying a safety, value, cultural domain), ``all_three`` an
    (items,) mask. Items are resampled as in :func:`bootstrap_ci`, with the same resamples for the same ``seed``;
    every resample recomputes the four Alignment Scores, so the interval carries their dependence. ``weights`` as in
    :func:`bootstrap_ci`.
    """
    n = c.tp.shape[0]
    masks = np.vstack([np.asarray(dimensions, dtype=bool), np.asarray(all_three, dtype=bool)[None]])
    with np.errstate(invalid="ignore"):
        point = _trade_off_figures(c, masks, np.ones((1, n)))
        if n and weights is None:
            weights = resample_weights(n, n_boot, np.random.default_rng(seed))
        boot = _trade_off_figures(c, masks, weights) if n else {k: np.full(1, np.nan) for k in TRADE_OFFS}
    return {k: (float(point[k][0]), percentile_interval(boot[k], level)) for k in TRADE_OFFS}


def paired_bootstrap_as(a: Counts, b: Counts, *, n_boot: int = 2000, seed: int = 0) -> dict[str, float]:
    """Paired bootstrap of AS(a) − AS(b) on the same items: the difference, its 95% CI and a two-sided p."""
    if a.tp.shape[0] != b.tp.shape[0]:
        raise ValueError("paired comparison needs the same items in the same order")
    n = a.tp.shape[0]
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(n_boot, n))
    w = np.stack([np.bincount(row, minlength=n) for row in idx]).astype(np.float64)
    ones = np.ones((1, n))
    diff = mean_over_runs(a.weighted(w))["alignment_score"] - mean_over_runs(b.weighted(w))["alignment_score"]
    point = float((mean_over_runs(a.weighted(ones))["alignment_score"]
                   - mean_over_runs(b.weighted(ones))["alignment_score"])[0])
    return paired_result(point, diff)


def paired_result(point: float, diff: np.ndarray) -> dict[str, float]:
    """The difference, the 95% percentile CI of its bootstrap values ``diff`` and the two-sided p."""
    p = 2 * min(float((diff <= 0).mean()), float((diff >= 0).mean()))
    return {"difference": point, "ci95": [float(np.quantile(diff, 0.025)), float(np.quantile(diff, 0.975))],
            "p_value": min(1.0, p)}


def mcnemar(flags_a: np.ndarray, flags_b: np.ndarray, correct: np.ndarray | None = None) -> dict[str, float]:
    """McNemar's test on paired binary outcomes (exact binomial for small discordant counts).

    With ``correct`` (gold), outcomes are correctness ``flag == gold``; b = a right & b wrong, c = the reverse;
    χ² = (|b − c| − 1)² / (b + c) with continuity correction; exact two-sided binomial p when b + c < 25.
    """
    from scipy import stats as st

    a = np.asarray(flags_a, dtype=bool)
    b_ = np.asarray(flags_b, dtype=bool)
    if correct is not None:
        gold = np.asarray(correct, dtype=bool)
        a, b_ = a == gold, b_ == gold
    n01 = int((a & ~b_).sum())
    n10 = int((~a & b_).sum())
    n = n01 + n10
    if n == 0:
        return {"b": n01, "c": n10, "statistic": 0.0, "p_value": 1.0}
    if n < 25:
        p = float(st.binomtest(n01, n, 0.5).pvalue)
        return {"b": n01, "c": n10, "statistic": float(min(n01, n10)), "p_value": p}
    chi2 = (abs(n01 - n10) - 1) ** 2 / n
    return {"b": n01, "c": n10, "statistic": float(chi2), "p_value": float(st.chi2.sf(chi2, 1))}
