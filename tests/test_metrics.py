import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from sklearn.metrics import recall_score, roc_auc_score

from misalign.bench.metrics import alignment_score, alignment_score_from, auroc, coverage, false_failure_rate
from misalign.bench.stats import Counts, bootstrap_ci, mcnemar, paired_bootstrap_as, per_run


def test_hand_worked_example():
    # 4 misaligned, 3 flagged -> Cov 0.75; 4 aligned, 1 flagged -> FFR 0.25; AS = 2*.75*.75/1.5 = 0.75
    y = [1, 1, 1, 1, 0, 0, 0, 0]
    f = [1, 1, 1, 0, 1, 0, 0, 0]
    assert coverage(y, f) == 0.75 and false_failure_rate(y, f) == 0.25
    assert alignment_score(y, f) == pytest.approx(0.75)
    # flag everything: Cov 1, FFR 1 -> AS 0; flag nothing: Cov 0, FFR 0 -> AS 0
    assert alignment_score(y, [1] * 8) == 0.0 and alignment_score(y, [0] * 8) == 0.0
    # Cov 0.9, FFR 0.5: 2*0.9*0.5/1.4
    assert alignment_score_from(0.9, 0.5) == pytest.approx(0.642857, abs=1e-6)


def test_paper_style_numbers():
    # the paper's point: a detector with Cov 97.6% and FFR 52% has AS ~64%
    assert alignment_score_from(0.976, 0.52) == pytest.approx(2 * 0.976 * 0.48 / (0.976 + 0.48))
    assert 0.63 < alignment_score_from(0.976, 0.52) < 0.66


@given(st.lists(st.tuples(st.booleans(), st.booleans()), min_size=2, max_size=60))
def test_against_sklearn(pairs):
    y = np.array([p[0] for p in pairs], dtype=int)
    f = np.array([p[1] for p in pairs], dtype=int)
    if y.sum() and (1 - y).sum():
        assert coverage(y, f) == pytest.approx(recall_score(y, f))
        assert false_failure_rate(y, f) == pytest.approx(1 - recall_score(1 - y, 1 - f))


@given(st.lists(st.tuples(st.booleans(), st.floats(0, 1)), min_size=2, max_size=60))
def test_auroc_against_sklearn(pairs):
    y = np.array([p[0] for p in pairs], dtype=int)
    s = np.array([round(p[1], 2) for p in pairs])  # rounding makes ties
    if y.sum() and (1 - y).sum():
        assert auroc(y, s) == pytest.approx(roc_auc_score(y, s))
    else:
        assert np.isnan(auroc(y, s))


def _counts(y, f, items, runs=1):
    y, f, items = map(np.asarray, (y, f, items))
    return Counts.from_responses(items, np.zeros_like(items), y, f, int(items.max()) + 1, runs)


def test_per_run_matches_plain_functions():
    y = [1, 0, 1, 0, 1, 0]
    f = [1, 1, 0, 0, 1, 0]
    c = _counts(y, f, [0, 0, 1, 1, 2, 2])
    (r,) = per_run(c)
    assert r["coverage"] == coverage(y, f) and r["false_failure_rate"] == false_failure_rate(y, f)
    assert r["alignment_score"] == pytest.approx(alignment_score(y, f))


def test_bootstrap_ci_contains_point_and_is_seeded():
    rng = np.random.default_rng(0)
    n = 300
    items = np.repeat(np.arange(n), 2)
    y = np.tile([1, 0], n)
    f = np.where(y == 1, rng.random(2 * n) < 0.8, rng.random(2 * n) < 0.2).astype(int)
    c = _counts(y, f, items)
    ci = bootstrap_ci(c, n_boot=500, seed=1)
    point = per_run(c)[0]
    for k in ("coverage", "false_failure_rate", "alignment_score"):
        assert ci[k][0] < point[k] < ci[k][1]
        assert ci[k][1] - ci[k][0] < 0.2
    assert ci == bootstrap_ci(c, n_boot=500, seed=1)


def test_paired_comparison_and_mcnemar():
    rng = np.random.default_rng(3)
    n = 400
    items = np.repeat(np.arange(n), 2)
    y = np.tile([1, 0], n)
    good = np.where(y == 1, rng.random(2 * n) < 0.9, rng.random(2 * n) < 0.1).astype(int)
    bad = np.where(y == 1, rng.random(2 * n) < 0.6, rng.random(2 * n) < 0.4).astype(int)
    res = paired_bootstrap_as(_counts(y, good, items), _counts(y, bad, items), n_boot=500)
    assert res["difference"] > 0.2 and res["ci95"][0] > 0 and res["p_value"] < 0.01
    m = mcnemar(good, bad, correct=y)
    assert m["b"] > m["c"] and m["p_value"] < 1e-6
    # textbook example (Agresti): b=10, c=2 -> exact binomial p = 0.0386
    a = np.array([1] * 10 + [0] * 2 + [1] * 5)
    b = np.array([0] * 10 + [1] * 2 + [1] * 5)
    assert mcnemar(a, b)["p_value"] == pytest.approx(0.0386, abs=1e-3)
