"""Inter-rater reliability of judges: Cohen's kappa, Fleiss' kappa, Krippendorff's alpha and the ICC.

Plain functions over plain arrays, each checked against a textbook example in ``tests/test_reliability.py``.
Conventions: ``ratings`` are shaped (subjects, raters); Krippendorff's reliability data matrix is shaped
(raters, units) as in his papers. ``None`` (or NaN) is a missing rating where a function accepts missing values.
Every function returns NaN when the statistic is undefined (for instance when no rating varies).
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence
from typing import Any

import numpy as np

__all__ = ["cohen_kappa", "counts_table", "fleiss_kappa", "icc", "krippendorff_alpha", "pairwise_cohen_kappa"]


def _missing(v: Any) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


def cohen_kappa(a: Sequence[Hashable], b: Sequence[Hashable]) -> float:
    """Cohen's kappa of two raters: κ = (p_o − p_e) / (1 − p_e).

    p_o = Σ_c n_cc / n is the observed agreement and p_e = Σ_c (n_c· / n)(n_·c / n) the agreement expected from
    each rater's own marginals (Cohen 1960). Pairs where either rating is missing are dropped.
    """
    if len(a) != len(b):
        raise ValueError(f"raters rated different numbers of subjects: {len(a)} vs {len(b)}")
    pairs = [(x, y) for x, y in zip(a, b, strict=True) if not _missing(x) and not _missing(y)]
    if not pairs:
        return float("nan")
    cats = {c: i for i, c in enumerate(sorted({c for p in pairs for c in p}, key=repr))}
    ia = np.fromiter((cats[x] for x, _ in pairs), dtype=np.int64, count=len(pairs))
    ib = np.fromiter((cats[y] for _, y in pairs), dtype=np.int64, count=len(pairs))
    return _kappa_codes(ia, ib, len(cats))


def _kappa_codes(ia: np.ndarray, ib: np.ndarray, n_cats: int) -> float:
    """Cohen's kappa of two integer-coded rating vectors (no missing values)."""
    n = ia.size
    if n == 0:
        return float("nan")
    cm = np.bincount(ia * n_cats + ib, minlength=n_cats * n_cats).reshape(n_cats, n_cats).astype(np.float64)
    p_o = np.trace(cm) / n
    p_e = float(cm.sum(axis=1) @ cm.sum(axis=0)) / (n * n)
    return float("nan") if p_e == 1.0 else float((p_o - p_e) / (1.0 - p_e))


def pairwise_cohen_kappa(ratings: np.ndarray) -> np.ndarray:
    """Cohen's kappa for every pair of raters of a (subjects, raters) array of 0/1 (NaN = missing): (k, k)."""
    x = np.asarray(ratings, dtype=np.float64)
    k = x.shape[1]
    out = np.full((k, k), np.nan)
    for i in range(k):
        out[i, i] = 1.0
        for j in range(i + 1, k):
            keep = ~np.isnan(x[:, i]) & ~np.isnan(x[:, j])
            out[i, j] = out[j, i] = _kappa_codes(x[keep, i].astype(np.int64), x[keep, j].astype(np.int64), 2)
    return out


def counts_table(ratings: Sequence[Sequence[Hashable]] | np.ndarray,
                 categories: Sequence[Hashable] | None = None) -> tuple[np.ndarray, list[Hashable]]:
    """Turn (subjects, raters) ratings into a (subjects, categories) table of counts, missing values skipped."""
    rows = [list(r) for r in ratings]
    cats = list(categories) if categories is not None else sorted(
        {v for r in rows for v in r if not _missing(v)}, key=repr)
    index = {c: i for i, c in enumerate(cats)}
    table = np.zeros((len(rows), len(cats)), dtype=np.int64)
    for s, r in enumerate(rows):
        for v in r:
            if not _missing(v):
                table[s, index[v]] += 1
    return table, cats


def fleiss_kappa(table: np.ndarray) -> float:
    """Fleiss' kappa from a (subjects, categories) table of counts, n raters per subject (Fleiss 1971).

    p_j = Σ_i n_ij / (N·n); P_i = (Σ_j n_ij² − n) / (n(n − 1)); P̄ = mean_i P_i; P̄_e = Σ_j p_j²;
    κ = (P̄ − P̄_e) / (1 − P̄_e). Every subject must have the same number n ≥ 2 of ratings.
    """
    t = np.asarray(table, dtype=np.float64)
    if t.ndim != 2 or t.shape[0] == 0:
        return float("nan")
    per = t.sum(axis=1)
    n = per[0]
    if not np.all(per == n):
        raise ValueError("Fleiss' kappa needs the same number of ratings for every subject")
    if n < 2:
        raise ValueError("Fleiss' kappa needs at least two ratings per subject")
    p_j = t.sum(axis=0) / (t.shape[0] * n)
    p_i = ((t * t).sum(axis=1) - n) / (n * (n - 1))
    p_bar, p_e = float(p_i.mean()), float((p_j * p_j).sum())
    return float("nan") if p_e == 1.0 else (p_bar - p_e) / (1.0 - p_e)


