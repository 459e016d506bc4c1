"""Reliability statistics against textbook examples and scikit-learn."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from misalign.bench.reliability import (
    cohen_kappa,
    counts_table,
    fleiss_kappa,
    icc,
    krippendorff_alpha,
    pairwise_cohen_kappa,
)

# Fleiss (1971) as worked on Wikipedia: 10 subjects, 14 raters, 5 categories; kappa = 0.210.
FLEISS_TABLE = np.array([
    [0, 0, 0, 0, 14], [0, 2, 6, 4, 2], [0, 0, 3, 5, 6], [0, 3, 9, 2, 0], [2, 2, 8, 1, 1],
    [7, 7, 0, 0, 0], [3, 2, 6, 3, 0], [2, 5, 3, 2, 2], [6, 5, 2, 1, 0], [0, 2, 2, 3, 7],
])

# Krippendorff (2011), "Computing Krippendorff's alpha-reliability", example C: 4 observers x 12 units, missing
# values; nominal alpha = 0.743, interval alpha = 0.849.
_ = None
KRIPP = [
    [1, 2, 3, 3, 2, 1, 4, 1, 2, _, _, _],
    [1, 2, 3, 3, 2, 2, 4, 1, 2, 5, _, 3],
    [_, 3, 3, 3, 2, 3, 4, 2, 2, 5, 1, _],
    [1, 2, 3, 3, 2, 4, 4, 1, 2, 5, 1, _],
]

# Shrout & Fleiss (1979), Table 2: 6 targets x 4 judges, and their Table 4 of ICCs.
SHROUT_FLEISS = np.array([[9, 2, 5, 8], [6, 1, 3, 2], [8, 4, 6, 8], [7, 1, 2, 6], [10, 5, 6, 9], [6, 2, 4, 7]])
SHROUT_FLEISS_ICC = {"1,1": 0.17, "2,1": 0.29, "3,1": 0.71, "1,k": 0.44, "2,k": 0.62, "3,k": 0.91}


def test_fleiss_kappa_wikipedia_example() -> None:
    assert fleiss_kappa(FLEISS_TABLE) == pytest.approx(0.210, abs=5e-4)


def test_fleiss_kappa_from_ratings_and_errors() -> None:
    ratings = [["a", "a", "b"], ["b", "b", "b"], ["a", "b", "a"], ["a", "a", "a"]]
    table, cats = counts_table(ratings)
    assert cats == ["a", "b"]
    assert table.tolist() == [[2, 1], [0, 3], [2, 1], [3, 0]]
    assert -1.0 <= fleiss_kappa(table) <= 1.0
    with pytest.raises(ValueError, match="same number"):
        fleiss_kappa(np.array([[1, 1], [2, 1]]))
    assert np.isnan(fleiss_kappa(np.array([[3, 0], [3, 0]])))  # no variation: undefined


def test_cohen_kappa_matches_sklearn() -> None:
    from sklearn.metrics import cohen_kappa_score

    rng = np.random.default_rng(1)
    for _ in range(20):
        a = rng.integers(0, 3, 50)
        b = np.where(rng.random(50) < 0.6, a, rng.integers(0, 3, 50))
        assert cohen_kappa(a.tolist(), b.tolist()) == pytest.approx(cohen_kappa_score(a, b), abs=1e-12)


def test_cohen_kappa_textbook_and_missing() -> None:
    # Wikipedia: 50 proposals, 20 yes/yes, 15 no/no, 5 yes/no, 10 no/yes -> kappa = 0.4
    a = ["y"] * 20 + ["y"] * 5 + ["n"] * 10 + ["n"] * 15
    b = ["y"] * 20 + ["n"] * 5 + ["y"] * 10 + ["n"] * 15
    assert cohen_kappa(a, b) == pytest.approx(0.4)
    assert cohen_kappa([*a, None, "y"], [*b, "y", None]) == pytest.approx(0.4)
    with pytest.raises(ValueError):
        cohen_kappa([1, 0], [1])


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 1), st.integers(0, 1), st.integers(0, 1)), min_size=2, max_size=40))
def test_pairwise_cohen_kappa_matches_scalar(rows: list[tuple[int, int, int]]) -> None:
    x = np.array(rows, dtype=np.float64)
    got = pairwise_cohen_kappa(x)
    for i in range(3):
        for j in range(i + 1, 3):
            want = cohen_kappa(x[:, i].tolist(), x[:, j].tolist())
            assert (np.isnan(want) and np.isnan(got[i, j])) or got[i, j] == pytest.approx(want)


def test_krippendorff_alpha_textbook_example() -> None:
    assert krippendorff_alpha(KRIPP) == pytest.approx(0.743, abs=5e-4)
    assert krippendorff_alpha(KRIPP, level="interval") == pytest.approx(0.849, abs=5e-4)
    as_nan = np.array([[np.nan if v is None else v for v in row] for row in KRIPP])
    assert krippendorff_alpha(as_nan) == pytest.approx(0.743, abs=5e-4)  # the vectorised path for arrays
    assert krippendorff_alpha(as_nan, level="interval") == pytest.approx(0.849, abs=5e-4)
    assert krippendorff_alpha(np.array(KRIPP, dtype=object)) == pytest.approx(0.743, abs=5e-4)


def test_krippendorff_alpha_edge_cases() -> None:
    assert krippendorff_alpha([[1, 2, 1, 2], [1, 2, 1, 2]]) == pytest.approx(1.0)
    assert np.isnan(krippendorff_alpha([[1, 1], [1, 1]]))  # no variation
    assert np.isnan(krippendorff_alpha([[1, None], [None, 2]]))  # nothing pairable
    with pytest.raises(ValueError):
        krippendorff_alpha(KRIPP, level="ordinal")


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 2), st.integers(0, 2)), min_size=3, max_size=40))
def test_alpha_two_raters_is_scott_pi_with_small_sample_correction(pairs: list[tuple[int, int]]) -> None:
    """Two raters, complete nominal data: α = 1 − (1 − p_o) / D_e, D_e from the 2N values drawn without replacement."""
    a, b = zip(*pairs, strict=True)
    alpha = krippendorff_alpha([list(a), list(b)])
    n = len(pairs)
    p_o = np.mean([x == y for x, y in pairs])
    cats = np.bincount(list(a) + list(b), minlength=3) / (2 * n)
    p_e = float((cats**2).sum())
    if p_e == 1.0:
        assert np.isnan(alpha)
        return
    counts = cats * 2 * n
    expected_disagree = (4 * n * n - (counts**2).sum()) / (2 * n * (2 * n - 1))
    assert alpha == pytest.approx(1 - (1 - p_o) / expected_disagree)


@pytest.mark.parametrize("form", list(SHROUT_FLEISS_ICC))
def test_icc_shrout_fleiss(form: str) -> None:
    assert icc(SHROUT_FLEISS, form) == pytest.approx(SHROUT_FLEISS_ICC[form], abs=0.005)


def test_icc_errors_and_perfect_agreement() -> None:
    x = np.array([[0, 0, 0], [1, 1, 1], [0, 0, 0], [1, 1, 1]])
    assert icc(x) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="complete"):
        icc(np.array([[1.0, np.nan], [0.0, 1.0]]))
    with pytest.raises(ValueError, match="form"):
        icc(x, "4,1")
    assert np.isnan(icc(np.zeros((5, 3))))
