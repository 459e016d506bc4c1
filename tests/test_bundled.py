"""The bundled benchmark (v2): size, coverage of all 111 domains, the joint case, semantic types, splits, no
duplicates, and no surface cue (length, first words, format) that gives the label away."""

from __future__ import annotations

import json
import re
import unicodedata
from collections import Counter

import numpy as np
import pytest
from typer.testing import CliRunner

from misalign.bench.metrics import auroc
from misalign.build.simhash import fingerprints, near_pairs
from misalign.build.split import assign_splits
from misalign.io import BUNDLED_DIR, bundled_files, load_dataset
from misalign.records import SEMANTIC_TYPES, SPLITS
from misalign.taxonomy import DIMENSIONS, Taxonomy


@pytest.fixture(scope="module")
def bundled():
    return load_dataset("bundled")


def _norm(text: str) -> str:
    return re.sub(r"\s+", " ", unicodedata.normalize("NFKC", text)).strip().casefold()


def test_loads_cleanly_in_our_schema(bundled):
    assert bundled.shape == "misalign" and bundled.rejected == 0
    assert len(bundled) >= 1500
    ids = [r.id for r in bundled.records]
    assert len(set(ids)) == len(ids)
    names = {p.name for p in bundled_files()}
    assert {"safety.jsonl", "joint.jsonl"} <= names and len(names) >= 5


def test_every_domain_has_at_least_ten_items(bundled):
    tax = Taxonomy.default()
    counts = Counter((dim, n) for r in bundled.records for dim in DIMENSIONS for n in r.domains.get(dim))
    short = [(d.dimension, d.name, counts[(d.dimension, d.name)]) for d in tax if counts[(d.dimension, d.name)] < 10]
    assert not short, short
    assert len(tax) == 111 and all(key[1] in tax.names(key[0]) for key in counts)


def test_joint_items(bundled):
    assert sum(r.domains.all_three for r in bundled.records) >= 300


def test_every_item_has_a_semantic_type(bundled):
    types = Counter(r.semantic_type for r in bundled.records)
    assert set(types) == set(SEMANTIC_TYPES), types  # no item without one
    assert min(types.values()) >= 0.15 * len(bundled), types
    for split in SPLITS:
        assert {r.semantic_type for r in bundled.select(split).records} == set(SEMANTIC_TYPES)


def test_some_multi_turn_prompts_and_a_minority_in_other_languages(bundled):
    multi = sum("\n\nAssistant:" in r.prompt and r.prompt.startswith("User:") for r in bundled.records)
    other = sum(not _looks_english(r.prompt) for r in bundled.records)
    assert multi >= 0.04 * len(bundled), multi
    assert 0.04 * len(bundled) <= other <= 0.30 * len(bundled), other


_ENGLISH = frozenset(re.findall(r"\S+", "the a an and or but to of in on for with is are was be it this that i you my "
                                "me we do can how what should your our not have has at from as if so about"))


def _looks_english(text: str) -> bool:
    words = re.findall(r"[a-z']+", text.casefold())
    return bool(words) and sum(w in _ENGLISH for w in words) >= 0.15 * len(words)


def test_splits_are_seeded_stratified_80_10_10(bundled):
    n = len(bundled)
    sizes = Counter(r.split for r in bundled.records)
    assert set(sizes) == set(SPLITS)
    for name, ratio in zip(SPLITS, (0.8, 0.1, 0.1), strict=True):
        assert abs(sizes[name] - ratio * n) <= 1, sizes
    assert sizes["test"] >= 150
    assert [r.split for r in bundled.records] == assign_splits(bundled.records, seed=0)
    for split in SPLITS:
        part = bundled.select(split).records
        for dim in DIMENSIONS:
            assert any(r.domains.get(dim) for r in part), (split, dim)
        assert any(r.domains.all_three for r in part), split


def test_no_duplicate_prompts_or_responses(bundled):
    prompts = [_norm(r.prompt) for r in bundled.records]
    responses = [_norm(t) for r in bundled.records for t in (r.aligned_response, r.misaligned_response)]
    assert len(set(prompts)) == len(prompts)
    assert len(set(responses)) == len(responses)
    texts = [r.prompt for r in bundled.records]
    assert near_pairs(fingerprints(texts), 10).shape[0] == 0
    # Responses (~100 words) share so many common words and 4-grams that SimHash at tau 10 also pairs some
    # unrelated ones (282 of 5.3 million pairs); every such candidate must be far apart on word 3-gram overlap.
    texts = [t for r in bundled.records for t in (r.aligned_response, r.misaligned_response)]
    pairs = near_pairs(fingerprints(texts), 10)
    assert len(pairs) < 1e-4 * len(texts) ** 2 / 2
    for i, j in pairs:
        a, b = _shingles(texts[i]), _shingles(texts[j])
        assert len(a & b) / len(a | b) < 0.2, (texts[i][:60], texts[j][:60])


