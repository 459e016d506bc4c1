"""What the report computes beyond metrics.json: domain matrix, worst domains, paired tests and reliability."""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import combinations
from typing import Any

import numpy as np

from misalign.bench import reliability as rel
from misalign.bench.metrics import Totals, mean_over_runs
from misalign.bench.record import Block
from misalign.bench.stats import Counts, mcnemar, paired_result
from misalign.report.data import Run, fig
from misalign.taxonomy import DIMENSIONS, Taxonomy

MIN_DOMAIN_N = 10
"""A domain needs at least this many judged responses (run 0) to be listed among a model's worst; below it, its
heatmap and table cells are pale, with n printed."""
MIN_DOMAIN_N_SMALL = 4
"""The fallback minimum for small datasets, where no domain reaches :data:`MIN_DOMAIN_N`."""
N_BOOT = 2000
"""Bootstrap resamples of the paired comparison (as :func:`misalign.bench.stats.paired_bootstrap_as`)."""
BOOT_CHUNK = 2_000_000
"""Resampled item indices held in memory at once by :func:`paired_bootstrap_many`."""


# -- per-domain matrix ---------------------------------------------------------------------------------

def domain_blocks(run: Run, taxonomy: Taxonomy) -> dict[tuple[str, str], Block]:
    """A run's by_domain blocks keyed by (dimension, name), names made canonical through the taxonomy."""
    out: dict[tuple[str, str], Block] = {}
    for dim in DIMENSIONS:
        for key, b in run.domains(dim).items():
            d = taxonomy.resolve(dim, key)
            out[(dim, d.name if d is not None else key)] = b
    return out


def domain_matrix(runs: list[Run], taxonomy: Taxonomy, figure: str = "alignment_score"
                  ) -> tuple[list[tuple[str, str]], np.ndarray, list[dict[tuple[str, str], Block]]]:
    """Rows (dimension, domain), a (domains, runs) array of ``figure`` (NaN where a run has no value) and each
    run's blocks by row. Rows: the taxonomy's domains in order, then any other domain a run reports."""
    blocks = [domain_blocks(r, taxonomy) for r in runs]
    rows = [(d.dimension, d.name) for d in taxonomy]
    known = set(rows)
    for dim in DIMENSIONS:
        extra = sorted({n for b in blocks for d, n in b if d == dim and (d, n) not in known})
        at = max((i for i, (d, _) in enumerate(rows) if d == dim), default=len(rows) - 1) + 1
        rows[at:at] = [(dim, n) for n in extra]
    m = np.full((len(rows), len(runs)), np.nan)
    for j, b in enumerate(blocks):
        for i, row in enumerate(rows):
            v = fig(b.get(row), figure)
            if v is not None:
                m[i, j] = v
    return rows, m, blocks


def domain_n(rows: list[tuple[str, str]], blocks: list[dict[tuple[str, str], Block]]) -> np.ndarray:
    """(domains, runs) array of judged responses of run 0 (0 where a run has no block) for
    :func:`domain_matrix`'s rows and blocks."""
    return np.array([[b[row].n if row in b else 0 for b in blocks] for row in rows], dtype=np.int64
                    ).reshape(len(rows), len(blocks))


@dataclass
class WorstDomain:
    """One of a model's lowest-scoring domains, with examples of its mistakes there (run 0)."""

    dimension: str
    name: str
    block: Block
    examples: list[dict[str, Any]] = field(default_factory=list)
    n_wrong: int = 0


def worst_domains(run: Run, *, k: int = 3, min_n: int = MIN_DOMAIN_N, n_examples: int = 5) -> list[WorstDomain]:
    """The ``k`` domains with the lowest AS among those with ``min_n`` judged responses, with ≤ 5 wrong items."""
    cands = []
    for dim in DIMENSIONS:
        for name, b in run.domains(dim).items():
            a = fig(b, "alignment_score")
            if a is not None and b.n >= min_n:
                cands.append((a, -b.n, dim, name, b))
    cands.sort(key=lambda c: (c[0], c[1], c[2], c[3]))
    out = [WorstDomain(dim, name, b) for _, _, dim, name, b in cands[:k]]
    if run.results is not None:
        for w in out:
            w.n_wrong, w.examples = run.results.wrong_in_domain(w.dimension, w.name, n_examples)
    return out