def krippendorff_alpha(data: Sequence[Sequence[Any]] | np.ndarray, level: str = "nominal") -> float:
    """Krippendorff's alpha of a (raters, units) reliability data matrix; ``None``/NaN = missing.

    α = 1 − D_o / D_e with the coincidence matrix o_ck = Σ_u (number of c–k pairs of values in unit u) / (m_u − 1)
    over units with m_u ≥ 2 values, n_c = Σ_k o_ck, n = Σ_c n_c, D_o = Σ_ck o_ck δ²_ck / n and
    D_e = Σ_ck n_c n_k δ²_ck / (n(n − 1)) (Krippendorff 2011). δ²_ck = [c ≠ k] for ``nominal`` and (c − k)² for
    ``interval`` (numeric values). For nominal data this is α = 1 − (n − 1) Σ_{c≠k} o_ck / Σ_{c≠k} n_c n_k.
    """
    if level not in ("nominal", "interval"):
        raise ValueError(f"unknown level {level!r}; expected 'nominal' or 'interval'")
    counts, cats = _unit_counts(data)
    if counts.size == 0:
        return float("nan")
    m = counts.sum(axis=1)
    counts = counts[m >= 2].astype(np.float64)
    m = m[m >= 2].astype(np.float64)
    if counts.size == 0:
        return float("nan")
    weighted = counts / (m - 1.0)[:, None]
    o = weighted.T @ counts - np.diag(weighted.sum(axis=0))
    n_c = o.sum(axis=1)
    n = n_c.sum()
    if level == "nominal":
        delta = 1.0 - np.eye(len(cats))
    else:
        v = np.asarray(cats, dtype=np.float64)
        delta = (v[:, None] - v[None, :]) ** 2
    d_o = float((o * delta).sum()) / n
    d_e = float((np.outer(n_c, n_c) * delta).sum()) / (n * (n - 1.0))
    return float("nan") if d_e == 0 else 1.0 - d_o / d_e


def _unit_counts(data: Sequence[Sequence[Any]] | np.ndarray) -> tuple[np.ndarray, list[Any]]:
    """(units, categories) counts of a (raters, units) matrix; numeric arrays take a vectorised path."""
    if isinstance(data, np.ndarray) and data.dtype.kind in "fiub":
        x = data.astype(np.float64).T
        ok = ~np.isnan(x)
        cats, codes = np.unique(x[ok], return_inverse=True)
        counts = np.zeros((x.shape[0], cats.size), dtype=np.int64)
        np.add.at(counts, (np.nonzero(ok)[0], codes), 1)
        return counts, cats.tolist()
    raters = [list(r) for r in data]
    if not raters:
        return np.zeros((0, 0), dtype=np.int64), []
    return counts_table(list(zip(*raters, strict=True)))


def icc(ratings: np.ndarray, form: str = "2,1") -> float:
    """Intraclass correlation (Shrout & Fleiss 1979) of a complete (targets, judges) array; default ICC(2,1).

    From the two-way ANOVA mean squares of n targets × k judges — MSR (targets), MSC (judges), MSE (residual),
    MSW = (SSC + SSE) / (n(k − 1)) (within targets):
    ICC(1,1) = (MSR − MSW) / (MSR + (k−1)MSW); ICC(2,1) = (MSR − MSE) / (MSR + (k−1)MSE + k(MSC − MSE)/n)
    (two-way random effects, absolute agreement, single rater); ICC(3,1) = (MSR − MSE) / (MSR + (k−1)MSE);
    the ``,k`` forms (mean of k judges) are (MSR − MSW)/MSR, (MSR − MSE)/(MSR + (MSC − MSE)/n), (MSR − MSE)/MSR.
    """
    x = np.asarray(ratings, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError("ICC needs a 2-D (targets, judges) array")
    if np.isnan(x).any():
        raise ValueError("ICC needs complete data: drop targets with a missing rating first")
    n, k = x.shape
    if n < 2 or k < 2:
        return float("nan")
    gm = x.mean()
    ssr = k * float(((x.mean(axis=1) - gm) ** 2).sum())
    ssc = n * float(((x.mean(axis=0) - gm) ** 2).sum())
    sse = float(((x - gm) ** 2).sum()) - ssr - ssc
    msr, msc = ssr / (n - 1), ssc / (k - 1)
    mse = sse / ((n - 1) * (k - 1))
    msw = (ssc + sse) / (n * (k - 1))
    num_den = {
        "1,1": (msr - msw, msr + (k - 1) * msw),
        "2,1": (msr - mse, msr + (k - 1) * mse + k * (msc - mse) / n),
        "3,1": (msr - mse, msr + (k - 1) * mse),
        "1,k": (msr - msw, msr),
        "2,k": (msr - mse, msr + (msc - mse) / n),
        "3,k": (msr - mse, msr),
    }
    if form not in num_den:
        raise ValueError(f"unknown ICC form {form!r}; expected one of {', '.join(num_den)}")
    num, den = num_den[form]
    return float("nan") if abs(den) < 1e-15 else float(num / den)