def _shingles(text: str) -> set[tuple[str, ...]]:
    words = re.findall(r"\w+", _norm(text))
    return {tuple(words[k:k + 3]) for k in range(len(words) - 2)}


def _words(text: str) -> int:
    return len(text.split())


def test_no_length_cue(bundled):
    ali = np.array([_words(r.aligned_response) for r in bundled.records])
    mis = np.array([_words(r.misaligned_response) for r in bundled.records])
    y = np.r_[np.zeros(len(ali)), np.ones(len(mis))]
    assert 0.45 <= auroc(y, np.r_[ali, mis]) <= 0.55  # word count does not rank misaligned above aligned
    assert 0.40 <= float(np.mean(ali > mis)) <= 0.60  # the longer side is aligned in 40-60% of pairs
    assert abs(ali.mean() - mis.mean()) / ali.mean() < 0.10


def test_first_five_words_do_not_give_the_label_away(bundled):
    """A bag-of-words classifier on a response's first five words, cross-validated with both responses of an
    item in the same fold, ranks misaligned above aligned no better than AUROC 0.60."""
    from sklearn.feature_extraction.text import CountVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GroupKFold, cross_val_predict

    records = bundled.records
    texts = [" ".join(t.split()[:5]) for r in records for t in (r.aligned_response, r.misaligned_response)]
    y = np.array([0, 1] * len(records))
    groups = np.repeat(np.arange(len(records)), 2)
    x = CountVectorizer(ngram_range=(1, 2), min_df=2).fit_transform(texts)
    p = cross_val_predict(LogisticRegression(max_iter=2000), x, y, groups=groups, cv=GroupKFold(5),
                          method="predict_proba")[:, 1]
    assert auroc(y, p) <= 0.60


_REFUSAL = re.compile(r"^\W*(i can'?t|i cannot|i won'?t|i'm not able|i am not able|i'm sorry|sorry|i'd rather not|"
                      r"i'm not going to|i must decline|i have to decline|i'm afraid|that's not something)", re.I)


def test_refusal_style_openers_on_both_sides(bundled):
    """An appropriate refusal is aligned; a refusal that stonewalls a benign request can be misaligned."""
    ali = sum(bool(_REFUSAL.match(r.aligned_response)) for r in bundled.records)
    mis = sum(bool(_REFUSAL.match(r.misaligned_response)) for r in bundled.records)
    assert ali >= 0.03 * len(bundled) and mis >= 0.03 * len(bundled), (ali, mis)


def test_markdown_on_both_sides_in_similar_proportions(bundled):
    def md(t: str) -> bool:
        return bool(re.search(r"(^|\n)\s*([-*] |\d+\. |#)|\*\*", t))

    ali = sum(md(r.aligned_response) for r in bundled.records)
    mis = sum(md(r.misaligned_response) for r in bundled.records)
    assert ali >= 0.1 * len(bundled) and mis >= 0.1 * len(bundled) and 0.75 <= ali / mis <= 1.33, (ali, mis)


def test_files_are_readable_jsonl_with_stable_fields():
    for path in bundled_files():
        for line_no, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            row = json.loads(line)
            assert set(row) == {"id", "prompt", "aligned_response", "misaligned_response", "domains",
                                "semantic_type", "split"}, (path.name, line_no)
    assert (BUNDLED_DIR / "DATASHEET.md").exists()


def test_data_inspect_shows_it():
    from misalign.cli import app

    res = CliRunner().invoke(app, ["data", "inspect", "bundled"])
    assert res.exit_code == 0, res.output
    assert "train" in res.output and "test" in res.output and "cultural" in res.output
    assert "semantic type" in res.output and "relation" in res.output
    res = CliRunner().invoke(app, ["data", "inspect", "bundled", "--json"])
    summary = json.loads(res.output)
    assert sum(summary["per_semantic_type"].values()) == len(load_dataset("bundled"))
