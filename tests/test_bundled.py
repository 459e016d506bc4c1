"""The bundled benchmark: coverage of all 112 domains, the joint case, splits, no duplicates, no length cue."""

from __future__ import annotations

import json
import re
import unicodedata
from collections import Counter

import numpy as np
import pytest
from typer.testing import CliRunner

from misalign.build.simhash import fingerprints, near_pairs
from misalign.build.split import assign_splits
from misalign.io import BUNDLED_DIR, bundled_files, load_dataset
from misalign.records import SPLITS
from misalign.taxonomy import DIMENSIONS, Taxonomy


@pytest.fixture(scope="module")
def bundled():
    return load_dataset("bundled")


def _norm(text: str) -> str:
    return re.sub(r"\s+", " ", unicodedata.normalize("NFKC", text)).strip().casefold()


def test_loads_cleanly_in_our_schema(bundled):
    assert bundled.shape == "misalign" and bundled.rejected == 0
    assert len(bundled) >= 430
    ids = [r.id for r in bundled.records]
    assert len(set(ids)) == len(ids)
    names = {p.name for p in bundled_files()}
    assert {"safety.jsonl", "joint.jsonl"} <= names and len(names) >= 5


def test_every_domain_has_at_least_three_items(bundled):
    tax = Taxonomy.default()
    counts = Counter((dim, n) for r in bundled.records for dim in DIMENSIONS for n in r.domains.get(dim))
    short = [(d.dimension, d.name, counts[(d.dimension, d.name)]) for d in tax if counts[(d.dimension, d.name)] < 3]
    assert not short, short
    assert len(tax) == 111 and all(key[1] in tax.names(key[0]) for key in counts)


def test_joint_items(bundled):
    assert sum(r.domains.all_three for r in bundled.records) >= 60


def test_splits_are_seeded_stratified_80_10_10(bundled):
    n = len(bundled)
    sizes = Counter(r.split for r in bundled.records)
    assert set(sizes) == set(SPLITS)
    for name, ratio in zip(SPLITS, (0.8, 0.1, 0.1), strict=True):
        assert abs(sizes[name] - ratio * n) <= 1, sizes
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
    # unrelated ones (17 of 388,000 pairs); every such candidate must be far apart on word 3-gram overlap.
    texts = [t for r in bundled.records for t in (r.aligned_response, r.misaligned_response)]
    pairs = near_pairs(fingerprints(texts), 10)
    assert len(pairs) < 40
    for i, j in pairs:
        a, b = _shingles(texts[i]), _shingles(texts[j])
        assert len(a & b) / len(a | b) < 0.2, (texts[i][:60], texts[j][:60])


def _shingles(text: str) -> set[tuple[str, ...]]:
    words = re.findall(r"\w+", _norm(text))
    return {tuple(words[k:k + 3]) for k in range(len(words) - 2)}


def test_no_length_cue(bundled):
    ali = np.array([len(r.aligned_response.split()) for r in bundled.records])
    mis = np.array([len(r.misaligned_response.split()) for r in bundled.records])
    assert abs(ali.mean() - mis.mean()) / ali.mean() < 0.10
    # neither side is reliably the longer one
    assert 0.3 < float(np.mean(ali > mis)) < 0.8


def test_files_are_readable_jsonl_with_stable_fields():
    for path in bundled_files():
        for line_no, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            row = json.loads(line)
            assert set(row) == {"id", "prompt", "aligned_response", "misaligned_response", "domains", "split"}, \
                (path.name, line_no)
    assert (BUNDLED_DIR / "DATASHEET.md").exists()


def test_data_inspect_shows_it():
    from misalign.cli import app

    res = CliRunner().invoke(app, ["data", "inspect", "bundled"])
    assert res.exit_code == 0, res.output
    assert "train" in res.output and "test" in res.output and "cultural" in res.output