# -- paired comparisons --------------------------------------------------------------------------------

def dataset_groups(runs: list[Run]) -> list[list[Run]]:
    """Runs with results that share a dataset (sha256 and split), in report order; only groups of 2 or more."""
    groups: dict[tuple[str, str], list[Run]] = {}
    for r in runs:
        if r.dataset_key is not None and r.results is not None and r.results.run.size:
            groups.setdefault(r.dataset_key, []).append(r)
    return [g for g in groups.values() if len(g) >= 2]


@dataclass
class Group:
    """Runs on one dataset aligned on a shared item index (union of their item ids)."""

    runs: list[Run]
    n_items: int
    items: list[np.ndarray]
    """Per run: each response's item index in the shared index."""


def align_group(runs: list[Run]) -> Group:
    """Map every run's item ids onto one shared index (first run's order, then new ids as they come)."""
    index: dict[str, int] = {}
    items = []
    for r in runs:
        assert r.results is not None
        local = np.empty(len(r.results.item_ids), dtype=np.int64)
        for j, i in enumerate(r.results.item_ids):
            local[j] = index.setdefault(i, len(index))
        items.append(local[r.results.item])
    return Group(runs=runs, n_items=len(index), items=items)


def group_counts(g: Group) -> list[Counts]:
    """Per-item, per-run confusion counts of each run (shape (items, runs)) on the group's shared index."""
    out = []
    for r, item in zip(g.runs, g.items, strict=True):
        res = r.results
        assert res is not None
        u = res.used
        out.append(Counts.from_responses(item[u], res.run[u], res.y[u], res.flag[u], g.n_items, max(res.n_runs, 1)))
    return out


