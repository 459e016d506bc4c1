"""Statistics over runs and items: per-item counts, item-level bootstrap CIs, paired comparisons, McNemar."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from misalign.bench.metrics import METRIC_NAMES, Totals, mean_over_runs, rates


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


def bootstrap_ci(c: Counts, *, n_boot: int = 1000, seed: int = 0, level: float = 0.95) -> dict[str, list[float]]:
    """Percentile bootstrap CI of each metric (averaged over runs), resampling items with replacement.

    Both responses of an item, in every run, move together, so the interval reflects which items were drawn.
    """
    n = c.tp.shape[0]
    if n == 0:
        return {k: [float("nan"), float("nan")] for k in METRIC_NAMES}
    figs = mean_over_runs(c.weighted(resample_weights(n, n_boot, np.random.default_rng(seed))))
    alpha = (1 - level) / 2
    out = {}
    for k in METRIC_NAMES:
        vals = figs[k][~np.isnan(figs[k])]
        out[k] = ([float(np.quantile(vals, alpha)), float(np.quantile(vals, 1 - alpha))] if vals.size
                  else [float("nan"), float("nan")])
    return out


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