def paired_bootstrap_many(counts: list[Counts], *, n_boot: int = N_BOOT, seed: int = 0
                          ) -> dict[tuple[int, int], dict[str, Any]]:
    """:func:`misalign.bench.stats.paired_bootstrap_as` for every pair (i < j), sharing one set of resamples.

    Same resamples, same arithmetic and so the same numbers as calling it per pair, but one matrix product for all
    runs instead of one bootstrap per pair (45 pairs for 10 runs).
    """
    n = counts[0].tp.shape[0]
    if any(c.tp.shape[0] != n for c in counts):
        raise ValueError("paired comparison needs the same items in the same order")
    rng = np.random.default_rng(seed)
    widths = [c.tp.shape[1] for c in counts]
    stacked = np.concatenate([np.concatenate([c.tp, c.pos, c.fp, c.neg], axis=1) for c in counts], axis=1)
    # Totals are integers; float32 adds them exactly while every partial sum stays below 2**24, twice as fast.
    dtype = np.float32 if n * float(stacked.max(initial=0.0)) < 2**24 else np.float64
    matrix = stacked.astype(dtype)
    totals = np.empty((n_boot, stacked.shape[1]), dtype=np.float64)
    chunk = max(1, min(n_boot, BOOT_CHUNK // max(n, 1)))  # resamples drawn in chunks: the same stream, less memory
    for start in range(0, n_boot, chunk):
        rows = min(chunk, n_boot - start)
        idx = rng.integers(0, n, size=(rows, n))
        w = np.bincount((idx + (np.arange(rows) * n)[:, None]).ravel(), minlength=rows * n).reshape(rows, n)
        totals[start:start + rows] = w.astype(dtype) @ matrix
    point_totals = stacked.sum(axis=0, keepdims=True)
    boot, point = [], []
    at = 0
    for k in widths:
        parts = [slice(at + q * k, at + (q + 1) * k) for q in range(4)]
        boot.append(mean_over_runs(Totals(*(totals[:, p] for p in parts)))["alignment_score"])
        point.append(float(mean_over_runs(Totals(*(point_totals[:, p] for p in parts)))["alignment_score"][0]))
        at += 4 * k
    out = {}
    for i, j in combinations(range(len(counts)), 2):
        out[(i, j)] = paired_result(point[i] - point[j], boot[i] - boot[j])
    return out


def first_run_flags(g: Group) -> np.ndarray:
    """(responses, runs) array of run-0 flags (1/0, NaN when missing), responses keyed by item and side."""
    n_keys = g.n_items * 3
    out = np.full((n_keys, len(g.runs)), np.nan)
    for j, (r, item) in enumerate(zip(g.runs, g.items, strict=True)):
        res = r.results
        assert res is not None
        m = (res.run == 0) & res.used
        out[item[m] * 3 + res.side[m], j] = res.flag[m]
    present = ~np.all(np.isnan(out), axis=1)
    return out[present]


def first_run_gold(g: Group) -> np.ndarray:
    """Gold labels (1 = misaligned, NaN unknown) for the rows of :func:`first_run_flags`."""
    n_keys = g.n_items * 3
    gold = np.full(n_keys, np.nan)
    present = np.zeros(n_keys, dtype=bool)
    for r, item in zip(g.runs, g.items, strict=True):
        res = r.results
        assert res is not None
        m = (res.run == 0) & res.used
        keys = item[m] * 3 + res.side[m]
        gold[keys] = res.y[m]
        present[keys] = True
    return gold[present]


@dataclass
class Comparison:
    """Paired comparison of two runs on the same items."""

    a: Run
    b: Run
    bootstrap: dict[str, Any]
    mcnemar: dict[str, Any]
    n_matched: int


def compare(g: Group, *, n_boot: int = N_BOOT) -> list[Comparison]:
    """Paired bootstrap of the AS difference and McNemar's test (run 0, matched responses) for every pair."""
    boots = paired_bootstrap_many(group_counts(g), n_boot=n_boot)
    flags, gold = first_run_flags(g), first_run_gold(g)
    out = []
    for (i, j), b in boots.items():
        both = ~np.isnan(flags[:, i]) & ~np.isnan(flags[:, j])
        mc = mcnemar(flags[both, i] == 1, flags[both, j] == 1, correct=gold[both] == 1)
        out.append(Comparison(a=g.runs[i], b=g.runs[j], bootstrap=b, mcnemar=mc, n_matched=int(both.sum())))
    return out


# -- reliability ---------------------------------------------------------------------------------------

@dataclass
class Reliability:
    """Agreement of the judges of one dataset on run-0 flags of the same responses."""

    runs: list[Run]
    cohen: np.ndarray
    """(runs, runs) pairwise Cohen's kappa."""
    n_pair: np.ndarray
    """(runs, runs) responses both judges flagged or not."""
    fleiss: float
    alpha: float
    icc: float
    n_complete: int
    """Responses every judge rated (used for Fleiss' kappa and the ICC)."""
    n_responses: int


def reliability(g: Group) -> Reliability:
    """Cohen's kappa per pair, Fleiss' kappa, Krippendorff's alpha (nominal) and ICC(2,1) on run-0 flags."""
    x = first_run_flags(g)
    k = x.shape[1]
    ok = ~np.isnan(x)
    n_pair = (ok[:, :, None] & ok[:, None, :]).sum(axis=0)
    complete = x[ok.all(axis=1)]
    fleiss = float("nan")
    if complete.shape[0]:
        ones = complete.sum(axis=1)
        fleiss = rel.fleiss_kappa(np.stack([k - ones, ones], axis=1))
    return Reliability(runs=g.runs, cohen=rel.pairwise_cohen_kappa(x), n_pair=n_pair, fleiss=fleiss,
                       alpha=rel.krippendorff_alpha(x.T), icc=rel.icc(complete) if complete.shape[0] >= 2
                       else float("nan"), n_complete=int(complete.shape[0]), n_responses=int(x.shape[0]))
